//! What the server tests share: the router served in-process on port 0, the example's binary
//! started as a process, and a client that speaks the HTTP contract.

use std::{sync::Arc, time::Duration};

use chatstream::provider::Script;
use chatstream::{
    DynLlmProvider, FinishReason,
    provider::DemoProvider,
    store::{DynMessageStore, MemoryStore},
};
use futures::StreamExt;
use serde_json::{Value, json};

pub use chatstream::server::ServerOptions;

// ---- the router served in-process ----

/// A server and a client for it: the router served in-process by `task`, or a [`Process`]'s
/// address with a task that does nothing.
pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn serve(provider: DynLlmProvider, options: ServerOptions) -> Server {
    serve_on(provider, Arc::new(MemoryStore::new()), options).await
}

pub async fn serve_on(
    provider: DynLlmProvider,
    store: DynMessageStore,
    options: ServerOptions,
) -> Server {
    let hub: chatstream::DynStreamHub = Arc::new(chatstream::LocalHub::new());
    serve_with(provider, store, hub, options).await
}

pub async fn serve_with(
    provider: DynLlmProvider,
    store: DynMessageStore,
    hub: chatstream::DynStreamHub,
    options: ServerOptions,
) -> Server {
    let service = chatstream::ChatService::builder()
        .provider(provider.clone())
        .store(store)
        .hub(hub)
        .checkpoint(Duration::from_millis(50), 8)
        .build()
        .unwrap();
    serve_app(chatstream::server::router(service, options)).await
}

/// Serves `app` on a free port of the loopback interface.
pub async fn serve_app(app: axum::Router) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service())
            .await
            .unwrap()
    });
    Server {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        task,
    }
}

/// The example's whole app: the chat routes on the demo provider, and the web page.
pub async fn example_app() -> Server {
    let service = chatstream::ChatService::builder()
        .provider(Arc::new(DemoProvider::new().with_delay(Duration::ZERO)))
        .build()
        .unwrap();
    serve_app(
        chatstream::server::router(service, ServerOptions::default()).merge(crate::page::routes()),
    )
    .await
}

pub async fn demo() -> Server {
    serve(
        Arc::new(DemoProvider::new().with_delay(Duration::ZERO)),
        ServerOptions::default(),
    )
    .await
}

// ---- a client of the HTTP contract ----

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /api/chat` with one user message.
    pub async fn chat(&self, content: &str) -> reqwest::Response {
        self.client
            .post(self.url("/api/chat"))
            .json(&json!({"messages": [{"role": "user", "content": content}]}))
            .send()
            .await
            .unwrap()
    }

    pub async fn send(&self, chat: &str, content: &str, key: Option<&str>) -> reqwest::Response {
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

    pub async fn stream(&self, chat: &str, last_event_id: Option<u64>) -> reqwest::Response {
        let mut req = self.client.get(self.url(&format!("/api/stream/{chat}")));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        req.send().await.unwrap()
    }

    pub async fn history(&self, chat: &str) -> Vec<Value> {
        let resp = self.get(&format!("/api/messages/{chat}")).await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client.delete(self.url(path)).send().await.unwrap()
    }

    /// `POST /api/stream/{chat}/terminate`, answered with `{"terminated": …}`.
    pub async fn terminate(&self, chat: &str) -> Value {
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
    pub async fn read_deltas(
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
    pub async fn settled_history(&self, chat: &str) -> Vec<Value> {
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

/// The `data:` payloads of an SSE response body.
pub async fn sse_data(resp: reqwest::Response) -> Vec<String> {
    let mut events = sse_stream::SseByteStream::new(resp.bytes_stream());
    let mut out = Vec::new();
    while let Some(e) = events.next().await {
        if let Some(d) = e.unwrap().data {
            out.push(d);
        }
    }
    out
}

pub async fn error_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("error bodies are JSON");
    (status, body["error"]["code"].as_str().unwrap().to_string())
}

/// One server-sent event as a client sees it.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

pub fn sse_events(resp: reqwest::Response) -> impl futures::Stream<Item = Sse> {
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

pub fn text_of(events: &[Sse]) -> String {
    events
        .iter()
        .filter(|e| e.event == "delta" && e.data["type"] == "text")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect()
}

// ---- replies and upstreams ----

pub fn slow_reply(words: usize, delay_ms: u64) -> Script {
    let mut script = Script::new().per_delta_delay(Duration::from_millis(delay_ms));
    for i in 0..words {
        script = script.text(format!("w{i} "));
    }
    script.finish(FinishReason::Stop).usage(3, words as u64)
}

pub fn words(n: usize) -> String {
    (0..n).map(|i| format!("w{i} ")).collect()
}

/// A raw upstream that speaks OpenAI SSE slowly and reports when the client closes.
pub async fn slow_openai_upstream() -> (String, tokio::sync::oneshot::Receiver<usize>) {
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

// ---- the example's binary, run as a process ----

pub struct Process {
    pub child: std::process::Child,
    base: String,
}

/// Starts the example's binary (built by `cargo test` next to this test's own binary).
pub fn start_server(db_url: &str, extra: &[(&str, &str)]) -> Process {
    // Warnings and errors of the server show in the test's output.
    start_server_logging(db_url, extra, std::process::Stdio::inherit())
}

/// The example's binary (built by `cargo test` next to this test's own binary).
pub fn example_binary() -> std::path::PathBuf {
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
    bin
}

/// Like [`start_server`], with the server's standard error (its log) sent to `stderr`.
pub fn start_server_logging(
    db_url: &str,
    extra: &[(&str, &str)],
    stderr: std::process::Stdio,
) -> Process {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(example_binary());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CHATSTREAM_ADDR", "127.0.0.1:0")
        .env("CHATSTREAM_DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(stderr);
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
    pub fn server(&self) -> Server {
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
