//! `GET /metrics` and the count of HTTP requests (features `server` and `metrics`).

use axum::{
    Router,
    extract::{Request, State},
    http::{Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};

use super::{AppState, ServerOptions, trace};
use crate::metrics::{HTTP_REQUESTS, MetricsHandle};

impl ServerOptions {
    /// Serves `handle`'s metrics at `GET /metrics`, in the Prometheus text format (feature
    /// `metrics`; without it the route does not exist). The route is as open as the others:
    /// mount the router behind the application's access control, or scrape it on a private
    /// network.
    ///
    /// ```
    /// use chatstream::server::ServerOptions;
    ///
    /// # fn main() -> chatstream::Result<()> {
    /// let options = ServerOptions::default().with_metrics(chatstream::metrics::install()?);
    /// # let _ = options; Ok(()) }
    /// ```
    #[must_use]
    pub fn with_metrics(mut self, handle: MetricsHandle) -> Self {
        self.metrics = Some(handle);
        self
    }
}

/// Adds `GET /metrics` when the options carry a handle.
pub(super) fn route(router: Router<AppState>, options: &ServerOptions) -> Router<AppState> {
    match options.metrics {
        Some(_) => router.route("/metrics", get(render)),
        None => router,
    }
}

async fn render(State(state): State<AppState>) -> Response {
    let text = state
        .options
        .metrics
        .as_ref()
        .map(MetricsHandle::render)
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Counts every answered request by method, route template and status.
pub(super) async fn count(request: Request, next: Next) -> Response {
    let method = method(request.method());
    let route = trace::route(&request).unwrap_or("unmatched").to_owned();
    let response = next.run(request).await;
    ::metrics::counter!(
        HTTP_REQUESTS,
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string(),
    )
    .increment(1);
    response
}

/// The method as a label: a client may send any token as a method, so only the standard ones
/// are named.
fn method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
