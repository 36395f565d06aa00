//! How a message and a chat are laid out in SQL columns: encoding for writes, decoding of rows.

use sqlx::FromRow;

use super::{SqlBackend, corrupt};
use crate::{
    Chat, Error, FinishReason, Message, MessageId, MessageStatus, Result, Role, ToolCall, Usage,
    UserId,
};

/// The columns of a message row, in the order every statement that writes one binds them.
macro_rules! message_columns {
    () => {
        "id, owner, chat_id, role, content, reasoning, tool_calls, tool_call_id, status, finish_reason, \
         usage_input_tokens, usage_output_tokens, error, client_message_id, reply_to, created_at, \
         updated_at, parts, thinking, generation"
    };
}
pub(crate) use message_columns;

/// The columns of a chat row, in the order every statement that reads one selects them.
macro_rules! chat_columns {
    () => {
        "owner, id, title, created_at, updated_at"
    };
}
pub(crate) use chat_columns;

/// A message's columns as a statement binds them, in `message_columns!()` order.
pub(crate) struct Columns<'a, T> {
    pub(crate) message: &'a Message,
    pub(crate) tool_calls: Option<String>,
    pub(crate) extras: Extras,
    pub(crate) input_tokens: Option<i64>,
    pub(crate) output_tokens: Option<i64>,
    pub(crate) created_at: T,
    pub(crate) updated_at: T,
}

impl<'a, T> Columns<'a, T> {
    /// The columns of `message` as `B` stores them.
    pub(crate) fn of<B: SqlBackend<Time = T>>(message: &'a Message) -> Result<Self> {
        let (input_tokens, output_tokens) = usage_columns(message.usage);
        Ok(Columns {
            message,
            tool_calls: tool_calls_to_json(B::BACKEND, &message.tool_calls)?,
            extras: Extras::of(B::BACKEND, message)?,
            input_tokens,
            output_tokens,
            created_at: B::encode_time(message.created_at)?,
            updated_at: B::encode_time(message.updated_at)?,
        })
    }
}

/// `message` as `B` hands it back after writing it: with its timestamps as they read back, so a
/// repeat compares equal.
pub(crate) fn as_stored<B: SqlBackend>(message: &Message) -> Message {
    let mut stored = message.clone();
    stored.created_at = B::kept(stored.created_at);
    stored.updated_at = B::kept(stored.updated_at);
    stored
}

/// Tool calls as stored: `None` for none, else a JSON array.
pub(crate) fn tool_calls_to_json(
    backend: &'static str,
    calls: &[ToolCall],
) -> Result<Option<String>> {
    to_json(backend, "tool calls", calls, calls.is_empty())
}

/// `value` as JSON text, `None` when `absent`.
fn to_json<V: serde::Serialize + ?Sized>(
    backend: &'static str,
    what: &str,
    value: &V,
    absent: bool,
) -> Result<Option<String>> {
    if absent {
        return Ok(None);
    }
    serde_json::to_string(value)
        .map(Some)
        .map_err(|e| Error::Store {
            backend,
            message: format!("cannot encode {what}: {e}"),
            source: Some(Box::new(e)),
        })
}

/// The JSON text columns of a message that most messages leave NULL: its content parts (only a
/// message with an image has any), its thinking blocks and its generation.
pub(crate) struct Extras {
    pub(crate) parts: Option<String>,
    pub(crate) thinking: Option<String>,
    pub(crate) generation: Option<String>,
}

impl Extras {
    pub(crate) fn of(backend: &'static str, m: &Message) -> Result<Self> {
        Ok(Extras {
            parts: to_json(backend, "content parts", &m.parts, m.parts.is_empty())?,
            thinking: to_json(
                backend,
                "thinking blocks",
                &m.thinking,
                m.thinking.is_empty(),
            )?,
            generation: to_json(backend, "generation", &m.generation, m.generation.is_none())?,
        })
    }
}

/// A JSON text column read back: its default when NULL.
fn from_json<V: serde::de::DeserializeOwned + Default>(
    backend: &'static str,
    what: &str,
    column: Option<&str>,
) -> Result<V> {
    match column {
        None | Some("") => Ok(V::default()),
        Some(json) => serde_json::from_str(json).map_err(|e| corrupt(backend, what, e)),
    }
}

/// Token counts as stored: signed 64-bit integers.
///
/// Counts beyond `i64::MAX` cannot occur in practice; they saturate rather than fail a write.
pub(crate) fn usage_columns(usage: Option<Usage>) -> (Option<i64>, Option<i64>) {
    let col = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    match usage {
        Some(u) => (Some(col(u.input_tokens)), Some(col(u.output_tokens))),
        None => (None, None),
    }
}

/// The columns of a chat row (as `chat_columns!()` selects them), decoded into Rust types but not
/// yet validated.
#[derive(FromRow)]
pub(crate) struct RawChat<T> {
    owner: String,
    id: String,
    title: Option<String>,
    created_at: T,
    updated_at: T,
}

/// The columns of a message row, decoded into Rust types but not yet validated.
#[derive(FromRow)]
pub(crate) struct RawMessage<T> {
    id: uuid::Uuid,
    owner: String,
    chat_id: String,
    role: String,
    content: String,
    reasoning: Option<String>,
    tool_calls: Option<String>,
    tool_call_id: Option<String>,
    status: String,
    finish_reason: Option<String>,
    usage_input_tokens: Option<i64>,
    usage_output_tokens: Option<i64>,
    error: Option<String>,
    client_message_id: Option<String>,
    reply_to: Option<uuid::Uuid>,
    created_at: T,
    updated_at: T,
    parts: Option<String>,
    thinking: Option<String>,
    generation: Option<String>,
}

impl<T> RawMessage<T> {
    pub(crate) fn into_message<B: SqlBackend<Time = T>>(self) -> Result<Message> {
        let bad = |detail: Error| corrupt(B::BACKEND, "message", detail);
        let tool_calls = from_json(B::BACKEND, "message tool calls", self.tool_calls.as_deref())?;
        let parts = from_json(B::BACKEND, "message content parts", self.parts.as_deref())?;
        let thinking = from_json(
            B::BACKEND,
            "message thinking blocks",
            self.thinking.as_deref(),
        )?;
        let generation = from_json(B::BACKEND, "message generation", self.generation.as_deref())?;
        let count = |n: Option<i64>| n.map_or(0, |n| u64::try_from(n).unwrap_or(0));
        let usage =
            (self.usage_input_tokens.is_some() || self.usage_output_tokens.is_some()).then(|| {
                Usage {
                    input_tokens: count(self.usage_input_tokens),
                    output_tokens: count(self.usage_output_tokens),
                }
            });
        Ok(Message {
            id: MessageId::from_uuid(self.id),
            owner: UserId::from_stored(&self.owner).map_err(bad)?,
            chat_id: self.chat_id.parse().map_err(bad)?,
            role: self.role.parse::<Role>().map_err(bad)?,
            content: self.content,
            parts,
            reasoning: self.reasoning,
            thinking,
            tool_calls,
            tool_call_id: self.tool_call_id,
            status: self.status.parse::<MessageStatus>().map_err(bad)?,
            finish_reason: self.finish_reason.as_deref().map(FinishReason::parse),
            usage,
            generation,
            error: self.error,
            client_message_id: self.client_message_id,
            reply_to: self.reply_to.map(MessageId::from_uuid),
            created_at: B::decode_time(self.created_at),
            updated_at: B::decode_time(self.updated_at),
        })
    }
}

impl<T> RawChat<T> {
    pub(crate) fn into_chat<B: SqlBackend<Time = T>>(self) -> Result<Chat> {
        Ok(Chat {
            owner: UserId::from_stored(&self.owner)
                .map_err(|e| corrupt(B::BACKEND, "chat owner", e))?,
            id: self
                .id
                .parse()
                .map_err(|e| corrupt(B::BACKEND, "chat id", e))?,
            title: self.title,
            created_at: B::decode_time(self.created_at),
            updated_at: B::decode_time(self.updated_at),
        })
    }
}
