//! Authentication: every bad credential is a `401` on every route, in keys and JWT modes; the
//! session cookie and its origin check; the per-user limits; the example's refusal to serve
//! everyone by accident and its `keygen`; and no secret in the logs.

use std::{sync::Arc, time::Duration};

use chatstream::{
    ChatService, UserId,
    provider::DemoProvider,
    server::auth::{ApiKeys, JwtAuth, NewApiKey, SessionCookie},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

use crate::{
    rejections::{Body, ROUTES},
    support::*,
};

// ---- servers and clients with credentials ----

/// A server on the demo provider with `options`, and the service behind it.
async fn serve_options(options: ServerOptions) -> (Server, ChatService) {
    let service = ChatService::builder()
        .provider(Arc::new(DemoProvider::new().with_delay(Duration::ZERO)))
        .build()
        .unwrap();
    let server = serve_app(chatstream::server::router(service.clone(), options)).await;
    (server, service)
}

/// Users `alice` and `bob` with a key each.
struct Users {
    alice: NewApiKey,
    bob: NewApiKey,
}

impl Users {
    fn new() -> Self {
        Users {
            alice: NewApiKey::generate(user("alice")).unwrap(),
            bob: NewApiKey::generate(user("bob")).unwrap(),
        }
    }

    fn keys(&self) -> ApiKeys {
        ApiKeys::new()
            .with_key(user("alice"), self.alice.key())
            .with_key(user("bob"), self.bob.key())
    }

    /// Options with these users' keys and a plain session cookie.
    fn options(&self) -> ServerOptions {
        ServerOptions::default()
            .with_authenticator(Arc::new(self.keys()))
            .with_session_cookie(SessionCookie::random().unwrap().with_secure(false))
    }
}

fn user(id: &str) -> UserId {
    UserId::new(id).unwrap()
}

/// A request to `path` with `authorization` as its `Authorization` header, if any.
fn request(s: &Server, method: &str, path: &str, authorization: Option<&str>) -> RequestBuilder {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = s.client.request(method, s.url(path));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request
}

/// A body the route takes, so that only the credential can be wrong.
fn body_for(template: &str, chat: &str) -> Value {
    match template {
        "/api/chats" => json!({"title": "t"}),
        "/api/chats/{chat}" => json!({"title": "renamed"}),
        "/api/messages" => json!({"chatId": chat, "content": "hello"}),
        "/api/chat" => json!({"messages": [{"role": "user", "content": "hello"}]}),
        "/v1/chat/completions" => json!({"messages": [{"role": "user", "content": "hello"}]}),
        other => panic!("no body for {other}"),
    }
}

/// Asserts a `401` in the JSON error shape with a Bearer challenge; returns the error code.
async fn unauthorized(resp: reqwest::Response, what: &str) -> String {
    assert_eq!(resp.status(), 401, "{what}");
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    let body: Value = resp.json().await.unwrap();
    let code = body["error"]["code"].as_str().unwrap().to_owned();
    assert!(body["error"]["message"].is_string(), "{what}: {body}");
    let expected = if code == "unauthorized" {
        "Bearer"
    } else {
        "Bearer error=\"invalid_token\""
    };
    assert_eq!(challenge, expected, "{what}");
    code
}

/// Sends each credential to every route but the health probes: each is a `401` with the given
/// code. The health probes answer without one.
async fn every_route_refuses(s: &Server, credentials: &[(&str, Option<String>, &str)]) {
    let mut checked = 0;
    for &(method, template, body) in ROUTES {
        let path = template.replace("{chat}", "some-chat");
        if template == "/healthz" || template == "/readyz" {
            let resp = request(s, method, &path, None).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path} is open");
            continue;
        }
        for (what, authorization, code) in credentials {
            let mut req = request(s, method, &path, authorization.as_deref());
            if body == Body::Json {
                req = req.json(&body_for(template, "some-chat"));
            }
            let resp = req.send().await.unwrap();
            let what = format!("{method} {path} with {what}");
            assert_eq!(unauthorized(resp, &what).await, *code, "{what}");
            checked += 1;
        }
    }
    assert!(checked >= 15 * credentials.len(), "{checked}");
}

// ---- 401 for every bad credential ----

#[tokio::test]
async fn keys_mode_answers_every_bad_credential_with_401_on_every_route() {
    let users = Users::new();
    let (s, _) = serve_options(users.options()).await;
    let alice = users.alice.key();
    every_route_refuses(
        &s,
        &[
            ("no credential", None, "unauthorized"),
            (
                "another scheme",
                Some("Basic YWxpY2U6eA==".into()),
                "invalid_token",
            ),
            ("a scheme alone", Some("Bearer".into()), "invalid_token"),
            (
                "two tokens",
                Some(format!("Bearer {alice} {alice}")),
                "invalid_token",
            ),
            (
                "an unknown key",
                Some("Bearer cs_0123456789abcdef".into()),
                "invalid_token",
            ),
            (
                "a key cut short",
                Some(format!("Bearer {}", &alice[..20])),
                "invalid_token",
            ),
            (
                "the digest of a key",
                Some(format!("Bearer {}", users.alice.line())),
                "invalid_token",
            ),
        ],
    )
    .await;
    // The right key passes, on the chat routes and on the OpenAI-compatible ones, whose
    // clients send it as their `api_key`.
    for path in ["/api/chats", "/v1/models"] {
        let resp = request(&s, "GET", path, Some(&format!("Bearer {alice}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let resp = request(
        &s,
        "POST",
        "/v1/chat/completions",
        Some(&format!("bearer {alice}")),
    )
    .json(&body_for("/v1/chat/completions", ""))
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    // Who asks.
    let me: Value = request(&s, "GET", "/api/session", Some(&format!("Bearer {alice}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me, json!({"user": "alice", "credential": "bearer"}));
    let resp = request(&s, "GET", "/api/session", None)
        .send()
        .await
        .unwrap();
    unauthorized(resp, "GET /api/session without a credential").await;
}

const SECRET: &[u8] = b"a test secret of thirty-two bytes or more";

fn jwt(algorithm: Algorithm, key: &EncodingKey, claims: Value) -> String {
    encode(&Header::new(algorithm), &claims, key).unwrap()
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/data/auth/{name}.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[tokio::test]
async fn jwt_mode_answers_every_bad_token_with_401_on_every_route() {
    let auth = JwtAuth::hs256(SECRET)
        .unwrap()
        .with_issuer("https://login.example")
        .with_audience("chat");
    let (s, _) = serve_options(ServerOptions::default().with_authenticator(Arc::new(auth))).await;
    let key = EncodingKey::from_secret(SECRET).unwrap();
    let now = get_current_timestamp();
    let good = json!({
        "sub": "alice", "exp": now + 600, "iss": "https://login.example", "aud": "chat",
    });
    let with = |change: Value| {
        let mut claims = good.clone();
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        Some(format!("Bearer {}", jwt(Algorithm::HS256, &key, claims)))
    };
    let other_key = EncodingKey::from_secret(b"another secret, thirty-two bytes long").unwrap();
    let rsa = EncodingKey::from_rsa_pem(&pem("rsa-private")).unwrap();
    let good_token = jwt(Algorithm::HS256, &key, good.clone());
    let (head, rest) = good_token.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    // The same signature over claims naming another user.
    let forged_claims = {
        let mut claims = good.clone();
        claims["sub"] = json!("bob");
        jwt(Algorithm::HS256, &key, claims)
    };
    let forged_payload = forged_claims.split('.').nth(1).unwrap();
    every_route_refuses(
        &s,
        &[
            ("no token", None, "unauthorized"),
            (
                "an expired token",
                with(json!({"exp": now - 300})),
                "invalid_token",
            ),
            (
                "a token without exp",
                with(json!({"exp": null})),
                "invalid_token",
            ),
            (
                "a token from another issuer",
                with(json!({"iss": "https://evil.example"})),
                "invalid_token",
            ),
            (
                "a token for another audience",
                with(json!({"aud": "billing"})),
                "invalid_token",
            ),
            (
                "a token without an audience",
                with(json!({"aud": null})),
                "invalid_token",
            ),
            (
                "a token for the anonymous user",
                with(json!({"sub": "anonymous"})),
                "invalid_token",
            ),
            (
                "a token for no valid user",
                with(json!({"sub": "two words"})),
                "invalid_token",
            ),
            (
                "a token without sub",
                with(json!({"sub": null})),
                "invalid_token",
            ),
            (
                "a token not valid yet",
                with(json!({"nbf": now + 3600})),
                "invalid_token",
            ),
            (
                "a token signed with another secret",
                Some(format!(
                    "Bearer {}",
                    jwt(Algorithm::HS256, &other_key, good.clone())
                )),
                "invalid_token",
            ),
            (
                "a token signed with RS256",
                Some(format!(
                    "Bearer {}",
                    jwt(Algorithm::RS256, &rsa, good.clone())
                )),
                "invalid_token",
            ),
            (
                "a token whose claims were changed",
                Some(format!("Bearer {head}.{forged_payload}.{signature}")),
                "invalid_token",
            ),
            (
                "a token with alg none",
                Some(format!(
                    "Bearer {}.{}.",
                    "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", forged_payload
                )),
                "invalid_token",
            ),
            (
                "not a JWT",
                Some("Bearer not-a-jwt".into()),
                "invalid_token",
            ),
        ],
    )
    .await;
    let me: Value = request(
        &s,
        "GET",
        "/api/session",
        Some(&format!("Bearer {good_token}")),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(me["user"], "alice");
    // Expired a little, within the leeway: still accepted.
    let late = with(json!({"exp": now - 5})).unwrap();
    let resp = request(&s, "GET", "/v1/models", Some(&late))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn jwt_mode_verifies_rs256_and_es256_with_a_public_key() {
    let now = get_current_timestamp();
    let claims = json!({"sub": "carol", "exp": now + 600});
    for (public, private, algorithm) in [
        ("rsa-public", "rsa-private", Algorithm::RS256),
        ("ec-public", "ec-private", Algorithm::ES256),
    ] {
        let auth = JwtAuth::from_public_key_pem(pem(public)).unwrap();
        let (s, _) =
            serve_options(ServerOptions::default().with_authenticator(Arc::new(auth))).await;
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem(private)).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem(private)).unwrap(),
        };
        let token = jwt(algorithm, &key, claims.clone());
        let me: Value = request(&s, "GET", "/api/session", Some(&format!("Bearer {token}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me["user"], "carol", "{algorithm:?}");
        // HS256 signed with the public key's bytes as the secret: the algorithm confusion
        // attack.
        let confused = jwt(
            Algorithm::HS256,
            &EncodingKey::from_secret(&pem(public)).unwrap(),
            claims.clone(),
        );
        let resp = request(&s, "GET", "/api/chats", Some(&format!("Bearer {confused}")))
            .send()
            .await
            .unwrap();
        unauthorized(resp, &format!("HS256 against a {algorithm:?} key")).await;
        let mut expired = claims.clone();
        expired["exp"] = json!(now - 300);
        let resp = request(
            &s,
            "GET",
            "/api/chats",
            Some(&format!("Bearer {}", jwt(algorithm, &key, expired))),
        )
        .send()
        .await
        .unwrap();
        unauthorized(resp, &format!("an expired {algorithm:?} token")).await;
    }
}

// ---- the session cookie ----

/// Signs in with `token`; returns the `Cookie` header that carries the session.
async fn sign_in(s: &Server, token: &str) -> String {
    let resp = s
        .client
        .post(s.url("/api/session"))
        .header("origin", &s.base)
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    set_cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_session_cookie_signs_in_and_refuses_changes_from_another_origin() {
    let users = Users::new();
    let (s, _) = serve_options(users.options().with_cors_origins(["https://app.example"])).await;
    // A bad token opens no session.
    let resp = s
        .client
        .post(s.url("/api/session"))
        .json(&json!({"token": "cs_wrong"}))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("set-cookie").is_none());
    unauthorized(resp, "signing in with a wrong key").await;
    // Nor does a sign-in from another origin.
    let resp = s
        .client
        .post(s.url("/api/session"))
        .header("origin", "http://evil.example")
        .json(&json!({"token": users.alice.key()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("set-cookie").is_none());

    let cookie = sign_in(&s, users.alice.key()).await;
    assert!(!cookie.contains(users.alice.key()));
    let with_cookie = |method: &str, path: &str, origin: Option<&str>| {
        let mut req = request(&s, method, path, None).header("cookie", &cookie);
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        req
    };
    let me: Value = with_cookie("GET", "/api/session", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me, json!({"user": "alice", "credential": "cookie"}));
    // Reading needs no Origin; a change does, of this server or one CORS allows.
    let resp = with_cookie("GET", "/api/chats", Some("http://evil.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let own = s.base.clone();
    for (origin, referer, status) in [
        (Some("http://evil.example"), None, 403),
        (Some("null"), None, 403),
        (None, None, 403),
        (None, Some("http://evil.example/page"), 403),
        (Some(own.as_str()), None, 201),
        (None, Some(&format!("{own}/")[..]), 201),
        (Some("https://app.example"), None, 201),
    ] {
        let mut req = with_cookie("POST", "/api/chats", origin).json(&json!({}));
        if let Some(referer) = referer {
            req = req.header("referer", referer);
        }
        let resp = req.send().await.unwrap();
        let what = format!("Origin {origin:?}, Referer {referer:?}");
        assert_eq!(resp.status(), status, "{what}");
        if status == 403 {
            let (_, code) = error_of(resp).await;
            assert_eq!(code, "cross_origin", "{what}");
        }
    }
    let resp = with_cookie("DELETE", "/api/chats/x", Some("http://evil.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // A bearer credential is not the browser's to attach: no Origin is asked of it.
    let resp = request(
        &s,
        "POST",
        "/api/chats",
        Some(&format!("Bearer {}", users.bob.key())),
    )
    .header("origin", "http://evil.example")
    .json(&json!({}))
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 201);
    // A bearer header wins over the cookie.
    let me: Value = with_cookie("GET", "/api/session", None)
        .header("authorization", format!("Bearer {}", users.bob.key()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"], "bob");

    // A cookie that does not decrypt, or of another server's key, is a 401.
    let name = cookie.split('=').next().unwrap();
    for bad in [format!("{name}=garbage"), format!("{name}=")] {
        let resp = request(&s, "GET", "/api/chats", None)
            .header("cookie", &bad)
            .send()
            .await
            .unwrap();
        unauthorized(resp, &bad).await;
    }
    let (other, _) = serve_options(users.options()).await;
    let resp = request(&other, "GET", "/api/chats", None)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    unauthorized(resp, "a cookie of another key").await;

    // Signing out clears the cookie, from this origin only.
    let resp = with_cookie("DELETE", "/api/session", Some("http://evil.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = with_cookie("DELETE", "/api/session", Some(&own))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let cleared = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.starts_with(&format!("{name}=;")), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
}

#[tokio::test]
async fn without_a_session_cookie_sign_in_is_404_and_without_authentication_everyone_is_anonymous()
{
    let (s, _) = serve_options(ServerOptions::default()).await;
    let resp = s
        .client
        .post(s.url("/api/session"))
        .json(&json!({"token": "anything"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (404, "not_found".into()));
    let me: Value = s.get("/api/session").await.json().await.unwrap();
    assert_eq!(me, json!({"user": "anonymous", "credential": "none"}));
    // A credential sent to a server without authentication changes nothing.
    let resp = request(&s, "GET", "/api/chats", Some("Bearer whatever"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

// ---- limits ----

#[tokio::test]
async fn the_request_rate_limit_answers_429_with_retry_after_per_user() {
    let users = Users::new();
    let (s, _) = serve_options(users.options().with_rate_limit_per_min(3)).await;
    let get = |key: &str| request(&s, "GET", "/api/chats", Some(&format!("Bearer {key}"))).send();
    for _ in 0..3 {
        assert_eq!(get(users.alice.key()).await.unwrap().status(), 200);
    }
    let resp = get(users.alice.key()).await.unwrap();
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Three a minute: the next one in at most 20 s.
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(error_of(resp).await, (429, "rate_limited".into()));
    // Bob is not slowed down by Alice, and the probes by no one.
    assert_eq!(get(users.bob.key()).await.unwrap().status(), 200);
    assert_eq!(s.get("/healthz").await.status(), 200);
}

// ---- the example: its refusal to serve everyone by accident, keygen, and its log ----

/// The example's binary with a clean environment and `env`.
fn example(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(example_binary());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CHATSTREAM_DATABASE_URL", "memory")
        .env("RUST_LOG", "warn")
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn the_example_refuses_another_address_than_loopback_without_chatstream_auth() {
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let out = example(&[], &[("CHATSTREAM_ADDR", addr)]);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{addr}: {stderr}");
        // One line, saying how; and nothing listened.
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("CHATSTREAM_AUTH=keys or jwt"),
            "{addr}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{addr}");
    }
    // Asked for without what it needs, each mode says what is missing.
    for (env, missing) in [
        (
            &[("CHATSTREAM_AUTH", "keys")][..],
            "CHATSTREAM_API_KEYS_FILE",
        ),
        (&[("CHATSTREAM_AUTH", "jwt")][..], "CHATSTREAM_JWT_SECRET"),
        (
            &[
                ("CHATSTREAM_AUTH", "jwt"),
                ("CHATSTREAM_JWT_SECRET", "short"),
            ][..],
            "at least 32 bytes",
        ),
        (
            &[
                ("CHATSTREAM_AUTH", "jwt"),
                (
                    "CHATSTREAM_JWT_SECRET",
                    "a secret of thirty-two bytes or more",
                ),
                ("CHATSTREAM_COOKIE_KEY", "short"),
            ][..],
            "cookie key",
        ),
    ] {
        let out = example(
            &[],
            &[&[("CHATSTREAM_ADDR", "127.0.0.1:0")][..], env].concat(),
        );
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{env:?}");
        assert!(stderr.contains(missing), "{env:?}: {stderr}");
    }
}

/// `keygen USER`'s key and keys-file line.
fn keygen(user: &str) -> (String, String) {
    let out = example(&["keygen", user], &[]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let field = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} in {stdout}"))
            .trim()
            .to_owned()
    };
    (field("key:"), field("line:"))
}

#[tokio::test]
async fn a_key_from_keygen_is_accepted_by_the_server_whose_file_has_its_line() {
    let (key, line) = keygen("alice");
    let (other_key, _) = keygen("alice");
    assert_ne!(key, other_key, "every key is new");
    // At least 128 random bits: here 256, in hex after the prefix.
    let random = key.strip_prefix("cs_").unwrap();
    assert!(
        random.len() >= 32 && random.chars().all(|c| c.is_ascii_hexdigit()),
        "{key}"
    );
    assert!(line.starts_with("alice ") && !line.contains(&key), "{line}");
    assert!(!example(&["keygen", "anonymous"], &[]).status.success());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, format!("# the team\n{line}  # alice's laptop\n")).unwrap();
    let p = start_server(
        "memory",
        &[
            ("CHATSTREAM_AUTH", "keys"),
            ("CHATSTREAM_API_KEYS_FILE", file.to_str().unwrap()),
            (
                "CHATSTREAM_COOKIE_KEY",
                "a cookie key of thirty-two bytes or more",
            ),
        ],
    );
    let s = p.server();
    let me: Value = request(&s, "GET", "/api/session", Some(&format!("Bearer {key}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me, json!({"user": "alice", "credential": "bearer"}));
    let resp = request(
        &s,
        "GET",
        "/api/chats",
        Some(&format!("Bearer {other_key}")),
    )
    .send()
    .await
    .unwrap();
    unauthorized(resp, "a key whose line is not in the file").await;
    unauthorized(s.get("/api/chats").await, "no key").await;
    drop(p);

    // A file that holds a key instead of its digest is refused, naming the line only.
    std::fs::write(&file, format!("alice {key}\n")).unwrap();
    let out = example(
        &[],
        &[
            ("CHATSTREAM_ADDR", "127.0.0.1:0"),
            ("CHATSTREAM_AUTH", "keys"),
            ("CHATSTREAM_API_KEYS_FILE", file.to_str().unwrap()),
        ],
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(stderr.contains("line 1:"), "{stderr}");
    assert!(!stderr.contains(&key), "{stderr}");
}

/// Starts the example with `env`, its log (at `debug`) going to a file; returns the server and
/// the log's path.
fn start_logged(env: &[(&str, &str)]) -> (Process, tempfile::NamedTempFile) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let stderr = std::process::Stdio::from(log.reopen().unwrap());
    let env = [&[("RUST_LOG", "debug")][..], env].concat();
    (start_server_logging("memory", &env, stderr), log)
}

/// The whole log once the server is gone.
fn log_of(p: Process, log: &tempfile::NamedTempFile) -> String {
    drop(p);
    std::fs::read_to_string(log.path()).unwrap()
}

#[tokio::test]
async fn no_key_token_cookie_or_secret_reaches_the_log() {
    const COOKIE_KEY: &str = "cookie-key-that-must-never-be-logged-0123456789";
    const JWT_SECRET: &str = "jwt-secret-that-must-never-be-logged-0123456789";
    let (key, line) = keygen("alice");
    let wrong_key = format!("cs_{}", "e".repeat(64));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, format!("{line}\n")).unwrap();

    // Keys: good and bad keys, a session opened, used and closed, a forged cookie, a reply.
    let (p, log) = start_logged(&[
        ("CHATSTREAM_AUTH", "keys"),
        ("CHATSTREAM_API_KEYS_FILE", file.to_str().unwrap()),
        ("CHATSTREAM_COOKIE_KEY", COOKIE_KEY),
    ]);
    let s = p.server();
    let bearer = |k: &str| format!("Bearer {k}");
    for (k, status) in [(&key, 200), (&wrong_key, 401)] {
        for path in ["/api/chats", "/v1/models"] {
            let resp = request(&s, "GET", path, Some(&bearer(k)))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), status, "{path}");
        }
    }
    let resp = request(&s, "POST", "/api/messages", Some(&bearer(&key)))
        .json(&json!({"chatId": "c1", "content": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = s
        .client
        .post(s.url("/api/session"))
        .json(&json!({"token": wrong_key}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let cookie = sign_in(&s, &key).await;
    let cookie_value = cookie.split_once('=').unwrap().1.to_owned();
    let resp = request(&s, "GET", "/api/chats", None)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let forged = format!(
        "chatstream_session={}x",
        &cookie_value[..cookie_value.len() - 1]
    );
    let resp = request(&s, "GET", "/api/chats", None)
        .header("cookie", &forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = request(&s, "DELETE", "/api/session", None)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let keys_log = log_of(p, &log);

    // JWT: a good and an expired token.
    let (p, log) = start_logged(&[
        ("CHATSTREAM_AUTH", "jwt"),
        ("CHATSTREAM_JWT_SECRET", JWT_SECRET),
        ("CHATSTREAM_COOKIE_KEY", COOKIE_KEY),
    ]);
    let s = p.server();
    let secret = EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap();
    let now = get_current_timestamp();
    let good = jwt(
        Algorithm::HS256,
        &secret,
        json!({"sub": "alice", "exp": now + 600}),
    );
    let expired = jwt(
        Algorithm::HS256,
        &secret,
        json!({"sub": "alice", "exp": now - 600}),
    );
    let resp = request(&s, "GET", "/api/chats", Some(&bearer(&good)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = request(&s, "GET", "/api/chats", Some(&bearer(&expired)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let jwt_cookie = sign_in(&s, &good).await;
    let jwt_log = log_of(p, &log);
    // The log is the full one, requests and responses included.
    assert!(
        keys_log.contains("finished processing request"),
        "{keys_log}"
    );

    let secrets = [
        ("the key", key.as_str()),
        ("the unknown key", wrong_key.as_str()),
        ("the session cookie", cookie_value.as_str()),
        ("the forged cookie", forged.as_str()),
        ("the cookie key", COOKIE_KEY),
        ("the JWT secret", JWT_SECRET),
        ("a token", good.as_str()),
        ("an expired token", expired.as_str()),
        (
            "the JWT session cookie",
            jwt_cookie.split_once('=').unwrap().1,
        ),
    ];
    for (which, log) in [("keys", &keys_log), ("jwt", &jwt_log)] {
        for (what, secret) in secrets {
            assert!(
                !log.contains(secret),
                "{what} is in the {which} log:\n{log}"
            );
        }
        // What is logged instead: the reason and the route.
        assert!(log.contains("authentication failed"), "{which}:\n{log}");
    }
    assert!(keys_log.contains("unknown API key"), "{keys_log}");
    assert!(keys_log.contains("route=\"/api/chats\""), "{keys_log}");
    assert!(keys_log.contains("route=\"/v1/models\""), "{keys_log}");
    assert!(jwt_log.contains("the token has expired"), "{jwt_log}");
}

#[test]
fn the_auth_mode_defaults_to_none_on_loopback_only() {
    use clap::Parser;

    use crate::config::{AuthMode, Config};
    let mode = |args: &[&str]| {
        Config::try_parse_from([&["server"][..], args].concat())
            .unwrap()
            .auth_mode()
    };
    assert_eq!(mode(&[]), Ok(AuthMode::None));
    assert_eq!(mode(&["--addr", "[::1]:3000"]), Ok(AuthMode::None));
    assert!(mode(&["--addr", "0.0.0.0:3000"]).is_err());
    assert!(mode(&["--addr", "192.0.2.7:3000"]).is_err());
    assert_eq!(
        mode(&["--addr", "0.0.0.0:3000", "--auth", "none"]),
        Ok(AuthMode::None)
    );
    assert_eq!(
        mode(&["--addr", "0.0.0.0:3000", "--auth", "keys"]),
        Ok(AuthMode::Keys)
    );
    // Secrets stay out of the configuration's debug output.
    let c = Config::try_parse_from([
        "server",
        "--jwt-secret",
        "secret-value-0123456789-0123456789",
        "--cookie-key",
        "cookie-value-0123456789-0123456789",
    ])
    .unwrap();
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("secret-value") && !debug.contains("cookie-value"),
        "{debug}"
    );
}

// ---- every route scoped by the user who asks ----

/// A server with Alice's and Bob's keys whose every reply is slow (`words` words, 20 ms
/// apart), the service behind it.
async fn serve_slow(users: &Users, options: ServerOptions, words: usize) -> (Server, ChatService) {
    let provider = chatstream::provider::ScriptedProvider::new().repeat(slow_reply(words, 20));
    let service = ChatService::builder()
        .provider(Arc::new(provider))
        .checkpoint(Duration::from_millis(50), 8)
        .build()
        .unwrap();
    let options = options.with_authenticator(Arc::new(users.keys()));
    let server = serve_app(chatstream::server::router(service.clone(), options)).await;
    (server, service)
}

/// A request of `key`'s user to a route of [`ROUTES`] about `chat`, with a body that names
/// `chat` where the route takes one.
fn route_request(
    s: &Server,
    key: &str,
    method: &str,
    template: &str,
    chat: &str,
) -> RequestBuilder {
    let path = template.replace("{chat}", chat);
    let req = request(s, method, &path, Some(&format!("Bearer {key}")));
    match (method, template) {
        ("POST", "/api/chats") => req.json(&json!({"id": chat, "title": "mine"})),
        ("PATCH", _) => req.json(&json!({"title": "taken over"})),
        ("POST", "/api/messages") => req.json(&json!({"chatId": chat, "content": "hello"})),
        ("POST", "/api/chat") => req.json(&json!({
            "id": chat,
            "messages": [{"id": format!("u-{chat}"), "role": "user",
                          "parts": [{"type": "text", "text": "hello"}]}],
            "trigger": "submit-message",
        })),
        ("POST", "/v1/chat/completions") => req.json(&body_for(template, chat)),
        _ => req,
    }
}

/// What a client learns from an answer: its status and, for errors and small JSON answers, the
/// body with the chat id taken out; for answers that carry fresh ids (a send), the shape only.
async fn learned(resp: reqwest::Response, chat: &str) -> (u16, String) {
    let status = resp.status().as_u16();
    let kind = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    if kind.starts_with("text/event-stream") {
        // A stream that would go on: what it is, not how far it got.
        return (status, "event-stream".into());
    }
    let text = resp.text().await.unwrap().replace(chat, "{chat}");
    if matches!(status, 201 | 202) {
        let value: Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        return (status, format!("{keys:?}"));
    }
    (status, text)
}

/// Every route, as each of two users, about their own chat and about the other's: the other's
/// chat is not there for them. Each answer about it is exactly the answer about a chat id nobody
/// uses (404 where a route says a chat is missing), and nothing of it changes: not its
/// history, not its live reply, not its row in the store.
#[tokio::test]
async fn every_route_answers_another_users_chat_as_one_that_does_not_exist_and_changes_nothing() {
    let users = Users::new();
    // Long enough to stay live through every request below.
    let (s, service) = serve_slow(&users, ServerOptions::default(), 400).await;
    let store = service.store().clone();
    let people = [
        ("alice", users.alice.key(), "chat-a"),
        ("bob", users.bob.key(), "chat-b"),
    ];
    // A route that makes a chat gives the asker a chat of that id of their own: each of those
    // is asked about another chat of the other's, made for it.
    let making = [
        ("POST", "/api/chats"),
        ("POST", "/api/messages"),
        ("POST", "/api/chat"),
    ];
    let made_for = |chat: &str, n: usize| format!("{chat}-{n}");
    // Each opens a chat with a title and starts a reply in it, and has a chat for each route
    // that makes one.
    for (_, key, chat) in people {
        let mut chats = vec![chat.to_owned()];
        chats.extend((0..making.len()).map(|n| made_for(chat, n)));
        for chat in &chats {
            let resp = route_request(&s, key, "POST", "/api/chats", chat)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201);
        }
        let resp = route_request(&s, key, "POST", "/api/messages", chat)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    let key_of =
        |owner: &str, chat: &str| chatstream::ChatKey::new(user(owner), chat.parse().unwrap());
    let snapshot = async |owner: &str, chat: &str| {
        let key = key_of(owner, chat);
        let row = store
            .get_chat(&key)
            .await
            .unwrap()
            .expect("the chat is there");
        let history = store
            .history(&key, chatstream::store::HistoryPage::default())
            .await
            .unwrap();
        let live = service.hub().live_reply(&key).await.unwrap();
        (
            chat.to_owned(),
            row.title,
            history.iter().map(|m| m.id).collect::<Vec<_>>(),
            live.map(|l| l.message_id),
        )
    };
    let everything = async || {
        let mut all = Vec::new();
        for (owner, _, chat) in people {
            all.push(snapshot(owner, chat).await);
            for n in 0..making.len() {
                all.push(snapshot(owner, &made_for(chat, n)).await);
            }
        }
        all
    };
    let before = everything().await;
    let live_main = before
        .iter()
        .filter(|(_, _, _, live)| live.is_some())
        .count();
    assert_eq!(live_main, 2, "both main replies are live: {before:?}");

    // The routes that read or act on a chat, about the other's main chat; then those that make
    // one, each about another chat of the other's.
    let chat_routes: Vec<(&str, &str, Option<usize>)> = ROUTES
        .iter()
        .filter(|(_, t, _)| t.contains("{chat}"))
        .map(|&(m, t, _)| (m, t, None))
        .chain(
            making
                .iter()
                .enumerate()
                .map(|(n, &(m, t))| (m, t, Some(n))),
        )
        .collect();
    let mut checked = 0;
    for (asker, key, own) in people {
        let others = if own == "chat-a" { "chat-b" } else { "chat-a" };
        for (n, &(method, template, made)) in chat_routes.iter().enumerate() {
            let other = made.map_or(others.to_owned(), |m| made_for(others, m));
            let what = format!("{asker}: {method} {template} about the other's chat {other}");
            let nobody = format!("nobody-{asker}-{n}");
            let theirs = route_request(&s, key, method, template, &other)
                .send()
                .await
                .unwrap();
            let theirs = learned(theirs, &other).await;
            let unused = route_request(&s, key, method, template, &nobody)
                .send()
                .await
                .unwrap();
            let unused = learned(unused, &nobody).await;
            assert_eq!(theirs, unused, "{what}");
            if matches!(
                (method, template),
                ("PATCH", _) | ("DELETE", _) | (_, "/api/chats/{chat}/regenerate")
            ) {
                assert_eq!(theirs.0, 404, "{what}: {theirs:?}");
            }
            if method == "GET" && template.contains("stream") {
                // Nothing live there for the asker, whatever is live in the other's chat.
                assert_eq!(theirs.0, 204, "{what}");
            }
            checked += 1;
        }
        // Resuming the other's live reply from any event is nothing too.
        for last_event_id in ["0", "3"] {
            let resp = route_request(&s, key, "GET", "/api/stream/{chat}", others)
                .header("last-event-id", last_event_id)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 204, "{asker} resuming after {last_event_id}");
        }
        // Listing shows the asker's chats only: theirs, and those the making routes gave them.
        let list: Vec<Value> = route_request(&s, key, "GET", "/api/chats", "")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = list.iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert!(ids.contains(&own), "{asker}: {ids:?}");
        for id in &ids {
            let mine = id.starts_with(own)
                || id.starts_with(&format!("nobody-{asker}"))
                || (0..making.len()).any(|n| *id == made_for(others, n));
            assert!(mine, "{asker} sees {id}: {ids:?}");
        }
        assert!(!ids.contains(&others), "{asker}: {ids:?}");
    }
    assert_eq!(checked, 2 * chat_routes.len());

    // The other's chats are as they were: same titles, same messages, the same reply still live.
    assert_eq!(everything().await, before);
    // Each user's own chat answers them on every reading route.
    for (asker, key, own) in people {
        let history: Vec<Value> = route_request(&s, key, "GET", "/api/messages/{chat}", own)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(history.len(), 2, "{asker}");
        assert_eq!(history[0]["content"], "hello");
        let ui: Vec<Value> = route_request(&s, key, "GET", "/api/chat/{chat}/messages", own)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ui.len(), 2, "{asker}");
        for template in ["/api/stream/{chat}", "/api/chat/{chat}/stream"] {
            let resp = route_request(&s, key, "GET", template, own)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{asker} {template}");
        }
    }
    // The replies the other's terminate, stop and delete requests did not touch end complete.
    for (owner, _, chat) in people {
        let key = key_of(owner, chat);
        for _ in 0..1000 {
            if service.hub().live_reply(&key).await.unwrap().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let history = store
            .history(&key, chatstream::store::HistoryPage::default())
            .await
            .unwrap();
        assert_eq!(
            history.len(),
            2,
            "{owner}: no message of the other's came in"
        );
        assert_eq!(
            history[1].status,
            chatstream::MessageStatus::Complete,
            "{owner}"
        );
        assert_eq!(history[1].content, words(400), "{owner}");
    }
}

// ---- live replies per user ----

#[tokio::test]
async fn a_users_fifth_live_reply_is_429_while_another_user_is_unaffected() {
    let users = Users::new();
    let (s, service) = serve_slow(
        &users,
        ServerOptions::default().with_max_live_per_user(4),
        600,
    )
    .await;
    let (alice, bob) = (users.alice.key(), users.bob.key());
    for n in 0..4 {
        let resp = route_request(&s, alice, "POST", "/api/messages", &format!("a{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "reply {n}");
    }
    assert_eq!(
        service.hub().live_count(&user("alice")).await.unwrap(),
        Some(4)
    );
    // A fifth, whichever route starts it.
    for (method, template, chat) in [
        ("POST", "/api/messages", "a4"),
        ("POST", "/api/chat", "a5"),
        ("POST", "/api/chats/{chat}/regenerate", "a0"),
    ] {
        let resp = route_request(&s, alice, method, template, chat)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_of(resp).await,
            (429, "too_many_live_replies".into()),
            "{method} {template}"
        );
    }
    // Nothing was stored for the refused ones.
    let key = chatstream::ChatKey::new(user("alice"), "a4".parse().unwrap());
    assert!(service.store().get_chat(&key).await.unwrap().is_none());
    // Bob is not held back by Alice.
    for n in 0..4 {
        let resp = route_request(&s, bob, "POST", "/api/messages", &format!("b{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "Bob's reply {n}");
    }
    // Once one of Alice's replies stops, she may start another.
    let resp = route_request(&s, alice, "POST", "/api/stream/{chat}/terminate", "a0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut status = 0;
    for _ in 0..200 {
        let resp = route_request(&s, alice, "POST", "/api/messages", "a4")
            .send()
            .await
            .unwrap();
        status = resp.status().as_u16();
        if status == 202 {
            break;
        }
        assert_eq!(status, 429);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, 202);
    // Concurrent sends of one user at the limit: exactly one more passes.
    let resp = route_request(&s, alice, "POST", "/api/stream/{chat}/terminate", "a1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    while service.hub().live_count(&user("alice")).await.unwrap() != Some(3) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let racing = (0..6)
        .map(|n| route_request(&s, alice, "POST", "/api/messages", &format!("race{n}")).send());
    let statuses: Vec<u16> = futures::future::join_all(racing)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        5,
        "{statuses:?}"
    );
}
