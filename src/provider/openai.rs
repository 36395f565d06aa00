//! [`OpenAiProvider`]: OpenAI chat completions, and every server that speaks them.
//!
//! Works with OpenAI itself, Azure-style base URLs (their `api-version` query is kept; send the
//! key with `.header("api-key", key)`), Ollama, vLLM, llama.cpp server, LM Studio, Groq,
//! DeepSeek, OpenRouter and LiteLLM. The key is optional, for local servers that need none.
//!
//! The wire format is parsed by [`decode`], which is public so that recorded bodies can be
//! replayed through exactly the code the provider runs.

use std::{collections::VecDeque, fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::Stream;
use reqwest::{
    Url,
    header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue},
};
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};
use sse_stream::Sse;

use super::{
    ChatRequest, DeltaStream, LlmProvider, RequestMessage, ToolSpec,
    http::{self, EventParser, Step, Str, non_empty},
};
use crate::{Delta, FinishReason, Result, Role, Usage, delta::ToolCallDelta};

/// The default base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// The model used when neither the request, the builder nor `CHATSTREAM_MODEL` names one.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// An OpenAI-compatible chat-completions provider.
///
/// A cheap-clone handle: clones share one HTTP client and its connection pool.
///
/// ```no_run
/// use chatstream::{Accumulator, ChatRequest, LlmProvider, provider::OpenAiProvider};
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
/// // A local Ollama server; `OpenAiProvider::from_env()` reads OPENAI_API_KEY and friends.
/// let provider = OpenAiProvider::builder()
///     .base_url("http://localhost:11434/v1")
///     .model("llama3.2")
///     .build()?;
/// let mut stream = provider.stream(ChatRequest::user("Say hello"));
/// let mut reply = Accumulator::new();
/// while let Some(delta) = stream.next().await {
///     reply.push(&delta?);
/// }
/// println!("{}", reply.text());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct OpenAiProvider {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    client: reqwest::Client,
    url: Url,
    model: String,
    headers: HeaderMap,
    has_key: bool,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("name", &self.inner.name)
            .field("url", &self.inner.url.as_str())
            .field("model", &self.inner.model)
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

impl OpenAiProvider {
    /// A builder with the defaults: OpenAI's base URL, [`DEFAULT_MODEL`], no key.
    pub fn builder() -> OpenAiProviderBuilder {
        OpenAiProviderBuilder::default()
    }

    /// A provider configured from the environment: `OPENAI_API_KEY`, `OPENAI_BASE_URL` (default
    /// [`DEFAULT_BASE_URL`]) and `CHATSTREAM_MODEL` (default [`DEFAULT_MODEL`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) when neither `OPENAI_API_KEY` nor
    /// `OPENAI_BASE_URL` is set (OpenAI itself needs a key; a local server needs its URL), or
    /// when a value is invalid.
    pub fn from_env() -> Result<Self> {
        let key = http::env("OPENAI_API_KEY");
        let base = http::env("OPENAI_BASE_URL");
        if key.is_none() && base.is_none() {
            return Err(crate::Error::Config(
                "set OPENAI_API_KEY, or OPENAI_BASE_URL for a server that needs no key".into(),
            ));
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

/// Builds an [`OpenAiProvider`]; see [`OpenAiProvider::builder`].
#[derive(Default)]
pub struct OpenAiProviderBuilder {
    name: Option<String>,
    api_key: Option<String>,
    base_url: Option<String>,
    model: Option<String>,
    headers: Vec<(String, String)>,
    connect_timeout: Option<Duration>,
    client: Option<reqwest::Client>,
}

impl fmt::Debug for OpenAiProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProviderBuilder")
            .field("name", &self.name)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl OpenAiProviderBuilder {
    /// The API key, sent as `Authorization: Bearer …`. Optional: local servers need none.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The base URL, with or without a trailing slash; `/chat/completions` is appended to its
    /// path and its query (Azure's `api-version`) is kept.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The model used when a request names none.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The provider's name in logs and errors (default `openai`), e.g. `ollama` or `groq`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// An extra header sent with every request (Azure's `api-key`, OpenRouter's `HTTP-Referer`,
    /// `OpenAI-Organization`, …). Its value is never shown in `Debug` output.
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

    /// Uses this HTTP client (its pool, proxy and TLS settings) instead of a new one;
    /// [`connect_timeout`](Self::connect_timeout) is then ignored.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Builds the provider.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) for an invalid base URL, header or key.
    pub fn build(self) -> Result<OpenAiProvider> {
        let url = http::endpoint(
            self.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL),
            "/chat/completions",
        )?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        let has_key = self.api_key.is_some();
        if let Some(key) = &self.api_key {
            headers.insert(
                AUTHORIZATION,
                http::secret_header(&format!("Bearer {key}"))?,
            );
        }
        for (name, value) in &self.headers {
            http::add_header(&mut headers, name, value)?;
        }
        let client = match self.client {
            Some(client) => client,
            None => http::client(self.connect_timeout)?,
        };
        Ok(OpenAiProvider {
            inner: Arc::new(Inner {
                name: self.name.unwrap_or_else(|| "openai".to_owned()).into(),
                client,
                url,
                model: self.model.unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
                headers,
                has_key,
            }),
        })
    }
}

impl LlmProvider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn default_model(&self) -> &str {
        &self.inner.model
    }

    fn stream(&self, request: ChatRequest) -> DeltaStream {
        let inner = &self.inner;
        let body = request_body(&request, &inner.model);
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
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    /// `null` for an assistant message that only calls tools.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
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
        content: (!calls_only).then_some(m.content.as_str()),
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

fn request_body(request: &ChatRequest, default_model: &str) -> Result<Vec<u8>> {
    let body = WireRequest {
        model: request.model.as_deref().unwrap_or(default_model),
        messages: request.messages.iter().map(wire_message).collect(),
        stream: true,
        stream_options: StreamOptions {
            include_usage: true,
        },
        temperature: request.temperature,
        top_p: request.top_p,
        max_tokens: request.max_tokens,
        stop: &request.stop,
        tools: request.tools.iter().map(wire_tool).collect(),
    };
    serde_json::to_vec(&body).map_err(|e| crate::Error::invalid("request", e.to_string()))
}

// ---- response ------------------------------------------------------------------------------

/// Decodes an OpenAI chat-completions SSE body into deltas: exactly what [`OpenAiProvider`]
/// runs on the HTTP response.
///
/// Handles text, `reasoning_content` / `reasoning`, tool-call fragments, usage (in its own chunk
/// or on the finish chunk), finish reasons, an `error` object in the middle of the stream
/// ([`Error::Upstream`](crate::Error::Upstream) with no status), `[DONE]` or a clean end after
/// the finish chunk, comments, CRLF, `retry:` fields and multi-line data. A body that ends before
/// the finish is [`Error::Truncated`](crate::Error::Truncated); a payload that is not JSON is
/// [`Error::BadData`](crate::Error::BadData); a body that fails while being read is
/// [`Error::Connect`](crate::Error::Connect). Only the first choice (index 0) is read.
///
/// ```
/// use chatstream::{Accumulator, provider::openai};
/// use futures::StreamExt;
///
/// # futures::executor::block_on(async {
/// let body = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n\
///             data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
///             data: [DONE]\n\n";
/// let bytes = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(body))]);
/// let mut reply = Accumulator::new();
/// let mut deltas = openai::decode(bytes);
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
    http::decode_with(bytes, Parser::new("openai".into()))
}

/// Reads one `data:` payload, writing the deltas of its first choice straight into `out`.
///
/// A hand-written visitor rather than derived structs: each key is matched once, fields the
/// library does not use (`id`, `model`, `created`, `system_fingerprint`, `logprobs`, …) are
/// skipped without being allocated, and no intermediate chunk, choice or delta is built, moved
/// or boxed (measured in `benches/parse.rs`). Error objects are only noted here and parsed again
/// on their rare path. The caller removes what was written when the payload turns out bad.
struct ChunkSeed<'o> {
    out: &'o mut VecDeque<Delta>,
    /// The reply finished in an earlier chunk: only a usage may follow.
    finished: bool,
}

/// What a payload said besides its deltas.
#[derive(Default)]
struct ChunkOutcome {
    /// The first choice carried a finish reason.
    finished: bool,
    /// An `error` object, or vLLM's top-level `{"object":"error","message","type","code"}`.
    error: bool,
}

/// A duplicate key is an error, as it is for derived structs.
fn once<E: de::Error>(seen: &mut bool, field: &'static str) -> std::result::Result<(), E> {
    if std::mem::replace(seen, true) {
        return Err(E::duplicate_field(field));
    }
    Ok(())
}

impl<'de> DeserializeSeed<'de> for ChunkSeed<'_> {
    type Value = ChunkOutcome;

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<ChunkOutcome, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChunkSeed<'_> {
    type Value = ChunkOutcome;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct Chunk")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<ChunkOutcome, A::Error> {
        let mut outcome = ChunkOutcome::default();
        let mut usage = None;
        let (mut choices, mut error, mut object) = (false, false, false);
        while let Some(key) = map.next_key::<Str<'de>>()? {
            match key.as_str() {
                "choices" => {
                    once(&mut choices, "choices")?;
                    outcome.finished = map.next_value_seed(ChoicesSeed {
                        out: &mut *self.out,
                        keep: !self.finished,
                    })?;
                }
                "usage" => {
                    if usage.is_some() {
                        return Err(de::Error::duplicate_field("usage"));
                    }
                    usage = Some(map.next_value::<Option<WireUsage>>()?);
                }
                "error" => {
                    once(&mut error, "error")?;
                    outcome.error |= map.next_value::<Option<IgnoredAny>>()?.is_some();
                }
                "object" => {
                    once(&mut object, "object")?;
                    let object = map.next_value::<Option<Str<'de>>>()?;
                    outcome.error |= object.is_some_and(|o| o.as_str() == "error");
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        // The usage comes after the choice's deltas and finish, wherever it stood.
        if let Some(Some(usage)) = usage {
            self.out.push_back(Delta::Usage(Usage {
                input_tokens: usage.prompt_tokens,
                output_tokens: usage.completion_tokens,
            }));
        }
        Ok(outcome)
    }
}

/// The `choices` list: only the first choice with index 0 is read, so that no `Vec` is built
/// per chunk (the library reads one choice). Gives whether that choice finished the reply.
struct ChoicesSeed<'o> {
    out: &'o mut VecDeque<Delta>,
    /// Whether the choice's deltas are wanted at all.
    keep: bool,
}

impl<'de> DeserializeSeed<'de> for ChoicesSeed<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ChoicesSeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of choices")
    }

    fn visit_unit<E>(self) -> std::result::Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<bool, A::Error> {
        let mut first = false;
        let mut finished = false;
        // Later choices are still read, so that a malformed one fails the payload as before.
        while let Some(choice) = seq.next_element_seed(ChoiceSeed {
            out: &mut *self.out,
            keep: self.keep && !first,
        })? {
            if !first && choice.first {
                first = true;
                finished = choice.finished;
            }
        }
        Ok(finished)
    }
}

/// One choice; its deltas, then its finish, are written when `keep` and its index is 0.
struct ChoiceSeed<'o> {
    out: &'o mut VecDeque<Delta>,
    keep: bool,
}

struct ChoiceOutcome {
    /// The index is 0: this is the choice the library reads.
    first: bool,
    /// It was kept and carried a finish reason.
    finished: bool,
}

impl<'de> DeserializeSeed<'de> for ChoiceSeed<'_> {
    type Value = ChoiceOutcome;

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<ChoiceOutcome, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChoiceSeed<'_> {
    type Value = ChoiceOutcome;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct Choice")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<ChoiceOutcome, A::Error> {
        let start = self.out.len();
        let mut index = None;
        let mut reason = None;
        let mut delta = false;
        while let Some(key) = map.next_key::<Str<'de>>()? {
            match key.as_str() {
                "index" => {
                    if index.is_some() {
                        return Err(de::Error::duplicate_field("index"));
                    }
                    index = Some(map.next_value::<u32>()?);
                }
                "delta" => {
                    once(&mut delta, "delta")?;
                    // The index may come after the delta: then the deltas are written and taken
                    // back below if it is not 0.
                    map.next_value_seed(OrNull(DeltaSeed {
                        out: &mut *self.out,
                        keep: self.keep && index.unwrap_or(0) == 0,
                    }))?;
                }
                "finish_reason" => {
                    if reason.is_some() {
                        return Err(de::Error::duplicate_field("finish_reason"));
                    }
                    reason = Some(map.next_value::<Option<Str<'de>>>()?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let first = index.unwrap_or(0) == 0;
        if !(self.keep && first) {
            self.out.truncate(start);
            return Ok(ChoiceOutcome {
                first,
                finished: false,
            });
        }
        let reason = reason.flatten();
        let finished = reason.is_some();
        if let Some(reason) = reason {
            self.out
                .push_back(Delta::finish(finish_reason(reason.as_str())));
        }
        Ok(ChoiceOutcome { first, finished })
    }
}

/// `null` (read as absent), or what the seed inside reads.
struct OrNull<S>(S);

impl<'de, S: DeserializeSeed<'de, Value = ()>> DeserializeSeed<'de> for OrNull<S> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de, Value = ()>> Visitor<'de> for OrNull<S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null or a value")
    }

    fn visit_none<E>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        self.0.deserialize(deserializer)
    }
}

/// A choice's `delta`: reasoning, text, refusal (as text), then tool calls, whatever the order
/// of its keys. Read but not written unless `keep`.
struct DeltaSeed<'o> {
    out: &'o mut VecDeque<Delta>,
    keep: bool,
}

impl<'de> DeserializeSeed<'de> for DeltaSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DeltaSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct WireDelta")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        // Tool calls are written as they come; the text deltas go in before them at the end.
        let calls_at = self.out.len();
        let mut content = None;
        let mut reasoning_content = None;
        let mut reasoning = None;
        let mut refusal = None;
        let mut tool_calls = false;
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let (slot, field) = match key.as_str() {
                "content" => (&mut content, "content"),
                "reasoning_content" => (&mut reasoning_content, "reasoning_content"),
                "reasoning" => (&mut reasoning, "reasoning"),
                "refusal" => (&mut refusal, "refusal"),
                "tool_calls" => {
                    once(&mut tool_calls, "tool_calls")?;
                    map.next_value_seed(OrNull(ToolCallsSeed {
                        out: &mut *self.out,
                        keep: self.keep,
                    }))?;
                    continue;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(de::Error::duplicate_field(field));
            }
            *slot = Some(map.next_value::<Option<Str<'de>>>()?);
        }
        if !self.keep {
            return Ok(());
        }
        let mut at = calls_at;
        let mut write = |delta| {
            self.out.insert(at, delta);
            at += 1;
        };
        if let Some(text) = non_empty(reasoning_content.flatten().or(reasoning.flatten())) {
            write(Delta::Reasoning { text });
        }
        if let Some(text) = non_empty(content.flatten()) {
            write(Delta::Text { text });
        }
        if let Some(text) = non_empty(refusal.flatten()) {
            write(Delta::Text { text });
        }
        Ok(())
    }
}

/// A delta's `tool_calls`, written as they are read.
struct ToolCallsSeed<'o> {
    out: &'o mut VecDeque<Delta>,
    keep: bool,
}

impl<'de> DeserializeSeed<'de> for ToolCallsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ToolCallsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let mut position = 0;
        while let Some(call) = seq.next_element::<WireToolCallDelta<'de>>()? {
            if self.keep {
                let (name, arguments) = match call.function {
                    Some(f) => (non_empty(f.name), f.arguments.map(Str::into_string)),
                    None => (None, None),
                };
                self.out.push_back(Delta::ToolCall(ToolCallDelta {
                    // Some servers leave the index out when they send whole calls.
                    index: call.index.unwrap_or(position),
                    id: non_empty(call.id),
                    name,
                    arguments: arguments.unwrap_or_default(),
                }));
            }
            position += 1;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct WireToolCallDelta<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    function: Option<WireFunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct WireFunctionDelta<'a> {
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    arguments: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" | "end_turn" | "eos" => FinishReason::Stop,
        "length" | "max_tokens" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

struct Parser {
    provider: Arc<str>,
    finished: bool,
}

impl Parser {
    fn new(provider: Arc<str>) -> Self {
        Parser {
            provider,
            finished: false,
        }
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
            return Ok(Step::Continue); // a block of metadata only (`retry:`, `id:`)
        };
        let data = data.trim_ascii();
        if data.is_empty() {
            return Ok(Step::Continue);
        }
        if data == "[DONE]" {
            if !self.finished {
                // The server says the reply is complete but gave no reason.
                out.push_back(Delta::finish(FinishReason::Other));
                self.finished = true;
            }
            return Ok(Step::Done);
        }
        let start = out.len();
        let mut json = serde_json::Deserializer::from_str(data);
        let outcome = ChunkSeed {
            out: &mut *out,
            finished: self.finished,
        }
        .deserialize(&mut json)
        .and_then(|outcome| json.end().map(|()| outcome));
        let outcome = match outcome {
            Ok(outcome) if !outcome.error => outcome,
            Ok(_) => {
                out.truncate(start);
                return Err(http::midstream_error(&self.provider, data));
            }
            Err(e) => {
                out.truncate(start);
                return Err(http::bad_json(&self.provider, &e, data));
            }
        };
        self.finished |= outcome.finished;
        Ok(Step::Continue)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ToolCall;

    #[test]
    fn request_body_shape() {
        let mut assistant = RequestMessage::new(Role::Assistant, "");
        assistant.tool_calls = vec![ToolCall {
            index: 0,
            id: "call_1".into(),
            name: "get_time".into(),
            arguments: "{}".into(),
        }];
        let mut tool = RequestMessage::new(Role::Tool, "12:00");
        tool.tool_call_id = Some("call_1".into());
        let mut request = ChatRequest::new(vec![
            RequestMessage::new(Role::System, "Be brief."),
            RequestMessage::new(Role::User, "Time?"),
            assistant,
            tool,
        ])
        .with_temperature(0.5);
        request.stop = vec!["END".into()];
        request.tools = vec![ToolSpec {
            name: "get_time".into(),
            description: Some("Current time".into()),
            parameters: serde_json::json!({"type": "object"}),
        }];
        let body: serde_json::Value =
            serde_json::from_slice(&request_body(&request, "m").unwrap()).unwrap();
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

    /// The deltas and the error of one payload, read after the finish or before it.
    fn payload(finished: bool, data: &str) -> (Vec<Delta>, Option<crate::Error>) {
        let mut parser = Parser::new("p".into());
        parser.finished = finished;
        let mut out = VecDeque::new();
        let error = parser.event(&Sse::default().data(data), &mut out).err();
        (out.into(), error)
    }

    #[test]
    fn deltas_come_in_a_fixed_order_whatever_the_key_order() {
        let (deltas, error) = payload(
            false,
            r#"{"usage":{"prompt_tokens":2,"completion_tokens":3},"choices":[
                {"finish_reason":"tool_calls","delta":{
                    "tool_calls":[{"id":"c","function":{"name":"f","arguments":"{"}}],
                    "refusal":"no","content":"text","reasoning":"why"},"index":0}]}"#,
        );
        assert!(error.is_none());
        assert_eq!(
            deltas,
            [
                Delta::reasoning("why"),
                Delta::text("text"),
                Delta::text("no"),
                Delta::ToolCall(ToolCallDelta {
                    index: 0,
                    id: Some("c".into()),
                    name: Some("f".into()),
                    arguments: "{".into(),
                }),
                Delta::finish(FinishReason::ToolCalls),
                Delta::usage(2, 3),
            ]
        );
    }

    #[test]
    fn only_the_first_choice_with_index_0_is_read() {
        // The index may come after the delta.
        let (deltas, _) = payload(
            false,
            r#"{"choices":[{"delta":{"content":"a"},"finish_reason":"stop","index":1},
                {"delta":{"content":"b"},"index":0},{"index":0,"delta":{"content":"c"}}]}"#,
        );
        assert_eq!(deltas, [Delta::text("b")]);
    }

    #[test]
    fn after_the_finish_only_a_usage_is_read() {
        let (deltas, _) = payload(
            true,
            r#"{"choices":[{"index":0,"delta":{"content":"late"},"finish_reason":"stop"}],
                "usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        );
        assert_eq!(deltas, [Delta::usage(1, 1)]);
    }

    #[test]
    fn nulls_are_absent_fields() {
        let (deltas, error) = payload(
            false,
            r#"{"choices":[{"index":0,"delta":null,"finish_reason":null}],"usage":null,
                "error":null,"object":null}"#,
        );
        assert!(deltas.is_empty() && error.is_none());
        let (deltas, error) = payload(false, r#"{"choices":null}"#);
        assert!(deltas.is_empty() && error.is_none());
    }

    #[test]
    fn a_bad_or_failed_payload_gives_none_of_its_deltas() {
        for data in [
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"usage":5}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"choices":[]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}]"#,
        ] {
            let (deltas, error) = payload(false, data);
            assert!(deltas.is_empty(), "{data}");
            assert!(
                matches!(error, Some(crate::Error::BadData { .. })),
                "{data}: {error:?}"
            );
        }
        for data in [
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"error":{"message":"boom"}}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"object":"error","message":"boom"}"#,
        ] {
            let (deltas, error) = payload(false, data);
            assert!(deltas.is_empty(), "{data}");
            assert!(
                matches!(error, Some(crate::Error::Upstream { ref message, .. }) if message == "boom"),
                "{data}: {error:?}"
            );
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let p = OpenAiProvider::builder()
            .api_key("sk-secret")
            .header("api-key", "azure-secret")
            .build()
            .unwrap();
        let shown = format!("{p:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("<redacted>"));
        let b = OpenAiProvider::builder().api_key("sk-secret");
        assert!(!format!("{b:?}").contains("secret"));
    }

    #[test]
    fn default_model_and_url() {
        let p = OpenAiProvider::builder()
            .base_url("http://localhost:11434/v1/")
            .build()
            .unwrap();
        assert_eq!(p.default_model(), DEFAULT_MODEL);
        assert_eq!(p.url(), "http://localhost:11434/v1/chat/completions");
    }
}
