//! Every kind of malformed request, sent to every route: each answers a JSON error with a 4xx
//! status, never axum's plain-text rejections, a panic or an HTML page.

use std::sync::Arc;

use chatstream::provider::DemoProvider;
use reqwest::Method;
use serde_json::Value;

use crate::support::*;

/// The routes of the contract, with `{chat}` where a chat id goes (also the route list of the
/// authentication tests).
pub const ROUTES: &[(&str, &str, Body)] = &[
    ("GET", "/api/chats", Body::None),
    ("POST", "/api/chats", Body::Json),
    ("PATCH", "/api/chats/{chat}", Body::Json),
    ("DELETE", "/api/chats/{chat}", Body::None),
    ("POST", "/api/chats/{chat}/regenerate", Body::None),
    ("POST", "/api/messages", Body::Json),
    ("GET", "/api/messages/{chat}", Body::None),
    ("GET", "/api/stream/{chat}", Body::None),
    ("POST", "/api/stream/{chat}/terminate", Body::None),
    ("POST", "/api/chat", Body::Json),
    ("GET", "/api/chat/{chat}/stream", Body::None),
    ("POST", "/api/chat/{chat}/stop", Body::None),
    ("GET", "/api/chat/{chat}/messages", Body::None),
    ("POST", "/v1/chat/completions", Body::Json),
    ("GET", "/v1/models", Body::None),
    ("GET", "/healthz", Body::None),
    ("GET", "/readyz", Body::None),
];

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Body {
    None,
    Json,
}

/// A body limit small enough that a padded body exceeds it.
const LIMIT: usize = 2048;

/// Sends one request and returns the status and the error code of its JSON body, failing the
/// test with what came back when the body is not the JSON error shape.
async fn rejected(
    s: &Server,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = s.client.request(method.clone(), s.url(path));
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let resp = request.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    let what = format!("{method} {path} answered {status} {ct:?}: {text}");
    assert!((400..500).contains(&status), "{what}");
    assert!(ct.starts_with("application/json"), "{what}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}"));
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}"));
    assert!(body["error"]["message"].is_string(), "{what}");
    (status, code.to_string())
}

#[tokio::test]
async fn every_route_answers_malformed_requests_with_json_errors() {
    // The routes that take images take room for them beyond the body limit: with images of
    // at most LIMIT / 4 bytes, a body of twice the limit is still too large for them.
    let s = serve(
        Arc::new(DemoProvider::new()),
        ServerOptions::default()
            .with_body_limit(LIMIT)
            .with_image_limits(LIMIT / 4, 1),
    )
    .await;
    let mut checked = 0;
    for &(method, template, body) in ROUTES {
        let with_chat = template.contains("{chat}");
        let path = template.replace("{chat}", "some-chat");
        if with_chat {
            // A segment that is not UTF-8 once decoded, and one that is not a valid chat id.
            for (bad, code) in [
                ("%FF%FE", "bad_path"),
                ("%C3%28", "bad_path"),
                ("not%20a%20chat%20id!", "invalid_chat_id"),
                (&"x".repeat(65), "invalid_chat_id"),
            ] {
                let bad_path = template.replace("{chat}", bad);
                let json_body = (body == Body::Json).then(|| r#"{"title":"t"}"#.to_string());
                let ct = json_body.as_ref().map(|_| "application/json");
                let (status, got) = rejected(&s, method, &bad_path, ct, json_body, &[]).await;
                assert_eq!((status, got.as_str()), (400, code), "{method} {bad_path}");
                checked += 1;
            }
        }
        if body == Body::Json {
            for (ct, payload, expected) in [
                ("application/json", "{nope".to_string(), (400, "bad_json")),
                ("application/json", r#"{""#.to_string(), (400, "bad_json")),
                (
                    "text/plain",
                    "{}".to_string(),
                    (415, "unsupported_media_type"),
                ),
                (
                    "application/json",
                    format!(r#"{{"pad":"{}"}}"#, "x".repeat(LIMIT * 2)),
                    (413, "body_too_large"),
                ),
                (
                    "application/json",
                    r#"{"unknown":1}"#.to_string(),
                    (422, "invalid_body"),
                ),
            ] {
                let (status, got) = rejected(&s, method, &path, Some(ct), Some(payload), &[]).await;
                assert_eq!(
                    (status, got.as_str()),
                    expected,
                    "{method} {path} with {ct}"
                );
                checked += 1;
            }
            // No content type at all.
            let (status, got) = rejected(&s, method, &path, None, Some("{}".into()), &[]).await;
            assert_eq!(
                (status, got.as_str()),
                (415, "unsupported_media_type"),
                "{method} {path}"
            );
            checked += 1;
        }
        if method == "GET" {
            // A query that does not parse where the route reads one; ignored elsewhere, so only
            // the routes with query parameters are asked.
            for query in [
                "limit=abc",
                "limit=-1",
                "offset=x",
                "before=not-an-id",
                "after=x",
            ] {
                let routes_reading_it = match template {
                    "/api/chats" => query.starts_with("limit") || query.starts_with("offset"),
                    "/api/messages/{chat}" => {
                        query.starts_with("limit") || query.starts_with("before")
                    }
                    "/api/stream/{chat}" => query.starts_with("after"),
                    _ => false,
                };
                if !routes_reading_it {
                    continue;
                }
                let (status, _) =
                    rejected(&s, method, &format!("{path}?{query}"), None, None, &[]).await;
                assert_eq!(status, 400, "{method} {path}?{query}");
                checked += 1;
            }
        }
        // A method no route takes.
        let (status, got) = rejected(&s, "PUT", &path, None, None, &[]).await;
        assert_eq!(
            (status, got.as_str()),
            (405, "method_not_allowed"),
            "PUT {path}"
        );
        checked += 1;
    }
    // The resume header of the event stream.
    for bad in ["abc", "-1", "1.5", "99999999999999999999999"] {
        let (status, got) = rejected(
            &s,
            "GET",
            "/api/stream/some-chat",
            None,
            None,
            &[("last-event-id", bad)],
        )
        .await;
        assert_eq!(
            (status, got.as_str()),
            (400, "invalid_last_event_id"),
            "{bad}"
        );
        checked += 1;
    }
    // Routes that do not exist, under every prefix.
    for path in [
        "/nowhere",
        "/api",
        "/api/chats/a/b/c",
        "/v1/nothing",
        "/api/stream/",
    ] {
        let (status, got) = rejected(&s, "GET", path, None, None, &[]).await;
        assert_eq!((status, got.as_str()), (404, "not_found"), "{path}");
        checked += 1;
    }
    assert!(checked > 60, "only {checked} requests were checked");
}

#[tokio::test]
async fn bad_image_attachments_are_refused_with_json_errors() {
    let png = crate::images::PNG;
    let s = serve(
        Arc::new(DemoProvider::new()),
        ServerOptions::default().with_image_limits(100, 2),
    )
    .await;
    let data =
        |media: &str, b64: &str| serde_json::json!({"url": format!("data:{media};base64,{b64}")});
    // A PNG signature and 150 zero bytes: 159 bytes, over the limit of 100.
    let big = format!("iVBORw0KGgoA{}", "AAAA".repeat(50));
    let cases = [
        (
            serde_json::json!([{"url": "http://example.com/a.png"}]),
            422,
            "invalid_attachment",
        ),
        (
            serde_json::json!([{"url": "ftp://example.com/a.png"}]),
            422,
            "invalid_attachment",
        ),
        (
            serde_json::json!([{"url": "https://"}]),
            422,
            "invalid_attachment",
        ),
        (
            serde_json::json!([{"url": "data:image/png,notbase64"}]),
            422,
            "invalid_attachment",
        ),
        (
            serde_json::json!([data("image/png", "%%%")]),
            422,
            "invalid_attachment",
        ),
        (
            serde_json::json!([data("image/svg+xml", "PHN2Zz4=")]),
            415,
            "unsupported_media_type",
        ),
        (
            serde_json::json!([data("text/html", "PGI+")]),
            415,
            "unsupported_media_type",
        ),
        // PNG bytes named as a GIF.
        (
            serde_json::json!([data("image/gif", png)]),
            415,
            "unsupported_media_type",
        ),
        (
            serde_json::json!([data("image/png", &big)]),
            413,
            "attachment_too_large",
        ),
        (
            serde_json::json!([
                data("image/png", png),
                data("image/png", png),
                data("image/png", png)
            ]),
            422,
            "too_many_attachments",
        ),
        (
            serde_json::json!([{"href": "https://example.com/a.png"}]),
            422,
            "invalid_body",
        ),
        (
            serde_json::json!("https://example.com/a.png"),
            422,
            "invalid_body",
        ),
    ];
    for (attachments, status, code) in cases {
        let body =
            serde_json::json!({"chatId": "imgs", "content": "look", "attachments": attachments});
        let (got_status, got_code) = rejected(
            &s,
            "POST",
            "/api/messages",
            Some("application/json"),
            Some(body.to_string()),
            &[],
        )
        .await;
        assert_eq!(
            (got_status, got_code.as_str()),
            (status, code),
            "{attachments}"
        );
    }
    // Nothing was stored by any of them.
    assert_eq!(s.history("imgs").await, Vec::<Value>::new());
    // Without text or image, a send is empty.
    let body = serde_json::json!({"chatId": "imgs", "content": " ", "attachments": []});
    let (status, code) = rejected(
        &s,
        "POST",
        "/api/messages",
        Some("application/json"),
        Some(body.to_string()),
        &[],
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "empty_content"));
}
