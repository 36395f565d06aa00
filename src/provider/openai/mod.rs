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

use std::{fmt, sync::Arc, time::Duration};

use reqwest::{
    Url,
    header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue},
};

pub use self::decode::decode;
use self::{decode::Parser, request::request_body};
use super::{ChatRequest, DeltaStream, LlmProvider, http};
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
