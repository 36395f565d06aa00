//! [`OpenAiProvider`]: OpenAI chat completions, and every server that speaks them.
//!
//! Works with OpenAI itself, Azure-style base URLs (their `api-version` query is kept; send the
//! key with `.header("api-key", key)`), Ollama, vLLM, llama.cpp server, LM Studio, Groq,
//! DeepSeek, OpenRouter and LiteLLM. The key is optional, for local servers that need none.
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

/// The OpenAI chat-completions API, as [`OpenAiProvider`] speaks it.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct ChatCompletions;

impl HttpApi for ChatCompletions {
    const NAME: &'static str = "openai";
    const DEFAULT_BASE_URL: &'static str = DEFAULT_BASE_URL;
    const DEFAULT_MODEL: &'static str = DEFAULT_MODEL;
    const PATH: &'static str = "/chat/completions";
    const AUTH: Auth = Auth::Bearer;

    type Parser = Parser;

    fn body(&self, request: &ChatRequest, default_model: &str) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&request::request_body(request, default_model))
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
