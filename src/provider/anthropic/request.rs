//! The Messages request body: a [`ChatRequest`] encoded for the wire, with the system prompt
//! apart and the turns merged so that they alternate.

use serde::Serialize;

use crate::{
    ContentPart, Error, Result, Role,
    provider::{
        ChatRequest, JsonSchema, RequestMessage, ResponseFormat, ThinkingBlock, ToolChoice,
    },
};

#[derive(Serialize)]
pub(super) struct WireRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<WireThinking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<WireOutputConfig<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireToolChoice<'a> {
    Auto,
    Any,
    None,
    Tool { name: &'a str },
}

/// `{"type":"enabled","budget_tokens":N}`.
#[derive(Serialize)]
struct WireThinking {
    #[serde(rename = "type")]
    kind: &'static str,
    budget_tokens: u32,
}

/// `{"format":{"type":"json_schema","schema":{…}}}`.
#[derive(Serialize)]
struct WireOutputConfig<'a> {
    format: WireFormat<'a>,
}

#[derive(Serialize)]
struct WireFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    schema: &'a serde_json::Value,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    RedactedThinking {
        data: &'a str,
    },
    Text {
        text: &'a str,
    },
    Image {
        source: ImageSource<'a>,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: serde_json::Value,
    },
    ToolResult {
        tool_use_id: &'a str,
        content: &'a str,
    },
}

/// `{"type":"url","url":…}` or `{"type":"base64","media_type":…,"data":…}`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource<'a> {
    Url { url: &'a str },
    Base64 { media_type: &'a str, data: &'a str },
}

/// The text and image blocks of a message's content; none for empty text (the API rejects
/// empty text blocks).
fn content_blocks(m: &RequestMessage) -> Vec<Block<'_>> {
    let Some(parts) = m.rich_parts() else {
        return if m.content.is_empty() {
            Vec::new()
        } else {
            vec![Block::Text { text: &m.content }]
        };
    };
    parts
        .iter()
        .filter_map(|part| match part {
            ContentPart::Text { text } if text.is_empty() => None,
            ContentPart::Text { text } => Some(Block::Text { text }),
            ContentPart::ImageUrl { url } => Some(Block::Image {
                source: ImageSource::Url { url },
            }),
            ContentPart::ImageBase64 { media_type, data } => Some(Block::Image {
                source: ImageSource::Base64 { media_type, data },
            }),
        })
        .collect()
}

#[derive(Serialize)]
struct WireTool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: &'a serde_json::Value,
}

/// `request` on the wire, with `default_model` and `max_tokens` when it sets none (with thinking
/// on, `max_tokens` plus the thinking budget, so that the answer keeps its room).
///
/// Fails for a [`ResponseFormat::JsonObject`]: Anthropic takes a schema only.
pub(super) fn request_body<'a>(
    request: &'a ChatRequest,
    default_model: &'a str,
    max_tokens: u32,
) -> Result<WireRequest<'a>> {
    let mut system = Vec::new();
    let mut messages: Vec<WireMessage<'_>> = Vec::new();
    for m in &request.messages {
        let (role, blocks) = match m.role {
            Role::System => {
                system.push(m.content.as_str());
                continue;
            }
            Role::User if m.rich_parts().is_some() => ("user", content_blocks(m)),
            Role::User => ("user", vec![Block::Text { text: &m.content }]),
            Role::Assistant => {
                let mut blocks = Vec::with_capacity(1 + m.thinking.len() + m.tool_calls.len());
                // The API wants a reply's thinking first, exactly as it was signed.
                blocks.extend(m.thinking.iter().map(|block| match block {
                    ThinkingBlock::Thinking { text, signature } => Block::Thinking {
                        thinking: text,
                        signature,
                    },
                    ThinkingBlock::Redacted { data } => Block::RedactedThinking { data },
                }));
                // The API rejects empty text blocks; a message of tool calls only has none.
                if m.rich_parts().is_some() {
                    blocks.extend(content_blocks(m));
                } else if !m.content.is_empty() || m.tool_calls.is_empty() {
                    blocks.push(Block::Text { text: &m.content });
                }
                for call in &m.tool_calls {
                    blocks.push(Block::ToolUse {
                        id: &call.id,
                        name: &call.name,
                        // The API wants an object; a model's unparseable arguments become `{}`.
                        input: serde_json::from_str(&call.arguments)
                            .ok()
                            .filter(serde_json::Value::is_object)
                            .unwrap_or_else(|| serde_json::json!({})),
                    });
                }
                ("assistant", blocks)
            }
            Role::Tool => (
                "user",
                vec![Block::ToolResult {
                    tool_use_id: m.tool_call_id.as_deref().unwrap_or_default(),
                    content: &m.content,
                }],
            ),
        };
        // The API wants user and assistant turns to alternate.
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => messages.push(WireMessage {
                role,
                content: blocks,
            }),
        }
    }
    let output_config = match &request.response_format {
        None => None,
        Some(ResponseFormat::JsonSchema(JsonSchema { schema, .. })) => Some(WireOutputConfig {
            format: WireFormat {
                kind: "json_schema",
                schema,
            },
        }),
        Some(ResponseFormat::JsonObject) => {
            return Err(Error::invalid(
                "request",
                "Anthropic has no JSON object mode: give the response format a JSON schema",
            ));
        }
    };
    let budget = request.thinking_budget;
    Ok(WireRequest {
        model: request.model.as_deref().unwrap_or(default_model),
        max_tokens: request
            .max_tokens
            .unwrap_or_else(|| max_tokens.saturating_add(budget.unwrap_or(0))),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        stream: true,
        temperature: request.temperature,
        top_p: request.top_p,
        stop_sequences: &request.stop,
        tools: request
            .tools
            .iter()
            .map(|t| WireTool {
                name: &t.name,
                description: t.description.as_deref(),
                input_schema: &t.parameters,
            })
            .collect(),
        tool_choice: request.tool_choice.as_ref().map(|choice| match choice {
            ToolChoice::Auto => WireToolChoice::Auto,
            ToolChoice::None => WireToolChoice::None,
            ToolChoice::Required => WireToolChoice::Any,
            ToolChoice::Tool { name } => WireToolChoice::Tool { name },
        }),
        thinking: budget.map(|budget_tokens| WireThinking {
            kind: "enabled",
            budget_tokens,
        }),
        output_config,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::provider::tests::tool_round;

    #[test]
    fn request_body_shape() {
        let mut request = tool_round("Let me look.", "toolu_1", "{\"tz\":\"UTC\"}", None);
        // Two user turns in a row, a second system prompt, and a reply to continue.
        request
            .messages
            .insert(2, RequestMessage::new(Role::User, "Please."));
        request.messages.extend([
            RequestMessage::new(Role::System, "In UTC."),
            RequestMessage::new(Role::Assistant, "It is"),
        ]);
        let body: serde_json::Value =
            serde_json::to_value(request_body(&request, "claude", 512).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "model": "claude",
                "max_tokens": 512,
                "system": "Be brief.\n\nIn UTC.",
                "stream": true,
                "stop_sequences": ["END"],
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "Time?"},
                        {"type": "text", "text": "Please."}]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_time",
                         "input": {"tz": "UTC"}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12:00"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "It is"}]},
                ],
                "tools": [{"name": "get_time", "input_schema": {"type": "object"}}],
            })
        );
    }

    #[test]
    fn image_parts_on_the_wire() {
        let request = ChatRequest::new(vec![RequestMessage::with_parts(
            Role::User,
            [
                ContentPart::text("Compare."),
                ContentPart::image_url("https://example.com/a.png"),
                ContentPart::image_base64("image/jpeg", "/9j/4AAQ"),
            ],
        )]);
        let body = serde_json::to_value(request_body(&request, "c", 100).unwrap()).unwrap();
        assert_eq!(
            body["messages"],
            serde_json::json!([{"role": "user", "content": [
                {"type": "text", "text": "Compare."},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                {"type": "image", "source":
                    {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
            ]}])
        );
    }

    #[test]
    fn options_on_the_wire() {
        let mut assistant = RequestMessage::new(Role::Assistant, "Done.");
        assistant.thinking = vec![
            ThinkingBlock::Thinking {
                text: "hm".into(),
                signature: "sig".into(),
            },
            ThinkingBlock::Redacted { data: "enc".into() },
        ];
        let mut request = ChatRequest::new(vec![RequestMessage::new(Role::User, "Go"), assistant])
            .with_thinking_budget(2048)
            .with_tool_choice(ToolChoice::Required)
            .with_response_format(JsonSchema::new("n", serde_json::json!({"type": "object"})));
        let body = serde_json::to_value(request_body(&request, "c", 1000).unwrap()).unwrap();
        assert_eq!(body["max_tokens"], 3048);
        assert_eq!(
            body["thinking"],
            serde_json::json!({"type": "enabled", "budget_tokens": 2048})
        );
        assert_eq!(body["tool_choice"], serde_json::json!({"type": "any"}));
        assert_eq!(
            body["output_config"],
            serde_json::json!({"format": {"type": "json_schema", "schema": {"type": "object"}}})
        );
        assert_eq!(
            body["messages"][1]["content"],
            serde_json::json!([
                {"type": "thinking", "thinking": "hm", "signature": "sig"},
                {"type": "redacted_thinking", "data": "enc"},
                {"type": "text", "text": "Done."},
            ])
        );
        request.response_format = Some(ResponseFormat::JsonObject);
        assert!(matches!(
            request_body(&request, "c", 1000),
            Err(Error::Invalid { .. })
        ));
    }
}
