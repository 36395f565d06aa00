//! `POST /api/chat`: a stateless reply as SSE `data: {"content":"…"}` events, then
//! `data: {"done":true}` (or `data: {"error":"…"}`).

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll, ready},
};

use crate::{ChatRequest, Delta, DeltaStream, RequestMessage, Role};
use axum::{
    extract::State,
    response::{Response, sse::Event},
};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;

use super::{
    ApiError, AppState,
    extract::{ApiJson, Owner},
    sse::sse_response,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatelessRequest {
    messages: Vec<StatelessMessage>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct StatelessMessage {
    role: Role,
    content: String,
}

/// `POST /api/chat`: a `useChat` body is answered in the AI SDK's dialect ([`super::ui`]),
/// any other is read as the stateless request (422 `invalid_body` when it is neither).
pub(crate) async fn chat(
    State(state): State<AppState>,
    Owner(owner): Owner,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    if super::ui::is_ui_request(&body) {
        return super::ui::chat(state, owner, body).await;
    }
    let body: StatelessRequest = serde_json::from_value(body).map_err(|e| {
        ApiError::unprocessable(
            "invalid_body",
            format!(
                "expected {{\"messages\": [{{\"role\", \"content\"}}]}} or a useChat request \
                 {{\"id\", \"messages\": [{{\"id\", \"role\", \"parts\"}}], \"trigger\"}}: {e}"
            ),
        )
    })?;
    if body.messages.is_empty() {
        return Err(ApiError::bad_request(
            "empty_messages",
            "messages must not be empty",
        ));
    }
    if body.messages.iter().all(|m| m.content.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "empty_content",
            "every message is empty",
        ));
    }
    let request = ChatRequest::new(
        body.messages
            .into_iter()
            .map(|m| RequestMessage::new(m.role, m.content))
            .collect(),
    );
    let events = relay(state.service.provider().stream(request));
    Ok(sse_response(events, state.options.keep_alive))
}

/// One stateless event's data: `{"content":…}` or `{"reasoning":…}`, serialized straight from
/// the delta's text.
#[derive(serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Piece<'a> {
    Content(&'a str),
    Reasoning(&'a str),
}

fn piece(p: Piece<'_>) -> Event {
    // Serializing a map of one string cannot fail; an empty event would be dropped by clients.
    Event::default().data(serde_json::to_string(&p).unwrap_or_default())
}

/// Maps deltas onto the stateless event shapes; dropping this stream (the client went away)
/// drops the provider stream and so closes the upstream request.
fn relay(deltas: DeltaStream) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    Relay {
        deltas: Some(deltas),
    }
}

/// The stream behind [`relay`]: a delta becomes an event as it is polled, with no future built
/// per item (as `unfold` would); the last event is `done` or `error`.
struct Relay {
    deltas: Option<DeltaStream>,
}

impl Stream for Relay {
    type Item = Result<Event, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(deltas) = this.deltas.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            let event = match ready!(deltas.poll_next_unpin(cx)) {
                Some(Ok(Delta::Text { text })) => piece(Piece::Content(&text)),
                Some(Ok(Delta::Reasoning { text })) => piece(Piece::Reasoning(&text)),
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    this.deltas = None;
                    Event::default().data(json!({ "error": e.to_string() }).to_string())
                }
                None => {
                    this.deltas = None;
                    Event::default().data(r#"{"done":true}"#)
                }
            };
            return Poll::Ready(Some(Ok(event)));
        }
    }
}
