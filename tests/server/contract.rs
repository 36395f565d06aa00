//! The HTTP contract, against the router served in-process on port 0.

use std::{sync::Arc, time::Duration};

use chatstream::{
    ChatRequest, Error, FinishReason, RequestMessage, Role, SendOptions, ToolSpec,
    provider::{
        DemoProvider, JsonSchema, OpenAiProvider, ReasoningEffort, Script, ScriptedProvider,
        TokenLimitField, ToolChoice,
    },
};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::support::*;

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
    let s = serve(Arc::new(provider), ServerOptions::default()).await;
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
    let config = ServerOptions::default().with_keep_alive(Duration::from_millis(200));
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
    let config = ServerOptions::default().with_body_limit(1024);
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
    let s = serve(Arc::new(provider), ServerOptions::default()).await;
    let resp = s
        .client
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&json!({"messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (502, "upstream".into()));
}

#[tokio::test]
async fn openai_compatible_forwards_what_it_does_not_interpret() {
    let upstream = wiremock::MockServer::start().await;
    let body = std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/fixtures/openai/text.sse"),
    )
    .unwrap();
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_raw(body, "text/event-stream"))
        .mount(&upstream)
        .await;
    let provider = OpenAiProvider::builder()
        .base_url(upstream.uri())
        .build()
        .unwrap();
    let s = serve(Arc::new(provider), ServerOptions::default()).await;
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}},
                        "required": ["city"], "additionalProperties": false});
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "The weather", "parameters": {"type": "object"}}}]);
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&json!({
            "model": "o4-mini",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "Weather?"},
            ],
            "max_completion_tokens": 50,
            "reasoning_effort": "low",
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "w", "strict": true, "schema": schema}},
            "tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "seed": 7,
            "user": "u-1",
            "logit_bias": {"50256": -100},
            "parallel_tool_calls": false,
            "metadata": {"app": "test"},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(sse_data(resp).await.last().unwrap(), "[DONE]");
    let requests = upstream.received_requests().await.unwrap();
    let sent: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(
        sent,
        json!({
            "model": "o4-mini",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather?"},
            ],
            "max_completion_tokens": 50,
            "reasoning_effort": "low",
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "w", "strict": true, "schema": schema}},
            "tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "seed": 7,
            "user": "u-1",
            "logit_bias": {"50256": -100},
            "parallel_tool_calls": false,
            "metadata": {"app": "test"},
        })
    );

    // `max_tokens` stays `max_tokens`; shapes the server does not model go upstream unchanged.
    let allowed = json!({"type": "allowed_tools", "mode": "auto",
                         "tools": [{"type": "function", "name": "get_weather"}]});
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&json!({
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 20,
            "tool_choice": allowed,
            "reasoning_effort": "maximal",
            "response_format": {"type": "text"},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let requests = upstream.received_requests().await.unwrap();
    let sent: Value = serde_json::from_slice(&requests[1].body).unwrap();
    assert_eq!(sent["max_tokens"], 20);
    assert!(sent.get("max_completion_tokens").is_none(), "{sent}");
    assert_eq!(sent["tool_choice"], allowed);
    assert_eq!(sent["reasoning_effort"], "maximal");
    assert!(sent.get("response_format").is_none(), "{sent}");
}

// ---- the stateful endpoints ----

/// A server whose service has a system prompt and default options, on `provider`.
async fn serve_with_defaults(provider: ScriptedProvider) -> Server {
    let service = chatstream::ChatService::builder()
        .provider(Arc::new(provider))
        .system_prompt("Service prompt.")
        .default_options(
            SendOptions::default()
                .with_temperature(0.3)
                .with_extra("seed", 1),
        )
        .build()
        .unwrap();
    serve_app(chatstream::server::router(
        service,
        ServerOptions::default(),
    ))
    .await
}

#[tokio::test]
async fn send_options_reach_the_upstream_over_the_service_defaults() {
    let provider = ScriptedProvider::new().repeat(Script::reply(["ok"]));
    let s = serve_with_defaults(provider.clone()).await;
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
    let resp = s
        .client
        .post(s.url("/api/messages"))
        .json(&json!({
            "chatId": "opts",
            "content": "Weather?",
            "model": "m-2",
            "options": {
                "system": "Per send.",
                "topP": 0.9,
                "maxOutputTokens": 4096,
                "stop": ["END"],
                "reasoningEffort": "high",
                "thinkingBudget": 2048,
                "tools": [{"name": "get_weather", "description": "The weather",
                           "parameters": {"type": "object"}}],
                "toolChoice": {"name": "get_weather"},
                "responseFormat": {"type": "jsonSchema", "name": "w", "schema": schema},
                "extra": {"user": "u-1"},
            },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    s.settled_history("opts").await;
    // Without options, the service's prompt and defaults.
    assert_eq!(s.send("opts", "Again", None).await.status(), 202);
    s.settled_history("opts").await;
    // A context window for this send only: the history it cannot hold stays out of the
    // request (20 tokens, 5 kept for the reply: the prompt and the new message fill it).
    let resp = s
        .client
        .post(s.url("/api/messages"))
        .json(&json!({"chatId": "opts", "content": "Third", "options": {"contextTokens": 20}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    s.settled_history("opts").await;

    let requests = provider.requests();
    let first = &requests[0];
    assert_eq!(first.model.as_deref(), Some("m-2"));
    assert_eq!(
        first.messages,
        [
            RequestMessage::new(Role::System, "Per send."),
            RequestMessage::new(Role::User, "Weather?"),
        ]
    );
    assert_eq!(first.temperature, Some(0.3), "the service's default");
    assert_eq!(first.top_p, Some(0.9));
    assert_eq!(first.max_tokens, Some(4096));
    assert_eq!(first.stop, ["END"]);
    assert_eq!(first.reasoning_effort, Some(ReasoningEffort::High));
    assert_eq!(first.thinking_budget, Some(2048));
    assert_eq!(
        first.tools,
        [ToolSpec::new(
            "get_weather",
            "The weather",
            json!({"type": "object"})
        )]
    );
    assert_eq!(first.tool_choice, Some(ToolChoice::tool("get_weather")));
    assert_eq!(
        first.response_format,
        Some(JsonSchema::new("w", schema).into())
    );
    assert_eq!(
        Value::Object(first.extra.clone()),
        json!({"seed": 1, "user": "u-1"})
    );
    assert_eq!(first.token_limit_field, None::<TokenLimitField>);

    let second = &requests[1];
    assert_eq!(second.model, None);
    assert_eq!(
        second.messages[0],
        RequestMessage::new(Role::System, "Service prompt.")
    );
    assert_eq!(second.temperature, Some(0.3));
    assert_eq!((second.top_p, second.max_tokens), (None, None));
    assert!(second.tools.is_empty() && second.tool_choice.is_none());
    assert_eq!(Value::Object(second.extra.clone()), json!({"seed": 1}));
    assert_eq!(
        second.messages.len(),
        4,
        "the whole chat fits the default budget"
    );

    assert_eq!(
        requests[2].messages,
        [
            RequestMessage::new(Role::System, "Service prompt."),
            RequestMessage::new(Role::User, "Third"),
        ]
    );
    assert_eq!(
        s.history("opts").await.len(),
        6,
        "the chat keeps every message"
    );
}

#[tokio::test]
async fn bad_send_options_are_422_and_write_nothing() {
    let provider = ScriptedProvider::new().repeat(Script::reply(["ok"]));
    let s = serve_with_defaults(provider.clone()).await;
    let tool = json!({"name": "get_weather", "parameters": {"type": "object"}});
    let cases = [
        (json!({"temperature": 3}), "invalid_options"),
        (json!({"topP": 1.5}), "invalid_options"),
        (json!({"maxOutputTokens": 0}), "invalid_options"),
        (json!({"contextTokens": 0}), "invalid_options"),
        (json!({"stop": ["", "x"]}), "invalid_options"),
        (json!({"thinkingBudget": 100}), "invalid_options"),
        (
            json!({"tools": [{"name": "bad name", "parameters": {}}]}),
            "invalid_options",
        ),
        (
            json!({"tools": [tool], "toolChoice": {"name": "other"}}),
            "invalid_options",
        ),
        (json!({"extra": {"stream": false}}), "invalid_options"),
        (
            json!({"responseFormat": {"type": "jsonSchema", "name": "w", "schema": 1}}),
            "invalid_options",
        ),
        (json!({"reasoningEffort": "lots"}), "invalid_body"),
        (json!({"toolChoice": "any"}), "invalid_body"),
        (json!({"temperature": "hot"}), "invalid_body"),
        (json!({"model": "m"}), "invalid_body"),
        (json!({"unknown": 1}), "invalid_body"),
        (json!([]), "invalid_body"),
    ];
    for (options, code) in cases {
        let resp = s
            .client
            .post(s.url("/api/messages"))
            .json(&json!({"chatId": "bad-options", "content": "x", "options": options}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(resp).await, (422, code.into()), "{options}");
    }
    assert!(s.history("bad-options").await.is_empty());
    assert_eq!(provider.started(), 0);
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
    let s = serve(Arc::new(provider), ServerOptions::default()).await;
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
    let s = serve(Arc::new(provider.clone()), ServerOptions::default()).await;
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

#[tokio::test]
async fn terminate_closes_the_upstream_and_persists_cancelled() {
    let (base, closed) = slow_openai_upstream().await;
    let provider = OpenAiProvider::builder()
        .base_url(base)
        .model("m")
        .build()
        .unwrap();
    let s = serve(Arc::new(provider), ServerOptions::default()).await;
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
        ServerOptions::default(),
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
    let config = ServerOptions::default().with_cors_origins(["https://app.example"]);
    let open = serve(Arc::new(DemoProvider::new()), config).await;
    let resp = preflight(&open).await.unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

// The routes the web page's actions need: regenerate the last reply, rename a chat.

async fn regenerate(s: &Server, chat: &str) -> reqwest::Response {
    s.client
        .post(s.url(&format!("/api/chats/{chat}/regenerate")))
        .send()
        .await
        .unwrap()
}

async fn rename(s: &Server, chat: &str, body: Value) -> reqwest::Response {
    s.client
        .patch(s.url(&format!("/api/chats/{chat}")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn regenerate_answers_the_last_message_again_and_keeps_the_earlier_reply() {
    let s = demo().await;
    let sent: Value = s
        .send("regen", "Tell me more", None)
        .await
        .json()
        .await
        .unwrap();
    let user_id = sent["userMessage"]["id"].clone();
    let first_reply = sent["assistantMessageId"].clone();
    s.settled_history("regen").await;

    let resp = regenerate(&s, "regen").await;
    assert_eq!(resp.status(), 202);
    let again: Value = resp.json().await.unwrap();
    // Answered like a send: the user message it answers (not a new one) and the new reply.
    assert_eq!(again["userMessage"]["id"], user_id);
    assert_eq!(again["userMessage"]["content"], "Tell me more");
    assert_ne!(again["assistantMessageId"], first_reply);
    let events: Vec<Sse> = sse_events(s.stream("regen", None).await).collect().await;
    assert_eq!(events[0].event, "start");
    assert_eq!(events[0].data["messageId"], again["assistantMessageId"]);
    assert_eq!(events[0].data["userMessageId"], user_id);
    assert_eq!(events.last().unwrap().data["status"], "complete");
    assert_eq!(
        text_of(&events),
        DemoProvider::reply_for(&ChatRequest::user("Tell me more"))
    );

    let history = s.settled_history("regen").await;
    let roles: Vec<_> = history.iter().map(|m| m["role"].clone()).collect();
    assert_eq!(
        roles,
        [json!("user"), json!("assistant"), json!("assistant")]
    );
    assert_eq!(history[1]["id"], first_reply);
    assert_eq!(history[1]["replyTo"], user_id);
    assert_eq!(history[2]["id"], again["assistantMessageId"]);
    assert_eq!(history[2]["replyTo"], user_id);
}

#[tokio::test]
async fn regenerate_is_409_while_a_reply_is_live() {
    let provider = ScriptedProvider::new().repeat(slow_reply(30, 10));
    let s = serve(Arc::new(provider.clone()), ServerOptions::default()).await;
    assert_eq!(s.send("live", "one", None).await.status(), 202);
    assert_eq!(
        error_of(regenerate(&s, "live").await).await,
        (409, "busy".into())
    );
    s.settled_history("live").await;
    assert_eq!(regenerate(&s, "live").await.status(), 202);
    let history = s.settled_history("live").await;
    assert_eq!(history.len(), 3, "one user message, two replies");
    assert_eq!(provider.started(), 2);
}

#[tokio::test]
async fn regenerate_needs_a_chat_with_a_user_message() {
    let s = demo().await;
    assert_eq!(
        error_of(regenerate(&s, "missing").await).await,
        (404, "not_found".into())
    );
    assert_eq!(
        error_of(regenerate(&s, "bad%20id").await).await,
        (400, "invalid_chat_id".into())
    );
    let created = s
        .client
        .post(s.url("/api/chats"))
        .json(&json!({"id": "quiet"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(
        error_of(regenerate(&s, "quiet").await).await,
        (400, "invalid".into())
    );
    assert!(s.history("quiet").await.is_empty(), "nothing was written");
}

#[tokio::test]
async fn the_page_and_every_file_it_loads_are_served() {
    let s = example_app().await;
    let page = s.get("/").await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    for part in [
        "script-src 'self'",
        "img-src 'self' data:",
        "default-src 'none'",
    ] {
        assert!(policy.contains(part), "{policy}");
    }
    let html = page.text().await.unwrap();
    let files: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.starts_with("/static/"))
        .collect();
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let resp = s.get(file).await;
        assert_eq!(resp.status(), 200, "{file}");
        let kind = if file.ends_with(".js") {
            "text/javascript; charset=utf-8"
        } else {
            "text/css; charset=utf-8"
        };
        assert_eq!(resp.headers()["content-type"], kind, "{file}");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        assert!(!resp.bytes().await.unwrap().is_empty(), "{file}");
    }
    assert_eq!(
        error_of(s.get("/static/nope.js").await).await,
        (404, "not_found".into())
    );
}

#[tokio::test]
async fn patch_renames_a_chat() {
    let s = demo().await;
    s.client
        .post(s.url("/api/chats"))
        .json(&json!({"id": "named", "title": "Old"}))
        .send()
        .await
        .unwrap();
    let resp = rename(&s, "named", json!({"title": "  New name "})).await;
    assert_eq!(resp.status(), 200);
    let chat: Value = resp.json().await.unwrap();
    assert_eq!(chat["id"], "named");
    assert_eq!(chat["title"], "New name");
    let list: Vec<Value> = s.get("/api/chats").await.json().await.unwrap();
    assert_eq!(list[0]["title"], "New name");

    assert_eq!(
        error_of(rename(&s, "missing", json!({"title": "x"})).await).await,
        (404, "not_found".into())
    );
    assert_eq!(
        error_of(rename(&s, "bad%20id", json!({"title": "x"})).await).await,
        (400, "invalid_chat_id".into())
    );
    let cases = [
        (json!({"title": "   "}), 422, "invalid_title"),
        (json!({"title": "two\nlines"}), 422, "invalid_title"),
        (json!({"title": "x".repeat(201)}), 422, "invalid_title"),
        (json!({"title": null}), 422, "invalid_body"),
        (json!({}), 422, "invalid_body"),
        (json!({"title": "x", "extra": 1}), 422, "invalid_body"),
    ];
    for (body, status, code) in cases {
        assert_eq!(
            error_of(rename(&s, "named", body.clone()).await).await,
            (status, code.into()),
            "{body}"
        );
    }
    let text = s
        .client
        .patch(s.url("/api/chats/named"))
        .body(r#"{"title":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(text).await, (415, "unsupported_media_type".into()));
    assert_eq!(
        rename(&s, "named", json!({"title": "é".repeat(200)}))
            .await
            .status(),
        200,
        "the limit counts characters, not bytes"
    );
    let list: Vec<Value> = s.get("/api/chats").await.json().await.unwrap();
    assert_eq!(list[0]["title"], "é".repeat(200));
}

#[tokio::test]
async fn mounted_under_a_prefix_beside_an_apps_own_routes() {
    let service = chatstream::ChatService::builder()
        .provider(Arc::new(DemoProvider::new().with_delay(Duration::ZERO)))
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "my app" }))
        .nest(
            "/chat",
            chatstream::server::router(service, ServerOptions::default()),
        );
    let s = serve_app(app).await;
    assert_eq!(s.get("/").await.text().await.unwrap(), "my app");
    let sent = s
        .client
        .post(s.url("/chat/api/messages"))
        .json(&json!({"chatId": "nested", "content": "Hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let events: Vec<Sse> = sse_events(s.get("/chat/api/stream/nested").await)
        .collect()
        .await;
    assert_eq!(events.last().unwrap().event, "done");
    assert_eq!(events.last().unwrap().data["status"], "complete");
    // The chat routes' own fallback still answers in JSON under the prefix.
    assert_eq!(
        error_of(s.get("/chat/api/nothing").await).await,
        (404, "not_found".into())
    );
}
