//! The standard provider stack: which upstream the environment names, wrapped in the
//! resilience decorators every application wants.
//!
//! The server example, the terminal example and the benches all get their provider here, so that
//! a variable means the same thing everywhere and the decorators nest in one order.

use std::{fmt, str::FromStr, sync::Arc};

use super::{
    AnthropicProvider, DemoProvider, DynLlmProvider, LlmProvider, OpenAiProvider,
    OpenAiResponsesProvider,
};
use crate::{
    Error, Result,
    resilience::{RecoveryPolicy, ResilienceExt, RetryPolicy, Timeouts},
};

/// Which upstream to talk to: the values of `CHATSTREAM_PROVIDER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProviderKind {
    /// OpenAI, or any OpenAI-compatible chat-completions server (`OPENAI_API_KEY`,
    /// `OPENAI_BASE_URL`).
    OpenAi,
    /// OpenAI's Responses API (the same `OPENAI_API_KEY`, `OPENAI_BASE_URL`).
    OpenAiResponses,
    /// Anthropic's Messages API (`ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL`).
    Anthropic,
    /// The offline [`DemoProvider`]: no key, no network.
    Demo,
}

impl ProviderKind {
    /// Every kind, in the order `--help` texts list them.
    pub const ALL: [ProviderKind; 4] = [
        ProviderKind::OpenAi,
        ProviderKind::OpenAiResponses,
        ProviderKind::Anthropic,
        ProviderKind::Demo,
    ];

    /// The name used in `CHATSTREAM_PROVIDER`: `openai`, `openai-responses`, `anthropic` or
    /// `demo`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::OpenAiResponses => "openai-responses",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Demo => "demo",
        }
    }

    /// The kind the process environment names (see [`from_lookup`](Self::from_lookup)).
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// The kind `CHATSTREAM_PROVIDER` names; without it, `openai` when `OPENAI_API_KEY` or
    /// `OPENAI_BASE_URL` is set, else `demo`. `get` looks a variable up; empty values count as
    /// unset.
    ///
    /// ```
    /// use chatstream::provider::ProviderKind;
    ///
    /// // An environment to look variables up in (the process's in `from_env`).
    /// fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    ///     move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    /// }
    /// assert_eq!(ProviderKind::from_lookup(env(&[]))?, ProviderKind::Demo);
    /// let ollama = env(&[("OPENAI_BASE_URL", "http://localhost:11434/v1")]);
    /// assert_eq!(ProviderKind::from_lookup(ollama)?, ProviderKind::OpenAi);
    /// let responses = env(&[("CHATSTREAM_PROVIDER", "openai-responses")]);
    /// assert_eq!(ProviderKind::from_lookup(responses)?, ProviderKind::OpenAiResponses);
    /// assert!(ProviderKind::from_lookup(env(&[("CHATSTREAM_PROVIDER", "gpt")])).is_err());
    /// # Ok::<(), chatstream::Error>(())
    /// ```
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if let Some(name) = get("CHATSTREAM_PROVIDER") {
            return name
                .parse()
                .map_err(|e: Error| Error::Config(format!("CHATSTREAM_PROVIDER: {e}")));
        }
        Ok(
            if get("OPENAI_API_KEY").is_some() || get("OPENAI_BASE_URL").is_some() {
                ProviderKind::OpenAi
            } else {
                ProviderKind::Demo
            },
        )
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        ProviderKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown provider {s:?}: use openai, anthropic or demo (or openai-responses \
                     for OpenAI's Responses API)"
                ))
            })
    }
}

/// The standard decorators around an upstream, innermost first: [`Timeouts::default`] (first
/// byte and idle), [`RetryPolicy::default`] (backoff with jitter, `Retry-After`) and
/// [`RecoveryPolicy::default`] (continue a broken reply without repeating a word).
pub fn resilient(provider: impl LlmProvider) -> DynLlmProvider {
    Arc::new(
        provider
            .with_timeouts(Timeouts::default())
            .with_retry(RetryPolicy::default())
            .with_recovery(RecoveryPolicy::default()),
    )
}

/// The provider of `kind`, configured from the process environment (`OPENAI_*`,
/// `ANTHROPIC_*`, `CHATSTREAM_MODEL`) and wrapped by [`resilient`]; the demo provider is
/// returned as it is (it cannot fail).
///
/// Fails with [`Error::Config`] when the environment lacks what the upstream needs (an
/// Anthropic key, say) or holds a malformed value.
///
/// ```
/// use chatstream::provider::{self, ProviderKind};
///
/// let provider = provider::from_env(ProviderKind::Demo)?;
/// assert_eq!(provider.name(), "demo");
/// # Ok::<(), chatstream::Error>(())
/// ```
pub fn from_env(kind: ProviderKind) -> Result<DynLlmProvider> {
    Ok(match kind {
        ProviderKind::OpenAi => resilient(OpenAiProvider::from_env()?),
        ProviderKind::OpenAiResponses => resilient(OpenAiResponsesProvider::from_env()?),
        ProviderKind::Anthropic => resilient(AnthropicProvider::from_env()?),
        ProviderKind::Demo => Arc::new(DemoProvider::new()),
    })
}
