//! [`AnthropicProvider`]: the Anthropic Messages API.
//!
//! The wire format is parsed by [`decode`], which is public so that recorded bodies can be
//! replayed through exactly the code the provider runs.

mod decode;
mod request;

use std::{fmt, sync::Arc, time::Duration};

use reqwest::{
    Url,
    header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue},
};

pub use self::decode::decode;
use self::{decode::Parser, request::request_body};
use super::{ChatRequest, DeltaStream, LlmProvider, http};
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
