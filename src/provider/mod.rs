//! [`LlmProvider`]: a cancellable stream of [`Delta`]s from a model API, and its implementations.
//!
//! | provider | module | what it speaks |
//! |---|---|---|
//! | [`OpenAiProvider`] | [`openai`] | OpenAI chat completions and every compatible server (Azure-style base URLs, Ollama, vLLM, llama.cpp, LM Studio, Groq, DeepSeek, OpenRouter, LiteLLM) |
//! | [`OpenAiResponsesProvider`] | [`openai_responses`] | the OpenAI Responses API (`POST /v1/responses`), streamed |
//! | [`AnthropicProvider`] | [`anthropic`] | the Anthropic Messages API |
//! | [`DemoProvider`] | [`demo`] | nothing: a deterministic offline reply, so everything runs with no key and no network |
//! | [`ScriptedProvider`] | [`scripted`] | a scripted sequence of deltas, errors and pauses, for tests |
//!
//! The HTTP providers are one [`HttpProvider`] over their API: the builder, the client and the
//! streaming request are shared, each module holds only its API's defaults, request body and
//! decoder.
//!
//! A [`ChatRequest`] carries, besides the conversation, what the reply should be like: sampling,
//! a token limit, stop sequences, tools and a [`ToolChoice`], a [`ResponseFormat`] (structured
//! output), a [`ReasoningEffort`] or a thinking budget, and [`extra`](ChatRequest::extra) fields
//! merged into the upstream body for anything else an API takes. Each provider sends what its API
//! understands; an option its API cannot express at all (stop sequences for the Responses API, a
//! free JSON mode for Anthropic) fails the request with [`Error::Invalid`] rather than being
//! dropped.
//!
//! Providers do one upstream request per [`LlmProvider::stream`] call and no retries: wrap them in
//! the [resilience](crate::resilience) decorators for that.

use std::{fmt::Debug, sync::Arc};

use futures::{StreamExt, stream::BoxStream};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{ContentPart, Delta, Error, Message, Result, Role, ToolCall};

pub mod anthropic;
pub mod demo;
mod http;
pub mod openai;
pub mod openai_responses;
mod options;
pub mod scripted;
mod standard;

pub use anthropic::AnthropicProvider;
pub use demo::DemoProvider;
pub use http::{HttpProvider, HttpProviderBuilder};
pub use openai::OpenAiProvider;
pub use openai_responses::OpenAiResponsesProvider;
pub use options::{
    JsonSchema, ReasoningEffort, ResponseFormat, ThinkingBlock, TokenLimitField, ToolChoice,
};
pub use scripted::{Script, ScriptedProvider};
pub use standard::{ProviderKind, from_env, resilient};

/// The stream every provider returns: `Send + 'static`, so it can be moved into a task or handed
/// to axum's `Sse` directly.
pub type DeltaStream = BoxStream<'static, Result<Delta>>;

/// A source of streaming replies.
///
/// [`stream`](LlmProvider::stream) returns at once; the upstream request starts when the stream
/// is first polled, and every failure (connection, HTTP status, bad data) arrives as an item of
/// the stream. The stream ends in exactly one terminal outcome: after a [`Delta::Finish`] (and
/// possibly a trailing [`Delta::Usage`]) it ends; after an `Err` it ends. A body that ends without
/// a finish yields [`Error::Truncated`], never a silent success.
///
/// Dropping the stream closes the upstream connection at once; to stop it from elsewhere, use
/// [`LlmProviderExt::stream_cancellable`] with a [`CancellationToken`].
///
/// ```
/// use chatstream::{Accumulator, ChatRequest, LlmProvider, provider::DemoProvider};
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
/// let provider = DemoProvider::new().with_delay(std::time::Duration::ZERO);
/// let mut stream = provider.stream(ChatRequest::user("Hello"));
/// let mut acc = Accumulator::new();
/// while let Some(delta) = stream.next().await {
///     acc.push(&delta?);
/// }
/// assert!(!acc.text().is_empty());
/// # Ok(()) }
/// ```
pub trait LlmProvider: Send + Sync + Debug + 'static {
    /// A short name for logs and errors (`openai`, `anthropic`, `demo`, …).
    fn name(&self) -> &str;

    /// The model used when the request names none.
    fn default_model(&self) -> &str;

    /// Starts a reply. See the trait's docs for the stream's contract.
    fn stream(&self, request: ChatRequest) -> DeltaStream;
}

crate::forward::forward_impls!(LlmProvider,
    sync {
        fn name(&self) -> &str;
        fn default_model(&self) -> &str;
        fn stream(&self, request: ChatRequest) -> DeltaStream;
    }
    async {}
);

/// A shared, type-erased provider.
pub type DynLlmProvider = Arc<dyn LlmProvider>;

/// Conveniences for every [`LlmProvider`].
pub trait LlmProviderExt: LlmProvider {
    /// Like [`stream`](LlmProvider::stream), but ends with [`Error::Cancelled`] as soon as `token`
    /// is cancelled, dropping the upstream stream (and so closing its connection) at that moment.
    fn stream_cancellable(&self, request: ChatRequest, token: CancellationToken) -> DeltaStream {
        cancellable(self.stream(request), token)
    }
}

impl<P: LlmProvider + ?Sized> LlmProviderExt for P {}

/// Makes any delta stream stop when `token` is cancelled: the inner stream is dropped at once
/// (closing its upstream connection) and the stream ends with one [`Error::Cancelled`].
pub fn cancellable(stream: DeltaStream, token: CancellationToken) -> DeltaStream {
    futures::stream::unfold(Some((stream, token)), |state| async move {
        let (mut inner, token) = state?;
        tokio::select! {
            biased;
            () = token.cancelled() => {
                drop(inner);
                Some((Err(Error::Cancelled), None))
            }
            item = inner.next() => {
                let item = item?;
                let terminal = item.is_err();
                Some((item, (!terminal).then_some((inner, token))))
            }
        }
    })
    .boxed()
}

/// What to ask the model: the conversation so far and how the reply should be made.
///
/// ```
/// use chatstream::{ChatRequest, ToolSpec, provider::{ReasoningEffort, ToolChoice}};
/// use serde_json::json;
///
/// let request = ChatRequest::user("What time is it in Lisbon?")
///     .with_model("gpt-5-mini")
///     .with_reasoning_effort(ReasoningEffort::Low)
///     .with_tools([ToolSpec::new(
///         "get_time",
///         "The current time in a city",
///         json!({"type": "object", "properties": {"city": {"type": "string"}}}),
///     )])
///     .with_tool_choice(ToolChoice::Required)
///     .with_extra("seed", 7);
/// assert_eq!(request.tools[0].name, "get_time");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatRequest {
    /// The model; `None` uses the provider's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The conversation, oldest first. System messages may appear anywhere; providers that take
    /// the system prompt apart (Anthropic) collect them.
    pub messages: Vec<RequestMessage>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// The most tokens to generate. Anthropic requires one; its provider has a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Which field carries [`max_tokens`](Self::max_tokens) in an OpenAI chat-completions
    /// request; `None` uses the provider's setting (`max_tokens` unless configured). Other APIs
    /// have one field and ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_limit_field: Option<TokenLimitField>,
    /// Stop sequences. The Responses API has none: its provider refuses a request with them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// Whether and which tool the model must call; `None` leaves it to the API's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// The shape of the answer (structured output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// How hard a reasoning model thinks: OpenAI's `reasoning_effort`, the Responses API's
    /// `reasoning.effort` (with a reasoning summary streamed as reasoning text). Anthropic
    /// ignores it: its thinking is switched on by [`thinking_budget`](Self::thinking_budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Anthropic's extended thinking, switched on with this budget of tokens (the API wants at
    /// least 1,024, and less than the token limit). Other APIs ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_budget: Option<u32>,
    /// Fields merged into the top level of the upstream request body, for what an API takes and
    /// this type does not model (`seed`, `user`, `metadata`, `top_k`, …): each replaces the field
    /// the provider would write, and a `null` removes it.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatRequest {
    /// A request with these messages and default settings.
    pub fn new(messages: Vec<RequestMessage>) -> Self {
        ChatRequest {
            messages,
            ..Self::default()
        }
    }

    /// A request of one user message.
    pub fn user(content: impl Into<String>) -> Self {
        ChatRequest::new(vec![RequestMessage::new(Role::User, content)])
    }

    /// Sets the model.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Sets the token limit.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Sets the temperature.
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Sets the tools the model may call.
    pub fn with_tools(mut self, tools: impl IntoIterator<Item = ToolSpec>) -> Self {
        self.tools = tools.into_iter().collect();
        self
    }

    /// Sets whether and which tool the model must call.
    pub fn with_tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = Some(choice);
        self
    }

    /// Sets the shape of the answer.
    pub fn with_response_format(mut self, format: impl Into<ResponseFormat>) -> Self {
        self.response_format = Some(format.into());
        self
    }

    /// Sets the reasoning effort.
    pub fn with_reasoning_effort(mut self, effort: ReasoningEffort) -> Self {
        self.reasoning_effort = Some(effort);
        self
    }

    /// Switches Anthropic's extended thinking on with this budget of tokens.
    pub fn with_thinking_budget(mut self, budget_tokens: u32) -> Self {
        self.thinking_budget = Some(budget_tokens);
        self
    }

    /// Adds a field to merge into the upstream body (see [`extra`](Self::extra)).
    pub fn with_extra(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }
}

/// A message as sent to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMessage {
    /// Who wrote it.
    pub role: Role,
    /// Its text (with [`parts`](Self::parts), the text of its text parts, concatenated).
    pub content: String,
    /// Its whole content, in order, when it holds more than text (an image): what the providers
    /// send in place of [`content`](Self::content). Empty for a message of text alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<ContentPart>,
    /// Tool calls of an assistant message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a `tool` message: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The signed thinking of an assistant message, in order, for the Anthropic provider to send
    /// back unchanged before its text and tool calls (see
    /// [`Accumulator::thinking_blocks`](crate::Accumulator::thinking_blocks)). Other providers
    /// leave it out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thinking: Vec<ThinkingBlock>,
}

impl RequestMessage {
    /// A plain text message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        RequestMessage {
            role,
            content: content.into(),
            parts: Vec::new(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            thinking: Vec::new(),
        }
    }

    /// A message whose content is `parts`, in order (see [`Message::with_parts`]).
    ///
    /// ```
    /// use chatstream::{ChatRequest, ContentPart, RequestMessage, Role};
    ///
    /// let request = ChatRequest::new(vec![RequestMessage::with_parts(
    ///     Role::User,
    ///     [
    ///         ContentPart::text("Describe this."),
    ///         ContentPart::image_base64("image/png", "iVBORw0KGgo="),
    ///     ],
    /// )]);
    /// assert_eq!(request.messages[0].content, "Describe this.");
    /// ```
    pub fn with_parts(role: Role, parts: impl IntoIterator<Item = ContentPart>) -> Self {
        let parts: Vec<ContentPart> = parts.into_iter().collect();
        let mut m = RequestMessage::new(role, crate::message::text_of(&parts));
        m.parts = crate::message::kept_parts(parts);
        m
    }

    /// The parts to send: [`parts`](Self::parts) when it has any, else `None` (send
    /// [`content`](Self::content) as text).
    pub(crate) fn rich_parts(&self) -> Option<&[ContentPart]> {
        (!self.parts.is_empty()).then_some(self.parts.as_slice())
    }
}

impl From<&Message> for RequestMessage {
    fn from(m: &Message) -> Self {
        RequestMessage {
            role: m.role,
            content: m.content.clone(),
            parts: m.parts.clone(),
            tool_calls: m.tool_calls.clone(),
            tool_call_id: m.tool_call_id.clone(),
            thinking: m.thinking.clone(),
        }
    }
}

/// A tool (function) the model may call.
///
/// ```
/// use chatstream::ToolSpec;
/// use serde_json::json;
///
/// let tool = ToolSpec::new("get_time", "The current time", json!({"type": "object"}));
/// assert_eq!(tool.description.as_deref(), Some("The current time"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolSpec {
    /// The function's name.
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its parameters as a JSON Schema object.
    pub parameters: serde_json::Value,
}

impl ToolSpec {
    /// A tool with this name, description and parameter schema.
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: serde_json::Value,
    ) -> Self {
        ToolSpec {
            name: name.into(),
            description: Some(description.into()),
            parameters,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The request the wire encodings are checked with: a system prompt, a question, an
    /// assistant message with `text` that calls `get_time` as `id` with `arguments`, and the
    /// tool's answer; stop at `END`; the `get_time` tool, with `description`.
    pub(crate) fn tool_round(
        text: &str,
        id: &str,
        arguments: &str,
        description: Option<&str>,
    ) -> ChatRequest {
        let mut assistant = RequestMessage::new(Role::Assistant, text);
        assistant.tool_calls = vec![ToolCall {
            index: 0,
            id: id.into(),
            name: "get_time".into(),
            arguments: arguments.into(),
        }];
        let mut tool = RequestMessage::new(Role::Tool, "12:00");
        tool.tool_call_id = Some(id.into());
        let mut request = ChatRequest::new(vec![
            RequestMessage::new(Role::System, "Be brief."),
            RequestMessage::new(Role::User, "Time?"),
            assistant,
            tool,
        ]);
        request.stop = vec!["END".into()];
        request.tools = vec![ToolSpec {
            name: "get_time".into(),
            description: description.map(str::to_owned),
            parameters: serde_json::json!({"type": "object"}),
        }];
        request
    }

    #[tokio::test]
    async fn cancellable_ends_with_one_cancelled() {
        let token = CancellationToken::new();
        let inner = futures::stream::pending::<Result<Delta>>().boxed();
        let mut s = cancellable(inner, token.clone());
        token.cancel();
        assert!(matches!(s.next().await, Some(Err(Error::Cancelled))));
        assert!(s.next().await.is_none());
    }
}
