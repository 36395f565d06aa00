//! `POST /v1/chat/completions` (streaming and not) and `GET /v1/models`, in OpenAI's shapes, so
//! any OpenAI client library can use this server as its base URL.
//!
//! A request's fields are read into a [`ChatRequest`] where it models them (messages, sampling,
//! the token limit under the name the client used, stop, tools, `tool_choice`,
//! `response_format`, `reasoning_effort`); every other field (`seed`, `user`, `logit_bias`,
//! `metadata`, …), and a value of a modelled field in a shape it does not model, is forwarded
//! upstream unchanged through [`ChatRequest::extra`].
//!
//! A message's content parts are read too: `text` parts, and `image_url` parts, checked like the
//! attachments of `POST /api/messages` (see `attachments`) and passed upstream as image parts
//! in the upstream API's shape. A part of any other type is refused (422
//! `unsupported_content`), never dropped.

use crate::{
    Accumulator, ChatRequest, ContentPart, Delta, DeltaStream, FinishReason, RequestMessage, Role,
    ToolCall, ToolSpec, Usage,
    provider::{JsonSchema, ResponseFormat, TokenLimitField, ToolChoice},
};
use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use bytes::BytesMut;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiError, AppState, attachments, extract::ApiJson, sse};

#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    tools: Vec<InTool>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    reasoning_effort: Option<Value>,
    /// Every other field, forwarded upstream as it came.
    #[serde(flatten)]
    extra: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: InRole,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    tool_calls: Vec<InToolCall>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

/// A message's role; `developer` is what OpenAI's reasoning models call `system`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum InRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

impl From<InRole> for Role {
    fn from(role: InRole) -> Self {
        match role {
            InRole::System | InRole::Developer => Role::System,
            InRole::User => Role::User,
            InRole::Assistant => Role::Assistant,
            InRole::Tool => Role::Tool,
        }
    }
}

/// OpenAI's `tool_choice`: a mode, or `{"type":"function","function":{"name":…}}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum InToolChoice {
    Mode(InToolMode),
    Function {
        #[serde(rename = "type")]
        _kind: FunctionKind,
        function: InName,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum InToolMode {
    Auto,
    None,
    Required,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FunctionKind {
    Function,
}

#[derive(Debug, Deserialize)]
struct InName {
    name: String,
}

/// OpenAI's `response_format`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum InResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchema },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// A part of a message's content: `{"type":"text","text"}` or
/// `{"type":"image_url","image_url":{"url","detail"?}}` (or the URL as a string).
#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    image_url: Option<InImageUrl>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum InImageUrl {
    Url(String),
    Object { url: String },
}

/// A message's content as the library keeps it: its text, and its parts when it has an image
/// (checked like an attachment of `POST /api/messages`). A part of any other type is refused: it
/// would otherwise be dropped without a word.
fn content(
    content: Option<Content>,
    max_image_bytes: usize,
) -> Result<(String, Vec<ContentPart>), ApiError> {
    let parts = match content {
        None => return Ok((String::new(), Vec::new())),
        Some(Content::Text(text)) => return Ok((text, Vec::new())),
        Some(Content::Parts(parts)) => parts,
    };
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.into_iter().enumerate() {
        let what = format!("content part {}", i + 1);
        match (part.kind.as_deref(), part.text, part.image_url) {
            (Some("text") | None, Some(text), _) => out.push(ContentPart::text(text)),
            (
                Some("image_url") | None,
                None,
                Some(InImageUrl::Url(url) | InImageUrl::Object { url }),
            ) => {
                out.push(attachments::image_part(url, max_image_bytes, &what)?);
            }
            (kind, _, _) => {
                return Err(ApiError::unprocessable(
                    "unsupported_content",
                    format!(
                        "{what}: {} is not supported: use text and image_url parts",
                        kind.map_or_else(
                            || "a part without a type".to_owned(),
                            |k| format!("type {k:?}")
                        )
                    ),
                ));
            }
        }
    }
    let text = crate::message::text_of(&out);
    Ok((text, crate::message::kept_parts(out)))
}

#[derive(Debug, Deserialize)]
struct InToolCall {
    id: String,
    function: InFunctionCall,
}

#[derive(Debug, Deserialize)]
struct InFunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Debug, Deserialize)]
struct InTool {
    function: InFunction,
}

#[derive(Debug, Deserialize)]
struct InFunction {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "empty_object")]
    parameters: Value,
}

fn empty_object() -> Value {
    json!({"type": "object", "properties": {}})
}

/// `value` read as a `T`, or else put in `extra` under `key` to be forwarded as it came.
fn modelled<T: serde::de::DeserializeOwned>(
    key: &str,
    value: Option<Value>,
    extra: &mut serde_json::Map<String, Value>,
) -> Option<T> {
    let value = value?;
    match T::deserialize(&value) {
        Ok(modelled) => Some(modelled),
        Err(_) => {
            extra.insert(key.to_owned(), value);
            None
        }
    }
}

impl CompletionRequest {
    fn into_chat_request(
        mut self,
        max_image_bytes: usize,
    ) -> Result<(ChatRequest, bool, bool), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad_request(
                "empty_messages",
                "messages must not be empty",
            ));
        }
        let messages = self
            .messages
            .into_iter()
            .map(|m| {
                let (content, parts) = content(m.content, max_image_bytes)?;
                Ok(RequestMessage {
                    role: m.role.into(),
                    content,
                    parts,
                    tool_calls: m
                        .tool_calls
                        .into_iter()
                        .enumerate()
                        .map(|(i, c)| ToolCall {
                            index: i as u32,
                            id: c.id,
                            name: c.function.name,
                            arguments: c.function.arguments,
                        })
                        .collect(),
                    tool_call_id: m.tool_call_id,
                    thinking: Vec::new(),
                })
            })
            .collect::<Result<_, ApiError>>()?;
        let include_usage = self.stream_options.is_some_and(|o| o.include_usage);
        let extra = &mut self.extra;
        let tool_choice = modelled("tool_choice", self.tool_choice, extra).map(|c| match c {
            InToolChoice::Mode(InToolMode::Auto) => ToolChoice::Auto,
            InToolChoice::Mode(InToolMode::None) => ToolChoice::None,
            InToolChoice::Mode(InToolMode::Required) => ToolChoice::Required,
            InToolChoice::Function { function, .. } => ToolChoice::tool(function.name),
        });
        let response_format =
            modelled("response_format", self.response_format, extra).and_then(|f| match f {
                // Text is what a reply is without a format.
                InResponseFormat::Text => None,
                InResponseFormat::JsonObject => Some(ResponseFormat::JsonObject),
                InResponseFormat::JsonSchema { json_schema } => {
                    Some(ResponseFormat::JsonSchema(json_schema))
                }
            });
        let reasoning_effort = modelled("reasoning_effort", self.reasoning_effort, extra);
        // The limit goes upstream under the name the client gave it.
        let (max_tokens, token_limit_field) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(n), _) => (Some(n), Some(TokenLimitField::MaxCompletionTokens)),
            (None, Some(n)) => (Some(n), Some(TokenLimitField::MaxTokens)),
            (None, None) => (None, None),
        };
        let request = ChatRequest {
            model: self.model,
            messages,
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens,
            token_limit_field,
            tool_choice,
            response_format,
            reasoning_effort,
            thinking_budget: None,
            extra: self.extra,
            stop: match self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s],
                Some(Stop::Many(v)) => v,
            },
            tools: self
                .tools
                .into_iter()
                .map(|t| ToolSpec {
                    name: t.function.name,
                    description: t.function.description,
                    parameters: t.function.parameters,
                })
                .collect(),
        };
        Ok((request, self.stream, include_usage))
    }
}

pub(crate) async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": state.service.model(), "object": "model", "created": 0, "owned_by": "chatstream"}],
    }))
}

pub(crate) async fn completions(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let (request, stream, include_usage) = body.into_chat_request(state.options.max_image_bytes)?;
    let model = request
        .model
        .clone()
        .unwrap_or_else(|| state.service.model().to_owned());
    let id = format!("chatcmpl-{}", uuid_simple());
    let created = chrono::Utc::now().timestamp();
    let deltas = state.service.provider().stream(request);
    if stream {
        let encoder = ChunkEncoder::new(&id, &model, created, include_usage);
        return Ok(stream_chunks(deltas, encoder, state.options.keep_alive));
    }
    let mut acc = Accumulator::new();
    let mut deltas = deltas;
    while let Some(delta) = deltas.next().await {
        acc.push(&delta?);
    }
    let usage = acc.usage().unwrap_or_default();
    let mut message = json!({"role": "assistant", "content": acc.text()});
    if !acc.reasoning().is_empty() {
        message["reasoning_content"] = json!(acc.reasoning());
    }
    if !acc.tool_calls().is_empty() {
        message["tool_calls"] = acc
            .tool_calls()
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
    }
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_name(acc.finish_reason())}],
        "usage": usage_json(usage),
    }))
    .into_response())
}

fn uuid_simple() -> String {
    crate::MessageId::generate().as_uuid().simple().to_string()
}

fn finish_name(reason: Option<FinishReason>) -> Option<&'static str> {
    reason.map(|r| match r {
        FinishReason::Other => "stop",
        other => other.as_str(),
    })
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
    })
}

/// Writes the `chat.completion.chunk` events of a streamed completion straight from the deltas:
/// a chunk per text, reasoning or tool-call delta (the first with `"role":"assistant"`), one with
/// the finish reason, then the usage chunk (when asked for) and `[DONE]`; an error ends the
/// stream with an `{"error":…}` event instead.
///
/// Each chunk is serialized from borrowed structs in OpenAI's key order (`id`, `object`,
/// `created`, `model`, `choices`, `usage`), without building a `serde_json::Value` per chunk.
#[derive(Debug)]
struct ChunkEncoder {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    sent_role: bool,
    usage: Option<Usage>,
    done: bool,
}

/// One `chat.completion.chunk`.
#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: &'a [Choice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: ChunkDelta<'a>,
    finish_reason: Option<&'a str>,
}

#[derive(Default, Serialize)]
struct ChunkDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallOut<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    index: u32,
    function: FunctionOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    arguments: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl ChunkEncoder {
    fn new(id: &str, model: &str, created: i64, include_usage: bool) -> Self {
        ChunkEncoder {
            id: id.to_owned(),
            model: model.to_owned(),
            created,
            include_usage,
            sent_role: false,
            usage: None,
            done: false,
        }
    }

    /// Writes what `item` makes of the stream (`None`: the deltas ended).
    fn encode(&mut self, item: Option<Result<Delta, crate::Error>>, out: &mut BytesMut) {
        if self.done {
            return;
        }
        match item {
            Some(Ok(Delta::Text { text })) => self.delta(
                out,
                ChunkDelta {
                    content: Some(&text),
                    ..ChunkDelta::default()
                },
            ),
            Some(Ok(Delta::Reasoning { text })) => self.delta(
                out,
                ChunkDelta {
                    reasoning_content: Some(&text),
                    ..ChunkDelta::default()
                },
            ),
            Some(Ok(Delta::ToolCall(c))) => self.delta(
                out,
                ChunkDelta {
                    tool_calls: Some([ToolCallOut {
                        index: c.index,
                        function: FunctionOut {
                            arguments: &c.arguments,
                            name: c.name.as_deref(),
                        },
                        id: c.id.as_deref(),
                        kind: c.id.as_ref().map(|_| "function"),
                    }]),
                    ..ChunkDelta::default()
                },
            ),
            Some(Ok(Delta::Usage(u))) => self.usage = Some(u),
            Some(Ok(Delta::Finish { reason })) => self.write(
                out,
                &[Choice {
                    index: 0,
                    delta: ChunkDelta::default(),
                    finish_reason: finish_name(Some(reason)),
                }],
                None,
            ),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                self.done = true;
                let body = json!({"error": {"message": e.to_string(), "type": e.code(), "code": e.code()}});
                sse::data(out, body.to_string().as_bytes());
                sse::end(out);
            }
            None => {
                self.done = true;
                if self.include_usage {
                    let u = self.usage.unwrap_or_default();
                    let usage = UsageOut {
                        prompt_tokens: u.input_tokens,
                        completion_tokens: u.output_tokens,
                        total_tokens: u.input_tokens.saturating_add(u.output_tokens),
                    };
                    self.write(out, &[], Some(usage));
                }
                sse::data(out, b"[DONE]");
                sse::end(out);
            }
        }
    }

    /// A chunk carrying `delta` (the first with the role).
    fn delta(&mut self, out: &mut BytesMut, mut delta: ChunkDelta<'_>) {
        if !self.sent_role {
            self.sent_role = true;
            delta.role = Some("assistant");
        }
        let choice = Choice {
            index: 0,
            delta,
            finish_reason: None,
        };
        self.write(out, std::slice::from_ref(&choice), None);
    }

    /// One chunk event.
    fn write(&self, out: &mut BytesMut, choices: &[Choice<'_>], usage: Option<UsageOut>) {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        // Borrowed strings and numbers only: serializing them into memory cannot fail.
        let _ = sse::json_data(out, &chunk);
        sse::end(out);
    }
}

/// Deltas as `chat.completion.chunk` events, then the usage chunk (when asked for) and `[DONE]`;
/// what is ready at once leaves in one frame.
fn stream_chunks(
    deltas: DeltaStream,
    encoder: ChunkEncoder,
    keep_alive: std::time::Duration,
) -> Response {
    let mut encoder = encoder;
    // `None` marks the end of the deltas.
    let items = deltas
        .map(Some)
        .chain(futures::stream::once(futures::future::ready(None)));
    sse::batched_response(
        items,
        move |item, out| encoder.encode(item, out),
        keep_alive,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, ToolCallDelta};

    /// The chunks as they were encoded before they were written straight from the deltas:
    /// through a `serde_json::Value` each, the data of one event each.
    fn value_encoded(
        deltas: &[Result<Delta, Error>],
        id: &str,
        model: &str,
        created: i64,
        include_usage: bool,
    ) -> Vec<String> {
        let chunk = |delta: Value, finish: Option<&str>| {
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
            .to_string()
        };
        let (mut sent_role, mut usage, mut out) = (false, None, Vec::new());
        for delta in deltas {
            let mut d = match delta {
                Ok(Delta::Text { text }) => json!({"content": text}),
                Ok(Delta::Reasoning { text }) => json!({"reasoning_content": text}),
                Ok(Delta::ToolCall(c)) => {
                    let mut call =
                        json!({"index": c.index, "function": {"arguments": c.arguments}});
                    if let Some(id) = &c.id {
                        call["id"] = json!(id);
                        call["type"] = json!("function");
                    }
                    if let Some(name) = &c.name {
                        call["function"]["name"] = json!(name);
                    }
                    json!({"tool_calls": [call]})
                }
                Ok(Delta::Usage(u)) => {
                    usage = Some(*u);
                    continue;
                }
                Ok(Delta::Finish { reason }) => {
                    out.push(chunk(json!({}), finish_name(Some(*reason))));
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    let body = json!({"error": {"message": e.to_string(), "type": e.code(), "code": e.code()}});
                    out.push(body.to_string());
                    return out;
                }
            };
            if !sent_role {
                d["role"] = json!("assistant");
                sent_role = true;
            }
            out.push(chunk(d, None));
        }
        if include_usage {
            let body = json!({
                "id": id, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [], "usage": usage_json(usage.unwrap_or_default()),
            });
            out.push(body.to_string());
        }
        out.push("[DONE]".into());
        out
    }

    fn tool_call(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> Delta {
        Delta::ToolCall(ToolCallDelta {
            index,
            id: id.map(str::to_owned),
            name: name.map(str::to_owned),
            arguments: arguments.into(),
        })
    }

    /// Every kind of delta, with text that needs escaping.
    fn every_kind() -> Vec<Result<Delta, Error>> {
        vec![
            Ok(Delta::Reasoning {
                text: "Think \"twice\"\n".into(),
            }),
            Ok(Delta::text("Hello,\twörld ✓ \u{1}")),
            Ok(Delta::text(" again")),
            Ok(tool_call(0, Some("call_1"), Some("get_weather"), "")),
            Ok(tool_call(0, None, None, r#"{"city":"#)),
            Ok(tool_call(1, Some("call_2"), None, "{}")),
            Ok(tool_call(2, None, Some("lookup"), "[]")),
            Ok(Delta::Usage(Usage {
                input_tokens: 19,
                output_tokens: 7,
            })),
            Ok(Delta::Finish {
                reason: FinishReason::ToolCalls,
            }),
        ]
    }

    fn encoded(deltas: Vec<Result<Delta, Error>>, include_usage: bool, model: &str) -> Vec<String> {
        let mut encoder = ChunkEncoder::new("chatcmpl-1\"x", model, 1_763_700_000, include_usage);
        let mut out = BytesMut::new();
        for delta in deltas {
            encoder.encode(Some(delta), &mut out);
        }
        encoder.encode(None, &mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        text.split_terminator("\n\n")
            .map(|event| event.strip_prefix("data: ").unwrap().to_owned())
            .collect()
    }

    #[test]
    fn chunks_are_byte_for_byte_what_the_value_encoding_wrote() {
        // What the `Value` encoding wrote depends on serde_json's `preserve_order` (on in this
        // build, through bson): with it, keys in insertion order, which is OpenAI's order.
        assert_eq!(json!({"b": 1, "a": 2}).to_string(), r#"{"b":1,"a":2}"#);
        for include_usage in [false, true] {
            for model in ["gpt-4o-mini", "my \"model\"/ü"] {
                let expected = value_encoded(
                    &every_kind(),
                    "chatcmpl-1\"x",
                    model,
                    1_763_700_000,
                    include_usage,
                );
                assert_eq!(encoded(every_kind(), include_usage, model), expected);
            }
        }
        // The role goes on the first chunk, whichever kind it is; a finish alone has none.
        for first in every_kind().into_iter().map(Result::unwrap) {
            let deltas = || {
                vec![
                    Ok(first.clone()),
                    Ok(Delta::text("x")),
                    Ok(Delta::Finish {
                        reason: FinishReason::Stop,
                    }),
                ]
            };
            let expected = value_encoded(&deltas(), "chatcmpl-1\"x", "m", 1_763_700_000, true);
            assert_eq!(encoded(deltas(), true, "m"), expected);
        }
    }

    #[test]
    fn an_error_ends_the_chunks_as_the_value_encoding_did() {
        let deltas = || {
            vec![
                Ok(Delta::text("partial")),
                Err(Error::invalid("upstream", "it broke")),
                Ok(Delta::text("after the end")),
            ]
        };
        let expected = value_encoded(&deltas(), "chatcmpl-1\"x", "m", 1_763_700_000, true);
        assert_eq!(expected.len(), 2);
        assert_eq!(encoded(deltas(), true, "m"), expected);
    }
}
