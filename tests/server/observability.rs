//! Observability: `GET /metrics` parses as Prometheus text and its counters move by exactly what
//! one complete, one cancelled and one failed reply do; no label holds an id; the request and
//! reply spans carry OpenTelemetry's attribute names.
//!
//! The metrics recorder is the process's: every test of this binary records into it at once.
//! Each test here counts under a provider name and a route prefix no other test uses, and
//! compares values before and after; the few series it shares with others (the store's writes,
//! unmatched routes, orphan recovery) are checked as lower bounds.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use chatstream::provider::{Script, ScriptedProvider};
use chatstream::{
    Error, FinishReason, LlmProvider, Message, MessageStatus, MessageStore,
    resilience::{RecoveryPolicy, ResilienceExt, RetryPolicy},
    store::MemoryStore,
};
use futures::StreamExt;
use serde_json::json;

use crate::support::*;

// ---- the Prometheus text format ----

/// One sample line of an exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (0.0.4) strictly: every line is blank, a comment, or a
/// sample of a family declared by `# TYPE`, with well-formed names, quoted and escaped label
/// values and a number. Written here because `prometheus-parse` skips lines it does not
/// understand, so it could not tell a malformed exposition from a good one.
fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fail = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            match words.as_slice() {
                ["TYPE", name, kind] => {
                    if !is_name(name) {
                        return Err(fail("bad family name"));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(kind) {
                        return Err(fail("unknown type"));
                    }
                    if families
                        .insert(name.to_string(), kind.to_string())
                        .is_some()
                    {
                        return Err(fail("family declared twice"));
                    }
                }
                ["TYPE", ..] => return Err(fail("malformed TYPE")),
                ["HELP", name, ..] if is_name(name) => {}
                ["HELP", ..] => return Err(fail("malformed HELP")),
                _ => {}
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|why| fail(&why))?;
        let family = families
            .iter()
            .find(|(family, kind)| {
                let suffixes: &[&str] = match kind.as_str() {
                    "histogram" => &["_bucket", "_sum", "_count"],
                    "summary" => &["", "_sum", "_count"],
                    _ => &[""],
                };
                suffixes
                    .iter()
                    .any(|s| sample.name == format!("{family}{s}"))
            })
            .ok_or_else(|| fail("a sample of no declared family"))?;
        if family.1 == "histogram"
            && sample.name.ends_with("_bucket")
            && !sample.labels.contains_key("le")
        {
            return Err(fail("a bucket without `le`"));
        }
        samples.push(sample);
    }
    Ok(samples)
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_name(name) {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = inner.split_once("=\"").ok_or("label without `=\"`")?;
            if !is_name(label) || label.contains(':') {
                return Err(format!("bad label name {label:?}"));
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => return Err("bad escape in a label value".into()),
                    },
                    (_, c) => value.push(c),
                }
            };
            if labels.insert(label.to_string(), value).is_some() {
                return Err(format!("label {label:?} twice"));
            }
            inner = &after[end + 1..];
            if let Some(next) = inner.strip_prefix(',') {
                inner = next;
            } else if !inner.starts_with('}') {
                return Err("labels not separated by commas".into());
            }
        }
    }
    if !rest.starts_with(' ') {
        return Err("no space before the value".into());
    }
    let mut fields = rest.split_whitespace();
    let value = match fields.next().ok_or("no value")? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing text".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The metrics as the server renders them, parsed.
struct Scrape(Vec<Sample>);

impl Scrape {
    async fn of(s: &Server) -> Scrape {
        let resp = s.get("/metrics").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = resp.text().await.unwrap();
        Scrape(parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}")))
    }

    /// The sample of `name` with exactly these labels, or 0 when it is not there yet.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map_or(0.0, |s| s.value)
    }
}

/// What changed between two scrapes, one series at a time.
fn moved(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

#[test]
fn the_parser_rejects_malformed_text() {
    let good =
        "# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"v \\\"q\\\" \\\\ \\n\",j=\"\"} 3\n";
    let samples = parse(good).unwrap();
    assert_eq!(samples[0].labels["k"], "v \"q\" \\ \n");
    assert_eq!(samples[0].value, 3.0);
    let histogram = "# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.7\nh_count 2\n";
    assert_eq!(parse(histogram).unwrap().len(), 4);
    for bad in [
        "a_total 3\n",                              // no family
        "# TYPE a_total counter\na_total{k=v} 3\n", // unquoted
        "# TYPE a_total counter\na_total{k=\"v} 3\n",
        "# TYPE a_total counter\na_total{k=\"v\" j=\"w\"} 3\n",
        "# TYPE a_total counter\na_total{k=\"v\"}\n",
        "# TYPE a_total counter\na_total three\n",
        "# TYPE a_total counter\n1a_total 3\n",
        "# TYPE a_total thing\n",
        "# TYPE h histogram\nh_bucket 1\n",
    ] {
        assert!(parse(bad).is_err(), "{bad:?} parsed");
    }
}

// ---- the server under observation ----

/// The router with metrics on, nested under `prefix` so that its route labels are its own.
async fn observed(provider: impl LlmProvider, prefix: &str) -> Server {
    let service = chatstream::ChatService::builder()
        .provider(Arc::new(provider))
        .store(Arc::new(MemoryStore::new()))
        .build()
        .unwrap();
    let options = ServerOptions::default().with_metrics(chatstream::metrics::install().unwrap());
    let app = axum::Router::new().nest(prefix, chatstream::server::router(service, options));
    let mut s = serve_app(app).await;
    s.base.push_str(prefix);
    s
}

async fn follow_to_end(s: &Server, chat: &str) -> Vec<Sse> {
    let events: Vec<Sse> = sse_events(s.stream(chat, None).await).collect().await;
    assert_eq!(events.last().unwrap().event, "done", "{events:?}");
    events
}

#[tokio::test]
async fn counters_move_by_one_complete_one_cancelled_and_one_failed_reply() {
    const PROVIDER: &str = "observability-counts";
    let provider = ScriptedProvider::new()
        .named(PROVIDER)
        // The complete reply: retried once before any output, recovered once mid-stream.
        .then(Script::new().fail(|| Error::from_status(PROVIDER, 503, None, "busy", None)))
        .then(Script::new().text("Hel").fail(|| Error::Truncated {
            provider: PROVIDER.into(),
        }))
        .then(
            Script::new()
                .text("lo")
                .finish(FinishReason::Stop)
                .usage(4, 2),
        )
        // The cancelled reply: two deltas, then nothing until it is stopped.
        .then(Script::new().text("x").text("y").stall())
        // The failed reply: one delta, then an error no retry or recovery takes on.
        .then(
            Script::new()
                .text("partial")
                .fail(|| Error::from_status(PROVIDER, 400, None, "bad request", None)),
        );
    let provider = provider
        .with_retry(RetryPolicy::default().with_initial_backoff(Duration::from_millis(1)))
        .with_recovery(RecoveryPolicy::default());
    let s = observed(provider, "/counts").await;
    let before = Scrape::of(&s).await;

    assert_eq!(s.send("complete", "hi", None).await.status(), 202);
    let events = follow_to_end(&s, "complete").await;
    assert_eq!(text_of(&events), "Hello");
    assert_eq!(events.last().unwrap().data["status"], "complete");

    assert_eq!(s.send("cancelled", "hi", None).await.status(), 202);
    let (_, rest) = s.read_deltas("cancelled", 2).await;
    let live = Scrape::of(&s).await;
    assert_eq!(
        live.value("chatstream_replies_live", &[("provider", PROVIDER)]),
        1.0
    );
    assert_eq!(s.terminate("cancelled").await, json!({"terminated": true}));
    let rest: Vec<Sse> = rest.collect().await;
    assert_eq!(rest.last().unwrap().data["status"], "cancelled");

    assert_eq!(s.send("failed", "hi", None).await.status(), 202);
    let events = follow_to_end(&s, "failed").await;
    assert_eq!(events.last().unwrap().data["status"], "failed");

    assert_eq!(s.get("/no-such-route").await.status(), 404);
    let after = Scrape::of(&s).await;
    let p = ("provider", PROVIDER);
    let moved = |name: &str, labels: &[(&str, &str)]| moved(&before, &after, name, labels);
    for status in ["complete", "cancelled", "failed"] {
        let labels = [p, ("status", status)];
        assert_eq!(moved("chatstream_replies_total", &labels), 1.0, "{status}");
        assert_eq!(
            moved("chatstream_reply_duration_seconds_count", &labels),
            1.0,
            "{status}"
        );
    }
    assert_eq!(
        moved("chatstream_replies_total", &[p, ("status", "interrupted")]),
        0.0
    );
    assert_eq!(after.value("chatstream_replies_live", &[p]), 0.0);
    // Complete: a retry notice, "Hel", a recovery notice, "lo", the finish and the usage;
    // cancelled: "x" and "y"; failed: "partial".
    assert_eq!(moved("chatstream_deltas_total", &[p]), 6.0 + 2.0 + 1.0);
    assert_eq!(
        moved("chatstream_reply_first_delta_seconds_count", &[p]),
        3.0
    );
    assert_eq!(
        moved("chatstream_tokens_total", &[p, ("type", "input")]),
        4.0
    );
    assert_eq!(
        moved("chatstream_tokens_total", &[p, ("type", "output")]),
        2.0
    );
    assert_eq!(
        moved(
            "chatstream_upstream_errors_total",
            &[p, ("kind", "upstream")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "chatstream_upstream_errors_total",
            &[p, ("kind", "truncated")]
        ),
        0.0
    );
    assert_eq!(
        moved("chatstream_retries_total", &[p, ("kind", "upstream")]),
        1.0
    );
    assert_eq!(
        moved("chatstream_recoveries_total", &[p, ("kind", "truncated")]),
        1.0
    );
    let http = |method: &str, route: &str, status: &str| {
        moved(
            "chatstream_http_requests_total",
            &[
                ("method", method),
                ("route", &format!("/counts{route}")),
                ("status", status),
            ],
        )
    };
    assert_eq!(http("POST", "/api/messages", "202"), 3.0);
    assert_eq!(http("GET", "/api/stream/{chat_id}", "200"), 3.0);
    assert_eq!(http("POST", "/api/stream/{chat_id}/terminate", "200"), 1.0);
    // The first and the middle scrape; each is counted once answered.
    assert_eq!(http("GET", "/metrics", "200"), 2.0);
    // Shared with the other tests of this binary: at least this test's.
    let unmatched = [("method", "GET"), ("route", "unmatched"), ("status", "404")];
    assert!(moved("chatstream_http_requests_total", &unmatched) >= 1.0);
    let final_writes = [("store", "memory"), ("write", "final")];
    assert!(moved("chatstream_store_write_seconds_count", &final_writes) >= 3.0);
}

#[tokio::test]
async fn no_label_holds_an_id_or_anything_a_client_chose() {
    let provider = ScriptedProvider::new()
        .named("observability-labels")
        .then(Script::reply(["Hello"]));
    let s = observed(provider, "/labels").await;
    let chat = "label-chat-7f3a";
    let resp = s
        .client
        .post(s.url("/api/messages"))
        .json(&json!({
            "chatId": chat,
            "content": "hi",
            "clientMessageId": "client-key-9c2e",
            "model": "client-model-51d0",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let sent: serde_json::Value = resp.json().await.unwrap();
    follow_to_end(&s, chat).await;
    assert_eq!(s.history(chat).await.len(), 2);
    assert_eq!(
        s.get("/api/messages/label-chat-7f3a?limit=5")
            .await
            .status(),
        200
    );
    assert_eq!(s.get("/chats/label-chat-7f3a/nowhere").await.status(), 404);
    let text = s.get("/metrics").await.text().await.unwrap();
    let samples = parse(&text).unwrap();
    let ids = [
        chat.to_string(),
        "client-key-9c2e".to_string(),
        "client-model-51d0".to_string(),
        sent["userMessage"]["id"].as_str().unwrap().to_string(),
        sent["assistantMessageId"].as_str().unwrap().to_string(),
    ];
    for id in &ids {
        assert!(!text.contains(id.as_str()), "{id} is in the metrics");
    }
    let allowed: BTreeSet<&str> = [
        "provider", "status", "kind", "type", "store", "write", "method", "route", "le",
    ]
    .into();
    let ours: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name.starts_with("chatstream_"))
        .collect();
    assert!(ours.iter().any(|s| {
        s.labels
            .get("route")
            .is_some_and(|r| r == "/labels/api/messages/{chat_id}")
    }));
    for sample in ours {
        for label in sample.labels.keys() {
            assert!(allowed.contains(label.as_str()), "{sample:?}");
        }
        if let Some(route) = sample.labels.get("route") {
            assert!(
                route == "unmatched" || !route.contains("label-chat"),
                "a path as a route: {sample:?}"
            );
        }
    }
}

#[tokio::test]
async fn orphan_recovery_is_counted() {
    let handle = chatstream::metrics::install().unwrap();
    let count =
        |text: &str| Scrape(parse(text).unwrap()).value("chatstream_orphans_recovered_total", &[]);
    let before = count(&handle.render());
    let store = MemoryStore::new();
    let user = Message::user("orphans".parse::<chatstream::ChatId>().unwrap(), "hi");
    let reply = Message::assistant_streaming(user.key()).replying_to(user.id);
    store.append_turn(&user, &reply).await.unwrap();
    let hub = chatstream::LocalHub::new();
    assert_eq!(
        chatstream::hub::recover_orphans(&store, &hub)
            .await
            .unwrap(),
        1
    );
    let stored = store
        .get_message(&reply.owner, &reply.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, MessageStatus::Interrupted);
    // Shared with the instance tests, which recover orphans too: at least this one.
    assert!(count(&handle.render()) - before >= 1.0);
}

// ---- spans ----

/// A span as it closed: its name, every field recorded on it, and its parent's name and fields
/// (a parent outlives its children, so they are read as the child closes).
#[derive(Debug, Clone)]
struct Closed {
    name: &'static str,
    parent: Option<&'static str>,
    parent_fields: BTreeMap<String, String>,
    fields: BTreeMap<String, String>,
}

/// Keeps every span that closes, in the whole test process.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Closed>>>);

/// The process's span recorder, installed once as the global subscriber. A subscriber scoped to
/// one test's thread is not enough: `tracing` caches per callsite whether any subscriber wants
/// it, and other tests hitting a callsite on threads without one can leave it cached as
/// unwanted. A global subscriber is seen by every thread, so spans are never missed; the test
/// picks its own by their fields.
fn spans() -> &'static Spans {
    use tracing_subscriber::layer::SubscriberExt;
    static SPANS: std::sync::OnceLock<Spans> = std::sync::OnceLock::new();
    SPANS.get_or_init(|| {
        let spans = Spans::default();
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(spans.clone()))
            .expect("no other global subscriber in the server tests");
        spans
    })
}

struct Fields(BTreeMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S> tracing_subscriber::Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = Fields(BTreeMap::new());
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let fields = span
            .extensions_mut()
            .remove::<Fields>()
            .map(|f| f.0)
            .unwrap_or_default();
        let parent = span.parent();
        let parent_fields = parent
            .as_ref()
            .and_then(|p| p.extensions().get::<Fields>().map(|f| f.0.clone()))
            .unwrap_or_default();
        self.0.lock().unwrap().push(Closed {
            name: span.name(),
            parent: parent.map(|p| p.name()),
            parent_fields,
            fields,
        });
    }
}

impl Spans {
    /// Waits for a closed span named `name` whose fields include `field = value`.
    async fn closed(&self, name: &str, field: &str, value: &str) -> Closed {
        for _ in 0..500 {
            let found = self
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|c| c.name == name && c.fields.get(field).is_some_and(|v| v == value))
                .cloned();
            if let Some(c) = found {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "no {name} span with {field} = {value}: {:?}",
            self.0.lock().unwrap()
        );
    }
}

#[tokio::test]
async fn requests_and_replies_have_spans_with_opentelemetry_attributes() {
    let spans = spans();
    let provider = ScriptedProvider::new().named("observability-spans").then(
        Script::new()
            .text("Hel")
            .text("lo")
            .finish(FinishReason::Stop)
            .usage(7, 2),
    );
    let s = serve(Arc::new(provider), ServerOptions::default()).await;
    let secret = "the words of a private message";
    assert_eq!(s.send("spans", secret, None).await.status(), 202);
    let events: Vec<Sse> = sse_events(s.stream("spans", None).await).collect().await;
    assert_eq!(text_of(&events), "Hello");

    let reply = spans
        .closed("gen_ai.chat", "gen_ai.provider.name", "observability-spans")
        .await;
    // Opened in the request that started it: the send.
    assert_eq!(reply.parent, Some("request"));
    let send = &reply.parent_fields;
    assert_eq!(send["http.route"], "/api/messages");
    assert_eq!(send["http.response.status_code"], "202");
    assert_eq!(send["http.request.method"], "POST");
    assert_eq!(send["otel.name"], "POST /api/messages");
    assert_eq!(send["otel.kind"], "server");
    // The chat `spans` is this test's alone.
    let stream = spans.closed("request", "uri", "/api/stream/spans").await;
    assert_eq!(stream.fields["http.route"], "/api/stream/{chat_id}");
    assert_eq!(stream.fields["http.response.status_code"], "200");

    let f = &reply.fields;
    assert_eq!(f["otel.name"], "chat scripted");
    assert_eq!(f["otel.kind"], "client");
    assert_eq!(f["gen_ai.operation.name"], "chat");
    assert_eq!(f["gen_ai.system"], "observability-spans");
    assert_eq!(f["gen_ai.request.model"], "scripted");
    assert_eq!(f["gen_ai.conversation.id"], "spans");
    assert_eq!(f["gen_ai.usage.input_tokens"], "7");
    assert_eq!(f["gen_ai.usage.output_tokens"], "2");
    assert_eq!(f["gen_ai.response.finish_reasons"], "stop");
    assert_eq!(f["chatstream.reply.status"], "complete");
    assert_eq!(f["chatstream.reply.deltas"], "4");
    let first: f64 = f["gen_ai.response.time_to_first_chunk"].parse().unwrap();
    assert!((0.0..5.0).contains(&first), "{first}");
    assert!(!f.contains_key("error.type"));
    for span in spans.0.lock().unwrap().iter() {
        for value in span.fields.values() {
            assert!(!value.contains(secret), "message content in {span:?}");
        }
    }
}
