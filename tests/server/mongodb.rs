//! The server on MongoDB (`CHATSTREAM_TEST_MONGODB_URL`): send and stream, history, idempotent
//! send, terminate, restart and kill -9, each in a database of its own.

use std::{sync::Arc, time::Duration};

use chatstream::provider::ScriptedProvider;
use chatstream::{
    ChatRequest, DynLlmProvider,
    provider::{DemoProvider, OpenAiProvider},
};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::{
    common::with_mongodb,
    restart::{a_killed_server_leaves_its_reply_interrupted, a_restart_keeps_history},
    support::*,
};

async fn serve_mongodb(provider: DynLlmProvider, url: &str) -> Server {
    let store = chatstream::store::open(url).await.unwrap();
    assert_eq!(store.backend(), "mongodb");
    serve_on(provider, store, ServerOptions::default()).await
}

#[tokio::test]
async fn a_message_streams_a_reply_that_lands_in_history() {
    with_mongodb("mongodb::a_message_streams_a_reply", |url| async move {
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
    with_mongodb("mongodb::a_repeated_send_is_idempotent", |url| async move {
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
    with_mongodb(
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
    with_mongodb("mongodb::a_restart_keeps_history", |url| async move {
        a_restart_keeps_history(&url).await;
    })
    .await;
}

#[tokio::test]
async fn a_killed_server_leaves_the_reply_interrupted_with_its_checkpoint() {
    with_mongodb("mongodb::a_killed_server", |url| async move {
        a_killed_server_leaves_its_reply_interrupted(&url).await;
    })
    .await;
}
