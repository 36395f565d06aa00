//! The detached task of one reply: provider stream in, hub events and store checkpoints out,
//! and the final write.

use std::{
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use futures::StreamExt;
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    Accumulator, ChatRequest, Delta, Error, Generation, Message, MessageStatus, RetryNotice,
    hub::EventPayload, hub::ReplyPublisher,
};

use super::{
    context::Built,
    service::Inner,
    telemetry::{Outcome, ReplyTelemetry, timed_write},
};

/// How a reply's generation ended.
enum End {
    Complete,
    Cancelled,
    Failed(Error),
    /// The service shut down before the reply finished.
    Interrupted,
}

/// The task of one reply: provider stream in, hub events and store checkpoints out.
pub(super) struct ReplyRun {
    pub(super) service: Arc<Inner>,
    pub(super) publisher: Box<dyn ReplyPublisher>,
    pub(super) cancel: CancellationToken,
    pub(super) finished: Arc<AtomicBool>,
    /// The assistant message as first stored; the reply's content lives in the accumulator.
    pub(super) message: Message,
    /// The checkpoint write in flight, if any: at most one at a time, and the reply never waits
    /// for it (a slow store must not slow the stream).
    pub(super) checkpoint_write: Option<tokio::task::JoinHandle<()>>,
}

async fn wait_write(write: &mut Option<tokio::task::JoinHandle<()>>) {
    match write {
        Some(w) => {
            let _ = w.await;
        }
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl ReplyRun {
    /// The reply's task. Its span opens here, in the caller's span (the request that started
    /// the reply), rather than in the task, which has none.
    pub(super) fn run(
        mut self,
        request: ChatRequest,
        built: Built,
    ) -> impl Future<Output = ()> + Send + 'static {
        let provider = self.service.provider.as_ref();
        let model = request
            .model
            .as_deref()
            .unwrap_or_else(|| provider.default_model());
        // Every write of the reply, its first checkpoint on, says what produced it.
        self.message.generation = Some(Generation::of(
            &request,
            provider.name(),
            provider.default_model(),
        ));
        let telemetry = ReplyTelemetry::start(
            provider.name(),
            model,
            &self.message.chat_id,
            self.message.id,
        );
        let span = telemetry.span();
        // Kept for the one retry with less history, should the model refuse it as too long;
        // boxed, and dropped at the first output, so that a live reply's task does not carry a
        // request (the task's future holds only what every live reply needs).
        let too_long_retry = Some(Box::new((request.clone(), built)));
        // In the reply's span, as the task's polls of it will be.
        let upstream = span.in_scope(|| provider.stream(request));
        self.generate(upstream, too_long_retry, telemetry)
            .instrument(span)
    }

    async fn generate(
        mut self,
        mut upstream: crate::DeltaStream,
        mut too_long_retry: Option<Box<(ChatRequest, Built)>>,
        mut telemetry: ReplyTelemetry,
    ) {
        let service = self.service.clone();
        let settings = &service.settings;
        let mut acc = Accumulator::new();
        let token = self.cancel.clone();
        let mut cancelled = pin!(token.cancelled());
        let shutdown = service.shutdown.clone();
        let mut shutting_down = pin!(shutdown.cancelled());
        let mut checkpoint_due = pin!(tokio::time::sleep(Duration::ZERO));
        let mut unsaved: u64 = 0;
        let mut watch = settings.unwatched_timeout.map(|t| {
            let mut i = tokio::time::interval((t / 4).max(Duration::from_millis(1)));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut unwatched_since: Option<Instant> = None;
        let mut checkpoint_owed = false;
        let end = loop {
            tokio::select! {
                biased;
                () = &mut cancelled => break End::Cancelled,
                () = &mut shutting_down => break End::Interrupted,
                () = &mut checkpoint_due, if unsaved > 0 && !checkpoint_owed => {
                    if self.checkpoint(&acc, &mut telemetry) {
                        unsaved = 0;
                    } else {
                        checkpoint_owed = true;
                    }
                }
                _ = wait_write(&mut self.checkpoint_write), if self.checkpoint_write.is_some() => {
                    self.checkpoint_write = None;
                    // A checkpoint that came due during the write goes now, with all since.
                    if checkpoint_owed && self.checkpoint(&acc, &mut telemetry) {
                        checkpoint_owed = false;
                        unsaved = 0;
                    }
                }
                () = tick(&mut watch) => {
                    // Boxed, as the other rare awaits below: the task's future is sized by its
                    // largest await, for the whole life of the reply.
                    if Box::pin(self.unwatched_for_too_long(&mut unwatched_since)).await {
                        break End::Cancelled;
                    }
                }
                item = upstream.next() => match item {
                    Some(Ok(delta)) => {
                        if delta.is_output() {
                            // Past the first output, a refusal can no longer be retried.
                            too_long_retry = None;
                        }
                        acc.push(&delta);
                        telemetry.delta(&delta);
                        if unsaved == 0 {
                            checkpoint_due
                                .as_mut()
                                .reset(Instant::now() + settings.checkpoint_every);
                        }
                        unsaved += 1;
                        if let Err(e) = self.publisher.publish(EventPayload::Delta(delta)).await {
                            tracing::warn!(chat_id = %self.message.chat_id, error = %e, "hub publish failed");
                        }
                        if unsaved >= settings.checkpoint_deltas && !checkpoint_owed {
                            if self.checkpoint(&acc, &mut telemetry) {
                                unsaved = 0;
                            } else {
                                checkpoint_owed = true;
                            }
                        }
                        // A provider that is always ready (in memory, or a fast local server)
                        // must not starve other tasks of this worker.
                        tokio::task::consume_budget().await;
                    }
                    Some(Err(e)) => {
                        if e.is_context_length_exceeded()
                            && !acc.has_output()
                            && let Some((smaller, _)) = too_long_retry
                                .take()
                                .and_then(|retry| retry.1.tighten(&retry.0))
                        {
                            upstream = Box::pin(self.retry_shorter(smaller, &e)).await;
                            continue;
                        }
                        break End::Failed(e);
                    }
                    None if acc.finish_reason().is_some() => break End::Complete,
                    None => break End::Failed(Error::Truncated {
                        provider: service.provider.name().to_owned(),
                    }),
                },
            }
        };
        // Closes the upstream connection now, before anything else.
        drop(upstream);
        // Boxed: the ending's state is only needed at the end, not for the whole live reply.
        Box::pin(self.finish(acc, end, telemetry)).await;
    }

    /// Sends `request` (the reply's request with less history) after the model refused the
    /// longer one with `error`, and tells the reply's followers.
    async fn retry_shorter(&mut self, request: ChatRequest, error: &Error) -> crate::DeltaStream {
        let provider = self.service.provider.clone();
        tracing::warn!(
            chat_id = %self.message.chat_id,
            messages = request.messages.len(),
            %error,
            "the request exceeds the model's context window; sending it with less history"
        );
        let notice = Delta::Retry(RetryNotice {
            attempt: 2,
            provider: provider.name().to_owned(),
            reason: error.to_string(),
        });
        if let Err(e) = self.publisher.publish(EventPayload::Delta(notice)).await {
            tracing::warn!(chat_id = %self.message.chat_id, error = %e, "hub publish failed");
        }
        provider.stream(request)
    }

    async fn unwatched_for_too_long(&self, since: &mut Option<Instant>) -> bool {
        let Some(timeout) = self.service.settings.unwatched_timeout else {
            return false;
        };
        match self.service.hub.watchers(&self.message.key()).await {
            Ok(Some(0)) => {
                let since = *since.get_or_insert_with(Instant::now);
                if since.elapsed() >= timeout {
                    tracing::info!(chat_id = %self.message.chat_id, "cancelling a reply nobody watches");
                    return true;
                }
            }
            Ok(_) => *since = None,
            Err(e) => tracing::warn!(error = %e, "could not count a reply's watchers"),
        }
        false
    }

    /// Starts writing the reply so far, unless a write is still in flight (then returns
    /// `false`, and the caller tries again when it is done).
    fn checkpoint(&mut self, acc: &Accumulator, telemetry: &mut ReplyTelemetry) -> bool {
        if self
            .checkpoint_write
            .as_ref()
            .is_some_and(|w| !w.is_finished())
        {
            return false;
        }
        let mut snapshot = self.message.clone();
        acc.apply_to(&mut snapshot);
        snapshot.updated_at = Utc::now();
        telemetry.checkpoint();
        let store = self.service.store.clone();
        self.checkpoint_write = Some(tokio::spawn(async move {
            let write = store.update(&snapshot);
            if let Err(e) = timed_write(store.backend(), "checkpoint", write).await {
                tracing::warn!(
                    chat_id = %snapshot.chat_id,
                    message_id = %snapshot.id,
                    error = %e,
                    "checkpoint failed; the reply goes on"
                );
            }
        }));
        true
    }

    async fn finish(self, acc: Accumulator, end: End, telemetry: ReplyTelemetry) {
        let ReplyRun {
            service,
            mut publisher,
            finished,
            message,
            checkpoint_write,
            ..
        } = self;
        // The final write must land after any checkpoint, never be overwritten by one.
        if let Some(write) = checkpoint_write {
            let _ = write.await;
        }
        let (status, error) = match end {
            End::Complete => (MessageStatus::Complete, None),
            End::Cancelled => (MessageStatus::Cancelled, None),
            End::Failed(e) => (MessageStatus::Failed, Some(e)),
            End::Interrupted => (MessageStatus::Interrupted, Some(Error::ShuttingDown)),
        };
        let failure = error.as_ref().filter(|_| status == MessageStatus::Failed);
        if let Some(e) = &error
            && let Err(hub_error) = publisher.publish(EventPayload::error(e)).await
        {
            tracing::warn!(error = %hub_error, "hub publish failed");
        }
        let finish_reason = acc.finish_reason();
        let usage = acc.usage();
        let mut message = acc.into_message(message);
        message.status = status;
        message.error = error.as_ref().map(ToString::to_string);
        message.updated_at = Utc::now();
        persist_final(&service, &message).await;
        // Before `done`, so that whoever saw the reply end sees it counted.
        telemetry.finish(Outcome {
            status,
            failure,
            finish_reason,
            usage,
        });
        finished.store(true, Ordering::Release);
        let done = EventPayload::Done {
            message_id: message.id,
            status,
            finish_reason,
            usage,
        };
        if let Err(e) = publisher.publish(done).await {
            tracing::warn!(error = %e, "hub publish of the end of a reply failed");
        }
    }
}

/// The final write, retried a few times: it is the one that matters.
pub(super) async fn persist_final(service: &Inner, message: &Message) {
    const ATTEMPTS: u32 = 4;
    let mut wait = Duration::from_millis(50);
    for attempt in 1..=ATTEMPTS {
        let write = service.store.update(message);
        match timed_write(service.store.backend(), "final", write).await {
            Ok(()) => return,
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(message_id = %message.id, attempt, error = %e, "final write failed; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => {
                tracing::error!(message_id = %message.id, error = %e, "final write failed; the message stays as last checkpointed");
            }
        }
    }
}
