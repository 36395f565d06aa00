//! The web page: `GET /` and the files it loads, compiled into the binary so that the server
//! runs from any directory.

use axum::{
    Router,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};
use chatstream::server::{ApiError, ApiPath};

/// The page's routes, to merge with the chat routes of `chatstream::server::router`.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/static/{*path}", get(asset))
}

/// What the page may load and run: its own files only. Model output is rendered as HTML, so
/// this is the second net under the renderer's escaping: no inline script runs, and no image is
/// fetched from elsewhere (data URLs are shown). Inline styles are allowed for table alignment.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

async fn index() -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("static/index.html"),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The page's files, compiled in so that the server runs from any directory. A table rather
/// than a crate: a handful of files, each with its type known here.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("static/app.css"),
    ),
    (
        "vendor/markdown-it.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/vendor/markdown-it.min.js"),
    ),
    (
        "vendor/highlight.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/vendor/highlight.min.js"),
    ),
];

async fn asset(ApiPath(path): ApiPath<String>) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(name, ..)| *name == path) else {
        return ApiError::not_found("no such file").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, *content_type),
            // Revalidated on every load, so a new build's page never runs with an old script.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        *body,
    )
        .into_response()
}
