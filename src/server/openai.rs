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

use std::convert::Infallible;

use crate::{
    Accumulator, ChatRequest, ContentPart, Delta, DeltaStream, FinishReason, RequestMessage, Role,
    ToolCall, ToolSpec, Usage,
    provider::{JsonSchema, ResponseFormat, TokenLimitField, ToolChoice},
};
use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response, sse::Event},
};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, attachments, extract::ApiJson, sse::sse_response};

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
        let chunks = stream_chunks(deltas, id, model, created, include_usage);
        return Ok(sse_response(chunks, state.options.keep_alive));
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

struct ChunkState {
    deltas: DeltaStream,
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    sent_role: bool,
    usage: Option<Usage>,
    done: bool,
}

impl ChunkState {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Event {
        let body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        Event::default().data(body.to_string())
    }
}

/// Deltas as `chat.completion.chunk` events, then the usage chunk (when asked for) and `[DONE]`.
fn stream_chunks(
    deltas: DeltaStream,
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let state = ChunkState {
        deltas,
        id,
        model,
        created,
        include_usage,
        sent_role: false,
        usage: None,
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let mut events = Vec::new();
        loop {
            match s.deltas.next().await {
                Some(Ok(delta)) => {
                    let mut d = match delta {
                        Delta::Text { text } => json!({"content": text}),
                        Delta::Reasoning { text } => json!({"reasoning_content": text}),
                        Delta::ToolCall(c) => {
                            let mut call = json!({"index": c.index, "function": {"arguments": c.arguments}});
                            if let Some(id) = c.id {
                                call["id"] = json!(id);
                                call["type"] = json!("function");
                            }
                            if let Some(name) = c.name {
                                call["function"]["name"] = json!(name);
                            }
                            json!({"tool_calls": [call]})
                        }
                        Delta::Usage(u) => {
                            s.usage = Some(u);
                            continue;
                        }
                        Delta::Finish { reason } => {
                            let e = s.chunk(json!({}), finish_name(Some(reason)));
                            events.push(e);
                            break;
                        }
                        _ => continue,
                    };
                    if !s.sent_role {
                        d["role"] = json!("assistant");
                        s.sent_role = true;
                    }
                    events.push(s.chunk(d, None));
                    break;
                }
                Some(Err(e)) => {
                    let body = json!({"error": {"message": e.to_string(), "type": e.code(), "code": e.code()}});
                    events.push(Event::default().data(body.to_string()));
                    s.done = true;
                    break;
                }
                None => {
                    if s.include_usage {
                        let body = json!({
                            "id": s.id, "object": "chat.completion.chunk", "created": s.created,
                            "model": s.model, "choices": [], "usage": usage_json(s.usage.unwrap_or_default()),
                        });
                        events.push(Event::default().data(body.to_string()));
                    }
                    events.push(Event::default().data("[DONE]"));
                    s.done = true;
                    break;
                }
            }
        }
        Some((futures::stream::iter(events.into_iter().map(Ok)), s))
    })
    .flatten()
}
