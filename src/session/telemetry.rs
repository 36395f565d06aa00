//! What a reply reports as it runs: its `tracing` span, with OpenTelemetry's GenAI attribute
//! names, and (feature `metrics`) its metrics.
//!
//! The span is `gen_ai.chat`, exported to OpenTelemetry as `chat {model}` (`otel.name`) of kind
//! client, with `gen_ai.operation.name`, `gen_ai.provider.name` (and the older
//! `gen_ai.system`), `gen_ai.request.model` and `gen_ai.conversation.id` (the chat id) from the
//! start, and `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`,
//! `gen_ai.response.finish_reasons`, `gen_ai.response.time_to_first_chunk` (seconds),
//! `chatstream.reply.status`, `chatstream.reply.deltas` and, for a failed reply, `error.type`
//! recorded when the reply ends. It never holds a key, a token or message content.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{Span, field::Empty};

use crate::{ChatId, Delta, Error, FinishReason, MessageId, MessageStatus, Usage};

/// The span and metrics of one reply, from its upstream request to its final write.
pub(super) struct ReplyTelemetry {
    span: Span,
    started: Instant,
    first_delta: Option<Duration>,
    relayed: u64,
    #[cfg(feature = "metrics")]
    metrics: crate::metrics::ReplyMetrics,
}

/// How a reply ended, as its telemetry reports it.
pub(super) struct Outcome<'a> {
    pub(super) status: MessageStatus,
    /// The error that failed the reply (not a shutdown's).
    pub(super) failure: Option<&'a Error>,
    pub(super) finish_reason: Option<FinishReason>,
    pub(super) usage: Option<Usage>,
}

impl ReplyTelemetry {
    /// Opens the reply's span as a child of the current one (the request that started it).
    pub(super) fn start(
        provider: &str,
        model: &str,
        chat_id: &ChatId,
        message_id: MessageId,
    ) -> Self {
        let span = tracing::info_span!(
            "gen_ai.chat",
            otel.name = %format_args!("chat {model}"),
            otel.kind = "client",
            otel.status_code = Empty,
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = provider,
            // The name before semantic conventions 1.37, still what many backends read.
            gen_ai.system = provider,
            gen_ai.request.model = model,
            gen_ai.conversation.id = %chat_id,
            chatstream.message_id = %message_id,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            gen_ai.response.finish_reasons = Empty,
            gen_ai.response.time_to_first_chunk = Empty,
            chatstream.reply.status = Empty,
            chatstream.reply.deltas = Empty,
            error.type = Empty,
        );
        ReplyTelemetry {
            span,
            started: Instant::now(),
            first_delta: None,
            relayed: 0,
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::ReplyMetrics::start(provider),
        }
    }

    /// The reply's span, to run its task in.
    pub(super) fn span(&self) -> Span {
        self.span.clone()
    }

    /// A delta was relayed. On the hot path: two plain field updates, nothing shared.
    #[inline]
    pub(super) fn delta(&mut self, delta: &Delta) {
        self.relayed += 1;
        if self.first_delta.is_none() && delta.is_output() {
            self.first_delta = Some(self.started.elapsed());
        }
    }

    /// A checkpoint: the deltas relayed so far are added to the metrics, so that a long reply
    /// shows progress before it ends.
    pub(super) fn checkpoint(&mut self) {
        #[cfg(feature = "metrics")]
        self.metrics.relayed(self.relayed);
    }

    /// The reply ended and its final state is written.
    pub(super) fn finish(self, outcome: Outcome<'_>) {
        let span = &self.span;
        span.record("chatstream.reply.status", outcome.status.as_str());
        span.record("chatstream.reply.deltas", self.relayed);
        if let Some(first) = self.first_delta {
            span.record("gen_ai.response.time_to_first_chunk", first.as_secs_f64());
        }
        if let Some(reason) = outcome.finish_reason {
            span.record("gen_ai.response.finish_reasons", reason.as_str());
        }
        if let Some(usage) = outcome.usage {
            span.record("gen_ai.usage.input_tokens", usage.input_tokens);
            span.record("gen_ai.usage.output_tokens", usage.output_tokens);
        }
        if let Some(error) = outcome.failure {
            span.record("error.type", error.code());
            span.record("otel.status_code", "error");
        }
        #[cfg(feature = "metrics")]
        self.metrics.finish(
            outcome.status,
            outcome.failure,
            self.relayed,
            self.first_delta,
            self.started.elapsed(),
            outcome.usage,
        );
    }
}

/// Runs one write of a reply to `store` (`checkpoint` or `final`), timed when metrics are on.
pub(super) async fn timed_write<T>(
    store: &'static str,
    write: &'static str,
    op: impl Future<Output = crate::Result<T>>,
) -> crate::Result<T> {
    #[cfg(feature = "metrics")]
    {
        let started = Instant::now();
        let result = op.await;
        crate::metrics::store_write(store, write, started.elapsed(), result.is_ok());
        result
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (store, write);
        op.await
    }
}
