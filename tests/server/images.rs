//! Images: `POST /api/messages` with attachments, stored and returned by history, sent upstream
//! in the provider's shape; `/v1/chat/completions` passing image parts through.

use std::sync::Arc;

use chatstream::provider::OpenAiProvider;
use serde_json::{Value, json};

use crate::support::*;

/// A 1x1 PNG, in base64.
pub const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

/// An OpenAI-compatible upstream answering every request with the `text` fixture.
async fn openai_upstream() -> (wiremock::MockServer, OpenAiProvider) {
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
        .model("gpt-4o")
        .build()
        .unwrap();
    (upstream, provider)
}

async fn upstream_bodies(upstream: &wiremock::MockServer) -> Vec<Value> {
    upstream
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test]
async fn attachments_are_stored_returned_and_sent_upstream() {
    let (upstream, provider) = openai_upstream().await;
    let s = serve(Arc::new(provider), ServerOptions::default()).await;
    let resp = s
        .client
        .post(s.url("/api/messages"))
        .json(&json!({
            "chatId": "pics",
            "content": "Which is the cat?",
            "attachments": [
                {"url": format!("data:image/png;base64,{PNG}")},
                {"url": "https://example.com/cat.jpg"},
            ],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let accepted: Value = resp.json().await.unwrap();
    let parts = json!([
        {"type": "text", "text": "Which is the cat?"},
        {"type": "imageBase64", "mediaType": "image/png", "data": PNG},
        {"type": "imageUrl", "url": "https://example.com/cat.jpg"},
    ]);
    assert_eq!(accepted["userMessage"]["parts"], parts);
    assert_eq!(accepted["userMessage"]["content"], "Which is the cat?");

    let history = s.settled_history("pics").await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["parts"], parts, "history returns the parts");
    assert_eq!(history[1]["status"], "complete");
    assert!(
        history[1].get("parts").is_none(),
        "a text reply keeps no parts"
    );
    assert_eq!(history[1]["generation"]["model"], "gpt-4o");

    let sent = upstream_bodies(&upstream).await;
    assert_eq!(
        sent[0]["messages"],
        json!([{"role": "user", "content": [
            {"type": "text", "text": "Which is the cat?"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}")}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ]}])
    );

    // The AI SDK's view of the chat shows the images as file parts.
    let ui: Value = s.get("/api/chat/pics/messages").await.json().await.unwrap();
    assert_eq!(
        ui[0]["parts"],
        json!([
            {"type": "text", "text": "Which is the cat?"},
            {"type": "file", "mediaType": "image/png", "url": format!("data:image/png;base64,{PNG}")},
            {"type": "file", "mediaType": "image/jpeg", "url": "https://example.com/cat.jpg"},
        ])
    );

    // An image alone is a message.
    let resp = s
        .client
        .post(s.url("/api/messages"))
        .json(&json!({
            "chatId": "pics",
            "content": "",
            "attachments": [{"url": format!("data:image/png;base64,{PNG}")}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let history = s.settled_history("pics").await;
    assert_eq!(history[2]["content"], "");
    assert_eq!(
        history[2]["parts"],
        json!([{"type": "imageBase64", "mediaType": "image/png", "data": PNG}])
    );
}

#[tokio::test]
async fn openai_compatible_passes_image_parts_through() {
    let (upstream, provider) = openai_upstream().await;
    let s = serve(Arc::new(provider), ServerOptions::default()).await;
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&json!({
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Describe "},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
                {"type": "text", "text": "and this."},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}")}},
            ]}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reply: Value = resp.json().await.unwrap();
    assert!(reply["choices"][0]["message"]["content"].is_string());
    assert_eq!(
        upstream_bodies(&upstream).await[0]["messages"],
        json!([{"role": "user", "content": [
            {"type": "text", "text": "Describe "},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            {"type": "text", "text": "and this."},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}")}},
        ]}])
    );

    // Text parts alone are one string, as before.
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        upstream_bodies(&upstream).await[1]["messages"],
        json!([{"role": "user", "content": "ab"}])
    );

    // A part of a type it cannot pass on, and a bad image, are refused, not dropped.
    for (part, status, code) in [
        (
            json!({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}),
            422,
            "unsupported_content",
        ),
        (
            json!({"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="}}),
            415,
            "unsupported_media_type",
        ),
    ] {
        let resp = s
            .client
            .post(s.url("/v1/chat/completions"))
            .json(&json!({"messages": [{"role": "user", "content": [part]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(resp).await, (status, code.into()));
    }
    assert_eq!(upstream_bodies(&upstream).await.len(), 2);
}
