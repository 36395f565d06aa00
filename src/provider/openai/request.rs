//! The chat-completions request body: a [`ChatRequest`] encoded for the wire.

use serde::Serialize;

use crate::{
    ContentPart, Role,
    provider::{
        ChatRequest, JsonSchema, ReasoningEffort, RequestMessage, ResponseFormat, TokenLimitField,
        ToolChoice, ToolSpec,
    },
};

#[derive(Serialize)]
pub(super) struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<WireResponseFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<ReasoningEffort>,
}

/// `"auto"`, `"none"`, `"required"` or `{"type":"function","function":{"name":…}}`.
#[derive(Serialize)]
#[serde(untagged)]
enum WireToolChoice<'a> {
    Mode(&'static str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: WireName<'a>,
    },
}

#[derive(Serialize)]
struct WireName<'a> {
    name: &'a str,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireResponseFormat<'a> {
    JsonObject,
    JsonSchema { json_schema: &'a JsonSchema },
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    /// `null` for an assistant message that only calls tools.
    content: Option<WireContent<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

/// A string, or an array of parts for a message with an image.
#[derive(Serialize)]
#[serde(untagged)]
enum WireContent<'a> {
    Text(&'a str),
    Parts(Vec<WirePart<'a>>),
}

/// `{"type":"text","text":…}` or `{"type":"image_url","image_url":{"url":…}}`; an inline image
/// is a `data:` URL.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WirePart<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: WireUrl<'a> },
}

#[derive(Serialize)]
struct WireUrl<'a> {
    url: std::borrow::Cow<'a, str>,
}

fn wire_part(part: &ContentPart) -> Option<WirePart<'_>> {
    match part {
        ContentPart::Text { text } => Some(WirePart::Text { text }),
        image => image.to_url().map(|url| WirePart::ImageUrl {
            image_url: WireUrl { url },
        }),
    }
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunctionCall<'a>,
}

#[derive(Serialize)]
struct WireFunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    parameters: &'a serde_json::Value,
}

fn wire_message(m: &RequestMessage) -> WireMessage<'_> {
    let calls_only = m.role == Role::Assistant && !m.tool_calls.is_empty() && m.content.is_empty();
    WireMessage {
        role: m.role.as_str(),
        content: (!calls_only).then(|| match m.rich_parts() {
            Some(parts) => WireContent::Parts(parts.iter().filter_map(wire_part).collect()),
            None => WireContent::Text(&m.content),
        }),
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| WireToolCall {
                id: &c.id,
                kind: "function",
                function: WireFunctionCall {
                    name: &c.name,
                    arguments: &c.arguments,
                },
            })
            .collect(),
        tool_call_id: m.tool_call_id.as_deref(),
    }
}

fn wire_tool(t: &ToolSpec) -> WireTool<'_> {
    WireTool {
        kind: "function",
        function: WireFunction {
            name: &t.name,
            description: t.description.as_deref(),
            parameters: &t.parameters,
        },
    }
}

fn wire_tool_choice(choice: &ToolChoice) -> WireToolChoice<'_> {
    match choice {
        ToolChoice::Auto => WireToolChoice::Mode("auto"),
        ToolChoice::None => WireToolChoice::Mode("none"),
        ToolChoice::Required => WireToolChoice::Mode("required"),
        ToolChoice::Tool { name } => WireToolChoice::Function {
            kind: "function",
            function: WireName { name },
        },
    }
}

fn wire_response_format(format: &ResponseFormat) -> WireResponseFormat<'_> {
    match format {
        ResponseFormat::JsonObject => WireResponseFormat::JsonObject,
        ResponseFormat::JsonSchema(json_schema) => WireResponseFormat::JsonSchema { json_schema },
    }
}

/// `request` on the wire, with `default_model` when it names none and the token limit in the
/// request's field, else in `token_limit`.
pub(super) fn request_body<'a>(
    request: &'a ChatRequest,
    default_model: &'a str,
    token_limit: TokenLimitField,
) -> WireRequest<'a> {
    let completion_field =
        request.token_limit_field.unwrap_or(token_limit) == TokenLimitField::MaxCompletionTokens;
    WireRequest {
        model: request.model.as_deref().unwrap_or(default_model),
        messages: request.messages.iter().map(wire_message).collect(),
        stream: true,
        stream_options: StreamOptions {
            include_usage: true,
        },
        temperature: request.temperature,
        top_p: request.top_p,
        max_tokens: request.max_tokens.filter(|_| !completion_field),
        max_completion_tokens: request.max_tokens.filter(|_| completion_field),
        stop: &request.stop,
        tools: request.tools.iter().map(wire_tool).collect(),
        tool_choice: request.tool_choice.as_ref().map(wire_tool_choice),
        response_format: request.response_format.as_ref().map(wire_response_format),
        reasoning_effort: request.reasoning_effort,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::provider::tests::tool_round;

    #[test]
    fn request_body_shape() {
        let request = tool_round("", "call_1", "{}", Some("Current time")).with_temperature(0.5);
        let body: serde_json::Value =
            serde_json::to_value(request_body(&request, "m", TokenLimitField::MaxTokens)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "model": "m",
                "stream": true,
                "stream_options": {"include_usage": true},
                "temperature": 0.5,
                "stop": ["END"],
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Time?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "get_time", "arguments": "{}"}}
                    ]},
                    {"role": "tool", "content": "12:00", "tool_call_id": "call_1"},
                ],
                "tools": [{"type": "function", "function": {
                    "name": "get_time", "description": "Current time",
                    "parameters": {"type": "object"}}}],
            })
        );
    }

    #[test]
    fn image_parts_on_the_wire() {
        let request = ChatRequest::new(vec![RequestMessage::with_parts(
            Role::User,
            [
                ContentPart::text("What is this?"),
                ContentPart::image_url("https://example.com/a.png"),
                ContentPart::image_base64("image/png", "iVBORw0KGgo="),
            ],
        )]);
        let body =
            serde_json::to_value(request_body(&request, "m", TokenLimitField::MaxTokens)).unwrap();
        assert_eq!(
            body["messages"],
            serde_json::json!([{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ]}])
        );
    }

    #[test]
    fn options_on_the_wire() {
        let body = |request: &ChatRequest, limit| {
            serde_json::to_value(request_body(request, "m", limit)).unwrap()
        };
        let request = ChatRequest::user("hi")
            .with_max_tokens(9)
            .with_tool_choice(ToolChoice::tool("f"))
            .with_response_format(ResponseFormat::JsonObject)
            .with_reasoning_effort(ReasoningEffort::Minimal);
        let wire = body(&request, TokenLimitField::MaxCompletionTokens);
        assert_eq!(wire["max_completion_tokens"], 9);
        assert!(wire.get("max_tokens").is_none());
        assert_eq!(
            wire["tool_choice"],
            serde_json::json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(
            wire["response_format"],
            serde_json::json!({"type": "json_object"})
        );
        assert_eq!(wire["reasoning_effort"], "minimal");
        // The request's own field wins over the provider's.
        let mut request = request.with_tool_choice(ToolChoice::None);
        request.token_limit_field = Some(TokenLimitField::MaxTokens);
        let wire = body(&request, TokenLimitField::MaxCompletionTokens);
        assert_eq!(wire["max_tokens"], 9);
        assert!(wire.get("max_completion_tokens").is_none());
        assert_eq!(wire["tool_choice"], "none");
    }
}
