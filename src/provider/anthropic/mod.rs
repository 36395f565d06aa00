//! [`AnthropicProvider`]: the Anthropic Messages API.
//!
//! The wire format is parsed by [`decode`], which is public so that recorded bodies can be
//! replayed through exactly the code the provider runs.

mod decode;
mod request;

use bytes::Bytes;
use futures::Stream;

use self::decode::Parser;
use super::{
    ChatRequest, DeltaStream,
    http::{self, Auth, HttpApi, HttpProvider, HttpProviderBuilder},
};
use crate::Result;

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
/// blocks, and an assistant message's [thinking blocks](crate::RequestMessage::thinking) go
/// first, unchanged. A conversation that ends with an assistant message is sent as is, so the
/// model continues that message (what mid-stream recovery relies on).
///
/// A request's [`thinking_budget`](crate::ChatRequest::thinking_budget) switches extended thinking
/// on (`thinking: {"type":"enabled","budget_tokens":N}`); without a token limit of its own, such a
/// request gets the default limit plus the budget. A [`ToolChoice`](super::ToolChoice) of
/// `Required` is Anthropic's `any`; a JSON-schema [`ResponseFormat`](super::ResponseFormat) is
/// sent as `output_config.format`. Its [`reasoning_effort`](crate::ChatRequest::reasoning_effort)
/// is not sent.
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
pub type AnthropicProvider = HttpProvider<Messages>;

/// Builds an [`AnthropicProvider`]; see [`AnthropicProvider::builder`].
pub type AnthropicProviderBuilder = HttpProviderBuilder<Messages>;

impl AnthropicProviderBuilder {
    /// The token limit used when a request sets none (the API requires one).
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.api.max_tokens = max_tokens;
        self
    }
}

/// The Anthropic Messages API, as [`AnthropicProvider`] speaks it, with its token limit.
#[derive(Debug, Clone, Copy)]
pub struct Messages {
    max_tokens: u32,
}

impl Default for Messages {
    fn default() -> Self {
        Messages {
            max_tokens: DEFAULT_MAX_TOKENS,
        }
    }
}

impl HttpApi for Messages {
    const NAME: &'static str = "anthropic";
    const ENV_PREFIX: &'static str = "ANTHROPIC";
    const DEFAULT_BASE_URL: &'static str = DEFAULT_BASE_URL;
    const DEFAULT_MODEL: &'static str = DEFAULT_MODEL;
    const PATH: &'static str = "/v1/messages";
    const AUTH: Auth = Auth::Header("x-api-key");
    const HEADERS: &'static [(&'static str, &'static str)] = &[("anthropic-version", API_VERSION)];

    type Parser = Parser;

    fn body(&self, request: &ChatRequest, default_model: &str) -> Result<Vec<u8>> {
        let wire = request::request_body(request, default_model, self.max_tokens)?;
        http::encode(&wire, &request.extra)
    }
}

/// Decodes an Anthropic Messages SSE body into deltas: exactly what [`AnthropicProvider`] runs
/// on the HTTP response.
///
/// Handles `message_start` (input tokens), `content_block_start` (a `tool_use` block's id and
/// name; a `redacted_thinking` block as a
/// [`Delta::RedactedThinking`](crate::Delta::RedactedThinking)), `content_block_delta`
/// (`text_delta`, `thinking_delta` as reasoning, `input_json_delta` as tool-call arguments,
/// `signature_delta` as a [`Delta::ThinkingSignature`](crate::Delta::ThinkingSignature) closing
/// its thinking block), `message_delta` (the stop reason as a
/// [`Delta::Finish`](crate::Delta::Finish), then one [`Delta::Usage`](crate::Delta::Usage)),
/// `message_stop`, `ping` and `error` events; unknown events are ignored. Tool calls are
/// numbered 0, 1, … among the `tool_use` blocks, whatever their content block index. A body
/// that ends before the reply finished is [`Error::Truncated`](crate::Error::Truncated).
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
    http::decode_with::<Parser, _, _>(bytes, "anthropic".into())
}
