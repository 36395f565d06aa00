//! Stored messages as the AI SDK's `UIMessage`s: `{"id","role","parts","metadata"?}`, what
//! `GET /api/chat/{chatId}/messages` answers and `useChat({ messages })` takes.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::{Value, json};

use crate::{ContentPart, FinishReason, Message, MessageId, MessageStatus, Role, Usage};

/// A message as the AI SDK's `UIMessage`.
#[derive(Debug, Serialize)]
pub(crate) struct UiMessage {
    id: String,
    role: &'static str,
    parts: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'static>>,
}

/// An assistant message's metadata, the same in the stream (`start`, `message-metadata`) and in
/// the history: `{"status","usage"?,"finishReason"?,"error"?}`. Absent fields are left out, never
/// `null` (the SDK rejects `null` where a field is optional).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Metadata<'a> {
    pub(crate) status: MessageStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<std::borrow::Cow<'a, str>>,
}

impl Metadata<'_> {
    /// A reply still being generated.
    pub(crate) fn streaming() -> Self {
        Metadata {
            status: MessageStatus::Streaming,
            usage: None,
            finish_reason: None,
            error: None,
        }
    }
}

/// The AI SDK's name for a finish reason (`finishReason` of the `finish` chunk).
pub(crate) fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool-calls",
        FinishReason::ContentFilter => "content-filter",
        FinishReason::Other => "other",
    }
}

/// A tool call's input, parsed from the arguments the model produced: no arguments at all is a
/// call without input (`{}`).
pub(crate) fn tool_input(arguments: &str) -> Result<Value, serde_json::Error> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(arguments)
}

/// The error text of a tool call whose arguments are not JSON.
pub(crate) fn invalid_input(e: &serde_json::Error) -> String {
    format!("the tool call's arguments are not valid JSON: {e}")
}

/// The UI id of a stored message: a user message keeps the id its client gave it (its client
/// message id), every other message is known by its own id.
pub(crate) fn ui_id(m: &Message) -> String {
    match (&m.role, &m.client_message_id) {
        (Role::User, Some(key)) => key.clone(),
        _ => m.id.to_string(),
    }
}

/// A chat's stored messages (oldest first) as `UIMessage`s.
///
/// Only the newest reply to each user message is kept: a regenerated reply replaces the earlier
/// ones, as it does in the client. Tool results (`tool` messages) become the output of the call
/// they answer.
pub(crate) fn ui_messages(messages: &[Message]) -> Vec<UiMessage> {
    let mut answered = HashSet::new();
    let superseded: HashSet<MessageId> = messages
        .iter()
        .rev()
        .filter(|m| m.role == Role::Assistant)
        .filter(|m| m.reply_to.is_some_and(|u| !answered.insert(u)))
        .map(|m| m.id)
        .collect();
    let mut out: Vec<UiMessage> = Vec::with_capacity(messages.len());
    for m in messages.iter().filter(|m| !superseded.contains(&m.id)) {
        match m.role {
            Role::User | Role::System => out.push(UiMessage {
                id: ui_id(m),
                role: if m.role == Role::User {
                    "user"
                } else {
                    "system"
                },
                parts: content_parts(m),
                metadata: None,
            }),
            Role::Assistant => out.push(assistant(m)),
            Role::Tool => attach_output(&mut out, m),
        }
    }
    out
}

/// A user or system message's content as UI parts: its text, or its text and images in order,
/// an image as a `file` part (`{"type":"file","mediaType","url"}`, an inline image as a `data:`
/// URL; an image by URL gets the media type its extension names, else `image/*`).
fn content_parts(m: &Message) -> Vec<Value> {
    if m.parts.is_empty() {
        return vec![json!({"type": "text", "text": m.content})];
    }
    m.parts
        .iter()
        .map(|part| match part {
            ContentPart::Text { text } => json!({"type": "text", "text": text}),
            ContentPart::ImageBase64 { media_type, .. } => {
                json!({"type": "file", "mediaType": media_type, "url": part.to_url()})
            }
            ContentPart::ImageUrl { url } => {
                json!({"type": "file", "mediaType": media_type_of(url), "url": url})
            }
        })
        .collect()
}

/// The image type a URL's path names by its extension, else `image/*`.
fn media_type_of(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let extension = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match extension.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        _ => "image/*",
    }
}

fn assistant(m: &Message) -> UiMessage {
    let state = if m.status == MessageStatus::Streaming {
        "streaming"
    } else {
        "done"
    };
    // The parts the stream builds: a step, then reasoning, text and tool calls.
    let mut parts = vec![json!({"type": "step-start"})];
    if let Some(reasoning) = m.reasoning.as_deref().filter(|r| !r.is_empty()) {
        parts.push(json!({"type": "reasoning", "text": reasoning, "state": state}));
    }
    if !m.content.is_empty() {
        parts.push(json!({"type": "text", "text": m.content, "state": state}));
    }
    for call in &m.tool_calls {
        let kind = format!("tool-{}", call.name);
        parts.push(match tool_input(&call.arguments) {
            Ok(input) => json!({
                "type": kind, "toolCallId": call.id, "state": "input-available", "input": input,
            }),
            // Still arriving: what came so far.
            Err(_) if m.status == MessageStatus::Streaming => json!({
                "type": kind, "toolCallId": call.id, "state": "input-streaming",
                "rawInput": call.arguments,
            }),
            Err(e) => json!({
                "type": kind, "toolCallId": call.id, "state": "output-error",
                "rawInput": call.arguments, "errorText": invalid_input(&e),
            }),
        });
    }
    UiMessage {
        id: m.id.to_string(),
        role: "assistant",
        parts,
        metadata: Some(Metadata {
            status: m.status,
            usage: m.usage,
            finish_reason: m.finish_reason.map(finish_reason),
            error: m.error.clone().map(Into::into),
        }),
    }
}

/// Makes a tool result the output of the call it answers, in the newest message that made that
/// call; a result whose call is not shown (its reply was replaced) is left out.
fn attach_output(out: &mut [UiMessage], result: &Message) {
    let Some(call_id) = result.tool_call_id.as_deref() else {
        return;
    };
    let part = out
        .iter_mut()
        .rev()
        .filter(|m| m.role == "assistant")
        .flat_map(|m| m.parts.iter_mut())
        .find(|p| p["toolCallId"] == call_id && p["state"] == "input-available");
    if let Some(part) = part {
        part["state"] = json!("output-available");
        // A result is usually JSON text; any other text is passed on as a string.
        part["output"] =
            serde_json::from_str(&result.content).unwrap_or_else(|_| json!(result.content));
    }
}
