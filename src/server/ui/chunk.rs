//! The chunks of the UI message stream, and [`Encoder`]: a reply's hub events in, chunks out.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::Value;

use super::message::{Metadata, finish_reason, invalid_input, tool_input};
use crate::{
    Delta, Error, FinishReason, MessageId, MessageStatus, ToolCallDelta, Usage, hub::EventPayload,
};

/// The line that ends every stream.
pub(crate) const DONE: &str = "[DONE]";

/// One chunk, serialized as the SDK's `uiMessageChunkSchema` wants it: only the keys it lists,
/// optional ones left out rather than `null`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Chunk<'a> {
    #[serde(rename_all = "camelCase")]
    Start {
        message_id: String,
        message_metadata: Metadata<'a>,
    },
    StartStep,
    FinishStep,
    TextStart {
        id: &'a str,
    },
    TextDelta {
        id: &'a str,
        delta: &'a str,
    },
    TextEnd {
        id: &'a str,
    },
    ReasoningStart {
        id: &'a str,
    },
    ReasoningDelta {
        id: &'a str,
        delta: &'a str,
    },
    ReasoningEnd {
        id: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    ToolInputStart {
        tool_call_id: &'a str,
        tool_name: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    ToolInputDelta {
        tool_call_id: &'a str,
        input_text_delta: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    ToolInputAvailable {
        tool_call_id: &'a str,
        tool_name: &'a str,
        input: Value,
    },
    #[serde(rename_all = "camelCase")]
    ToolInputError {
        tool_call_id: &'a str,
        tool_name: &'a str,
        input: Value,
        error_text: String,
    },
    #[serde(rename_all = "camelCase")]
    MessageMetadata {
        message_metadata: Metadata<'a>,
    },
    #[serde(rename_all = "camelCase")]
    Error {
        error_text: &'a str,
    },
    Abort,
    #[serde(rename_all = "camelCase")]
    Finish {
        #[serde(skip_serializing_if = "Option::is_none")]
        finish_reason: Option<&'static str>,
    },
}

/// Text or reasoning: the two kinds of part that stream as `-start`, `-delta`s, `-end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Reasoning,
}

#[derive(Debug)]
struct OpenPart {
    kind: Kind,
    id: String,
}

/// A tool call whose input is still arriving.
#[derive(Debug)]
struct ToolInput {
    index: u32,
    id: Option<String>,
    name: Option<String>,
    arguments: String,
    /// Whether `tool-input-start` went out (it needs the call's id and name).
    started: bool,
}

/// Turns one reply's hub events into UI message stream chunks (JSON text, then [`DONE`]).
///
/// Part boundaries follow the kind of content, not the events: a run of text deltas is one text
/// part however the hub cut it (a replay may coalesce many deltas into one), so a replay yields
/// the same parts, with the same ids, as the live stream did.
#[derive(Debug)]
pub(crate) struct Encoder {
    message_id: MessageId,
    started: bool,
    open: Option<OpenPart>,
    parts: u32,
    tool: Option<ToolInput>,
    /// Calls whose input is complete: a late fragment for one is dropped.
    tools_done: Vec<u32>,
    error: Option<String>,
    ended: bool,
}

impl Encoder {
    /// An encoder for the reply that fills the assistant message `message_id` (the id the
    /// client's message gets).
    pub(crate) fn new(message_id: MessageId) -> Self {
        Encoder {
            message_id,
            started: false,
            open: None,
            parts: 0,
            tool: None,
            tools_done: Vec::new(),
            error: None,
            ended: false,
        }
    }

    /// Whether the stream is over ([`DONE`] was written).
    pub(crate) fn is_ended(&self) -> bool {
        self.ended
    }

    /// Appends the chunks of one event to `out`.
    pub(crate) fn event(&mut self, payload: &EventPayload, out: &mut Vec<String>) {
        if self.ended {
            return;
        }
        self.start(out);
        match payload {
            EventPayload::Start { .. } => {}
            EventPayload::Delta(delta) => match delta {
                Delta::Text { text } => self.content(Kind::Text, text, out),
                Delta::Reasoning { text } => self.content(Kind::Reasoning, text, out),
                Delta::ToolCall(call) => self.tool_call(call, out),
                // The `done` event carries the final usage and finish reason; a retry notice
                // repeats nothing; thinking signatures are opaque, for the provider only.
                Delta::Usage(_)
                | Delta::Finish { .. }
                | Delta::Retry(_)
                | Delta::ThinkingSignature { .. }
                | Delta::RedactedThinking { .. } => {}
            },
            EventPayload::Error { message, .. } => self.error = Some(message.clone()),
            EventPayload::Done {
                status,
                finish_reason,
                usage,
                ..
            } => self.done(*status, *finish_reason, *usage, out),
        }
    }

    /// Ends the stream with an `error` chunk when the events stopped without a `done` (the hub
    /// lost the reply, or `error` says why).
    pub(crate) fn lost(&mut self, error: Option<&Error>, out: &mut Vec<String>) {
        if self.ended {
            return;
        }
        self.start(out);
        self.close(out);
        let text = match error {
            Some(e) => format!("{e}; reload the chat's messages"),
            None => {
                "the reply's events ended before it finished; reload the chat's messages".to_owned()
            }
        };
        emit(out, &Chunk::Error { error_text: &text });
        self.end(out);
    }

    fn start(&mut self, out: &mut Vec<String>) {
        if self.started {
            return;
        }
        self.started = true;
        emit(
            out,
            &Chunk::Start {
                message_id: self.message_id.to_string(),
                message_metadata: Metadata::streaming(),
            },
        );
        emit(out, &Chunk::StartStep);
    }

    fn content(&mut self, kind: Kind, text: &str, out: &mut Vec<String>) {
        if text.is_empty() {
            return;
        }
        if self.open.as_ref().is_none_or(|p| p.kind != kind) {
            self.close(out);
            let prefix = if kind == Kind::Text { 't' } else { 'r' };
            let id = format!("{prefix}{}", self.parts);
            self.parts += 1;
            emit(
                out,
                &match kind {
                    Kind::Text => Chunk::TextStart { id: &id },
                    Kind::Reasoning => Chunk::ReasoningStart { id: &id },
                },
            );
            self.open = Some(OpenPart { kind, id });
        }
        let Some(open) = &self.open else { return };
        let id = open.id.as_str();
        emit(
            out,
            &match kind {
                Kind::Text => Chunk::TextDelta { id, delta: text },
                Kind::Reasoning => Chunk::ReasoningDelta { id, delta: text },
            },
        );
    }

    /// Closes the open text or reasoning part.
    fn close_part(&mut self, out: &mut Vec<String>) {
        if let Some(open) = self.open.take() {
            let id = open.id.as_str();
            emit(
                out,
                &match open.kind {
                    Kind::Text => Chunk::TextEnd { id },
                    Kind::Reasoning => Chunk::ReasoningEnd { id },
                },
            );
        }
    }

    /// Closes whatever part is open: text, reasoning or a tool call's input.
    fn close(&mut self, out: &mut Vec<String>) {
        self.close_part(out);
        self.finish_tool(out);
    }

    fn tool_call(&mut self, call: &ToolCallDelta, out: &mut Vec<String>) {
        self.close_part(out);
        if self.tools_done.contains(&call.index) {
            tracing::warn!(
                index = call.index,
                "a fragment of a tool call whose input was already complete; dropped"
            );
            return;
        }
        if self.tool.as_ref().is_some_and(|t| t.index != call.index) {
            self.finish_tool(out);
        }
        let tool = self.tool.get_or_insert_with(|| ToolInput {
            index: call.index,
            id: None,
            name: None,
            arguments: String::new(),
            started: false,
        });
        if tool.id.is_none() {
            tool.id = call.id.clone().filter(|id| !id.is_empty());
        }
        if tool.name.is_none() {
            tool.name = call.name.clone().filter(|name| !name.is_empty());
        }
        tool.arguments.push_str(&call.arguments);
        if tool.started {
            if !call.arguments.is_empty()
                && let Some(id) = &tool.id
            {
                emit(
                    out,
                    &Chunk::ToolInputDelta {
                        tool_call_id: id,
                        input_text_delta: &call.arguments,
                    },
                );
            }
        } else if let (Some(id), Some(name)) = (&tool.id, &tool.name) {
            tool_start(id, name, &tool.arguments, out);
            tool.started = true;
        }
    }

    /// Ends the tool call in progress: its whole input, parsed (or why it does not parse).
    fn finish_tool(&mut self, out: &mut Vec<String>) {
        let Some(tool) = self.tool.take() else { return };
        self.tools_done.push(tool.index);
        // A provider names every call; these only keep the chunks well-formed if one did not.
        let id = tool.id.unwrap_or_else(|| format!("call-{}", tool.index));
        let name = tool.name.unwrap_or_else(|| "unknown".to_owned());
        if !tool.started {
            tool_start(&id, &name, &tool.arguments, out);
        }
        emit(
            out,
            &match tool_input(&tool.arguments) {
                Ok(input) => Chunk::ToolInputAvailable {
                    tool_call_id: &id,
                    tool_name: &name,
                    input,
                },
                Err(e) => Chunk::ToolInputError {
                    tool_call_id: &id,
                    tool_name: &name,
                    input: Value::String(tool.arguments.clone()),
                    error_text: invalid_input(&e),
                },
            },
        );
    }

    fn done(
        &mut self,
        status: MessageStatus,
        reason: Option<FinishReason>,
        usage: Option<Usage>,
        out: &mut Vec<String>,
    ) {
        self.close(out);
        emit(out, &Chunk::FinishStep);
        let error = match status {
            MessageStatus::Complete | MessageStatus::Cancelled => None,
            MessageStatus::Failed => Some(
                self.error
                    .take()
                    .map_or(Cow::Borrowed("the reply failed"), Cow::Owned),
            ),
            MessageStatus::Interrupted | MessageStatus::Streaming => Some(Cow::Borrowed(
                "the reply was interrupted: the server generating it went away",
            )),
        };
        emit(
            out,
            &Chunk::MessageMetadata {
                message_metadata: Metadata {
                    status,
                    usage,
                    finish_reason: reason.map(finish_reason),
                    error: error.clone(),
                },
            },
        );
        emit(
            out,
            &match (status, &error) {
                (MessageStatus::Cancelled, _) => Chunk::Abort,
                (_, Some(error)) => Chunk::Error { error_text: error },
                (_, None) => Chunk::Finish {
                    finish_reason: reason.map(finish_reason),
                },
            },
        );
        self.end(out);
    }

    fn end(&mut self, out: &mut Vec<String>) {
        out.push(DONE.to_owned());
        self.ended = true;
    }
}

fn tool_start(id: &str, name: &str, arguments: &str, out: &mut Vec<String>) {
    emit(
        out,
        &Chunk::ToolInputStart {
            tool_call_id: id,
            tool_name: name,
        },
    );
    if !arguments.is_empty() {
        emit(
            out,
            &Chunk::ToolInputDelta {
                tool_call_id: id,
                input_text_delta: arguments,
            },
        );
    }
}

fn emit(out: &mut Vec<String>, chunk: &Chunk<'_>) {
    // Strings, numbers, enums and JSON values only: serializing cannot fail.
    out.push(serde_json::to_string(chunk).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChatId, hub::EventPayload};

    fn encode(payloads: &[EventPayload]) -> Vec<String> {
        let id: MessageId = "0190b6a4-0000-7000-8000-000000000001".parse().unwrap();
        let mut encoder = Encoder::new(id);
        let mut out = Vec::new();
        for p in payloads {
            encoder.event(p, &mut out);
        }
        out
    }

    fn start() -> EventPayload {
        EventPayload::Start {
            chat_id: ChatId::new("c").unwrap(),
            message_id: MessageId::generate(),
            user_message_id: MessageId::generate(),
        }
    }

    fn call(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> EventPayload {
        EventPayload::Delta(Delta::ToolCall(ToolCallDelta {
            index,
            id: id.map(Into::into),
            name: name.map(Into::into),
            arguments: arguments.into(),
        }))
    }

    fn done(status: MessageStatus) -> EventPayload {
        EventPayload::done(MessageId::generate(), status)
    }

    #[test]
    fn a_coalesced_replay_gives_the_same_parts_as_the_live_stream() {
        let live = encode(&[
            start(),
            EventPayload::Delta(Delta::text("Hel")),
            EventPayload::Delta(Delta::text("lo")),
            EventPayload::Delta(Delta::reasoning("hm")),
            EventPayload::Delta(Delta::text("!")),
            done(MessageStatus::Complete),
        ]);
        let replay = encode(&[
            start(),
            EventPayload::Delta(Delta::text("Hello")),
            EventPayload::Delta(Delta::reasoning("hm")),
            EventPayload::Delta(Delta::text("!")),
            done(MessageStatus::Complete),
        ]);
        let parts = |chunks: &[String]| -> Vec<String> {
            chunks
                .iter()
                .filter(|c| !c.contains("-delta"))
                .cloned()
                .collect()
        };
        assert_eq!(parts(&live), parts(&replay));
        assert!(replay.contains(&r#"{"type":"text-start","id":"t2"}"#.to_owned()));
        assert_eq!(replay.last().unwrap(), DONE);
    }

    #[test]
    fn tool_calls_end_when_the_next_one_starts_and_bad_input_is_an_error() {
        let out = encode(&[
            start(),
            call(0, Some("c0"), Some("f"), r#"{"a":"#),
            call(0, None, None, "1}"),
            call(1, Some("c1"), Some("g"), "{nope"),
            call(0, None, None, "late"),
            done(MessageStatus::Complete),
        ]);
        let chunks: Vec<Value> = out[..out.len() - 1]
            .iter()
            .map(|c| serde_json::from_str(c).unwrap())
            .collect();
        let kinds: Vec<&str> = chunks.iter().map(|c| c["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "start",
                "start-step",
                "tool-input-start",
                "tool-input-delta",
                "tool-input-delta",
                "tool-input-available",
                "tool-input-start",
                "tool-input-delta",
                "tool-input-error",
                "finish-step",
                "message-metadata",
                "finish",
            ]
        );
        assert_eq!(chunks[5]["input"], serde_json::json!({"a": 1}));
        assert_eq!(chunks[8]["input"], "{nope");
        assert!(chunks[8]["errorText"].as_str().unwrap().contains("JSON"));
        // No reason given: the key is left out, not null.
        assert_eq!(out[out.len() - 2], r#"{"type":"finish"}"#);
    }

    #[test]
    fn stopped_failed_and_lost_replies_end_as_the_protocol_says() {
        let stopped = encode(&[start(), done(MessageStatus::Cancelled)]);
        assert_eq!(stopped[stopped.len() - 2], r#"{"type":"abort"}"#);
        let failed = encode(&[
            start(),
            EventPayload::Error {
                code: "upstream".into(),
                message: "boom".into(),
            },
            done(MessageStatus::Failed),
        ]);
        assert_eq!(
            failed[failed.len() - 2],
            r#"{"type":"error","errorText":"boom"}"#
        );
        let id = MessageId::generate();
        let mut encoder = Encoder::new(id);
        let mut lost = Vec::new();
        encoder.event(&EventPayload::Delta(Delta::text("par")), &mut lost);
        encoder.lost(None, &mut lost);
        assert!(encoder.is_ended());
        let kinds: Vec<String> = lost[..lost.len() - 1]
            .iter()
            .map(|c| serde_json::from_str::<Value>(c).unwrap()["type"].to_string())
            .collect();
        assert_eq!(
            kinds,
            [
                "\"start\"",
                "\"start-step\"",
                "\"text-start\"",
                "\"text-delta\"",
                "\"text-end\"",
                "\"error\""
            ]
        );
        assert!(lost[0].contains(&id.to_string()));
    }
}
