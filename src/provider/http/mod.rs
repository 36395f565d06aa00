//! What the HTTP providers share: sending a streaming request, URL and header handling, the SSE
//! decoding loop ([`decode`]) and upstream error bodies ([`error`]).

mod decode;
mod error;

use std::{fmt, time::Duration};

use futures::StreamExt;
use reqwest::{
    Url,
    header::{HeaderMap, HeaderName, HeaderValue},
};

use self::error::{connect_error, status_error};
pub(crate) use self::{
    decode::{EventParser, Step, Str, decode_with, non_empty},
    error::{bad_json, midstream_error},
};
use super::DeltaStream;
use crate::{Error, Result};

/// Sends `body` as a streaming request and decodes the answer; lazy, so nothing happens until
/// the stream is first polled, and dropping it drops the request or the response body.
pub(crate) fn stream_request<P>(
    client: reqwest::Client,
    request: reqwest::RequestBuilder,
    body: Result<Vec<u8>>,
    parser: P,
) -> DeltaStream
where
    P: EventParser + Unpin,
{
    let started = async move {
        let provider = parser.provider().to_owned();
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
            Ok(response) => decode_with(response.bytes_stream(), parser),
        }
    };
    futures::stream::once(started).flatten().boxed()
}

/// Appends `path` to a base URL's path, keeping its query (Azure's `api-version`).
pub(crate) fn endpoint(base: &str, path: &str) -> Result<Url> {
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
pub(crate) fn add_header(headers: &mut HeaderMap, name: &str, value: &str) -> Result<()> {
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
pub(crate) fn secret_header(value: &str) -> Result<HeaderValue> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| Error::Config("the API key is not a valid header value".to_owned()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Builds the HTTP client.
pub(crate) fn client(connect_timeout: Option<Duration>) -> Result<reqwest::Client> {
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
pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The names of headers, for `Debug` output that shows no values.
pub(crate) struct HeaderNames<'a>(pub(crate) &'a HeaderMap);

impl fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
