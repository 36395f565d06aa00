//! The span of each HTTP request: tower-http's [`TraceLayer`], with the route template the
//! request matched (`http.route`, also in the OpenTelemetry span name) and the response's
//! status (`http.response.status_code`), and one log line per response at `info`.

use std::{fmt, time::Duration};

use axum::{
    extract::{MatchedPath, Request},
    http::Method,
    response::Response,
};
use tower_http::{
    classify::{ServerErrorsAsFailures, SharedClassifier},
    trace::{DefaultOnResponse, MakeSpan, OnResponse, TraceLayer},
};
use tracing::{Level, Span, field::Empty};

/// The layer [`router`](super::router) traces its requests with.
pub(super) type RequestTrace =
    TraceLayer<SharedClassifier<ServerErrorsAsFailures>, RequestSpan, (), ResponseStatus>;

pub(super) fn layer() -> RequestTrace {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_request(())
        .on_response(ResponseStatus(DefaultOnResponse::new().level(Level::INFO)))
}

/// The route template a request matched (`/api/stream/{chat_id}`), never its path: `None` for
/// a request no route matched.
pub(super) fn route<B>(request: &Request<B>) -> Option<&str> {
    request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
}

/// Makes a request's span: tower-http's default fields (`method`, `uri`, `version`) and
/// OpenTelemetry's HTTP server ones.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let method = request.method();
        let route = route(request);
        tracing::info_span!(
            "request",
            method = %method,
            uri = %request.uri(),
            version = ?request.version(),
            otel.name = %SpanName(method, route),
            otel.kind = "server",
            http.request.method = %method,
            http.route = route,
            http.response.status_code = Empty,
        )
    }
}

/// OpenTelemetry's name for an HTTP server span, `{method} {route}` (the method alone when no
/// route matched), formatted only if a subscriber records it.
struct SpanName<'a>(&'a Method, Option<&'a str>);

impl fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(route) => write!(f, "{} {route}", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Records the response's status on the request's span, then logs the response as tower-http
/// does.
#[derive(Debug, Clone)]
pub(super) struct ResponseStatus(DefaultOnResponse);

impl<B> OnResponse<B> for ResponseStatus {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        span.record("http.response.status_code", response.status().as_u16());
        self.0.on_response(response, latency, span);
    }
}
