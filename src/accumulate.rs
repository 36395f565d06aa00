//! [`Accumulator`]: folds deltas into a reply.

use crate::{
    Delta, FinishReason, Message, ToolCall, Usage, delta::ToolCallDelta, provider::ThinkingBlock,
};

/// Folds a sequence of [`Delta`]s into a reply: text, reasoning, tool calls merged by index,
/// usage, finish reason and signed thinking blocks.
///
/// Pure and O(total bytes): each delta's text is appended once, nothing accumulated is copied
/// per delta.
///
/// ```
/// use chatstream::{Accumulator, Delta, FinishReason};
///
/// let mut acc = Accumulator::new();
/// for d in [Delta::text("Hel"), Delta::text("lo"), Delta::finish(FinishReason::Stop)] {
///     acc.push(&d);
/// }
/// assert_eq!(acc.text(), "Hello");
/// assert_eq!(acc.finish_reason(), Some(FinishReason::Stop));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accumulator {
    text: String,
    reasoning: String,
    tool_calls: Vec<ToolCall>,
    usage: Option<Usage>,
    finish_reason: Option<FinishReason>,
    deltas: u64,
    /// Where the reasoning of the next signed thinking block starts.
    thinking_from: usize,
    thinking: Vec<Thinking>,
}

/// A thinking block, its text a range of the reasoning so that it is not kept twice.
#[derive(Debug, Clone, PartialEq)]
enum Thinking {
    Signed {
        start: usize,
        end: usize,
        signature: String,
    },
    Redacted {
        data: String,
    },
    /// A block of the message the accumulator started from, whose text is kept whole.
    Kept(ThinkingBlock),
}

impl Accumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty accumulator with room for `bytes` of text, to avoid regrowing for long replies.
    pub fn with_capacity(bytes: usize) -> Self {
        Accumulator {
            text: String::with_capacity(bytes),
            ..Self::default()
        }
    }

    /// Starts from an existing partial reply (to continue it after a recovery), with its
    /// thinking blocks; the reasoning that comes next belongs to the blocks that follow them.
    pub fn from_message(message: &Message) -> Self {
        let reasoning = message.reasoning.clone().unwrap_or_default();
        Accumulator {
            text: message.content.clone(),
            thinking_from: reasoning.len(),
            reasoning,
            tool_calls: message.tool_calls.clone(),
            usage: message.usage,
            finish_reason: message.finish_reason,
            deltas: 0,
            thinking: message
                .thinking
                .iter()
                .cloned()
                .map(Thinking::Kept)
                .collect(),
        }
    }

    /// Folds one delta in.
    #[inline]
    pub fn push(&mut self, delta: &Delta) {
        self.deltas += 1;
        match delta {
            Delta::Text { text } => self.text.push_str(text),
            Delta::Reasoning { text } => self.reasoning.push_str(text),
            Delta::ToolCall(call) => self.push_tool_call(call),
            Delta::Usage(usage) => self.usage = Some(*usage),
            Delta::Finish { reason } => self.finish_reason = Some(*reason),
            Delta::Retry(_) => {}
            Delta::ThinkingSignature { signature } => {
                let end = self.reasoning.len();
                self.thinking.push(Thinking::Signed {
                    start: std::mem::replace(&mut self.thinking_from, end),
                    end,
                    signature: signature.clone(),
                });
            }
            Delta::RedactedThinking { data } => {
                self.thinking
                    .push(Thinking::Redacted { data: data.clone() });
            }
        }
    }

    #[inline]
    fn push_tool_call(&mut self, call: &ToolCallDelta) {
        // Calls are kept sorted by index, and indexes are nearly always 0, 1, 2, …: the call's
        // position is its index, checked in O(1); otherwise a binary search finds or places it.
        let position = match self.tool_calls.get(call.index as usize) {
            Some(c) if c.index == call.index => call.index as usize,
            _ => match self
                .tool_calls
                .binary_search_by_key(&call.index, |c| c.index)
            {
                Ok(i) => i,
                Err(at) => {
                    self.tool_calls.insert(
                        at,
                        ToolCall {
                            index: call.index,
                            ..ToolCall::default()
                        },
                    );
                    at
                }
            },
        };
        let slot = &mut self.tool_calls[position];
        if let Some(id) = &call.id
            && slot.id.is_empty()
        {
            slot.id.push_str(id);
        }
        if let Some(name) = &call.name
            && slot.name.is_empty()
        {
            slot.name.push_str(name);
        }
        slot.arguments.push_str(&call.arguments);
    }

    /// The reply text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The reasoning text so far.
    pub fn reasoning(&self) -> &str {
        &self.reasoning
    }

    /// The tool calls so far, by index.
    pub fn tool_calls(&self) -> &[ToolCall] {
        &self.tool_calls
    }

    /// The last usage reported.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The finish reason, once the model finished.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish_reason
    }

    /// The reply's signed thinking blocks, in order: each signature with the reasoning text that
    /// came since the previous block, and the redacted blocks, ready to be sent back to Anthropic
    /// in [`RequestMessage::thinking`](crate::RequestMessage::thinking). Empty for providers that
    /// sign nothing. [`apply_to`](Self::apply_to) and [`into_message`](Self::into_message) put
    /// them in [`Message::thinking`], so a stored reply hands them on to the next request.
    ///
    /// ```
    /// use chatstream::{Accumulator, Delta, provider::ThinkingBlock};
    ///
    /// let mut acc = Accumulator::new();
    /// acc.push(&Delta::reasoning("Let me think."));
    /// acc.push(&Delta::ThinkingSignature { signature: "sig".into() });
    /// acc.push(&Delta::RedactedThinking { data: "enc".into() });
    /// assert_eq!(
    ///     acc.thinking_blocks(),
    ///     [
    ///         ThinkingBlock::Thinking { text: "Let me think.".into(), signature: "sig".into() },
    ///         ThinkingBlock::Redacted { data: "enc".into() },
    ///     ]
    /// );
    /// ```
    pub fn thinking_blocks(&self) -> Vec<ThinkingBlock> {
        self.thinking
            .iter()
            .map(|block| match block {
                Thinking::Signed {
                    start,
                    end,
                    signature,
                } => ThinkingBlock::Thinking {
                    text: self.reasoning[*start..*end].to_owned(),
                    signature: signature.clone(),
                },
                Thinking::Redacted { data } => ThinkingBlock::Redacted { data: data.clone() },
                Thinking::Kept(block) => block.clone(),
            })
            .collect()
    }

    /// How many deltas were folded in.
    pub fn delta_count(&self) -> u64 {
        self.deltas
    }

    /// Whether no reply content (text, reasoning, tool call) has arrived yet.
    pub fn has_output(&self) -> bool {
        !(self.text.is_empty() && self.reasoning.is_empty() && self.tool_calls.is_empty())
    }

    /// Copies the reply so far into `message` (for checkpoints; the accumulator keeps going).
    pub fn apply_to(&self, message: &mut Message) {
        message.content.clone_from(&self.text);
        message.reasoning = (!self.reasoning.is_empty()).then(|| self.reasoning.clone());
        message.tool_calls.clone_from(&self.tool_calls);
        message.usage = self.usage;
        message.finish_reason = self.finish_reason;
        message.thinking = self.thinking_blocks();
    }

    /// Moves the reply into `message` and returns it.
    pub fn into_message(self, mut message: Message) -> Message {
        message.thinking = self.thinking_blocks();
        message.content = self.text;
        message.reasoning = (!self.reasoning.is_empty()).then_some(self.reasoning);
        message.tool_calls = self.tool_calls;
        message.usage = self.usage;
        message.finish_reason = self.finish_reason;
        message
    }
}

impl<'a> Extend<&'a Delta> for Accumulator {
    fn extend<I: IntoIterator<Item = &'a Delta>>(&mut self, iter: I) {
        for d in iter {
            self.push(d);
        }
    }
}

impl Extend<Delta> for Accumulator {
    fn extend<I: IntoIterator<Item = Delta>>(&mut self, iter: I) {
        for d in iter {
            self.push(&d);
        }
    }
}

impl FromIterator<Delta> for Accumulator {
    fn from_iter<I: IntoIterator<Item = Delta>>(iter: I) -> Self {
        let mut acc = Accumulator::new();
        acc.extend(iter);
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChatId;

    fn call(index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> Delta {
        Delta::ToolCall(ToolCallDelta {
            index,
            id: id.map(Into::into),
            name: name.map(Into::into),
            arguments: args.into(),
        })
    }

    #[test]
    fn merges_tool_calls_by_index() {
        let acc: Accumulator = [
            Delta::text("I'll check."),
            call(1, Some("b"), Some("time"), ""),
            call(0, Some("a"), Some("weather"), "{\"lo"),
            call(1, None, None, "{}"),
            call(0, None, None, "c\":1}"),
            Delta::usage(5, 7),
            Delta::finish(FinishReason::ToolCalls),
        ]
        .into_iter()
        .collect();
        let calls = acc.tool_calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].index, &*calls[0].id, &*calls[0].name),
            (0, "a", "weather")
        );
        assert_eq!(calls[0].arguments, "{\"loc\":1}");
        assert_eq!(
            (calls[1].id.as_str(), calls[1].arguments.as_str()),
            ("b", "{}")
        );
        assert_eq!(
            acc.usage(),
            Some(Usage {
                input_tokens: 5,
                output_tokens: 7
            })
        );
        let m = acc.into_message(Message::assistant_streaming(ChatId::generate()));
        assert_eq!(m.content, "I'll check.");
        assert_eq!(m.finish_reason, Some(FinishReason::ToolCalls));
    }

    #[test]
    fn later_usage_replaces_and_reasoning_is_apart() {
        let mut acc = Accumulator::new();
        acc.extend([
            Delta::reasoning("hm"),
            Delta::usage(1, 1),
            Delta::usage(1, 9),
            Delta::text("ok"),
        ]);
        assert_eq!(acc.reasoning(), "hm");
        assert_eq!(acc.text(), "ok");
        assert_eq!(acc.usage().unwrap().output_tokens, 9);
        let mut m = Message::assistant_streaming(ChatId::generate());
        acc.apply_to(&mut m);
        assert_eq!(m.reasoning.as_deref(), Some("hm"));
        assert_eq!(Accumulator::from_message(&m).text(), "ok");
    }

    #[test]
    fn thinking_blocks_split_the_reasoning_at_each_signature() {
        let mut m = Message::assistant_streaming(ChatId::generate());
        m.reasoning = Some("earlier ".into());
        let mut acc = Accumulator::from_message(&m);
        acc.extend([
            Delta::reasoning("one "),
            Delta::reasoning("two"),
            Delta::ThinkingSignature {
                signature: "s1".into(),
            },
            Delta::RedactedThinking { data: "r".into() },
            Delta::reasoning("three"),
            Delta::ThinkingSignature {
                signature: "s2".into(),
            },
        ]);
        assert_eq!(acc.reasoning(), "earlier one twothree");
        assert_eq!(
            acc.thinking_blocks(),
            [
                ThinkingBlock::Thinking {
                    text: "one two".into(),
                    signature: "s1".into()
                },
                ThinkingBlock::Redacted { data: "r".into() },
                ThinkingBlock::Thinking {
                    text: "three".into(),
                    signature: "s2".into()
                },
            ]
        );
    }

    #[test]
    fn thinking_blocks_are_kept_in_the_message_and_carried_on() {
        let mut acc = Accumulator::new();
        acc.extend([
            Delta::reasoning("a"),
            Delta::ThinkingSignature {
                signature: "s1".into(),
            },
            Delta::text("x"),
        ]);
        let m = acc.into_message(Message::assistant_streaming(ChatId::generate()));
        let first = ThinkingBlock::Thinking {
            text: "a".into(),
            signature: "s1".into(),
        };
        assert_eq!(m.thinking, std::slice::from_ref(&first));
        // A reply continued after a recovery keeps its blocks and adds the new ones.
        let mut acc = Accumulator::from_message(&m);
        acc.extend([
            Delta::reasoning("b"),
            Delta::ThinkingSignature {
                signature: "s2".into(),
            },
        ]);
        let mut again = m.clone();
        acc.apply_to(&mut again);
        assert_eq!(
            again.thinking,
            [
                first,
                ThinkingBlock::Thinking {
                    text: "b".into(),
                    signature: "s2".into()
                }
            ]
        );
    }
}
