//! The HTTP contract with `CHATSTREAM_PROVIDER=openai-responses`: the router over the standard
//! provider stack around an `OpenAiResponsesProvider`, against a scripted Responses upstream.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chatstream::provider::{self, OpenAiResponsesProvider};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::support::*;

/// What the upstream does with one request.
enum Reply {
    /// A complete response of these text pieces.
    Text(Vec<&'static str>),
    /// These text pieces, then the body breaks off.
    Break(Vec<&'static str>),
    /// A thousand text pieces, one every 20 ms; reports how many were sent once the client is
    /// gone.
    Slow(oneshot::Sender<usize>),
    /// An HTTP error with a `Retry-After`.
    RateLimited(&'static str),
}

/// A Responses upstream: plays its replies in order, records what it was asked and when.
#[derive(Clone)]
struct Upstream {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    requests: Arc<Mutex<Vec<(Instant, Value)>>>,
}

impl Upstream {
    fn requests(&self) -> Vec<(Instant, Value)> {
        self.requests.lock().unwrap().clone()
    }
}

fn event(data: Value) -> Bytes {
    Bytes::from(format!(
        "event: {}\ndata: {data}\n\n",
        data["type"].as_str().unwrap()
    ))
}

fn text_delta(piece: &str) -> Bytes {
    event(
        json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                 "content_index": 0, "delta": piece, "logprobs": []}),
    )
}

fn created() -> Bytes {
    event(
        json!({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress",
                 "output": [], "usage": null}}),
    )
}

fn completed() -> Bytes {
    event(
        json!({"type": "response.completed", "response": {"id": "resp_1",
                 "status": "completed", "usage": {"input_tokens": 11, "output_tokens": 7,
                 "total_tokens": 18}}}),
    )
}

/// Counts the events sent, and reports the count when the body is dropped (the client left).
struct Sent {
    count: usize,
    report: Option<oneshot::Sender<usize>>,
}

impl Drop for Sent {
    fn drop(&mut self) {
        if let Some(report) = self.report.take() {
            let _ = report.send(self.count);
        }
    }
}

fn sse(stream: impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static) -> Response {
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn respond(State(upstream): State<Upstream>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap();
    upstream
        .requests
        .lock()
        .unwrap()
        .push((Instant::now(), request));
    let reply = upstream.replies.lock().unwrap().pop_front();
    match reply.expect("a reply for every request") {
        Reply::Text(pieces) => {
            let events = std::iter::once(created())
                .chain(pieces.into_iter().map(text_delta))
                .chain([completed()]);
            sse(futures::stream::iter(events.map(Ok)))
        }
        Reply::Break(pieces) => {
            let events = std::iter::once(created()).chain(pieces.into_iter().map(text_delta));
            let broken = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut");
            // Paced, so that what came before the break reaches the client before it.
            sse(
                futures::stream::iter(events.map(Ok).chain(std::iter::once(Err(broken)))).then(
                    |item| async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        item
                    },
                ),
            )
        }
        Reply::Slow(report) => {
            let sent = Sent {
                count: 0,
                report: Some(report),
            };
            sse(futures::stream::unfold(sent, |mut sent| async move {
                if sent.count == 1000 {
                    return None;
                }
                if sent.count > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let piece = text_delta(&format!("t{} ", sent.count));
                sent.count += 1;
                Some((Ok(piece), sent))
            }))
        }
        Reply::RateLimited(retry_after) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after)],
            axum::Json(
                json!({"error": {"message": "Rate limit reached", "type": "requests",
                                        "param": null, "code": "rate_limit_exceeded"}}),
            ),
        )
            .into_response(),
    }
}

/// The server, on the standard stack around a Responses provider pointed at an upstream that
/// plays `replies`.
async fn serve_responses(replies: Vec<Reply>) -> (Server, Upstream) {
    let upstream = Upstream {
        replies: Arc::new(Mutex::new(replies.into())),
        requests: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/v1/responses", axum::routing::post(respond))
        .with_state(upstream.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let provider = OpenAiResponsesProvider::builder()
        .api_key("sk-test")
        .base_url(base)
        .model("gpt-test")
        .build()
        .unwrap();
    (
        serve(provider::resilient(provider), ServerOptions::default()).await,
        upstream,
    )
}

#[tokio::test]
async fn a_message_streams_a_reply_from_the_responses_api() {
    let (s, upstream) = serve_responses(vec![Reply::Text(vec!["Hel", "lo", " there"])]).await;
    assert_eq!(s.send("resp", "Hi", None).await.status(), 202);
    let events: Vec<Sse> = sse_events(s.stream("resp", None).await).collect().await;
    assert_eq!(events[0].event, "start");
    assert_eq!(text_of(&events), "Hello there");
    let done = events.last().unwrap();
    assert_eq!(done.event, "done");
    assert_eq!(done.data["status"], "complete");
    assert_eq!(done.data["finishReason"], "stop");
    assert_eq!(
        done.data["usage"],
        json!({"inputTokens": 11, "outputTokens": 7})
    );
    let history = s.settled_history("resp").await;
    assert_eq!(history[1]["content"], "Hello there");

    let requests = upstream.requests();
    assert_eq!(
        requests[0].1,
        json!({
            "model": "gpt-test",
            "stream": true,
            "store": false,
            "input": [{"type": "message", "role": "user", "content": "Hi"}],
        })
    );
}

#[tokio::test]
async fn terminate_closes_the_responses_upstream() {
    let (closed, seen_closed) = oneshot::channel();
    let (s, _upstream) = serve_responses(vec![Reply::Slow(closed)]).await;
    assert_eq!(s.send("stop-it", "go", None).await.status(), 202);
    let (mut seen, events) = s.read_deltas("stop-it", 3).await;
    assert_eq!(s.terminate("stop-it").await, json!({"terminated": true}));
    let sent = tokio::time::timeout(Duration::from_secs(10), seen_closed)
        .await
        .expect("the upstream saw the connection close")
        .unwrap();
    assert!(sent < 1000, "the upstream stopped after {sent} events");
    seen.extend(events.collect::<Vec<_>>().await);
    assert_eq!(seen.last().unwrap().data["status"], "cancelled");
    let history = s.settled_history("stop-it").await;
    assert_eq!(history[1]["status"], "cancelled");
    assert_eq!(history[1]["content"].as_str().unwrap(), text_of(&seen));
}

#[tokio::test]
async fn a_reply_broken_mid_stream_is_continued_without_repeating() {
    let (s, upstream) = serve_responses(vec![
        Reply::Break(vec!["The cat", " sat "]),
        Reply::Text(vec![" on", " the mat."]),
    ])
    .await;
    assert_eq!(s.send("broken", "Tell me", None).await.status(), 202);
    let events: Vec<Sse> = sse_events(s.stream("broken", None).await).collect().await;
    assert_eq!(text_of(&events), "The cat sat on the mat.");
    assert!(
        events
            .iter()
            .any(|e| e.event == "delta" && e.data["type"] == "retry"),
        "a retry notice"
    );
    assert_eq!(events.last().unwrap().data["status"], "complete");
    assert_eq!(
        s.settled_history("broken").await[1]["content"],
        "The cat sat on the mat."
    );
    // The second request continues the partial reply.
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].1["input"],
        json!([
            {"type": "message", "role": "user", "content": "Tell me"},
            {"type": "message", "role": "assistant", "content": "The cat sat"},
        ])
    );
}

#[tokio::test]
async fn a_rate_limited_request_waits_for_retry_after_then_streams() {
    let (s, upstream) = serve_responses(vec![
        Reply::RateLimited("1"),
        Reply::Text(vec!["Made", " it"]),
    ])
    .await;
    assert_eq!(s.send("limited", "Hi", None).await.status(), 202);
    let events: Vec<Sse> = sse_events(s.stream("limited", None).await).collect().await;
    let retry = events
        .iter()
        .find(|e| e.event == "delta" && e.data["type"] == "retry")
        .expect("a retry notice");
    assert_eq!(retry.data["attempt"], 2);
    assert!(
        retry.data["reason"]
            .as_str()
            .unwrap()
            .contains("Rate limit reached"),
        "{}",
        retry.data
    );
    assert_eq!(text_of(&events), "Made it");
    assert_eq!(events.last().unwrap().data["status"], "complete");
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests[1].0 - requests[0].0 >= Duration::from_secs(1),
        "the retry waited for Retry-After"
    );
}
