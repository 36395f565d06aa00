//! Event-stream responses: the headers that keep proxies from buffering, an opening comment, and
//! keep-alive comments.

use std::{convert::Infallible, time::Duration};

use axum::{
    http::{HeaderValue, header},
    response::{
        IntoResponse, Response, Sse,
        sse::{Event, KeepAlive},
    },
};
use futures::{Stream, StreamExt};

/// An event stream with the headers that keep proxies from buffering it and keep-alive comments
/// every `keep_alive`. A first comment goes out at once, so clients see the stream open before
/// the first event.
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
