//! What `useChat`'s `DefaultChatTransport` posts: `{"id", "messages": [UIMessage…], "trigger",
//! "messageId"?, …}` (or `"message"`, the newest one alone, for apps that send only that), and
//! how its messages become stored ones.

use serde::Deserialize;
use serde_json::Value;

use super::super::{ApiError, messages::client_message_id};
use crate::{ChatKey, Message, Role, ToolCall};

/// The body of a `useChat` request. Fields the app adds to the body are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UiChatRequest {
    /// The chat.
    pub(crate) id: String,
    #[serde(default)]
    messages: Vec<UiMessageIn>,
    /// The newest message alone, for a transport that sends only that.
    #[serde(default)]
    message: Option<UiMessageIn>,
    #[serde(default)]
    pub(crate) trigger: Trigger,
    /// With `submit-message`, the user message being edited; with `regenerate-message`, the
    /// message to answer again.
    #[serde(default)]
    pub(crate) message_id: Option<String>,
}

/// What the client asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Trigger {
    /// Answer the newest user message.
    #[default]
    SubmitMessage,
    /// Answer the last user message again.
    RegenerateMessage,
}

#[derive(Debug, Deserialize)]
pub(crate) struct UiMessageIn {
    pub(crate) id: String,
    role: UiRole,
    parts: Vec<PartIn>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum UiRole {
    System,
    User,
    Assistant,
}

/// One part of a message: its `type` and the fields of it that map onto a stored message.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PartIn {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    tool_call_id: Option<String>,
    tool_name: Option<String>,
    state: Option<String>,
    input: Option<Value>,
    output: Option<Value>,
    error_text: Option<String>,
}

/// Whether a `POST /api/chat` body is a `useChat` request rather than the stateless
/// `{"messages":[{"role","content"}]}`: it names its chat or its trigger, or its messages have
/// parts.
pub(crate) fn is_ui_request(body: &Value) -> bool {
    let Some(body) = body.as_object() else {
        return false;
    };
    let has_parts = |m: &Value| m.as_object().is_some_and(|m| m.contains_key("parts"));
    body.contains_key("id")
        || body.contains_key("trigger")
        || body.contains_key("message")
        || body
            .get("messages")
            .and_then(Value::as_array)
            .is_some_and(|messages| messages.iter().any(has_parts))
}

impl UiChatRequest {
    /// Parses a body that [`is_ui_request`]: 422 `invalid_body` saying what is wrong.
    pub(crate) fn parse(body: Value) -> Result<Self, ApiError> {
        let mut request: UiChatRequest = serde_json::from_value(body).map_err(|e| {
            ApiError::unprocessable(
                "invalid_body",
                format!(
                    "a useChat request is {{\"id\", \"messages\": [{{\"id\", \"role\", \"parts\"}}], \
                     \"trigger\"}}: {e}"
                ),
            )
        })?;
        if let Some(message) = request.message.take() {
            if !request.messages.is_empty() {
                return Err(ApiError::unprocessable(
                    "invalid_body",
                    "send either messages or message, not both",
                ));
            }
            request.messages.push(message);
        }
        Ok(request)
    }

    /// The newest user message (the one to answer) and its position: 422 `no_user_message`
    /// when there is none.
    pub(crate) fn newest_user_message(&self) -> Result<(usize, &UiMessageIn), ApiError> {
        self.messages
            .iter()
            .enumerate()
            .rev()
            .find(|(_, m)| m.role == UiRole::User)
            .ok_or_else(|| {
                ApiError::unprocessable("no_user_message", "messages has no user message")
            })
    }

    /// The messages before position `end`, as stored messages of `chat`, in order.
    pub(crate) fn history(&self, chat: &ChatKey, end: usize) -> Result<Vec<Message>, ApiError> {
        let mut stored = Vec::with_capacity(end);
        let mut last_user = None;
        for m in &self.messages[..end] {
            let from = stored.len();
            match m.role {
                UiRole::User => {
                    let user =
                        Message::user(chat.clone(), m.text_lenient()).with_client_message_id(
                            client_message_id(m.id.clone(), "a user message's id")?,
                        );
                    last_user = Some(user.id);
                    stored.push(user);
                }
                UiRole::System => stored.push(Message::system(chat.clone(), m.text_lenient())),
                UiRole::Assistant => m.push_assistant(chat, last_user, &mut stored)?,
            }
            // Every imported message is keyed by its UI message id (a tool result by its call's
            // id too), so that two first requests racing to import the same history store it
            // once: the store keeps one message per key.
            for message in &mut stored[from..] {
                if message.client_message_id.is_some() {
                    continue;
                }
                let key = match (&message.role, &message.tool_call_id) {
                    (Role::Tool, Some(call)) => format!("{}/{call}", m.id),
                    _ => m.id.clone(),
                };
                message.client_message_id = Some(client_message_id(key, "a message's id")?);
            }
        }
        Ok(stored)
    }
}

impl UiMessageIn {
    /// The text of the message being sent: its text parts. A file would not reach the model,
    /// so one is refused (422 `unsupported_part`); no text at all is a 400 `empty_content`.
    pub(crate) fn text(&self) -> Result<String, ApiError> {
        if let Some(part) = self.parts.iter().find(|p| p.kind == "file") {
            return Err(ApiError::unprocessable(
                "unsupported_part",
                format!("a {:?} part is not supported: send text", part.kind),
            ));
        }
        let text = self.joined("text")?;
        if text.trim().is_empty() {
            return Err(ApiError::bad_request(
                "empty_content",
                "the message has no text",
            ));
        }
        Ok(text)
    }

    /// The text of an earlier message: whatever text it has (it was sent before, elsewhere).
    fn text_lenient(&self) -> String {
        self.joined("text").unwrap_or_default()
    }

    /// The text of every part of this type, one per line.
    fn joined(&self, kind: &str) -> Result<String, ApiError> {
        let mut texts = Vec::new();
        for part in self.parts.iter().filter(|p| p.kind == kind) {
            let text = part.text.as_deref().ok_or_else(|| {
                ApiError::unprocessable("invalid_body", format!("a {kind} part needs a text"))
            })?;
            texts.push(text);
        }
        Ok(texts.join("\n"))
    }

    /// An earlier assistant message: its text, reasoning and tool calls, then a `tool` message
    /// per call that has a result.
    fn push_assistant(
        &self,
        chat: &ChatKey,
        reply_to: Option<crate::MessageId>,
        stored: &mut Vec<Message>,
    ) -> Result<(), ApiError> {
        let mut reply = Message::new(chat.clone(), Role::Assistant, self.joined("text")?);
        reply.reply_to = reply_to;
        reply.reasoning = Some(self.joined("reasoning")?).filter(|r| !r.is_empty());
        let mut results = Vec::new();
        for part in &self.parts {
            let Some(name) = part.tool_name() else {
                continue;
            };
            let id = part.tool_call_id.clone().ok_or_else(|| {
                ApiError::unprocessable("invalid_body", "a tool part needs a toolCallId")
            })?;
            let arguments = part
                .input
                .as_ref()
                .map_or_else(|| "{}".to_owned(), Value::to_string);
            let result = match part.state.as_deref() {
                Some("output-available") => Some(match &part.output {
                    Some(Value::String(text)) => text.clone(),
                    Some(output) => output.to_string(),
                    None => String::new(),
                }),
                Some("output-error") => part.error_text.clone(),
                _ => None,
            };
            if let Some(content) = result {
                let mut message = Message::new(chat.clone(), Role::Tool, content);
                message.tool_call_id = Some(id.clone());
                results.push(message);
            }
            reply.tool_calls.push(ToolCall {
                index: reply.tool_calls.len() as u32,
                id,
                name: name.to_owned(),
                arguments,
            });
        }
        stored.push(reply);
        stored.extend(results);
        Ok(())
    }
}

impl PartIn {
    /// The tool's name, for a tool part: `tool-NAME`, or `dynamic-tool` with `toolName`.
    fn tool_name(&self) -> Option<&str> {
        match self.kind.as_str() {
            "dynamic-tool" => self.tool_name.as_deref(),
            kind => kind.strip_prefix("tool-"),
        }
    }
}
