//! [`WithTimeouts`]: turns a stalled upstream into a typed, retryable error.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use futures::Stream;
use tokio::time::{Instant, Sleep};

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
    /// The longest wait for each later item, counted from when it is asked for and is not there
    /// yet (default 60 s): the longest gap the upstream may leave between two items.
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
/// `Error::Timeout { phase: FirstByte, .. }`; after that, waiting longer than [`Timeouts::idle`]
/// for the next item (counted from when it is asked for and is not there yet) gives
/// `Error::Timeout { phase: Idle, .. }`. At that moment the inner stream is dropped,
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
    Box::pin(Timed {
        inner: Some(stream),
        timeouts,
        timer: None,
        deadline: None,
        seen_item: false,
        fresh_item: false,
    })
}

/// The stream behind [`with_timeouts`].
///
/// Written by hand so that an item costs no timer operation and no clock read: only when the
/// inner stream makes us wait is the deadline set (from the clock, if an item came since the
/// last wait), and the one timer, armed at the first wait, is re-armed to the current deadline
/// only when it fires early. (A fresh `tokio::time::timeout` per item would register and cancel
/// a timer for every delta.)
struct Timed {
    inner: Option<DeltaStream>,
    timeouts: Timeouts,
    timer: Option<Pin<Box<Sleep>>>,
    /// When the current wait times out.
    deadline: Option<Instant>,
    seen_item: bool,
    /// An item came since the deadline was set: the next wait starts a new idle period.
    fresh_item: bool,
}

impl Stream for Timed {
    type Item = Result<Delta>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(delta))) => {
                this.seen_item = true;
                this.fresh_item = true;
                return Poll::Ready(Some(Ok(delta)));
            }
            Poll::Ready(other) => {
                // An error or the end: nothing follows it.
                this.inner = None;
                this.timer = None;
                return Poll::Ready(other);
            }
            Poll::Pending => {}
        }
        let deadline = match this.deadline {
            Some(deadline) if !this.fresh_item => deadline,
            _ => {
                let limit = if this.seen_item {
                    this.timeouts.idle
                } else {
                    this.timeouts.first_byte
                };
                this.fresh_item = false;
                *this.deadline.insert(Instant::now() + limit)
            }
        };
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            // Armed for the first byte, now waiting on a shorter idle limit.
            timer.as_mut().reset(deadline);
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            if Instant::now() < deadline {
                // Armed for an earlier deadline, which items have since moved.
                timer.as_mut().reset(deadline);
                continue;
            }
            let (phase, limit) = if this.seen_item {
                (TimeoutPhase::Idle, this.timeouts.idle)
            } else {
                (TimeoutPhase::FirstByte, this.timeouts.first_byte)
            };
            // Dropping the inner stream closes its upstream connection at once.
            this.inner = None;
            this.timer = None;
            tracing::debug!(%phase, ?limit, "upstream timed out");
            return Poll::Ready(Some(Err(Error::Timeout {
                phase,
                after: limit,
            })));
        }
    }
}
