//! Resilience decorators: retry, timeouts, mid-stream recovery and fallback.
//!
//! Each decorator is an [`LlmProvider`] around any [`LlmProvider`] (tower-style), so they nest
//! freely and the result is still a provider; providers themselves never retry.
//!
//! | decorator | what it does |
//! |---|---|
//! | [`WithTimeouts`] | a first delta that never comes or a stalled stream becomes [`Error::Timeout`] (retryable), and the upstream is dropped |
//! | [`Retrying`] | retries retryable errors that happen before any output, with exponential backoff, full jitter, `Retry-After`, an attempt limit and a time budget |
//! | [`Recovering`] | after a retryable failure mid-reply, continues from the partial reply (or restarts and skips) and passes on only new content |
//! | [`Fallback`] | tries the next provider when one fails before any output |
//!
//! Every decorator announces another upstream attempt with a [`Delta::Retry`] (not output, so a
//! consumer can show "retrying…" and an [`Accumulator`](crate::Accumulator) ignores it).
//!
//! ## Nesting order
//!
//! From the inside out:
//!
//! ```text
//! Fallback[ Recovering(Retrying(WithTimeouts(primary))), Recovering(Retrying(WithTimeouts(backup))), … ]
//! ```
//!
//! - [`WithTimeouts`] innermost, so a stall becomes an error the wrappers around it act on, and
//!   each attempt gets its own first-byte and idle clocks.
//! - [`Retrying`] around it, so failed attempts (a timeout included) are retried before output.
//! - [`Recovering`] around that, so a failure mid-reply is continued, and a recovery attempt that
//!   fails before its first new token is retried with backoff by the [`Retrying`] inside.
//!   Recovery stays with one provider: a reply is continued by the model that began it.
//! - [`Fallback`] outermost: it switches providers only when one failed before any output
//!   (retries and recoveries already spent), and never stitches two models into one reply.
//!
//! ```
//! use chatstream::{Accumulator, ChatRequest, DynLlmProvider, LlmProvider};
//! use chatstream::provider::{Script, ScriptedProvider};
//! use chatstream::resilience::{Fallback, RecoveryPolicy, ResilienceExt, RetryPolicy, Timeouts};
//! use futures::StreamExt;
//! use std::sync::Arc;
//!
//! fn resilient(provider: impl LlmProvider) -> DynLlmProvider {
//!     Arc::new(
//!         provider
//!             .with_timeouts(Timeouts::default())
//!             .with_retry(RetryPolicy::default())
//!             .with_recovery(RecoveryPolicy::default()),
//!     )
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
//! let refusing = Script::new().fail(|| chatstream::Error::from_status("p", 401, None, "no", None));
//! let primary = ScriptedProvider::new().named("primary").then(refusing);
//! let backup = ScriptedProvider::new().named("backup").then(Script::reply(["Hello"]));
//! let provider = Fallback::new(vec![resilient(primary), resilient(backup)]);
//! let mut stream = provider.stream(ChatRequest::user("Hello"));
//! let mut reply = Accumulator::new();
//! while let Some(delta) = stream.next().await {
//!     reply.push(&delta?);
//! }
//! assert_eq!(reply.text(), "Hello");
//! # Ok(()) }
//! ```
//!
//! A shared `Arc<dyn LlmProvider>` ([`DynLlmProvider`](crate::DynLlmProvider)) can be wrapped too, since
//! `Arc<P>` is itself a provider.

mod fallback;
mod recovery;
mod retry;
mod timeout;

pub use fallback::Fallback;
pub use recovery::{Recovering, RecoveryMode, RecoveryPolicy};
pub use retry::{RetryPolicy, Retrying};
pub use timeout::{Timeouts, WithTimeouts, with_timeouts};

use crate::LlmProvider;
#[cfg(doc)]
use crate::{Delta, Error};

/// Wraps any provider in the resilience decorators, innermost first:
/// `provider.with_timeouts(…).with_retry(…).with_recovery(…)`.
///
/// ```
/// use chatstream::provider::DemoProvider;
/// use chatstream::resilience::{RecoveryPolicy, ResilienceExt, RetryPolicy, Timeouts};
///
/// let provider = DemoProvider::new()
///     .with_timeouts(Timeouts::default())
///     .with_retry(RetryPolicy::default())
///     .with_recovery(RecoveryPolicy::default());
/// ```
pub trait ResilienceExt: LlmProvider + Sized {
    /// Retries failures before output: see [`Retrying`].
    #[must_use = "the decorated provider is returned, not applied in place"]
    fn with_retry(self, policy: RetryPolicy) -> Retrying<Self> {
        Retrying::new(self, policy)
    }

    /// Ends stalled streams with a timeout error: see [`WithTimeouts`].
    #[must_use = "the decorated provider is returned, not applied in place"]
    fn with_timeouts(self, timeouts: Timeouts) -> WithTimeouts<Self> {
        WithTimeouts::new(self, timeouts)
    }

    /// Recovers failures mid-reply: see [`Recovering`].
    #[must_use = "the decorated provider is returned, not applied in place"]
    fn with_recovery(self, policy: RecoveryPolicy) -> Recovering<Self> {
        Recovering::new(self, policy)
    }
}

impl<P: LlmProvider + Sized> ResilienceExt for P {}
