//! The server example's HTTP contract, served on port 0.

// The example is a binary; its modules are compiled into this test, where some of their items
// are unused.
#[allow(dead_code)]
#[path = "../examples/server/api.rs"]
mod api;
#[allow(dead_code)]
#[path = "../examples/server/app.rs"]
mod app;
#[allow(dead_code)]
#[path = "../examples/server/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "../examples/server/error.rs"]
mod error;
#[allow(dead_code)]
#[path = "../examples/server/openai_compat.rs"]
mod openai_compat;
#[allow(dead_code)]
#[path = "../examples/server/stateless.rs"]
mod stateless;

use std::{sync::Arc, time::Duration};

use chatstream::{DynProvider, Error, Script, ScriptedProvider, provider::DemoProvider};
use futures::StreamExt;
use serde_json::{Value, json};

struct Server {
    base: String,
    client: reqwest::Client,
}

async fn serve(provider: DynProvider, config: config::Config) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = chatstream::ChatService::builder()
        .provider(provider.clone())
        .build()
        .unwrap();
    let state = app::AppState {
        service,
        model: provider.default_model().to_string(),
        provider,
        config: Arc::new(config),
    };
    tokio::spawn(async move { axum::serve(listener, app::app(state)).await.unwrap() });
    Server {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
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
    let resp = s
        .client
        .post(format!("{}/api/chat", s.base))
        .json(&json!({"messages": [{"role": "user", "content": "hello there"}]}))
        .send()
        .await
        .unwrap();
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
    let resp = s
        .client
        .post(format!("{}/api/chat", s.base))
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let data = sse_data(resp).await;
    assert_eq!(data[0], r#"{"content":"partial"}"#);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(
        last["error"].as_str().unwrap().contains("ended before"),
        "{last}"
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
