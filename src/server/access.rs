//! The gate in front of every chat route: who asks (a bearer credential through the
//! authenticator, or the session cookie), whether a request borne by a cookie comes from the
//! server's own origin, and whether its user is within their request rate. The [`Principal`]
//! goes into the request's extensions, where the handlers read the owner of the chats they
//! touch.

use axum::{
    extract::{MatchedPath, Request, State},
    http::{Method, StatusCode, Uri, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{
    ApiError, AppState,
    auth::{AuthError, Credential, Principal},
    limits::{LiveLimit, RateLimit},
};

/// What the gate keeps from one request to the next: the request rate of each user, and the
/// turns of the live-reply limit.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    pub(crate) rate: Option<RateLimit>,
    pub(crate) live: Option<LiveLimit>,
}

/// The middleware: authenticates, checks the origin of cookie-borne changes, counts the
/// request against its user's rate, then hands the request on with its [`Principal`].
pub(crate) async fn check(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let principal = match authenticate(&state, &parts).await {
        Ok(principal) => principal,
        Err(e) => {
            refused(&parts, &e);
            return e.into_response();
        }
    };
    if let Err(e) = check_origin(&state, &parts, principal.credential) {
        return e.into_response();
    }
    if let Some(rate) = &state.gate.rate
        && let Err(e) = rate.check(&principal.user)
    {
        tracing::info!(
            route = route(&parts),
            user = %principal.user,
            "request rate limit reached"
        );
        return e.into_response();
    }
    parts.extensions.insert(principal);
    next.run(Request::from_parts(parts, body)).await
}

/// Who sends the request: an `Authorization` header goes to the authenticator (a client that
/// sends one means it, whatever cookie it also has); without one, a session cookie names its
/// user; without either, the authenticator decides.
pub(crate) async fn authenticate(state: &AppState, parts: &Parts) -> Result<Principal, AuthError> {
    let auth = &state.options.auth;
    if !parts.headers.contains_key(header::AUTHORIZATION)
        && let Some(cookie) = &auth.session_cookie
        && let Some(user) = cookie.user(&parts.headers)
    {
        return user.map(|user| Principal::new(user, Credential::Cookie));
    }
    auth.authenticator.authenticate(parts).await
}

/// Logs a refused credential with its reason and route; never the credential.
pub(crate) fn refused(parts: &Parts, e: &AuthError) {
    tracing::info!(
        method = %parts.method,
        route = route(parts),
        reason = e.reason(),
        "authentication failed"
    );
}

/// The matched route's template (`/api/messages/{chat_id}`), never the path with its values.
fn route(parts: &Parts) -> &str {
    parts
        .extensions
        .get::<MatchedPath>()
        .map_or("?", MatchedPath::as_str)
}

/// Requests that change something and are borne by a credential the browser attaches by itself
/// must come from the server's own origin or one allowed by CORS: `403 cross_origin` otherwise.
fn check_origin(state: &AppState, parts: &Parts, credential: Credential) -> Result<(), ApiError> {
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if credential != Credential::Cookie || safe || same_origin(state, parts) == Some(true) {
        return Ok(());
    }
    tracing::info!(
        method = %parts.method,
        route = route(parts),
        "a cookie-borne request from another origin was refused"
    );
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "cross_origin",
        "a request signed in by cookie that changes anything must come from this server's own \
         page (its Origin header)",
    ))
}

/// Whether the request comes from the server's own origin or one allowed by CORS, by its
/// `Origin` header or, without one, its `Referer`: `None` when it has neither.
///
/// The own origin is the one whose host and port are the request's `Host` (its authority): the
/// scheme is not compared, since a proxy in front may end TLS and forward plain HTTP.
pub(crate) fn same_origin(state: &AppState, parts: &Parts) -> Option<bool> {
    let origin = match parts.headers.get(header::ORIGIN) {
        Some(origin) => origin.to_str().ok().unwrap_or("null"),
        None => parts
            .headers
            .get(header::REFERER)?
            .to_str()
            .ok()
            .unwrap_or("null"),
    };
    let Ok(origin) = origin.parse::<Uri>() else {
        return Some(false);
    };
    let (Some(scheme), Some(authority)) = (origin.scheme_str(), origin.authority()) else {
        return Some(false);
    };
    let allowed = &state.options.cors_origins;
    if allowed
        .iter()
        .any(|o| o.eq_ignore_ascii_case(&format!("{scheme}://{authority}")))
    {
        return Some(true);
    }
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    Some(
        matches!(scheme, "http" | "https")
            && host.is_some_and(|host| host.eq_ignore_ascii_case(authority.as_str())),
    )
}
