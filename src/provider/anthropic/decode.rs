//! The Messages stream decoder: one flat borrowed struct per event, folded into deltas.

use std::collections::VecDeque;

use serde::Deserialize;

use crate::{
    Delta, FinishReason, Result, Usage,
    delta::ToolCallDelta,
    provider::http::{self, EventParser, Step, Str, non_empty},
};

/// One event's payload, all event types in one flat struct: serde's tagged enums buffer their
/// content, which would defeat borrowing. An `error` event's object is parsed again on its rare
/// path, which keeps this struct small.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    message: Option<MessageStart>,
    /// Boxed: it comes once per block, and a small struct keeps the hot path fast.
    #[serde(borrow, default)]
    content_block: Option<Box<ContentBlock<'a>>>,
    #[serde(borrow, default)]
    delta: Option<Box<EventDelta<'a>>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct MessageStart {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ContentBlock<'a> {
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    thinking: Option<Str<'a>>,
    /// A `redacted_thinking` block's encrypted thinking.
    #[serde(borrow, default)]
    data: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    thinking: Option<Str<'a>>,
    #[serde(borrow, default)]
    partial_json: Option<Str<'a>>,
    #[serde(borrow, default)]
    signature: Option<Str<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Str<'a>>,
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        // The context window ran out: the same as hitting the token limit for the caller.
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

/// One reply's decoding state between events. `pub` only because the provider's `HttpApi`
/// names it; its module is private.
#[derive(Debug, Default)]
pub struct Parser {
    input_tokens: u64,
    output_tokens: Option<u64>,
    /// The tool-call index of each content block that is a `tool_use` block.
    tool_blocks: Vec<(u32, u32)>,
    finished: bool,
}

impl Parser {
    fn tool_index(&self, block: u32) -> Option<u32> {
        self.tool_blocks
            .iter()
            .rev()
            .find(|(b, _)| *b == block)
            .map(|(_, tool)| *tool)
    }

    fn finish(&mut self, reason: FinishReason, out: &mut VecDeque<Delta>) {
        out.push_back(Delta::finish(reason));
        if let Some(output_tokens) = self.output_tokens {
            out.push_back(Delta::Usage(Usage {
                input_tokens: self.input_tokens,
                output_tokens,
            }));
        }
        self.finished = true;
    }
}

impl EventParser for Parser {
    fn finished(&self) -> bool {
        self.finished
    }

    fn event(&mut self, provider: &str, data: &str, out: &mut VecDeque<Delta>) -> Result<Step> {
        let event: Event<'_> =
            serde_json::from_str(data).map_err(|e| http::bad_json(provider, &e, data))?;
        match event.kind.as_str() {
            "content_block_delta" if !self.finished => {
                let Some(delta) = event.delta else {
                    return Ok(Step::Continue);
                };
                match delta.kind.as_ref().map(Str::as_str) {
                    Some("text_delta") => {
                        if let Some(text) = non_empty(delta.text) {
                            out.push_back(Delta::Text { text });
                        }
                    }
                    Some("thinking_delta") => {
                        if let Some(text) = non_empty(delta.thinking) {
                            out.push_back(Delta::Reasoning { text });
                        }
                    }
                    Some("input_json_delta") => {
                        let tool = event.index.and_then(|b| self.tool_index(b));
                        if let (Some(index), Some(arguments)) =
                            (tool, non_empty(delta.partial_json))
                        {
                            out.push_back(Delta::ToolCall(ToolCallDelta {
                                index,
                                id: None,
                                name: None,
                                arguments,
                            }));
                        }
                    }
                    Some("signature_delta") => {
                        if let Some(signature) = non_empty(delta.signature) {
                            out.push_back(Delta::ThinkingSignature { signature });
                        }
                    }
                    // Kinds added later.
                    _ => {}
                }
            }
            "content_block_start" if !self.finished => {
                let Some(block) = event.content_block else {
                    return Ok(Step::Continue);
                };
                match block.kind.as_str() {
                    "tool_use" => {
                        let index = self.tool_blocks.len() as u32;
                        self.tool_blocks.push((event.index.unwrap_or(index), index));
                        out.push_back(Delta::ToolCall(ToolCallDelta {
                            index,
                            id: non_empty(block.id),
                            name: non_empty(block.name),
                            arguments: String::new(),
                        }));
                    }
                    "text" => {
                        if let Some(text) = non_empty(block.text) {
                            out.push_back(Delta::Text { text });
                        }
                    }
                    "thinking" => {
                        if let Some(text) = non_empty(block.thinking) {
                            out.push_back(Delta::Reasoning { text });
                        }
                    }
                    "redacted_thinking" => {
                        if let Some(data) = non_empty(block.data) {
                            out.push_back(Delta::RedactedThinking { data });
                        }
                    }
                    _ => {}
                }
            }
            "message_start" => {
                if let Some(usage) = event.message.and_then(|m| m.usage) {
                    self.input_tokens = usage.input_tokens.unwrap_or(0);
                }
            }
            "message_delta" if !self.finished => {
                if let Some(usage) = event.usage {
                    if let Some(input) = usage.input_tokens.filter(|t| *t > 0) {
                        self.input_tokens = input;
                    }
                    if usage.output_tokens.is_some() {
                        self.output_tokens = usage.output_tokens;
                    }
                }
                if let Some(reason) = event.delta.and_then(|d| d.stop_reason) {
                    self.finish(finish_reason(reason.as_str()), out);
                }
            }
            "message_stop" => {
                if !self.finished {
                    // Complete, but no stop reason was given.
                    self.finish(FinishReason::Other, out);
                }
                return Ok(Step::Done);
            }
            "error" => return Err(http::midstream_error(provider, data)),
            // `ping`, `content_block_stop` and event types added later.
            _ => {}
        }
        Ok(Step::Continue)
    }
}
