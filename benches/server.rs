//! The server example over loopback, beside a minimal hand-written relay, in one run.
//!
//! Processes besides this one: a no-delay OpenAI-compatible upstream, and the servers under test
//! (the baseline relay, and the chatstream server plain and observed). This process is the
//! client. Every process is this very binary, re-executed with
//! `--serve upstream|baseline|chatstream|observed`:
//! it prints its address on standard output and exits when its standard input closes, so nothing
//! outlives the bench.
//!
//! For each of the baseline relay (axum + reqwest + eventsource-stream, chunks parsed with
//! serde_json), the single-request path (`POST /api/chat`), the OpenAI-compatible path
//! (`POST /v1/chat/completions` with `"stream": true`), the stateful path
//! (`POST /api/messages` then `GET /api/stream/{chatId}`, SQLite store in a temporary file) and
//! the stateful path observed (the same server with a Prometheus recorder installed and served at
//! `GET /metrics`, and a `tracing` subscriber that keeps every request and reply span, logging
//! at `info` to nowhere; `CHATSTREAM_BENCH_OBSERVE=metrics` or `=spans` turns on only one of the
//! two, `=off` neither; the others run with no recorder and no subscriber, as a library user
//! without the `metrics` feature does):
//!
//! - deltas/s for one stream of 20,000 tokens (median and best of 7);
//! - aggregate deltas/s for 200 concurrent streams of 200 tokens (median and best of 5 rounds);
//!   the five servers run at once and take turns, run by run, so that other load on the
//!   machine spreads over all five;
//! - time to first delta (from sending the request, the stateful path's `POST`, to the first
//!   text received), p50 and p99 over those streams, and over 1,000 new slow streams (50 tokens,
//!   20 ms apart) started all at once, twice per server (each stateful one a new chat);
//! - RSS per live stream: (peak − idle) / streams live at once, with 1,000 concurrent slow
//!   streams (50 tokens, 20 ms apart), read from `/proc/PID/status` (VmRSS idle, VmHWM at the end)
//!   of a fresh server process. The upstream holds the first token of every slow stream until one
//!   shared instant, a few seconds after the first request, so that all of them are open and
//!   streaming at once rather than the first ending before the last has started;
//! - the server process's CPU time per delta (`/proc/PID/stat`), which a busy machine disturbs
//!   far less than the rates, and its write system calls per delta (`/proc/PID/io`): about one
//!   per delta means one socket write per event.
//!
//! Linux only (`/proc`). 1,000 streams need about 2,300 open files in the server process: the
//! bench checks `RLIMIT_NOFILE` first and says which `ulimit -n` to run.
//!
//! `cargo bench --bench server`; `CHATSTREAM_BENCH_QUICK=1` for a smoke run with small counts;
//! `CHATSTREAM_BENCH_STORE=memory` runs the chatstream servers on the memory store instead of
//! SQLite.
//! The upstream reads the token count and delay from the user message (`tokens=N delay_ms=D`,
//! and `start_at_ms=T` to hold the first token until `T` milliseconds after the Unix epoch), so
//! one upstream serves every scenario. Deltas/s counts the tokens in the text the client
//! received (the stateful path may hand a lagging subscriber several deltas coalesced into one
//! event, with the same text), and a stream that did not deliver every token fails the bench.
//! Every figure is printed with its ratio to the baseline relay's in the same run, and the
//! targets of issue 18 judged on them.
//!
//! A last column, "upstream alone", has the client read a second upstream process itself, with
//! no server in between: the most deltas/s any server could pass on, with the upstream and the
//! client sharing the same cores (its CPU figures are the upstream's own). Where the relay is
//! already near it, the rate rows cannot tell a faster server from a slower one; the server's
//! CPU per delta still does.
// A test, example or bench crate is its own root: `pub` marks what its modules share.
#![allow(unreachable_pub)]
// A benchmark stops at the first failure, like a test.
#![allow(clippy::expect_used)]

// The example is a binary: its modules are compiled into this target.
include!("../examples/server/embed.rs");

use std::{
    convert::Infallible,
    io::{BufRead, BufReader, Read, Write},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::State,
    http::{StatusCode, header},
    response::{
        IntoResponse, Response, Sse,
        sse::{Event, KeepAlive},
    },
    routing::post,
};
use chatstream::{ChatService, provider::OpenAiProvider, server::ServerOptions};
use eventsource_stream::Eventsource;
use futures::{StreamExt, future::ready, stream};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The words of the recorded OpenAI reply (tests/data/fixtures/openai/text.sse), cycled.
const WORDS: [&str; 13] = [
    "Stream", "ing", " lets", " the", " user", " see", " the", " reply", " as", " it", " is",
    " written", ".",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    match args.iter().position(|a| a == "--serve") {
        Some(i) => rt.block_on(serve(&args[i + 1..])),
        None => rt.block_on(bench()),
    }
}

// ---------------------------------------------------------------- child processes

async fn serve(args: &[String]) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    // The chatstream server is served as examples/server/main.rs serves it, with one router
    // shared by every connection (`into_make_service`); the others as one writes them by hand,
    // `axum::serve(listener, router)`.
    let (router, shared) = match args.first().map(String::as_str) {
        Some("upstream") => (upstream_router(), false),
        Some("baseline") => (baseline_router(&args[1]), false),
        Some("chatstream") => (chatstream_router(&args[1], &args[2], false).await, true),
        Some("observed") => (chatstream_router(&args[1], &args[2], true).await, true),
        other => panic!("unknown server kind {other:?}"),
    };
    println!("{}", listener.local_addr().expect("address"));
    std::io::stdout().flush().expect("stdout");
    // The parent holds our standard input: when it closes (the bench is done, or died), so do we.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    if shared {
        axum::serve(listener, router.into_make_service()).await
    } else {
        axum::serve(listener, router).await
    }
    .expect("serve");
}

// ---- the upstream: OpenAI's streaming chunks, as recorded, with no delay (or a fixed one)

fn upstream_router() -> Router {
    Router::new().route("/v1/chat/completions", post(upstream))
}

fn chunk(delta: &str, finish: &str) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-CKx1\",\"object\":\"chat.completion.chunk\",\"created\":1763700000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}],\"usage\":null}}\n\n"
    ))
}

struct Frames {
    role: Bytes,
    words: Vec<Bytes>,
    finish: Bytes,
}

static FRAMES: std::sync::LazyLock<Frames> = std::sync::LazyLock::new(|| Frames {
    role: chunk(
        r#"{"role":"assistant","content":"","refusal":null}"#,
        "null",
    ),
    words: WORDS
        .iter()
        .map(|w| chunk(&json!({ "content": w }).to_string(), "null"))
        .collect(),
    finish: chunk("{}", r#""stop""#),
});

/// `tokens=N delay_ms=D start_at_ms=T` from the last message (0 for a missing field).
fn scenario(body: &Value) -> (usize, u64, u64) {
    let text = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        field("tokens") as usize,
        field("delay_ms"),
        field("start_at_ms"),
    )
}

/// Waits until `start_at_ms` after the Unix epoch (at once for 0 or a past instant).
async fn hold_until(start_at_ms: u64) {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(start_at_ms);
    if let Ok(wait) = at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
}

async fn upstream(Json(body): Json<Value>) -> Response {
    let (tokens, delay_ms, start_at_ms) = scenario(&body);
    let frames = &*FRAMES;
    let tail = [
        frames.finish.clone(),
        Bytes::from(format!(
            "data: {{\"id\":\"chatcmpl-CKx1\",\"object\":\"chat.completion.chunk\",\"created\":1763700000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[],\"usage\":{{\"prompt_tokens\":19,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}\n\n",
            tokens + 19
        )),
        Bytes::from_static(b"data: [DONE]\n\n"),
    ];
    let words = (0..tokens).map(|i| frames.words[i % WORDS.len()].clone());
    let role = stream::iter([Ok::<_, Infallible>(frames.role.clone())]);
    // Nothing after the role chunk until the start instant, if one is set.
    let hold = stream::once(hold_until(start_at_ms)).filter_map(|()| ready(None));
    let frames = role
        .chain(hold)
        .chain(stream::iter(words.chain(tail).map(Ok)));
    let body = if delay_ms == 0 {
        Body::from_stream(frames)
    } else {
        let delay = Duration::from_millis(delay_ms);
        Body::from_stream(frames.then(move |f| async move {
            tokio::time::sleep(delay).await;
            f
        }))
    };
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

// ---- the baseline: what one writes by hand with axum, reqwest and eventsource-stream

#[derive(Clone)]
struct Baseline {
    client: reqwest::Client,
    url: String,
}

#[derive(Deserialize)]
struct Chunk {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    delta: ChunkDelta,
}

#[derive(Deserialize)]
struct ChunkDelta {
    content: Option<String>,
}

#[derive(Serialize)]
struct Content {
    content: String,
}

fn baseline_router(upstream: &str) -> Router {
    let state = Baseline {
        client: reqwest::Client::new(),
        url: format!("{upstream}/v1/chat/completions"),
    };
    Router::new()
        .route("/api/chat", post(baseline_chat))
        .with_state(state)
}

async fn baseline_chat(State(b): State<Baseline>, Json(body): Json<Value>) -> Response {
    let request = json!({
        "model": "gpt-4o-mini",
        "messages": body["messages"],
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let upstream = match b.client.post(&b.url).json(&request).send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => return (StatusCode::BAD_GATEWAY, r.status().to_string()).into_response(),
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let events = upstream
        .bytes_stream()
        .eventsource()
        .take_while(|e| ready(e.as_ref().is_ok_and(|e| e.data != "[DONE]")))
        .filter_map(|e| {
            let content = e
                .ok()
                .and_then(|e| serde_json::from_str::<Chunk>(&e.data).ok())
                .and_then(|c| c.choices.into_iter().next())
                .and_then(|c| c.delta.content)
                .filter(|c| !c.is_empty());
            ready(content.map(|content| Event::default().json_data(Content { content })))
        })
        .chain(stream::once(ready(Ok(
            Event::default().data(r#"{"done":true}"#)
        ))));
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

// ---- the chatstream server, built as examples/server/main.rs builds it

/// With `observed`, metrics and spans are on: a Prometheus recorder served at `GET /metrics`,
/// and a subscriber that keeps every span and formats the `info` log lines into a sink.
async fn chatstream_router(upstream: &str, db: &str, observed: bool) -> Router {
    let openai = OpenAiProvider::builder()
        .base_url(format!("{upstream}/v1"))
        .api_key("sk-bench")
        .model("gpt-4o-mini")
        .build()
        .expect("provider");
    let provider = chatstream::provider::resilient(openai);
    // `CHATSTREAM_BENCH_STORE=memory` puts the stateful path on the memory store instead, to
    // tell what SQLite adds to its figures.
    let url = match std::env::var("CHATSTREAM_BENCH_STORE").as_deref() {
        Ok("memory") => "memory".to_string(),
        _ => format!("sqlite://{db}"),
    };
    let store = chatstream::store::open(&url).await.expect("store");
    store.recover_streaming(None).await.expect("recover");
    let service = ChatService::builder()
        .provider(provider)
        .store(store)
        .build()
        .expect("service");
    let mut options = ServerOptions::default();
    let (spans, metrics) = observe();
    if observed && spans {
        tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::INFO)
            .init();
    }
    if observed && metrics {
        options = options.with_metrics(chatstream::metrics::install().expect("metrics recorder"));
    }
    chatstream::server::router(service, options)
}

/// What the observed server turns on, (spans, metrics): both, unless
/// `CHATSTREAM_BENCH_OBSERVE` is `spans` or `metrics` (that one only) or `off` (neither: the
/// observed column is then the stateful one again, which shows how far two identical servers'
/// figures differ).
fn observe() -> (bool, bool) {
    match std::env::var("CHATSTREAM_BENCH_OBSERVE").as_deref() {
        Ok("spans") => (true, false),
        Ok("metrics") => (false, true),
        Ok("off") => (false, false),
        _ => (true, true),
    }
}

/// A server process; dropping it closes its standard input, which ends it.
struct ServerProcess {
    child: Child,
    base: String,
}

impl ServerProcess {
    fn spawn(args: &[&str]) -> ServerProcess {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .arg("--serve")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("server address");
        assert!(!line.trim().is_empty(), "{args:?} did not start");
        ServerProcess {
            child,
            base: format!("http://{}", line.trim()),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if self.child.wait().is_err() {
            let _ = self.child.kill();
        }
    }
}

/// User plus system CPU time a process has used so far.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name, in parentheses, may hold spaces: the fields counted are after it.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// How many write system calls a process has made so far: socket writes, mostly, and the
/// store's file writes.
fn writes_of(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// (VmRSS, VmHWM) in KiB.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

// ---------------------------------------------------------------- the client

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Baseline,
    Single,
    /// `POST /v1/chat/completions` with `"stream": true`.
    OpenAi,
    Stateful,
    /// The stateful path with metrics and spans on.
    Observed,
    /// No server: the client reads the upstream itself (`POST /v1/chat/completions`), for the
    /// most deltas/s any server in between could reach with the same upstream and client on
    /// the same cores.
    Direct,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Baseline => "baseline relay",
            Path::Single => "POST /api/chat",
            Path::OpenAi => "POST /v1/chat/...",
            Path::Stateful => "stateful",
            Path::Observed => "stateful, observed",
            Path::Direct => "upstream alone",
        }
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    path: Path,
    /// Streams that have had their first delta and not their end.
    live: AtomicUsize,
    /// When set (milliseconds after the Unix epoch), the upstream holds every reply's first token
    /// until then.
    start_at_ms: AtomicU64,
    next_chat: AtomicU64,
}

struct Streamed {
    to_first: Duration,
    total: Duration,
    /// The tokens in the text received.
    tokens: usize,
    /// The text, when asked for.
    text: String,
}

/// The data of a `POST /api/chat` event (the relay's and the server's): `{"content":…}`.
#[derive(Deserialize)]
struct ContentData<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
}

/// The data of a stateful `delta` event: `{"type":"text","text":…}` for text.
#[derive(Deserialize)]
struct DeltaData<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<std::borrow::Cow<'a, str>>,
}

/// The data of a `chat.completion.chunk` event, as far as its text.
#[derive(Deserialize)]
struct CompletionChunk<'a> {
    #[serde(borrow)]
    choices: Vec<CompletionChoice<'a>>,
}

#[derive(Deserialize)]
struct CompletionChoice<'a> {
    #[serde(borrow)]
    delta: ContentData<'a>,
}

/// How many tokens a received text of `bytes` bytes holds: every reply is the words cycled.
fn tokens_in(bytes: usize) -> usize {
    let cycle: usize = WORDS.iter().map(|w| w.len()).sum();
    let mut tokens = bytes / cycle * WORDS.len();
    let mut rest = bytes % cycle;
    for word in WORDS {
        if rest < word.len() {
            break;
        }
        rest -= word.len();
        tokens += 1;
    }
    tokens
}

impl Client {
    fn new(base: &str, path: Path) -> Arc<Client> {
        Arc::new(Client {
            http: reqwest::Client::new(),
            base: base.to_string(),
            path,
            live: AtomicUsize::new(0),
            start_at_ms: AtomicU64::new(0),
            next_chat: AtomicU64::new(0),
        })
    }

    /// One reply of `tokens` deltas, `delay_ms` apart, read to its end. The events are only
    /// classified, not decoded, unless `keep_text`, so the client costs the same on every path.
    async fn stream(
        &self,
        tokens: usize,
        delay_ms: u64,
        keep_text: bool,
    ) -> Result<Streamed, String> {
        let prompt = format!(
            "tokens={tokens} delay_ms={delay_ms} start_at_ms={}",
            self.start_at_ms.load(Ordering::Relaxed)
        );
        let start = Instant::now();
        let response = match self.path {
            Path::Baseline | Path::Single => self
                .http
                .post(format!("{}/api/chat", self.base))
                .json(&json!({"messages": [{"role": "user", "content": prompt}]}))
                .send()
                .await
                .map_err(|e| e.to_string())?,
            Path::OpenAi | Path::Direct => self
                .http
                .post(format!("{}/v1/chat/completions", self.base))
                .json(&json!({"messages": [{"role": "user", "content": prompt}], "stream": true}))
                .send()
                .await
                .map_err(|e| e.to_string())?,
            Path::Stateful | Path::Observed => {
                let chat = format!("bench-{}", self.next_chat.fetch_add(1, Ordering::Relaxed));
                let sent = self
                    .http
                    .post(format!("{}/api/messages", self.base))
                    .json(&json!({"chatId": chat, "content": prompt}))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = sent.status();
                // Read to its end, the POST's connection goes back to the client's pool and
                // carries the GET, as a browser's would: one connection per chat.
                let answer = sent.text().await.map_err(|e| e.to_string())?;
                if status != StatusCode::ACCEPTED {
                    return Err(format!("send: {status} {answer}"));
                }
                self.http
                    .get(format!("{}/api/stream/{chat}", self.base))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        if response.status() != StatusCode::OK {
            return Err(format!("stream: {}", response.status()));
        }
        let mut events = sse_stream::SseByteStream::new(response.bytes_stream());
        let mut to_first = None;
        let mut text = String::new();
        let mut received = 0;
        let outcome = loop {
            let Some(event) = events.next().await else {
                break Err("the stream ended without its last event".to_string());
            };
            let event = event.map_err(|e| e.to_string())?;
            let Some(data) = event.data else { continue };
            // Every path's text is read out of its events (one stateful event may carry several
            // deltas coalesced), and the tokens counted in it.
            let bad = |e: serde_json::Error| format!("{e}: {data}");
            let (piece, is_end) = match self.path {
                Path::Baseline | Path::Single => {
                    if data.starts_with(r#"{"done""#) || data.starts_with(r#"{"error""#) {
                        (None, true)
                    } else {
                        let d: ContentData<'_> = serde_json::from_str(&data).map_err(bad)?;
                        (d.content, false)
                    }
                }
                Path::OpenAi | Path::Direct => {
                    if data == "[DONE]" || data.starts_with(r#"{"error""#) {
                        (None, true)
                    } else {
                        let c: CompletionChunk<'_> = serde_json::from_str(&data).map_err(bad)?;
                        (
                            c.choices.into_iter().next().and_then(|c| c.delta.content),
                            false,
                        )
                    }
                }
                Path::Stateful | Path::Observed => match event.event.as_deref() {
                    Some("delta") => {
                        let d: DeltaData<'_> = serde_json::from_str(&data).map_err(bad)?;
                        (d.text.filter(|_| d.kind == "text"), false)
                    }
                    Some("done" | "error") => (None, true),
                    _ => (None, false),
                },
            };
            if let Some(piece) = piece.filter(|p| !p.is_empty()) {
                if to_first.is_none() {
                    to_first = Some(start.elapsed());
                    self.live.fetch_add(1, Ordering::Relaxed);
                }
                received += piece.len();
                if keep_text {
                    text.push_str(&piece);
                }
            }
            if is_end {
                break if data.contains("error") {
                    Err(format!("error event: {data}"))
                } else {
                    Ok(())
                };
            }
        };
        if to_first.is_some() {
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
        outcome?;
        let received_tokens = tokens_in(received);
        if received != expected_len(tokens) {
            return Err(format!(
                "received {received_tokens} tokens ({received} bytes) of {tokens}"
            ));
        }
        Ok(Streamed {
            to_first: to_first.ok_or("no delta")?,
            total: start.elapsed(),
            tokens: received_tokens,
            text,
        })
    }

    /// `n` streams at once; the wall time from the first request to the last end. A failed
    /// stream fails the bench, unless `lenient`: then the failures are counted.
    async fn concurrent(
        self: &Arc<Self>,
        n: usize,
        tokens: usize,
        delay_ms: u64,
        lenient: bool,
    ) -> (Duration, Vec<Streamed>, usize) {
        let start = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let client = self.clone();
                tokio::spawn(async move {
                    tokio::time::timeout(
                        Duration::from_secs(120),
                        client.stream(tokens, delay_ms, false),
                    )
                    .await
                    .map_err(|_| "timed out".to_string())?
                })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        let mut failed = 0;
        for t in tasks {
            match t.await.expect("stream task") {
                Ok(s) => out.push(s),
                Err(e) if lenient => {
                    if failed == 0 {
                        eprintln!("{:?}: a stream failed: {e}", self.path);
                    }
                    failed += 1;
                }
                Err(e) => panic!("{:?}: a stream failed: {e}", self.path),
            }
        }
        (start.elapsed(), out, failed)
    }
}

// ---------------------------------------------------------------- the bench

struct Params {
    long_tokens: usize,
    long_runs: usize,
    streams: usize,
    stream_tokens: usize,
    rounds: usize,
    slow_streams: usize,
    slow_tokens: usize,
    slow_delay_ms: u64,
    /// How many times each server gets the slow streams all at once, for their time to first
    /// delta.
    bursts: usize,
    /// How long after the first slow request the slow streams start, all at once.
    slow_hold: Duration,
}

#[derive(Default)]
struct Figures {
    one_stream: f64,
    one_stream_best: f64,
    aggregate: f64,
    aggregate_best: f64,
    ttfd_p50: Duration,
    ttfd_p99: Duration,
    /// Time to first delta of the slow streams started all at once.
    slow_ttfd_p50: Duration,
    slow_ttfd_p99: Duration,
    /// Slow streams started at once that failed (refused or cut off).
    slow_failed: usize,
    /// Server process CPU time per delta, one stream and concurrent streams.
    cpu_one: Duration,
    cpu_aggregate: Duration,
    /// Server write system calls per delta, concurrent streams.
    writes_aggregate: f64,
    idle_kib: u64,
    peak_kib: u64,
    peak_live: usize,
    per_stream_kib: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The expected text of a reply of `tokens` tokens.
fn expected_text(tokens: usize) -> String {
    (0..tokens).map(|i| WORDS[i % WORDS.len()]).collect()
}

/// The length of [`expected_text`].
fn expected_len(tokens: usize) -> usize {
    (0..tokens).map(|i| WORDS[i % WORDS.len()].len()).sum()
}

fn spawn_server(path: Path, upstream: &str, dir: &std::path::Path, n: usize) -> ServerProcess {
    match path {
        Path::Baseline => ServerProcess::spawn(&["baseline", upstream]),
        // The upstream's own figures: a process of its own, so that its CPU time is this
        // path's alone.
        Path::Direct => ServerProcess::spawn(&["upstream"]),
        Path::Single | Path::OpenAi | Path::Stateful | Path::Observed => {
            let db = dir.join(format!("bench-{n}.sqlite"));
            let kind = if path == Path::Observed {
                "observed"
            } else {
                "chatstream"
            };
            ServerProcess::spawn(&[kind, upstream, db.to_str().expect("utf-8 path")])
        }
    }
}

async fn warm_up(client: &Client, p: &Params) {
    // Checks the text end to end once, and fills connection pools and lazy state before anything
    // is measured.
    let s = client.stream(500, 0, true).await.expect("warm-up stream");
    assert_eq!(
        s.text,
        expected_text(500),
        "{:?}: the relayed text differs",
        client.path
    );
    for _ in 0..3 {
        client
            .stream(p.stream_tokens, 0, false)
            .await
            .expect("warm-up stream");
    }
}

const PATHS: [Path; 6] = [
    Path::Baseline,
    Path::Single,
    Path::OpenAi,
    Path::Stateful,
    Path::Observed,
    Path::Direct,
];

/// Throughput and latency, the four servers taking turns run by run, so that a burst of other
/// load on the machine spreads over all of them rather than hitting one.
async fn measure_rates(upstream: &str, dir: &std::path::Path, p: &Params) -> Vec<Figures> {
    let servers: Vec<ServerProcess> = PATHS
        .iter()
        .map(|&path| {
            let server = spawn_server(path, upstream, dir, 2 * path as usize);
            eprintln!("{}: server pid {}", path.label(), server.pid());
            server
        })
        .collect();
    let clients: Vec<Arc<Client>> = PATHS
        .iter()
        .zip(&servers)
        .map(|(&path, server)| Client::new(&server.base, path))
        .collect();
    for client in &clients {
        warm_up(client, p).await;
    }
    let n = PATHS.len();
    let mut one = vec![Vec::new(); n];
    let mut cpu_one = vec![Duration::ZERO; n];
    for _ in 0..p.long_runs {
        for i in 0..n {
            let cpu = cpu_of(servers[i].pid());
            let s = tokio::time::timeout(
                Duration::from_secs(300),
                clients[i].stream(p.long_tokens, 0, false),
            )
            .await
            .expect("the long stream timed out")
            .expect("long stream");
            cpu_one[i] += cpu_of(servers[i].pid()) - cpu;
            one[i].push(s.tokens as f64 / s.total.as_secs_f64());
        }
    }
    let mut rates = vec![Vec::new(); n];
    let mut firsts = vec![Vec::new(); n];
    let mut cpu_all = vec![Duration::ZERO; n];
    let mut writes_all = vec![0; n];
    for _ in 0..p.rounds {
        for i in 0..n {
            let cpu = cpu_of(servers[i].pid());
            let writes = writes_of(servers[i].pid());
            let (wall, streams, _) = clients[i]
                .concurrent(p.streams, p.stream_tokens, 0, false)
                .await;
            cpu_all[i] += cpu_of(servers[i].pid()) - cpu;
            writes_all[i] += writes_of(servers[i].pid()) - writes;
            let tokens: usize = streams.iter().map(|s| s.tokens).sum();
            rates[i].push(tokens as f64 / wall.as_secs_f64());
            firsts[i].extend(streams.iter().map(|s| s.to_first));
        }
    }
    // Many new slow streams arriving at once (each stateful one a new chat), timed from the
    // request (the stateful path's from its POST) to the first text.
    let mut slow_firsts = vec![Vec::new(); n];
    let mut slow_failed = vec![0; n];
    for _ in 0..p.bursts {
        for i in 0..n {
            let (_, streams, failed) = clients[i]
                .concurrent(p.slow_streams, p.slow_tokens, p.slow_delay_ms, true)
                .await;
            slow_failed[i] += failed;
            slow_firsts[i].extend(streams.iter().map(|s| s.to_first));
        }
    }
    let observed = PATHS.iter().position(|&p| p == Path::Observed);
    if let Some(i) = observed.filter(|_| observe().1) {
        report_metrics(&clients[i]).await;
    }
    (0..n)
        .map(|i| {
            firsts[i].sort();
            slow_firsts[i].sort();
            Figures {
                one_stream: median(one[i].clone()),
                one_stream_best: one[i].iter().copied().fold(0.0, f64::max),
                aggregate: median(rates[i].clone()),
                aggregate_best: rates[i].iter().copied().fold(0.0, f64::max),
                ttfd_p50: percentile(&firsts[i], 0.50),
                ttfd_p99: percentile(&firsts[i], 0.99),
                slow_ttfd_p50: percentile(&slow_firsts[i], 0.50),
                slow_ttfd_p99: percentile(&slow_firsts[i], 0.99),
                slow_failed: slow_failed[i],
                cpu_one: cpu_one[i] / (p.long_runs * p.long_tokens) as u32,
                cpu_aggregate: cpu_all[i] / (p.rounds * p.streams * p.stream_tokens) as u32,
                writes_aggregate: writes_all[i] as f64
                    / (p.rounds * p.streams * p.stream_tokens) as f64,
                ..Figures::default()
            }
        })
        .collect()
}

/// Shows that the observed server's metrics were live: what it counted, from its `/metrics`.
async fn report_metrics(client: &Client) {
    let text = client
        .http
        .get(format!("{}/metrics", client.base))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics");
    let total = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    eprintln!(
        "{}: /metrics counted {} replies, {} deltas, {} HTTP requests",
        Path::Observed.label(),
        total("chatstream_replies_total{"),
        total("chatstream_deltas_total{"),
        total("chatstream_http_requests_total{"),
    );
}

/// Memory under many slow streams, in a fresh process so that its high-water mark is this
/// load's.
async fn measure_memory(
    path: Path,
    upstream: &str,
    dir: &std::path::Path,
    p: &Params,
    f: &mut Figures,
) {
    let server = spawn_server(path, upstream, dir, 2 * path as usize + 1);
    let client = Client::new(&server.base, path);
    warm_up(&client, p).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = server.pid();
    f.idle_kib = memory_of(pid).0;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let done = done.clone();
        let client = client.clone();
        async move {
            // The high-water mark is read at the end; this only counts how many streams were
            // live at once.
            let mut most_live = 0;
            while !done.load(Ordering::Relaxed) {
                most_live = most_live.max(client.live.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most_live
        }
    });
    let start_at = std::time::SystemTime::now() + p.slow_hold;
    let start_at_ms = start_at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    client.start_at_ms.store(start_at_ms, Ordering::Relaxed);
    client
        .concurrent(p.slow_streams, p.slow_tokens, p.slow_delay_ms, false)
        .await;
    done.store(true, Ordering::Relaxed);
    let most_live = sampler.await.expect("sampler");
    let (_, hwm) = memory_of(pid);
    f.peak_kib = hwm;
    f.peak_live = most_live;
    f.per_stream_kib = hwm.saturating_sub(f.idle_kib) as f64 / most_live.max(1) as f64;
}

fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn bench() {
    let quick =
        std::env::var_os("CHATSTREAM_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0");
    let p = if quick {
        Params {
            long_tokens: 2_000,
            long_runs: 1,
            streams: 20,
            stream_tokens: 50,
            rounds: 1,
            slow_streams: 50,
            slow_tokens: 10,
            slow_delay_ms: 20,
            bursts: 1,
            slow_hold: Duration::from_secs(1),
        }
    } else {
        Params {
            long_tokens: 20_000,
            long_runs: 7,
            streams: 200,
            stream_tokens: 200,
            rounds: 5,
            slow_streams: 1_000,
            slow_tokens: 50,
            slow_delay_ms: 20,
            bursts: 2,
            slow_hold: Duration::from_secs(4),
        }
    };
    // Each live stream holds two sockets in the server process (client side and upstream side)
    // and one here; the upstream and the server are separate processes with this limit too.
    let needed = 2 * p.slow_streams as u64 + 256;
    match open_file_limit() {
        Some(limit) if limit < needed => {
            eprintln!(
                "the open-file limit is {limit}, the bench needs about {needed} per process: \
                 run `ulimit -n {}` first",
                needed.next_power_of_two()
            );
            std::process::exit(2);
        }
        _ => {}
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let upstream = ServerProcess::spawn(&["upstream"]);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "server bench{}: 1×{} tokens, {}×{} tokens, {} slow streams of {} tokens {} ms apart; load average before: {}",
        if quick { " (quick)" } else { "" },
        p.long_tokens,
        p.streams,
        p.stream_tokens,
        p.slow_streams,
        p.slow_tokens,
        p.slow_delay_ms,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    let rates = measure_rates(&upstream.base, dir.path(), &p).await;
    let mut results = Vec::new();
    for (path, mut f) in PATHS.into_iter().zip(rates) {
        if path != Path::Direct {
            measure_memory(path, &upstream.base, dir.path(), &p, &mut f).await;
        }
        results.push((path, f));
    }
    print_table(&results, &p);
}

fn print_table(results: &[(Path, Figures)], p: &Params) {
    let base = &results[0].1;
    // Every cell beside the baseline's carries its ratio to the baseline's, as the targets are.
    let row = |name: String, value: &dyn Fn(&Figures) -> f64, unit: &str| {
        let mut line = format!("{name:<42}");
        for (path, f) in results {
            let v = value(f);
            if *path == Path::Direct && v == 0.0 {
                // Not measured without a server (the memory rows).
                line.push_str(&format!(" {:>24}", "—"));
                continue;
            }
            let number = if v < 100.0 && (!unit.is_empty() || v.fract() != 0.0) {
                format!("{v:.2}{unit}")
            } else {
                format!("{v:.0}{unit}")
            };
            let cell = if *path != Path::Baseline && value(base) > 0.0 {
                format!("{number} ({:.2}×)", v / value(base))
            } else {
                number
            };
            line.push_str(&format!(" {cell:>24}"));
        }
        println!("{line}");
    };
    println!();
    let mut header = format!("{:<42}", "");
    for (path, _) in results {
        header.push_str(&format!(" {:>24}", path.label()));
    }
    println!("{header}");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    row(
        format!("deltas/s, 1 stream of {}, median", p.long_tokens),
        &|f| f.one_stream,
        "",
    );
    row("  best".into(), &|f| f.one_stream_best, "");
    row(
        format!(
            "deltas/s, {} streams of {}, median",
            p.streams, p.stream_tokens
        ),
        &|f| f.aggregate,
        "",
    );
    row("  best".into(), &|f| f.aggregate_best, "");
    row(
        format!("first delta p50, {} streams", p.streams),
        &|f| ms(f.ttfd_p50),
        " ms",
    );
    row(
        format!("first delta p99, {} streams", p.streams),
        &|f| ms(f.ttfd_p99),
        " ms",
    );
    row(
        format!("first delta p50, {} new slow streams", p.slow_streams),
        &|f| ms(f.slow_ttfd_p50),
        " ms",
    );
    row(
        format!("first delta p99, {} new slow streams", p.slow_streams),
        &|f| ms(f.slow_ttfd_p99),
        " ms",
    );
    row(
        format!("failed of {} new slow streams", p.bursts * p.slow_streams),
        &|f| f.slow_failed as f64,
        "",
    );
    row(
        "server CPU per delta, 1 stream".into(),
        &|f| us(f.cpu_one),
        " µs",
    );
    row(
        format!("server CPU per delta, {} streams", p.streams),
        &|f| us(f.cpu_aggregate),
        " µs",
    );
    row(
        format!("server write calls per delta, {} streams", p.streams),
        &|f| f.writes_aggregate,
        "",
    );
    row("RSS idle".into(), &|f| f.idle_kib as f64 / 1024.0, " MiB");
    row(
        format!("RSS peak, {} slow streams", p.slow_streams),
        &|f| f.peak_kib as f64 / 1024.0,
        " MiB",
    );
    row(
        "RSS per live stream (peak − idle) / live".into(),
        &|f| f.per_stream_kib,
        " KiB",
    );
    row(
        "most streams live at once".into(),
        &|f| f.peak_live as f64,
        "",
    );
    println!();
    // The targets of issue 18, judged on this run's medians (the best runs show how noisy the
    // machine was).
    let check = |ok: bool| if ok { "met" } else { "MISSED" };
    for (path, f) in results[1..].iter().filter(|(p, _)| *p != Path::Direct) {
        let stateful = matches!(path, Path::Stateful | Path::Observed);
        let (one, all) = (f.one_stream / base.one_stream, f.aggregate / base.aggregate);
        let first = ms(f.slow_ttfd_p99) / ms(base.slow_ttfd_p99);
        let first_target = if stateful { 2.0 } else { 1.2 };
        let memory = f.per_stream_kib / base.per_stream_kib;
        println!(
            "target {}: throughput ≥ 2.0× {} ({one:.2}×, {all:.2}×); first delta p99 ≤ \
             {first_target:.1}× {} ({first:.2}×); memory per live stream ≤ 1.0× {} ({memory:.2}×)",
            path.label(),
            check(one >= 2.0 && all >= 2.0),
            check(first <= first_target),
            check(memory <= 1.0),
        );
    }
    let of = |path: Path| results.iter().find(|(p, _)| *p == path).map(|(_, f)| f);
    if let Some(direct) = of(Path::Direct) {
        println!(
            "ceiling: the client reading the upstream itself, with no server in between, got \
             {:.2}× the relay's deltas/s (1 stream) and {:.2}× ({} streams); its CPU column is \
             the upstream's",
            direct.one_stream / base.one_stream,
            direct.aggregate / base.aggregate,
            p.streams,
        );
    }
    if let (Some(plain), Some(observed)) = (of(Path::Stateful), of(Path::Observed)) {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let on = match observe() {
            (true, true) => "metrics and spans",
            (true, false) => "spans",
            (false, true) => "metrics",
            (false, false) => "nothing",
        };
        println!(
            "{on} on the stateful path: throughput {:.2}× (1 stream), {:.2}× ({} streams); \
             CPU per delta {:.2} µs against {:.2} (1 stream), {:.2} µs against {:.2} ({} streams)",
            observed.one_stream / plain.one_stream,
            observed.aggregate / plain.aggregate,
            p.streams,
            us(observed.cpu_one),
            us(plain.cpu_one),
            us(observed.cpu_aggregate),
            us(plain.cpu_aggregate),
            p.streams,
        );
    }
}
