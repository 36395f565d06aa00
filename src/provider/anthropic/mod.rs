//! [`AnthropicProvider`]: the Anthropic Messages API.
//!
//! The wire format is parsed by [`decode`], which is public so that recorded bodies can be
//! replayed through exactly the code the provider runs.

use std::{collections::VecDeque, fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::Stream;
use reqwest::{
    Url,
    header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue},
};
use serde::{Deserialize, Serialize};
use sse_stream::Sse;

use super::{
    ChatRequest, DeltaStream, LlmProvider,
    http::{self, EventParser, Step, Str, non_empty},
};
use crate::{Delta, FinishReason, Result, Role, Usage, delta::ToolCallDelta};

/// The default base URL (`/v1/messages` is appended).
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The model used when neither the request, the builder nor `CHATSTREAM_MODEL` names one.
pub const DEFAULT_MODEL: &str = "claude-sonnet-4-5";
/// The token limit sent when the request sets none (the API requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// The API version sent as `anthropic-version`.
pub const API_VERSION: &str = "2023-06-01";

/// An Anthropic Messages API provider.
///
/// A cheap-clone handle: clones share one HTTP client and its connection pool.
///
/// System messages are collected into the request's `system` prompt, consecutive messages of
/// one role are merged, tool calls become `tool_use` blocks and tool results `tool_result`
/// blocks. A conversation that ends with an assistant message is sent as is, so the model
/// continues that message (what mid-stream recovery relies on).
///
/// ```no_run
/// use chatstream::{Accumulator, ChatRequest, LlmProvider, provider::AnthropicProvider};
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
/// let provider = AnthropicProvider::from_env()?; // ANTHROPIC_API_KEY
/// let mut stream = provider.stream(ChatRequest::user("Say hello"));
/// let mut reply = Accumulator::new();
/// while let Some(delta) = stream.next().await {
///     reply.push(&delta?);
/// }
/// println!("{}", reply.text());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AnthropicProvider {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    client: reqwest::Client,
    url: Url,
    model: String,
    max_tokens: u32,
    headers: HeaderMap,
    has_key: bool,
}

impl fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("name", &self.inner.name)
            .field("url", &self.inner.url.as_str())
            .field("model", &self.inner.model)
            .field("max_tokens", &self.inner.max_tokens)
            .field(
                "api_key",
                &if self.inner.has_key {
                    "<redacted>"
                } else {
                    "<none>"
                },
            )
            .field("headers", &http::HeaderNames(&self.inner.headers))
            .finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    /// A builder with the defaults: Anthropic's base URL, [`DEFAULT_MODEL`],
    /// [`DEFAULT_MAX_TOKENS`], no key.
    pub fn builder() -> AnthropicProviderBuilder {
        AnthropicProviderBuilder::default()
    }

    /// A provider configured from the environment: `ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL`
    /// (default [`DEFAULT_BASE_URL`]) and `CHATSTREAM_MODEL` (default [`DEFAULT_MODEL`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) when neither `ANTHROPIC_API_KEY` nor
    /// `ANTHROPIC_BASE_URL` (a proxy that adds the key) is set, or when a value is invalid.
    pub fn from_env() -> Result<Self> {
        let key = http::env("ANTHROPIC_API_KEY");
        let base = http::env("ANTHROPIC_BASE_URL");
        if key.is_none() && base.is_none() {
            return Err(crate::Error::Config("ANTHROPIC_API_KEY is not set".into()));
        }
        let mut builder = Self::builder();
        if let Some(key) = key {
            builder = builder.api_key(key);
        }
        if let Some(base) = base {
            builder = builder.base_url(base);
        }
        if let Some(model) = http::env("CHATSTREAM_MODEL") {
            builder = builder.model(model);
        }
        builder.build()
    }

    /// The URL requests go to.
    pub fn url(&self) -> &str {
        self.inner.url.as_str()
    }
}

/// Builds an [`AnthropicProvider`]; see [`AnthropicProvider::builder`].
#[derive(Default)]
pub struct AnthropicProviderBuilder {
    name: Option<String>,
    api_key: Option<String>,
    base_url: Option<String>,
    model: Option<String>,
    max_tokens: Option<u32>,
    headers: Vec<(String, String)>,
    connect_timeout: Option<Duration>,
    client: Option<reqwest::Client>,
}

impl fmt::Debug for AnthropicProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicProviderBuilder")
            .field("name", &self.name)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("max_tokens", &self.max_tokens)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl AnthropicProviderBuilder {
    /// The API key, sent as `x-api-key`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The base URL, with or without a trailing slash; `/v1/messages` is appended to its path
    /// and its query is kept.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The model used when a request names none.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The token limit used when a request sets none (the API requires one).
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// The provider's name in logs and errors (default `anthropic`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// An extra header sent with every request (`anthropic-beta`, a gateway's token, …). Its
    /// value is never shown in `Debug` output.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// How long to wait for a connection. There is deliberately no total request timeout: it
    /// would cut long generations (use the resilience wrappers' idle timeout instead).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Uses this HTTP client instead of a new one; [`connect_timeout`](Self::connect_timeout)
    /// is then ignored.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Builds the provider.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) for an invalid base URL, header or key.
    pub fn build(self) -> Result<AnthropicProvider> {
        let url = http::endpoint(
            self.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL),
            "/v1/messages",
        )?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
        let has_key = self.api_key.is_some();
        if let Some(key) = &self.api_key {
            headers.insert("x-api-key", http::secret_header(key)?);
        }
        for (name, value) in &self.headers {
            http::add_header(&mut headers, name, value)?;
        }
        let client = match self.client {
            Some(client) => client,
            None => http::client(self.connect_timeout)?,
        };
        Ok(AnthropicProvider {
            inner: Arc::new(Inner {
                name: self.name.unwrap_or_else(|| "anthropic".to_owned()).into(),
                client,
                url,
                model: self.model.unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
                max_tokens: self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                headers,
                has_key,
            }),
        })
    }
}

impl LlmProvider for AnthropicProvider {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn default_model(&self) -> &str {
        &self.inner.model
    }

    fn stream(&self, request: ChatRequest) -> DeltaStream {
        let inner = &self.inner;
        let body = request_body(&request, &inner.model, inner.max_tokens);
        let builder = inner
            .client
            .post(inner.url.clone())
            .headers(inner.headers.clone());
        http::stream_request(
            inner.client.clone(),
            builder,
            body,
            Parser::new(inner.name.clone()),
        )
    }
}

// ---- request -------------------------------------------------------------------------------

#[derive(Serialize)]
struct WireRequest<'a> {
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
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
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

#[derive(Serialize)]
struct WireTool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: &'a serde_json::Value,
}

fn request_body(request: &ChatRequest, default_model: &str, max_tokens: u32) -> Result<Vec<u8>> {
    let mut system = Vec::new();
    let mut messages: Vec<WireMessage<'_>> = Vec::new();
    for m in &request.messages {
        let (role, blocks) = match m.role {
            Role::System => {
                system.push(m.content.as_str());
                continue;
            }
            Role::User => ("user", vec![Block::Text { text: &m.content }]),
            Role::Assistant => {
                let mut blocks = Vec::with_capacity(1 + m.tool_calls.len());
                // The API rejects empty text blocks; a message of tool calls only has none.
                if !m.content.is_empty() || m.tool_calls.is_empty() {
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
    let body = WireRequest {
        model: request.model.as_deref().unwrap_or(default_model),
        max_tokens: request.max_tokens.unwrap_or(max_tokens),
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
    };
    serde_json::to_vec(&body).map_err(|e| crate::Error::invalid("request", e.to_string()))
}

// ---- response ------------------------------------------------------------------------------

/// Decodes an Anthropic Messages SSE body into deltas: exactly what [`AnthropicProvider`] runs
/// on the HTTP response.
///
/// Handles `message_start` (input tokens), `content_block_start` (a `tool_use` block's id and
/// name), `content_block_delta` (`text_delta`, `thinking_delta` as reasoning, `input_json_delta`
/// as tool-call arguments; `signature_delta` is skipped), `message_delta` (the stop reason as a
/// [`Delta::Finish`], then one [`Delta::Usage`]), `message_stop`, `ping` and `error` events;
/// unknown events are ignored. Tool calls are numbered 0, 1, … among the `tool_use` blocks,
/// whatever their content block index. A body that ends before the reply finished is
/// [`Error::Truncated`](crate::Error::Truncated).
///
/// ```
/// use chatstream::{Accumulator, provider::anthropic};
/// use futures::StreamExt;
///
/// # futures::executor::block_on(async {
/// let body = "event: content_block_delta\n\
///             data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
///             event: message_delta\n\
///             data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1}}\n\n";
/// let bytes = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(body))]);
/// let mut reply = Accumulator::new();
/// let mut deltas = anthropic::decode(bytes);
/// while let Some(delta) = deltas.next().await {
///     reply.push(&delta.unwrap());
/// }
/// assert_eq!(reply.text(), "Hi");
/// # });
/// ```
pub fn decode<S, E>(bytes: S) -> DeltaStream
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    http::decode_with(bytes, Parser::new("anthropic".into()))
}

/// One event's payload, all event types in one flat struct: serde's tagged enums buffer their
/// content, which would defeat borrowing. An `error` event's object is parsed again on its rare
/// path, which keeps this struct small.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    message: Option<MessageStart>,
    /// Boxed: it comes once per block, and a small struct keeps the hot path fast.
    #[serde(borrow, default)]
    content_block: Option<Box<ContentBlock<'a>>>,
    #[serde(borrow, default)]
    delta: Option<Box<EventDelta<'a>>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct MessageStart {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ContentBlock<'a> {
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    thinking: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    thinking: Option<Str<'a>>,
    #[serde(borrow, default)]
    partial_json: Option<Str<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Str<'a>>,
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        // The context window ran out: the same as hitting the token limit for the caller.
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

struct Parser {
    provider: Arc<str>,
    input_tokens: u64,
    output_tokens: Option<u64>,
    /// The tool-call index of each content block that is a `tool_use` block.
    tool_blocks: Vec<(u32, u32)>,
    finished: bool,
}

impl Parser {
    fn new(provider: Arc<str>) -> Self {
        Parser {
            provider,
            input_tokens: 0,
            output_tokens: None,
            tool_blocks: Vec::new(),
            finished: false,
        }
    }

    fn tool_index(&self, block: u32) -> Option<u32> {
        self.tool_blocks
            .iter()
            .rev()
            .find(|(b, _)| *b == block)
            .map(|(_, tool)| *tool)
    }

    fn finish(&mut self, reason: FinishReason, out: &mut VecDeque<Delta>) {
        out.push_back(Delta::finish(reason));
        if let Some(output_tokens) = self.output_tokens {
            out.push_back(Delta::Usage(Usage {
                input_tokens: self.input_tokens,
                output_tokens,
            }));
        }
        self.finished = true;
    }
}

impl EventParser for Parser {
    fn provider(&self) -> &str {
        &self.provider
    }

    fn finished(&self) -> bool {
        self.finished
    }

    fn event(&mut self, event: &Sse, out: &mut VecDeque<Delta>) -> Result<Step> {
        let Some(data) = event.data.as_deref() else {
            return Ok(Step::Continue);
        };
        let data = data.trim_ascii();
        if data.is_empty() {
            return Ok(Step::Continue);
        }
        let event: Event<'_> =
            serde_json::from_str(data).map_err(|e| http::bad_json(&self.provider, &e, data))?;
        match event.kind.as_str() {
            "content_block_delta" if !self.finished => {
                let Some(delta) = event.delta else {
                    return Ok(Step::Continue);
                };
                match delta.kind.as_ref().map(Str::as_str) {
                    Some("text_delta") => {
                        if let Some(text) = non_empty(delta.text) {
                            out.push_back(Delta::Text { text });
                        }
                    }
                    Some("thinking_delta") => {
                        if let Some(text) = non_empty(delta.thinking) {
                            out.push_back(Delta::Reasoning { text });
                        }
                    }
                    Some("input_json_delta") => {
                        let tool = event.index.and_then(|b| self.tool_index(b));
                        if let (Some(index), Some(arguments)) =
                            (tool, non_empty(delta.partial_json))
                        {
                            out.push_back(Delta::ToolCall(ToolCallDelta {
                                index,
                                id: None,
                                name: None,
                                arguments,
                            }));
                        }
                    }
                    // `signature_delta` (a thinking block's signature) and future kinds.
                    _ => {}
                }
            }
            "content_block_start" if !self.finished => {
                let Some(block) = event.content_block else {
                    return Ok(Step::Continue);
                };
                match block.kind.as_str() {
                    "tool_use" => {
                        let index = self.tool_blocks.len() as u32;
                        self.tool_blocks.push((event.index.unwrap_or(index), index));
                        out.push_back(Delta::ToolCall(ToolCallDelta {
                            index,
                            id: non_empty(block.id),
                            name: non_empty(block.name),
                            arguments: String::new(),
                        }));
                    }
                    "text" => {
                        if let Some(text) = non_empty(block.text) {
                            out.push_back(Delta::Text { text });
                        }
                    }
                    "thinking" => {
                        if let Some(text) = non_empty(block.thinking) {
                            out.push_back(Delta::Reasoning { text });
                        }
                    }
                    _ => {}
                }
            }
            "message_start" => {
                if let Some(usage) = event.message.and_then(|m| m.usage) {
                    self.input_tokens = usage.input_tokens.unwrap_or(0);
                }
            }
            "message_delta" if !self.finished => {
                if let Some(usage) = event.usage {
                    if let Some(input) = usage.input_tokens.filter(|t| *t > 0) {
                        self.input_tokens = input;
                    }
                    if usage.output_tokens.is_some() {
                        self.output_tokens = usage.output_tokens;
                    }
                }
                if let Some(reason) = event.delta.and_then(|d| d.stop_reason) {
                    self.finish(finish_reason(reason.as_str()), out);
                }
            }
            "message_stop" => {
                if !self.finished {
                    // Complete, but no stop reason was given.
                    self.finish(FinishReason::Other, out);
                }
                return Ok(Step::Done);
            }
            "error" => return Err(http::midstream_error(&self.provider, data)),
            // `ping`, `content_block_stop` and event types added later.
            _ => {}
        }
        Ok(Step::Continue)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{ToolCall, provider::RequestMessage};

    #[test]
    fn request_body_shape() {
        let mut assistant = RequestMessage::new(Role::Assistant, "Let me look.");
        assistant.tool_calls = vec![ToolCall {
            index: 0,
            id: "toolu_1".into(),
            name: "get_time".into(),
            arguments: "{\"tz\":\"UTC\"}".into(),
        }];
        let mut tool = RequestMessage::new(Role::Tool, "12:00");
        tool.tool_call_id = Some("toolu_1".into());
        let mut request = ChatRequest::new(vec![
            RequestMessage::new(Role::System, "Be brief."),
            RequestMessage::new(Role::User, "Time?"),
            RequestMessage::new(Role::User, "Please."),
            assistant,
            tool,
            RequestMessage::new(Role::System, "In UTC."),
            RequestMessage::new(Role::Assistant, "It is"),
        ]);
        request.stop = vec!["END".into()];
        request.tools = vec![super::super::ToolSpec {
            name: "get_time".into(),
            description: None,
            parameters: serde_json::json!({"type": "object"}),
        }];
        let body: serde_json::Value =
            serde_json::from_slice(&request_body(&request, "claude", 512).unwrap()).unwrap();
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
    fn debug_hides_the_key() {
        let p = AnthropicProvider::builder()
            .api_key("sk-ant-secret")
            .build()
            .unwrap();
        let shown = format!("{p:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(p.url(), "https://api.anthropic.com/v1/messages");
        assert_eq!(p.default_model(), DEFAULT_MODEL);
    }
}
