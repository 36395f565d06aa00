//! The server example's HTTP contract, served on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The example is a binary: its modules are compiled into this target.
include!("../examples/server/embed.rs");

use std::{sync::Arc, time::Duration};

use chatstream::{
    ChatRequest, DynProvider, Error, FinishReason, Script, ScriptedProvider,
    provider::{DemoProvider, OpenAiProvider},
    store::{DynMessageStore, MemoryStore},
};
use futures::StreamExt;
use serde_json::{Value, json};

struct Server {
    base: String,
    client: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(provider: DynProvider, config: config::Config) -> Server {
    serve_on(provider, Arc::new(MemoryStore::new()), config).await
}

async fn serve_on(provider: DynProvider, store: DynMessageStore, config: config::Config) -> Server {
    let hub: chatstream::DynStreamHub = Arc::new(chatstream::LocalHub::new());
    serve_with(provider, store, hub, config).await
}

async fn serve_with(
    provider: DynProvider,
    store: DynMessageStore,
    hub: chatstream::DynStreamHub,
    config: config::Config,
) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = chatstream::ChatService::builder()
        .provider(provider.clone())
        .store(store)
        .hub(hub)
        .checkpoint(Duration::from_millis(50), 8)
        .build()
        .unwrap();
    let state = app::AppState {
        service,
        model: provider.default_model().to_string(),
        provider,
        config: Arc::new(config),
    };
    let task = tokio::spawn(async move {
        axum::serve(listener, app::app(state).into_make_service())
            .await
            .unwrap()
    });
    Server {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        task,
    }
}

use chatstream::LlmProvider;

async fn demo() -> Server {
    serve(
        Arc::new(DemoProvider::new().with_delay(Duration::ZERO)),
        config::Config::default(),
    )
    .await
}

/// The `data:` payloads of an SSE response body.
async fn sse_data(resp: reqwest::Response) -> Vec<String> {
    let mut events = sse_stream::SseByteStream::new(resp.bytes_stream());
    let mut out = Vec::new();
    while let Some(e) = events.next().await {
        if let Some(d) = e.unwrap().data {
            out.push(d);
        }
    }
    out
}

async fn error_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("error bodies are JSON");
    (status, body["error"]["code"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn stateless_chat_streams_content_then_done() {
    let s = demo().await;
    let resp = s.chat("hello there").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let data = sse_data(resp).await;
    assert_eq!(data.last().unwrap(), r#"{"done":true}"#);
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["content"].as_str().map(str::to_string))
        .collect();
    let expected = DemoProvider::reply_for(&chatstream::ChatRequest::user("hello there"));
    assert_eq!(text, expected);
}

#[tokio::test]
async fn stateless_chat_reports_upstream_errors() {
    let provider =
        ScriptedProvider::new().then(Script::new().text("partial").fail(|| Error::Truncated {
            provider: "scripted".into(),
        }));
    let s = serve(Arc::new(provider), config::Config::default()).await;
    let resp = s.chat("hi").await;
    let data = sse_data(resp).await;
    assert_eq!(data[0], r#"{"content":"partial"}"#);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(
        last["error"].as_str().unwrap().contains("ended before"),
        "{last}"
    );
}

#[tokio::test]
async fn a_quiet_upstream_gets_the_opening_comment_at_once_then_keep_alives() {
    // The upstream says nothing for 1.2 s; keep-alive comments are due every 200 ms.
    let stall = Duration::from_millis(1200);
    let provider = ScriptedProvider::new().then(
        Script::new()
            .sleep(stall)
            .text("late")
            .finish(FinishReason::Stop),
    );
    let config = config::Config {
        keep_alive: Duration::from_millis(200),
        ..config::Config::default()
    };
    let s = serve(Arc::new(provider), config).await;
    let sent = std::time::Instant::now();
    let mut resp = s.chat("hi").await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let first = resp.chunk().await.unwrap().expect("a first chunk");
    assert!(
        sent.elapsed() < stall,
        "the headers and the opening comment waited for the upstream"
    );
    assert_eq!(&first[..], b": open\n\n");
    let mut body = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let blocks: Vec<&str> = body.split_terminator("\n\n").collect();
    let first_data = blocks
        .iter()
        .position(|b| b.starts_with("data:"))
        .expect("the reply");
    let keep_alives = &blocks[..first_data];
    assert!(
        keep_alives.len() >= 2 && keep_alives.iter().all(|b| b.starts_with(':')),
        "expected keep-alive comments while the upstream was quiet, got {blocks:?}"
    );
    assert_eq!(
        &blocks[first_data..],
        [r#"data: {"content":"late"}"#, r#"data: {"done":true}"#]
    );
}

#[tokio::test]
async fn bad_input_gets_json_errors() {
    let config = config::Config {
        body_limit: 1024,
        ..config::Config::default()
    };
    let s = serve(Arc::new(DemoProvider::new()), config).await;
    let url = format!("{}/api/chat", s.base);
    let post = |body: &'static str, ct: &'static str| {
        s.client
            .post(&url)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    assert_eq!(
        error_of(post("{nope", "application/json").await.unwrap()).await,
        (400, "bad_json".into())
    );
    assert_eq!(
        error_of(post(r#"{"messages":[]}"#, "text/plain").await.unwrap()).await,
        (415, "unsupported_media_type".into())
    );
    assert_eq!(
        error_of(
            post(r#"{"messages":[]}"#, "application/json")
                .await
                .unwrap()
        )
        .await,
        (400, "empty_messages".into())
    );
    assert_eq!(
        error_of(
            post(r#"{"messages":"x"}"#, "application/json")
                .await
                .unwrap()
        )
        .await,
        (422, "invalid_body".into())
    );
    let big = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(4096)
    );
    let resp = s
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (413, "body_too_large".into()));
    let resp = s
        .client
        .get(format!("{}/nowhere", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (404, "not_found".into()));
}

#[tokio::test]
async fn openai_compatible_non_streaming_and_streaming() {
    let s = demo().await;
    let url = format!("{}/v1/chat/completions", s.base);
    let expected = DemoProvider::reply_for(&chatstream::ChatRequest::user("ping"));

    let resp = s
        .client
        .post(&url)
        .json(&json!({"model": "demo", "messages": [{"role": "user", "content": "ping"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], expected.as_str());
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let resp = s
        .client
        .post(&url)
        .json(&json!({
            "messages": [{"role": "user", "content": [{"type": "text", "text": "ping"}]}],
            "stream": true,
            "stream_options": {"include_usage": true},
        }))
        .send()
        .await
        .unwrap();
    let data = sse_data(resp).await;
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, expected);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish: Vec<_> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["stop"]);
    assert!(
        chunks.last().unwrap()["usage"]["total_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    let models: Value = s
        .client
        .get(format!("{}/v1/models", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "demo");
}

#[tokio::test]
async fn openai_compatible_maps_upstream_failure_to_502() {
    let provider = ScriptedProvider::new().then(Script::new().fail(|| {
        Error::from_status(
            "openai",
            401,
            Some("invalid_api_key".into()),
            "bad key",
            None,
        )
    }));
    let s = serve(Arc::new(provider), config::Config::default()).await;
    let resp = s
        .client
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&json!({"messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (502, "upstream".into()));
}

#[test]
fn configuration_from_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let c = config::Config::from_lookup(env(&[])).unwrap();
    assert_eq!(c.provider, config::ProviderKind::Demo);
    assert_eq!(c.addr.to_string(), "127.0.0.1:3000");
    assert_eq!(c.database_url, "sqlite://chatstream.db");
    let c = config::Config::from_lookup(env(&[("OPENAI_BASE_URL", "http://localhost:11434/v1")]))
        .unwrap();
    assert_eq!(c.provider, config::ProviderKind::OpenAi);
    let c = config::Config::from_lookup(env(&[
        ("OPENAI_API_KEY", "sk-x"),
        ("CHATSTREAM_PROVIDER", "anthropic"),
        ("CHATSTREAM_ADDR", "0.0.0.0:8080"),
    ]))
    .unwrap();
    assert_eq!(c.provider, config::ProviderKind::Anthropic);
    assert_eq!(c.addr.port(), 8080);
    let e = config::Config::from_lookup(env(&[("CHATSTREAM_PROVIDER", "gpt")])).unwrap_err();
    assert!(e.contains("openai, anthropic or demo"), "{e}");
    assert!(config::Config::from_lookup(env(&[("CHATSTREAM_ADDR", "nope")])).is_err());
}

// ---- the stateful endpoints ----

/// One server-sent event as a client sees it.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: Value,
}

fn sse_events(resp: reqwest::Response) -> impl futures::Stream<Item = Sse> {
    sse_stream::SseByteStream::new(resp.bytes_stream()).filter_map(|e| async move {
        let e = e.unwrap();
        let data = e.data?;
        Some(Sse {
            id: e.id.map(|i| i.parse().unwrap()),
            event: e.event.unwrap_or_else(|| "message".into()),
            data: serde_json::from_str(&data).unwrap(),
        })
    })
}

fn text_of(events: &[Sse]) -> String {
    events
        .iter()
        .filter(|e| e.event == "delta" && e.data["type"] == "text")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect()
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /api/chat` with one user message.
    async fn chat(&self, content: &str) -> reqwest::Response {
        self.client
            .post(self.url("/api/chat"))
            .json(&json!({"messages": [{"role": "user", "content": content}]}))
            .send()
            .await
            .unwrap()
    }

    async fn send(&self, chat: &str, content: &str, key: Option<&str>) -> reqwest::Response {
        let mut body = json!({"chatId": chat, "content": content, "sender": "user"});
        if let Some(key) = key {
            body["clientMessageId"] = json!(key);
        }
        self.client
            .post(self.url("/api/messages"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn stream(&self, chat: &str, last_event_id: Option<u64>) -> reqwest::Response {
        let mut req = self.client.get(self.url(&format!("/api/stream/{chat}")));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        req.send().await.unwrap()
    }

    async fn history(&self, chat: &str) -> Vec<Value> {
        let resp = self.get(&format!("/api/messages/{chat}")).await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    async fn delete(&self, path: &str) -> reqwest::Response {
        self.client.delete(self.url(path)).send().await.unwrap()
    }

    /// `POST /api/stream/{chat}/terminate`, answered with `{"terminated": …}`.
    async fn terminate(&self, chat: &str) -> Value {
        let resp = self
            .client
            .post(self.url(&format!("/api/stream/{chat}/terminate")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// Follows the chat's reply until `n` delta events arrived; returns them and the rest.
    async fn read_deltas(
        &self,
        chat: &str,
        n: usize,
    ) -> (
        Vec<Sse>,
        std::pin::Pin<Box<dyn futures::Stream<Item = Sse> + Send>>,
    ) {
        let mut events = Box::pin(sse_events(self.stream(chat, None).await));
        let mut seen = Vec::new();
        while seen.iter().filter(|e: &&Sse| e.event == "delta").count() < n {
            seen.push(events.next().await.unwrap());
        }
        (seen, events)
    }

    /// Waits until the chat's newest message has left `streaming`.
    async fn settled_history(&self, chat: &str) -> Vec<Value> {
        for _ in 0..500 {
            let h = self.history(chat).await;
            if h.last().is_some_and(|m| m["status"] != "streaming") {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the reply in {chat} never settled");
    }
}

fn slow_reply(words: usize, delay_ms: u64) -> Script {
    let mut script = Script::new().per_delta_delay(Duration::from_millis(delay_ms));
    for i in 0..words {
        script = script.text(format!("w{i} "));
    }
    script.finish(FinishReason::Stop).usage(3, words as u64)
}

fn words(n: usize) -> String {
    (0..n).map(|i| format!("w{i} ")).collect()
}

#[tokio::test]
async fn chats_are_created_listed_and_deleted() {
    let s = demo().await;
    let resp = s
        .client
        .post(s.url("/api/chats"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let generated: Value = resp.json().await.unwrap();
    assert!(generated["id"].as_str().is_some_and(|id| !id.is_empty()));
    let resp = s
        .client
        .post(s.url("/api/chats"))
        .json(&json!({"id": "my-chat", "title": "Mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let again = s
        .client
        .post(s.url("/api/chats"))
        .json(&json!({"id": "my-chat"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(again).await, (409, "already_exists".into()));
    let bad = s
        .client
        .post(s.url("/api/chats"))
        .json(&json!({"id": "no spaces"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(bad).await, (400, "invalid_chat_id".into()));
    let list: Vec<Value> = s.get("/api/chats").await.json().await.unwrap();
    let ids: Vec<_> = list.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"my-chat") && ids.len() == 2, "{ids:?}");
    assert_eq!(
        list.iter().find(|c| c["id"] == "my-chat").unwrap()["title"],
        "Mine"
    );
    let del = s.delete("/api/chats/my-chat").await;
    assert_eq!(del.status(), 204);
    let del = s.delete("/api/chats/my-chat").await;
    assert_eq!(error_of(del).await, (404, "not_found".into()));
    let del = s.delete("/api/chats/bad%20id").await;
    assert_eq!(error_of(del).await, (400, "invalid_chat_id".into()));
}

#[tokio::test]
async fn a_message_streams_a_reply_that_lands_in_history() {
    let s = demo().await;
    assert!(
        s.history("fresh").await.is_empty(),
        "a chat with no messages gives []"
    );
    let resp = s.send("fresh", "Tell me <b>something</b>", None).await;
    assert_eq!(resp.status(), 202);
    let sent: Value = resp.json().await.unwrap();
    assert_eq!(sent["userMessage"]["content"], "Tell me <b>something</b>");
    assert_eq!(sent["userMessage"]["role"], "user");
    let assistant_id = sent["assistantMessageId"].as_str().unwrap().to_string();

    let resp = s.stream("fresh", None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let events: Vec<Sse> = sse_events(resp).collect().await;
    assert_eq!(events[0].event, "start");
    assert_eq!(events[0].id, Some(1));
    assert_eq!(events[0].data["messageId"], assistant_id.as_str());
    assert_eq!(events[0].data["userMessageId"], sent["userMessage"]["id"]);
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let done = events.last().unwrap();
    assert_eq!(done.event, "done");
    assert_eq!(done.data["status"], "complete");
    assert_eq!(done.data["finishReason"], "stop");
    let expected = DemoProvider::reply_for(&ChatRequest::user("Tell me <b>something</b>"));
    assert_eq!(text_of(&events), expected);

    // Nothing more to send to a client that saw the end: 204 stops EventSource reconnecting.
    let after_end = s.stream("fresh", done.id).await;
    assert_eq!(after_end.status(), 204);
    let unknown = s.stream("never-used", None).await;
    assert_eq!(unknown.status(), 204);

    let history = s.history("fresh").await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["id"], assistant_id.as_str());
    assert_eq!(history[1]["status"], "complete");
    assert_eq!(history[1]["content"], expected.as_str());
    assert!(
        history[1]["reasoning"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
}

#[tokio::test]
async fn a_reconnecting_client_resumes_with_last_event_id() {
    let provider = ScriptedProvider::new().repeat(slow_reply(40, 5));
    let s = serve(Arc::new(provider), config::Config::default()).await;
    for cut in [1u64, 2, 7, 20] {
        let chat = format!("resume-{cut}");
        assert_eq!(s.send(&chat, "go", None).await.status(), 202);
        let mut first = Box::pin(sse_events(s.stream(&chat, None).await));
        let mut seen = Vec::new();
        while seen.last().is_none_or(|e: &Sse| e.id.unwrap() < cut) {
            seen.push(first.next().await.unwrap());
        }
        drop(first); // the connection drops mid-reply
        let rest: Vec<Sse> = sse_events(s.stream(&chat, seen.last().unwrap().id).await)
            .collect()
            .await;
        assert!(rest.iter().all(|e| e.id.unwrap() > cut));
        seen.extend(rest);
        assert_eq!(text_of(&seen), words(40), "cut after {cut}");
        assert_eq!(seen.iter().filter(|e| e.event == "start").count(), 1);
        assert_eq!(seen.last().unwrap().event, "done");
    }
    // ?after=N works like Last-Event-ID.
    let all: Vec<Sse> = sse_events(s.get("/api/stream/resume-1?after=3").await)
        .collect()
        .await;
    assert!(all.iter().all(|e| e.id.unwrap() > 3));
    let bad = s
        .client
        .get(s.url("/api/stream/resume-1"))
        .header("last-event-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(bad).await, (400, "invalid_last_event_id".into()));
}

#[tokio::test]
async fn a_send_while_busy_is_409_and_a_repeat_is_idempotent() {
    let provider = ScriptedProvider::new().repeat(slow_reply(30, 10));
    let s = serve(Arc::new(provider.clone()), config::Config::default()).await;
    let first: Value = s
        .send("busy", "one", Some("key-1"))
        .await
        .json()
        .await
        .unwrap();
    let repeat = s.send("busy", "one", Some("key-1")).await;
    assert_eq!(repeat.status(), 202);
    let repeat: Value = repeat.json().await.unwrap();
    assert_eq!(repeat["userMessage"]["id"], first["userMessage"]["id"]);
    assert_eq!(repeat["assistantMessageId"], first["assistantMessageId"]);
    let other = s.send("busy", "two", Some("key-2")).await;
    assert_eq!(error_of(other).await, (409, "busy".into()));
    let history = s.settled_history("busy").await;
    assert_eq!(history.len(), 2, "one user message, one reply");
    assert_eq!(provider.started(), 1);
    // After the reply ended, the same key still returns the original.
    let late: Value = s
        .send("busy", "one", Some("key-1"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(late["userMessage"]["id"], first["userMessage"]["id"]);
    assert_eq!(s.history("busy").await.len(), 2);
}

#[tokio::test]
async fn bad_stateful_input_gets_json_errors_and_writes_nothing() {
    let s = demo().await;
    let post = |body: Value| s.client.post(s.url("/api/messages")).json(&body).send();
    let cases = [
        (
            json!({"chatId": "bad id", "content": "x"}),
            400,
            "invalid_chat_id",
        ),
        (
            json!({"chatId": "x".repeat(65), "content": "x"}),
            400,
            "invalid_chat_id",
        ),
        (
            json!({"chatId": "c", "content": "   "}),
            400,
            "empty_content",
        ),
        (json!({"chatId": "c"}), 422, "invalid_body"),
        (
            json!({"chatId": "c", "content": "x", "sender": "bot"}),
            422,
            "invalid_sender",
        ),
        (
            json!({"chatId": "c", "content": "x", "clientMessageId": ""}),
            400,
            "invalid_client_message_id",
        ),
    ];
    for (body, status, code) in cases {
        assert_eq!(
            error_of(post(body.clone()).await.unwrap()).await,
            (status, code.into()),
            "{body}"
        );
    }
    let list: Vec<Value> = s.get("/api/chats").await.json().await.unwrap();
    assert!(list.is_empty(), "nothing was written: {list:?}");
    let bad_cursor = s.get("/api/messages/c?before=nope").await;
    assert_eq!(
        error_of(bad_cursor).await,
        (400, "invalid_message_id".into())
    );
    let bad_limit = s.get("/api/messages/c?limit=lots").await;
    assert_eq!(error_of(bad_limit).await, (400, "bad_query".into()));
    let bad_chat = s.get("/api/messages/a%2Fb").await;
    assert_eq!(error_of(bad_chat).await, (400, "invalid_chat_id".into()));
}

#[tokio::test]
async fn history_pages_with_a_cursor() {
    let s = demo().await;
    for i in 0..3 {
        assert_eq!(s.send("paged", &format!("m{i}"), None).await.status(), 202);
        s.settled_history("paged").await;
    }
    let newest: Vec<Value> = s
        .get("/api/messages/paged?limit=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(newest.len(), 2);
    assert_eq!(newest[0]["content"], "m2");
    let cursor = newest[0]["id"].as_str().unwrap();
    let older: Vec<Value> = s
        .get(&format!("/api/messages/paged?limit=10&before={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(older.len(), 4);
    assert_eq!(older[0]["content"], "m0");
}

/// A raw upstream that speaks OpenAI SSE slowly and reports when the client closes.
async fn slow_openai_upstream() -> (String, tokio::sync::oneshot::Receiver<usize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 65536];
        let _ = sock.read(&mut buf).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        sock.write_all(head.as_bytes()).await.unwrap();
        let mut sent = 0;
        for i in 0..1000 {
            let event = format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{i} \"}},\"finish_reason\":null}}]}}\n\n"
            );
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            if sock.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = closed_tx.send(sent);
    });
    (format!("http://{addr}/v1"), closed_rx)
}

#[tokio::test]
async fn terminate_closes_the_upstream_and_persists_cancelled() {
    let (base, closed) = slow_openai_upstream().await;
    let provider = OpenAiProvider::builder()
        .base_url(base)
        .model("m")
        .build()
        .unwrap();
    let s = serve(Arc::new(provider), config::Config::default()).await;
    assert_eq!(s.send("stop-me", "go", None).await.status(), 202);
    let (mut seen, events) = s.read_deltas("stop-me", 3).await;
    assert_eq!(s.terminate("stop-me").await, json!({"terminated": true}));
    let sent = tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the upstream saw the connection close")
        .unwrap();
    assert!(
        sent < 1000,
        "the upstream stopped sending after {sent} chunks"
    );
    seen.extend(events.collect::<Vec<_>>().await);
    let done = seen.last().unwrap();
    assert_eq!(
        (done.event.as_str(), &done.data["status"]),
        ("done", &json!("cancelled"))
    );
    let history = s.settled_history("stop-me").await;
    assert_eq!(history[1]["status"], "cancelled");
    assert_eq!(history[1]["content"].as_str().unwrap(), text_of(&seen));
    assert_eq!(s.terminate("stop-me").await, json!({"terminated": false}));
}

#[tokio::test]
async fn twenty_chats_stream_at_once() {
    let s = serve(
        Arc::new(DemoProvider::new().with_delay(Duration::from_millis(1))),
        config::Config::default(),
    )
    .await;
    let s = Arc::new(s);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let chat = format!("many-{i}");
                let prompt = format!("question number {i}");
                assert_eq!(s.send(&chat, &prompt, None).await.status(), 202);
                let events: Vec<Sse> = sse_events(s.stream(&chat, None).await).collect().await;
                assert_eq!(
                    text_of(&events),
                    DemoProvider::reply_for(&ChatRequest::user(prompt))
                );
                assert_eq!(events.last().unwrap().data["status"], "complete");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn a_restart_on_the_same_sqlite_file_keeps_history() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("chat.db").display());
    a_restart_keeps_history(&url).await;
}

/// A second server on the database of a first one serves the first one's history.
async fn a_restart_keeps_history(url: &str) {
    let demo: DynProvider = Arc::new(DemoProvider::new().with_delay(Duration::ZERO));
    let first = serve_on(
        demo.clone(),
        chatstream::store::open(url).await.unwrap(),
        config::Config::default(),
    )
    .await;
    assert_eq!(first.send("kept", "remember me", None).await.status(), 202);
    let before = first.settled_history("kept").await;
    first.task.abort();
    let second = serve_on(
        demo,
        chatstream::store::open(url).await.unwrap(),
        config::Config::default(),
    )
    .await;
    let after = second.history("kept").await;
    assert_eq!(after, before);
    assert_eq!(after[0]["content"], "remember me");
}

// ---- the real binary, killed and restarted ----

struct Process {
    child: std::process::Child,
    base: String,
}

/// Starts the example's binary (built by `cargo test` next to this test's own binary).
fn start_server(db_url: &str, extra: &[(&str, &str)]) -> Process {
    use std::io::BufRead;
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("server");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test`, which builds the examples",
        bin.display()
    );
    let mut cmd = std::process::Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CHATSTREAM_ADDR", "127.0.0.1:0")
        .env("CHATSTREAM_DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        // Warnings and errors of the server show in the test's output.
        .stderr(std::process::Stdio::inherit());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    // "chatstream listening on http://ADDR (provider …, model …, store …)"
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    assert!(line.contains("provider demo"), "{line}");
    Process { child, base }
}

impl Process {
    fn server(&self) -> Server {
        Server {
            base: self.base.clone(),
            client: reqwest::Client::new(),
            task: tokio::spawn(async {}),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_killed_server_leaves_the_reply_interrupted_with_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("chat.db").display());
    a_killed_server_leaves_its_reply_interrupted(&url).await;
}

/// The server's binary on `url`, killed mid-reply, then started again on the same database.
async fn a_killed_server_leaves_its_reply_interrupted(url: &str) {
    let mut p = start_server(url, &[]);
    let s = p.server();
    assert_eq!(
        s.send("crash", "please write a long answer", None)
            .await
            .status(),
        202
    );
    let mut events = Box::pin(sse_events(s.stream("crash", None).await));
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|e: &&Sse| e.event == "delta" && e.data["type"] == "text")
        .count()
        < 12
    {
        seen.push(events.next().await.unwrap());
    }
    // Past at least one checkpoint interval (250 ms) of the demo's 30 ms tokens.
    tokio::time::sleep(Duration::from_millis(400)).await;
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    drop(events);

    let p2 = start_server(url, &[]);
    let history = p2.server().history("crash").await;
    let reply = &history[1];
    assert_eq!(reply["status"], "interrupted");
    let content = reply["content"].as_str().unwrap();
    let full = DemoProvider::reply_for(&ChatRequest::user("please write a long answer"));
    assert!(
        content.len() >= text_of(&seen).len(),
        "the checkpoint holds what was streamed before"
    );
    assert!(
        full.starts_with(content) && content.len() < full.len(),
        "{content:?}"
    );
}

#[tokio::test]
async fn sigterm_stops_gracefully_and_persists_live_replies() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("chat.db").display());
    let mut p = start_server(&url, &[("CHATSTREAM_SHUTDOWN_GRACE_SECS", "0")]);
    let s = p.server();
    assert_eq!(
        s.send("term", "a long reply please", None).await.status(),
        202
    );
    let mut events = Box::pin(sse_events(s.stream("term", None).await));
    while events.next().await.unwrap().data["type"] != "text" {}
    let pid = p.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // The open event stream ends with the reply's end, and the process exits by itself.
    let rest: Vec<Sse> = events.collect().await;
    assert_eq!(rest.last().unwrap().data["status"], "interrupted");
    let status = p.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let p2 = start_server(&url, &[]);
    let history = p2.server().history("term").await;
    assert_eq!(history[1]["status"], "interrupted");
    assert!(!history[1]["content"].as_str().unwrap().is_empty());
}

// ---- several instances on one PostgreSQL and one Redis ----

mod scale {
    use std::{io::Write, panic::AssertUnwindSafe};

    use chatstream::{DynStreamHub, hub::RedisHub, store::PostgresStore};
    use futures::FutureExt;

    use super::*;

    /// The services' URLs, or `None` after saying loudly why the test skips.
    fn services(test: &str) -> Option<(String, String)> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        match (
            get("CHATSTREAM_TEST_POSTGRES_URL"),
            get("CHATSTREAM_TEST_REDIS_URL"),
        ) {
            (Some(pg), Some(redis)) => Some((pg, redis)),
            _ => {
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED {test}: CHATSTREAM_TEST_POSTGRES_URL and CHATSTREAM_TEST_REDIS_URL \
                     must both be set; several server instances were NOT tested ***\n"
                );
                None
            }
        }
    }

    /// A fresh schema and key prefix for one test, removed afterwards even if it panics.
    async fn isolated<F, Fut>(test: &str, body: F)
    where
        F: FnOnce(Env) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let Some((pg, redis)) = services(test) else {
            return;
        };
        let id = uuid::Uuid::now_v7().simple().to_string();
        let env = Env {
            pg: pg.clone(),
            redis: redis.clone(),
            schema: format!("chatstream_scale_{id}"),
            prefix: format!("chatstream-scale-{id}"),
        };
        let (schema, prefix) = (env.schema.clone(), env.prefix.clone());
        let outcome = AssertUnwindSafe(body(env)).catch_unwind().await;
        let pool = sqlx::PgPool::connect(&pg).await.unwrap();
        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .execute(&pool)
            .await
            .unwrap();
        let client = redis::Client::open(redis.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    struct Env {
        pg: String,
        redis: String,
        schema: String,
        prefix: String,
    }

    impl Env {
        fn store_url(&self) -> String {
            let sep = if self.pg.contains('?') { '&' } else { '?' };
            format!("{}{sep}options=-c%20search_path%3D{}", self.pg, self.schema)
        }

        async fn store(&self) -> DynMessageStore {
            Arc::new(
                PostgresStore::open_in_schema(&self.pg, &self.schema)
                    .await
                    .unwrap(),
            )
        }

        async fn hub(&self, lease: Duration) -> DynStreamHub {
            Arc::new(
                RedisHub::builder(self.redis.clone())
                    .prefix(self.prefix.clone())
                    .lease(lease)
                    .connect()
                    .await
                    .unwrap(),
            )
        }

        /// One instance: its own hub connection (own instance id) on the shared store.
        async fn instance(&self, provider: DynProvider) -> Server {
            serve_with(
                provider,
                self.store().await,
                self.hub(Duration::from_secs(10)).await,
                config::Config::default(),
            )
            .await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reply_sent_through_a_is_followed_and_resumed_through_b() {
        isolated(
            "a_reply_sent_through_a_is_followed_and_resumed_through_b",
            |env| async move {
                let provider: DynProvider =
                    Arc::new(ScriptedProvider::new().repeat(slow_reply(40, 5)));
                let a = env.instance(provider.clone()).await;
                let b = env.instance(provider).await;

                assert_eq!(a.send("x1", "go", None).await.status(), 202);
                let through_b: Vec<Sse> = sse_events(b.stream("x1", None).await).collect().await;
                assert_eq!(text_of(&through_b), words(40));
                assert_eq!(through_b.last().unwrap().data["status"], "complete");
                assert_eq!(
                    b.settled_history("x1").await[1]["content"],
                    words(40).as_str()
                );

                assert_eq!(a.send("x2", "go", None).await.status(), 202);
                let mut on_a = Box::pin(sse_events(a.stream("x2", None).await));
                let mut seen = Vec::new();
                while seen.last().is_none_or(|e: &Sse| e.id.unwrap() < 6) {
                    seen.push(on_a.next().await.unwrap());
                }
                drop(on_a);
                let rest: Vec<Sse> = sse_events(b.stream("x2", seen.last().unwrap().id).await)
                    .collect()
                    .await;
                assert!(rest.iter().all(|e| e.id.unwrap() > 6));
                seen.extend(rest);
                assert_eq!(text_of(&seen), words(40));
                // A busy chat is busy for every instance.
                assert_eq!(a.send("x3", "go", None).await.status(), 202);
                assert_eq!(
                    error_of(b.send("x3", "again", None).await).await,
                    (409, "busy".into())
                );
                b.settled_history("x3").await;
            },
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn terminate_through_b_stops_the_upstream_of_a() {
        isolated(
            "terminate_through_b_stops_the_upstream_of_a",
            |env| async move {
                let (base, closed) = slow_openai_upstream().await;
                let upstream: DynProvider = Arc::new(
                    OpenAiProvider::builder()
                        .base_url(base)
                        .model("m")
                        .build()
                        .unwrap(),
                );
                let a = env.instance(upstream.clone()).await;
                let b = env.instance(upstream).await;
                assert_eq!(a.send("stop", "go", None).await.status(), 202);
                let (mut seen, on_b) = b.read_deltas("stop", 3).await;
                assert_eq!(b.terminate("stop").await, json!({"terminated": true}));
                let sent = tokio::time::timeout(Duration::from_secs(10), closed)
                    .await
                    .expect("A's upstream saw its connection close")
                    .unwrap();
                assert!(sent < 1000);
                seen.extend(on_b.collect::<Vec<_>>().await);
                assert_eq!(seen.last().unwrap().data["status"], "cancelled");
                let history = a.settled_history("stop").await;
                assert_eq!(history[1]["status"], "cancelled");
                assert_eq!(history[1]["content"].as_str().unwrap(), text_of(&seen));
            },
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_replies_over_two_instances_complete_exactly_once() {
        isolated(
            "a_hundred_replies_over_two_instances_complete_exactly_once",
            |env| async move {
                let pa = ScriptedProvider::new().repeat(slow_reply(20, 1));
                let pb = ScriptedProvider::new().repeat(slow_reply(20, 1));
                let a = Arc::new(env.instance(Arc::new(pa.clone())).await);
                let b = Arc::new(env.instance(Arc::new(pb.clone())).await);
                let tasks: Vec<_> = (0..100)
                    .map(|i| {
                        let (send_to, follow_on) = if i % 2 == 0 {
                            (a.clone(), b.clone())
                        } else {
                            (b.clone(), a.clone())
                        };
                        tokio::spawn(async move {
                            let chat = format!("hundred-{i}");
                            let key = format!("k-{i}");
                            assert_eq!(send_to.send(&chat, "go", Some(&key)).await.status(), 202);
                            // A retry of the same send through the other instance changes nothing.
                            assert_eq!(follow_on.send(&chat, "go", Some(&key)).await.status(), 202);
                            let events: Vec<Sse> = sse_events(follow_on.stream(&chat, None).await)
                                .collect()
                                .await;
                            assert_eq!(text_of(&events), words(20), "{chat}");
                            let history = send_to.settled_history(&chat).await;
                            assert_eq!(history.len(), 2, "{chat}: one user message, one reply");
                            assert_eq!(history[1]["status"], "complete");
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                assert_eq!(
                    pa.started() + pb.started(),
                    100,
                    "every reply generated exactly once"
                );
            },
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_instance_is_recovered_by_b_once_its_lease_expired() {
        isolated(
            "a_killed_instance_is_recovered_by_b_once_its_lease_expired",
            |env| async move {
                let lease = Duration::from_secs(3);
                // B's store first: opening it creates the schema and runs the migrations.
                let b_service_store = env.store().await;
                let mut a = start_server(
                    &env.store_url(),
                    &[
                        ("CHATSTREAM_REDIS_URL", &env.redis),
                        ("CHATSTREAM_REDIS_PREFIX", &env.prefix),
                        ("CHATSTREAM_REDIS_LEASE_MS", "3000"),
                    ],
                );
                let b_hub = env.hub(lease).await;
                let b = serve_with(
                    Arc::new(DemoProvider::new()),
                    b_service_store.clone(),
                    b_hub.clone(),
                    config::Config::default(),
                )
                .await;
                let recovery_service = chatstream::ChatService::builder()
                    .provider(Arc::new(DemoProvider::new()))
                    .store(b_service_store.clone())
                    .hub(b_hub)
                    .build()
                    .unwrap();
                let a_client = a.server();
                assert_eq!(
                    a_client
                        .send("dies", "a long reply please", None)
                        .await
                        .status(),
                    202
                );
                let mut on_b = Box::pin(sse_events(b.stream("dies", None).await));
                let mut texts = 0;
                while texts < 12 {
                    if on_b.next().await.unwrap().data["type"] == "text" {
                        texts += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(400)).await; // past a checkpoint
                a.child.kill().unwrap();
                a.child.wait().unwrap();
                let killed_at = std::time::Instant::now();

                // Within the lease nothing is touched, however often B looks.
                let recovery = app::spawn_recovery(recovery_service, Duration::from_millis(100));
                tokio::time::sleep(Duration::from_millis(500)).await;
                let history = b.history("dies").await;
                assert!(
                    killed_at.elapsed() < lease,
                    "the check ran within the lease"
                );
                assert_eq!(
                    history[1]["status"], "streaming",
                    "not marked before the lease expired"
                );

                // Once it expired, B marks the reply interrupted with the checkpointed text.
                let reply = loop {
                    let history = b.history("dies").await;
                    if history[1]["status"] != "streaming" {
                        break history[1].clone();
                    }
                    assert!(killed_at.elapsed() < lease * 4, "never recovered");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                recovery.abort();
                assert!(
                    killed_at.elapsed() >= Duration::from_millis(1000),
                    "recovered too early"
                );
                assert_eq!(reply["status"], "interrupted");
                let content = reply["content"].as_str().unwrap();
                let full = DemoProvider::reply_for(&ChatRequest::user("a long reply please"));
                assert!(
                    !content.is_empty() && full.starts_with(content),
                    "{content:?}"
                );
                // B's follower was told the reply ended rather than left hanging.
                let rest: Vec<Sse> = tokio::time::timeout(Duration::from_secs(15), on_b.collect())
                    .await
                    .expect("the follower's stream ends");
                assert_eq!(rest.last().unwrap().data["status"], "interrupted");
            },
        )
        .await;
    }
}

#[tokio::test]
async fn cors_is_off_unless_origins_are_configured() {
    let preflight = |s: &Server| {
        s.client
            .request(reqwest::Method::OPTIONS, s.url("/api/chats"))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .send()
    };
    let closed = demo().await;
    let resp = preflight(&closed).await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let config = config::Config {
        cors_origins: vec!["https://app.example".into()],
        ..config::Config::default()
    };
    let open = serve(Arc::new(DemoProvider::new()), config).await;
    let resp = preflight(&open).await.unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

// ---- the server on MongoDB ----

mod mongodb {
    use std::{io::Write, panic::AssertUnwindSafe};

    use chatstream::store::MongoStore;
    use futures::FutureExt;

    use super::*;

    /// The test server's URL with a fresh database in its path, or `None` after saying loudly why
    /// the test skips.
    fn database_url(test: &str) -> Option<(String, String)> {
        let url = match std::env::var("CHATSTREAM_TEST_MONGODB_URL") {
            Ok(url) if !url.trim().is_empty() => url,
            _ => {
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED {test}: CHATSTREAM_TEST_MONGODB_URL is not set \
                     (e.g. mongodb://127.0.0.1:27017); the server was NOT tested on MongoDB ***\n"
                );
                return None;
            }
        };
        let name = format!("chatstream_test_{}", uuid::Uuid::now_v7().simple());
        let (head, options) = match url.split_once('?') {
            Some((head, options)) => (head, format!("?{options}")),
            None => (url.as_str(), String::new()),
        };
        let hosts_start = head.find("://").map_or(0, |i| i + 3);
        let hosts_end = head[hosts_start..]
            .find('/')
            .map_or(head.len(), |i| hosts_start + i);
        Some((format!("{}/{name}{options}", &head[..hosts_end]), name))
    }

    /// Runs `test` with the URL of a fresh database, dropped at the end even if the test fails.
    async fn isolated<F, Fut>(test: &str, body: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let Some((url, name)) = database_url(test) else {
            return;
        };
        let outcome = AssertUnwindSafe(body(url.clone())).catch_unwind().await;
        let dropped = match MongoStore::open(&url).await {
            Ok(store) => store.database().drop().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
        dropped.unwrap_or_else(|e| panic!("could not drop test database {name}: {e}"));
    }

    async fn serve_mongodb(provider: DynProvider, url: &str) -> Server {
        let store = chatstream::store::open(url).await.unwrap();
        assert_eq!(store.backend(), "mongodb");
        serve_on(provider, store, config::Config::default()).await
    }

    #[tokio::test]
    async fn a_message_streams_a_reply_that_lands_in_history() {
        isolated("mongodb::a_message_streams_a_reply", |url| async move {
            let demo = DemoProvider::new().with_delay(Duration::ZERO);
            let s = serve_mongodb(Arc::new(demo), &url).await;
            let resp = s.send("fresh", "Tell me something", None).await;
            assert_eq!(resp.status(), 202);
            let sent: Value = resp.json().await.unwrap();
            let events: Vec<Sse> = sse_events(s.stream("fresh", None).await).collect().await;
            assert_eq!(events[0].event, "start");
            assert_eq!(events.last().unwrap().event, "done");
            let expected = DemoProvider::reply_for(&ChatRequest::user("Tell me something"));
            assert_eq!(text_of(&events), expected);
            let history = s.settled_history("fresh").await;
            assert_eq!(history.len(), 2);
            assert_eq!(history[0]["id"], sent["userMessage"]["id"]);
            assert_eq!(history[1]["id"], sent["assistantMessageId"]);
            assert_eq!(history[1]["status"], "complete");
            assert_eq!(history[1]["content"], expected.as_str());
            let chats: Vec<Value> = s.get("/api/chats").await.json().await.unwrap();
            assert_eq!(chats.len(), 1);
            assert_eq!(chats[0]["id"], "fresh");
        })
        .await;
    }

    #[tokio::test]
    async fn a_repeated_send_is_idempotent() {
        isolated("mongodb::a_repeated_send_is_idempotent", |url| async move {
            let provider = ScriptedProvider::new().repeat(slow_reply(30, 10));
            let s = serve_mongodb(Arc::new(provider.clone()), &url).await;
            let first: Value = s
                .send("busy", "one", Some("key-1"))
                .await
                .json()
                .await
                .unwrap();
            let repeat: Value = s
                .send("busy", "one", Some("key-1"))
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(repeat["userMessage"]["id"], first["userMessage"]["id"]);
            assert_eq!(repeat["assistantMessageId"], first["assistantMessageId"]);
            let other = s.send("busy", "two", Some("key-2")).await;
            assert_eq!(error_of(other).await, (409, "busy".into()));
            assert_eq!(s.settled_history("busy").await.len(), 2);
            let late: Value = s
                .send("busy", "one", Some("key-1"))
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(late["userMessage"]["id"], first["userMessage"]["id"]);
            assert_eq!(s.history("busy").await.len(), 2);
            assert_eq!(provider.started(), 1);
        })
        .await;
    }

    #[tokio::test]
    async fn terminate_persists_the_reply_cancelled() {
        isolated(
            "mongodb::terminate_persists_the_reply_cancelled",
            |url| async move {
                let (base, _closed) = slow_openai_upstream().await;
                let provider = OpenAiProvider::builder()
                    .base_url(base)
                    .model("m")
                    .build()
                    .unwrap();
                let s = serve_mongodb(Arc::new(provider), &url).await;
                assert_eq!(s.send("stop-me", "go", None).await.status(), 202);
                let (mut seen, events) = s.read_deltas("stop-me", 3).await;
                assert_eq!(s.terminate("stop-me").await, json!({"terminated": true}));
                seen.extend(events.collect::<Vec<_>>().await);
                assert_eq!(seen.last().unwrap().data["status"], "cancelled");
                let history = s.settled_history("stop-me").await;
                assert_eq!(history[1]["status"], "cancelled");
                assert_eq!(history[1]["content"].as_str().unwrap(), text_of(&seen));
            },
        )
        .await;
    }

    #[tokio::test]
    async fn a_restart_on_the_same_database_keeps_history() {
        isolated("mongodb::a_restart_keeps_history", |url| async move {
            a_restart_keeps_history(&url).await;
        })
        .await;
    }

    #[tokio::test]
    async fn a_killed_server_leaves_the_reply_interrupted_with_its_checkpoint() {
        isolated("mongodb::a_killed_server", |url| async move {
            a_killed_server_leaves_its_reply_interrupted(&url).await;
        })
        .await;
    }
}
