//! The HTTP providers and their parsers: every recorded fixture over HTTP and through `decode`
//! split every way, HTTP errors, broken bodies and cancellation closing the connection, and the
//! exact request bodies the request options make for each API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::PathBuf, time::Duration};

use bytes::Bytes;
use chatstream::{
    Accumulator, ChatRequest, ContentPart, Delta, DeltaStream, Error, LlmProvider, LlmProviderExt,
    RequestMessage, Role, ToolCall, ToolSpec,
    provider::{
        AnthropicProvider, JsonSchema, OpenAiProvider, OpenAiResponsesProvider, ReasoningEffort,
        ResponseFormat, ThinkingBlock, TokenLimitField, ToolChoice, anthropic, openai,
        openai_responses,
    },
};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::oneshot,
};
use tokio_util::sync::CancellationToken;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{header, method, path, query_param},
};

// ---- fixtures and outcomes -----------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct Expected {
    text: String,
    #[serde(default)]
    reasoning: String,
    finish_reason: Option<String>,
    usage: Option<ExpectedUsage>,
    #[serde(default)]
    tool_calls: Vec<ExpectedCall>,
    error: Option<ExpectedError>,
    /// The signed and redacted thinking blocks, checked when given.
    #[serde(default)]
    thinking: Option<Vec<ThinkingBlock>>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
struct ExpectedUsage {
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
struct ExpectedCall {
    index: u32,
    id: String,
    name: String,
    arguments: String,
}

#[derive(Debug, Deserialize)]
struct ExpectedError {
    kind: String,
    retryable: bool,
    message_contains: Option<String>,
}

struct Fixture {
    name: String,
    body: Vec<u8>,
    expected: Expected,
}

fn fixtures(dialect: &str) -> Vec<Fixture> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fixtures")
        .join(dialect);
    let mut out: Vec<Fixture> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sse"))
        .map(|p| {
            let expected = p.with_extension("expected.json");
            Fixture {
                name: format!("{dialect}/{}", p.file_stem().unwrap().to_string_lossy()),
                body: std::fs::read(&p).unwrap(),
                expected: serde_json::from_slice(&std::fs::read(&expected).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", expected.display())),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(out.len() >= 4, "fixtures missing in {}", dir.display());
    out
}

/// What a stream produced: the folded reply and its terminal error.
struct Outcome {
    acc: Accumulator,
    error: Option<Error>,
}

/// Drains a stream, checking its contract: exactly one terminal outcome (a finish, possibly
/// followed by usage, or one error), and nothing after an error.
async fn drain(mut stream: DeltaStream) -> Outcome {
    let mut acc = Accumulator::new();
    let mut finished = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(delta) => {
                if finished {
                    assert!(
                        matches!(delta, Delta::Usage(_)),
                        "{delta:?} after the finish"
                    );
                }
                if matches!(delta, Delta::Finish { .. }) {
                    finished = true;
                }
                acc.push(&delta);
            }
            Err(error) => {
                assert!(!finished, "an error after the finish: {error}");
                assert!(stream.next().await.is_none(), "items after the error");
                return Outcome {
                    acc,
                    error: Some(error),
                };
            }
        }
    }
    assert!(
        finished,
        "the stream ended with neither a finish nor an error"
    );
    Outcome { acc, error: None }
}

fn check(name: &str, how: &str, outcome: &Outcome, expected: &Expected) {
    let ctx = format!("{name} ({how})");
    let acc = &outcome.acc;
    assert_eq!(acc.text(), expected.text, "{ctx}: text");
    assert_eq!(acc.reasoning(), expected.reasoning, "{ctx}: reasoning");
    assert_eq!(
        acc.finish_reason().map(|r| r.as_str()),
        expected.finish_reason.as_deref(),
        "{ctx}: finish reason"
    );
    assert_eq!(
        acc.usage().map(|u| ExpectedUsage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens
        }),
        expected.usage,
        "{ctx}: usage"
    );
    let calls: Vec<ExpectedCall> = acc
        .tool_calls()
        .iter()
        .map(|c| ExpectedCall {
            index: c.index,
            id: c.id.clone(),
            name: c.name.clone(),
            arguments: c.arguments.clone(),
        })
        .collect();
    assert_eq!(calls, expected.tool_calls, "{ctx}: tool calls");
    if let Some(thinking) = &expected.thinking {
        assert_eq!(&acc.thinking_blocks(), thinking, "{ctx}: thinking blocks");
    }
    match (&outcome.error, &expected.error) {
        (None, None) => {}
        (Some(error), Some(want)) => {
            assert_eq!(error.code(), want.kind, "{ctx}: error kind of {error}");
            assert_eq!(
                error.is_retryable(),
                want.retryable,
                "{ctx}: retryable {error}"
            );
            if let Some(part) = &want.message_contains {
                assert!(
                    error.to_string().contains(part.as_str()),
                    "{ctx}: {error} lacks {part:?}"
                );
            }
        }
        (got, want) => panic!("{ctx}: error {got:?}, expected {want:?}"),
    }
}

fn pieces_stream(
    pieces: Vec<Vec<u8>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures::stream::iter(pieces.into_iter().map(|p| Ok(Bytes::from(p))))
}

fn decode_pieces(dialect: &str, pieces: Vec<Vec<u8>>) -> Outcome {
    let stream = match dialect {
        "openai" => openai::decode(pieces_stream(pieces)),
        "openai-responses" => openai_responses::decode(pieces_stream(pieces)),
        _ => anthropic::decode(pieces_stream(pieces)),
    };
    futures::executor::block_on(drain(stream))
}

fn lines(body: &[u8]) -> Vec<Vec<u8>> {
    body.split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn check_decode_every_way(dialect: &str) {
    for f in fixtures(dialect) {
        let body = &f.body;
        let whole = decode_pieces(dialect, vec![body.clone()]);
        check(&f.name, "whole", &whole, &f.expected);
        check(
            &f.name,
            "line by line",
            &decode_pieces(dialect, lines(body)),
            &f.expected,
        );
        check(
            &f.name,
            "1-byte pieces",
            &decode_pieces(dialect, body.chunks(1).map(<[u8]>::to_vec).collect()),
            &f.expected,
        );
        for at in 0..=body.len() {
            let outcome = decode_pieces(dialect, vec![body[..at].to_vec(), body[at..].to_vec()]);
            check(&f.name, &format!("split at {at}"), &outcome, &f.expected);
        }
    }
}

#[test]
fn openai_fixtures_decode_split_every_way() {
    check_decode_every_way("openai");
}

#[test]
fn anthropic_fixtures_decode_split_every_way() {
    check_decode_every_way("anthropic");
}

#[test]
fn openai_responses_fixtures_decode_split_every_way() {
    check_decode_every_way("openai-responses");
}

// ---- fixtures over HTTP --------------------------------------------------------------------

fn conversation() -> ChatRequest {
    ChatRequest::new(vec![
        RequestMessage::new(Role::System, "Be brief."),
        RequestMessage::new(Role::User, "Why stream replies?"),
    ])
}

#[tokio::test]
async fn openai_fixtures_over_http() {
    for f in fixtures("openai") {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .and(header("authorization", "Bearer sk-test"))
            .and(header("x-extra", "on"))
            .respond_with(
                ResponseTemplate::new(200).set_body_raw(f.body.clone(), "text/event-stream"),
            )
            .expect(1)
            .mount(&server)
            .await;
        let provider = OpenAiProvider::builder()
            .api_key("sk-test")
            .base_url(format!("{}/v1/", server.uri()))
            .model("gpt-test")
            .header("x-extra", "on")
            .build()
            .unwrap();
        let outcome = drain(provider.stream(conversation().with_max_tokens(64))).await;
        check(&f.name, "http", &outcome, &f.expected);

        let requests = server.received_requests().await.unwrap();
        assert_eq!(requests.len(), 1, "{}", f.name);
        let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "gpt-test",
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_tokens": 64,
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Why stream replies?"},
                ],
            }),
            "{}",
            f.name
        );
        assert_eq!(
            requests[0].headers.get("accept").unwrap(),
            "text/event-stream"
        );
    }
}

#[tokio::test]
async fn anthropic_fixtures_over_http() {
    for f in fixtures("anthropic") {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/messages"))
            .and(header("x-api-key", "sk-ant-test"))
            .and(header("anthropic-version", "2023-06-01"))
            .and(header("anthropic-beta", "x"))
            .respond_with(
                ResponseTemplate::new(200).set_body_raw(f.body.clone(), "text/event-stream"),
            )
            .expect(1)
            .mount(&server)
            .await;
        let provider = AnthropicProvider::builder()
            .api_key("sk-ant-test")
            .base_url(server.uri())
            .header("anthropic-beta", "x")
            .build()
            .unwrap();
        let request = conversation()
            .with_model("claude-test")
            .with_temperature(0.25);
        let outcome = drain(provider.stream(request)).await;
        check(&f.name, "http", &outcome, &f.expected);

        let requests = server.received_requests().await.unwrap();
        assert_eq!(requests.len(), 1, "{}", f.name);
        assert!(requests[0].headers.get("authorization").is_none());
        let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "claude-test",
                "max_tokens": 4096,
                "stream": true,
                "temperature": 0.25,
                "system": "Be brief.",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Why stream replies?"}]},
                ],
            }),
            "{}",
            f.name
        );
    }
}

#[tokio::test]
async fn azure_style_base_url_keeps_its_query_and_needs_no_bearer_key() {
    let server = MockServer::start().await;
    let body = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixtures/openai/text.sse"),
    )
    .unwrap();
    Mock::given(method("POST"))
        .and(path("/openai/deployments/gpt/chat/completions"))
        .and(query_param("api-version", "2024-10-21"))
        .and(header("api-key", "az-key"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "text/event-stream"))
        .expect(1)
        .mount(&server)
        .await;
    let provider = OpenAiProvider::builder()
        .base_url(format!(
            "{}/openai/deployments/gpt?api-version=2024-10-21",
            server.uri()
        ))
        .header("api-key", "az-key")
        .build()
        .unwrap();
    assert!(!format!("{provider:?}").contains("az-key"));
    let outcome = drain(provider.stream(ChatRequest::user("hi"))).await;
    assert!(outcome.error.is_none());
    assert!(outcome.acc.text().starts_with("Streaming lets"));
    let requests = server.received_requests().await.unwrap();
    assert!(requests[0].headers.get("authorization").is_none());
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body["model"], openai::DEFAULT_MODEL);
}

#[tokio::test]
async fn the_request_starts_on_first_poll() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let provider = OpenAiProvider::builder()
        .base_url(server.uri())
        .build()
        .unwrap();
    let mut stream = provider.stream(ChatRequest::user("hi"));
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(server.received_requests().await.unwrap().is_empty());
    assert!(stream.next().await.unwrap().is_err());
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn openai_responses_fixtures_over_http() {
    for f in fixtures("openai-responses") {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/responses"))
            .and(header("authorization", "Bearer sk-test"))
            .respond_with(
                ResponseTemplate::new(200).set_body_raw(f.body.clone(), "text/event-stream"),
            )
            .expect(1)
            .mount(&server)
            .await;
        let provider = OpenAiResponsesProvider::builder()
            .api_key("sk-test")
            .base_url(format!("{}/v1", server.uri()))
            .model("gpt-test")
            .build()
            .unwrap();
        let outcome = drain(provider.stream(conversation().with_max_tokens(64))).await;
        check(&f.name, "http", &outcome, &f.expected);

        let body = only_body(&server).await;
        assert_eq!(
            body,
            json!({
                "model": "gpt-test",
                "stream": true,
                "store": false,
                "max_output_tokens": 64,
                "input": [
                    {"type": "message", "role": "system", "content": "Be brief."},
                    {"type": "message", "role": "user", "content": "Why stream replies?"},
                ],
            }),
            "{}",
            f.name
        );
    }
}

/// The one request `server` received, its body as JSON.
async fn only_body(server: &MockServer) -> serde_json::Value {
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    serde_json::from_slice(&requests[0].body).unwrap()
}

// ---- the request options on the wire ---------------------------------------------------------

/// A server answering every request with the `text` fixture of `dialect`.
async fn upstream_of(dialect: &str) -> MockServer {
    let body = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/fixtures")
            .join(dialect)
            .join("text.sse"),
    )
    .unwrap();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "text/event-stream"))
        .mount(&server)
        .await;
    server
}

/// The body `provider` sends for `request`, after checking the reply came through.
async fn sent_body(
    server: &MockServer,
    provider: &dyn LlmProvider,
    request: ChatRequest,
) -> serde_json::Value {
    let outcome = drain(provider.stream(request)).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert!(!outcome.acc.text().is_empty());
    only_body(server).await
}

fn weather_tool() -> ToolSpec {
    ToolSpec::new(
        "get_weather",
        "The weather in a city",
        json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    )
}

fn city_schema() -> JsonSchema {
    JsonSchema::new(
        "city",
        json!({"type": "object", "properties": {"name": {"type": "string"}},
               "required": ["name"], "additionalProperties": false}),
    )
    .with_strict(true)
}

// ---- image parts on the wire -------------------------------------------------------------------

/// A 1x1 PNG, in base64.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

/// A question with an image by URL and an inline one, after a text-only turn.
fn with_images() -> ChatRequest {
    ChatRequest::new(vec![
        RequestMessage::new(Role::User, "Hi"),
        RequestMessage::new(Role::Assistant, "Hello!"),
        RequestMessage::with_parts(
            Role::User,
            [
                ContentPart::text("Which is the cat?"),
                ContentPart::image_url("https://example.com/a.jpg"),
                ContentPart::image_base64("image/png", PNG),
            ],
        ),
    ])
}

#[tokio::test]
async fn openai_image_parts_by_url_and_inline() {
    let server = upstream_of("openai").await;
    let provider = OpenAiProvider::builder()
        .base_url(server.uri())
        .model("gpt-4o")
        .build()
        .unwrap();
    assert_eq!(
        sent_body(&server, &provider, with_images()).await,
        json!({
            "model": "gpt-4o",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": [
                    {"type": "text", "text": "Which is the cat?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                    {"type": "image_url",
                     "image_url": {"url": format!("data:image/png;base64,{PNG}")}},
                ]},
            ],
        })
    );
}

#[tokio::test]
async fn anthropic_image_parts_by_url_and_inline() {
    let server = upstream_of("anthropic").await;
    let provider = AnthropicProvider::builder()
        .base_url(server.uri())
        .build()
        .unwrap();
    assert_eq!(
        sent_body(&server, &provider, with_images()).await,
        json!({
            "model": anthropic::DEFAULT_MODEL,
            "max_tokens": anthropic::DEFAULT_MAX_TOKENS,
            "stream": true,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Which is the cat?"},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                    {"type": "image", "source":
                        {"type": "base64", "media_type": "image/png", "data": PNG}},
                ]},
            ],
        })
    );
}

#[tokio::test]
async fn openai_responses_image_parts_by_url_and_inline() {
    let server = upstream_of("openai-responses").await;
    let provider = OpenAiResponsesProvider::builder()
        .base_url(server.uri())
        .model("gpt-5-mini")
        .build()
        .unwrap();
    assert_eq!(
        sent_body(&server, &provider, with_images()).await,
        json!({
            "model": "gpt-5-mini",
            "stream": true,
            "store": false,
            "input": [
                {"type": "message", "role": "user", "content": "Hi"},
                {"type": "message", "role": "assistant", "content": "Hello!"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "Which is the cat?"},
                    {"type": "input_image", "image_url": "https://example.com/a.jpg"},
                    {"type": "input_image", "image_url": format!("data:image/png;base64,{PNG}")},
                ]},
            ],
        })
    );
}

#[tokio::test]
async fn openai_reasoning_models_get_max_completion_tokens_and_reasoning_effort() {
    let server = upstream_of("openai").await;
    let provider = OpenAiProvider::builder()
        .base_url(server.uri())
        .model("o4-mini")
        .token_limit_field(TokenLimitField::MaxCompletionTokens)
        .build()
        .unwrap();
    let request = ChatRequest::user("hi")
        .with_max_tokens(500)
        .with_reasoning_effort(ReasoningEffort::High);
    assert_eq!(
        sent_body(&server, &provider, request).await,
        json!({
            "model": "o4-mini",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 500,
            "reasoning_effort": "high",
        })
    );
}

#[tokio::test]
async fn openai_tools_tool_choice_response_format_and_extra_fields() {
    let server = upstream_of("openai").await;
    let provider = OpenAiProvider::builder()
        .base_url(server.uri())
        .build()
        .unwrap();
    let request = ChatRequest::user("Weather in Paris?")
        .with_tools([weather_tool()])
        .with_tool_choice(ToolChoice::tool("get_weather"))
        .with_response_format(city_schema())
        .with_extra("seed", 7)
        .with_extra("user", "u-1")
        // A field the provider writes is replaced; a null removes one.
        .with_extra("stream_options", serde_json::Value::Null)
        .with_extra("temperature", 0);
    assert_eq!(
        sent_body(&server, &provider, request.with_temperature(0.5)).await,
        json!({
            "model": openai::DEFAULT_MODEL,
            "stream": true,
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [{"type": "function", "function": {
                "name": "get_weather", "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "city", "strict": true,
                "schema": {"type": "object", "properties": {"name": {"type": "string"}},
                           "required": ["name"], "additionalProperties": false}}},
            "seed": 7,
            "user": "u-1",
            "temperature": 0,
        })
    );

    let server = upstream_of("openai").await;
    let provider = OpenAiProvider::builder()
        .base_url(server.uri())
        .build()
        .unwrap();
    let request = ChatRequest::user("JSON please")
        .with_tools([weather_tool()])
        .with_tool_choice(ToolChoice::Required)
        .with_response_format(ResponseFormat::JsonObject);
    let body = sent_body(&server, &provider, request).await;
    assert_eq!(body["tool_choice"], "required");
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
}

#[tokio::test]
async fn anthropic_thinking_on_with_signed_and_redacted_blocks_sent_back() {
    let server = upstream_of("anthropic").await;
    let provider = AnthropicProvider::builder()
        .base_url(server.uri())
        .build()
        .unwrap();
    let mut assistant = RequestMessage::new(Role::Assistant, "");
    assistant.thinking = vec![
        ThinkingBlock::Thinking {
            text: "The user wants the weather.".into(),
            signature: "ErUBCkYIBxgCIkB4".into(),
        },
        ThinkingBlock::Redacted {
            data: "EmwKAhgBEgy3va3p".into(),
        },
    ];
    assistant.tool_calls = vec![ToolCall {
        index: 0,
        id: "toolu_1".into(),
        name: "get_weather".into(),
        arguments: "{\"city\":\"Paris\"}".into(),
    }];
    let mut result = RequestMessage::new(Role::Tool, "18 °C");
    result.tool_call_id = Some("toolu_1".into());
    let request = ChatRequest::new(vec![
        RequestMessage::new(Role::User, "Weather in Paris?"),
        assistant,
        result,
    ])
    .with_tools([weather_tool()])
    .with_tool_choice(ToolChoice::Auto)
    .with_thinking_budget(2048)
    .with_extra("metadata", json!({"user_id": "u-1"}));
    assert_eq!(
        sent_body(&server, &provider, request).await,
        json!({
            "model": anthropic::DEFAULT_MODEL,
            "max_tokens": anthropic::DEFAULT_MAX_TOKENS + 2048,
            "stream": true,
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "The user wants the weather.",
                     "signature": "ErUBCkYIBxgCIkB4"},
                    {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3p"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                     "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 °C"}]},
            ],
            "tools": [{"name": "get_weather", "description": "The weather in a city",
                       "input_schema": {"type": "object",
                                        "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "auto"},
            "metadata": {"user_id": "u-1"},
        })
    );
}

#[tokio::test]
async fn anthropic_tool_choice_and_response_format() {
    let server = upstream_of("anthropic").await;
    let provider = AnthropicProvider::builder()
        .base_url(server.uri())
        .build()
        .unwrap();
    let request = ChatRequest::user("Where?")
        .with_max_tokens(100)
        .with_tools([weather_tool()])
        .with_tool_choice(ToolChoice::Required)
        .with_response_format(city_schema());
    let body = sent_body(&server, &provider, request).await;
    assert_eq!(body["max_tokens"], 100);
    assert_eq!(body["tool_choice"], json!({"type": "any"}));
    assert_eq!(
        body["output_config"],
        json!({"format": {"type": "json_schema", "schema": city_schema().schema}})
    );

    // Anthropic has no free JSON mode: the request fails before it is sent.
    let error = only_error(
        provider.stream(ChatRequest::user("x").with_response_format(ResponseFormat::JsonObject)),
    )
    .await;
    assert!(matches!(error, Error::Invalid { .. }), "{error:?}");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn openai_responses_options_on_the_wire() {
    let server = upstream_of("openai-responses").await;
    let provider = OpenAiResponsesProvider::builder()
        .base_url(server.uri())
        .model("o4-mini")
        .store(true)
        .build()
        .unwrap();
    let mut assistant = RequestMessage::new(Role::Assistant, "Let me look.");
    assistant.tool_calls = vec![ToolCall {
        index: 0,
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: "{\"city\":\"Paris\"}".into(),
    }];
    let mut result = RequestMessage::new(Role::Tool, "18 °C");
    result.tool_call_id = Some("call_1".into());
    let request = ChatRequest::new(vec![
        RequestMessage::new(Role::System, "Be brief."),
        RequestMessage::new(Role::User, "Weather in Paris?"),
        assistant,
        result,
    ])
    .with_temperature(0.2)
    .with_tools([weather_tool()])
    .with_tool_choice(ToolChoice::Auto)
    .with_reasoning_effort(ReasoningEffort::Medium)
    .with_response_format(city_schema())
    .with_extra("include", json!(["reasoning.encrypted_content"]));
    assert_eq!(
        sent_body(&server, &provider, request).await,
        json!({
            "model": "o4-mini",
            "stream": true,
            "store": true,
            "temperature": 0.2,
            "input": [
                {"type": "message", "role": "system", "content": "Be brief."},
                {"type": "message", "role": "user", "content": "Weather in Paris?"},
                {"type": "message", "role": "assistant", "content": "Let me look."},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                 "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "18 °C"},
            ],
            "tools": [{"type": "function", "name": "get_weather",
                       "description": "The weather in a city", "strict": false,
                       "parameters": {"type": "object",
                                      "properties": {"city": {"type": "string"}}}}],
            "tool_choice": "auto",
            "reasoning": {"effort": "medium", "summary": "auto"},
            "text": {"format": {"type": "json_schema", "name": "city", "strict": true,
                                "schema": city_schema().schema}},
            "include": ["reasoning.encrypted_content"],
        })
    );

    // The API has no stop sequences: refused before anything is sent.
    let mut request = ChatRequest::user("x");
    request.stop = vec!["END".into()];
    let error = only_error(provider.stream(request)).await;
    assert!(matches!(error, Error::Invalid { .. }), "{error:?}");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn gemini_through_its_openai_compatible_endpoint() {
    let server = MockServer::start().await;
    let body = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixtures/openai/text.sse"),
    )
    .unwrap();
    Mock::given(method("POST"))
        .and(path("/v1beta/openai/chat/completions"))
        .and(header("authorization", "Bearer gemini-key"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "text/event-stream"))
        .expect(1)
        .mount(&server)
        .await;
    // What https://generativelanguage.googleapis.com/v1beta/openai/ becomes in a test.
    let provider = OpenAiProvider::builder()
        .name("gemini")
        .base_url(format!("{}/v1beta/openai/", server.uri()))
        .api_key("gemini-key")
        .model("gemini-2.5-flash")
        .build()
        .unwrap();
    let request = ChatRequest::user("hi").with_reasoning_effort(ReasoningEffort::Low);
    assert_eq!(
        sent_body(&server, &provider, request).await,
        json!({
            "model": "gemini-2.5-flash",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hi"}],
            "reasoning_effort": "low",
        })
    );
}

#[tokio::test]
async fn azure_openai_responses_with_api_key_and_api_version() {
    let server = upstream_of("openai-responses").await;
    let provider = OpenAiResponsesProvider::builder()
        .base_url(format!(
            "{}/openai?api-version=2025-04-01-preview",
            server.uri()
        ))
        .header("api-key", "az-key")
        .model("my-deployment")
        .build()
        .unwrap();
    assert_eq!(
        provider.url(),
        format!(
            "{}/openai/responses?api-version=2025-04-01-preview",
            server.uri()
        )
    );
    let body = sent_body(&server, &provider, ChatRequest::user("hi")).await;
    assert_eq!(body["model"], "my-deployment");
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests[0].url.path(), "/openai/responses");
    assert_eq!(
        requests[0].url.query(),
        Some("api-version=2025-04-01-preview")
    );
    assert_eq!(requests[0].headers.get("api-key").unwrap(), "az-key");
    assert!(requests[0].headers.get("authorization").is_none());
}

// ---- HTTP errors ---------------------------------------------------------------------------

async fn openai_answering(response: ResponseTemplate) -> (MockServer, OpenAiProvider) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(response)
        .mount(&server)
        .await;
    let provider = OpenAiProvider::builder()
        .api_key("k")
        .base_url(server.uri())
        .build()
        .unwrap();
    (server, provider)
}

async fn anthropic_answering(response: ResponseTemplate) -> (MockServer, AnthropicProvider) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(response)
        .mount(&server)
        .await;
    let provider = AnthropicProvider::builder()
        .api_key("k")
        .base_url(server.uri())
        .build()
        .unwrap();
    (server, provider)
}

async fn only_error(stream: DeltaStream) -> Error {
    let items: Vec<_> = stream.collect().await;
    assert_eq!(items.len(), 1, "{items:?}");
    items.into_iter().next().unwrap().unwrap_err()
}

fn upstream(error: &Error) -> (Option<u16>, Option<&str>, &str) {
    match error {
        Error::Upstream {
            status,
            kind,
            message,
            ..
        } => (*status, kind.as_deref(), message.as_str()),
        other => panic!("not an upstream error: {other:?}"),
    }
}

#[tokio::test]
async fn rate_limit_with_retry_after_is_retryable() {
    let (_server, provider) = openai_answering(
        ResponseTemplate::new(429)
            .insert_header("retry-after", "7")
            .set_body_json(
                json!({"error": {"message": "Rate limit reached", "type": "requests",
                "param": null, "code": "rate_limit_exceeded"}}),
            ),
    )
    .await;
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    assert_eq!(
        upstream(&error),
        (Some(429), Some("rate_limit_exceeded"), "Rate limit reached")
    );
    assert!(error.is_retryable());
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));

    let (_server, provider) =
        openai_answering(ResponseTemplate::new(429).insert_header("retry-after-ms", "1500")).await;
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    assert_eq!(error.retry_after(), Some(Duration::from_millis(1500)));
    assert!(error.is_retryable());
}

#[tokio::test]
async fn unauthorized_and_insufficient_quota_are_not_retryable() {
    let (_server, provider) = openai_answering(ResponseTemplate::new(401).set_body_json(
        json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
            "param": null, "code": "invalid_api_key"}}),
    ))
    .await;
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    assert_eq!(upstream(&error).0, Some(401));
    assert!(error.to_string().contains("Incorrect API key"));
    assert!(!error.is_retryable());

    for quota in [
        json!({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
            "param": null, "code": "insufficient_quota"}}),
        json!({"error": {"message": "You exceeded your current quota", "type": "requests",
            "code": "insufficient_quota"}}),
        json!({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
            "code": null}}),
    ] {
        let (_server, provider) = openai_answering(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(quota),
        )
        .await;
        let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
        assert_eq!(upstream(&error).1, Some("insufficient_quota"));
        assert!(!error.is_retryable(), "{error}");
    }

    let (_server, provider) = anthropic_answering(ResponseTemplate::new(401).set_body_json(
        json!({"type": "error", "error": {"type": "authentication_error",
            "message": "invalid x-api-key"}}),
    ))
    .await;
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    assert_eq!(
        upstream(&error),
        (Some(401), Some("authentication_error"), "invalid x-api-key")
    );
    assert!(!error.is_retryable());
}

/// A request longer than the model's window is refused with a 400 by each API, in its own words:
/// each is the context error, not retryable as it stands.
#[tokio::test]
async fn context_length_errors_are_classified_for_every_api() {
    let openai = json!({"error": {"message": "This model's maximum context length is 128000 \
        tokens. However, your messages resulted in 130012 tokens. Please reduce the length of \
        the messages.", "type": "invalid_request_error", "param": "messages",
        "code": "context_length_exceeded"}});
    let (_server, provider) =
        openai_answering(ResponseTemplate::new(400).set_body_json(openai)).await;
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    assert!(
        matches!(&error, Error::ContextLengthExceeded { status: Some(400), kind: Some(k), message, .. }
            if k == "context_length_exceeded" && message.contains("maximum context length")),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert_eq!(error.code(), "context_length_exceeded");

    let anthropic = json!({"type": "error", "error": {"type": "invalid_request_error",
        "message": "prompt is too long: 208310 tokens > 200000 maximum"}});
    let (_server, provider) =
        anthropic_answering(ResponseTemplate::new(400).set_body_json(anthropic)).await;
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    assert!(
        matches!(
            &error,
            Error::ContextLengthExceeded {
                status: Some(400),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("prompt is too long"), "{error}");

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "Your input exceeds the context window of this model. Please adjust \
                your input and try again.",
            "type": "invalid_request_error", "param": "input",
            "code": "context_length_exceeded"}})))
        .mount(&server)
        .await;
    let provider = OpenAiResponsesProvider::builder()
        .base_url(server.uri())
        .build()
        .unwrap();
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    assert!(error.is_context_length_exceeded(), "{error:?}");
    assert_eq!(error.status(), Some(400));

    // Anthropic's refusal as a stream event is the same error.
    let (_server, provider) = anthropic_answering(ResponseTemplate::new(200).set_body_raw(
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\
             \"message\":\"prompt is too long: 201000 tokens > 200000 maximum\"}}\n\n",
        "text/event-stream",
    ))
    .await;
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    assert!(
        matches!(&error, Error::ContextLengthExceeded { status: None, .. }),
        "{error:?}"
    );
    // Another 400 is not.
    let (_server, provider) = openai_answering(ResponseTemplate::new(400).set_body_json(
        json!({"error": {"message": "Invalid value for 'temperature'", "type": "invalid_request_error",
            "param": "temperature", "code": "invalid_value"}}),
    ))
    .await;
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    assert!(!error.is_context_length_exceeded(), "{error:?}");
    assert_eq!(upstream(&error).0, Some(400));
}

#[tokio::test]
async fn overloaded_is_retryable() {
    let (_server, provider) = anthropic_answering(ResponseTemplate::new(529).set_body_json(
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ))
    .await;
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    assert_eq!(
        upstream(&error),
        (Some(529), Some("overloaded_error"), "Overloaded")
    );
    assert!(error.is_retryable());

    let (_server, provider) =
        openai_answering(ResponseTemplate::new(503).set_body_string("<html>upstream down</html>"))
            .await;
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    assert_eq!(
        upstream(&error),
        (Some(503), None, "<html>upstream down</html>")
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn huge_error_bodies_are_read_only_in_part() {
    let (_server, provider) =
        openai_answering(ResponseTemplate::new(500).set_body_string("x".repeat(1 << 20))).await;
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    let (status, _, message) = upstream(&error);
    assert_eq!(status, Some(500));
    assert!(message.len() < 1024, "{}", message.len());
}

#[tokio::test]
async fn garbage_is_bad_data() {
    let (_server, provider) = openai_answering(
        ResponseTemplate::new(200)
            .set_body_raw("data: {\"choices\": oops}\n\n", "text/event-stream"),
    )
    .await;
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    assert!(matches!(error, Error::BadData { .. }), "{error:?}");
    assert!(error.to_string().contains("oops"), "{error}");
    assert!(!error.is_retryable());

    let (_server, provider) = anthropic_answering(
        ResponseTemplate::new(200)
            .set_body_raw("event: ping\ndata: <html>\n\n", "text/event-stream"),
    )
    .await;
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    assert!(matches!(error, Error::BadData { .. }), "{error:?}");
}

#[tokio::test]
async fn connection_refused_is_a_retryable_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let provider = OpenAiProvider::builder()
        .base_url(format!("http://{addr}"))
        .build()
        .unwrap();
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    assert!(error.is_retryable());
}

#[test]
fn midstream_error_events_are_classified() {
    let openai_error = |kind: &str| {
        format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"a\"}}}}]}}\n\n\
             data: {{\"error\":{{\"message\":\"boom\",\"type\":\"{kind}\"}}}}\n\n"
        )
    };
    for (kind, retryable) in [
        ("server_error", true),
        ("api_error", true),
        ("overloaded", true),
        ("rate_limit", true),
        ("insufficient_quota", false),
        ("invalid_request_error", false),
    ] {
        let outcome = decode_pieces("openai", vec![openai_error(kind).into_bytes()]);
        let error = outcome.error.unwrap();
        assert_eq!(error.is_retryable(), retryable, "{kind}");
        assert_eq!(upstream(&error), (None, Some(kind), "boom"));
        assert_eq!(outcome.acc.text(), "a");
    }
    let anthropic_error = |kind: &str| {
        format!(
            "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"{kind}\",\"message\":\"m\"}}}}\n\n"
        )
    };
    for (kind, retryable) in [
        ("overloaded_error", true),
        ("api_error", true),
        ("rate_limit_error", true),
        ("invalid_request_error", false),
    ] {
        let outcome = decode_pieces("anthropic", vec![anthropic_error(kind).into_bytes()]);
        assert_eq!(outcome.error.unwrap().is_retryable(), retryable, "{kind}");
    }
}

#[test]
fn openai_edge_cases() {
    // Usage after the finish chunk but no [DONE]; then a [DONE] without a finish.
    let body = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\n\
                data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n";
    let outcome = decode_pieces("openai", vec![body.into()]);
    assert!(outcome.error.is_none());
    assert_eq!(outcome.acc.usage().unwrap().input_tokens, 3);

    let outcome = decode_pieces(
        "openai",
        vec!["data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n".into()],
    );
    assert!(outcome.error.is_none());
    assert_eq!(
        outcome.acc.finish_reason(),
        Some(chatstream::FinishReason::Other)
    );

    // Escapes come out decoded; `reasoning` is read like `reasoning_content`; choices with another
    // index are ignored.
    let body = "data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"other\"}},\
                {\"index\":0,\"delta\":{\"reasoning\":\"r\",\"content\":\"q\\\"\\u00e9\\n\"}}]}\n\n\
                data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"content_filter\"}]}\n\n";
    let outcome = decode_pieces("openai", vec![body.into()]);
    assert_eq!(outcome.acc.text(), "q\"é\n");
    assert_eq!(outcome.acc.reasoning(), "r");
    assert_eq!(
        outcome.acc.finish_reason(),
        Some(chatstream::FinishReason::ContentFilter)
    );

    // An empty body is truncated, not a success.
    let outcome = decode_pieces("openai", vec![Vec::new()]);
    assert!(matches!(outcome.error, Some(Error::Truncated { .. })));
}

#[test]
fn anthropic_tool_calls_are_numbered_among_tool_blocks() {
    let body = [
        r#"{"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}"#,
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t1","name":"a","input":{}}}"#,
        r#"{"type":"content_block_start","index":2,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"and"}}"#,
        r#"{"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"t2","name":"b","input":{}}}"#,
        r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"x\":1}"}}"#,
        r#"{"type":"some_future_event","index":9}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":9}}"#,
        r#"{"type":"message_stop"}"#,
    ]
    .map(|d| format!("event: x\ndata: {d}\n\n"))
    .concat();
    let outcome = decode_pieces("anthropic", vec![body.into_bytes()]);
    assert!(outcome.error.is_none());
    let calls = outcome.acc.tool_calls();
    assert_eq!(
        calls
            .iter()
            .map(|c| (
                c.index,
                c.id.as_str(),
                c.name.as_str(),
                c.arguments.as_str()
            ))
            .collect::<Vec<_>>(),
        [(0, "t1", "a", "{\"x\":1}"), (1, "t2", "b", "{}")]
    );
    assert_eq!(outcome.acc.text(), "and");
    assert_eq!(outcome.acc.reasoning(), "hm");
    assert_eq!(
        outcome.acc.finish_reason(),
        Some(chatstream::FinishReason::Length)
    );
    assert_eq!(outcome.acc.usage().unwrap().input_tokens, 5);
}

// ---- a raw HTTP server, to see the connection close ----------------------------------------

/// What the slow server saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// The client closed the connection after this many events had been written.
    Closed { after: usize },
    /// Every event was written and the client was still there.
    Completed,
}

/// Serves one request: answers with `events` SSE events (from `event(i)`), one every `gap`,
/// as a chunked HTTP/1.1 body, and reports when the client closes the connection.
/// With `break_after`, it drops the connection abruptly after that many events instead.
async fn slow_server(
    events: usize,
    gap: Duration,
    event: fn(usize) -> String,
    break_after: Option<usize>,
) -> (String, oneshot::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (mut reader, mut writer) = socket.into_split();
        // Read the request head and its body.
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            let n = reader.read(&mut buf).await.unwrap();
            assert!(n > 0, "client closed before sending its request");
            request.extend_from_slice(&buf[..n]);
            if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&request[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while request.len() < head_end + length {
            let n = reader.read(&mut buf).await.unwrap();
            assert!(n > 0);
            request.extend_from_slice(&buf[..n]);
        }
        writer
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                  transfer-encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
        for i in 0..events {
            if break_after == Some(i) {
                return; // both halves drop: the body breaks in the middle
            }
            let data = event(i);
            let chunk = format!("{:x}\r\n{data}\r\n", data.len());
            if writer.write_all(chunk.as_bytes()).await.is_err() {
                let _ = tx.send(Seen::Closed { after: i });
                return;
            }
            tokio::select! {
                read = reader.read(&mut buf) => {
                    // The client sends nothing more: any read end means it closed.
                    if matches!(read, Ok(0) | Err(_)) {
                        let _ = tx.send(Seen::Closed { after: i + 1 });
                        return;
                    }
                }
                () = tokio::time::sleep(gap) => {}
            }
        }
        let _ = tx.send(Seen::Completed);
    });
    (url, rx)
}

fn openai_event(i: usize) -> String {
    format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\
         \"delta\":{{\"content\":\"w{i} \"}},\"finish_reason\":null}}]}}\n\n"
    )
}

fn anthropic_event(i: usize) -> String {
    format!(
        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\
         \"delta\":{{\"type\":\"text_delta\",\"text\":\"w{i} \"}}}}\n\n"
    )
}

/// Enough events, slowly enough, that the server is still sending long after the client has
/// had time to close: the test asserts on what the server saw, not on timing.
const EVENTS: usize = 1000;
const GAP: Duration = Duration::from_millis(20);
const WAIT: Duration = Duration::from_secs(60);

fn responses_event(i: usize) -> String {
    format!(
        "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\
         \"sequence_number\":{i},\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\
         \"delta\":\"w{i} \",\"logprobs\":[]}}\n\n"
    )
}

#[tokio::test]
async fn dropping_the_stream_closes_the_connection() {
    for dialect in ["openai", "anthropic", "openai-responses"] {
        let event = match dialect {
            "openai" => openai_event,
            "anthropic" => anthropic_event,
            _ => responses_event,
        };
        let (url, seen) = slow_server(EVENTS, GAP, event, None).await;
        let provider: chatstream::DynLlmProvider = match dialect {
            "openai" => {
                std::sync::Arc::new(OpenAiProvider::builder().base_url(url).build().unwrap())
            }
            "anthropic" => {
                std::sync::Arc::new(AnthropicProvider::builder().base_url(url).build().unwrap())
            }
            _ => std::sync::Arc::new(
                OpenAiResponsesProvider::builder()
                    .base_url(url)
                    .build()
                    .unwrap(),
            ),
        };
        let mut stream = provider.stream(ChatRequest::user("hi"));
        for i in 0..3 {
            let delta = stream.next().await.unwrap().unwrap();
            assert_eq!(delta, Delta::text(format!("w{i} ")));
        }
        drop(stream);
        // The provider (and its client and pool) stays alive: only the stream was dropped.
        let seen = tokio::time::timeout(WAIT, seen).await.unwrap().unwrap();
        assert!(
            matches!(seen, Seen::Closed { after } if after < EVENTS),
            "{dialect}: {seen:?}"
        );
        drop(provider);
    }
}

#[tokio::test]
async fn cancelling_the_token_closes_the_connection() {
    let (url, seen) = slow_server(EVENTS, GAP, openai_event, None).await;
    let provider = OpenAiProvider::builder().base_url(url).build().unwrap();
    let token = CancellationToken::new();
    let mut stream = provider.stream_cancellable(ChatRequest::user("hi"), token.clone());
    let (three, got_three) = oneshot::channel();
    let consumer = tokio::spawn(async move {
        let mut texts = Vec::new();
        let mut three = Some(three);
        let last = loop {
            match stream.next().await {
                Some(Ok(Delta::Text { text })) => {
                    texts.push(text);
                    if texts.len() == 3 {
                        let _ = three.take().unwrap().send(());
                    }
                }
                other => break other,
            }
        };
        // Keep the stream alive: the close must come from the cancellation, not from a drop.
        (texts, last, stream)
    });
    got_three.await.unwrap();
    token.cancel();
    let (texts, last, stream) = tokio::time::timeout(WAIT, consumer).await.unwrap().unwrap();
    assert!(matches!(last, Some(Err(Error::Cancelled))), "{last:?}");
    assert!(texts.len() >= 3 && texts.len() < EVENTS);
    let seen = tokio::time::timeout(WAIT, seen).await.unwrap().unwrap();
    assert!(
        matches!(seen, Seen::Closed { after } if after < EVENTS),
        "{seen:?}"
    );
    drop(stream);
}

#[tokio::test]
async fn a_body_broken_mid_stream_is_a_retryable_connect_error() {
    let (url, _seen) = slow_server(10, Duration::from_millis(1), openai_event, Some(3)).await;
    let provider = OpenAiProvider::builder().base_url(url).build().unwrap();
    let outcome = drain(provider.stream(ChatRequest::user("hi"))).await;
    assert_eq!(outcome.acc.text(), "w0 w1 w2 ");
    let error = outcome.error.unwrap();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    assert!(error.is_retryable());

    let (url, _seen) = slow_server(10, Duration::from_millis(1), responses_event, Some(3)).await;
    let provider = OpenAiResponsesProvider::builder()
        .base_url(url)
        .build()
        .unwrap();
    let outcome = drain(provider.stream(ChatRequest::user("hi"))).await;
    assert_eq!(outcome.acc.text(), "w0 w1 w2 ");
    assert!(matches!(outcome.error, Some(Error::Connect { .. })));
}

#[tokio::test]
async fn openai_responses_http_errors_are_classified() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "3")
                .set_body_json(json!({"error": {"message": "Rate limit reached",
                    "type": "requests", "param": null, "code": "rate_limit_exceeded"}})),
        )
        .mount(&server)
        .await;
    let provider = OpenAiResponsesProvider::builder()
        .base_url(server.uri())
        .build()
        .unwrap();
    let error = only_error(provider.stream(ChatRequest::user("hi"))).await;
    assert_eq!(
        upstream(&error),
        (Some(429), Some("rate_limit_exceeded"), "Rate limit reached")
    );
    assert!(error.is_retryable());
    assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
    assert!(error.to_string().contains("openai-responses"), "{error}");
}
