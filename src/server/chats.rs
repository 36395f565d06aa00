//! The chat routes: list, create, rename, delete, regenerate.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;

use super::{
    ApiError, AppState,
    extract::{ApiJson, ApiQuery, ChatParam, Owner, chat_id},
    limits::live_turn,
};
use crate::{Chat, ChatSession, ReplyHandle, store::ChatPage};

/// The most chats or messages one page returns.
pub(crate) const MAX_PAGE: usize = 500;

/// The longest chat title, in characters.
const MAX_TITLE: usize = 200;

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
    offset: Option<usize>,
}

/// `GET /api/chats?limit&offset`: the owner's chats, most recently active first.
pub(crate) async fn list(
    State(state): State<AppState>,
    Owner(owner): Owner,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Chat>>, ApiError> {
    let page = ChatPage {
        limit: q.limit.unwrap_or(100).clamp(1, MAX_PAGE),
        offset: q.offset.unwrap_or(0),
    };
    Ok(Json(state.service.store().list_chats(&owner, page).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewChat {
    id: Option<String>,
    title: Option<String>,
}

/// `POST /api/chats` with `{"id"?, "title"?}`: 201 with the chat, 409 when the owner already
/// has a chat with the id.
pub(crate) async fn create(
    State(state): State<AppState>,
    Owner(owner): Owner,
    ApiJson(body): ApiJson<NewChat>,
) -> Result<(StatusCode, Json<Chat>), ApiError> {
    let id = body.id.as_deref().map(chat_id).transpose()?;
    let title = body.title.filter(|t| !t.trim().is_empty());
    let chat = state.service.store().create_chat(&owner, id, title).await?;
    Ok((StatusCode::CREATED, Json(chat)))
}

/// `DELETE /api/chats/{chatId}`: 204, after its live reply (if any) was stopped; 404 when there
/// is no such chat.
pub(crate) async fn delete(
    State(state): State<AppState>,
    ChatParam(chat): ChatParam,
) -> Result<StatusCode, ApiError> {
    if state.service.delete_chat(&chat).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no chat {}", chat.id)))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChatUpdate {
    title: String,
}

/// `PATCH /api/chats/{chatId}` with `{"title"}`: renames the chat and answers it.
pub(crate) async fn rename(
    State(state): State<AppState>,
    ChatParam(chat): ChatParam,
    ApiJson(body): ApiJson<ChatUpdate>,
) -> Result<Json<Chat>, ApiError> {
    let title = body.title.trim();
    if title.is_empty() || title.chars().count() > MAX_TITLE || title.chars().any(char::is_control)
    {
        return Err(ApiError::unprocessable(
            "invalid_title",
            format!("title must be 1 to {MAX_TITLE} characters on one line"),
        ));
    }
    let chat = state
        .service
        .store()
        .rename_chat(&chat, Some(title.to_owned()))
        .await?;
    Ok(Json(chat))
}

/// `POST /api/chats/{chatId}/regenerate`: answers the chat's last user message again. The
/// earlier reply stays in history with the same `replyTo`; the new one follows it.
pub(crate) async fn regenerate(
    State(state): State<AppState>,
    ChatParam(chat): ChatParam,
) -> Result<Response, ApiError> {
    // A chat that does not exist has no user message either; say which of the two it is.
    if state.service.store().get_chat(&chat).await?.is_none() {
        return Err(ApiError::not_found(format!("no chat {}", chat.id)));
    }
    let _turn = live_turn(&state, &chat.owner).await?;
    let handle = state.service.session(chat).regenerate().await?;
    Ok(accepted(&handle))
}

/// `202` with the user message a reply answers and the reply's id: the answer to a send and to
/// a regenerate.
pub(crate) fn accepted(handle: &ReplyHandle) -> Response {
    let body = json!({
        "userMessage": handle.user_message,
        "assistantMessageId": handle.assistant_message_id,
    });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}
