//! The HTTP surface (feature `server`): an axum [`Router`] serving chatstream's whole contract
//! from a [`ChatService`], for an application to serve as it is or mount beside its own routes.
//!
//! | route | what it does |
//! |---|---|
//! | `GET /api/chats`, `POST /api/chats` | list chats (most recent first), create one (`{"id"?, "title"?}`) |
//! | `PATCH /api/chats/{chatId}`, `DELETE /api/chats/{chatId}` | rename (`{"title"}`); delete, stopping its live reply first |
//! | `POST /api/chats/{chatId}/regenerate` | answer the last user message again (202, 409 while a reply is live) |
//! | `POST /api/messages` | send `{"chatId","content","attachments"?,"clientMessageId"?,"model"?,"options"?}`: 202 with the stored user message and the reply's id; idempotent by `clientMessageId`; 409 while a reply is live; `options` are the reply's [`SendOptions`](crate::SendOptions) in camelCase (`system`, `temperature`, `topP`, `maxOutputTokens`, `stop`, `reasoningEffort`, `thinkingBudget`, `tools`, `toolChoice`, `responseFormat`, `extra`), a bad value a 422 `invalid_options`; `attachments` are images `[{"url"}]`, `data:` (png, jpeg, gif, webp; at most [`ServerOptions::max_image_bytes`] decoded) or `https:` URLs, a bad one a 4xx naming it (`invalid_attachment`, `unsupported_media_type`, `attachment_too_large`, `too_many_attachments`) |
//! | `GET /api/messages/{chatId}?limit&before` | a page of history, oldest first |
//! | `GET /api/stream/{chatId}` | the live reply as SSE (`start`, `delta`…, `error`?, `done`), numbered; `Last-Event-ID` or `?after=N` resumes; 204 when nothing is left |
//! | `POST /api/stream/{chatId}/terminate` | stop the live reply (upstream closed, partial reply saved `cancelled`) |
//! | `POST /api/chat` | stateless: `{"messages":[{"role","content"}]}` answered as SSE `data: {"content"}`… `{"done":true}` |
//! | `POST /api/chat` (a `useChat` body) | the Vercel AI SDK's UI message stream: `{"id","messages":[UIMessage…],"trigger"}` sends the newest user message (idempotent by its id) or regenerates, answered as the reply's chunks; told apart from the stateless body by its shape |
//! | `GET /api/chat/{chatId}/stream` | `useChat`'s resume: the live reply as UI message stream from its first chunk; 204 when none is live |
//! | `POST /api/chat/{chatId}/stop` | stop the live reply (`{"stopped"}`); closing a UI stream response does not, unless [`ServerOptions::cancel_on_disconnect`] |
//! | `GET /api/chat/{chatId}/messages` | the chat as `UIMessage`s, for `useChat({ messages })` |
//! | `POST /v1/chat/completions`, `GET /v1/models` | OpenAI-compatible, streaming and not; fields it does not read are forwarded upstream |
//! | `GET /healthz`, `GET /readyz` | the process answers; the store and the hub answer (503 naming what is down) |
//! | `POST /api/session`, `GET /api/session`, `DELETE /api/session` | a browser page signs in with `{"token"}` and is known by a cookie; who asks; sign out ([`auth::SessionCookie`]) |
//! | `GET /metrics` | the metrics in the Prometheus text format (feature `metrics`, when given a handle with [`ServerOptions::with_metrics`]; see [`crate::metrics`]) |
//!
//! Every route but sign-in, the health probes and `/metrics` (which names no user, chat or
//! credential) is behind the [`auth::Authenticator`] of [`ServerOptions::auth`] (none by
//! default: every request is the anonymous user's): a missing or refused credential is `401`
//! with `WWW-Authenticate: Bearer`. See [`auth`].
//!
//! Every error, including every rejected request (malformed JSON or path, a body over the limit,
//! a wrong method), is `{"error":{"code","message","type"}}` with a fitting status
//! ([`ApiError`]).
//!
//! ## Serving it
//!
//! ```no_run
//! use std::sync::Arc;
//! use chatstream::{ChatService, provider, server::{self, ServerOptions}};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let service = ChatService::builder()
//!         .provider(provider::from_env(provider::ProviderKind::from_env()?)?)
//!         .store(chatstream::store::open("sqlite://chat.db").await?)
//!         .build()?;
//!     let options = ServerOptions::default();
//!     let app = server::router(service.clone(), options.clone());
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     server::serve(listener, app, service, &options, server::shutdown_signal()).await?;
//!     Ok(())
//! }
//! ```
//!
//! ## Mounting it in an existing axum app
//!
//! The router carries its own state, so it nests under any prefix beside the app's routes:
//!
//! ```
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use chatstream::{ChatService, provider::DemoProvider, server::{self, ServerOptions}};
//!
//! # fn main() -> chatstream::Result<()> {
//! let service = ChatService::builder().provider(Arc::new(DemoProvider::new())).build()?;
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "my app" }))
//!     .nest("/chat", server::router(service, ServerOptions::default()));
//! // POST /chat/api/messages, GET /chat/api/stream/{chatId}, …
//! # let _ = app; Ok(()) }
//! ```

mod access;
mod attachments;
pub mod auth;
mod chats;
mod error;
mod extract;
mod health;
mod limits;
mod messages;
#[cfg(feature = "metrics")]
mod metrics;
mod openai;
mod signin;
mod sse;
mod stateless;
mod trace;
mod ui;

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{HeaderValue, Method, StatusCode, header},
    routing::{get, post},
};
use tokio::net::TcpListener;

pub use error::ApiError;
pub use extract::{ApiJson, ApiPath, ApiQuery};
pub use limits::Limits;

use crate::ChatService;

/// How the router serves: limits, keep-alive, CORS and shutdown. `Default` is what the server
/// example uses unless told otherwise.
///
/// ```
/// use std::time::Duration;
/// use chatstream::server::ServerOptions;
///
/// let options = ServerOptions::default()
///     .with_body_limit(256 * 1024)
///     .with_keep_alive(Duration::from_secs(10))
///     .with_cors_origins(["https://app.example"]);
/// assert_eq!(options.body_limit, 256 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerOptions {
    /// The largest request body, in bytes (default 1 MiB); larger ones get a JSON 413.
    pub body_limit: usize,
    /// How often an event stream with nothing to send gets a keep-alive comment (default 15 s).
    pub keep_alive: Duration,
    /// The origins allowed by CORS (default none: CORS off, same-origin only).
    pub cors_origins: Vec<String>,
    /// On shutdown, how long live replies may finish before they are stopped and saved
    /// `interrupted` (default 5 s; see [`serve`]).
    pub shutdown_grace: Duration,
    /// Whether closing a UI message stream response (a `useChat` client's `stop()`, a closed
    /// tab) stops its reply (default `false`: the reply goes on, saved and resumable, and
    /// `POST /api/chat/{chatId}/stop` stops it).
    pub cancel_on_disconnect: bool,
    /// Who may ask, and how a browser page signs in (default: no authentication, every request
    /// is the anonymous user's): see [`auth`].
    pub auth: auth::AuthOptions,
    /// Per-user limits (default none).
    pub limits: Limits,
    /// The largest image attachment, in bytes once decoded (default 5 MiB): a larger `data:`
    /// URL in `POST /api/messages` or `/v1/chat/completions` is a `413`
    /// `attachment_too_large`. Those two routes take a body of up to
    /// [`body_limit`](Self::body_limit) plus room for [`max_images`](Self::max_images) such
    /// images in base64.
    pub max_image_bytes: usize,
    /// The most image attachments of one message (default 4); more is a `422`
    /// `too_many_attachments`.
    pub max_images: usize,
    /// The metrics served at `GET /metrics` (feature `metrics`; default none, and no such
    /// route): see [`with_metrics`](Self::with_metrics).
    #[cfg(feature = "metrics")]
    pub metrics: Option<crate::metrics::MetricsHandle>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            body_limit: 1024 * 1024,
            keep_alive: Duration::from_secs(15),
            cors_origins: Vec::new(),
            shutdown_grace: Duration::from_secs(5),
            cancel_on_disconnect: false,
            auth: auth::AuthOptions::default(),
            limits: Limits::default(),
            max_image_bytes: 5 * 1024 * 1024,
            max_images: 4,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }
}

impl ServerOptions {
    /// Sets [`body_limit`](Self::body_limit).
    #[must_use]
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Sets [`keep_alive`](Self::keep_alive) (at least 10 ms).
    #[must_use]
    pub fn with_keep_alive(mut self, interval: Duration) -> Self {
        self.keep_alive = interval.max(MIN_KEEP_ALIVE);
        self
    }

    /// Sets [`cors_origins`](Self::cors_origins).
    #[must_use]
    pub fn with_cors_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cors_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`shutdown_grace`](Self::shutdown_grace).
    #[must_use]
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Sets [`cancel_on_disconnect`](Self::cancel_on_disconnect).
    #[must_use]
    pub fn with_cancel_on_disconnect(mut self, cancel: bool) -> Self {
        self.cancel_on_disconnect = cancel;
        self
    }

    /// Sets the [`Authenticator`](auth::Authenticator) of [`auth`](Self::auth).
    #[must_use]
    pub fn with_authenticator(mut self, authenticator: auth::DynAuthenticator) -> Self {
        self.auth.authenticator = authenticator;
        self
    }

    /// Sets the [`SessionCookie`](auth::SessionCookie) of [`auth`](Self::auth), which
    /// `POST /api/session` sets.
    #[must_use]
    pub fn with_session_cookie(mut self, cookie: auth::SessionCookie) -> Self {
        self.auth.session_cookie = Some(cookie);
        self
    }

    /// Sets [`max_image_bytes`](Self::max_image_bytes) and [`max_images`](Self::max_images).
    #[must_use]
    pub fn with_image_limits(mut self, max_bytes: usize, max_images: usize) -> Self {
        self.max_image_bytes = max_bytes;
        self.max_images = max_images;
        self
    }

    /// Sets [`Limits::max_live_per_user`].
    #[must_use]
    pub fn with_max_live_per_user(mut self, max: usize) -> Self {
        self.limits.max_live_per_user = Some(max);
        self
    }

    /// Sets [`Limits::requests_per_minute`] (`0`: no limit).
    #[must_use]
    pub fn with_rate_limit_per_min(mut self, requests: u32) -> Self {
        self.limits.requests_per_minute = std::num::NonZeroU32::new(requests);
        self
    }
}

/// The shortest keep-alive interval: a zero one would spin.
const MIN_KEEP_ALIVE: Duration = Duration::from_millis(10);

/// What every handler shares. Cheap to clone.
#[derive(Clone, Debug)]
struct AppState {
    service: ChatService,
    options: Arc<ServerOptions>,
    gate: Arc<access::Gate>,
}

/// The whole HTTP contract (see the [module docs](self)) as a router with its state: serve it
/// with [`serve`] or `axum::serve`, or nest it into an application's router.
pub fn router(service: ChatService, options: ServerOptions) -> Router {
    let body_limit = options.body_limit;
    // The routes that take images take room for them too.
    let image_body_limit = DefaultBodyLimit::max(body_limit.saturating_add(
        attachments::body_allowance(options.max_image_bytes, options.max_images),
    ));
    let cors = cors(&options.cors_origins);
    let gate = access::Gate {
        rate: options
            .limits
            .requests_per_minute
            .map(limits::RateLimit::new),
        live: options.limits.max_live_per_user.map(limits::LiveLimit::new),
    };
    let state = AppState {
        service,
        options: Arc::new(options),
        gate: Arc::new(gate),
    };
    let routes = Router::new()
        .route("/api/chats", get(chats::list).post(chats::create))
        .route(
            "/api/chats/{chat_id}",
            axum::routing::delete(chats::delete).patch(chats::rename),
        )
        .route("/api/chats/{chat_id}/regenerate", post(chats::regenerate))
        .route(
            "/api/messages",
            post(messages::send).layer(image_body_limit),
        )
        .route("/api/messages/{chat_id}", get(messages::history))
        .route("/api/stream/{chat_id}", get(messages::stream))
        .route("/api/stream/{chat_id}/terminate", post(messages::terminate))
        .route("/api/chat", post(stateless::chat))
        .route("/api/chat/{chat_id}/stream", get(ui::resume))
        .route("/api/chat/{chat_id}/stop", post(ui::stop))
        .route("/api/chat/{chat_id}/messages", get(ui::messages))
        .route(
            "/v1/chat/completions",
            post(openai::completions).layer(image_body_limit),
        )
        .route("/v1/models", get(openai::models))
        // Every route above needs a principal; the ones below do not.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::check,
        ))
        .route(
            "/api/session",
            post(signin::sign_in)
                .get(signin::whoami)
                .delete(signin::sign_out),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    #[cfg(feature = "metrics")]
    let routes = metrics::route(routes, &state.options);
    let router = routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(trace::layer());
    #[cfg(feature = "metrics")]
    let router = router.layer(axum::middleware::from_fn(metrics::count));
    let router = router.with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Serves `app` on `listener` until `signal` completes, then shuts down gracefully: the listener
/// stops accepting at once, live replies get [`ServerOptions::shutdown_grace`] to finish, and
/// those still running then are stopped and saved `interrupted` ([`ChatService::shutdown`]),
/// which ends their event streams so that open connections can close.
///
/// Each connection is handed a clone of one router (`into_make_service`): serving the `Router`
/// itself would rebuild every route per connection.
pub async fn serve<F>(
    listener: TcpListener,
    app: Router,
    service: ChatService,
    options: &ServerOptions,
    signal: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let stop = tokio_util::sync::CancellationToken::new();
    let grace = options.shutdown_grace;
    let replies_done = tokio::spawn({
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            service.shutdown(grace).await;
        }
    });
    let trigger = stop.clone();
    tokio::spawn(async move {
        signal.await;
        trigger.cancel();
    });
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .await?;
    // The server also ends without a signal if the listener fails: stop the replies then too.
    stop.cancel();
    replies_done.await.map_err(std::io::Error::other)?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on Ctrl-C or, on Unix, SIGTERM: the usual signal to hand to [`serve`].
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// CORS is off unless origins are configured.
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
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::PATCH])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
            ]),
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}
