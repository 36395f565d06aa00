//! The context window: how much history a request carries, and building the request.

use std::collections::HashSet;

use futures::{TryStreamExt, stream::BoxStream};

use crate::{ChatRequest, Message, MessageId, MessageStatus, RequestMessage, Result, Role};

use super::tokens::{DEFAULT_CONTEXT_WINDOW, TokenCounter, context_window};

/// The most tokens kept back for the reply when no token limit is set: a quarter of the
/// window, up to this.
const DEFAULT_OUTPUT_RESERVE: usize = 8_192;

/// How much history a request may carry. History is read newest first and stops at the first
/// message that would overrun the budget, so a send reads only what it sends. Whatever the
/// budget, the system prompt is always sent, and so is the newest user message (the one just
/// sent) with whatever follows it; a tool result is sent only with the assistant message that
/// called it, never alone.
///
/// Tokens are counted by the model's [`TokenCounter`]: its tokenizer for OpenAI's models (with
/// the `tiktoken` feature), the estimate for the others.
///
/// The default is [`Model`](Self::Model): the model's context window less the room kept for
/// the reply. Set it for a service with
/// [`ChatServiceBuilder::context_budget`](crate::ChatServiceBuilder::context_budget), and for
/// one send with [`SendOptions::with_context_budget`](crate::SendOptions::with_context_budget).
///
/// ```
/// use chatstream::ContextBudget;
///
/// // gpt-4o's window is 128,000 tokens; without a token limit, 8,192 are kept for the reply.
/// assert_eq!(ContextBudget::Model.input_limit("gpt-4o", None), Some(128_000 - 8_192));
/// // With a token limit, that many are kept.
/// assert_eq!(ContextBudget::Model.input_limit("gpt-4o", Some(1_000)), Some(127_000));
/// // A model the table does not know gets 8,192, a quarter of it for the reply.
/// assert_eq!(ContextBudget::Model.input_limit("llama3.2", None), Some(6_144));
/// // A window set by hand (`CHATSTREAM_CONTEXT_TOKENS` in the server) replaces the table's.
/// assert_eq!(ContextBudget::Window(32_768).input_limit("llama3.2", Some(2_048)), Some(30_720));
/// assert_eq!(ContextBudget::Tokens(500).input_limit("gpt-4o", Some(1_000)), Some(500));
/// assert_eq!(ContextBudget::Unlimited.input_limit("gpt-4o", None), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ContextBudget {
    /// The model's context window ([`context_window`](super::context_window), or
    /// [8,192](super::DEFAULT_CONTEXT_WINDOW) tokens for a model the table does not know), less
    /// the reply's room: its token limit when one is set, else a quarter of the window up to
    /// 8,192 tokens (plus the thinking budget, when thinking is on without a limit).
    #[default]
    Model,
    /// A context window of this many tokens in place of the table's, less the reply's room as
    /// for [`Model`](Self::Model): for a model the table does not know, or a server that runs it
    /// with a smaller window.
    Window(usize),
    /// At most this many tokens of input, whatever the model and the reply's room.
    Tokens(usize),
    /// At most this many characters of message text (content and tool-call arguments).
    Chars(usize),
    /// The whole history: every send reads all of it, and a long chat ends up refused by the
    /// model on every send.
    Unlimited,
}

impl ContextBudget {
    /// What an image costs, in characters of text: about the 1,000 tokens a large image costs
    /// at the common providers (providers bill an image by its pixels, not by the bytes sent).
    pub const IMAGE_CHARS: usize = 4_000;

    /// How much input a request for `model` may carry, system prompt included: tokens, or
    /// characters for [`Chars`](Self::Chars); `None` when [`Unlimited`](Self::Unlimited).
    /// `max_output_tokens` is the reply's token limit, if one is set.
    pub fn input_limit(&self, model: &str, max_output_tokens: Option<u32>) -> Option<usize> {
        self.limit(model, max_output_tokens, None).map(|l| l.max)
    }

    /// The limit for a request for `model`, with the reply's token limit and thinking budget.
    pub(super) fn limit(
        &self,
        model: &str,
        max_output_tokens: Option<u32>,
        thinking_budget: Option<u32>,
    ) -> Option<Limit> {
        let window = match *self {
            ContextBudget::Model => context_window(model).unwrap_or(DEFAULT_CONTEXT_WINDOW),
            ContextBudget::Window(n) => n,
            ContextBudget::Tokens(n) => return Some(Limit::tokens(model, n)),
            ContextBudget::Chars(n) => {
                return Some(Limit {
                    measure: Measure::Chars,
                    max: n,
                });
            }
            ContextBudget::Unlimited => return None,
        };
        let reserve = match max_output_tokens {
            Some(limit) => limit as usize,
            None => {
                (window / 4).min(DEFAULT_OUTPUT_RESERVE) + thinking_budget.unwrap_or(0) as usize
            }
        };
        Some(Limit::tokens(model, window.saturating_sub(reserve)))
    }
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Measure {
    Chars,
    Tokens(TokenCounter),
}

/// A budget made concrete for one request: what to count, and how much of it fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Limit {
    pub(super) measure: Measure,
    pub(super) max: usize,
}

impl Limit {
    fn tokens(model: &str, max: usize) -> Self {
        Limit {
            measure: Measure::Tokens(TokenCounter::for_model(model)),
            max,
        }
    }

    /// What one message costs against this limit.
    pub(super) fn cost(&self, message: &RequestMessage) -> usize {
        match &self.measure {
            Measure::Tokens(counter) => counter.count(message),
            Measure::Chars => {
                message.content.chars().count()
                    + message.parts.iter().filter(|p| p.is_image()).count()
                        * ContextBudget::IMAGE_CHARS
                    + message
                        .tool_calls
                        .iter()
                        .map(|c| c.arguments.chars().count() + c.name.len())
                        .sum::<usize>()
            }
        }
    }

    /// Loads what counting needs, off the runtime's thread (a tokenizer's tables).
    pub(super) async fn load(&self) {
        if let Measure::Tokens(counter) = &self.measure {
            counter.load().await;
        }
    }

    /// What a piece of request text outside the messages costs (a tool's definition).
    pub(super) fn cost_text(&self, text: &str) -> usize {
        match &self.measure {
            Measure::Tokens(counter) => counter.count_text(text),
            Measure::Chars => text.chars().count(),
        }
    }

    /// This limit, at most `max`.
    pub(super) fn at_most(self, max: usize) -> Self {
        Limit {
            max: self.max.min(max),
            ..self
        }
    }
}

/// Chooses the history of a request, offered newest first: everything up to the newest user
/// message, then as much older history as the limit holds, stopping at the first message that
/// does not fit. Tool results wait for the assistant message that called them and go in with
/// it or not at all.
struct Picker {
    limit: Option<Limit>,
    used: usize,
    picked: Vec<RequestMessage>,
    /// Tool results waiting for their call, and what they cost.
    pending: Vec<RequestMessage>,
    pending_cost: usize,
    /// Whether the newest user message was picked: until then every message goes in.
    seen_user: bool,
}

impl Picker {
    fn new(limit: Option<Limit>, used: usize) -> Self {
        Picker {
            limit,
            used,
            picked: Vec::new(),
            pending: Vec::new(),
            pending_cost: 0,
            seen_user: false,
        }
    }

    fn cost(&self, message: &RequestMessage) -> usize {
        self.limit.as_ref().map_or(0, |l| l.cost(message))
    }

    fn fits(&self, cost: usize) -> bool {
        !self.seen_user
            || self
                .limit
                .as_ref()
                .is_none_or(|l| self.used.saturating_add(cost) <= l.max)
    }

    /// Takes the next older message; `false` once the budget is full (offer no more).
    fn offer(&mut self, message: RequestMessage) -> bool {
        let cost = self.cost(&message);
        if message.role == Role::Tool {
            self.pending_cost = self.pending_cost.saturating_add(cost);
            self.pending.push(message);
            return self.fits(self.pending_cost);
        }
        let answered = message.role == Role::Assistant && !message.tool_calls.is_empty();
        let group = if answered { self.pending_cost } else { 0 };
        if !self.fits(cost.saturating_add(group)) {
            return false;
        }
        if answered {
            self.picked.append(&mut self.pending);
            self.used = self.used.saturating_add(self.pending_cost);
        } else {
            // Results whose call is not the next older message are never sent alone.
            self.pending.clear();
        }
        self.pending_cost = 0;
        self.used = self.used.saturating_add(cost);
        self.seen_user |= message.role == Role::User;
        self.picked.push(message);
        true
    }

    /// The messages chosen, oldest first, after `system`.
    fn finish(self, system: Option<RequestMessage>) -> (Vec<RequestMessage>, usize) {
        let mut picked = self.picked;
        picked.extend(system);
        picked.reverse();
        (picked, self.used)
    }
}

/// What a request is built from, besides the chat's history.
#[derive(Debug)]
pub(super) struct Plan<'a> {
    /// The system prompt to send, if any.
    pub(super) system: Option<&'a str>,
    /// The model asked for, if not the provider's.
    pub(super) model: Option<&'a str>,
    /// The history's limit; `None` for all of it.
    pub(super) limit: Option<Limit>,
    /// What the request costs besides its messages (tool definitions).
    pub(super) overhead: usize,
}

/// A request as built: what it carries, for the retry with a tighter budget.
#[derive(Debug, Clone, Copy)]
pub(super) struct Built {
    /// The limit it was built under.
    pub(super) limit: Option<Limit>,
    /// What its messages and tool definitions cost under that limit (or under the estimate,
    /// without a limit).
    pub(super) used: usize,
}

impl Built {
    /// The same request with about half its history left out (the oldest first), for a retry
    /// after the model refused it as too long; `None` when there is nothing to leave out.
    pub(super) fn tighten(&self, request: &ChatRequest) -> Option<(ChatRequest, Built)> {
        let limit = self.limit.unwrap_or(Limit {
            measure: Measure::Tokens(TokenCounter::estimate()),
            max: usize::MAX,
        });
        let limit = limit.at_most(self.used / 2);
        let (system, history) = match request.messages.first() {
            Some(m) if m.role == Role::System => {
                (Some(&request.messages[0]), &request.messages[1..])
            }
            _ => (None, &request.messages[..]),
        };
        let overhead = self.used.saturating_sub(
            request
                .messages
                .iter()
                .map(|m| limit.cost(m))
                .sum::<usize>(),
        );
        let used = overhead + system.map_or(0, |m| limit.cost(m));
        let mut picker = Picker::new(Some(limit), used);
        for message in history.iter().rev() {
            if !picker.offer(message.clone()) {
                break;
            }
        }
        let (messages, used) = picker.finish(system.cloned());
        if messages.len() >= request.messages.len() {
            return None;
        }
        let mut smaller = request.clone();
        smaller.messages = messages;
        Some((
            smaller,
            Built {
                limit: Some(limit),
                used,
            },
        ))
    }
}

/// The request for a reply: the system prompt, then the newest of the chat's `messages` (given
/// newest first) that fit the plan's limit. With `superseded_replies_to`, the replies already
/// given to that user message are left out (a regenerated reply replaces them).
pub(super) async fn build_request(
    mut messages: BoxStream<'_, Result<Message>>,
    plan: &Plan<'_>,
    superseded_replies_to: Option<MessageId>,
) -> Result<(ChatRequest, Built)> {
    let system = plan
        .system
        .map(|p| RequestMessage::new(Role::System, p.to_owned()));
    let limit = plan.limit;
    let used = plan.overhead
        + system
            .as_ref()
            .map_or(0, |m| limit.map_or(0, |l| l.cost(m)));
    let mut picker = Picker::new(limit, used);
    let mut answered: HashSet<MessageId> = superseded_replies_to.into_iter().collect();
    while let Some(m) = messages.try_next().await? {
        // The reply being generated (and any stale one) is not context; an assistant message
        // that ended early is, with the part it got to.
        let empty_reply = m.role == Role::Assistant
            && (m.status == MessageStatus::Streaming
                || (m.content.is_empty() && m.tool_calls.is_empty()));
        // Only the newest reply to a user message is context: a regenerated reply replaces the
        // earlier ones.
        let superseded = m.role == Role::Assistant
            && !empty_reply
            && m.reply_to.is_some_and(|u| !answered.insert(u));
        if empty_reply || superseded {
            continue;
        }
        if !picker.offer(RequestMessage::from(&m)) {
            break;
        }
    }
    let (picked, mut used) = picker.finish(system);
    if limit.is_none() {
        // Without a limit nothing was counted; the estimate gives a retry something to halve.
        let estimate = TokenCounter::estimate();
        used = plan.overhead + picked.iter().map(|m| estimate.count(m)).sum::<usize>();
    }
    let mut request = ChatRequest::new(picked);
    request.model = plan.model.map(str::to_owned);
    Ok((request, Built { limit, used }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolCall;

    fn text(role: Role, content: &str) -> RequestMessage {
        RequestMessage::new(role, content)
    }

    fn call(id: &str) -> RequestMessage {
        let mut m = text(Role::Assistant, "");
        m.tool_calls.push(ToolCall {
            index: 0,
            id: id.into(),
            name: "f".into(),
            arguments: "{}".into(),
        });
        m
    }

    fn result(id: &str, content: &str) -> RequestMessage {
        let mut m = text(Role::Tool, content);
        m.tool_call_id = Some(id.into());
        m
    }

    fn chars(max: usize) -> Option<Limit> {
        Some(Limit {
            measure: Measure::Chars,
            max,
        })
    }

    /// Offers `history` (oldest first) newest first, as a send does.
    fn pick(limit: Option<Limit>, history: &[RequestMessage]) -> Vec<String> {
        let mut picker = Picker::new(limit, 0);
        for m in history.iter().rev() {
            if !picker.offer(m.clone()) {
                break;
            }
        }
        picker
            .finish(None)
            .0
            .into_iter()
            .map(|m| match m.tool_calls.first() {
                Some(c) => format!("call {}", c.id),
                None => m.content,
            })
            .collect()
    }

    #[test]
    fn a_tool_result_goes_with_its_call_or_not_at_all() {
        let history = [
            text(Role::User, "old"),
            call("c1"),
            result("c1", "0123456789"),
            text(Role::Assistant, "answer"),
            text(Role::User, "new"),
        ];
        // Room for the newest two and the result, not the call (1 + 2 characters): neither
        // the result nor the call goes.
        assert_eq!(pick(chars(3 + 6 + 10), &history), ["answer", "new"]);
        assert_eq!(
            pick(chars(3 + 6 + 10 + 3), &history),
            ["call c1", "0123456789", "answer", "new"]
        );
        assert_eq!(pick(None, &history).len(), 5);
        // A result whose call is gone from the history is never sent.
        assert_eq!(pick(None, &history[2..]), ["answer", "new"]);
    }

    #[test]
    fn everything_after_the_newest_user_message_is_sent() {
        let history = [
            text(Role::User, "old question"),
            text(Role::User, "the question"),
            call("c1"),
            result("c1", "a long tool result"),
        ];
        assert_eq!(
            pick(chars(0), &history),
            ["the question", "call c1", "a long tool result"]
        );
    }

    #[test]
    fn the_limits_of_each_budget() {
        let limit = |b: ContextBudget, max_out, thinking| b.limit("gpt-4o", max_out, thinking);
        assert_eq!(
            limit(ContextBudget::Model, None, Some(2_000)).map(|l| l.max),
            Some(128_000 - 8_192 - 2_000)
        );
        assert_eq!(
            limit(ContextBudget::Model, Some(200_000), None).map(|l| l.max),
            Some(0),
            "a token limit over the window leaves room for the newest message only"
        );
        assert_eq!(
            limit(ContextBudget::Window(1_000), None, None).map(|l| l.max),
            Some(750)
        );
        assert_eq!(
            ContextBudget::Chars(10).limit("gpt-4o", None, None),
            chars(10)
        );
        assert_eq!(ContextBudget::default(), ContextBudget::Model);
    }

    #[test]
    fn tightening_halves_the_history_and_keeps_the_system_prompt() {
        let limit = Limit {
            measure: Measure::Tokens(TokenCounter::estimate()),
            max: 1_000,
        };
        let messages: Vec<RequestMessage> = std::iter::once(text(Role::System, "sys"))
            .chain((0..10).map(|i| {
                text(
                    if i % 2 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    "0123456789abcdef",
                )
            }))
            .collect();
        let used = messages.iter().map(|m| limit.cost(m)).sum::<usize>();
        let request = ChatRequest::new(messages.clone());
        let built = Built {
            limit: Some(limit),
            used,
        };
        let (smaller, again) = built.tighten(&request).unwrap();
        assert_eq!(smaller.messages[0].content, "sys");
        assert!(again.used <= used / 2, "{} of {used}", again.used);
        assert_eq!(smaller.messages.last(), messages.last());
        assert!(smaller.messages.len() < messages.len());
        // The system prompt and the newest message alone cannot be tightened.
        let minimal = ChatRequest::new(vec![messages[0].clone(), messages[10].clone()]);
        let built = Built {
            limit: Some(limit),
            used: 20,
        };
        assert!(built.tighten(&minimal).is_none());
    }
}
