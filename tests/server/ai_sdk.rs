//! The Vercel AI SDK's UI message stream: `POST /api/chat` with a `useChat` body, resume, stop
//! and the `UIMessage` history, checked chunk by chunk against the protocol's shapes, against a
//! recorded transcript, and with the SDK's own client (tests/js, run with Node when installed).

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use chatstream::provider::{Script, ScriptedProvider};
use chatstream::{
    ChatRequest, Delta, DeltaStream, DynLlmProvider, Error, FinishReason, LlmProvider, Role,
    ToolCallDelta,
};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::support::*;

// ---- requests as `DefaultChatTransport` sends them ----

fn user(id: &str, text: &str) -> Value {
    json!({"id": id, "role": "user", "parts": [{"type": "text", "text": text}]})
}

fn submit(chat: &str, messages: Value) -> Value {
    json!({"id": chat, "messages": messages, "trigger": "submit-message"})
}

impl Server {
    async fn post_chat(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/api/chat"))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn ui_history(&self, chat: &str) -> Vec<Value> {
        let resp = self.get(&format!("/api/chat/{chat}/messages")).await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// Waits until the chat's newest message has left `streaming`; returns its status.
    async fn settled_status(&self, chat: &str) -> String {
        self.settled_history(chat).await.last().unwrap()["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

// ---- the protocol's shapes ----

/// Every chunk type the server may send: its required and its optional keys
/// (`uiMessageChunkSchema` of `ai@6`; AI SDK 5 rejects any other key).
const SHAPES: &[(&str, &[&str], &[&str])] = &[
    ("start", &[], &["messageId", "messageMetadata"]),
    ("start-step", &[], &[]),
    ("finish-step", &[], &[]),
    ("text-start", &["id"], &["providerMetadata"]),
    ("text-delta", &["id", "delta"], &["providerMetadata"]),
    ("text-end", &["id"], &["providerMetadata"]),
    ("reasoning-start", &["id"], &["providerMetadata"]),
    ("reasoning-delta", &["id", "delta"], &["providerMetadata"]),
    ("reasoning-end", &["id"], &["providerMetadata"]),
    (
        "tool-input-start",
        &["toolCallId", "toolName"],
        &["providerExecuted", "dynamic", "title"],
    ),
    ("tool-input-delta", &["toolCallId", "inputTextDelta"], &[]),
    (
        "tool-input-available",
        &["toolCallId", "toolName", "input"],
        &["providerExecuted", "dynamic"],
    ),
    (
        "tool-input-error",
        &["toolCallId", "toolName", "input", "errorText"],
        &[],
    ),
    ("message-metadata", &["messageMetadata"], &[]),
    ("error", &["errorText"], &[]),
    ("abort", &[], &["reason"]),
    ("finish", &[], &["finishReason", "messageMetadata"]),
];

const FINISH_REASONS: &[&str] = &[
    "stop",
    "length",
    "content-filter",
    "tool-calls",
    "error",
    "other",
];

/// No `null` anywhere, except inside a tool's input (the model's own JSON).
fn assert_no_null(value: &Value, at: &str) {
    match value {
        Value::Null => panic!("null at {at}"),
        Value::Array(items) => items
            .iter()
            .for_each(|v| assert_no_null(v, &format!("{at}[]"))),
        Value::Object(map) => {
            for (k, v) in map {
                if k != "input" {
                    assert_no_null(v, &format!("{at}.{k}"));
                }
            }
        }
        _ => {}
    }
}

/// Checks one stream's chunks: each against its shape, and all of them as a sequence (`start`
/// first, deltas only inside their open part, every part closed, one terminal chunk).
fn check_stream(data: &[String]) -> Vec<Value> {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{d}: {e}")))
        .collect();
    let mut open: HashMap<String, &str> = HashMap::new();
    let mut tools: HashMap<String, bool> = HashMap::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let map = chunk.as_object().unwrap_or_else(|| panic!("{chunk}"));
        let kind = map["type"].as_str().unwrap();
        let (_, required, optional) = SHAPES
            .iter()
            .find(|(t, _, _)| *t == kind)
            .unwrap_or_else(|| panic!("unknown chunk type in {chunk}"));
        for key in *required {
            assert!(map.contains_key(*key), "{key} missing in {chunk}");
        }
        for key in map.keys().filter(|k| *k != "type") {
            assert!(
                required.contains(&key.as_str()) || optional.contains(&key.as_str()),
                "{key} is not in the schema of {kind}: {chunk}"
            );
        }
        assert_no_null(chunk, kind);
        for key in [
            "id",
            "delta",
            "toolCallId",
            "toolName",
            "inputTextDelta",
            "errorText",
        ] {
            if let Some(v) = map.get(key) {
                assert!(v.is_string(), "{key} of {chunk}");
            }
        }
        if let Some(reason) = map.get("finishReason") {
            assert!(
                FINISH_REASONS.contains(&reason.as_str().unwrap()),
                "{chunk}"
            );
        }
        assert_eq!(kind == "start", i == 0, "start comes first, once: {chunk}");
        let id = |k: &str| map[k].as_str().unwrap().to_owned();
        match kind {
            "text-start" | "reasoning-start" => {
                let part = &kind[..kind.len() - "-start".len()];
                assert!(open.insert(id("id"), part).is_none(), "{chunk}");
            }
            "text-delta" | "reasoning-delta" | "text-end" | "reasoning-end" => {
                let part = kind.split('-').next().unwrap();
                assert_eq!(open.get(&id("id")).copied(), Some(part), "{chunk}");
                if kind.ends_with("-end") {
                    open.remove(&id("id"));
                }
            }
            "tool-input-start" => assert!(tools.insert(id("toolCallId"), false).is_none()),
            "tool-input-delta" => assert_eq!(tools.get(&id("toolCallId")), Some(&false)),
            "tool-input-available" | "tool-input-error" => {
                assert_eq!(tools.insert(id("toolCallId"), true), Some(false), "{chunk}");
            }
            "finish" | "abort" | "error" => {
                assert_eq!(i, chunks.len() - 1, "{kind} ends the stream");
                assert!(open.is_empty(), "parts left open: {open:?}");
                assert!(tools.values().all(|done| *done), "tool input left open");
            }
            _ => {}
        }
    }
    chunks
}

async fn ui_chunks(resp: reqwest::Response) -> Vec<Value> {
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-vercel-ai-ui-message-stream"], "v1");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    check_stream(&sse_data(resp).await)
}

fn text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter(|c| c["type"] == "text-delta")
        .map(|c| c["delta"].as_str().unwrap())
        .collect()
}

fn message_id(chunks: &[Value]) -> String {
    chunks[0]["messageId"].as_str().unwrap().to_owned()
}

/// Reads a UI stream until `n` text deltas came, then leaves the rest unread.
async fn first_deltas(resp: reqwest::Response, n: usize) -> Vec<Value> {
    let mut events = Box::pin(sse_stream::SseByteStream::new(resp.bytes_stream()));
    let mut chunks: Vec<Value> = Vec::new();
    while chunks.iter().filter(|c| c["type"] == "text-delta").count() < n {
        let data = events.next().await.unwrap().unwrap().data;
        if let Some(data) = data {
            chunks.push(serde_json::from_str(&data).unwrap());
        }
    }
    chunks
}

// ---- scripts ----

fn call(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> Delta {
    Delta::ToolCall(ToolCallDelta {
        index,
        id: id.map(Into::into),
        name: name.map(Into::into),
        arguments: arguments.into(),
    })
}

/// Reasoning, text and a tool call in two fragments.
fn weather(reasoning: &str, text: &str) -> Script {
    Script::new()
        .reasoning(reasoning)
        .text("Let me")
        .text(&text["Let me".len()..])
        .delta(call(0, Some("call_1"), Some("get_weather"), r#"{"city":"#))
        .delta(call(0, None, None, r#""Paris"}"#))
        .finish(FinishReason::ToolCalls)
        .usage(9, 4)
}

/// A provider that picks the script by how the chat's last user message begins.
#[derive(Debug)]
struct ByPrompt(Vec<(&'static str, ScriptedProvider)>);

impl LlmProvider for ByPrompt {
    fn name(&self) -> &str {
        "by-prompt"
    }

    fn default_model(&self) -> &str {
        "scripted"
    }

    fn stream(&self, request: ChatRequest) -> DeltaStream {
        let last = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.clone())
            .unwrap_or_default();
        match self.0.iter().find(|(prefix, _)| last.starts_with(prefix)) {
            Some((_, provider)) => provider.stream(request),
            None => futures::stream::once(async move {
                Err(Error::Config(format!("no script for {last:?}")))
            })
            .boxed(),
        }
    }
}

// ---- the stream ----

#[tokio::test]
async fn the_reply_is_the_ui_message_stream_byte_for_byte() {
    let provider = ScriptedProvider::new().then(weather("The user greets me.", "Let me check."));
    let s = serve(Arc::new(provider), ServerOptions::default()).await;
    let resp = s
        .post_chat(&submit("ui-1", json!([user("u1", "Hi")])))
        .await;
    assert_eq!(resp.status(), 200);
    for (name, value) in [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-cache"),
        ("connection", "keep-alive"),
        ("x-vercel-ai-ui-message-stream", "v1"),
        ("x-accel-buffering", "no"),
    ] {
        assert_eq!(resp.headers()[name], value, "{name}");
    }
    let body = resp.text().await.unwrap();
    // Comments (the opening one, keep-alives) are not chunks: the parser skips them.
    let blocks: Vec<&str> = body
        .split_terminator("\n\n")
        .filter(|b| !b.starts_with(':'))
        .collect();
    let data: Vec<String> = blocks
        .iter()
        .map(|b| b.strip_prefix("data: ").expect(b).to_owned())
        .collect();
    let chunks = check_stream(&data);
    let id = message_id(&chunks);
    let history = s.history("ui-1").await;
    assert_eq!(
        history[1]["id"],
        id.as_str(),
        "start names the stored reply"
    );
    let transcript = format!("{}\n\n", blocks.join("\n\n")).replace(&id, "MESSAGE_ID");
    let expected = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ai-sdk/reply.sse"),
    )
    .unwrap();
    assert_eq!(transcript, expected);
}

#[tokio::test]
async fn failed_stopped_and_malformed_tool_replies_keep_to_the_schema() {
    let provider = ScriptedProvider::new()
        .then(
            Script::new()
                .text("par")
                .fail(|| Error::from_status("scripted", 400, None, "boom", None)),
        )
        .then(
            Script::new()
                .delta(call(0, Some("c1"), Some("f"), "{not json"))
                .text("after")
                .finish(FinishReason::Stop),
        )
        .then(slow_reply(200, 10));
    let s = serve(Arc::new(provider), ServerOptions::default()).await;

    let failed = ui_chunks(
        s.post_chat(&submit("ui-fail", json!([user("u1", "Hi")])))
            .await,
    )
    .await;
    let last = failed.last().unwrap();
    assert_eq!(last["type"], "error");
    assert!(
        last["errorText"].as_str().unwrap().contains("boom"),
        "{last}"
    );
    let metadata = &failed[failed.len() - 2]["messageMetadata"];
    assert_eq!(metadata["status"], "failed");

    let bad_tool = ui_chunks(
        s.post_chat(&submit("ui-tool", json!([user("u1", "Hi")])))
            .await,
    )
    .await;
    let error = bad_tool
        .iter()
        .find(|c| c["type"] == "tool-input-error")
        .unwrap();
    assert_eq!(error["input"], "{not json");
    assert_eq!(text(&bad_tool), "after");
    assert_eq!(bad_tool.last().unwrap()["finishReason"], "stop");
    let ui = s.ui_history("ui-tool").await;
    let tool = &ui[1]["parts"][2];
    assert_eq!(tool["type"], "tool-f");
    assert_eq!(tool["state"], "output-error");
    assert_eq!(tool["rawInput"], "{not json");

    // Stopped through the stop route while the POST's response is being read.
    let resp = s
        .post_chat(&submit("ui-stop", json!([user("u1", "Hi")])))
        .await;
    let reading = tokio::spawn(ui_chunks(resp));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = s
        .client
        .post(s.url("/api/chat/ui-stop/stop"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stopped.json::<Value>().await.unwrap(),
        json!({"stopped": true})
    );
    let chunks = reading.await.unwrap();
    assert_eq!(chunks.last().unwrap(), &json!({"type": "abort"}));
    assert_eq!(s.settled_status("ui-stop").await, "cancelled");
    let again = s
        .client
        .post(s.url("/api/chat/ui-stop/stop"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        json!({"stopped": false})
    );
}

#[tokio::test]
async fn a_retried_post_is_one_message_and_one_reply() {
    let provider = ScriptedProvider::new().then(Script::reply(["Hel", "lo"]));
    let s = serve(Arc::new(provider.clone()), ServerOptions::default()).await;
    let body = submit("ui-retry", json!([user("u-once", "Hi")]));
    let first = ui_chunks(s.post_chat(&body).await).await;
    let again = ui_chunks(s.post_chat(&body).await).await;
    assert_eq!(message_id(&again), message_id(&first));
    assert_eq!(text(&first), "Hello");
    assert_eq!(text(&again), "Hello");
    assert_eq!(provider.started(), 1);
    let history = s.history("ui-retry").await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["clientMessageId"], "u-once");
    // The history gives the user message back under the id its client gave it.
    let ui = s.ui_history("ui-retry").await;
    assert_eq!(ui[0]["id"], "u-once");
    assert_eq!(ui[1]["id"], message_id(&first).as_str());
}

// ---- resume, stop on disconnect ----

#[tokio::test]
async fn resume_is_204_without_a_live_reply_and_the_whole_reply_while_one_is_live() {
    let provider = ScriptedProvider::new().then(slow_reply(40, 10));
    let s = serve(Arc::new(provider), ServerOptions::default()).await;
    assert_eq!(s.get("/api/chat/nothing-here/stream").await.status(), 204);

    let resp = s
        .post_chat(&submit("ui-resume", json!([user("u1", "go")])))
        .await;
    let seen = first_deltas(resp, 5).await; // then the response is dropped: the client stopped
    let resumed = ui_chunks(s.get("/api/chat/ui-resume/stream").await).await;
    assert_eq!(message_id(&resumed), message_id(&seen), "the same message");
    assert_eq!(
        text(&resumed),
        words(40),
        "from the first chunk, each token once"
    );
    assert_eq!(resumed.last().unwrap()["type"], "finish");
    // Closing the response did not stop the reply.
    assert_eq!(s.settled_status("ui-resume").await, "complete");
    assert_eq!(s.get("/api/chat/ui-resume/stream").await.status(), 204);
}

#[tokio::test]
async fn with_cancel_on_disconnect_a_closed_response_stops_its_reply() {
    let provider = ScriptedProvider::new().then(slow_reply(200, 10));
    let s = serve(
        Arc::new(provider),
        ServerOptions::default().with_cancel_on_disconnect(true),
    )
    .await;
    let resp = s
        .post_chat(&submit("ui-cancel", json!([user("u1", "go")])))
        .await;
    first_deltas(resp, 3).await;
    assert_eq!(s.settled_status("ui-cancel").await, "cancelled");
}

// ---- the shape of POST /api/chat ----

#[tokio::test]
async fn post_api_chat_is_told_apart_by_its_body() {
    let provider = ScriptedProvider::new().repeat(Script::reply(["ok"]));
    let s = serve(Arc::new(provider), ServerOptions::default()).await;
    // The stateless body answers as it always did.
    let stateless = sse_data(s.chat("hi").await).await;
    assert_eq!(stateless, [r#"{"content":"ok"}"#, r#"{"done":true}"#]);
    // A useChat body, with the fields an app adds, gets the UI message stream.
    let mut body = submit("shape-1", json!([user("u1", "hi")]));
    body["model"] = json!("anything");
    body["extra"] = json!({"app": true});
    assert_eq!(text(&ui_chunks(s.post_chat(&body).await).await), "ok");
    // The newest message alone, as a transport that sends only that does.
    let alone = json!({"id": "shape-2", "message": user("u1", "hi"), "trigger": "submit-message"});
    assert_eq!(text(&ui_chunks(s.post_chat(&alone).await).await), "ok");

    let cases = [
        // Neither shape.
        (json!({"prompt": "hi"}), (422, "invalid_body")),
        (
            json!({"messages": [{"role": "user"}]}),
            (422, "invalid_body"),
        ),
        (json!([1, 2]), (422, "invalid_body")),
        // A useChat body that is wrong.
        (
            json!({"id": "c", "messages": [{"role": "user", "content": "hi"}]}),
            (422, "invalid_body"),
        ),
        (
            json!({"id": "c", "messages": [user("u1", "hi")], "trigger": "resume-stream"}),
            (422, "invalid_body"),
        ),
        (
            json!({"messages": [user("u1", "hi")], "trigger": "submit-message"}),
            (422, "invalid_body"),
        ),
        (
            json!({"id": "c", "messages": [user("u1", "hi")], "message": user("u2", "hi")}),
            (422, "invalid_body"),
        ),
        (
            submit("not a chat id!", json!([user("u1", "hi")])),
            (400, "invalid_chat_id"),
        ),
        (
            submit(
                "c",
                json!([{"id": "s", "role": "system", "parts": [{"type": "text", "text": "x"}]}]),
            ),
            (422, "no_user_message"),
        ),
        (
            submit("c", json!([user("u1", "  ")])),
            (400, "empty_content"),
        ),
        (
            submit("c", json!([user(&"k".repeat(129), "hi")])),
            (400, "invalid_client_message_id"),
        ),
        (
            submit(
                "c",
                json!([{"id": "u1", "role": "user", "parts": [
                    {"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,AA=="},
                    {"type": "text", "text": "what is this?"},
                ]}]),
            ),
            (422, "unsupported_part"),
        ),
        (
            json!({"id": "shape-1", "messages": [user("u1", "edited")],
                   "trigger": "submit-message", "messageId": "u1"}),
            (422, "unsupported_edit"),
        ),
    ];
    for (body, expected) in cases {
        let (status, code) = error_of(s.post_chat(&body).await).await;
        assert_eq!((status, code.as_str()), expected, "{body}");
    }
}

// ---- history: imported, given back, regenerated ----

#[tokio::test]
async fn history_of_a_chat_begun_elsewhere_is_imported_once_in_order() {
    let provider = ScriptedProvider::new().repeat(Script::reply(["fine"]));
    let s = serve(Arc::new(provider.clone()), ServerOptions::default()).await;
    assert_eq!(s.ui_history("ui-import").await, Vec::<Value>::new());
    let earlier = json!([
        {"id": "sys", "role": "system", "parts": [{"type": "text", "text": "Be brief."}]},
        user("u1", "Weather?"),
        {"id": "a1", "role": "assistant", "parts": [
            {"type": "step-start"},
            {"type": "reasoning", "text": "Look it up.", "state": "done"},
            {"type": "text", "text": "Checking.", "state": "done"},
            {"type": "tool-get_weather", "toolCallId": "call_1", "state": "output-available",
             "input": {"city": "Paris"}, "output": {"temperature": 21}},
        ]},
    ]);
    let mut messages = earlier.as_array().unwrap().clone();
    messages.push(user("u2", "Thanks"));
    ui_chunks(s.post_chat(&submit("ui-import", json!(messages))).await).await;

    let stored = s.settled_history("ui-import").await;
    let roles: Vec<&str> = stored.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        ["system", "user", "assistant", "tool", "user", "assistant"]
    );
    assert_eq!(stored[2]["reasoning"], "Look it up.");
    assert_eq!(
        stored[2]["toolCalls"][0]["arguments"],
        r#"{"city":"Paris"}"#
    );
    assert_eq!(stored[3]["toolCallId"], "call_1");
    assert_eq!(stored[3]["content"], r#"{"temperature":21}"#);
    // The model saw the imported history.
    let request = &provider.requests()[0];
    assert_eq!(request.messages.len(), 5);
    assert_eq!(request.messages[0].content, "Be brief.");

    // Given back as UIMessages, the tool result as the call's output.
    let ui = s.ui_history("ui-import").await;
    assert_eq!(ui.len(), 5);
    assert_eq!(ui[1]["id"], "u1");
    assert_eq!(
        ui[2]["parts"],
        json!([
            {"type": "step-start"},
            {"type": "reasoning", "text": "Look it up.", "state": "done"},
            {"type": "text", "text": "Checking.", "state": "done"},
            {"type": "tool-get_weather", "toolCallId": "call_1", "state": "output-available",
             "input": {"city": "Paris"}, "output": {"temperature": 21}},
        ])
    );
    assert_eq!(ui[2]["metadata"], json!({"status": "complete"}));
    assert_eq!(ui[4]["metadata"]["status"], "complete");

    // The next request carries the same history: it is not imported again.
    messages.push(ui[4].clone());
    messages.push(user("u3", "Bye"));
    ui_chunks(s.post_chat(&submit("ui-import", json!(messages))).await).await;
    assert_eq!(s.settled_history("ui-import").await.len(), 8);
}

#[tokio::test]
async fn regenerate_replaces_the_last_reply() {
    let provider = ScriptedProvider::new()
        .then(Script::reply(["first"]))
        .then(Script::reply(["second"]))
        .then(Script::reply(["third"]));
    let s = serve(Arc::new(provider), ServerOptions::default()).await;
    let first = ui_chunks(
        s.post_chat(&submit("ui-regen", json!([user("u1", "Hi")])))
            .await,
    )
    .await;
    let regenerate = json!({
        "id": "ui-regen", "messages": [user("u1", "Hi")],
        "trigger": "regenerate-message", "messageId": message_id(&first),
    });
    let second = ui_chunks(s.post_chat(&regenerate).await).await;
    assert_ne!(message_id(&second), message_id(&first));
    assert_eq!(text(&second), "second");
    let ui = s.ui_history("ui-regen").await;
    assert_eq!(ui.len(), 2, "the replaced reply is not shown: {ui:?}");
    assert_eq!(ui[1]["id"], message_id(&second).as_str());

    // Only the last user message can be answered again.
    ui_chunks(
        s.post_chat(&submit(
            "ui-regen",
            json!([user("u1", "Hi"), ui[1].clone(), user("u2", "More")]),
        ))
        .await,
    )
    .await;
    let (status, code) = error_of(s.post_chat(&regenerate).await).await;
    assert_eq!((status, code.as_str()), (409, "not_last_message"));
}

// ---- several instances ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_posted_to_a_resumes_and_stops_through_b() {
    crate::instances::isolated(
        "a_reply_posted_to_a_resumes_and_stops_through_b",
        |env| async move {
            let provider: DynLlmProvider =
                Arc::new(ScriptedProvider::new().repeat(slow_reply(40, 10)));
            let a = env.instance(provider.clone()).await;
            let b = env.instance(provider).await;
            let resp = a
                .post_chat(&submit("multi-1", json!([user("u1", "go")])))
                .await;
            let seen = first_deltas(resp, 5).await;
            let resumed = ui_chunks(b.get("/api/chat/multi-1/stream").await).await;
            assert_eq!(message_id(&resumed), message_id(&seen));
            assert_eq!(text(&resumed), words(40));
            assert_eq!(b.settled_status("multi-1").await, "complete");
            assert_eq!(
                b.ui_history("multi-1").await[1]["id"],
                message_id(&seen).as_str()
            );

            let resp = a
                .post_chat(&submit("multi-2", json!([user("u1", "go")])))
                .await;
            let reading = tokio::spawn(ui_chunks(resp));
            tokio::time::sleep(Duration::from_millis(100)).await;
            let stopped = b
                .client
                .post(b.url("/api/chat/multi-2/stop"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                stopped.json::<Value>().await.unwrap(),
                json!({"stopped": true})
            );
            assert_eq!(reading.await.unwrap().last().unwrap()["type"], "abort");
            assert_eq!(a.settled_status("multi-2").await, "cancelled");
            assert_eq!(b.get("/api/chat/multi-2/stream").await.status(), 204);
        },
    )
    .await;
}

// ---- the AI SDK's own client ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ai_sdk_client_assembles_resumes_regenerates_and_stops() {
    const TEST: &str = "the_ai_sdk_client_assembles_resumes_regenerates_and_stops";
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    let node = std::process::Command::new("node").arg("--version").output();
    if node.is_err() {
        crate::common::skip(TEST, "`node` is not installed");
        return;
    }
    if !dir.join("node_modules/ai").exists() {
        crate::common::skip(
            TEST,
            "the `ai` package is not installed: run `npm ci` in tests/js",
        );
        return;
    }
    let weather = ScriptedProvider::new()
        .repeat(weather("The user asks about the weather.", "Let me check."));
    let long = ScriptedProvider::new().repeat(slow_reply(60, 20));
    let jokes = ScriptedProvider::new()
        .then(Script::reply(["first ", "joke"]))
        .then(Script::reply(["second ", "joke"]));
    let stop = ScriptedProvider::new().repeat(slow_reply(200, 20));
    let provider = ByPrompt(vec![
        ("weather", weather),
        ("long story", long),
        ("joke", jokes),
        ("stop me", stop),
    ]);
    let s = serve(Arc::new(provider), ServerOptions::default()).await;
    let run = tokio::process::Command::new("node")
        .arg("--test-reporter=spec")
        .arg("ai-sdk.test.mjs")
        .arg(&s.base)
        .current_dir(&dir)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the Node test finished within two minutes")
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(output.status.success(), "the Node test failed:\n{report}");
    assert!(report.contains("pass 5"), "{report}");
}

/// A memory store whose history reads take a while, so that two requests both read an empty
/// chat before either writes to it.
#[derive(Debug, Clone, Default)]
struct SlowReads(chatstream::store::MemoryStore);

#[async_trait::async_trait]
impl chatstream::MessageStore for SlowReads {
    fn backend(&self) -> &'static str {
        "slow-reads"
    }
    async fn create_chat(
        &self,
        owner: &chatstream::UserId,
        id: Option<chatstream::ChatId>,
        title: Option<String>,
    ) -> chatstream::Result<chatstream::Chat> {
        self.0.create_chat(owner, id, title).await
    }
    async fn get_chat(
        &self,
        chat: &chatstream::ChatKey,
    ) -> chatstream::Result<Option<chatstream::Chat>> {
        self.0.get_chat(chat).await
    }
    async fn list_chats(
        &self,
        owner: &chatstream::UserId,
        page: chatstream::store::ChatPage,
    ) -> chatstream::Result<Vec<chatstream::Chat>> {
        self.0.list_chats(owner, page).await
    }
    async fn rename_chat(
        &self,
        chat: &chatstream::ChatKey,
        title: Option<String>,
    ) -> chatstream::Result<chatstream::Chat> {
        self.0.rename_chat(chat, title).await
    }
    async fn delete_chat(&self, chat: &chatstream::ChatKey) -> chatstream::Result<bool> {
        self.0.delete_chat(chat).await
    }
    async fn append(&self, message: &chatstream::Message) -> chatstream::Result<()> {
        self.0.append(message).await
    }
    async fn append_idempotent(
        &self,
        message: &chatstream::Message,
    ) -> chatstream::Result<chatstream::store::Appended> {
        self.0.append_idempotent(message).await
    }
    async fn update(&self, message: &chatstream::Message) -> chatstream::Result<()> {
        self.0.update(message).await
    }
    async fn get_message(
        &self,
        owner: &chatstream::UserId,
        id: &chatstream::MessageId,
    ) -> chatstream::Result<Option<chatstream::Message>> {
        self.0.get_message(owner, id).await
    }
    async fn history(
        &self,
        chat: &chatstream::ChatKey,
        page: chatstream::store::HistoryPage,
    ) -> chatstream::Result<Vec<chatstream::Message>> {
        let read = self.0.history(chat, page).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        read
    }
    async fn recover_streaming(
        &self,
        updated_before: Option<chrono::DateTime<chrono::Utc>>,
    ) -> chatstream::Result<u64> {
        self.0.recover_streaming(updated_before).await
    }
    async fn streaming_replies(&self) -> chatstream::Result<Vec<chatstream::Message>> {
        self.0.streaming_replies().await
    }
}

#[tokio::test]
async fn two_first_requests_racing_import_the_history_once() {
    let provider = ScriptedProvider::new().repeat(Script::reply(["fine"]));
    let s = serve_on(
        Arc::new(provider.clone()),
        Arc::new(SlowReads::default()),
        ServerOptions::default(),
    )
    .await;
    let messages = json!([
        {"id": "sys", "role": "system", "parts": [{"type": "text", "text": "Be brief."}]},
        user("u1", "Weather?"),
        {"id": "a1", "role": "assistant", "parts": [
            {"type": "text", "text": "Checking.", "state": "done"},
            {"type": "tool-get_weather", "toolCallId": "call_1", "state": "output-available",
             "input": {"city": "Paris"}, "output": {"temperature": 21}},
        ]},
        user("u2", "Thanks"),
    ]);
    let body = submit("ui-race", messages);
    let (a, b) = tokio::join!(s.post_chat(&body), s.post_chat(&body));
    let (a, b) = (a.status().as_u16(), b.status().as_u16());
    // The second follows the reply the first started (same key) or finds the chat busy; neither
    // adds a message twice.
    assert!(a == 200 || b == 200, "{a} {b}");
    let stored = s.settled_history("ui-race").await;
    let roles: Vec<&str> = stored.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        ["system", "user", "assistant", "tool", "user", "assistant"]
    );
    assert_eq!(provider.started(), 1, "one reply to the one message sent");
}
