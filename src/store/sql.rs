//! What the SQL backends share: error mapping and the encoding of a message's structured fields.

use crate::{Error, FinishReason, Message, MessageStatus, Result, Role, ToolCall, Usage};

/// Wraps a sqlx error into the crate's error, saying what was being done.
///
/// Connection failures get a message that names the server, so a wrong URL or a stopped database
/// is obvious from the error alone.
pub(crate) fn store_error(backend: &'static str, doing: &str, err: sqlx::Error) -> Error {
    let message = match &err {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            format!("{doing}: cannot reach the database server: {err}")
        }
        sqlx::Error::PoolTimedOut => {
            format!("{doing}: timed out waiting for a database connection")
        }
        _ => format!("{doing}: {err}"),
    };
    Error::Store {
        backend,
        message,
        source: Some(Box::new(err)),
    }
}

/// Whether a sqlx error is a violated unique constraint (a taken id or client message id).
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

/// A stored row that cannot be turned back into a message.
pub(crate) fn corrupt(backend: &'static str, what: &str, detail: impl std::fmt::Display) -> Error {
    Error::Store {
        backend,
        message: format!("stored {what} is unreadable: {detail}"),
        source: None,
    }
}

/// Tool calls as stored: `None` for none, else a JSON array.
pub(crate) fn tool_calls_to_json(
    backend: &'static str,
    calls: &[ToolCall],
) -> Result<Option<String>> {
    if calls.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(calls)
        .map(Some)
        .map_err(|e| Error::Store {
            backend,
            message: format!("cannot encode tool calls: {e}"),
            source: Some(Box::new(e)),
        })
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

/// The columns of a message row, decoded into Rust types but not yet validated.
pub(crate) struct RawMessage {
    pub(crate) id: uuid::Uuid,
    pub(crate) chat_id: String,
    pub(crate) role: String,
    pub(crate) content: String,
    pub(crate) reasoning: Option<String>,
    pub(crate) tool_calls: Option<String>,
    pub(crate) tool_call_id: Option<String>,
    pub(crate) status: String,
    pub(crate) finish_reason: Option<String>,
    pub(crate) usage_input_tokens: Option<i64>,
    pub(crate) usage_output_tokens: Option<i64>,
    pub(crate) error: Option<String>,
    pub(crate) client_message_id: Option<String>,
    pub(crate) reply_to: Option<uuid::Uuid>,
    pub(crate) created_at: chrono::DateTime<chrono::Utc>,
    pub(crate) updated_at: chrono::DateTime<chrono::Utc>,
}

impl RawMessage {
    pub(crate) fn into_message(self, backend: &'static str) -> Result<Message> {
        let bad = |detail: Error| corrupt(backend, "message", detail);
        let tool_calls = match self.tool_calls.as_deref() {
            None | Some("") => Vec::new(),
            Some(json) => {
                serde_json::from_str(json).map_err(|e| corrupt(backend, "message tool calls", e))?
            }
        };
        let count = |n: Option<i64>| n.map_or(0, |n| u64::try_from(n).unwrap_or(0));
        let usage =
            (self.usage_input_tokens.is_some() || self.usage_output_tokens.is_some()).then(|| {
                Usage {
                    input_tokens: count(self.usage_input_tokens),
                    output_tokens: count(self.usage_output_tokens),
                }
            });
        Ok(Message {
            id: crate::MessageId::from_uuid(self.id),
            chat_id: self.chat_id.parse().map_err(bad)?,
            role: self.role.parse::<Role>().map_err(bad)?,
            content: self.content,
            reasoning: self.reasoning,
            tool_calls,
            tool_call_id: self.tool_call_id,
            status: self.status.parse::<MessageStatus>().map_err(bad)?,
            finish_reason: self.finish_reason.as_deref().map(FinishReason::parse),
            usage,
            error: self.error,
            client_message_id: self.client_message_id,
            reply_to: self.reply_to.map(crate::MessageId::from_uuid),
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// The most rows a page may ask for, as SQL wants it.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
