//! The message routes: send, history, the live reply's event stream, terminate.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bytes::BytesMut;
use serde::Deserialize;
use serde_json::json;

use super::{
    ApiError, AppState,
    attachments::{Attachment, ImageLimits, image_parts},
    chats::{MAX_PAGE, accepted},
    extract::{ApiJson, ApiQuery, ChatParam, LastEventId, Owner, chat_id},
    limits::live_turn,
    sse,
};
use crate::{
    ChatKey, ChatSession, ContextBudget, Message, MessageId, Result, SendOptions, ToolSpec,
    UserInput,
    hub::{HubEvent, HubEventStream},
    provider::{ReasoningEffort, ResponseFormat, ToolChoice},
    store::HistoryPage,
};

/// The longest client message id, in bytes.
const MAX_CLIENT_MESSAGE_ID: usize = 128;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SendMessage {
    chat_id: String,
    /// The text; may be empty when there are attachments.
    content: String,
    /// Images sent with the text (see [`attachments`](super::attachments)).
    #[serde(default)]
    attachments: Vec<Attachment>,
    #[serde(default = "user_sender")]
    sender: String,
    client_message_id: Option<String>,
    model: Option<String>,
    options: Option<SendOptionsBody>,
}

/// `options` of a send: [`SendOptions`] in camelCase JSON, the model apart (it is `model` of the
/// send itself).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SendOptionsBody {
    system: Option<String>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    max_output_tokens: Option<u32>,
    stop: Option<Vec<String>>,
    reasoning_effort: Option<ReasoningEffort>,
    thinking_budget: Option<u32>,
    tools: Option<Vec<ToolSpec>>,
    tool_choice: Option<ToolChoice>,
    response_format: Option<ResponseFormat>,
    #[serde(default)]
    extra: serde_json::Map<String, serde_json::Value>,
    /// The model's context window for this send, in tokens ([`ContextBudget::Window`]).
    context_tokens: Option<usize>,
}

impl From<SendOptionsBody> for SendOptions {
    fn from(body: SendOptionsBody) -> Self {
        SendOptions {
            model: None,
            system: body.system,
            temperature: body.temperature,
            top_p: body.top_p,
            max_output_tokens: body.max_output_tokens,
            stop: body.stop,
            reasoning_effort: body.reasoning_effort,
            thinking_budget: body.thinking_budget,
            tools: body.tools,
            tool_choice: body.tool_choice,
            response_format: body.response_format,
            extra: body.extra,
            context_budget: body.context_tokens.map(ContextBudget::Window),
        }
    }
}

/// A client message id, checked: 1 to [`MAX_CLIENT_MESSAGE_ID`] bytes (400
/// `invalid_client_message_id` naming `field` otherwise).
pub(crate) fn client_message_id(key: String, field: &str) -> Result<String, ApiError> {
    if key.is_empty() || key.len() > MAX_CLIENT_MESSAGE_ID {
        return Err(ApiError::bad_request(
            "invalid_client_message_id",
            format!("{field} must be 1 to {MAX_CLIENT_MESSAGE_ID} characters"),
        ));
    }
    Ok(key)
}

fn user_sender() -> String {
    "user".into()
}

/// `POST /api/messages`: stores the user message in the owner's chat, starts the reply, answers
/// 202.
pub(crate) async fn send(
    State(state): State<AppState>,
    Owner(owner): Owner,
    ApiJson(body): ApiJson<SendMessage>,
) -> Result<Response, ApiError> {
    let chat = ChatKey::new(owner, chat_id(&body.chat_id)?);
    if body.sender != "user" {
        return Err(ApiError::unprocessable(
            "invalid_sender",
            "sender must be \"user\"",
        ));
    }
    if body.content.trim().is_empty() && body.attachments.is_empty() {
        return Err(ApiError::bad_request(
            "empty_content",
            "content must not be empty",
        ));
    }
    let images = image_parts(
        body.attachments,
        ImageLimits {
            max_bytes: state.options.max_image_bytes,
            max_count: state.options.max_images,
        },
    )?;
    let mut input = UserInput::new(body.content);
    input.images = images;
    if let Some(key) = body.client_message_id {
        input = input.with_client_message_id(client_message_id(key, "clientMessageId")?);
    }
    if let Some(model) = body.model {
        if model.trim().is_empty() || model.len() > 200 {
            return Err(ApiError::unprocessable(
                "invalid_model",
                "model must be 1 to 200 characters",
            ));
        }
        input = input.with_model(model);
    }
    if let Some(options) = body.options {
        let options = SendOptions::from(options).over(&input.options);
        // Checked here as well as in the session, so that a bad value is a 422 `invalid_options`
        // (the session's error would answer 400 `invalid`).
        options
            .validate()
            .map_err(|e| ApiError::unprocessable("invalid_options", e.to_string()))?;
        input = input.with_options(options);
    }
    let _turn = live_turn(&state, &chat.owner).await?;
    let handle = state.service.session(chat).send(input).await?;
    Ok(accepted(&handle))
}

#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    limit: Option<usize>,
    before: Option<String>,
}

/// `GET /api/messages/{chatId}?limit&before`: a page of history, oldest first.
pub(crate) async fn history(
    State(state): State<AppState>,
    ChatParam(chat): ChatParam,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<Vec<Message>>, ApiError> {
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
    Ok(Json(state.service.session(chat).history(page).await?))
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    after: Option<u64>,
}

/// `GET /api/stream/{chatId}`: the live (or just finished) reply as SSE, resumable with
/// `Last-Event-ID` or `?after=N`; `204` when there is nothing more to send.
pub(crate) async fn stream(
    State(state): State<AppState>,
    ChatParam(chat): ChatParam,
    LastEventId(last_event_id): LastEventId,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Response, ApiError> {
    let after = last_event_id.or(q.after);
    let Some(events) = state.service.session(chat).subscribe(after).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    Ok(hub_response(events, state.options.keep_alive))
}

/// A reply's hub events as SSE (`id:` the sequence number, `event:` the payload's name, `data:`
/// the payload); the events ready at once (a subscriber that was busy finds several in the hub)
/// leave in one frame.
pub(crate) fn hub_response(events: HubEventStream, keep_alive: Duration) -> Response {
    sse::batched_response(events, encode_hub_event, keep_alive)
}

fn encode_hub_event(event: Result<HubEvent>, out: &mut BytesMut) {
    let error = match event {
        Ok(e) => {
            let start = out.len();
            sse::id(out, e.seq);
            sse::field(out, "event", e.event_name());
            // Serialized straight into the frame. A payload always serializes (strings,
            // numbers, enums, string-keyed maps); the fallback only keeps the stream
            // well-formed.
            match sse::json_data(out, &*e.payload) {
                Ok(()) => return sse::end(out),
                Err(err) => {
                    out.truncate(start);
                    json!({"code": "internal", "message": err.to_string()})
                }
            }
        }
        // The hub lost the reply (e.g. its backend went away): tell the client to reload
        // history instead of leaving it hanging.
        Err(e) => json!({"code": e.code(), "message": e.to_string(), "reload": true}),
    };
    sse::field(out, "event", "error");
    sse::data(out, error.to_string().as_bytes());
    sse::end(out);
}

/// `POST /api/stream/{chatId}/terminate`: `{"terminated": true|false}`.
pub(crate) async fn terminate(
    State(state): State<AppState>,
    ChatParam(chat): ChatParam,
) -> Result<Json<serde_json::Value>, ApiError> {
    let terminated = state.service.terminate(&chat).await?;
    Ok(Json(json!({ "terminated": terminated })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Delta, Error, MessageStatus,
        hub::{EventPayload, LocalHub, StreamHub},
        server::sse::testing::*,
    };
    use axum::response::sse::Event;
    use bytes::Bytes;
    use futures::{FutureExt, StreamExt, stream};

    /// How the route wrote an event with axum's `Event`.
    fn axum_event(event: &HubEvent) -> Event {
        Event::default()
            .id(event.seq.to_string())
            .event(event.event_name())
            .json_data(&*event.payload)
            .unwrap()
    }

    fn reply(chat: &ChatKey, message_id: MessageId) -> Vec<EventPayload> {
        vec![
            EventPayload::Start {
                chat_id: chat.id.clone(),
                message_id,
                user_message_id: MessageId::generate(),
            },
            EventPayload::Delta(Delta::text("Hel")),
            EventPayload::Delta(Delta::text("lo \"there\"\n")),
            EventPayload::Delta(Delta::Reasoning { text: "hm".into() }),
            EventPayload::error(&Error::invalid("upstream", "it broke")),
            EventPayload::done(message_id, MessageStatus::Failed),
        ]
    }

    #[tokio::test]
    async fn a_burst_of_events_is_one_frame_of_the_same_bytes() {
        let chat = ChatKey::new("alice".parse().unwrap(), "demo".parse().unwrap());
        let events: Vec<HubEvent> = reply(&chat, MessageId::generate())
            .into_iter()
            .enumerate()
            .map(|(i, payload)| HubEvent::new(i as u64 + 1, payload))
            .collect();
        let lost = Error::invalid("hub", "lost");
        let items = events
            .clone()
            .into_iter()
            .map(Ok)
            .chain([Err(Error::invalid("hub", "lost"))]);
        let frames = body_frames(hub_response(
            stream::iter(items).boxed(),
            Duration::from_secs(15),
        ))
        .await;
        let mut expected: Vec<Event> = events.iter().map(axum_event).collect();
        expected.push(Event::default().event("error").data(
            json!({"code": lost.code(), "message": lost.to_string(), "reload": true}).to_string(),
        ));
        assert_eq!(
            frames,
            [
                Bytes::from_static(b": open\n\n"),
                axum_bytes(expected).await
            ]
        );
    }

    #[tokio::test]
    async fn a_resumed_stream_replays_exactly_what_followed() {
        let hub = LocalHub::new();
        let chat = ChatKey::new("alice".parse().unwrap(), "demo".parse().unwrap());
        let message_id = MessageId::generate();
        let mut live = hub.start(&chat, message_id).await.unwrap();
        let payloads = reply(&chat, message_id);
        let events: Vec<HubEvent> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| HubEvent::new(i as u64 + 1, p.clone()))
            .collect();
        for payload in payloads {
            live.publisher.publish(payload).await.unwrap();
        }
        for after in 0..events.len() as u64 {
            let subscription = hub.subscribe(&chat, Some(after)).await.unwrap().unwrap();
            let frames = body_frames(hub_response(subscription, Duration::from_secs(15))).await;
            let expected = events[after as usize..].iter().map(axum_event).collect();
            assert_eq!(
                frames[1..].concat(),
                axum_bytes(expected).await,
                "after {after}"
            );
        }
    }

    #[tokio::test]
    async fn a_lone_event_leaves_at_once() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let response = hub_response(rx.boxed(), Duration::from_secs(15));
        let mut body = response.into_body().into_data_stream();
        let mut next = || body.next().now_or_never().flatten().map(Result::unwrap);
        assert_eq!(next().as_deref(), Some(&b": open\n\n"[..]));
        let event = HubEvent::new(2, EventPayload::Delta(Delta::text("first")));
        tx.unbounded_send(Ok(event)).unwrap();
        assert_eq!(
            next().as_deref(),
            Some(&b"id: 2\nevent: delta\ndata: {\"type\":\"text\",\"text\":\"first\"}\n\n"[..])
        );
    }
}
