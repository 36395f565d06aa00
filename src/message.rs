//! The data model: [`Message`], [`Chat`] and their parts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    ChatId, ChatKey, ChatRequest, MessageId, UserId,
    provider::{ReasoningEffort, ResponseFormat, ThinkingBlock, ToolChoice},
};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The person chatting.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call, sent back to the model.
    Tool,
}

impl Role {
    /// The role's name as used on the wire: `system`, `user`, `assistant`, `tool`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Ok(match s {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(crate::Error::invalid(
                    "role",
                    format!("unknown role {other:?}"),
                ));
            }
        })
    }
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// The reply is being generated.
    Streaming,
    /// Finished normally (user and system messages are always complete).
    Complete,
    /// Stopped by the user; the content is the partial reply.
    Cancelled,
    /// Ended by an error; the content is the partial reply and `error` says why.
    Failed,
    /// Left `streaming` by a process that died; the content is the last checkpoint.
    Interrupted,
}

impl MessageStatus {
    /// The status's name: `streaming`, `complete`, `cancelled`, `failed`, `interrupted`.
    pub fn as_str(&self) -> &'static str {
        match self {
            MessageStatus::Streaming => "streaming",
            MessageStatus::Complete => "complete",
            MessageStatus::Cancelled => "cancelled",
            MessageStatus::Failed => "failed",
            MessageStatus::Interrupted => "interrupted",
        }
    }

    /// Whether the message can still change (only `streaming` can).
    pub fn is_final(&self) -> bool {
        !matches!(self, MessageStatus::Streaming)
    }
}

impl std::str::FromStr for MessageStatus {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Ok(match s {
            "streaming" => MessageStatus::Streaming,
            "complete" => MessageStatus::Complete,
            "cancelled" => MessageStatus::Cancelled,
            "failed" => MessageStatus::Failed,
            "interrupted" => MessageStatus::Interrupted,
            other => {
                return Err(crate::Error::invalid(
                    "message status",
                    format!("unknown status {other:?}"),
                ));
            }
        })
    }
}

/// Why the model stopped, in the library's own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FinishReason {
    /// The model finished its reply (OpenAI `stop`, Anthropic `end_turn` and `stop_sequence`).
    Stop,
    /// The token limit was reached (OpenAI `length`, Anthropic `max_tokens`).
    Length,
    /// The model wants tools called (OpenAI `tool_calls`, Anthropic `tool_use`).
    ToolCalls,
    /// The provider's content filter stopped the reply (Anthropic `refusal`).
    ContentFilter,
    /// Any other reason.
    Other,
}

impl FinishReason {
    /// The reason's name: `stop`, `length`, `tool_calls`, `content_filter`, `other`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other => "other",
        }
    }

    /// Parses the library's own names; anything else is [`FinishReason::Other`].
    pub fn parse(s: &str) -> Self {
        match s {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "tool_calls" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            _ => FinishReason::Other,
        }
    }
}

/// Token usage of one reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Tokens of the prompt (OpenAI `prompt_tokens`, Anthropic `input_tokens`).
    pub input_tokens: u64,
    /// Tokens of the reply (OpenAI `completion_tokens`, Anthropic `output_tokens`).
    pub output_tokens: u64,
}

/// A complete tool call requested by the model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCall {
    /// The position of the call in the reply (0, 1, …).
    pub index: u32,
    /// The provider's id for the call, used to send its result back.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments, as the JSON text the model produced.
    pub arguments: String,
}

/// One part of a message's content: text, or an image by URL or inline.
///
/// A message whose content is text alone keeps no parts (its [`content`](Message::content) says
/// it all); one with an image keeps every part, in order, in [`parts`](Message::parts).
///
/// In JSON (camelCase): `{"type":"text","text":"…"}`, `{"type":"imageUrl","url":"https://…"}`,
/// `{"type":"imageBase64","mediaType":"image/png","data":"iVBOR…"}`. More kinds (files) may
/// come: match with a wildcard arm.
///
/// ```
/// use chatstream::ContentPart;
///
/// let part = ContentPart::image_base64("image/png", "iVBORw0KGgo=");
/// assert_eq!(part.to_url().as_deref(), Some("data:image/png;base64,iVBORw0KGgo="));
/// assert_eq!(
///     serde_json::to_value(&part)?,
///     serde_json::json!({"type": "imageBase64", "mediaType": "image/png", "data": "iVBORw0KGgo="})
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
#[non_exhaustive]
pub enum ContentPart {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image the provider fetches by URL (`https://…`, or a `data:` URL).
    ImageUrl {
        /// Where the image is.
        url: String,
    },
    /// An image sent inline.
    ImageBase64 {
        /// Its media type: `image/png`, `image/jpeg`, `image/gif` or `image/webp`.
        #[serde(rename = "mediaType")]
        media_type: String,
        /// Its bytes in standard base64 (with padding).
        data: String,
    },
}

impl ContentPart {
    /// A text part.
    pub fn text(text: impl Into<String>) -> Self {
        ContentPart::Text { text: text.into() }
    }

    /// An image by URL.
    pub fn image_url(url: impl Into<String>) -> Self {
        ContentPart::ImageUrl { url: url.into() }
    }

    /// An inline image: its media type and its bytes in base64.
    pub fn image_base64(media_type: impl Into<String>, data: impl Into<String>) -> Self {
        ContentPart::ImageBase64 {
            media_type: media_type.into(),
            data: data.into(),
        }
    }

    /// An image given as one URL: a `data:MEDIA_TYPE;base64,DATA` URL becomes an inline image
    /// ([`ImageBase64`](Self::ImageBase64), which every provider can send: Anthropic takes no
    /// `data:` URLs), any other URL an image by URL. Nothing is checked or fetched.
    ///
    /// ```
    /// use chatstream::ContentPart;
    ///
    /// assert_eq!(
    ///     ContentPart::image("data:image/gif;base64,R0lGODlh"),
    ///     ContentPart::image_base64("image/gif", "R0lGODlh")
    /// );
    /// assert_eq!(
    ///     ContentPart::image("https://example.com/a.png"),
    ///     ContentPart::image_url("https://example.com/a.png")
    /// );
    /// ```
    pub fn image(url: impl Into<String>) -> Self {
        let url = url.into();
        match parse_data_url(&url) {
            Some((media_type, data)) => ContentPart::image_base64(media_type, data),
            None => ContentPart::ImageUrl { url },
        }
    }

    /// The text of a text part.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            ContentPart::Text { text } => Some(text),
            _ => None,
        }
    }

    /// Whether the part is an image.
    pub fn is_image(&self) -> bool {
        matches!(
            self,
            ContentPart::ImageUrl { .. } | ContentPart::ImageBase64 { .. }
        )
    }

    /// An image as one URL, as the OpenAI APIs take it: the URL itself, or a `data:` URL of an
    /// inline image. `None` for text.
    pub fn to_url(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            ContentPart::Text { .. } => None,
            ContentPart::ImageUrl { url } => Some(url.as_str().into()),
            ContentPart::ImageBase64 { media_type, data } => {
                Some(format!("data:{media_type};base64,{data}").into())
            }
        }
    }
}

/// The media type (without parameters) and the data of a base64 `data:` URL.
pub(crate) fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url
        .get(..5)
        .filter(|scheme| scheme.eq_ignore_ascii_case("data:"))
        .map(|_| &url[5..])?;
    let (meta, data) = rest.split_once(',')?;
    let meta = meta.strip_suffix(";base64")?;
    let media_type = meta.split(';').next().unwrap_or_default().trim();
    Some((media_type, data))
}

/// The text of `parts`, concatenated.
pub(crate) fn text_of(parts: &[ContentPart]) -> String {
    parts.iter().filter_map(ContentPart::as_text).collect()
}

/// `parts` as a message keeps them: empty when they are all text (the text alone is the
/// content), else all of them.
pub(crate) fn kept_parts(parts: Vec<ContentPart>) -> Vec<ContentPart> {
    if parts.iter().any(|p| p.as_text().is_none()) {
        parts
    } else {
        Vec::new()
    }
}

/// Which model, with which options, produced a reply: persisted with it, so that a history shows
/// how each answer was made (two replies of one chat may come from two models).
///
/// The options are those of the request as sent (the service's defaults with the send's options
/// over them); tools are named, not repeated in full.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Generation {
    /// The provider's [name](crate::LlmProvider::name) (`openai`, `anthropic`, …).
    pub provider: String,
    /// The model asked for.
    pub model: String,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// The token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// The reasoning effort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Anthropic's thinking budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_budget: Option<u32>,
    /// The names of the tools offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// The tool choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// The response format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Extra fields merged into the upstream body.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Generation {
    /// What `request` asks for, sent to `provider` (whose `default_model` answers a request
    /// naming no model).
    ///
    /// ```
    /// use chatstream::{ChatRequest, Generation};
    ///
    /// let request = ChatRequest::user("hi").with_temperature(0.5);
    /// let generation = Generation::of(&request, "openai", "gpt-4o-mini");
    /// assert_eq!(generation.model, "gpt-4o-mini");
    /// assert_eq!(generation.temperature, Some(0.5));
    /// ```
    pub fn of(request: &ChatRequest, provider: &str, default_model: &str) -> Self {
        Generation {
            provider: provider.to_owned(),
            model: request
                .model
                .clone()
                .unwrap_or_else(|| default_model.to_owned()),
            temperature: request.temperature,
            top_p: request.top_p,
            max_output_tokens: request.max_tokens,
            stop: request.stop.clone(),
            reasoning_effort: request.reasoning_effort,
            thinking_budget: request.thinking_budget,
            tools: request.tools.iter().map(|t| t.name.clone()).collect(),
            tool_choice: request.tool_choice.clone(),
            response_format: request.response_format.clone(),
            extra: request.extra.clone(),
        }
    }
}

/// One message of a conversation, as persisted and as sent to clients.
///
/// In JSON (camelCase): `{"id","chatId","role","content","status","createdAt","updatedAt"}` plus,
/// when present, `"parts"`, `"reasoning"`, `"thinking"`, `"toolCalls"`, `"toolCallId"`,
/// `"finishReason"`, `"usage"`, `"generation"`, `"error"`, `"clientMessageId"` and `"replyTo"`.
/// The [`owner`](Self::owner) is not in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// The message's id.
    pub id: MessageId,
    /// Who owns its chat: with `chat_id`, the chat's [key](Self::key).
    ///
    /// Never in JSON, either way: an owner is established by whoever asks (authentication),
    /// never read from a body, so a message read from JSON belongs to the anonymous owner.
    #[serde(skip)]
    pub owner: UserId,
    /// The conversation it belongs to, among its owner's.
    pub chat_id: ChatId,
    /// Who wrote it.
    pub role: Role,
    /// Its text (with [`parts`](Self::parts), the text of its text parts, concatenated).
    pub content: String,
    /// Its whole content, in order, when it holds more than text (an image); empty for a
    /// message of text alone, whose [`content`](Self::content) says it all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<ContentPart>,
    /// The model's reasoning text, kept apart from the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// The reply's signed thinking blocks, in order (Anthropic's extended thinking), sent back
    /// unchanged with the message in later requests of the chat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thinking: Vec<ThinkingBlock>,
    /// Tool calls requested by the model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a `tool` message: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Where the message is in its life.
    pub status: MessageStatus,
    /// Why the model stopped (assistant messages that finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    /// Token usage (assistant messages, when the provider reports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Which model and options produced the reply (assistant messages a session generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    /// Why the reply failed (status `failed` or `interrupted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The client's idempotency key for a user message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
    /// For an assistant message: the user message it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl Message {
    /// A new message of `chat` with a fresh id, status `complete` and the current time.
    ///
    /// `chat` is a [`ChatKey`], or a [`ChatId`] for the [anonymous](UserId::anonymous) owner's
    /// chat.
    pub fn new(chat: impl Into<ChatKey>, role: Role, content: impl Into<String>) -> Self {
        let ChatKey { owner, id: chat_id } = chat.into();
        let now = Utc::now();
        Message {
            id: MessageId::generate(),
            owner,
            chat_id,
            role,
            content: content.into(),
            parts: Vec::new(),
            reasoning: None,
            thinking: Vec::new(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            status: MessageStatus::Complete,
            finish_reason: None,
            usage: None,
            generation: None,
            error: None,
            client_message_id: None,
            reply_to: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// A new user message.
    pub fn user(chat: impl Into<ChatKey>, content: impl Into<String>) -> Self {
        Message::new(chat, Role::User, content)
    }

    /// A new message of `chat` whose content is `parts`, in order: text and images.
    ///
    /// [`content`](Self::content) becomes the text of the text parts, concatenated; the parts
    /// are kept in [`parts`](Self::parts) when one of them is not text (text alone is kept as
    /// the content only).
    ///
    /// ```
    /// use chatstream::{ChatId, ContentPart, Message, Role};
    ///
    /// let chat: ChatId = "c1".parse()?;
    /// let m = Message::with_parts(
    ///     chat,
    ///     Role::User,
    ///     [
    ///         ContentPart::text("What is in this picture?"),
    ///         ContentPart::image_url("https://example.com/cat.png"),
    ///     ],
    /// );
    /// assert_eq!(m.content, "What is in this picture?");
    /// assert_eq!(m.parts.len(), 2);
    /// # Ok::<(), chatstream::Error>(())
    /// ```
    pub fn with_parts(
        chat: impl Into<ChatKey>,
        role: Role,
        parts: impl IntoIterator<Item = ContentPart>,
    ) -> Self {
        let parts: Vec<ContentPart> = parts.into_iter().collect();
        let mut m = Message::new(chat, role, text_of(&parts));
        m.parts = kept_parts(parts);
        m
    }

    /// A new system message.
    pub fn system(chat: impl Into<ChatKey>, content: impl Into<String>) -> Self {
        Message::new(chat, Role::System, content)
    }

    /// A new, empty assistant message with status `streaming`, ready to be filled by an
    /// [`Accumulator`](crate::Accumulator).
    pub fn assistant_streaming(chat: impl Into<ChatKey>) -> Self {
        let mut m = Message::new(chat, Role::Assistant, String::new());
        m.status = MessageStatus::Streaming;
        m
    }

    /// The key of the message's chat: its owner and chat id.
    pub fn key(&self) -> ChatKey {
        ChatKey::new(self.owner.clone(), self.chat_id.clone())
    }

    /// Records which user message this assistant message answers.
    pub fn replying_to(mut self, user_message: MessageId) -> Self {
        self.reply_to = Some(user_message);
        self
    }

    /// Sets the client's idempotency key.
    pub fn with_client_message_id(mut self, key: impl Into<String>) -> Self {
        self.client_message_id = Some(key.into());
        self
    }
}

/// A conversation.
///
/// In JSON (camelCase): `{"id","createdAt","updatedAt"}` plus `"title"` when it has one; the
/// [`owner`](Self::owner) is not in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chat {
    /// Who the chat belongs to: with `id`, its [key](Self::key).
    ///
    /// Never in JSON, either way (see [`Message::owner`]).
    #[serde(skip)]
    pub owner: UserId,
    /// The chat's id, unique among its owner's chats.
    pub id: ChatId,
    /// Its title, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When a message was last added or changed (chats are listed most recent first).
    pub updated_at: DateTime<Utc>,
}

impl Chat {
    /// The chat's key: its owner and id.
    pub fn key(&self) -> ChatKey {
        ChatKey::new(self.owner.clone(), self.id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_json_is_camel_case_and_sparse() {
        let chat: ChatId = "c1".parse().unwrap();
        let m = Message::user(chat, "hi").with_client_message_id("k1");
        let v = serde_json::to_value(&m).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        for k in [
            "id",
            "chatId",
            "role",
            "content",
            "status",
            "createdAt",
            "updatedAt",
            "clientMessageId",
        ] {
            assert!(keys.contains(&k.to_string()), "{k} missing in {v}");
        }
        assert!(!keys.contains(&"reasoning".to_string()));
        assert_eq!(v["role"], "user");
        assert_eq!(v["status"], "complete");
        let back: Message = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn parts_are_kept_only_with_an_image_and_round_trip_in_json() {
        let chat: ChatId = "c1".parse().unwrap();
        let text_only = Message::with_parts(
            chat.clone(),
            Role::User,
            [ContentPart::text("a"), ContentPart::text("b")],
        );
        assert_eq!(text_only.content, "ab");
        let v = serde_json::to_value(&text_only).unwrap();
        for absent in ["parts", "thinking", "generation"] {
            assert!(v.get(absent).is_none(), "{absent} in {v}");
        }
        let m = Message::with_parts(
            chat,
            Role::User,
            [
                ContentPart::image("data:image/webp;base64,UklGRg=="),
                ContentPart::text("which?"),
                ContentPart::image("https://example.com/b.gif"),
            ],
        );
        assert_eq!(m.content, "which?");
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v["parts"],
            serde_json::json!([
                {"type": "imageBase64", "mediaType": "image/webp", "data": "UklGRg=="},
                {"type": "text", "text": "which?"},
                {"type": "imageUrl", "url": "https://example.com/b.gif"},
            ])
        );
        assert_eq!(serde_json::from_value::<Message>(v).unwrap(), m);
        // Not a base64 data: URL: kept as a URL.
        assert_eq!(
            ContentPart::image("data:text/plain,hello"),
            ContentPart::image_url("data:text/plain,hello")
        );
        assert_eq!(
            parse_data_url("DATA:image/png;charset=x;base64,AAAA"),
            Some(("image/png", "AAAA"))
        );
    }

    #[test]
    fn owners_stay_out_of_json() {
        let alice = ChatKey::new("alice".parse().unwrap(), "c1".parse().unwrap());
        let m = Message::user(alice.clone(), "hi");
        assert_eq!(m.key(), alice);
        let mut v = serde_json::to_value(&m).unwrap();
        assert!(v.get("owner").is_none(), "{v}");
        v["owner"] = "alice".into();
        let back: Message = serde_json::from_value(v).unwrap();
        assert!(
            back.owner.is_anonymous(),
            "an owner is never read from JSON"
        );

        let chat = Chat {
            owner: alice.owner.clone(),
            id: alice.id.clone(),
            title: None,
            created_at: m.created_at,
            updated_at: m.updated_at,
        };
        assert_eq!(chat.key(), alice);
        let mut v = serde_json::to_value(&chat).unwrap();
        assert!(v.get("owner").is_none(), "{v}");
        v["owner"] = "alice".into();
        assert!(
            serde_json::from_value::<Chat>(v)
                .unwrap()
                .owner
                .is_anonymous()
        );
    }

    #[test]
    fn names_round_trip() {
        for s in ["stop", "length", "tool_calls", "content_filter", "other"] {
            assert_eq!(FinishReason::parse(s).as_str(), s);
        }
        for s in [
            "streaming",
            "complete",
            "cancelled",
            "failed",
            "interrupted",
        ] {
            assert_eq!(s.parse::<MessageStatus>().unwrap().as_str(), s);
        }
        assert_eq!(
            serde_json::to_string(&FinishReason::ToolCalls).unwrap(),
            "\"tool_calls\""
        );
    }
}
