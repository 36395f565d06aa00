//! What the HTTP providers share: the SSE decoding loop, borrowed wire strings, error bodies and
//! URL and header handling.

use std::{
    borrow::Cow,
    collections::VecDeque,
    fmt,
    pin::Pin,
    task::{Context, Poll, ready},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::{
    Url,
    header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
};
use serde::{Deserialize, Deserializer};
use sse_stream::{Sse, SseByteStream};

use super::DeltaStream;
use crate::{Delta, Error, Result, error::kind_is_retryable};

/// The most of an error body read to describe an HTTP error.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// The most of an upstream error message or bad payload quoted in an error.
const EXCERPT_CHARS: usize = 200;

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
pub(crate) enum Step {
    /// Keep reading.
    Continue,
    /// The reply is complete: stop reading and end the stream after the queued deltas.
    Done,
}

/// One provider's wire format: turns SSE events into deltas.
pub(crate) trait EventParser: Send + 'static {
    /// Handles one event, queueing its deltas in `out`; an `Err` ends the stream after them.
    fn event(&mut self, event: &Sse, out: &mut VecDeque<Delta>) -> Result<Step>;

    /// Whether the reply has finished, so that the body may end (or break) without harm.
    fn finished(&self) -> bool;

    /// The provider's name, for errors.
    fn provider(&self) -> &str;
}

type Events<E> = SseByteStream<futures::stream::BoxStream<'static, Result<Bytes, E>>>;

/// The decoding loop shared by the providers: SSE events in, deltas out, exactly one terminal
/// outcome.
///
/// Written by hand rather than with `unfold` so that a chunk's several deltas are queued without
/// a future per item; the upstream body is dropped as soon as the outcome is known.
struct Decoder<E, P> {
    events: Option<Events<E>>,
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
                Some(Ok(event)) => match this.parser.event(&event, &mut this.pending) {
                    Ok(Step::Continue) => continue,
                    Ok(Step::Done) => None,
                    Err(error) => Some(error),
                },
                // Once the reply has finished, a body that breaks or ends only loses what may
                // trail the finish (a usage chunk): the reply itself is complete.
                _ if this.parser.finished() => None,
                Some(Err(sse_stream::Error::Body(source))) => Some(Error::Connect {
                    provider: this.parser.provider().to_owned(),
                    source,
                }),
                Some(Err(error)) => Some(Error::BadData {
                    provider: this.parser.provider().to_owned(),
                    message: error.to_string(),
                }),
                None => Some(Error::Truncated {
                    provider: this.parser.provider().to_owned(),
                }),
            };
            // Dropping the body here closes the upstream connection at once.
            this.events = None;
            this.error = outcome;
        }
    }
}

/// Decodes an SSE byte stream with `parser`.
pub(crate) fn decode_with<S, E, P>(bytes: S, parser: P) -> DeltaStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
    P: EventParser + Unpin,
{
    Decoder {
        events: Some(SseByteStream::new(bytes.boxed())),
        parser,
        pending: VecDeque::new(),
        error: None,
    }
    .boxed()
}

/// A [`Error::BadData`] for a payload that could not be parsed.
pub(crate) fn bad_json(provider: &str, error: &serde_json::Error, data: &str) -> Error {
    Error::BadData {
        provider: provider.to_owned(),
        message: format!("{error} in {:?}", excerpt(data)),
    }
}

/// The start of `text`, cut at a character boundary.
pub(crate) fn excerpt(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((at, _)) => Cow::Owned(format!("{}…", &text[..at])),
        None => Cow::Borrowed(text),
    }
}

/// The error object shared by OpenAI (`{"error":{"message","type","code"}}`) and Anthropic
/// (`{"type":"error","error":{"type","message"}}`) error bodies and stream events.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorObject<'a> {
    #[serde(borrow, default)]
    pub(crate) message: Option<Str<'a>>,
    #[serde(borrow, default, rename = "type")]
    pub(crate) kind: Option<Str<'a>>,
    /// A string for OpenAI, a number for some compatible servers.
    #[serde(default)]
    pub(crate) code: Option<serde_json::Value>,
}

impl ErrorObject<'_> {
    /// The error's kind: `insufficient_quota` wherever it appears, else the code, else the type.
    pub(crate) fn kind(&self) -> Option<String> {
        let code = self.code.as_ref().and_then(|c| c.as_str());
        let kind = self.kind.as_ref().map(Str::as_str);
        if code == Some("insufficient_quota") || kind == Some("insufficient_quota") {
            return Some("insufficient_quota".to_owned());
        }
        code.or(kind).map(str::to_owned)
    }

    pub(crate) fn message(&self) -> Option<String> {
        self.message
            .as_ref()
            .filter(|m| !m.as_str().is_empty())
            .map(|m| excerpt(m.as_str()).into_owned())
    }

    /// The error as an item of a stream (no HTTP status).
    pub(crate) fn into_midstream(self, provider: &str) -> Error {
        let kind = self.kind();
        Error::Upstream {
            provider: provider.to_owned(),
            status: None,
            retry_after: None,
            // The request was accepted before the error, so an unknown kind is taken as
            // transient.
            retryable: kind
                .as_deref()
                .and_then(kind_is_retryable)
                .unwrap_or(true),
            message: self
                .message()
                .unwrap_or_else(|| "error event without a message".to_owned()),
            kind,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    error: ErrorField<'a>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField<'a> {
    Object(#[serde(borrow)] ErrorObject<'a>),
    Text(String),
}

/// The error carried by a stream payload: `{"error":{…}}`, `{"error":"…"}`, or an error object
/// at the top level (vLLM's `{"object":"error","message",…}`).
pub(crate) fn midstream_error(provider: &str, data: &str) -> Error {
    match serde_json::from_str::<ErrorBody<'_>>(data) {
        Ok(ErrorBody {
            error: ErrorField::Object(object),
        }) => object.into_midstream(provider),
        Ok(ErrorBody {
            error: ErrorField::Text(message),
        }) => ErrorObject {
            message: Some(Str(Cow::Owned(message))),
            ..ErrorObject::default()
        }
        .into_midstream(provider),
        Err(_) => match serde_json::from_str::<ErrorObject<'_>>(data) {
            Ok(object) => object.into_midstream(provider),
            Err(e) => bad_json(provider, &e, data),
        },
    }
}

/// Turns an HTTP error response into an [`Error::Upstream`], reading at most 64 KiB of its body.
pub(crate) async fn status_error(provider: &str, mut response: reqwest::Response) -> Error {
    let status = response.status();
    let retry_after = retry_after_from_headers(response.headers());
    let mut body = Vec::new();
    // A body that breaks while being read still leaves the status to report.
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = ERROR_BODY_LIMIT - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= ERROR_BODY_LIMIT {
            break;
        }
    }
    drop(response);
    let text = String::from_utf8_lossy(&body);
    let (kind, message) = match serde_json::from_str::<ErrorBody<'_>>(&text) {
        Ok(ErrorBody {
            error: ErrorField::Object(object),
        }) => (object.kind(), object.message()),
        Ok(ErrorBody {
            error: ErrorField::Text(message),
        }) => (None, Some(excerpt(&message).into_owned())),
        Err(_) => (None, None),
    };
    let message = message.unwrap_or_else(|| {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("no error message")
                .to_owned()
        } else {
            excerpt(trimmed).into_owned()
        }
    });
    Error::from_status(provider, status.as_u16(), kind, message, retry_after)
}

/// How long the upstream asked to wait before a retry, from an error response's headers.
///
/// `retry-after-ms` (OpenAI's and Azure's milliseconds) wins when it holds a number; otherwise
/// `Retry-After` is read as seconds (fractions allowed) or as an HTTP date, which gives the time
/// left until then (zero once it has passed). A negative or unreadable value gives `None`, so the
/// retry falls back to its own backoff.
fn retry_after_from_headers(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A transport failure before the response.
pub(crate) fn connect_error(provider: &str, error: reqwest::Error) -> Error {
    Error::Connect {
        provider: provider.to_owned(),
        source: Box::new(error),
    }
}

/// Sends `body` as a streaming request and decodes the answer; lazy, so nothing happens until
/// the stream is first polled, and dropping it drops the request or the response body.
pub(crate) fn stream_request<P>(
    client: reqwest::Client,
    request: reqwest::RequestBuilder,
    body: Result<Vec<u8>>,
    parser: P,
) -> DeltaStream
where
    P: EventParser + Unpin,
{
    let started = async move {
        let provider = parser.provider().to_owned();
        let request = match body.and_then(|body| {
            request
                .body(body)
                .build()
                .map_err(|e| Error::Config(format!("{provider}: cannot build the request: {e}")))
        }) {
            Ok(request) => request,
            Err(error) => return futures::stream::iter([Err(error)]).boxed(),
        };
        match client.execute(request).await {
            Err(error) => futures::stream::iter([Err(connect_error(&provider, error))]).boxed(),
            Ok(response) if !response.status().is_success() => {
                let error = status_error(&provider, response).await;
                futures::stream::iter([Err(error)]).boxed()
            }
            Ok(response) => decode_with(response.bytes_stream(), parser),
        }
    };
    futures::stream::once(started).flatten().boxed()
}

/// Appends `path` to a base URL's path, keeping its query (Azure's `api-version`).
pub(crate) fn endpoint(base: &str, path: &str) -> Result<Url> {
    let mut url = Url::parse(base.trim())
        .map_err(|e| Error::Config(format!("invalid base URL {base:?}: {e}")))?;
    if url.cannot_be_a_base() {
        return Err(Error::Config(format!("invalid base URL {base:?}")));
    }
    let joined = format!("{}{path}", url.path().trim_end_matches('/'));
    url.set_path(&joined);
    Ok(url)
}

/// Checks an extra header and adds it.
pub(crate) fn add_header(headers: &mut HeaderMap, name: &str, value: &str) -> Result<()> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|e| Error::Config(format!("invalid header name {name:?}: {e}")))?;
    let mut value = HeaderValue::from_str(value)
        .map_err(|e| Error::Config(format!("invalid value for header {name}: {e}")))?;
    // Extra headers often carry credentials (Azure's `api-key`, gateway tokens).
    value.set_sensitive(true);
    headers.insert(name, value);
    Ok(())
}

/// A secret header value, hidden from `Debug`.
pub(crate) fn secret_header(value: &str) -> Result<HeaderValue> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| Error::Config("the API key is not a valid header value".to_owned()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Builds the HTTP client.
pub(crate) fn client(connect_timeout: Option<Duration>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().tcp_nodelay(true);
    if let Some(timeout) = connect_timeout {
        builder = builder.connect_timeout(timeout);
    }
    // No total timeout: it would cut long generations; idle timeouts belong to the
    // resilience wrappers.
    builder
        .build()
        .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))
}

/// An environment variable, unset when empty.
pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The names of headers, for `Debug` output that shows no values.
pub(crate) struct HeaderNames<'a>(pub(crate) &'a HeaderMap);

impl fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_query_and_ignore_trailing_slash() {
        for base in ["https://api.openai.com/v1", "https://api.openai.com/v1/"] {
            assert_eq!(
                endpoint(base, "/chat/completions").unwrap().as_str(),
                "https://api.openai.com/v1/chat/completions"
            );
        }
        assert_eq!(
            endpoint(
                "https://x.openai.azure.com/openai/deployments/gpt?api-version=2024-10-21",
                "/chat/completions"
            )
            .unwrap()
            .as_str(),
            "https://x.openai.azure.com/openai/deployments/gpt/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            endpoint("http://127.0.0.1:8080", "/v1/messages")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/v1/messages"
        );
        assert!(endpoint("not a url", "/x").is_err());
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after_from_headers(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(
            retry_after_from_headers(&h),
            Some(Duration::from_millis(1500))
        );
        let mut h = HeaderMap::new();
        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert("retry-after", HeaderValue::from_str(&date).unwrap());
        let d = retry_after_from_headers(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after_from_headers(&h), None);
    }

    #[test]
    fn str_borrows_unless_escaped() {
        let s: Str<'_> = serde_json::from_str(r#""plain""#).unwrap();
        assert!(matches!(s.0, Cow::Borrowed("plain")));
        let s: Str<'_> = serde_json::from_str(r#""a\"b""#).unwrap();
        assert!(matches!(s.0, Cow::Owned(ref o) if o == "a\"b"));
    }

    #[test]
    fn excerpt_cuts_at_char_boundary() {
        let long = "é".repeat(300);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert_eq!(excerpt("short"), "short");
    }
}
