//! The Responses request body: a [`ChatRequest`] encoded as `input` items.

use serde::Serialize;

use crate::{
    ContentPart, Error, Result, Role,
    provider::{ChatRequest, JsonSchema, ReasoningEffort, ResponseFormat, ToolChoice},
};

#[derive(Serialize)]
pub(super) struct WireRequest<'a> {
    model: &'a str,
    input: Vec<Item<'a>>,
    stream: bool,
    store: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<WireReasoning>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<WireText<'a>>,
}

/// One `input` item.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Item<'a> {
    Message {
        role: &'static str,
        content: ItemContent<'a>,
    },
    FunctionCall {
        call_id: &'a str,
        name: &'a str,
        arguments: &'a str,
    },
    FunctionCallOutput {
        call_id: &'a str,
        output: &'a str,
    },
}

/// A string, or an array of parts for a message with an image.
#[derive(Serialize)]
#[serde(untagged)]
enum ItemContent<'a> {
    Text(&'a str),
    Parts(Vec<InputPart<'a>>),
}

/// `{"type":"input_text","text":…}` (`output_text` in an assistant message) or
/// `{"type":"input_image","image_url":…}`; an inline image is a `data:` URL.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum InputPart<'a> {
    InputText {
        text: &'a str,
    },
    OutputText {
        text: &'a str,
    },
    InputImage {
        image_url: std::borrow::Cow<'a, str>,
    },
}

fn input_parts(role: Role, parts: &[ContentPart]) -> Vec<InputPart<'_>> {
    parts
        .iter()
        .filter_map(|part| match part {
            ContentPart::Text { text } if role == Role::Assistant => {
                Some(InputPart::OutputText { text })
            }
            ContentPart::Text { text } => Some(InputPart::InputText { text }),
            image => image
                .to_url()
                .map(|image_url| InputPart::InputImage { image_url }),
        })
        .collect()
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    parameters: &'a serde_json::Value,
    /// The Responses API checks schemas strictly unless told otherwise, which most hand-written
    /// schemas fail; chat completions do not, and a tool should mean the same on both.
    strict: bool,
}

/// `"auto"`, `"none"`, `"required"` or `{"type":"function","name":…}`.
#[derive(Serialize)]
#[serde(untagged)]
enum WireToolChoice<'a> {
    Mode(&'static str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        name: &'a str,
    },
}

#[derive(Serialize)]
struct WireReasoning {
    effort: ReasoningEffort,
    /// Without it the API streams no reasoning text at all.
    summary: &'static str,
}

#[derive(Serialize)]
struct WireText<'a> {
    format: WireFormat<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireFormat<'a> {
    JsonObject,
    JsonSchema(&'a JsonSchema),
}

/// `request` on the wire, with `default_model` when it names none.
///
/// Fails for stop sequences, which the API does not take.
pub(super) fn request_body<'a>(
    request: &'a ChatRequest,
    default_model: &'a str,
    store: bool,
) -> Result<WireRequest<'a>> {
    if !request.stop.is_empty() {
        return Err(Error::invalid(
            "request",
            "the OpenAI Responses API has no stop sequences",
        ));
    }
    let mut input = Vec::with_capacity(request.messages.len());
    for m in &request.messages {
        match m.role {
            Role::Tool => input.push(Item::FunctionCallOutput {
                call_id: m.tool_call_id.as_deref().unwrap_or_default(),
                output: &m.content,
            }),
            role => {
                // A message of tool calls only has no text to send.
                if !m.content.is_empty() || m.tool_calls.is_empty() {
                    input.push(Item::Message {
                        role: role.as_str(),
                        content: match m.rich_parts() {
                            Some(parts) => ItemContent::Parts(input_parts(role, parts)),
                            None => ItemContent::Text(&m.content),
                        },
                    });
                }
                input.extend(m.tool_calls.iter().map(|call| Item::FunctionCall {
                    call_id: &call.id,
                    name: &call.name,
                    arguments: &call.arguments,
                }));
            }
        }
    }
    Ok(WireRequest {
        model: request.model.as_deref().unwrap_or(default_model),
        input,
        stream: true,
        store,
        temperature: request.temperature,
        top_p: request.top_p,
        max_output_tokens: request.max_tokens,
        tools: request
            .tools
            .iter()
            .map(|t| WireTool {
                kind: "function",
                name: &t.name,
                description: t.description.as_deref(),
                parameters: &t.parameters,
                strict: false,
            })
            .collect(),
        tool_choice: request.tool_choice.as_ref().map(|choice| match choice {
            ToolChoice::Auto => WireToolChoice::Mode("auto"),
            ToolChoice::None => WireToolChoice::Mode("none"),
            ToolChoice::Required => WireToolChoice::Mode("required"),
            ToolChoice::Tool { name } => WireToolChoice::Function {
                kind: "function",
                name,
            },
        }),
        reasoning: request.reasoning_effort.map(|effort| WireReasoning {
            effort,
            summary: "auto",
        }),
        text: request.response_format.as_ref().map(|format| WireText {
            format: match format {
                ResponseFormat::JsonObject => WireFormat::JsonObject,
                ResponseFormat::JsonSchema(schema) => WireFormat::JsonSchema(schema),
            },
        }),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::provider::tests::tool_round;

    #[test]
    fn request_body_shape() {
        let mut request = tool_round("", "call_1", "{}", Some("Current time"))
            .with_max_tokens(99)
            .with_reasoning_effort(ReasoningEffort::Low)
            .with_tool_choice(ToolChoice::tool("get_time"))
            .with_response_format(
                JsonSchema::new("t", json!({"type": "object"})).with_strict(true),
            );
        request.stop.clear();
        let body = serde_json::to_value(request_body(&request, "m", false).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "m",
                "stream": true,
                "store": false,
                "max_output_tokens": 99,
                "input": [
                    {"type": "message", "role": "system", "content": "Be brief."},
                    {"type": "message", "role": "user", "content": "Time?"},
                    {"type": "function_call", "call_id": "call_1", "name": "get_time",
                     "arguments": "{}"},
                    {"type": "function_call_output", "call_id": "call_1", "output": "12:00"},
                ],
                "tools": [{"type": "function", "name": "get_time", "description": "Current time",
                           "parameters": {"type": "object"}, "strict": false}],
                "tool_choice": {"type": "function", "name": "get_time"},
                "reasoning": {"effort": "low", "summary": "auto"},
                "text": {"format": {"type": "json_schema", "name": "t",
                                    "schema": {"type": "object"}, "strict": true}},
            })
        );
    }

    #[test]
    fn image_parts_on_the_wire() {
        let request = ChatRequest::new(vec![crate::RequestMessage::with_parts(
            Role::User,
            [
                ContentPart::text("What is this?"),
                ContentPart::image_url("https://example.com/a.png"),
                ContentPart::image_base64("image/webp", "UklGRg=="),
            ],
        )]);
        let body = serde_json::to_value(request_body(&request, "m", false).unwrap()).unwrap();
        assert_eq!(
            body["input"],
            json!([{"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "https://example.com/a.png"},
                {"type": "input_image", "image_url": "data:image/webp;base64,UklGRg=="},
            ]}])
        );
    }

    #[test]
    fn stop_sequences_are_refused() {
        let request = tool_round("", "c", "{}", None);
        assert!(matches!(
            request_body(&request, "m", false),
            Err(Error::Invalid { .. })
        ));
    }
}
