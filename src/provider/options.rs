//! What a [`ChatRequest`](super::ChatRequest) can ask for besides messages and sampling: how hard
//! a reasoning model thinks, which tool it must call, the shape of its answer, and the thinking
//! blocks a conversation hands back to Anthropic.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How hard a reasoning model thinks before it answers: OpenAI's `reasoning_effort` and the
/// Responses API's `reasoning.effort`. Which values a model takes is the model's business; an
/// unsupported one is the upstream's error.
///
/// ```
/// use chatstream::provider::ReasoningEffort;
///
/// let effort: ReasoningEffort = "low".parse()?;
/// assert_eq!(effort.as_str(), "low");
/// assert!("lots".parse::<ReasoningEffort>().is_err());
/// # Ok::<(), chatstream::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ReasoningEffort {
    /// No reasoning (`none`, GPT-5.1 and later).
    None,
    /// `minimal`.
    Minimal,
    /// `low`.
    Low,
    /// `medium`.
    Medium,
    /// `high`.
    High,
    /// `xhigh`.
    #[serde(rename = "xhigh")]
    XHigh,
}

impl ReasoningEffort {
    /// Every effort, least first.
    pub const ALL: [ReasoningEffort; 6] = [
        ReasoningEffort::None,
        ReasoningEffort::Minimal,
        ReasoningEffort::Low,
        ReasoningEffort::Medium,
        ReasoningEffort::High,
        ReasoningEffort::XHigh,
    ];

    /// The name on the wire: `none`, `minimal`, `low`, `medium`, `high` or `xhigh`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningEffort::None => "none",
            ReasoningEffort::Minimal => "minimal",
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
            ReasoningEffort::XHigh => "xhigh",
        }
    }
}

impl fmt::Display for ReasoningEffort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReasoningEffort {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        ReasoningEffort::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "reasoning effort",
                    format!(
                        "unknown reasoning effort {s:?}: use none, minimal, low, medium, high or \
                         xhigh"
                    ),
                )
            })
    }
}

/// Whether and which tool the model must call.
///
/// In JSON: `"auto"`, `"none"`, `"required"`, or `{"name":"get_time"}` for one tool.
///
/// ```
/// use chatstream::provider::ToolChoice;
///
/// let one: ToolChoice = serde_json::from_str(r#"{"name":"get_time"}"#)?;
/// assert_eq!(one, ToolChoice::tool("get_time"));
/// assert_eq!(serde_json::to_string(&ToolChoice::Required)?, r#""required""#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ToolChoice {
    /// The model decides (the APIs' default when tools are given).
    Auto,
    /// No tool call.
    None,
    /// At least one tool call, of any tool (Anthropic's `any`).
    Required,
    /// A call of this tool.
    #[serde(untagged)]
    Tool {
        /// The tool's name.
        name: String,
    },
}

impl ToolChoice {
    /// A call of the tool named `name`.
    pub fn tool(name: impl Into<String>) -> Self {
        ToolChoice::Tool { name: name.into() }
    }
}

/// The shape the model's answer must have (structured output).
///
/// In JSON (camelCase, OpenAI's snake-case names accepted too): `{"type":"jsonObject"}` or
/// `{"type":"jsonSchema","name":"…","schema":{…},"strict":true}`.
///
/// OpenAI chat completions send it as `response_format`, the Responses API as `text.format`,
/// Anthropic as `output_config.format` (a schema only: Anthropic has no free JSON mode).
///
/// ```
/// use chatstream::provider::{JsonSchema, ResponseFormat};
/// use serde_json::json;
///
/// let format: ResponseFormat = JsonSchema::new("answer", json!({"type": "object"}))
///     .with_strict(true)
///     .into();
/// assert_eq!(
///     serde_json::to_value(&format)?,
///     json!({"type": "jsonSchema", "name": "answer", "schema": {"type": "object"}, "strict": true})
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
#[non_exhaustive]
pub enum ResponseFormat {
    /// Any JSON object.
    #[serde(alias = "json_object")]
    JsonObject,
    /// JSON that follows a schema.
    #[serde(alias = "json_schema")]
    JsonSchema(JsonSchema),
}

/// A named JSON Schema for [`ResponseFormat::JsonSchema`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct JsonSchema {
    /// The schema's name (OpenAI wants `[A-Za-z0-9_-]{1,64}`).
    pub name: String,
    /// The JSON Schema itself.
    pub schema: serde_json::Value,
    /// What the answer is, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// OpenAI's strict mode: the answer follows the schema exactly (which then has to meet
    /// OpenAI's rules, e.g. `additionalProperties: false` everywhere). Unset: the API's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

impl JsonSchema {
    /// A schema with this name.
    pub fn new(name: impl Into<String>, schema: serde_json::Value) -> Self {
        JsonSchema {
            name: name.into(),
            schema,
            description: None,
            strict: None,
        }
    }

    /// Sets OpenAI's strict mode.
    #[must_use]
    pub fn with_strict(mut self, strict: bool) -> Self {
        self.strict = Some(strict);
        self
    }

    /// Sets the description.
    #[must_use]
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
}

impl From<JsonSchema> for ResponseFormat {
    fn from(schema: JsonSchema) -> Self {
        ResponseFormat::JsonSchema(schema)
    }
}

/// Which field carries the token limit of an OpenAI chat-completions request.
///
/// OpenAI's reasoning models take only `max_completion_tokens`; many compatible servers only
/// know `max_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TokenLimitField {
    /// `max_tokens`, which every compatible server knows.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`, which OpenAI's reasoning models need.
    MaxCompletionTokens,
}

/// A block of a model's thinking as Anthropic signs it, kept so that a later request can hand it
/// back unchanged (Anthropic checks the signature; with tool use it must see the thinking that
/// led to the call).
///
/// In JSON: `{"type":"thinking","text":"…","signature":"…"}` or `{"type":"redacted","data":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
#[non_exhaustive]
pub enum ThinkingBlock {
    /// Thinking text with the signature that vouches for it.
    Thinking {
        /// The thinking text.
        text: String,
        /// Anthropic's signature of it.
        signature: String,
    },
    /// Thinking the provider's safety systems encrypted: opaque, sent back as it came.
    Redacted {
        /// The encrypted thinking.
        data: String,
    },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tool_choice_json() {
        for (json, choice) in [
            (r#""auto""#, ToolChoice::Auto),
            (r#""none""#, ToolChoice::None),
            (r#""required""#, ToolChoice::Required),
            (r#"{"name":"f"}"#, ToolChoice::tool("f")),
        ] {
            assert_eq!(serde_json::from_str::<ToolChoice>(json).unwrap(), choice);
            assert_eq!(serde_json::to_string(&choice).unwrap(), json);
        }
        assert!(serde_json::from_str::<ToolChoice>(r#""any""#).is_err());
        assert!(serde_json::from_str::<ToolChoice>(r#"{"tool":"f"}"#).is_err());
    }

    #[test]
    fn response_format_json() {
        let f: ResponseFormat = serde_json::from_str(r#"{"type":"json_object"}"#).unwrap();
        assert_eq!(f, ResponseFormat::JsonObject);
        let f: ResponseFormat =
            serde_json::from_str(r#"{"type":"jsonSchema","name":"n","schema":{}}"#).unwrap();
        assert_eq!(f, JsonSchema::new("n", serde_json::json!({})).into());
        assert!(serde_json::from_str::<ResponseFormat>(r#"{"type":"jsonSchema"}"#).is_err());
    }

    #[test]
    fn reasoning_effort_names_round_trip() {
        for effort in ReasoningEffort::ALL {
            assert_eq!(effort.as_str().parse::<ReasoningEffort>().unwrap(), effort);
            assert_eq!(
                serde_json::to_string(&effort).unwrap(),
                format!("\"{effort}\"")
            );
        }
    }
}
