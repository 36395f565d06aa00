//! Who asks: an [`Authenticator`] turns a request's parts into a [`Principal`] (the
//! [`UserId`] every chat route is scoped by) or an [`AuthError`] (a `401`).
//!
//! Three come with the crate, and an application plugs its own the same way (its framework's
//! session cookie, a header set by a trusted proxy):
//!
//! | authenticator | credential | user |
//! |---|---|---|
//! | [`NoAuth`] (the default) | none | everyone is [`UserId::anonymous`] |
//! | [`ApiKeys`] | `Authorization: Bearer KEY`, checked against SHA-256 digests in constant time | the key's user |
//! | [`JwtAuth`] | `Authorization: Bearer JWT` signed by the app's login (HS256, RS256 or ES256) | the token's `sub` |
//!
//! The router runs the authenticator on every chat route (not on sign-in, `/healthz`,
//! `/readyz` and `/metrics`) before anything else, so a request without a valid credential
//! learns nothing, not even whether its body would have parsed. The principal's user is the
//! owner every route scopes its chats by: another user's chat is, to them, a chat that does not
//! exist. A browser page, whose `EventSource` cannot send headers,
//! signs in once with `POST /api/session` and is then known by a [`SessionCookie`]; requests
//! authenticated by a cookie that change anything must come from the server's own origin.
//!
//! No credential is ever logged, put in an error, a span or a metric: failures are logged with
//! their reason and the route only.
//!
//! # An authenticator of one's own
//!
//! A header set by a reverse proxy that has already authenticated the user (and strips the
//! header from what clients send):
//!
//! ```
//! use async_trait::async_trait;
//! use axum::http::request::Parts;
//! use chatstream::{
//!     UserId,
//!     server::{
//!         ServerOptions,
//!         auth::{AuthError, Authenticator, Credential, Principal},
//!     },
//! };
//!
//! #[derive(Debug)]
//! struct ProxyHeader;
//!
//! #[async_trait]
//! impl Authenticator for ProxyHeader {
//!     async fn authenticate(&self, parts: &Parts) -> Result<Principal, AuthError> {
//!         let Some(value) = parts.headers.get("x-authenticated-user") else {
//!             return Err(AuthError::Missing);
//!         };
//!         let user = value
//!             .to_str()
//!             .ok()
//!             .and_then(|v| UserId::new(v).ok())
//!             .ok_or_else(|| AuthError::invalid("the proxy's user header is not a user id"))?;
//!         Ok(Principal::new(user, Credential::Header))
//!     }
//! }
//!
//! let options = ServerOptions::default().with_authenticator(std::sync::Arc::new(ProxyHeader));
//! # let _ = options;
//! ```
//!
//! An authenticator that reads a credential the browser attaches by itself (a cookie of the
//! application's framework) answers [`Credential::Cookie`], so that the router's check against
//! cross-site request forgery applies to it.

mod cookie;
mod jwt;
mod keys;

use std::{borrow::Cow, fmt::Debug, sync::Arc};

use async_trait::async_trait;
use axum::{
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};

pub use cookie::SessionCookie;
pub use jwt::JwtAuth;
pub use keys::{ApiKeys, NewApiKey};

use super::ApiError;
use crate::UserId;

/// Turns a request's parts into the [`Principal`] who asks, or refuses it.
///
/// Shared as `Arc<dyn Authenticator>` ([`DynAuthenticator`]) and called concurrently, once per
/// request (and once per `POST /api/session`, with the token to sign in with as its
/// `Authorization: Bearer` header). See the [module docs](self) for the ones the crate has and
/// an example of one's own.
#[async_trait]
pub trait Authenticator: Send + Sync + Debug + 'static {
    /// Who sends the request: [`AuthError::Missing`] when it carries no credential this
    /// authenticator reads, [`AuthError::Invalid`] when it carries one that is refused. An
    /// error's reason is logged and answered; it must never hold the credential itself.
    async fn authenticate(&self, parts: &Parts) -> Result<Principal, AuthError>;
}

/// A shared [`Authenticator`].
pub type DynAuthenticator = Arc<dyn Authenticator>;

/// Who sends a request: the user every chat route is scoped by, and how they proved it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Principal {
    /// The user.
    pub user: UserId,
    /// What proved it.
    pub credential: Credential,
}

impl Principal {
    /// A principal proved by `credential`.
    pub fn new(user: UserId, credential: Credential) -> Self {
        Principal { user, credential }
    }

    /// The anonymous user, with no credential: what [`NoAuth`] answers.
    pub fn anonymous() -> Self {
        Principal::new(UserId::anonymous(), Credential::None)
    }
}

/// What proved a [`Principal`]: it decides whether the request must come from the server's own
/// origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Credential {
    /// None: [`NoAuth`]'s anonymous user.
    None,
    /// An `Authorization: Bearer` token. A browser never attaches one by itself, so another
    /// site cannot make it send one.
    Bearer,
    /// A cookie, which a browser attaches by itself: requests that change anything (`POST`,
    /// `PUT`, `PATCH`, `DELETE`) must carry an `Origin` (or, without one, a `Referer`) of the
    /// server's own origin or one allowed by CORS, else they are answered `403`.
    Cookie,
    /// Another header a browser does not attach by itself, such as one set by a trusted proxy.
    Header,
}

/// Why a request was not authenticated: answered `401` with `WWW-Authenticate: Bearer` and the
/// JSON error shape (code `unauthorized`, or `invalid_token` when a credential was refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The request carries no credential.
    #[error("this route needs a credential: send Authorization: Bearer KEY_OR_TOKEN, or sign in")]
    Missing,
    /// The request carries a credential that is refused: malformed, unknown, expired, badly
    /// signed, for another issuer or audience, or naming no valid user.
    #[error("the credential was refused: {reason}")]
    Invalid {
        /// Why, in words that never include the credential.
        reason: Cow<'static, str>,
    },
}

impl AuthError {
    /// A refused credential, for `reason` (which must not include the credential).
    pub fn invalid(reason: impl Into<Cow<'static, str>>) -> Self {
        AuthError::Invalid {
            reason: reason.into(),
        }
    }

    /// The reason, for logs: `missing` or the refusal's reason.
    pub fn reason(&self) -> &str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid { reason } => reason,
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let (code, challenge) = match &self {
            AuthError::Missing => ("unauthorized", "Bearer"),
            AuthError::Invalid { .. } => ("invalid_token", "Bearer error=\"invalid_token\""),
        };
        let mut response =
            ApiError::new(StatusCode::UNAUTHORIZED, code, self.to_string()).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        response
    }
}

/// The token of an `Authorization: Bearer TOKEN` header: `Ok(None)` without the header, an
/// [`AuthError::Invalid`] when the header is there but is not a bearer token. For
/// authenticators of bearer tokens.
pub fn bearer_token(parts: &Parts) -> Result<Option<&str>, AuthError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || AuthError::invalid("the Authorization header is not `Bearer TOKEN`");
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    // The scheme is case-insensitive (RFC 9110, section 11.1).
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(malformed());
    }
    Ok(Some(token))
}

/// No authentication: every request is [`UserId::anonymous`]'s. The default, for a server only
/// its own machine reaches.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAuth;

#[async_trait]
impl Authenticator for NoAuth {
    async fn authenticate(&self, _: &Parts) -> Result<Principal, AuthError> {
        Ok(Principal::anonymous())
    }
}

/// How the router authenticates: the [`Authenticator`], and the [`SessionCookie`] a browser
/// page signs in with, if any. Part of [`ServerOptions`](super::ServerOptions).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthOptions {
    /// Who asks (default [`NoAuth`]).
    pub authenticator: DynAuthenticator,
    /// The cookie `POST /api/session` sets (default none: the route answers `404`).
    pub session_cookie: Option<SessionCookie>,
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions {
            authenticator: Arc::new(NoAuth),
            session_cookie: None,
        }
    }
}

/// Two options are equal when they share one authenticator and have equal cookies.
impl PartialEq for AuthOptions {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.authenticator, &other.authenticator)
            && self.session_cookie == other.session_cookie
    }
}

impl Eq for AuthOptions {}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    fn parts(authorization: Option<&str>) -> Parts {
        let mut request = Request::builder();
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn bearer_tokens_are_read_and_other_schemes_refused() {
        assert_eq!(bearer_token(&parts(None)), Ok(None));
        assert_eq!(bearer_token(&parts(Some("Bearer abc"))), Ok(Some("abc")));
        assert_eq!(bearer_token(&parts(Some("bearer  abc "))), Ok(Some("abc")));
        for bad in ["Basic YTpi", "Bearer", "Bearer ", "Bearer a b", "abc"] {
            assert!(
                matches!(
                    bearer_token(&parts(Some(bad))),
                    Err(AuthError::Invalid { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn refusals_are_401_with_a_bearer_challenge() {
        let response = AuthError::Missing.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let response = AuthError::invalid("expired").into_response();
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
    }
}
