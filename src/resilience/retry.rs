//! [`Retrying`]: retries a reply that failed before any output, with backoff and full jitter.
//!
//! Written by hand rather than on `backon`: a retry here is part of the reply's stream (the
//! subscriber sees a [`RetryNotice`] delta while it waits), and a reply that already produced
//! output is never retried (that is [mid-stream recovery](super::Recovering)'s job), so the
//! retry loop lives inside a `Stream` and decides per item, which a retry-a-future crate does not
//! model.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
    time::Duration,
};

use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

use crate::{ChatRequest, Delta, DeltaStream, Error, LlmProvider, Result, RetryNotice};

/// When and how often [`Retrying`] tries again.
///
/// The wait before retry `n` (0 for the first retry) is drawn uniformly from
/// `[0, min(max_backoff, initial_backoff × multiplier^n)]` ("full jitter"), and is at least what
/// the upstream asked for with `Retry-After` ([`Error::retry_after`]).
///
/// ```
/// use chatstream::resilience::RetryPolicy;
/// use std::time::Duration;
///
/// let policy = RetryPolicy::default()
///     .with_max_attempts(3)
///     .with_budget(Duration::from_secs(20));
/// assert_eq!(policy.backoff_cap(0), Duration::from_millis(500));
/// assert_eq!(policy.backoff_cap(1), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// How many attempts in all, the first one included (default 4).
    pub max_attempts: u32,
    /// The upper bound of the first wait (default 500 ms).
    pub initial_backoff: Duration,
    /// The most any wait's upper bound grows to (default 30 s).
    pub max_backoff: Duration,
    /// How much the upper bound grows per retry (default 2).
    pub multiplier: f64,
    /// The total time, from the start of the first attempt, after which no retry starts
    /// (default 150 s, so a 60 s first-byte timeout can still be retried). A retry whose wait
    /// would end past it is not made.
    pub budget: Duration,
    /// Seeds the jitter, so tests get the same waits on every run (default: random).
    pub jitter_seed: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            budget: Duration::from_secs(150),
            jitter_seed: None,
        }
    }
}

impl RetryPolicy {
    /// Sets how many attempts in all (at least 1).
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Sets the upper bound of the first wait.
    pub fn with_initial_backoff(mut self, initial_backoff: Duration) -> Self {
        self.initial_backoff = initial_backoff;
        self
    }

    /// Sets the most any wait's upper bound grows to.
    pub fn with_max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// Sets how much the upper bound grows per retry.
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets the total time after which no retry starts.
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// Seeds the jitter (for reproducible tests).
    pub fn with_jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    /// The upper bound of the wait before retry `retry` (0 for the first retry):
    /// `min(max_backoff, initial_backoff × multiplier^retry)`.
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry).unwrap_or(i32::MAX);
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        // An overflowing or NaN product means "very long": the ceiling applies.
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    /// A full-jitter wait before retry `retry`: uniform in `[0, backoff_cap(retry)]`.
    pub fn backoff(&self, retry: u32, rng: &mut fastrand::Rng) -> Duration {
        self.backoff_cap(retry).mul_f64(rng.f64())
    }
}

/// Retries a reply that failed before its first output delta.
///
/// Only errors with [`Error::is_retryable`] are retried, and only while nothing but metadata
/// (usage, retry notices) was streamed: once text, reasoning or a tool-call fragment went out, a
/// failure passes through unchanged — continuing from there is [`Recovering`]'s job. Before every
/// retry the stream yields a [`Delta::Retry`] so a consumer can show "retrying…", then waits (on
/// tokio's clock) as the [`RetryPolicy`] says. When it gives up after more than one attempt, the
/// error is [`Error::RetriesExhausted`] around the last attempt's error; a cancellation always
/// passes through as [`Error::Cancelled`].
///
/// ```
/// use chatstream::{Accumulator, ChatRequest, Delta, Error, LlmProvider};
/// use chatstream::provider::{Script, ScriptedProvider};
/// use chatstream::resilience::{ResilienceExt, RetryPolicy};
/// use futures::StreamExt;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
/// let provider = ScriptedProvider::new()
///     .then(Script::new().fail(|| Error::from_status("s", 503, None, "busy", None)))
///     .then(Script::reply(["Hi"]))
///     .with_retry(RetryPolicy::default().with_initial_backoff(Duration::from_millis(1)));
/// let mut stream = provider.stream(ChatRequest::user("Hello"));
/// let mut reply = Accumulator::new();
/// while let Some(delta) = stream.next().await {
///     let delta = delta?;
///     if let Delta::Retry(notice) = &delta {
///         assert_eq!(notice.attempt, 2); // show "retrying…"
///     }
///     reply.push(&delta);
/// }
/// assert_eq!(reply.text(), "Hi");
/// # Ok(()) }
/// ```
///
/// [`Recovering`]: super::Recovering
#[derive(Debug)]
pub struct Retrying<P> {
    inner: Arc<P>,
    policy: RetryPolicy,
    rng: Arc<Mutex<fastrand::Rng>>,
}

impl<P> Clone for Retrying<P> {
    fn clone(&self) -> Self {
        Retrying {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            rng: self.rng.clone(),
        }
    }
}

impl<P: LlmProvider> Retrying<P> {
    /// Wraps `inner`.
    pub fn new(inner: P, policy: RetryPolicy) -> Self {
        let rng = match policy.jitter_seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Retrying {
            inner: Arc::new(inner),
            policy,
            rng: Arc::new(Mutex::new(rng)),
        }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

impl<P: LlmProvider> LlmProvider for Retrying<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn default_model(&self) -> &str {
        self.inner.default_model()
    }

    fn stream(&self, request: ChatRequest) -> DeltaStream {
        // Each stream draws from its own fork, so concurrent replies never contend on the lock
        // while a seeded policy still gives a reproducible sequence.
        let rng = self.rng.lock().unwrap_or_else(|e| e.into_inner()).fork();
        let state = State {
            inner: self.inner.clone() as Arc<dyn LlmProvider>,
            request,
            policy: self.policy.clone(),
            rng,
            started: None,
            attempts: 0,
            current: None,
            wait: None,
            sleep: None,
            output_seen: false,
            done: false,
        };
        Box::pin(state)
    }
}

struct State {
    inner: Arc<dyn LlmProvider>,
    request: ChatRequest,
    policy: RetryPolicy,
    rng: fastrand::Rng,
    started: Option<Instant>,
    attempts: u32,
    current: Option<DeltaStream>,
    /// The wait before the next attempt, taken after its notice went out.
    wait: Option<Duration>,
    /// That wait, once the consumer asks for the next item.
    sleep: Option<Pin<Box<Sleep>>>,
    output_seen: bool,
    done: bool,
}

/// Written by hand rather than with `unfold`, so that a delta passes straight through: no state
/// moved in and out of a future per item.
impl Stream for State {
    type Item = Result<Delta>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let st = self.get_mut();
        if st.done {
            return Poll::Ready(None);
        }
        if let Some(wait) = st.wait.take() {
            st.sleep = Some(Box::pin(tokio::time::sleep(wait)));
        }
        if let Some(sleep) = st.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            st.sleep = None;
        }
        let started = *st.started.get_or_insert_with(Instant::now);
        let stream = st.current.get_or_insert_with(|| {
            st.attempts += 1;
            st.inner.stream(st.request.clone())
        });
        let error = match ready!(stream.poll_next_unpin(cx)) {
            None => {
                st.done = true;
                return Poll::Ready(None);
            }
            Some(Ok(delta)) => {
                st.output_seen |= delta.is_output();
                return Poll::Ready(Some(Ok(delta)));
            }
            Some(Err(error)) => error,
        };
        // Drop the failed attempt (and its connection) before waiting.
        st.current = None;
        let item = match next_wait(st, &error, started) {
            Some(wait) => {
                #[cfg(feature = "metrics")]
                crate::metrics::retry(st.inner.name(), &error);
                tracing::debug!(
                    provider = st.inner.name(),
                    attempt = st.attempts + 1,
                    ?wait,
                    %error,
                    "retrying"
                );
                st.wait = Some(wait);
                Ok(Delta::Retry(RetryNotice {
                    attempt: st.attempts + 1,
                    provider: st.inner.name().to_owned(),
                    reason: error.to_string(),
                }))
            }
            None => {
                st.done = true;
                if st.attempts > 1 && !st.output_seen && !matches!(error, Error::Cancelled) {
                    Err(Error::RetriesExhausted {
                        attempts: st.attempts,
                        source: Box::new(error),
                    })
                } else {
                    Err(error)
                }
            }
        };
        Poll::Ready(Some(item))
    }
}

/// How long to wait before retrying after `error`, or `None` to give up.
fn next_wait(st: &mut State, error: &Error, started: Instant) -> Option<Duration> {
    if st.output_seen || !error.is_retryable() || st.attempts >= st.policy.max_attempts {
        return None;
    }
    let jitter = st.policy.backoff(st.attempts - 1, &mut st.rng);
    let wait = error
        .retry_after()
        .map_or(jitter, |asked| asked.max(jitter));
    let remaining = st.policy.budget.checked_sub(started.elapsed())?;
    (wait <= remaining).then_some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_ceiling_and_stays_within_it() {
        let policy = RetryPolicy::default();
        let caps: Vec<_> = (0..8).map(|n| policy.backoff_cap(n)).collect();
        assert_eq!(caps[0], Duration::from_millis(500));
        assert_eq!(caps[3], Duration::from_secs(4));
        assert_eq!(caps[7], Duration::from_secs(30));
        assert_eq!(policy.backoff_cap(u32::MAX), Duration::from_secs(30));
        let mut rng = fastrand::Rng::with_seed(7);
        let waits: Vec<_> = (0..200).map(|n| policy.backoff(n % 8, &mut rng)).collect();
        for (n, wait) in waits.iter().enumerate() {
            assert!(*wait <= policy.backoff_cap(n as u32 % 8));
        }
        // Full jitter really spreads the waits rather than pinning them to the cap.
        assert!(waits.iter().any(|w| *w < Duration::from_millis(100)));
        let mut again = fastrand::Rng::with_seed(7);
        assert_eq!(policy.backoff(0, &mut again), waits[0]);
    }
}
