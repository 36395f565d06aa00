//! `/api/session`: a browser page signs in with a key or token and is known by a
//! [`SessionCookie`](super::auth::SessionCookie) from then on, since its `EventSource` cannot
//! send an `Authorization` header.
//!
//! - `POST /api/session` with `{"token"}`: the token is checked by the router's authenticator
//!   (as `Authorization: Bearer TOKEN`); `204` with the cookie, `401` when it is refused.
//! - `GET /api/session`: who the request is from, `{"user","credential"}` (`401` when no one).
//! - `DELETE /api/session`: `204`, clearing the cookie.
//!
//! Without a session cookie in the options, `POST` and `DELETE` answer `404`. Both must come
//! from the server's own origin when they say where they come from (`403` otherwise), so that
//! no other site signs a browser in or out.

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ApiError, AppState,
    access::{authenticate, refused, same_origin},
    auth::{AuthError, Credential, SessionCookie},
    extract::ApiJson,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignIn {
    token: String,
}

/// `POST /api/session` with `{"token"}`.
pub(crate) async fn sign_in(
    State(state): State<AppState>,
    parts: Parts,
    ApiJson(body): ApiJson<SignIn>,
) -> Result<Response, Response> {
    let cookie = session_cookie(&state, &parts).map_err(IntoResponse::into_response)?;
    // The token is checked as though the request had carried it: the authenticator reads the
    // same headers, the browser's cookie aside.
    let mut asked = parts.clone();
    asked.headers.remove(header::COOKIE);
    let refusal = |e: AuthError| {
        refused(&parts, &e);
        e.into_response()
    };
    let mut bearer =
        HeaderValue::from_str(&format!("Bearer {}", body.token.trim())).map_err(|_| {
            refusal(AuthError::invalid(
                "the token holds characters no token has",
            ))
        })?;
    bearer.set_sensitive(true);
    asked.headers.insert(header::AUTHORIZATION, bearer);
    let principal = state
        .options
        .auth
        .authenticator
        .authenticate(&asked)
        .await
        .map_err(refusal)?;
    tracing::info!(user = %principal.user, "signed in");
    Ok((cookie.open(&principal.user), StatusCode::NO_CONTENT).into_response())
}

/// `DELETE /api/session`.
pub(crate) async fn sign_out(
    State(state): State<AppState>,
    parts: Parts,
) -> Result<Response, ApiError> {
    let cookie = session_cookie(&state, &parts)?;
    Ok((cookie.close(), StatusCode::NO_CONTENT).into_response())
}

/// `GET /api/session`: `{"user","credential"}`, `credential` being `none`, `bearer`, `cookie`
/// or `header`.
pub(crate) async fn whoami(State(state): State<AppState>, parts: Parts) -> Response {
    match authenticate(&state, &parts).await {
        Ok(principal) => {
            let credential = match principal.credential {
                Credential::Bearer => "bearer",
                Credential::Cookie => "cookie",
                Credential::Header => "header",
                Credential::None => "none",
            };
            Json::<Value>(json!({"user": principal.user, "credential": credential})).into_response()
        }
        Err(e) => {
            refused(&parts, &e);
            e.into_response()
        }
    }
}

/// The configured cookie, for a request from the server's own origin (or one that does not say
/// where it comes from, as a client outside a browser).
fn session_cookie<'a>(state: &'a AppState, parts: &Parts) -> Result<&'a SessionCookie, ApiError> {
    let Some(cookie) = &state.options.auth.session_cookie else {
        return Err(ApiError::not_found("this server has no sign-in by cookie"));
    };
    if same_origin(state, parts) == Some(false) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "signing in or out must come from this server's own page (its Origin header)",
        ));
    }
    Ok(cookie)
}
