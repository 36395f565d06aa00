//! The crate's error type.

use std::time::Duration;

/// A boxed error source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with the crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in chatstream.
///
/// Errors carry their context (provider, HTTP status, `Retry-After`, backend) and say whether
/// repeating the operation may succeed: see [`Error::is_retryable`] and [`Error::retry_after`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The upstream API answered with an error: an HTTP error status, or an error object or event
    /// in the middle of the stream (then `status` is `None`).
    #[error("{provider}: upstream error{}{}: {message}", fmt_status(*.status), fmt_kind(.kind.as_deref()))]
    Upstream {
        /// The provider's name (`openai`, `anthropic`, …).
        provider: String,
        /// The HTTP status, when the error came as a status code.
        status: Option<u16>,
        /// The provider's error type or code (`server_error`, `overloaded_error`,
        /// `insufficient_quota`, …).
        kind: Option<String>,
        /// The provider's error message, or the response body when it had none.
        message: String,
        /// How long the provider asked to wait before retrying (`Retry-After`, `retry-after-ms`).
        retry_after: Option<Duration>,
        /// Whether repeating the request may succeed.
        retryable: bool,
    },
    /// The model refused the request as longer than its context window: OpenAI's
    /// `context_length_exceeded` (chat completions and Responses), Anthropic's `prompt is too
    /// long`, and the like from compatible servers (see
    /// [`is_context_length_exceeded`](Error::is_context_length_exceeded)). Repeating the same
    /// request fails again, so it is not retryable; a [`ChatSession`](crate::ChatSession) sends
    /// the reply's request once more with about half its history before it gives up.
    #[error("{provider}: the request exceeds the model's context window{}{}: {message}", fmt_status(*.status), fmt_kind(.kind.as_deref()))]
    ContextLengthExceeded {
        /// The provider's name.
        provider: String,
        /// The HTTP status, when the error came as a status code (usually 400).
        status: Option<u16>,
        /// The provider's error type or code.
        kind: Option<String>,
        /// The provider's error message.
        message: String,
    },
    /// The connection to the upstream API failed, or broke while reading the body.
    #[error("{provider}: connection error: {source}")]
    Connect {
        /// The provider's name.
        provider: String,
        /// The underlying transport error.
        #[source]
        source: BoxError,
    },
    /// The upstream body ended before the reply was finished (no finish reason, no end marker).
    #[error("{provider}: the stream ended before the reply was finished")]
    Truncated {
        /// The provider's name.
        provider: String,
    },
    /// No data arrived for too long: before the first delta, or between two deltas.
    #[error("no data from upstream for {after:?} ({phase})")]
    Timeout {
        /// Which wait timed out.
        phase: TimeoutPhase,
        /// The configured limit that was exceeded.
        after: Duration,
    },
    /// The operation was cancelled (a cancellation token fired, or a reply was terminated).
    #[error("cancelled")]
    Cancelled,
    /// The upstream sent data that could not be understood.
    #[error("{provider}: bad upstream data: {message}")]
    BadData {
        /// The provider's name.
        provider: String,
        /// What was wrong, with a short excerpt of the offending data.
        message: String,
    },
    /// A retrying wrapper gave up; `source` is the last attempt's error.
    #[error("gave up after {attempts} attempts: {source}")]
    RetriesExhausted {
        /// How many attempts were made in all.
        attempts: u32,
        /// The error of the last attempt.
        #[source]
        source: Box<Error>,
    },
    /// Invalid input from the caller: a malformed id, an empty message, a bad setting.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// What was invalid (`chat id`, `message id`, `request`, …).
        what: &'static str,
        /// Why.
        message: String,
    },
    /// Something the operation needs does not exist.
    #[error("{what} not found: {id}")]
    NotFound {
        /// What was looked up (`chat`, `message`).
        what: &'static str,
        /// The id that was looked up.
        id: String,
    },
    /// Something with this id exists already.
    #[error("{what} already exists: {id}")]
    AlreadyExists {
        /// What was created (`chat`, `message`).
        what: &'static str,
        /// The id that is taken.
        id: String,
    },
    /// A reply is already live in this chat; only one may run at a time.
    #[error("a reply is already streaming in chat {chat_id}")]
    Busy {
        /// The chat that is busy.
        chat_id: String,
    },
    /// The service is shutting down and takes no new work.
    #[error("shutting down")]
    ShuttingDown,
    /// A message store backend failed.
    #[error("{backend} store: {message}")]
    Store {
        /// The backend (`memory`, `sqlite`, `postgres`).
        backend: &'static str,
        /// What failed.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<BoxError>,
    },
    /// A stream hub backend failed.
    #[error("{backend} hub: {message}")]
    Hub {
        /// The backend (`local`, `redis`).
        backend: &'static str,
        /// What failed.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<BoxError>,
    },
    /// Configuration is missing or wrong (an unknown URL scheme, a missing API key, …).
    #[error("configuration: {0}")]
    Config(String),
}

/// Which wait of a stream timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutPhase {
    /// Waiting for the first delta of a reply.
    FirstByte,
    /// Waiting for the next delta while the reply was streaming.
    Idle,
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutPhase::FirstByte => "first byte",
            TimeoutPhase::Idle => "idle",
        })
    }
}

fn fmt_status(status: Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

fn fmt_kind(kind: Option<&str>) -> String {
    kind.map(|k| format!(" [{k}]")).unwrap_or_default()
}

impl Error {
    /// Whether repeating the operation may succeed.
    ///
    /// Connection errors, truncated streams, timeouts, HTTP 408, 409, 429, 5xx and 529, Anthropic's
    /// `overloaded_error` and mid-stream errors the provider marks as transient are retryable.
    /// Client errors (400, 401, 403, 404, 422), `insufficient_quota`, cancellation and invalid input
    /// are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Upstream { retryable, .. } => *retryable,
            Error::Connect { .. } | Error::Truncated { .. } | Error::Timeout { .. } => true,
            _ => false,
        }
    }

    /// How long the upstream asked to wait before retrying, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Upstream { retry_after, .. } => *retry_after,
            Error::RetriesExhausted { source, .. } => source.retry_after(),
            _ => None,
        }
    }

    /// The HTTP status of an upstream error, if it came as a status code.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Upstream { status, .. } | Error::ContextLengthExceeded { status, .. } => *status,
            Error::RetriesExhausted { source, .. } => source.status(),
            _ => None,
        }
    }

    /// A short, stable, machine-readable code for this error (`upstream`, `truncated`, `timeout`,
    /// `cancelled`, …), as used in the server's JSON errors and `error` events.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Upstream { .. } => "upstream",
            Error::ContextLengthExceeded { .. } => "context_length_exceeded",
            Error::Connect { .. } => "connect",
            Error::Truncated { .. } => "truncated",
            Error::Timeout { .. } => "timeout",
            Error::Cancelled => "cancelled",
            Error::BadData { .. } => "bad_upstream_data",
            Error::RetriesExhausted { source, .. } => source.code(),
            Error::Invalid { .. } => "invalid",
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists { .. } => "already_exists",
            Error::Busy { .. } => "busy",
            Error::ShuttingDown => "shutting_down",
            Error::Store { .. } => "store",
            Error::Hub { .. } => "hub",
            Error::Config(_) => "config",
        }
    }

    /// Whether the model refused the request as longer than its context window
    /// ([`Error::ContextLengthExceeded`], also after a retrying wrapper gave up on it).
    pub fn is_context_length_exceeded(&self) -> bool {
        match self {
            Error::ContextLengthExceeded { .. } => true,
            Error::RetriesExhausted { source, .. } => source.is_context_length_exceeded(),
            _ => false,
        }
    }

    /// Builds an upstream error from an HTTP status, classifying retryability by status and the
    /// provider's error type. A 4xx that says the request exceeds the model's context window
    /// (by its code or its message, see
    /// [`ContextLengthExceeded`](Error::ContextLengthExceeded)) is that error instead.
    ///
    /// ```
    /// use chatstream::Error;
    ///
    /// let openai = Error::from_status(
    ///     "openai",
    ///     400,
    ///     Some("context_length_exceeded".into()),
    ///     "This model's maximum context length is 128000 tokens.",
    ///     None,
    /// );
    /// assert!(openai.is_context_length_exceeded());
    /// assert_eq!(openai.code(), "context_length_exceeded");
    /// let anthropic = Error::from_status(
    ///     "anthropic",
    ///     400,
    ///     Some("invalid_request_error".into()),
    ///     "prompt is too long: 208310 tokens > 200000 maximum",
    ///     None,
    /// );
    /// assert!(anthropic.is_context_length_exceeded());
    /// assert!(!Error::from_status("openai", 400, None, "bad", None).is_context_length_exceeded());
    /// ```
    pub fn from_status(
        provider: impl Into<String>,
        status: u16,
        kind: Option<String>,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        let message = message.into();
        if (400..500).contains(&status) && is_context_length(kind.as_deref(), &message) {
            return Error::ContextLengthExceeded {
                provider: provider.into(),
                status: Some(status),
                kind,
                message,
            };
        }
        let retryable = kind
            .as_deref()
            .and_then(kind_is_retryable)
            .unwrap_or_else(|| status_is_retryable(status));
        Error::Upstream {
            provider: provider.into(),
            status: Some(status),
            kind,
            message,
            retry_after,
            retryable,
        }
    }

    pub(crate) fn invalid(what: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            message: message.into(),
        }
    }
}

/// Whether an upstream error of this type or code is worth retrying, whatever its HTTP status:
/// the one table of error kinds, read for HTTP errors and for errors in the middle of a stream.
///
/// `Some(false)` for what repeats on every attempt (no quota, a bad key, a request the API
/// rejects), `Some(true)` for overload and server trouble, `None` for a kind not listed here.
pub(crate) fn kind_is_retryable(kind: &str) -> Option<bool> {
    match kind {
        "insufficient_quota"
        | "invalid_request"
        | "invalid_request_error"
        | "authentication_error"
        | "permission_error"
        | "not_found_error"
        | "request_too_large"
        | "billing_error"
        | "context_length_exceeded"
        | "invalid_prompt" => Some(false),
        "overloaded_error" | "rate_limit_error" | "api_error" | "server_error" => Some(true),
        _ => None,
    }
}

/// Whether an upstream error says that the request exceeds the model's context window: by its
/// code (OpenAI's `context_length_exceeded`, llama.cpp's `exceed_context_size_error`) or, where
/// the API has no code for it, by its message (Anthropic's `prompt is too long`, the `maximum
/// context length` of vLLM and other OpenAI-compatible servers, the Responses API's `exceeds
/// the context window`, Gemini's `input token count … exceeds the maximum`).
pub(crate) fn is_context_length(kind: Option<&str>, message: &str) -> bool {
    if matches!(
        kind,
        Some("context_length_exceeded" | "exceed_context_size_error")
    ) {
        return true;
    }
    let message = message.to_ascii_lowercase();
    message.contains("prompt is too long")
        || message.contains("maximum context length")
        || message.contains("exceeds the context window")
        || message.contains("context_length_exceeded")
        || (message.contains("input token count") && message.contains("exceeds the maximum"))
}

/// Whether an HTTP status is worth retrying: 408, 409, 429, 5xx and 529.
pub fn status_is_retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || (500..=599).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classification() {
        for s in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert!(
                Error::from_status("p", s, None, "m", None).is_retryable(),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(
                !Error::from_status("p", s, None, "m", None).is_retryable(),
                "{s}"
            );
        }
        let quota = Error::from_status("p", 429, Some("insufficient_quota".into()), "m", None);
        assert!(!quota.is_retryable());
        let overloaded = Error::from_status("p", 400, Some("overloaded_error".into()), "m", None);
        assert!(overloaded.is_retryable());
    }

    #[test]
    fn context_length_errors_are_their_own_kind() {
        let cases = [
            (400, Some("context_length_exceeded"), "too many tokens"),
            (
                400,
                Some("invalid_request_error"),
                "prompt is too long: 208310 tokens > 200000 maximum",
            ),
            (
                400,
                None,
                "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.",
            ),
            (
                400,
                Some("invalid_request_error"),
                "Your input exceeds the context window of this model. Please adjust your input and try again.",
            ),
            (
                400,
                Some("INVALID_ARGUMENT"),
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            ),
            (
                400,
                Some("exceed_context_size_error"),
                "the request exceeds the available context size",
            ),
        ];
        for (status, kind, message) in cases {
            let e = Error::from_status("p", status, kind.map(Into::into), message, None);
            assert!(e.is_context_length_exceeded(), "{e}");
            assert!(!e.is_retryable(), "{e}");
            assert_eq!(e.code(), "context_length_exceeded");
            assert_eq!(e.status(), Some(status));
            let exhausted = Error::RetriesExhausted {
                attempts: 2,
                source: Box::new(e),
            };
            assert!(exhausted.is_context_length_exceeded());
        }
        // Not a context error: a server error that happens to say so, a body too large in bytes.
        let e = Error::from_status("p", 500, None, "maximum context length", None);
        assert!(!e.is_context_length_exceeded());
        let e = Error::from_status(
            "p",
            413,
            Some("request_too_large".into()),
            "Request exceeds the maximum size",
            None,
        );
        assert!(!e.is_context_length_exceeded());
    }

    #[test]
    fn display_is_readable() {
        let e = Error::from_status("openai", 429, Some("rate_limit".into()), "slow down", None);
        assert_eq!(
            e.to_string(),
            "openai: upstream error (HTTP 429) [rate_limit]: slow down"
        );
    }
}
