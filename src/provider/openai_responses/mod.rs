//! [`OpenAiResponsesProvider`]: the OpenAI Responses API (`POST /v1/responses`), streamed.
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

/// The default base URL (`/responses` is appended).
pub const DEFAULT_BASE_URL: &str = super::openai::DEFAULT_BASE_URL;
/// The model used when neither the request, the builder nor `CHATSTREAM_MODEL` names one.
pub const DEFAULT_MODEL: &str = super::openai::DEFAULT_MODEL;

/// An OpenAI Responses API provider.
///
/// A cheap-clone handle: clones share one HTTP client and its connection pool. It reads the
/// same environment as [`OpenAiProvider`](super::OpenAiProvider) (`OPENAI_API_KEY`,
/// `OPENAI_BASE_URL`, `CHATSTREAM_MODEL`).
///
/// Every request carries the whole conversation as `input` items, with `store: false` by
/// default: the conversation lives in chatstream's store, not OpenAI's (see
/// [`store`](OpenAiResponsesProviderBuilder::store)). System messages are sent in place as
/// `system` messages, tool calls as `function_call` items and tool results as
/// `function_call_output` items; the token limit is `max_output_tokens`, a
/// [`ReasoningEffort`](super::ReasoningEffort) is `reasoning.effort` (with `reasoning.summary:
/// "auto"`, so that the summary streams as reasoning text), a
/// [`ResponseFormat`](super::ResponseFormat) is `text.format`, and tools are sent with
/// `strict: false`, as chat completions treat them. The API has no stop sequences: a request
/// with some fails with [`Error::Invalid`](crate::Error::Invalid).
///
/// ```no_run
/// use chatstream::{Accumulator, ChatRequest, LlmProvider, provider::OpenAiResponsesProvider};
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
/// let provider = OpenAiResponsesProvider::from_env()?; // OPENAI_API_KEY
/// let mut stream = provider.stream(ChatRequest::user("Say hello"));
/// let mut reply = Accumulator::new();
/// while let Some(delta) = stream.next().await {
///     reply.push(&delta?);
/// }
/// println!("{}", reply.text());
/// # Ok(()) }
/// ```
pub type OpenAiResponsesProvider = HttpProvider<Responses>;

/// Builds an [`OpenAiResponsesProvider`]; see [`OpenAiResponsesProvider::builder`].
pub type OpenAiResponsesProviderBuilder = HttpProviderBuilder<Responses>;

impl OpenAiResponsesProviderBuilder {
    /// Whether OpenAI keeps each response (`store`, default `false`: the conversation is sent
    /// whole every time and kept by chatstream).
    pub fn store(mut self, store: bool) -> Self {
        self.api.store = store;
        self
    }
}

/// The OpenAI Responses API, as [`OpenAiResponsesProvider`] speaks it, with its `store` setting.
#[derive(Debug, Clone, Copy, Default)]
pub struct Responses {
    store: bool,
}

impl HttpApi for Responses {
    const NAME: &'static str = "openai-responses";
    const ENV_PREFIX: &'static str = "OPENAI";
    const DEFAULT_BASE_URL: &'static str = DEFAULT_BASE_URL;
    const DEFAULT_MODEL: &'static str = DEFAULT_MODEL;
    const PATH: &'static str = "/responses";
    const AUTH: Auth = Auth::Bearer;

    type Parser = Parser;

    fn body(&self, request: &ChatRequest, default_model: &str) -> Result<Vec<u8>> {
        let wire = request::request_body(request, default_model, self.store)?;
        http::encode(&wire, &request.extra)
    }
}

/// Decodes an OpenAI Responses SSE body into deltas: exactly what [`OpenAiResponsesProvider`]
/// runs on the HTTP response.
///
/// Reads the typed events by their `type`: `response.output_text.delta` (and
/// `response.refusal.delta`) as text; `response.reasoning_summary_text.delta` and
/// `response.reasoning_text.delta` as reasoning, a blank line between parts;
/// `response.output_item.added` of a `function_call` (its call id and name) and
/// `response.function_call_arguments.delta` as tool-call fragments, numbered 0, 1, … among the
/// calls; `response.output_item.done` (and `response.function_call_arguments.done`) fill in
/// what a server sent whole instead of in deltas. `response.completed` finishes the reply
/// (`tool_calls` when it called tools, else `stop`) with its usage; `response.incomplete`
/// finishes it as `length` (`max_output_tokens`), `content_filter` or `other`, with its usage;
/// `response.failed` and `error` events end the stream with
/// [`Error::Upstream`](crate::Error::Upstream), retryable by their code. Other events are
/// ignored. A body that ends before a terminal event is
/// [`Error::Truncated`](crate::Error::Truncated).
///
/// ```
/// use chatstream::{Accumulator, provider::openai_responses};
/// use futures::StreamExt;
///
/// # futures::executor::block_on(async {
/// let body = "event: response.output_text.delta\n\
///             data: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"delta\":\"Hi\"}\n\n\
///             event: response.completed\n\
///             data: {\"type\":\"response.completed\",\"response\":{\"status\":\"completed\"}}\n\n";
/// let bytes = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(body))]);
/// let mut reply = Accumulator::new();
/// let mut deltas = openai_responses::decode(bytes);
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
    http::decode_with::<Parser, _, _>(bytes, Responses::NAME.into())
}
