//! The chat-completions stream decoder: serde visitors that write a chunk's deltas straight
//! into the queue.

use std::{collections::VecDeque, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};

use crate::{
    Delta, FinishReason, Result, Usage,
    delta::ToolCallDelta,
    provider::http::{self, EventParser, Step, Str, non_empty},
};

/// Reads one `data:` payload, writing the deltas of its first choice straight into `out`.
///
/// A hand-written visitor rather than derived structs: each key is matched once, fields the
/// library does not use (`id`, `model`, `created`, `system_fingerprint`, `logprobs`, …) are
/// skipped without being allocated, and no intermediate chunk, choice or delta is built, moved
/// or boxed (measured in `benches/parse.rs`). Error objects are only noted here and parsed again
/// on their rare path. The caller removes what was written when the payload turns out bad.
struct ChunkSeed<'o> {
    out: &'o mut VecDeque<Delta>,
    /// The reply finished in an earlier chunk: only a usage may follow.
    finished: bool,
}

/// What a payload said besides its deltas.
#[derive(Default)]
struct ChunkOutcome {
    /// The first choice carried a finish reason.
    finished: bool,
    /// An `error` object, or vLLM's top-level `{"object":"error","message","type","code"}`.
    error: bool,
}

/// A duplicate key is an error, as it is for derived structs.
fn once<E: de::Error>(seen: &mut bool, field: &'static str) -> std::result::Result<(), E> {
    if std::mem::replace(seen, true) {
        return Err(E::duplicate_field(field));
    }
    Ok(())
}

impl<'de> DeserializeSeed<'de> for ChunkSeed<'_> {
    type Value = ChunkOutcome;

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<ChunkOutcome, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChunkSeed<'_> {
    type Value = ChunkOutcome;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct Chunk")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<ChunkOutcome, A::Error> {
        let mut outcome = ChunkOutcome::default();
        let mut usage = None;
        let (mut choices, mut error, mut object) = (false, false, false);
        while let Some(key) = map.next_key::<Str<'de>>()? {
            match key.as_str() {
                "choices" => {
                    once(&mut choices, "choices")?;
                    outcome.finished = map.next_value_seed(ChoicesSeed {
                        out: &mut *self.out,
                        keep: !self.finished,
                    })?;
                }
                "usage" => {
                    if usage.is_some() {
                        return Err(de::Error::duplicate_field("usage"));
                    }
                    usage = Some(map.next_value::<Option<WireUsage>>()?);
                }
                "error" => {
                    once(&mut error, "error")?;
                    outcome.error |= map.next_value::<Option<IgnoredAny>>()?.is_some();
                }
                "object" => {
                    once(&mut object, "object")?;
                    let object = map.next_value::<Option<Str<'de>>>()?;
                    outcome.error |= object.is_some_and(|o| o.as_str() == "error");
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        // The usage comes after the choice's deltas and finish, wherever it stood.
        if let Some(Some(usage)) = usage {
            self.out.push_back(Delta::Usage(Usage {
                input_tokens: usage.prompt_tokens,
                output_tokens: usage.completion_tokens,
            }));
        }
        Ok(outcome)
    }
}

/// The `choices` list: only the first choice with index 0 is read, so that no `Vec` is built
/// per chunk (the library reads one choice). Gives whether that choice finished the reply.
struct ChoicesSeed<'o> {
    out: &'o mut VecDeque<Delta>,
    /// Whether the choice's deltas are wanted at all.
    keep: bool,
}

impl<'de> DeserializeSeed<'de> for ChoicesSeed<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ChoicesSeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of choices")
    }

    fn visit_unit<E>(self) -> std::result::Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<bool, A::Error> {
        let mut first = false;
        let mut finished = false;
        // Later choices are still read, so that a malformed one fails the payload as before.
        while let Some(choice) = seq.next_element_seed(ChoiceSeed {
            out: &mut *self.out,
            keep: self.keep && !first,
        })? {
            if !first && choice.first {
                first = true;
                finished = choice.finished;
            }
        }
        Ok(finished)
    }
}

/// One choice; its deltas, then its finish, are written when `keep` and its index is 0.
struct ChoiceSeed<'o> {
    out: &'o mut VecDeque<Delta>,
    keep: bool,
}

struct ChoiceOutcome {
    /// The index is 0: this is the choice the library reads.
    first: bool,
    /// It was kept and carried a finish reason.
    finished: bool,
}

impl<'de> DeserializeSeed<'de> for ChoiceSeed<'_> {
    type Value = ChoiceOutcome;

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<ChoiceOutcome, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChoiceSeed<'_> {
    type Value = ChoiceOutcome;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct Choice")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<ChoiceOutcome, A::Error> {
        let start = self.out.len();
        let mut index = None;
        let mut reason = None;
        let mut delta = false;
        while let Some(key) = map.next_key::<Str<'de>>()? {
            match key.as_str() {
                "index" => {
                    if index.is_some() {
                        return Err(de::Error::duplicate_field("index"));
                    }
                    index = Some(map.next_value::<u32>()?);
                }
                "delta" => {
                    once(&mut delta, "delta")?;
                    // The index may come after the delta: then the deltas are written and taken
                    // back below if it is not 0.
                    map.next_value_seed(OrNull(DeltaSeed {
                        out: &mut *self.out,
                        keep: self.keep && index.unwrap_or(0) == 0,
                    }))?;
                }
                "finish_reason" => {
                    if reason.is_some() {
                        return Err(de::Error::duplicate_field("finish_reason"));
                    }
                    reason = Some(map.next_value::<Option<Str<'de>>>()?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let first = index.unwrap_or(0) == 0;
        if !(self.keep && first) {
            self.out.truncate(start);
            return Ok(ChoiceOutcome {
                first,
                finished: false,
            });
        }
        let reason = reason.flatten();
        let finished = reason.is_some();
        if let Some(reason) = reason {
            self.out
                .push_back(Delta::finish(finish_reason(reason.as_str())));
        }
        Ok(ChoiceOutcome { first, finished })
    }
}

/// `null` (read as absent), or what the seed inside reads.
struct OrNull<S>(S);

impl<'de, S: DeserializeSeed<'de, Value = ()>> DeserializeSeed<'de> for OrNull<S> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de, Value = ()>> Visitor<'de> for OrNull<S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null or a value")
    }

    fn visit_none<E>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        self.0.deserialize(deserializer)
    }
}

/// A choice's `delta`: reasoning, text, refusal (as text), then tool calls, whatever the order
/// of its keys. Read but not written unless `keep`.
struct DeltaSeed<'o> {
    out: &'o mut VecDeque<Delta>,
    keep: bool,
}

impl<'de> DeserializeSeed<'de> for DeltaSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DeltaSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct WireDelta")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        // Tool calls are written as they come; the text deltas go in before them at the end.
        let calls_at = self.out.len();
        let mut content = None;
        let mut reasoning_content = None;
        let mut reasoning = None;
        let mut refusal = None;
        let mut tool_calls = false;
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let (slot, field) = match key.as_str() {
                "content" => (&mut content, "content"),
                "reasoning_content" => (&mut reasoning_content, "reasoning_content"),
                "reasoning" => (&mut reasoning, "reasoning"),
                "refusal" => (&mut refusal, "refusal"),
                "tool_calls" => {
                    once(&mut tool_calls, "tool_calls")?;
                    map.next_value_seed(OrNull(ToolCallsSeed {
                        out: &mut *self.out,
                        keep: self.keep,
                    }))?;
                    continue;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(de::Error::duplicate_field(field));
            }
            *slot = Some(map.next_value::<Option<Str<'de>>>()?);
        }
        if !self.keep {
            return Ok(());
        }
        let mut at = calls_at;
        let mut write = |delta| {
            self.out.insert(at, delta);
            at += 1;
        };
        if let Some(text) = non_empty(reasoning_content.flatten().or(reasoning.flatten())) {
            write(Delta::Reasoning { text });
        }
        if let Some(text) = non_empty(content.flatten()) {
            write(Delta::Text { text });
        }
        if let Some(text) = non_empty(refusal.flatten()) {
            write(Delta::Text { text });
        }
        Ok(())
    }
}

/// A delta's `tool_calls`, written as they are read.
struct ToolCallsSeed<'o> {
    out: &'o mut VecDeque<Delta>,
    keep: bool,
}

impl<'de> DeserializeSeed<'de> for ToolCallsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ToolCallsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let mut position = 0;
        while let Some(call) = seq.next_element::<WireToolCallDelta<'de>>()? {
            if self.keep {
                let (name, arguments) = match call.function {
                    Some(f) => (non_empty(f.name), f.arguments.map(Str::into_string)),
                    None => (None, None),
                };
                self.out.push_back(Delta::ToolCall(ToolCallDelta {
                    // Some servers leave the index out when they send whole calls.
                    index: call.index.unwrap_or(position),
                    id: non_empty(call.id),
                    name,
                    arguments: arguments.unwrap_or_default(),
                }));
            }
            position += 1;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct WireToolCallDelta<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    function: Option<WireFunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct WireFunctionDelta<'a> {
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    arguments: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" | "end_turn" | "eos" => FinishReason::Stop,
        "length" | "max_tokens" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

/// One reply's decoding state between events. `pub` only because the provider's `HttpApi`
/// names it; its module is private.
#[derive(Debug, Default)]
pub struct Parser {
    finished: bool,
}

impl EventParser for Parser {
    fn finished(&self) -> bool {
        self.finished
    }

    fn event(&mut self, provider: &str, data: &str, out: &mut VecDeque<Delta>) -> Result<Step> {
        if data == "[DONE]" {
            if !self.finished {
                // The server says the reply is complete but gave no reason.
                out.push_back(Delta::finish(FinishReason::Other));
                self.finished = true;
            }
            return Ok(Step::Done);
        }
        let start = out.len();
        let mut json = serde_json::Deserializer::from_str(data);
        let outcome = ChunkSeed {
            out: &mut *out,
            finished: self.finished,
        }
        .deserialize(&mut json)
        .and_then(|outcome| json.end().map(|()| outcome));
        let outcome = match outcome {
            Ok(outcome) if !outcome.error => outcome,
            Ok(_) => {
                out.truncate(start);
                return Err(http::midstream_error(provider, data));
            }
            Err(e) => {
                out.truncate(start);
                return Err(http::bad_json(provider, &e, data));
            }
        };
        self.finished |= outcome.finished;
        Ok(Step::Continue)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The deltas and the error of one payload, read after the finish or before it.
    fn payload(finished: bool, data: &str) -> (Vec<Delta>, Option<crate::Error>) {
        let mut parser = Parser { finished };
        let mut out = VecDeque::new();
        let error = parser.event("p", data.trim_ascii(), &mut out).err();
        (out.into(), error)
    }

    #[test]
    fn deltas_come_in_a_fixed_order_whatever_the_key_order() {
        let (deltas, error) = payload(
            false,
            r#"{"usage":{"prompt_tokens":2,"completion_tokens":3},"choices":[
                {"finish_reason":"tool_calls","delta":{
                    "tool_calls":[{"id":"c","function":{"name":"f","arguments":"{"}}],
                    "refusal":"no","content":"text","reasoning":"why"},"index":0}]}"#,
        );
        assert!(error.is_none());
        assert_eq!(
            deltas,
            [
                Delta::reasoning("why"),
                Delta::text("text"),
                Delta::text("no"),
                Delta::ToolCall(ToolCallDelta {
                    index: 0,
                    id: Some("c".into()),
                    name: Some("f".into()),
                    arguments: "{".into(),
                }),
                Delta::finish(FinishReason::ToolCalls),
                Delta::usage(2, 3),
            ]
        );
    }

    #[test]
    fn only_the_first_choice_with_index_0_is_read() {
        // The index may come after the delta.
        let (deltas, _) = payload(
            false,
            r#"{"choices":[{"delta":{"content":"a"},"finish_reason":"stop","index":1},
                {"delta":{"content":"b"},"index":0},{"index":0,"delta":{"content":"c"}}]}"#,
        );
        assert_eq!(deltas, [Delta::text("b")]);
    }

    #[test]
    fn after_the_finish_only_a_usage_is_read() {
        let (deltas, _) = payload(
            true,
            r#"{"choices":[{"index":0,"delta":{"content":"late"},"finish_reason":"stop"}],
                "usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        );
        assert_eq!(deltas, [Delta::usage(1, 1)]);
    }

    #[test]
    fn nulls_are_absent_fields() {
        let (deltas, error) = payload(
            false,
            r#"{"choices":[{"index":0,"delta":null,"finish_reason":null}],"usage":null,
                "error":null,"object":null}"#,
        );
        assert!(deltas.is_empty() && error.is_none());
        let (deltas, error) = payload(false, r#"{"choices":null}"#);
        assert!(deltas.is_empty() && error.is_none());
    }

    #[test]
    fn a_bad_or_failed_payload_gives_none_of_its_deltas() {
        for data in [
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"usage":5}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"choices":[]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}]"#,
        ] {
            let (deltas, error) = payload(false, data);
            assert!(deltas.is_empty(), "{data}");
            assert!(
                matches!(error, Some(crate::Error::BadData { .. })),
                "{data}: {error:?}"
            );
        }
        for data in [
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"error":{"message":"boom"}}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"object":"error","message":"boom"}"#,
        ] {
            let (deltas, error) = payload(false, data);
            assert!(deltas.is_empty(), "{data}");
            assert!(
                matches!(error, Some(crate::Error::Upstream { ref message, .. }) if message == "boom"),
                "{data}: {error:?}"
            );
        }
    }
}
