//! The router and its shared state.

use std::sync::Arc;

use axum::{
    Router,
    extract::{DefaultBodyLimit, FromRequest, Path},
    http::{HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response, Sse,
        sse::{Event, KeepAlive},
    },
    routing::{get, post},
};
use chatstream::{ChatService, DynProvider};

use crate::{api, config::Config, error::ApiError, openai_compat, stateless};

/// What every handler shares. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Conversations: the provider, the store and the hub of live replies.
    pub service: ChatService,
    /// The upstream, for the stateless endpoints.
    pub provider: DynProvider,
    /// The model name the server reports and sends when a request names none.
    pub model: String,
    pub config: Arc<Config>,
}

/// `axum::Json` with errors answered as JSON (400 bad JSON, 415 wrong content type, 413 too
/// large, 422 wrong shape).
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// An event stream with the headers that keep proxies from buffering it and keep-alive comments.
/// A first comment goes out at once, so clients see the stream open before the first event.
pub fn sse_response<S>(events: S, state: &AppState) -> Response
where
    S: futures::Stream<Item = Result<Event, std::convert::Infallible>> + Send + 'static,
{
    let opened = futures::stream::once(async { Ok(Event::default().comment("open")) });
    let sse = Sse::new(futures::StreamExt::chain(opened, events))
        .keep_alive(KeepAlive::new().interval(state.config.keep_alive));
    let mut response = sse.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The hub of live replies: Redis when `CHATSTREAM_REDIS_URL` is set (several instances share
/// replies), else in-process.
pub async fn open_hub(config: &Config) -> chatstream::Result<chatstream::DynStreamHub> {
    Ok(match &config.redis_url {
        Some(url) => {
            let mut builder =
                chatstream::hub::RedisHub::builder(url.clone()).prefix(config.redis_prefix.clone());
            if let Some(lease) = config.redis_lease {
                builder = builder.lease(lease);
            }
            Arc::new(builder.connect().await?)
        }
        None => Arc::new(chatstream::LocalHub::new()),
    })
}

/// The whole HTTP surface; `main` serves it, tests serve it on port 0.
pub fn app(state: AppState) -> Router {
    let body_limit = state.config.body_limit;
    let cors = cors(&state.config.cors_origins);
    let router = Router::new()
        .route("/", get(index))
        .route("/static/{*path}", get(asset))
        .route("/api/chats", get(api::list_chats).post(api::create_chat))
        .route(
            "/api/chats/{chat_id}",
            axum::routing::delete(api::delete_chat).patch(api::update_chat),
        )
        .route("/api/chats/{chat_id}/regenerate", post(api::regenerate))
        .route("/api/messages", post(api::send_message))
        .route("/api/messages/{chat_id}", get(api::history))
        .route("/api/stream/{chat_id}", get(api::stream))
        .route("/api/stream/{chat_id}/terminate", post(api::terminate))
        .route("/api/chat", post(stateless::chat))
        .route("/v1/chat/completions", post(openai_compat::completions))
        .route("/v1/models", get(openai_compat::models))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(request_log())
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// One log line per request, at `info`: method, path, status and latency.
fn request_log() -> tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    tower_http::trace::DefaultMakeSpan,
    (),
    tower_http::trace::DefaultOnResponse,
> {
    use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
    TraceLayer::new_for_http()
        .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO))
        .on_request(())
        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
}

/// CORS is off unless origins are configured (`CHATSTREAM_CORS_ORIGINS`, comma-separated).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| match HeaderValue::from_str(o) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(origin = %o, "ignoring an invalid CORS origin");
                None
            }
        })
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([
                axum::http::Method::GET,
                axum::http::Method::POST,
                axum::http::Method::DELETE,
                axum::http::Method::PATCH,
            ])
            .allow_headers([
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
            ]),
    )
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

async fn asset(Path(path): Path<String>) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(name, ..)| *name == path) else {
        return not_found().await.into_response();
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

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
