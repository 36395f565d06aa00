//! Upstream errors: HTTP error responses, error objects in the middle of a stream, bad payloads
//! and transport failures, each turned into the crate's [`Error`].

use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;

use super::decode::Str;
use crate::{
    Error,
    error::{is_context_length, kind_is_retryable},
};

/// The most of an error body read to describe an HTTP error.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// The most of an upstream error message or bad payload quoted in an error.
const EXCERPT_CHARS: usize = 200;

/// A [`Error::BadData`] for a payload that could not be parsed.
pub(crate) fn bad_json(provider: &str, error: &serde_json::Error, data: &str) -> Error {
    Error::BadData {
        provider: provider.to_owned(),
        message: format!("{error} in {:?}", excerpt(data)),
    }
}

/// The start of `text`, cut at a character boundary.
pub(crate) fn excerpt(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((at, _)) => Cow::Owned(format!("{}…", &text[..at])),
        None => Cow::Borrowed(text),
    }
}

/// The error object shared by OpenAI (`{"error":{"message","type","code"}}`) and Anthropic
/// (`{"type":"error","error":{"type","message"}}`) error bodies and stream events.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorObject<'a> {
    #[serde(borrow, default)]
    pub(crate) message: Option<Str<'a>>,
    #[serde(borrow, default, rename = "type")]
    pub(crate) kind: Option<Str<'a>>,
    /// A string for OpenAI, a number for some compatible servers.
    #[serde(default)]
    pub(crate) code: Option<serde_json::Value>,
}

impl ErrorObject<'_> {
    /// The error's kind: `insufficient_quota` wherever it appears, else the code, else the type.
    pub(crate) fn kind(&self) -> Option<String> {
        let code = self.code.as_ref().and_then(|c| c.as_str());
        let kind = self.kind.as_ref().map(Str::as_str);
        if code == Some("insufficient_quota") || kind == Some("insufficient_quota") {
            return Some("insufficient_quota".to_owned());
        }
        code.or(kind).map(str::to_owned)
    }

    pub(crate) fn message(&self) -> Option<String> {
        self.message
            .as_ref()
            .filter(|m| !m.as_str().is_empty())
            .map(|m| excerpt(m.as_str()).into_owned())
    }

    /// The error as an item of a stream (no HTTP status).
    pub(crate) fn into_midstream(self, provider: &str) -> Error {
        let kind = self.kind();
        let text = self.message.as_ref().map_or("", |m| m.as_str());
        if is_context_length(kind.as_deref(), text) {
            return Error::ContextLengthExceeded {
                provider: provider.to_owned(),
                status: None,
                message: self
                    .message()
                    .unwrap_or_else(|| "the request exceeds the context window".to_owned()),
                kind,
            };
        }
        Error::Upstream {
            provider: provider.to_owned(),
            status: None,
            retry_after: None,
            // The request was accepted before the error, so an unknown kind is taken as
            // transient.
            retryable: kind.as_deref().and_then(kind_is_retryable).unwrap_or(true),
            message: self
                .message()
                .unwrap_or_else(|| "error event without a message".to_owned()),
            kind,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    error: ErrorField<'a>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField<'a> {
    Object(#[serde(borrow)] ErrorObject<'a>),
    Text(String),
}

/// The error carried by a stream payload: `{"error":{…}}`, `{"error":"…"}`, or an error object
/// at the top level (vLLM's `{"object":"error","message",…}`).
pub(crate) fn midstream_error(provider: &str, data: &str) -> Error {
    match serde_json::from_str::<ErrorBody<'_>>(data) {
        Ok(ErrorBody {
            error: ErrorField::Object(object),
        }) => object.into_midstream(provider),
        Ok(ErrorBody {
            error: ErrorField::Text(message),
        }) => ErrorObject {
            message: Some(Str(Cow::Owned(message))),
            ..ErrorObject::default()
        }
        .into_midstream(provider),
        Err(_) => match serde_json::from_str::<ErrorObject<'_>>(data) {
            Ok(object) => object.into_midstream(provider),
            Err(e) => bad_json(provider, &e, data),
        },
    }
}

/// Turns an HTTP error response into an [`Error::Upstream`], reading at most 64 KiB of its body.
pub(crate) async fn status_error(provider: &str, mut response: reqwest::Response) -> Error {
    let status = response.status();
    let retry_after = retry_after_from_headers(response.headers());
    let mut body = Vec::new();
    // A body that breaks while being read still leaves the status to report.
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = ERROR_BODY_LIMIT - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= ERROR_BODY_LIMIT {
            break;
        }
    }
    drop(response);
    let text = String::from_utf8_lossy(&body);
    let (kind, message) = match serde_json::from_str::<ErrorBody<'_>>(&text) {
        Ok(ErrorBody {
            error: ErrorField::Object(object),
        }) => (object.kind(), object.message()),
        Ok(ErrorBody {
            error: ErrorField::Text(message),
        }) => (None, Some(excerpt(&message).into_owned())),
        Err(_) => (None, None),
    };
    let message = message.unwrap_or_else(|| {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("no error message")
                .to_owned()
        } else {
            excerpt(trimmed).into_owned()
        }
    });
    Error::from_status(provider, status.as_u16(), kind, message, retry_after)
}

/// How long the upstream asked to wait before a retry, from an error response's headers.
///
/// `retry-after-ms` (OpenAI's and Azure's milliseconds) wins when it holds a number of zero or
/// more; otherwise `Retry-After` is read as seconds (fractions allowed) or as an HTTP date, which
/// gives the time left until then (zero once it has passed). A negative or unreadable
/// `Retry-After` gives `None`, so the retry falls back to its own backoff.
fn retry_after_from_headers(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A transport failure before the response.
pub(crate) fn connect_error(provider: &str, error: reqwest::Error) -> Error {
    Error::Connect {
        provider: provider.to_owned(),
        source: Box::new(error),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after_from_headers(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(
            retry_after_from_headers(&h),
            Some(Duration::from_millis(1500))
        );
        let mut h = HeaderMap::new();
        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert("retry-after", HeaderValue::from_str(&date).unwrap());
        let d = retry_after_from_headers(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after_from_headers(&h), None);
    }

    #[test]
    fn excerpt_cuts_at_char_boundary() {
        let long = "é".repeat(300);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert_eq!(excerpt("short"), "short");
    }
}
