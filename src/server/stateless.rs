//! `POST /api/chat`: a stateless reply as SSE `data: {"content":"…"}` events, then
//! `data: {"done":true}` (or `data: {"error":"…"}`).

use std::time::Duration;

use crate::{ChatRequest, Delta, DeltaStream, RequestMessage, Result, Role};
use axum::{extract::State, response::Response};
use bytes::BytesMut;
use futures::{StreamExt, future::ready, stream};
use serde::Deserialize;
use serde_json::json;

use super::{
    ApiError, AppState,
    extract::{ApiJson, Owner},
    sse,
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
    Ok(relay(
        state.service.provider().stream(request),
        state.options.keep_alive,
    ))
}

/// One stateless event's data: `{"content":…}` or `{"reasoning":…}`, serialized straight from
/// the delta's text.
#[derive(serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Piece<'a> {
    Content(&'a str),
    Reasoning(&'a str),
}

/// The stateless reply as an event stream: what is ready at once leaves in one frame. Dropping
/// the response's body (the client went away) drops the provider stream and so closes the
/// upstream request.
pub(crate) fn relay(deltas: DeltaStream, keep_alive: Duration) -> Response {
    // `None` marks the end of the deltas, where `done` is sent (unless an error was).
    let items = deltas.map(Some).chain(stream::once(ready(None)));
    let mut encoder = Encoder::default();
    sse::batched_response(
        items,
        move |item, out| encoder.encode(item, out),
        keep_alive,
    )
}

/// Writes the stateless events: a delta's text as it comes, and one last event, `done` or
/// `error`.
#[derive(Debug, Default)]
struct Encoder {
    ended: bool,
}

impl Encoder {
    fn encode(&mut self, item: Option<Result<Delta>>, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        let piece = match &item {
            Some(Ok(Delta::Text { text })) => Piece::Content(text),
            Some(Ok(Delta::Reasoning { text })) => Piece::Reasoning(text),
            Some(Ok(_)) => return,
            Some(Err(e)) => {
                self.ended = true;
                sse::data(
                    out,
                    json!({ "error": e.to_string() }).to_string().as_bytes(),
                );
                return sse::end(out);
            }
            None => {
                self.ended = true;
                sse::data(out, br#"{"done":true}"#);
                return sse::end(out);
            }
        };
        // Serializing a map of one string cannot fail.
        if sse::json_data(out, &piece).is_ok() {
            sse::end(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, FinishReason, Usage, server::sse::testing::*};
    use axum::response::sse::Event;
    use bytes::Bytes;
    use futures::FutureExt;

    fn event(data: &str) -> Event {
        Event::default().data(data)
    }

    #[tokio::test]
    async fn deltas_ready_at_once_leave_in_one_frame_of_the_same_bytes() {
        let deltas = stream::iter([
            Ok(Delta::text("Hel")),
            Ok(Delta::Reasoning {
                text: "why \"not\"\n".into(),
            }),
            Ok(Delta::Usage(Usage::default())),
            Ok(Delta::text("lo")),
            Ok(Delta::Finish {
                reason: FinishReason::Stop,
            }),
        ]);
        let frames = body_frames(relay(deltas.boxed(), Duration::from_secs(15))).await;
        let expected = axum_bytes(vec![
            event(r#"{"content":"Hel"}"#),
            event(r#"{"reasoning":"why \"not\"\n"}"#),
            event(r#"{"content":"lo"}"#),
            event(r#"{"done":true}"#),
        ])
        .await;
        assert_eq!(frames, [Bytes::from_static(b": open\n\n"), expected]);
    }

    #[tokio::test]
    async fn an_error_is_the_last_event() {
        let deltas = stream::iter([
            Ok(Delta::text("partial")),
            Err(Error::invalid("upstream", "it broke")),
        ]);
        let frames = body_frames(relay(deltas.boxed(), Duration::from_secs(15))).await;
        let error = Error::invalid("upstream", "it broke").to_string();
        let expected = axum_bytes(vec![
            event(r#"{"content":"partial"}"#),
            event(&json!({ "error": error }).to_string()),
        ])
        .await;
        assert_eq!(frames[1..], [expected]);
    }

    #[tokio::test]
    async fn a_lone_delta_leaves_at_once() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let response = relay(rx.boxed(), Duration::from_secs(15));
        let mut body = response.into_body().into_data_stream();
        let mut next = || body.next().now_or_never().flatten().map(Result::unwrap);
        assert_eq!(next().as_deref(), Some(&b": open\n\n"[..]));
        assert_eq!(next(), None, "no delta yet");
        tx.unbounded_send(Ok(Delta::text("first"))).unwrap();
        // The upstream is still open and says nothing more: the delta does not wait for it.
        assert_eq!(
            next().as_deref(),
            Some(&b"data: {\"content\":\"first\"}\n\n"[..])
        );
        drop(tx);
        assert_eq!(next().as_deref(), Some(&b"data: {\"done\":true}\n\n"[..]));
        assert_eq!(next(), None);
    }
}
