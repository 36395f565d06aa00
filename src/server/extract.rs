//! Extractors whose rejections are [`ApiError`]s, so that no malformed request gets axum's
//! plain-text answer: bad JSON, a wrong content type, a body over the limit, a path or query that
//! does not parse (invalid UTF-8 included), a bad chat id, a non-numeric `Last-Event-ID`; and
//! [`Owner`], who asks, which every route scopes its chats by.

use axum::{
    Json,
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
    http::{StatusCode, request::Parts},
};
use serde::de::DeserializeOwned;

use super::{ApiError, auth::Principal};
use crate::{ChatId, ChatKey, UserId};

/// [`axum::Json`] answering its rejections as JSON errors: 400 `bad_json`, 415
/// `unsupported_media_type`, 413 `body_too_large`, 422 `invalid_body`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

/// [`axum::extract::Query`] answering its rejections as JSON errors (400 `bad_query`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(value))
    }
}

/// [`axum::extract::Path`] answering its rejections as JSON errors (400 `bad_path`, e.g. for a
/// segment that is not UTF-8 once decoded).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(value))
    }
}

/// Who asks: the owner whose chats a request may see and change. Every route takes it (directly,
/// or through [`ChatParam`]) and hands it to the store and the hub, which never go outside that
/// owner's chats; so another owner's chat is simply not there (404), whatever the route.
///
/// This is the one place that says who a request's owner is: the user of the [`Principal`] the
/// router's authentication put in the request (see [`super::auth`]). A route outside that
/// authentication has no owner and answers `500` rather than guess one.
#[derive(Debug, Clone)]
pub(crate) struct Owner(pub(crate) UserId);

impl<S: Send + Sync> FromRequestParts<S> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let principal = parts.extensions.get::<Principal>().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "this route is not behind the router's authentication",
            )
        })?;
        Ok(Owner(principal.user.clone()))
    }
}

/// The chat of the route's one path parameter, a valid [`ChatId`] (400 `invalid_chat_id`
/// otherwise), among the chats of the request's [`Owner`].
#[derive(Debug, Clone)]
pub(crate) struct ChatParam(pub(crate) ChatKey);

impl<S: Send + Sync> FromRequestParts<S> for ChatParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Owner(owner) = Owner::from_request_parts(parts, state).await?;
        let ApiPath(raw) = ApiPath::<String>::from_request_parts(parts, state).await?;
        Ok(ChatParam(ChatKey::new(owner, chat_id(&raw)?)))
    }
}

/// A chat id from a request (400 `invalid_chat_id` when it is not one).
pub(crate) fn chat_id(raw: &str) -> Result<ChatId, ApiError> {
    ChatId::new(raw).map_err(|e| ApiError::bad_request("invalid_chat_id", e.to_string()))
}

/// The `Last-Event-ID` header a reconnecting `EventSource` sends: `None` when absent, 400
/// `invalid_last_event_id` when it is not a number.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LastEventId(pub(crate) Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("last-event-id") else {
            return Ok(LastEventId(None));
        };
        value
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|n| LastEventId(Some(n)))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_last_event_id", "Last-Event-ID must be a number")
            })
    }
}
