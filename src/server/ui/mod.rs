//! The Vercel AI SDK's UI message stream (protocol v1), so that a `useChat` front end with its
//! default `DefaultChatTransport` talks to chatstream unchanged.
//!
//! - `POST /api/chat` with a `useChat` body (`{"id","messages":[UIMessage…],"trigger"}`): the
//!   chat is `id` and the store holds its history. The newest user message is sent, keyed by its
//!   UI id (a retried POST stores one message and starts one reply); `regenerate-message`
//!   answers the chat's last user message again. History the client sends for a chat the store
//!   has no message of (one created elsewhere) is imported first, once, in order. The answer is
//!   the UI message stream of the reply.
//! - `GET /api/chat/{chatId}/stream` (what `useChat({ resume: true })` asks on mount): `204`
//!   when no reply is live, else the live reply from its first chunk, under the same `messageId`
//!   as the first response, so the client replaces the message it shows instead of adding one.
//! - `POST /api/chat/{chatId}/stop`: stops the live reply (the partial reply is saved
//!   `cancelled`). The client's own `stop()` only closes its response: the reply goes on,
//!   saved and resumable, unless [`ServerOptions::cancel_on_disconnect`] is set.
//! - `GET /api/chat/{chatId}/messages`: the chat as `UIMessage`s, for `useChat({ messages })`
//!   after a reload.
//!
//! Each reply is one step: `start` (with `messageMetadata: {"status":"streaming"}`),
//! `start-step`, then `reasoning-*`, `text-*` and `tool-input-*` chunks as the model produces
//! them, `finish-step`, `message-metadata` (`{"status","usage"?,"finishReason"?,"error"?}`, the
//! same metadata the messages route gives), and `finish`, `abort` (stopped) or `error` (failed),
//! then `[DONE]`.
//!
//! [`ServerOptions::cancel_on_disconnect`]: super::ServerOptions::cancel_on_disconnect

mod chunk;
mod message;
mod request;

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response, sse::Event},
};
use futures::{Stream, StreamExt, TryStreamExt};
use serde_json::{Value, json};

use self::{
    chunk::Encoder,
    message::{UiMessage, ui_id, ui_messages},
    request::{Trigger, UiChatRequest},
};
use super::{
    ApiError, AppState,
    extract::{ChatParam, chat_id},
    sse::sse_response,
};
use crate::{
    ChatKey, ChatService, ChatSession, Message, MessageId, MessageStoreExt, Role, UserId,
    UserInput, hub::HubEventStream, store::HistoryPage,
};

pub(crate) use request::is_ui_request;

/// `POST /api/chat` with a `useChat` body (see [`is_ui_request`]), in `owner`'s chat.
pub(crate) async fn chat(
    state: AppState,
    owner: UserId,
    body: Value,
) -> Result<Response, ApiError> {
    let request = UiChatRequest::parse(body)?;
    let chat = ChatKey::new(owner, chat_id(&request.id)?);
    let (index, sent) = request.newest_user_message()?;
    let session = state.service.session(chat.clone());
    let _turn = super::limits::live_turn(&state, &chat.owner).await?;
    let handle = match request.trigger {
        Trigger::SubmitMessage => {
            if request.message_id.as_deref() == Some(sent.id.as_str()) {
                return Err(ApiError::unprocessable(
                    "unsupported_edit",
                    "a sent message cannot be edited: send a new one",
                ));
            }
            let text = sent.text()?;
            let key = super::messages::client_message_id(sent.id.clone(), "a user message's id")?;
            import(&state.service, &chat, &request, index).await?;
            session
                .send(UserInput::new(text).with_client_message_id(key))
                .await?
        }
        Trigger::RegenerateMessage => {
            if !import(&state.service, &chat, &request, index + 1).await? {
                answers_last_user_message(&state.service, &chat, &sent.id).await?;
            }
            session.regenerate().await?
        }
    };
    Ok(ui_response(
        &state,
        chat,
        handle.assistant_message_id,
        handle.events,
    ))
}

/// Stores the messages before position `end` of the request when the store has none of the
/// chat's (a chat begun elsewhere); returns whether it did.
async fn import(
    service: &ChatService,
    chat: &ChatKey,
    request: &UiChatRequest,
    end: usize,
) -> Result<bool, ApiError> {
    let store = service.store();
    if end == 0
        || !store
            .history(chat, HistoryPage::newest(1))
            .await?
            .is_empty()
    {
        return Ok(false);
    }
    let messages = request.history(chat, end)?;
    store.get_or_create_chat(chat).await?;
    // Keyed messages (every imported one is): a concurrent import of the same history adds
    // nothing twice.
    for m in &messages {
        store.append_idempotent(m).await?;
    }
    Ok(true)
}

/// A regenerate answers the chat's last user message: 409 `not_last_message` when the client
/// asks for another one (the store cannot answer an earlier message again).
async fn answers_last_user_message(
    service: &ChatService,
    chat: &ChatKey,
    ui_message_id: &str,
) -> Result<(), ApiError> {
    let mut messages = service.store().newest_first(chat);
    while let Some(m) = messages.try_next().await? {
        if m.role == Role::User {
            if ui_id(&m) == ui_message_id {
                return Ok(());
            }
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_last_message",
                "only the reply to the chat's last user message can be regenerated",
            ));
        }
    }
    // No user message at all: the regenerate says so.
    Ok(())
}

/// `GET /api/chat/{chatId}/stream`: the live reply from its first chunk, or `204`.
pub(crate) async fn resume(
    State(state): State<AppState>,
    ChatParam(chat): ChatParam,
) -> Result<Response, ApiError> {
    let Some(events) = state.service.session(chat.clone()).subscribe(None).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    // Subscribed first, asked second: a reply the hub still names as live after the
    // subscription began is the one subscribed to. One that finished is not resumed.
    let Some(live) = state.service.hub().live_reply(&chat).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    Ok(ui_response(&state, chat, live.message_id, events))
}

/// `POST /api/chat/{chatId}/stop`: `{"stopped": true|false}`.
pub(crate) async fn stop(
    State(state): State<AppState>,
    ChatParam(chat): ChatParam,
) -> Result<Json<Value>, ApiError> {
    let stopped = state.service.terminate(&chat).await?;
    Ok(Json(json!({ "stopped": stopped })))
}

/// `GET /api/chat/{chatId}/messages`: the whole chat as `UIMessage`s, oldest first (`[]` for a
/// chat with no messages).
pub(crate) async fn messages(
    State(state): State<AppState>,
    ChatParam(chat): ChatParam,
) -> Result<Json<Vec<UiMessage>>, ApiError> {
    let mut stored: Vec<Message> = state
        .service
        .store()
        .newest_first(&chat)
        .try_collect()
        .await?;
    stored.reverse();
    Ok(Json(ui_messages(&stored)))
}

/// The reply that fills `message_id`, as a UI message stream response.
fn ui_response(
    state: &AppState,
    chat: ChatKey,
    message_id: MessageId,
    events: HubEventStream,
) -> Response {
    let cancel = state
        .options
        .cancel_on_disconnect
        .then(|| CancelOnDisconnect {
            service: state.service.clone(),
            chat,
            message_id,
            armed: true,
        });
    let stream = UiStream {
        events,
        encoder: Encoder::new(message_id),
        chunks: Vec::new(),
        next: 0,
        cancel,
    };
    let mut response = sse_response(stream, state.options.keep_alive);
    let headers = response.headers_mut();
    headers.insert(
        "x-vercel-ai-ui-message-stream",
        HeaderValue::from_static("v1"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    response
}

/// A reply's events as UI message stream events, polled straight from the hub's stream.
struct UiStream {
    events: HubEventStream,
    encoder: Encoder,
    /// Chunks encoded and not yet sent, from `next` on.
    chunks: Vec<String>,
    next: usize,
    cancel: Option<CancelOnDisconnect>,
}

impl Stream for UiStream {
    type Item = Result<Event, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(chunk) = this.chunks.get_mut(this.next) {
                this.next += 1;
                return Poll::Ready(Some(Ok(Event::default().data(std::mem::take(chunk)))));
            }
            this.chunks.clear();
            this.next = 0;
            if this.encoder.is_ended() {
                if let Some(cancel) = &mut this.cancel {
                    // The reply ended: closing the response now stops nothing.
                    cancel.armed = false;
                }
                return Poll::Ready(None);
            }
            match ready!(this.events.poll_next_unpin(cx)) {
                Some(Ok(event)) => this.encoder.event(&event.payload, &mut this.chunks),
                Some(Err(e)) => this.encoder.lost(Some(&e), &mut this.chunks),
                None => this.encoder.lost(None, &mut this.chunks),
            }
        }
    }
}

/// With [`ServerOptions::cancel_on_disconnect`](super::ServerOptions::cancel_on_disconnect):
/// stops the reply when its response is dropped (the client went away) before the reply ended.
struct CancelOnDisconnect {
    service: ChatService,
    chat: ChatKey,
    message_id: MessageId,
    armed: bool,
}

impl Drop for CancelOnDisconnect {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hub = self.service.hub().clone();
        let chat = self.chat.clone();
        let message_id = self.message_id;
        // Only this reply: a newer one in the same chat is never stopped by an old response.
        runtime.spawn(async move {
            if let Err(e) = hub.terminate_reply(&chat, &message_id).await {
                tracing::warn!(chat_id = %chat.id, error = %e, "stopping a reply whose client went away failed");
            }
        });
    }
}
