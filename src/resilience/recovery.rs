//! [`Recovering`]: carries on after a reply broke mid-stream, without repeating a token.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use futures::{Stream, StreamExt};

use crate::{
    Accumulator, ChatRequest, Delta, DeltaStream, Error, LlmProvider, RequestMessage, Result,
    RetryNotice, Role, ToolCallDelta,
};

/// How [`Recovering`] carries on after a mid-stream failure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// Resend the conversation with the partial reply appended as an assistant message, so the
    /// model continues it, and pass on only the continuation. A model that starts over anyway is
    /// caught: text that repeats what was already sent is dropped. The partial is sent without
    /// trailing whitespace (Anthropic refuses it), and a continuation that repeats that whitespace
    /// has it dropped. Reasoning in a continuation is dropped too: the reply was already past
    /// its reasoning. A partial reply with tool-call fragments, or with reasoning but no text
    /// yet, is recovered with [`RestartAndSkip`](RecoveryMode::RestartAndSkip) instead, since
    /// neither can be continued as assistant text.
    #[default]
    Continue,
    /// Resend the original request and skip, per channel (text, reasoning, each tool call's
    /// arguments, ids and names), as much as was already sent. Exact when the model is
    /// deterministic (temperature 0, a seed, a cache); otherwise the reply may not join up
    /// seamlessly.
    RestartAndSkip,
    /// Pass the error on.
    GiveUp,
}

/// When and how [`Recovering`] carries on after a mid-stream failure.
///
/// ```
/// use chatstream::resilience::{RecoveryMode, RecoveryPolicy};
///
/// let policy = RecoveryPolicy::default().with_mode(RecoveryMode::RestartAndSkip);
/// assert_eq!(policy.max_recoveries, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryPolicy {
    /// How to carry on (default [`RecoveryMode::Continue`]).
    pub mode: RecoveryMode,
    /// How many recoveries per reply at most (default 3).
    pub max_recoveries: u32,
}

impl Default for RecoveryPolicy {
    fn default() -> Self {
        RecoveryPolicy {
            mode: RecoveryMode::Continue,
            max_recoveries: 3,
        }
    }
}

impl RecoveryPolicy {
    /// Sets the mode.
    pub fn with_mode(mut self, mode: RecoveryMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets how many recoveries per reply at most.
    pub fn with_max_recoveries(mut self, max_recoveries: u32) -> Self {
        self.max_recoveries = max_recoveries;
        self
    }
}

/// Recovers a reply that failed with a retryable error after some output.
///
/// It starts a new upstream stream as its [`RecoveryPolicy`] says and passes on only content the
/// consumer has not seen, so the consumer never sees a token twice and the accumulated message
/// joins up seamlessly. A [`Delta::Retry`] goes out before each recovery. Failures before any
/// output pass through (retrying those is [`Retrying`]'s job; put it inside this wrapper so a
/// recovery attempt that fails before output is retried too). When the recoveries run out, or
/// the error is not retryable, the last error passes through. Usage and finish come from the
/// final attempt.
///
/// ```
/// use chatstream::{provider::DemoProvider, resilience::{RecoveryPolicy, ResilienceExt, RetryPolicy}};
///
/// let provider = DemoProvider::new()
///     .with_retry(RetryPolicy::default())
///     .with_recovery(RecoveryPolicy::default());
/// ```
///
/// [`Retrying`]: super::Retrying
#[derive(Debug)]
pub struct Recovering<P> {
    inner: Arc<P>,
    policy: RecoveryPolicy,
}

impl<P> Clone for Recovering<P> {
    fn clone(&self) -> Self {
        Recovering {
            inner: self.inner.clone(),
            policy: self.policy,
        }
    }
}

impl<P: LlmProvider> Recovering<P> {
    /// Wraps `inner`.
    pub fn new(inner: P, policy: RecoveryPolicy) -> Self {
        Recovering {
            inner: Arc::new(inner),
            policy,
        }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The policy.
    pub fn policy(&self) -> RecoveryPolicy {
        self.policy
    }
}

impl<P: LlmProvider> LlmProvider for Recovering<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn default_model(&self) -> &str {
        self.inner.default_model()
    }

    fn stream(&self, request: ChatRequest) -> DeltaStream {
        let first = self.inner.stream(request.clone());
        let state = State {
            inner: self.inner.clone() as Arc<dyn LlmProvider>,
            request,
            policy: self.policy,
            sent: Accumulator::new(),
            recoveries: 0,
            current: Some(first),
            filter: Filter::Pass,
            out: VecDeque::new(),
            done: false,
        };
        Box::pin(state)
    }
}

struct State {
    inner: Arc<dyn LlmProvider>,
    request: ChatRequest,
    policy: RecoveryPolicy,
    /// Everything passed on so far, to know what to continue from or skip.
    sent: Accumulator,
    recoveries: u32,
    current: Option<DeltaStream>,
    filter: Filter,
    /// Items ready to go out (a filter may turn one delta into two).
    out: VecDeque<Result<Delta>>,
    done: bool,
}

/// Written by hand rather than with `unfold`, so that a delta of a healthy reply passes
/// straight through: no state moved in and out of a future per item, no queueing.
impl Stream for State {
    type Item = Result<Delta>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let st = self.get_mut();
        loop {
            if let Some(item) = st.out.pop_front() {
                return Poll::Ready(Some(st.pass(item)));
            }
            if st.done {
                return Poll::Ready(None);
            }
            let Some(stream) = st.current.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(stream.poll_next_unpin(cx)) {
                None => {
                    st.current = None;
                    st.done = true;
                    st.filter.flush(&mut st.out);
                }
                Some(Ok(delta)) if matches!(st.filter, Filter::Pass) => {
                    return Poll::Ready(Some(st.pass(Ok(delta))));
                }
                Some(Ok(delta)) => st.filter.apply(delta, &mut st.out),
                Some(Err(error)) => {
                    // Close the broken attempt before anything else.
                    st.current = None;
                    if recoverable(st, &error) {
                        recover(st, &error);
                    } else {
                        st.done = true;
                        st.out.push_back(Err(error));
                    }
                }
            }
        }
    }
}

impl State {
    /// Notes an item going out: what was sent is what a recovery continues from.
    fn pass(&mut self, item: Result<Delta>) -> Result<Delta> {
        if let Ok(delta) = &item
            && delta.is_output()
        {
            self.sent.push(delta);
        }
        item
    }
}

fn recoverable(st: &State, error: &Error) -> bool {
    st.policy.mode != RecoveryMode::GiveUp
        && st.recoveries < st.policy.max_recoveries
        && error.is_retryable()
        && st.sent.has_output()
}

fn recover(st: &mut State, error: &Error) {
    st.recoveries += 1;
    #[cfg(feature = "metrics")]
    crate::metrics::recovery(st.inner.name(), error);
    let continuable = st.sent.tool_calls().is_empty() && !st.sent.text().trim_end().is_empty();
    let mut request = st.request.clone();
    st.filter = if st.policy.mode == RecoveryMode::Continue && continuable {
        let guard = ContinueGuard::new(st.sent.text().to_owned());
        // Anthropic rejects a final assistant message that ends in whitespace; the guard drops
        // that whitespace again if the continuation starts with it.
        request.messages.push(RequestMessage::new(
            Role::Assistant,
            guard.partial.trim_end(),
        ));
        Filter::Continue(guard)
    } else {
        Filter::Skip(Skip::from_sent(&st.sent))
    };
    tracing::debug!(
        provider = st.inner.name(),
        recovery = st.recoveries,
        mode = ?st.policy.mode,
        %error,
        "recovering a broken reply"
    );
    st.out.push_back(Ok(Delta::Retry(RetryNotice {
        attempt: st.recoveries + 1,
        provider: st.inner.name().to_owned(),
        reason: error.to_string(),
    })));
    st.current = Some(st.inner.stream(request));
}

/// What a recovery attempt's deltas go through before they are passed on.
enum Filter {
    /// The first attempt: everything is new.
    Pass,
    Skip(Skip),
    Continue(ContinueGuard),
}

impl Filter {
    fn apply(&mut self, delta: Delta, out: &mut VecDeque<Result<Delta>>) {
        match self {
            Filter::Pass => out.push_back(Ok(delta)),
            Filter::Skip(skip) => {
                if let Some(delta) = skip.apply(delta) {
                    out.push_back(Ok(delta));
                }
            }
            Filter::Continue(guard) => guard.apply(delta, out),
        }
    }

    /// The attempt ended: anything held back goes out.
    fn flush(&mut self, out: &mut VecDeque<Result<Delta>>) {
        if let Filter::Continue(guard) = self {
            guard.flush(out);
        }
    }
}

/// Skips, per channel, what a restarted reply repeats of what was already sent.
#[derive(Debug, Default)]
struct Skip {
    text: usize,
    reasoning: usize,
    tools: Vec<ToolSkip>,
}

#[derive(Debug)]
struct ToolSkip {
    index: u32,
    arguments: usize,
    id_sent: bool,
    name_sent: bool,
}

impl Skip {
    fn from_sent(sent: &Accumulator) -> Self {
        Skip {
            text: sent.text().len(),
            reasoning: sent.reasoning().len(),
            tools: sent
                .tool_calls()
                .iter()
                .map(|call| ToolSkip {
                    index: call.index,
                    arguments: call.arguments.len(),
                    id_sent: !call.id.is_empty(),
                    name_sent: !call.name.is_empty(),
                })
                .collect(),
        }
    }

    fn apply(&mut self, delta: Delta) -> Option<Delta> {
        match delta {
            Delta::Text { text } => skip_prefix(text, &mut self.text).map(Delta::text),
            Delta::Reasoning { text } => {
                skip_prefix(text, &mut self.reasoning).map(Delta::reasoning)
            }
            Delta::ToolCall(call) => self.apply_tool_call(call).map(Delta::ToolCall),
            other => Some(other),
        }
    }

    fn apply_tool_call(&mut self, mut call: ToolCallDelta) -> Option<ToolCallDelta> {
        let Some(seen) = self.tools.iter_mut().find(|t| t.index == call.index) else {
            return Some(call);
        };
        if seen.id_sent {
            call.id = None;
        }
        if seen.name_sent {
            call.name = None;
        }
        let arguments = skip_prefix(std::mem::take(&mut call.arguments), &mut seen.arguments);
        call.arguments = arguments.unwrap_or_default();
        let empty = call.id.is_none() && call.name.is_none() && call.arguments.is_empty();
        (!empty).then_some(call)
    }
}

/// Drops the first `*skip` bytes of `text` (counting them off `skip`); `None` when nothing is left.
fn skip_prefix(text: String, skip: &mut usize) -> Option<String> {
    if *skip == 0 {
        return (!text.is_empty()).then_some(text);
    }
    if text.len() <= *skip {
        *skip -= text.len();
        return None;
    }
    // When the restarted reply differs from the first, the cut may fall inside a character:
    // move on to the next boundary rather than split it (`str::ceil_char_boundary` is unstable).
    let mut at = *skip;
    while !text.is_char_boundary(at) {
        at += 1;
    }
    *skip = 0;
    let rest = &text[at..];
    (!rest.is_empty()).then(|| rest.to_owned())
}

/// Passes on a continuation, holding back text while it repeats the partial reply from its start.
///
/// Only the matched length is kept: what is held is always `partial[..matched]`. The partial is
/// sent without its trailing whitespace, which was already passed on: the continuation's new
/// text is stripped of as much of it as it repeats (`partial[whitespace..]` is what is left).
#[derive(Debug)]
struct ContinueGuard {
    partial: String,
    matched: usize,
    matching: bool,
    whitespace: usize,
}

impl ContinueGuard {
    fn new(partial: String) -> Self {
        ContinueGuard {
            whitespace: partial.trim_end().len(),
            partial,
            matched: 0,
            matching: true,
        }
    }

    fn apply(&mut self, delta: Delta, out: &mut VecDeque<Result<Delta>>) {
        match delta {
            Delta::Text { text } if self.matching => self.match_text(text, out),
            Delta::Text { text } => self.emit(text, out),
            // The reply was already past its reasoning when it broke; a continuation's reasoning
            // would land after the text it precedes (and its signatures with it).
            Delta::Reasoning { .. }
            | Delta::ThinkingSignature { .. }
            | Delta::RedactedThinking { .. } => {}
            Delta::ToolCall(_) | Delta::Finish { .. } => {
                self.flush(out);
                out.push_back(Ok(delta));
            }
            other => out.push_back(Ok(other)),
        }
    }

    fn match_text(&mut self, text: String, out: &mut VecDeque<Result<Delta>>) {
        let remaining = &self.partial.as_bytes()[self.matched..];
        if remaining.starts_with(text.as_bytes()) {
            self.matched += text.len();
            if self.matched == self.partial.len() {
                // The model started over and has now repeated the whole partial: drop it.
                self.matching = false;
                self.whitespace = self.partial.len();
            }
        } else if text.as_bytes().starts_with(remaining) {
            self.matching = false;
            self.whitespace = self.partial.len();
            if let Some(rest) = text.get(remaining.len()..).filter(|r| !r.is_empty()) {
                out.push_back(Ok(Delta::text(rest)));
            }
        } else {
            // A real continuation that merely began like the partial: what was held is new text.
            self.matching = false;
            let mut held = self.partial[..self.matched].to_owned();
            held.push_str(&text);
            self.emit(held, out);
        }
    }

    /// Passes on new text, minus any whitespace of the partial that it repeats at its start.
    fn emit(&mut self, text: String, out: &mut VecDeque<Result<Delta>>) {
        let mut text = text;
        if let Some(sent) = self
            .partial
            .get(self.whitespace..)
            .filter(|w| !w.is_empty())
        {
            let repeated: usize = text
                .chars()
                .zip(sent.chars())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a.len_utf8())
                .sum();
            // Keep stripping across deltas only while the whole delta was repeated whitespace.
            self.whitespace = if repeated == text.len() {
                self.whitespace + repeated
            } else {
                self.partial.len()
            };
            text.drain(..repeated);
        }
        if !text.is_empty() {
            out.push_back(Ok(Delta::Text { text }));
        }
    }

    fn flush(&mut self, out: &mut VecDeque<Result<Delta>>) {
        if self.matching {
            self.matching = false;
            if self.matched > 0 {
                let held = self.partial[..self.matched].to_owned();
                self.emit(held, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(out: VecDeque<Result<Delta>>) -> Vec<String> {
        out.into_iter()
            .map(|d| match d {
                Ok(Delta::Text { text }) => text,
                other => format!("<{other:?}>"),
            })
            .collect()
    }

    #[test]
    fn skip_prefix_respects_char_boundaries() {
        let mut skip = 3;
        assert_eq!(skip_prefix("ab".into(), &mut skip), None);
        assert_eq!(skip, 1);
        assert_eq!(skip_prefix("écrit".into(), &mut skip), Some("crit".into()));
        assert_eq!(skip, 0);
        // A cut inside "é" (2 bytes) moves past the character instead of panicking.
        let mut skip = 1;
        assert_eq!(skip_prefix("éa".into(), &mut skip), Some("a".into()));
        assert_eq!(skip_prefix(String::new(), &mut 0), None);
    }

    #[test]
    fn guard_passes_a_genuine_continuation() {
        let mut g = ContinueGuard::new("The cat".into());
        let mut out = VecDeque::new();
        g.apply(Delta::text(" sat"), &mut out);
        g.apply(Delta::text(" down"), &mut out);
        assert_eq!(texts(out), [" sat", " down"]);
    }

    #[test]
    fn guard_drops_a_restart_and_keeps_what_follows() {
        let mut g = ContinueGuard::new("The cat".into());
        let mut out = VecDeque::new();
        for piece in ["Th", "e c", "at sat", " down"] {
            g.apply(Delta::text(piece), &mut out);
        }
        assert_eq!(texts(out), [" sat", " down"]);
    }

    #[test]
    fn guard_flushes_held_text_when_the_continuation_diverges() {
        let mut g = ContinueGuard::new("The cat".into());
        let mut out = VecDeque::new();
        g.apply(Delta::text("The"), &mut out);
        assert!(out.is_empty());
        g.apply(Delta::text("re!"), &mut out);
        g.apply(Delta::finish(crate::FinishReason::Stop), &mut out);
        assert_eq!(texts(out), ["There!", "<Ok(Finish { reason: Stop })>"]);

        let mut g = ContinueGuard::new("The cat".into());
        let mut out = VecDeque::new();
        g.apply(Delta::text("The"), &mut out);
        g.apply(Delta::finish(crate::FinishReason::Stop), &mut out);
        assert_eq!(texts(out), ["The", "<Ok(Finish { reason: Stop })>"]);
    }

    #[test]
    fn guard_drops_whitespace_that_was_already_sent() {
        let pieces = |partial: &str, continuation: &[&str]| {
            let mut g = ContinueGuard::new(partial.into());
            let mut out = VecDeque::new();
            for piece in continuation {
                g.apply(Delta::text(*piece), &mut out);
            }
            texts(out).concat()
        };
        assert_eq!(
            pieces("Intro:\n\n", &["\n", "\nNext", " line"]),
            "Next line"
        );
        assert_eq!(pieces("Intro:\n\n", &["Next", " line"]), "Next line");
        assert_eq!(pieces("One two ", &[" three"]), "three");
        assert_eq!(pieces("One two ", &["\nthree"]), "\nthree");
        // A restart that repeats the whole partial, whitespace included, keeps what follows.
        assert_eq!(pieces("One two ", &["One", " two ", " three"]), " three");
    }

    #[test]
    fn skip_strips_sent_tool_call_ids_and_arguments() {
        let sent: Accumulator = [Delta::ToolCall(ToolCallDelta {
            index: 0,
            id: Some("c1".into()),
            name: Some("f".into()),
            arguments: "{\"a".into(),
        })]
        .into_iter()
        .collect();
        let mut skip = Skip::from_sent(&sent);
        let call = |id: Option<&str>, args: &str| {
            Delta::ToolCall(ToolCallDelta {
                index: 0,
                id: id.map(Into::into),
                name: id.map(|_| "f".into()),
                arguments: args.into(),
            })
        };
        assert_eq!(skip.apply(call(Some("c1"), "")), None);
        assert_eq!(skip.apply(call(None, "{")), None);
        assert_eq!(
            skip.apply(call(None, "\"a\":1}")),
            Some(call(None, "\":1}"))
        );
    }
}
