//! What the HTTP providers share: [`HttpProvider`] and its builder (one client, URL and header
//! handling, sending a streaming request), the SSE decoding loop ([`decode`]) and upstream error
//! bodies ([`error`]). What sets one API apart is its [`HttpApi`].

mod decode;
mod error;

use std::{fmt, sync::Arc, time::Duration};

use futures::StreamExt;
use reqwest::{
    Url,
    header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue},
};
use serde::Serialize;

use self::error::{connect_error, status_error};
pub(crate) use self::{
    decode::{EventParser, Step, Str, decode_with, non_empty},
    error::{ErrorObject, bad_json, midstream_error},
};
use super::{ChatRequest, DeltaStream, LlmProvider};
use crate::{Error, Result};

/// What sets one HTTP API apart: its name, defaults and URL path, how it takes its key, and its
/// wire format. A value of it holds the API's own settings (Anthropic's token limit).
///
/// Public in name only, so that it can bound [`HttpProvider`]; nothing outside the crate can
/// name it, so the set of APIs stays the crate's.
pub trait HttpApi: Default + fmt::Debug + Send + Sync + 'static {
    /// The provider's name in logs and errors unless the builder sets one.
    const NAME: &'static str;
    /// The prefix of the environment variables `from_env` reads (`OPENAI` for `OPENAI_API_KEY`).
    const ENV_PREFIX: &'static str;
    /// The base URL unless the builder or the environment sets one.
    const DEFAULT_BASE_URL: &'static str;
    /// The model unless the request, the builder or `CHATSTREAM_MODEL` names one.
    const DEFAULT_MODEL: &'static str;
    /// Appended to the base URL's path.
    const PATH: &'static str;
    /// How the API takes its key.
    const AUTH: Auth;
    /// Headers sent with every request besides the content type, `Accept` and the key.
    const HEADERS: &'static [(&'static str, &'static str)] = &[];

    /// The wire format's parser.
    type Parser: EventParser + Unpin;

    /// Encodes `request` for the wire, with `default_model` when it names none (usually with
    /// [`encode`], which merges the request's extra fields).
    ///
    /// Fails with [`Error::Invalid`] for an option the API cannot express.
    fn body(&self, request: &ChatRequest, default_model: &str) -> Result<Vec<u8>>;
}

/// `wire` as a JSON body with `extra` merged into its top level: each extra field replaces the
/// one `wire` wrote, and a `null` removes it.
///
/// Written by hand rather than with a JSON merge-patch crate: only the top level is merged, and
/// the plain serialization stays a single pass when there is nothing to merge. The merge reads
/// the serialized body back rather than going through `serde_json::to_value`, which would widen
/// an `f32` such as a temperature of 0.2 to 0.20000000298023224.
pub(crate) fn encode(
    wire: &impl Serialize,
    extra: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<u8>> {
    let invalid = |e: serde_json::Error| Error::invalid("request", e.to_string());
    let body = serde_json::to_vec(wire).map_err(invalid)?;
    if extra.is_empty() {
        return Ok(body);
    }
    let mut body: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&body).map_err(invalid)?;
    for (key, value) in extra {
        if value.is_null() {
            body.remove(key);
        } else {
            body.insert(key.clone(), value.clone());
        }
    }
    serde_json::to_vec(&body).map_err(invalid)
}

/// How an API takes its key.
#[derive(Debug, Clone, Copy)]
pub enum Auth {
    /// As `Authorization: Bearer <key>`.
    Bearer,
    /// As is, in this header.
    Header(&'static str),
}

impl Auth {
    /// The header that carries `key`, its value hidden from `Debug`.
    fn header(self, key: &str) -> Result<(HeaderName, HeaderValue)> {
        let (name, value) = match self {
            Auth::Bearer => (AUTHORIZATION, format!("Bearer {key}")),
            Auth::Header(name) => (HeaderName::from_static(name), key.to_owned()),
        };
        Ok((name, secret_header(&value)?))
    }
}

/// A provider that speaks one HTTP API: [`OpenAiProvider`](super::OpenAiProvider),
/// [`OpenAiResponsesProvider`](super::OpenAiResponsesProvider) or
/// [`AnthropicProvider`](super::AnthropicProvider), which document each API.
///
/// A cheap-clone handle: clones share one HTTP client and its connection pool.
pub struct HttpProvider<A> {
    inner: Arc<Inner<A>>,
}

struct Inner<A> {
    api: A,
    name: Arc<str>,
    client: reqwest::Client,
    url: Url,
    model: String,
    headers: HeaderMap,
    has_key: bool,
}

impl<A> Clone for HttpProvider<A> {
    fn clone(&self) -> Self {
        HttpProvider {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<A: HttpApi> fmt::Debug for HttpProvider<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("HttpProvider")
            .field("api", &inner.api)
            .field("name", &inner.name)
            .field("url", &inner.url.as_str())
            .field("model", &inner.model)
            .field(
                "api_key",
                &if inner.has_key {
                    "<redacted>"
                } else {
                    "<none>"
                },
            )
            .field("headers", &HeaderNames(&inner.headers))
            .finish_non_exhaustive()
    }
}

impl<A: HttpApi> HttpProvider<A> {
    /// A builder with the API's defaults: its base URL and model (and, for Anthropic,
    /// [`DEFAULT_MAX_TOKENS`](super::anthropic::DEFAULT_MAX_TOKENS)), no key.
    pub fn builder() -> HttpProviderBuilder<A> {
        HttpProviderBuilder::default()
    }

    /// A provider configured from the environment: the API's key and base URL
    /// (`OPENAI_API_KEY` and `OPENAI_BASE_URL` for [`OpenAiProvider`](super::OpenAiProvider)
    /// and [`OpenAiResponsesProvider`](super::OpenAiResponsesProvider), `ANTHROPIC_API_KEY` and
    /// `ANTHROPIC_BASE_URL` for
    /// [`AnthropicProvider`](super::AnthropicProvider); the base URL defaults to the API's
    /// `DEFAULT_BASE_URL`) and `CHATSTREAM_MODEL` (default the API's `DEFAULT_MODEL`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when neither the key nor the base URL is set (OpenAI and Anthropic
    /// themselves need a key; a local server, or a proxy that adds the key, needs its URL), or
    /// when a value is invalid.
    pub fn from_env() -> Result<Self> {
        let prefix = A::ENV_PREFIX;
        let (key_var, base_var) = (format!("{prefix}_API_KEY"), format!("{prefix}_BASE_URL"));
        let key = env(&key_var);
        let base = env(&base_var);
        if key.is_none() && base.is_none() {
            return Err(Error::Config(format!(
                "set {key_var}, or {base_var} for a server that needs no key"
            )));
        }
        let mut builder = Self::builder();
        if let Some(key) = key {
            builder = builder.api_key(key);
        }
        if let Some(base) = base {
            builder = builder.base_url(base);
        }
        if let Some(model) = env("CHATSTREAM_MODEL") {
            builder = builder.model(model);
        }
        builder.build()
    }

    /// The URL requests go to.
    pub fn url(&self) -> &str {
        self.inner.url.as_str()
    }
}

impl<A: HttpApi> LlmProvider for HttpProvider<A> {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn default_model(&self) -> &str {
        &self.inner.model
    }

    fn stream(&self, request: ChatRequest) -> DeltaStream {
        let inner = &self.inner;
        let body = inner.api.body(&request, &inner.model);
        let builder = inner
            .client
            .post(inner.url.clone())
            .headers(inner.headers.clone());
        stream_request::<A::Parser>(inner.client.clone(), builder, body, inner.name.clone())
    }
}

/// Builds an [`HttpProvider`]: see [`OpenAiProvider::builder`](super::OpenAiProvider::builder)
/// and [`AnthropicProvider::builder`](super::AnthropicProvider::builder).
#[derive(Default)]
#[must_use = "a builder does nothing until it is built"]
pub struct HttpProviderBuilder<A> {
    /// The API's own settings, which its module sets.
    pub(super) api: A,
    name: Option<String>,
    api_key: Option<String>,
    base_url: Option<String>,
    model: Option<String>,
    headers: Vec<(String, String)>,
    connect_timeout: Option<Duration>,
    client: Option<reqwest::Client>,
}

impl<A: HttpApi> fmt::Debug for HttpProviderBuilder<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProviderBuilder")
            .field("api", &self.api)
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

impl<A: HttpApi> HttpProviderBuilder<A> {
    /// The API key, sent in the API's header: `Authorization: Bearer …` for OpenAI, `x-api-key`
    /// for Anthropic. Optional: local servers, and proxies that add the key, need none.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The base URL, with or without a trailing slash; the API's path (`/chat/completions` for
    /// OpenAI, `/responses` for the Responses API, `/v1/messages` for Anthropic) is appended to
    /// its path and its query (Azure's `api-version`) is kept.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The model used when a request names none.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The provider's name in logs and errors (default `openai`, `openai-responses` or
    /// `anthropic`), e.g. `ollama` or `groq`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// An extra header sent with every request (Azure's `api-key`, OpenRouter's `HTTP-Referer`,
    /// `OpenAI-Organization`, `anthropic-beta`, a gateway's token, …). Its value is never shown
    /// in `Debug` output.
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
    /// [`Error::Config`] for an invalid base URL, header or key.
    pub fn build(self) -> Result<HttpProvider<A>> {
        let url = endpoint(
            self.base_url.as_deref().unwrap_or(A::DEFAULT_BASE_URL),
            A::PATH,
        )?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        for &(name, value) in A::HEADERS {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let has_key = self.api_key.is_some();
        if let Some(key) = &self.api_key {
            let (name, value) = A::AUTH.header(key)?;
            headers.insert(name, value);
        }
        for (name, value) in &self.headers {
            add_header(&mut headers, name, value)?;
        }
        let client = match self.client {
            Some(client) => client,
            None => client(self.connect_timeout)?,
        };
        Ok(HttpProvider {
            inner: Arc::new(Inner {
                api: self.api,
                name: self.name.unwrap_or_else(|| A::NAME.to_owned()).into(),
                client,
                url,
                model: self.model.unwrap_or_else(|| A::DEFAULT_MODEL.to_owned()),
                headers,
                has_key,
            }),
        })
    }
}

/// Sends `body` as a streaming request and decodes the answer; lazy, so nothing happens until
/// the stream is first polled, and dropping it drops the request or the response body.
fn stream_request<P>(
    client: reqwest::Client,
    request: reqwest::RequestBuilder,
    body: Result<Vec<u8>>,
    provider: Arc<str>,
) -> DeltaStream
where
    P: EventParser + Unpin,
{
    let started = async move {
        let request = match body.and_then(|body| {
            request
                .body(body)
                .build()
                .map_err(|e| Error::Config(format!("{provider}: cannot build the request: {e}")))
        }) {
            Ok(request) => request,
            Err(error) => return futures::stream::iter([Err(error)]).boxed(),
        };
        match client.execute(request).await {
            Err(error) => futures::stream::iter([Err(connect_error(&provider, error))]).boxed(),
            Ok(response) if !response.status().is_success() => {
                let error = status_error(&provider, response).await;
                futures::stream::iter([Err(error)]).boxed()
            }
            Ok(response) => decode_with::<P, _, _>(response.bytes_stream(), provider),
        }
    };
    futures::stream::once(started).flatten().boxed()
}

/// Appends `path` to a base URL's path, keeping its query (Azure's `api-version`).
fn endpoint(base: &str, path: &str) -> Result<Url> {
    let mut url = Url::parse(base.trim())
        .map_err(|e| Error::Config(format!("invalid base URL {base:?}: {e}")))?;
    if url.cannot_be_a_base() {
        return Err(Error::Config(format!("invalid base URL {base:?}")));
    }
    let joined = format!("{}{path}", url.path().trim_end_matches('/'));
    url.set_path(&joined);
    Ok(url)
}

/// Checks an extra header and adds it.
fn add_header(headers: &mut HeaderMap, name: &str, value: &str) -> Result<()> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|e| Error::Config(format!("invalid header name {name:?}: {e}")))?;
    let mut value = HeaderValue::from_str(value)
        .map_err(|e| Error::Config(format!("invalid value for header {name}: {e}")))?;
    // Extra headers often carry credentials (Azure's `api-key`, gateway tokens).
    value.set_sensitive(true);
    headers.insert(name, value);
    Ok(())
}

/// A secret header value, hidden from `Debug`.
fn secret_header(value: &str) -> Result<HeaderValue> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| Error::Config("the API key is not a valid header value".to_owned()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Builds the HTTP client.
fn client(connect_timeout: Option<Duration>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().tcp_nodelay(true);
    if let Some(timeout) = connect_timeout {
        builder = builder.connect_timeout(timeout);
    }
    // No total timeout: it would cut long generations; idle timeouts belong to the
    // resilience wrappers.
    builder
        .build()
        .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))
}

/// An environment variable, unset when empty.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The names of headers, for `Debug` output that shows no values.
struct HeaderNames<'a>(&'a HeaderMap);

impl fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::provider::{AnthropicProvider, OpenAiProvider, anthropic, openai};

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
        let p = AnthropicProvider::builder()
            .api_key("sk-ant-secret")
            .build()
            .unwrap();
        let shown = format!("{p:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn default_model_and_url() {
        let p = OpenAiProvider::builder()
            .base_url("http://localhost:11434/v1/")
            .build()
            .unwrap();
        assert_eq!(p.default_model(), openai::DEFAULT_MODEL);
        assert_eq!(p.url(), "http://localhost:11434/v1/chat/completions");
        let p = AnthropicProvider::builder().build().unwrap();
        assert_eq!(p.url(), "https://api.anthropic.com/v1/messages");
        assert_eq!(p.default_model(), anthropic::DEFAULT_MODEL);
    }

    #[test]
    fn endpoints_keep_query_and_ignore_trailing_slash() {
        for base in ["https://api.openai.com/v1", "https://api.openai.com/v1/"] {
            assert_eq!(
                endpoint(base, "/chat/completions").unwrap().as_str(),
                "https://api.openai.com/v1/chat/completions"
            );
        }
        assert_eq!(
            endpoint(
                "https://x.openai.azure.com/openai/deployments/gpt?api-version=2024-10-21",
                "/chat/completions"
            )
            .unwrap()
            .as_str(),
            "https://x.openai.azure.com/openai/deployments/gpt/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            endpoint("http://127.0.0.1:8080", "/v1/messages")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/v1/messages"
        );
        assert!(endpoint("not a url", "/x").is_err());
    }
}
