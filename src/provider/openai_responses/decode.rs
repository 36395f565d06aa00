//! The Responses stream decoder: one flat borrowed struct per event, folded into deltas.

use std::collections::VecDeque;

use serde::Deserialize;

use crate::{
    Delta, FinishReason, Result, Usage,
    delta::ToolCallDelta,
    provider::http::{self, ErrorObject, EventParser, Step, Str, non_empty},
};

/// One event's payload, all event types in one flat struct: serde's tagged enums buffer their
/// content, which would defeat borrowing. Fields the library does not use (`sequence_number`,
/// `item_id`, `logprobs`, …) are skipped. Error events are parsed again on their rare path.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    #[serde(borrow, default)]
    delta: Option<Str<'a>>,
    #[serde(default)]
    output_index: Option<u32>,
    #[serde(default)]
    summary_index: Option<u32>,
    #[serde(default)]
    content_index: Option<u32>,
    /// `response.function_call_arguments.done`'s whole arguments.
    #[serde(borrow, default)]
    arguments: Option<Str<'a>>,
    /// Boxed: it comes twice per item, and a small struct keeps the text deltas fast.
    #[serde(borrow, default)]
    item: Option<Box<Item<'a>>>,
    #[serde(borrow, default)]
    response: Option<Box<Response<'a>>>,
}

/// An output item: a `message`, a `function_call`, a `reasoning` item, or one of the built-in
/// tools' items (ignored).
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    #[serde(borrow, default)]
    call_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    arguments: Option<Str<'a>>,
    #[serde(borrow, default)]
    content: Option<Vec<Part<'a>>>,
}

/// A part of a message item's content: `output_text` or `refusal`.
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    refusal: Option<Str<'a>>,
}

/// The response object of `response.completed`, `response.incomplete` and the like.
#[derive(Deserialize)]
struct Response<'a> {
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    incomplete_details: Option<Incomplete<'a>>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

#[derive(Deserialize)]
struct Incomplete<'a> {
    #[serde(borrow, default)]
    reason: Option<Str<'a>>,
}

/// An `error` event: the error object nested (what OpenAI sends) or at the top level (what its
/// reference documents, with a `code`).
#[derive(Deserialize)]
struct ErrorEvent<'a> {
    #[serde(borrow, default)]
    error: Option<ErrorObject<'a>>,
    #[serde(borrow, default)]
    message: Option<Str<'a>>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

/// A `response.failed` event: the error is the response's.
#[derive(Deserialize)]
struct FailedEvent<'a> {
    #[serde(borrow)]
    response: FailedResponse<'a>,
}

#[derive(Deserialize)]
struct FailedResponse<'a> {
    #[serde(borrow, default)]
    error: Option<ErrorObject<'a>>,
}

/// A function call of the reply.
#[derive(Debug)]
struct Call {
    /// Its output item's index.
    output_index: u32,
    /// Its index among the reply's tool calls.
    index: u32,
    /// Whether its id and name were sent.
    named: bool,
    /// Whether its arguments were sent.
    arguments_sent: bool,
}

/// One reply's decoding state between events. `pub` only because the provider's `HttpApi`
/// names it; its module is private.
#[derive(Debug, Default)]
pub struct Parser {
    calls: Vec<Call>,
    /// The output items whose text came in deltas, so that their `done` adds nothing.
    texted: Vec<u32>,
    /// The reasoning part written last (output item, part), to put a blank line between parts.
    reasoning_part: Option<(u32, u32)>,
    finished: bool,
}

impl Parser {
    /// The function call in output item `output_index`, a new one if it is not known yet.
    fn call(&mut self, output_index: u32) -> &mut Call {
        let at = self
            .calls
            .iter()
            .position(|c| c.output_index == output_index)
            .unwrap_or_else(|| {
                self.calls.push(Call {
                    output_index,
                    index: self.calls.len() as u32,
                    named: false,
                    arguments_sent: false,
                });
                self.calls.len() - 1
            });
        &mut self.calls[at]
    }

    fn text(&mut self, output_index: u32, text: String, out: &mut VecDeque<Delta>) {
        if self.texted.last() != Some(&output_index) && !self.texted.contains(&output_index) {
            self.texted.push(output_index);
        }
        out.push_back(Delta::Text { text });
    }

    /// A function call's item, whole (from `output_item.added` or `.done`).
    fn call_item(&mut self, output_index: u32, item: Item<'_>, out: &mut VecDeque<Delta>) {
        let call = self.call(output_index);
        let arguments = if call.arguments_sent {
            None
        } else {
            non_empty(item.arguments)
        };
        call.arguments_sent |= arguments.is_some();
        let (id, name) = if call.named {
            (None, None)
        } else {
            (non_empty(item.call_id), non_empty(item.name))
        };
        call.named |= id.is_some() || name.is_some();
        if id.is_some() || name.is_some() || arguments.is_some() {
            out.push_back(Delta::ToolCall(ToolCallDelta {
                index: call.index,
                id,
                name,
                arguments: arguments.unwrap_or_default(),
            }));
        }
    }

    fn arguments(&mut self, output_index: u32, arguments: String, out: &mut VecDeque<Delta>) {
        let call = self.call(output_index);
        call.arguments_sent = true;
        out.push_back(Delta::ToolCall(ToolCallDelta {
            index: call.index,
            id: None,
            name: None,
            arguments,
        }));
    }

    fn finish(
        &mut self,
        reason: FinishReason,
        response: Option<Box<Response<'_>>>,
        out: &mut VecDeque<Delta>,
    ) {
        out.push_back(Delta::finish(reason));
        if let Some(usage) = response.and_then(|r| r.usage) {
            out.push_back(Delta::Usage(Usage {
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
            }));
        }
        self.finished = true;
    }
}

fn incomplete_reason(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("max_output_tokens") => FinishReason::Length,
        Some("content_filter") => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

/// The error an `error` event carries.
fn error_event(provider: &str, data: &str) -> crate::Error {
    match serde_json::from_str::<ErrorEvent<'_>>(data) {
        Ok(ErrorEvent {
            error: Some(error), ..
        }) => error.into_midstream(provider),
        // At the top level, `type` is the event's (`error`), not the error's kind.
        Ok(ErrorEvent { message, code, .. }) => ErrorObject {
            message,
            kind: None,
            code,
        }
        .into_midstream(provider),
        Err(e) => http::bad_json(provider, &e, data),
    }
}

/// The error a `response.failed` event carries.
fn failed_event(provider: &str, data: &str) -> crate::Error {
    match serde_json::from_str::<FailedEvent<'_>>(data) {
        Ok(FailedEvent {
            response: FailedResponse { error: Some(error) },
        }) => error.into_midstream(provider),
        Ok(_) => ErrorObject {
            message: Some(Str("the response failed".into())),
            ..ErrorObject::default()
        }
        .into_midstream(provider),
        Err(e) => http::bad_json(provider, &e, data),
    }
}

impl EventParser for Parser {
    fn finished(&self) -> bool {
        self.finished
    }

    fn event(&mut self, provider: &str, data: &str, out: &mut VecDeque<Delta>) -> Result<Step> {
        if data == "[DONE]" {
            // Not part of the API, but some compatible servers end with it.
            if !self.finished {
                self.finish(FinishReason::Other, None, out);
            }
            return Ok(Step::Done);
        }
        let event: Event<'_> =
            serde_json::from_str(data).map_err(|e| http::bad_json(provider, &e, data))?;
        let kind = event.kind.as_str();
        if self.finished {
            // Only a server's extra events can follow the terminal one.
            return Ok(Step::Continue);
        }
        let output_index = event.output_index.unwrap_or(0);
        match kind {
            "response.output_text.delta" | "response.refusal.delta" => {
                if let Some(text) = non_empty(event.delta) {
                    self.text(output_index, text, out);
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                if let Some(text) = non_empty(event.delta) {
                    let part = (
                        output_index,
                        event.summary_index.or(event.content_index).unwrap_or(0),
                    );
                    if self.reasoning_part.is_some_and(|last| last != part) {
                        out.push_back(Delta::reasoning("\n\n"));
                    }
                    self.reasoning_part = Some(part);
                    out.push_back(Delta::Reasoning { text });
                }
            }
            "response.function_call_arguments.delta" => {
                if let Some(arguments) = non_empty(event.delta) {
                    self.arguments(output_index, arguments, out);
                }
            }
            "response.function_call_arguments.done" => {
                let sent = self.call(output_index).arguments_sent;
                if let Some(arguments) = non_empty(event.arguments).filter(|_| !sent) {
                    self.arguments(output_index, arguments, out);
                }
            }
            "response.output_item.added" | "response.output_item.done" => {
                let Some(item) = event.item else {
                    return Ok(Step::Continue);
                };
                match item.kind.as_str() {
                    "function_call" => self.call_item(output_index, *item, out),
                    // A message sent whole, with no text deltas before it.
                    "message"
                        if kind == "response.output_item.done"
                            && !self.texted.contains(&output_index) =>
                    {
                        let text: String = item
                            .content
                            .into_iter()
                            .flatten()
                            .filter_map(|p| p.text.or(p.refusal))
                            .map(|t| t.0)
                            .collect();
                        if !text.is_empty() {
                            self.text(output_index, text, out);
                        }
                    }
                    _ => {}
                }
            }
            "response.completed" => {
                let reason = if self.calls.is_empty() {
                    FinishReason::Stop
                } else {
                    FinishReason::ToolCalls
                };
                self.finish(reason, event.response, out);
                return Ok(Step::Done);
            }
            "response.incomplete" => {
                let reason = incomplete_reason(
                    event
                        .response
                        .as_ref()
                        .and_then(|r| r.incomplete_details.as_ref())
                        .and_then(|d| d.reason.as_ref())
                        .map(Str::as_str),
                );
                self.finish(reason, event.response, out);
                return Ok(Step::Done);
            }
            "response.failed" => return Err(failed_event(provider, data)),
            "error" => return Err(error_event(provider, data)),
            // `response.created`, `response.in_progress`, the `.added`/`.done` of parts and
            // texts, annotations, built-in tools' progress, and event types added later.
            _ => {}
        }
        Ok(Step::Continue)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Error;

    /// The deltas and the error of a sequence of payloads.
    fn events(data: &[&str]) -> (Vec<Delta>, Option<Error>) {
        let mut parser = Parser::default();
        let mut out = VecDeque::new();
        for d in data {
            if let Err(e) = parser.event("p", d, &mut out) {
                return (out.into(), Some(e));
            }
        }
        (out.into(), None)
    }

    fn call(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> Delta {
        Delta::ToolCall(ToolCallDelta {
            index,
            id: id.map(Into::into),
            name: name.map(Into::into),
            arguments: arguments.into(),
        })
    }

    #[test]
    fn items_sent_whole_are_read_from_their_done() {
        let (deltas, error) = events(&[
            r#"{"type":"response.output_item.done","output_index":0,"item":{"type":"message",
                "content":[{"type":"output_text","text":"Hi"},{"type":"refusal","refusal":"!"}]}}"#,
            r#"{"type":"response.function_call_arguments.done","output_index":1,
                "arguments":"{}"}"#,
            r#"{"type":"response.output_item.done","output_index":1,"item":{
                "type":"function_call","call_id":"c1","name":"f","arguments":"{}"}}"#,
            r#"{"type":"response.output_item.done","output_index":2,"item":{
                "type":"function_call","call_id":"c2","name":"g","arguments":"{\"a\":1}"}}"#,
            r#"{"type":"response.completed","response":{"usage":{"input_tokens":1,"output_tokens":2}}}"#,
        ]);
        assert!(error.is_none());
        assert_eq!(
            deltas,
            [
                Delta::text("Hi!"),
                call(0, None, None, "{}"),
                call(0, Some("c1"), Some("f"), ""),
                call(1, Some("c2"), Some("g"), "{\"a\":1}"),
                Delta::finish(FinishReason::ToolCalls),
                Delta::usage(1, 2),
            ]
        );
    }

    #[test]
    fn streamed_items_are_not_repeated_by_their_done() {
        let (deltas, _) = events(&[
            r#"{"type":"response.output_item.added","output_index":0,"item":{
                "type":"function_call","call_id":"c1","name":"f","arguments":""}}"#,
            r#"{"type":"response.function_call_arguments.delta","output_index":0,"delta":"{}"}"#,
            r#"{"type":"response.function_call_arguments.done","output_index":0,"arguments":"{}"}"#,
            r#"{"type":"response.output_item.done","output_index":0,"item":{
                "type":"function_call","call_id":"c1","name":"f","arguments":"{}"}}"#,
            r#"{"type":"response.output_text.delta","output_index":1,"delta":"ok"}"#,
            r#"{"type":"response.output_item.done","output_index":1,"item":{"type":"message",
                "content":[{"type":"output_text","text":"ok"}]}}"#,
        ]);
        assert_eq!(
            deltas,
            [
                call(0, Some("c1"), Some("f"), ""),
                call(0, None, None, "{}"),
                Delta::text("ok"),
            ]
        );
    }

    #[test]
    fn error_events_of_both_shapes() {
        let (_, error) = events(&[
            r#"{"type":"error","code":"rate_limit_exceeded","message":"slow down","param":null}"#,
        ]);
        match error.unwrap() {
            Error::Upstream {
                kind,
                message,
                retryable,
                ..
            } => {
                assert_eq!(kind.as_deref(), Some("rate_limit_exceeded"));
                assert_eq!(message, "slow down");
                assert!(retryable);
            }
            other => panic!("{other:?}"),
        }
        let (_, error) = events(&[
            r#"{"type":"error","error":{"type":"invalid_request_error","code":null,"message":"no"}}"#,
        ]);
        assert!(!error.unwrap().is_retryable());
        let (_, error) = events(&[r#"{"type":"response.failed","response":{"error":null}}"#]);
        assert!(error.unwrap().to_string().contains("the response failed"));
        let (_, error) = events(&[r#"{"type":"response.failed","response":{
            "error":{"code":"invalid_prompt","message":"Invalid prompt"}}}"#]);
        assert!(!error.unwrap().is_retryable());
    }

    #[test]
    fn a_payload_without_a_type_is_bad_data() {
        let (_, error) = events(&[r#"{"delta":"x"}"#]);
        assert!(matches!(error, Some(Error::BadData { .. })), "{error:?}");
    }
}
