//! Event-stream responses: the headers that keep proxies from buffering, an opening comment,
//! keep-alive comments, and the events that are ready at once written in one body frame.
//!
//! The events are encoded here rather than through axum's `Event`, which makes one body frame
//! (and, on a busy connection, one socket write) per event. The bytes are the same as `Event`'s:
//! each field is `name: value\n`, in the order written, and a blank line ends the event.

use std::{
    convert::Infallible,
    fmt::Write as _,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{
    body::Body,
    http::{HeaderValue, header},
    response::{
        IntoResponse, Response, Sse,
        sse::{Event, KeepAlive},
    },
};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

/// The most events put into one body frame: an upstream read at full speed holds about 16.
const MAX_BATCH: usize = 64;

/// What an event usually takes, to size a frame's buffer once.
const EVENT_SIZE_HINT: usize = 96;

/// The comment sent first, so that clients see the stream open before the first event.
const OPEN: &[u8] = b": open\n\n";

/// A keep-alive comment, as axum's default `KeepAlive` writes it.
const KEEP_ALIVE: &[u8] = b":\n\n";

/// An event stream of axum `Event`s, one body frame each, with the headers that keep proxies
/// from buffering it and keep-alive comments every `keep_alive`. A first comment goes out at
/// once, so clients see the stream open before the first event.
pub(crate) fn sse_response<S>(events: S, keep_alive: Duration) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let opened = futures::stream::once(async { Ok(Event::default().comment("open")) });
    let keep_alive = KeepAlive::new().interval(keep_alive.max(super::MIN_KEEP_ALIVE));
    let sse = Sse::new(opened.chain(events)).keep_alive(keep_alive);
    let mut response = sse.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// An event stream whose items `encode` writes as SSE events (with [`field`], [`data`],
/// [`json_data`] and [`end`]); what is ready at once goes out in one body frame. Otherwise as
/// [`sse_response`]: the same headers, opening comment and keep-alive comments.
pub(crate) fn batched_response<S, F>(items: S, encode: F, keep_alive: Duration) -> Response
where
    S: Stream + Unpin + Send + 'static,
    S::Item: Send,
    F: FnMut(S::Item, &mut BytesMut) + Send + 'static,
{
    let interval = keep_alive.max(super::MIN_KEEP_ALIVE);
    let body = Body::from_stream(KeepAliveFrames {
        frames: frames(items, encode),
        opened: false,
        interval,
        timer: Box::pin(tokio::time::sleep(interval)),
    });
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The items as body frames: every item ready when the stream is polled is encoded into one
/// frame, and the frame leaves as soon as the next item is not ready, so a lone event is never
/// held back waiting for company. A frame may be empty (items that encode to nothing).
pub(crate) fn frames<S, F>(items: S, mut encode: F) -> impl Stream<Item = Bytes> + Unpin + Send
where
    S: Stream + Unpin + Send,
    S::Item: Send,
    F: FnMut(S::Item, &mut BytesMut) + Send,
{
    items.ready_chunks(MAX_BATCH).map(move |batch| {
        let mut out = BytesMut::with_capacity(EVENT_SIZE_HINT * batch.len());
        for item in batch {
            encode(item, &mut out);
        }
        out.freeze()
    })
}

/// The body: the opening comment, then the frames, and a keep-alive comment whenever none went
/// out for an interval (as axum's `KeepAliveStream` does).
struct KeepAliveFrames<S> {
    frames: S,
    opened: bool,
    interval: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<S> KeepAliveFrames<S> {
    fn sent(&mut self, frame: Bytes) -> Poll<Option<Result<Bytes, Infallible>>> {
        self.timer.as_mut().reset(Instant::now() + self.interval);
        Poll::Ready(Some(Ok(frame)))
    }
}

impl<S: Stream<Item = Bytes> + Unpin> Stream for KeepAliveFrames<S> {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if !this.opened {
            this.opened = true;
            return this.sent(Bytes::from_static(OPEN));
        }
        loop {
            match this.frames.poll_next_unpin(cx) {
                Poll::Ready(Some(frame)) if frame.is_empty() => continue,
                Poll::Ready(Some(frame)) => return this.sent(frame),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    ready!(this.timer.as_mut().poll(cx));
                    return this.sent(Bytes::from_static(KEEP_ALIVE));
                }
            }
        }
    }
}

/// Writes the field `name: value` (a value without line breaks: an id or an event name).
pub(crate) fn field(out: &mut BytesMut, name: &str, value: &str) {
    debug_assert!(
        !value.contains(['\r', '\n']),
        "an SSE field value: {value:?}"
    );
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_u8(b'\n');
}

/// Writes the field `id: seq`.
pub(crate) fn id(out: &mut BytesMut, seq: u64) {
    out.put_slice(b"id: ");
    // Writing into a `BytesMut` cannot fail.
    let _ = write!(out, "{seq}");
    out.put_u8(b'\n');
}

/// Writes `data` as `data:` lines, one per line of it, as axum's `Event::data` does.
pub(crate) fn data(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.put_slice(b"data: ");
    let mut rest = data;
    while let Some(at) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
        out.put_slice(&rest[..=at]);
        out.put_slice(b"data: ");
        rest = &rest[at + 1..];
    }
    out.put_slice(rest);
    out.put_u8(b'\n');
}

/// Writes `value` as compact JSON on one `data:` line, as axum's `Event::json_data` does (compact
/// JSON never holds a raw line break: those in strings are escaped). On an error, `out` is as
/// it was.
pub(crate) fn json_data<T: serde::Serialize + ?Sized>(
    out: &mut BytesMut,
    value: &T,
) -> serde_json::Result<()> {
    let start = out.len();
    out.put_slice(b"data: ");
    if let Err(e) = serde_json::to_writer(out.writer(), value) {
        out.truncate(start);
        return Err(e);
    }
    out.put_u8(b'\n');
    Ok(())
}

/// Ends an event (the blank line).
pub(crate) fn end(out: &mut BytesMut) {
    out.put_u8(b'\n');
}

/// What the routes' tests compare their responses with.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// What axum's `Sse` writes for these events, one per frame, concatenated: the bytes the
    /// routes wrote before they encoded events themselves.
    pub(crate) async fn axum_bytes(events: Vec<Event>) -> Bytes {
        let events = futures::stream::iter(events.into_iter().map(Ok::<_, Infallible>));
        let frames = body_frames(Sse::new(events).into_response()).await;
        frames.concat().into()
    }

    /// A response's body frames, read to the end.
    pub(crate) async fn body_frames(response: Response) -> Vec<Bytes> {
        let body = response.into_body().into_data_stream();
        body.map(|frame| frame.unwrap()).collect().await
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::axum_bytes, *};
    use futures::{FutureExt, stream};

    fn encode(text: &str, out: &mut BytesMut) {
        data(out, text.as_bytes());
        end(out);
    }

    #[tokio::test]
    async fn fields_are_written_as_axum_writes_them() {
        let mut out = BytesMut::new();
        id(&mut out, 42);
        field(&mut out, "event", "delta");
        json_data(&mut out, &serde_json::json!({"text": "a\nb\r\"c\""})).unwrap();
        end(&mut out);
        data(&mut out, b"one\ntwo\rthree\r\n");
        end(&mut out);
        data(&mut out, b"");
        field(&mut out, "event", "done");
        end(&mut out);
        let expected = axum_bytes(vec![
            Event::default()
                .id("42")
                .event("delta")
                .json_data(serde_json::json!({"text": "a\nb\r\"c\""}))
                .unwrap(),
            Event::default().data("one\ntwo\rthree\r\n"),
            Event::default().data("").event("done"),
        ])
        .await;
        assert_eq!(out.freeze(), expected);
    }

    #[tokio::test]
    async fn events_ready_at_once_leave_in_one_frame() {
        let items = ["one", "two", "three"];
        let mut frames = frames(stream::iter(items), encode);
        let frame = frames.next().await.unwrap();
        let mut expected = BytesMut::new();
        for item in items {
            encode(item, &mut expected);
        }
        assert_eq!(frame, expected.freeze());
        assert!(frames.next().await.is_none());
    }

    #[test]
    fn a_lone_event_leaves_without_waiting_for_more() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<&str>();
        let mut frames = frames(rx, encode);
        assert!(
            frames.next().now_or_never().is_none(),
            "nothing to send yet"
        );
        tx.unbounded_send("alone").unwrap();
        // The sender is still open: more could come, and the frame does not wait for it.
        let frame = frames.next().now_or_never().flatten();
        assert_eq!(frame.as_deref(), Some(&b"data: alone\n\n"[..]));
        tx.unbounded_send("next").unwrap();
        tx.unbounded_send("last").unwrap();
        drop(tx);
        let frame = frames.next().now_or_never().flatten();
        assert_eq!(frame.as_deref(), Some(&b"data: next\n\ndata: last\n\n"[..]));
        assert_eq!(frames.next().now_or_never(), Some(None));
    }

    #[tokio::test]
    async fn the_body_opens_then_sends_frames_and_skips_empty_ones() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<&str>();
        let response = batched_response(
            rx,
            |item: &str, out: &mut BytesMut| {
                if !item.is_empty() {
                    encode(item, out);
                }
            },
            Duration::from_secs(15),
        );
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        assert_eq!(response.headers()["x-accel-buffering"], "no");
        let mut body = response.into_body().into_data_stream();
        let mut next = || body.next().now_or_never().flatten().map(Result::unwrap);
        assert_eq!(next().as_deref(), Some(&b": open\n\n"[..]));
        // An item that encodes to nothing sends no frame.
        tx.unbounded_send("").unwrap();
        assert_eq!(next(), None);
        tx.unbounded_send("one").unwrap();
        tx.unbounded_send("two").unwrap();
        assert_eq!(next().as_deref(), Some(&b"data: one\n\ndata: two\n\n"[..]));
        drop(tx);
        assert_eq!(body.next().await.map(Result::unwrap), None);
    }
}
