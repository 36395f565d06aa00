//! [`Delta`]: the item of every reply stream.

use serde::{Deserialize, Serialize};

use crate::{FinishReason, Usage};

/// One piece of a streaming reply.
///
/// Every provider stream yields `Result<Delta>` items and ends in exactly one terminal outcome:
/// a [`Delta::Finish`] (possibly followed by a [`Delta::Usage`]), or an error.
///
/// In JSON: `{"type":"text","text":"…"}`, `{"type":"reasoning","text":"…"}`,
/// `{"type":"toolCall","index":0,"id":…,"name":…,"arguments":"…"}`,
/// `{"type":"usage","inputTokens":…,"outputTokens":…}`, `{"type":"finish","reason":"stop"}`,
/// `{"type":"retry","attempt":2,"provider":"openai","reason":"…"}`,
/// `{"type":"thinkingSignature","signature":"…"}` and `{"type":"redactedThinking","data":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
#[non_exhaustive]
pub enum Delta {
    /// Reply text to append.
    Text {
        /// The text.
        text: String,
    },
    /// Reasoning ("thinking") text to append, kept apart from the reply.
    Reasoning {
        /// The text.
        text: String,
    },
    /// A fragment of a tool call.
    ToolCall(ToolCallDelta),
    /// Token usage of the reply so far; a later usage replaces an earlier one.
    Usage(Usage),
    /// The model finished.
    Finish {
        /// Why.
        reason: FinishReason,
    },
    /// A resilience wrapper is starting another upstream attempt (a retry, a provider switch or
    /// a mid-stream recovery). Informational: no text is ever repeated after it.
    Retry(RetryNotice),
    /// The signature of the thinking block whose reasoning text came since the previous block
    /// ended (Anthropic's `signature_delta`): it closes that block. Kept by the
    /// [`Accumulator`](crate::Accumulator) so that the block can be sent back unchanged.
    ThinkingSignature {
        /// The signature, opaque.
        signature: String,
    },
    /// A block of thinking the provider encrypted (Anthropic's `redacted_thinking`), kept like a
    /// signature.
    RedactedThinking {
        /// The encrypted thinking, opaque.
        data: String,
    },
}

/// A fragment of a tool call: the id and name arrive once, the arguments in pieces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCallDelta {
    /// Which tool call of the reply (0, 1, …); fragments with the same index belong together.
    pub index: u32,
    /// The call's id, usually on its first fragment only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The function's name, usually on its first fragment only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A piece of the arguments' JSON text.
    #[serde(default)]
    pub arguments: String,
}

/// What a [`Delta::Retry`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryNotice {
    /// The attempt about to start (2 for the first retry).
    pub attempt: u32,
    /// The provider the attempt goes to.
    pub provider: String,
    /// Why the previous attempt ended.
    pub reason: String,
}

impl Delta {
    /// A text delta.
    pub fn text(text: impl Into<String>) -> Self {
        Delta::Text { text: text.into() }
    }

    /// A reasoning delta.
    pub fn reasoning(text: impl Into<String>) -> Self {
        Delta::Reasoning { text: text.into() }
    }

    /// A finish delta.
    pub fn finish(reason: FinishReason) -> Self {
        Delta::Finish { reason }
    }

    /// A usage delta.
    pub fn usage(input_tokens: u64, output_tokens: u64) -> Self {
        Delta::Usage(Usage {
            input_tokens,
            output_tokens,
        })
    }

    /// The text of a [`Delta::Text`]: what to print as it arrives.
    ///
    /// ```
    /// use chatstream::Delta;
    ///
    /// assert_eq!(Delta::text("Hi").as_text(), Some("Hi"));
    /// assert_eq!(Delta::reasoning("hm").as_text(), None);
    /// ```
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Delta::Text { text } => Some(text),
            _ => None,
        }
    }

    /// Whether this delta carries reply content (text, reasoning or a tool-call fragment), as
    /// opposed to metadata (usage, finish, retry notices, thinking signatures).
    pub fn is_output(&self) -> bool {
        matches!(
            self,
            Delta::Text { .. } | Delta::Reasoning { .. } | Delta::ToolCall(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shapes() {
        let j = |d: &Delta| serde_json::to_string(d).unwrap();
        assert_eq!(j(&Delta::text("a")), r#"{"type":"text","text":"a"}"#);
        assert_eq!(
            j(&Delta::reasoning("r")),
            r#"{"type":"reasoning","text":"r"}"#
        );
        assert_eq!(
            j(&Delta::ToolCall(ToolCallDelta {
                index: 0,
                id: Some("c".into()),
                name: Some("f".into()),
                arguments: "{".into()
            })),
            r#"{"type":"toolCall","index":0,"id":"c","name":"f","arguments":"{"}"#
        );
        assert_eq!(
            j(&Delta::usage(1, 2)),
            r#"{"type":"usage","inputTokens":1,"outputTokens":2}"#
        );
        assert_eq!(
            j(&Delta::finish(FinishReason::Stop)),
            r#"{"type":"finish","reason":"stop"}"#
        );
        assert_eq!(
            j(&Delta::ThinkingSignature {
                signature: "s".into()
            }),
            r#"{"type":"thinkingSignature","signature":"s"}"#
        );
        assert_eq!(
            j(&Delta::RedactedThinking { data: "d".into() }),
            r#"{"type":"redactedThinking","data":"d"}"#
        );
        for d in [
            Delta::text("x"),
            Delta::usage(3, 4),
            Delta::finish(FinishReason::Length),
            Delta::RedactedThinking { data: "d".into() },
        ] {
            assert_eq!(serde_json::from_str::<Delta>(&j(&d)).unwrap(), d);
        }
    }
}
