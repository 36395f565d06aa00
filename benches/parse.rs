//! Parsing an OpenAI SSE body of 1,000 text chunks, fed in 4 KiB reads, into an accumulated
//! reply:
//!
//! - `chatstream`: the provider's own path, `openai::decode` (sse-stream + serde visitors that
//!   write deltas directly) into an `Accumulator`;
//! - `naive_baseline`: what a Rust developer would write first: eventsource-stream, serde_json
//!   into owned structs with the usual fields as `String`, and `String::push_str`;
//! - `eventsource_borrowed`: eventsource-stream with borrowed derived structs (what the library
//!   used before its visitors), so that the share of owned strings in the baseline shows.
#![allow(clippy::unwrap_used)]

use std::{borrow::Cow, convert::Infallible, fmt, hint::black_box};

use bytes::Bytes;
use chatstream::{Accumulator, Delta, FinishReason, provider::openai};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventsource_stream::Eventsource;
use futures::{StreamExt, executor::block_on};
use serde::{Deserialize, Deserializer};

const CHUNKS: usize = 1_000;
const READ: usize = 4 * 1024;

fn body() -> Vec<u8> {
    let words = [
        "Stream",
        "ing",
        " lets",
        " the",
        " user",
        " see",
        " the",
        " reply",
        " as",
        " it",
        " is",
        " written",
        ".",
        " \\\"Quotes\\\"",
        " and",
        "\\n",
        " café",
        " 你好",
    ];
    let mut body = String::new();
    let head = r#"{"id":"chatcmpl-CKx1","object":"chat.completion.chunk","created":1763700000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":"#;
    body.push_str(&format!(
        "data: {head}{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
    ));
    for i in 0..CHUNKS {
        body.push_str(&format!(
            "data: {head}{{\"content\":\"{}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n",
            words[i % words.len()]
        ));
    }
    body.push_str(&format!(
        "data: {head}{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n"
    ));
    body.push_str(r#"data: {"id":"chatcmpl-CKx1","object":"chat.completion.chunk","created":1763700000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":1000,"total_tokens":1019,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#);
    body.push_str("\n\ndata: [DONE]\n\n");
    body.into_bytes()
}

fn reads(body: &[u8]) -> Vec<Bytes> {
    body.chunks(READ).map(Bytes::copy_from_slice).collect()
}

fn input(reads: &[Bytes]) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + use<> {
    // Cloning `Bytes` only bumps a reference count: no body bytes are copied per run.
    let owned: Vec<Bytes> = reads.to_vec();
    futures::stream::iter(owned).map(Ok)
}

// ---- chatstream ----------------------------------------------------------------------------

fn ours(reads: &[Bytes]) -> Accumulator {
    block_on(async {
        let mut acc = Accumulator::new();
        let mut deltas = openai::decode(input(reads));
        while let Some(delta) = deltas.next().await {
            acc.push(&delta.unwrap());
        }
        acc
    })
}

// ---- the naive baseline: owned structs -----------------------------------------------------

#[derive(Deserialize)]
#[allow(dead_code)]
struct OwnedChunk {
    id: String,
    object: String,
    created: u64,
    model: String,
    system_fingerprint: Option<String>,
    choices: Vec<OwnedChoice>,
    usage: Option<OwnedUsage>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct OwnedChoice {
    index: u32,
    delta: OwnedDelta,
    logprobs: Option<serde_json::Value>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct OwnedDelta {
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct OwnedUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

struct NaiveReply {
    text: String,
    finish_reason: Option<String>,
    usage: Option<OwnedUsage>,
}

fn naive(reads: &[Bytes]) -> NaiveReply {
    block_on(async {
        let mut reply = NaiveReply {
            text: String::new(),
            finish_reason: None,
            usage: None,
        };
        let mut events = input(reads).eventsource();
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            if event.data == "[DONE]" {
                break;
            }
            let chunk: OwnedChunk = serde_json::from_str(&event.data).unwrap();
            if let Some(choice) = chunk.choices.into_iter().next() {
                if let Some(content) = choice.delta.content {
                    reply.text.push_str(&content);
                }
                if choice.finish_reason.is_some() {
                    reply.finish_reason = choice.finish_reason;
                }
            }
            if chunk.usage.is_some() {
                reply.usage = chunk.usage;
            }
        }
        reply
    })
}

// ---- eventsource-stream with borrowed derived structs --------------------------------------

struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[derive(Deserialize)]
struct BorrowedChunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<BorrowedChoice<'a>>,
    #[serde(default)]
    usage: Option<BorrowedUsage>,
}

#[derive(Deserialize)]
struct BorrowedChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<BorrowedDelta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct BorrowedDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct BorrowedUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

fn eventsource_borrowed(reads: &[Bytes]) -> Accumulator {
    block_on(async {
        let mut acc = Accumulator::new();
        let mut events = input(reads).eventsource();
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            if event.data == "[DONE]" {
                break;
            }
            let chunk: BorrowedChunk<'_> = serde_json::from_str(&event.data).unwrap();
            if let Some(choice) = chunk.choices.into_iter().next() {
                if let Some(content) = choice.delta.and_then(|d| d.content)
                    && !content.0.is_empty()
                {
                    acc.push(&Delta::text(content.0.into_owned()));
                }
                if choice.finish_reason.is_some() {
                    acc.push(&Delta::finish(FinishReason::Stop));
                }
            }
            if let Some(u) = chunk.usage {
                acc.push(&Delta::usage(u.prompt_tokens, u.completion_tokens));
            }
        }
        acc
    })
}

fn bench(c: &mut Criterion) {
    let body = body();
    let reads = reads(&body);

    // All three read the same reply.
    let expected = naive(&reads);
    let mine = ours(&reads);
    assert_eq!(mine.text(), expected.text);
    assert_eq!(mine.finish_reason(), Some(FinishReason::Stop));
    assert_eq!(expected.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        mine.usage().map(|u| u.output_tokens),
        expected.usage.as_ref().map(|u| u.completion_tokens)
    );
    assert_eq!(eventsource_borrowed(&reads).text(), expected.text);
    assert_eq!(mine.delta_count(), CHUNKS as u64 + 2);

    for (group, throughput) in [
        ("parse_per_delta", Throughput::Elements(CHUNKS as u64)),
        ("parse_bytes", Throughput::Bytes(body.len() as u64)),
    ] {
        let mut g = c.benchmark_group(group);
        g.throughput(throughput);
        g.bench_function("chatstream", |b| {
            b.iter(|| black_box(ours(black_box(&reads))))
        });
        g.bench_function("naive_baseline", |b| {
            b.iter(|| black_box(naive(black_box(&reads))))
        });
        g.bench_function("eventsource_borrowed", |b| {
            b.iter(|| black_box(eventsource_borrowed(black_box(&reads))))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
