//! [`OpenAiProvider`]: OpenAI chat completions, and every server that speaks them.
//!
//! Works with OpenAI itself, Azure OpenAI (the `api-version` query of its base URL is kept; send
//! the key with `.header("api-key", key)`), Google Gemini's OpenAI-compatible endpoint (base URL
//! `https://generativelanguage.googleapis.com/v1beta/openai/`), Ollama, vLLM, llama.cpp server,
//! LM Studio, Groq, DeepSeek, OpenRouter and LiteLLM. The key is optional, for local servers that
//! need none.
//!
//! OpenAI's reasoning models want the token limit as `max_completion_tokens`: set
//! [`token_limit_field`](OpenAiProviderBuilder::token_limit_field) (or a request's
//! [`token_limit_field`](crate::ChatRequest::token_limit_field)); `max_tokens`, which every
//! compatible server knows, is the default.
//!
//! The wire format is parsed by [`decode`], which is public so that recorded bodies can be
//! replayed through exactly the code the provider runs.

mod decode;
mod request;

use bytes::Bytes;
use futures::Stream;

use self::decode::Parser;
use super::{
    ChatRequest, DeltaStream, TokenLimitField,
    http::{self, Auth, HttpApi, HttpProvider, HttpProviderBuilder},
};
use crate::Result;

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
pub type OpenAiProvider = HttpProvider<ChatCompletions>;

/// Builds an [`OpenAiProvider`]; see [`OpenAiProvider::builder`].
pub type OpenAiProviderBuilder = HttpProviderBuilder<ChatCompletions>;

impl OpenAiProviderBuilder {
    /// Which field carries the token limit when a request does not say (default
    /// [`TokenLimitField::MaxTokens`]; OpenAI's reasoning models need
    /// [`TokenLimitField::MaxCompletionTokens`]).
    pub fn token_limit_field(mut self, field: TokenLimitField) -> Self {
        self.api.token_limit = field;
        self
    }
}

/// The OpenAI chat-completions API, as [`OpenAiProvider`] speaks it, with its token-limit field.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct ChatCompletions {
    token_limit: TokenLimitField,
}

impl HttpApi for ChatCompletions {
    const NAME: &'static str = "openai";
    const ENV_PREFIX: &'static str = "OPENAI";
    const DEFAULT_BASE_URL: &'static str = DEFAULT_BASE_URL;
    const DEFAULT_MODEL: &'static str = DEFAULT_MODEL;
    const PATH: &'static str = "/chat/completions";
    const AUTH: Auth = Auth::Bearer;

    type Parser = Parser;

    fn body(&self, request: &ChatRequest, default_model: &str) -> Result<Vec<u8>> {
        http::encode(
            &request::request_body(request, default_model, self.token_limit),
            &request.extra,
        )
    }
}

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
    http::decode_with::<Parser, _, _>(bytes, "openai".into())
}
