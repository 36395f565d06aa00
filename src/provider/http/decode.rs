//! The SSE decoding loop shared by the providers, and the borrowed wire strings their parsers
//! read.

use std::{
    borrow::Cow,
    collections::VecDeque,
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Deserializer};
use sse_stream::SseByteStream;

use crate::{Delta, Error, Result, provider::DeltaStream};

/// A JSON string that borrows from the input when it has no escapes.
///
/// serde only borrows a `Cow<str>` field given directly, not one inside an `Option`, so the
/// optional wire fields use this instead.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Str<'a>(pub(crate) Cow<'a, str>);

impl<'a> Str<'a> {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn into_string(self) -> String {
        self.0.into_owned()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// A non-empty optional wire string, owned for a [`Delta`].
pub(crate) fn non_empty(s: Option<Str<'_>>) -> Option<String> {
    s.filter(|s| !s.0.is_empty()).map(Str::into_string)
}

/// What a wire-format parser tells the decoding loop after one event.
#[derive(Debug)]
pub enum Step {
    /// Keep reading.
    Continue,
    /// The reply is complete: stop reading and end the stream after the queued deltas.
    Done,
}

/// One provider's wire format: turns SSE events into deltas.
///
/// `pub` in a private module, like [`Step`], because [`HttpApi`](super::HttpApi) names it. A
/// new reply starts from `Default`.
pub trait EventParser: Default + Send + 'static {
    /// Handles one event's data (trimmed, never empty), queueing its deltas in `out`; an `Err`
    /// ends the stream after them. `provider` names the provider in errors.
    fn event(&mut self, provider: &str, data: &str, out: &mut VecDeque<Delta>) -> Result<Step>;

    /// Whether the reply has finished, so that the body may end (or break) without harm.
    fn finished(&self) -> bool;
}

type Events<E> = SseByteStream<futures::stream::BoxStream<'static, Result<Bytes, E>>>;

/// The decoding loop shared by the providers: SSE events in, deltas out, exactly one terminal
/// outcome.
///
/// Written by hand rather than with `unfold` so that a chunk's several deltas are queued without
/// a future per item; the upstream body is dropped as soon as the outcome is known.
struct Decoder<E, P> {
    events: Option<Events<E>>,
    /// The provider's name, for errors.
    provider: Arc<str>,
    parser: P,
    pending: VecDeque<Delta>,
    error: Option<Error>,
}

impl<E, P> Stream for Decoder<E, P>
where
    E: std::error::Error + Send + Sync + 'static,
    P: EventParser + Unpin,
{
    type Item = Result<Delta>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(delta) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(delta)));
            }
            if let Some(error) = this.error.take() {
                return Poll::Ready(Some(Err(error)));
            }
            let Some(events) = this.events.as_mut() else {
                return Poll::Ready(None);
            };
            let outcome = match ready!(events.poll_next_unpin(cx)) {
                Some(Ok(event)) => {
                    let Some(data) = event.data.as_deref() else {
                        continue; // a block of metadata only (`retry:`, `id:`)
                    };
                    let data = data.trim_ascii();
                    if data.is_empty() {
                        continue;
                    }
                    match this.parser.event(&this.provider, data, &mut this.pending) {
                        Ok(Step::Continue) => continue,
                        Ok(Step::Done) => None,
                        Err(error) => Some(error),
                    }
                }
                // Once the reply has finished, a body that breaks or ends only loses what may
                // trail the finish (a usage chunk): the reply itself is complete.
                _ if this.parser.finished() => None,
                Some(Err(sse_stream::Error::Body(source))) => Some(Error::Connect {
                    provider: this.provider.to_string(),
                    source,
                }),
                Some(Err(error)) => Some(Error::BadData {
                    provider: this.provider.to_string(),
                    message: error.to_string(),
                }),
                None => Some(Error::Truncated {
                    provider: this.provider.to_string(),
                }),
            };
            // Dropping the body here closes the upstream connection at once.
            this.events = None;
            this.error = outcome;
        }
    }
}

/// Decodes an SSE byte stream with a new `P`, naming `provider` in errors.
pub(crate) fn decode_with<P, S, E>(bytes: S, provider: Arc<str>) -> DeltaStream
where
    P: EventParser + Unpin,
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    Decoder {
        events: Some(SseByteStream::new(bytes.boxed())),
        provider,
        parser: P::default(),
        pending: VecDeque::new(),
        error: None,
    }
    .boxed()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn str_borrows_unless_escaped() {
        let s: Str<'_> = serde_json::from_str(r#""plain""#).unwrap();
        assert!(matches!(s.0, Cow::Borrowed("plain")));
        let s: Str<'_> = serde_json::from_str(r#""a\"b""#).unwrap();
        assert!(matches!(s.0, Cow::Owned(ref o) if o == "a\"b"));
    }
}
