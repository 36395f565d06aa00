//! [`WithTimeouts`]: turns a stalled upstream into a typed, retryable error.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;

use crate::{ChatRequest, Delta, DeltaStream, Error, LlmProvider, Result, TimeoutPhase};

/// How long [`WithTimeouts`] waits for the upstream.
///
/// There is deliberately no limit on the whole reply: a long generation that keeps streaming is
/// never cut. Connect timeouts are set on the HTTP providers' builders.
///
/// ```
/// use chatstream::resilience::Timeouts;
/// use std::time::Duration;
///
/// let timeouts = Timeouts::default().with_idle(Duration::from_secs(20));
/// assert_eq!(timeouts.first_byte, Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// The longest wait for the first item after the stream is first polled (default 60 s).
    pub first_byte: Duration,
    /// The longest gap between two items (default 60 s).
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    /// Sets the longest wait for the first item.
    pub fn with_first_byte(mut self, first_byte: Duration) -> Self {
        self.first_byte = first_byte;
        self
    }

    /// Sets the longest gap between two items.
    pub fn with_idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }
}

/// Ends a reply with [`Error::Timeout`] when the upstream goes quiet.
///
/// No item within [`Timeouts::first_byte`] of the first poll gives
/// `Error::Timeout { phase: FirstByte, .. }`; a gap longer than [`Timeouts::idle`] between two
/// items gives `Error::Timeout { phase: Idle, .. }`. At that moment the inner stream is dropped,
/// which closes its upstream connection. Timeouts are retryable, so a [`Retrying`] or
/// [`Recovering`] around this wrapper starts over or continues.
///
/// ```
/// use chatstream::{provider::DemoProvider, resilience::{ResilienceExt, Timeouts}};
///
/// let provider = DemoProvider::new().with_timeouts(Timeouts::default());
/// ```
///
/// [`Retrying`]: super::Retrying
/// [`Recovering`]: super::Recovering
#[derive(Debug)]
pub struct WithTimeouts<P> {
    inner: Arc<P>,
    timeouts: Timeouts,
}

impl<P> Clone for WithTimeouts<P> {
    fn clone(&self) -> Self {
        WithTimeouts {
            inner: self.inner.clone(),
            timeouts: self.timeouts,
        }
    }
}

impl<P: LlmProvider> WithTimeouts<P> {
    /// Wraps `inner`.
    pub fn new(inner: P, timeouts: Timeouts) -> Self {
        WithTimeouts {
            inner: Arc::new(inner),
            timeouts,
        }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }
}

impl<P: LlmProvider> LlmProvider for WithTimeouts<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn default_model(&self) -> &str {
        self.inner.default_model()
    }

    fn stream(&self, request: ChatRequest) -> DeltaStream {
        with_timeouts(self.inner.stream(request), self.timeouts)
    }
}

/// Applies `timeouts` to any delta stream (see [`WithTimeouts`]).
pub fn with_timeouts(stream: DeltaStream, timeouts: Timeouts) -> DeltaStream {
    futures::stream::unfold(Some((stream, false)), move |state| async move {
        let (mut inner, seen_item) = state?;
        let (phase, limit) = if seen_item {
            (TimeoutPhase::Idle, timeouts.idle)
        } else {
            (TimeoutPhase::FirstByte, timeouts.first_byte)
        };
        match tokio::time::timeout(limit, inner.next()).await {
            Ok(Some(item)) => {
                let more = item.is_ok().then_some((inner, true));
                Some((item, more))
            }
            Ok(None) => None,
            Err(_elapsed) => {
                drop(inner);
                tracing::debug!(%phase, ?limit, "upstream timed out");
                let error: Result<Delta> = Err(Error::Timeout {
                    phase,
                    after: limit,
                });
                Some((error, None))
            }
        }
    })
    .boxed()
}
