//! The stateful endpoints: chats, messages, the live reply stream, terminate and regenerate.

use std::convert::Infallible;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response, sse::Event},
};
use chatstream::{
    Chat, ChatId, ChatSession, Message, MessageId, ReplyHandle, UserInput,
    store::{ChatPage, HistoryPage},
};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::{
    app::{ApiJson, AppState, sse_response},
    error::ApiError,
};

/// The most messages one history page returns.
const MAX_PAGE: usize = 500;

fn chat_id(raw: &str) -> Result<ChatId, ApiError> {
    ChatId::new(raw).map_err(|e| ApiError::bad_request("invalid_chat_id", e.to_string()))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    offset: Option<usize>,
}

pub async fn list_chats(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<Chat>>, ApiError> {
    let Query(q) = query?;
    let page = ChatPage {
        limit: q.limit.unwrap_or(100).clamp(1, MAX_PAGE),
        offset: q.offset.unwrap_or(0),
    };
    Ok(Json(state.service.store().list_chats(page).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewChat {
    id: Option<String>,
    title: Option<String>,
}

pub async fn create_chat(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewChat>,
) -> Result<(StatusCode, Json<Chat>), ApiError> {
    let id = body.id.as_deref().map(chat_id).transpose()?;
    let title = body.title.filter(|t| !t.trim().is_empty());
    let chat = state.service.store().create_chat(id, title).await?;
    Ok((StatusCode::CREATED, Json(chat)))
}

pub async fn delete_chat(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = chat_id(&raw)?;
    // A live reply would keep writing into a chat that no longer exists.
    state.service.terminate(&id).await?;
    if state.service.store().delete_chat(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no chat {id}")))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendMessage {
    chat_id: String,
    content: String,
    #[serde(default = "user_sender")]
    sender: String,
    client_message_id: Option<String>,
}

fn user_sender() -> String {
    "user".into()
}

pub async fn send_message(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SendMessage>,
) -> Result<Response, ApiError> {
    let id = chat_id(&body.chat_id)?;
    if body.sender != "user" {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_sender",
            "sender must be \"user\"",
        ));
    }
    if body.content.trim().is_empty() {
        return Err(ApiError::bad_request(
            "empty_content",
            "content must not be empty",
        ));
    }
    let mut input = UserInput::new(body.content);
    if let Some(key) = body.client_message_id {
        if key.is_empty() || key.len() > 128 {
            return Err(ApiError::bad_request(
                "invalid_client_message_id",
                "clientMessageId must be 1 to 128 characters",
            ));
        }
        input = input.with_client_message_id(key);
    }
    let handle = state.service.session(id).send(input).await?;
    Ok(accepted(&handle))
}

/// `202` with the user message a reply answers and the reply's id: the answer to a send and to
/// a regenerate.
fn accepted(handle: &ReplyHandle) -> Response {
    let body = json!({
        "userMessage": handle.user_message,
        "assistantMessageId": handle.assistant_message_id,
    });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// `POST /api/chats/{chatId}/regenerate`: answers the chat's last user message again. The
/// earlier reply stays in history with the same `replyTo`; the new one follows it.
pub async fn regenerate(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = chat_id(&raw)?;
    // A chat that does not exist has no user message either; say which of the two it is.
    if state.service.store().get_chat(&id).await?.is_none() {
        return Err(ApiError::not_found(format!("no chat {id}")));
    }
    let handle = state.service.session(id).regenerate().await?;
    Ok(accepted(&handle))
}

/// The longest chat title, in characters.
const MAX_TITLE: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatUpdate {
    title: String,
}

/// `PATCH /api/chats/{chatId}` with `{"title"}`: renames the chat and answers it.
pub async fn update_chat(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    ApiJson(body): ApiJson<ChatUpdate>,
) -> Result<Json<Chat>, ApiError> {
    let id = chat_id(&raw)?;
    let title = body.title.trim();
    if title.is_empty() || title.chars().count() > MAX_TITLE || title.chars().any(char::is_control)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_title",
            format!("title must be 1 to {MAX_TITLE} characters on one line"),
        ));
    }
    let chat = state
        .service
        .store()
        .rename_chat(&id, Some(title.to_owned()))
        .await?;
    Ok(Json(chat))
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    limit: Option<usize>,
    before: Option<String>,
}

pub async fn history(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<Message>>, ApiError> {
    let id = chat_id(&raw)?;
    let Query(q) = query?;
    let before = q
        .before
        .as_deref()
        .map(str::parse::<MessageId>)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_message_id", e.to_string()))?;
    let page = HistoryPage {
        limit: q.limit.unwrap_or(50).clamp(1, MAX_PAGE),
        before,
    };
    Ok(Json(state.service.session(id).history(page).await?))
}

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    after: Option<u64>,
}

/// `GET /api/stream/{chatId}`: the live (or just finished) reply as SSE, resumable with
/// `Last-Event-ID` or `?after=N`; `204` when there is nothing more to send.
pub async fn stream(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = chat_id(&raw)?;
    let Query(q) = query?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("invalid_last_event_id", "Last-Event-ID must be a number")
                })?,
        ),
    };
    let after = last_event_id.or(q.after);
    let Some(events) = state.service.session(id).subscribe(after).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let events = events.map(|event| {
        Ok::<_, Infallible>(match event {
            // Serialized straight into the event's buffer. A payload always serializes (strings,
            // numbers, enums, string-keyed maps); the fallback only keeps the stream well-formed.
            Ok(e) => Event::default()
                .id(e.seq.to_string())
                .event(e.event_name())
                .json_data(&*e.payload)
                .unwrap_or_else(|err| {
                    Event::default()
                        .event("error")
                        .data(json!({"code": "internal", "message": err.to_string()}).to_string())
                }),
            // The hub lost the reply (e.g. its backend went away): tell the client to reload
            // history instead of leaving it hanging.
            Err(e) => Event::default().event("error").data(
                json!({"code": e.code(), "message": e.to_string(), "reload": true}).to_string(),
            ),
        })
    });
    Ok(sse_response(events, &state))
}

pub async fn terminate(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = chat_id(&raw)?;
    let terminated = state.service.terminate(&id).await?;
    Ok(Json(json!({ "terminated": terminated })))
}
