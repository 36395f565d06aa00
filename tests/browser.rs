//! The web page in a real browser: headless Chromium driven through chromedriver (WebDriver).
//!
//! Needs `chromium` and `chromium-driver` (Debian packages; `.ci/run` installs them). Without
//! chromedriver on the machine the test prints that it was SKIPPED and passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A test, example or bench crate is its own root: `pub` marks what its modules share.
#![allow(unreachable_pub)]

// The example is a binary: its modules are compiled into this target.
include!("../examples/server/embed.rs");

mod common;

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chatstream::provider::{Script, ScriptedProvider};
use chatstream::server::ServerOptions;
use chatstream::{
    ChatId, ChatKey, ChatRequest, ChatService, Delta, DeltaStream, DynLlmProvider, Error,
    FinishReason, LlmProvider, Message, Role, ToolCallDelta, UserId, provider::DemoProvider,
};
use fantoccini::{Client, ClientBuilder, Locator, key::Key};
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver, in a process group of its own with the browser it starts.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // A test that fails never closes its session: the whole group goes, so that no browser
        // outlives the test (std can signal a child, not a group).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_driver() -> (Driver, String) {
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .process_group(0)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver(child);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (driver, format!("http://127.0.0.1:{port}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start on port {port}");
}

async fn browser(driver_url: &str, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--window-size=1280,800",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(driver_url)
        .await
        .expect("a WebDriver session")
}

/// A reply in Markdown with everything a model writes: a heading, a list, a table, links, inline
/// code, a fenced Rust block, an image of each kind, and markup that must stay text.
const MARKDOWN: &str = r#"## Streaming in Rust

Replies arrive as **deltas**:

- text comes as `Delta::Text`
- a stop closes the upstream

| Store | Feature |
| --- | --- |
| memory | always |
| SQLite | `sqlite` |

Read [the docs](https://docs.rs/chatstream), not [this](javascript:window.__pwned=3) nor <javascript:window.__pwned=4>.

```rust
fn main() {
    let answer = 42;
    println!("{answer}");
}
```

Markup stays text: <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=2</script>.

A remote picture ![tracker](http://127.0.0.1:9/pixel.png) and an inline one ![dot](data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=).
"#;

/// The reply in the README's picture.
const TOUR: &str = r#"## What chatstream keeps for you

Every reply is **saved as it streams**, so nothing is lost:

- *Stop* closes the upstream request for real
- a dropped connection resumes with `Last-Event-ID`
- a failed reply keeps the words already written

| Store | Feature | Survives a restart |
| --- | --- | --- |
| memory | always on | no |
| SQLite | `sqlite` | yes |
| PostgreSQL | `postgres` | yes |

```rust
let mut acc = Accumulator::new();
let mut deltas = provider.stream(ChatRequest::user("Hello"));
while let Some(delta) = deltas.next().await {
    acc.push(&delta?);
}
```
"#;

/// Splits `text` into pieces of about `n` bytes, on character boundaries.
fn pieces(text: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        cur.push(ch);
        if cur.len() >= n {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn markdown_script() -> Script {
    let mut s = Script::new()
        .per_delta_delay(Duration::from_millis(4))
        .reasoning("Answering in Markdown, with a tool call first.")
        .delta(Delta::ToolCall(ToolCallDelta {
            index: 0,
            id: Some("call_1".into()),
            name: Some("get_weather".into()),
            arguments: "{\"city\":".into(),
        }))
        .delta(Delta::ToolCall(ToolCallDelta {
            index: 0,
            arguments: "\"Paris\",\"unit\":\"C\"}".into(),
            ..ToolCallDelta::default()
        }));
    for piece in pieces(MARKDOWN, 7) {
        s = s.text(piece);
    }
    s.finish(FinishReason::Stop).usage(20, 200)
}

/// The long reply: sections of paragraphs and lists, about `ESSAY_TOKENS` tokens.
const ESSAY_TOKENS: usize = 5000;

fn essay() -> Vec<String> {
    let mut tokens = Vec::new();
    let mut section = 0;
    while tokens.len() < ESSAY_TOKENS {
        section += 1;
        tokens.push(format!("## Section {section}\n\n"));
        for para in 0..3 {
            for w in 0..40 {
                tokens.push(format!("word{section}x{para}x{w} "));
            }
            tokens.push("end.\n\n".into());
        }
        for item in 0..4 {
            tokens.push(format!("- item {section}.{item}\n"));
        }
        tokens.push("\n".into());
    }
    tokens
}

/// The page's provider: Markdown, the README's tour, a long reply and a reply that fails once,
/// by the prompt's first word; the offline demo (40 ms a word) for anything else.
#[derive(Debug)]
struct PageProvider {
    demo: DemoProvider,
    failed_once: AtomicBool,
}

impl LlmProvider for PageProvider {
    fn name(&self) -> &str {
        "page"
    }

    fn default_model(&self) -> &str {
        "page"
    }

    fn stream(&self, request: ChatRequest) -> DeltaStream {
        let prompt = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let script = if prompt.starts_with("markdown") {
            markdown_script()
        } else if prompt.starts_with("tour") {
            let mut s = Script::new().per_delta_delay(Duration::from_millis(4));
            for piece in pieces(TOUR, 7) {
                s = s.text(piece);
            }
            s.finish(FinishReason::Stop)
        } else if prompt.starts_with("essay") {
            let mut s = Script::new().per_delta_delay(Duration::from_millis(1));
            for t in essay() {
                s = s.text(t);
            }
            s.finish(FinishReason::Stop)
        } else if prompt.starts_with("flaky") && !self.failed_once.swap(true, Ordering::SeqCst) {
            Script::new().text("Half an ans").fail(|| Error::Truncated {
                provider: "page".into(),
            })
        } else {
            return self.demo.stream(request);
        };
        ScriptedProvider::new().then(script).stream(request)
    }
}

async fn serve() -> (String, ChatService) {
    let provider: DynLlmProvider = Arc::new(PageProvider {
        demo: DemoProvider::new().with_delay(Duration::from_millis(40)),
        failed_once: AtomicBool::new(false),
    });
    let service = ChatService::builder().provider(provider).build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app =
        chatstream::server::router(service.clone(), ServerOptions::default()).merge(page::routes());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service())
            .await
            .unwrap()
    });
    (format!("http://{addr}"), service)
}

/// Whether the browser is there; if not, says loudly that `test` was skipped.
fn have_browser(test: &str) -> bool {
    if Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists() {
        return true;
    }
    common::skip(
        &format!("the browser test {test}"),
        &format!(
            "{CHROMEDRIVER} or {CHROMIUM} is missing (apt-get install chromium chromium-driver)"
        ),
    );
    false
}

/// A server, a browser on its page, and the browser's driver, for one test.
struct Page {
    base: String,
    service: ChatService,
    c: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Page {
    async fn open() -> Page {
        let (base, service) = serve().await;
        let (driver, driver_url) = start_driver().await;
        let profile = tempfile::tempdir().unwrap();
        let c = browser(&driver_url, profile.path()).await;
        c.goto(&base).await.unwrap();
        // A first visit opens two windows, each on a new chat.
        wait_until(
            &c,
            "two chat windows",
            "document.querySelectorAll('.window').length === 2",
        )
        .await;
        Page {
            base,
            service,
            c,
            _driver: driver,
            _profile: profile,
        }
    }

    async fn close(self) {
        self.c.close().await.unwrap();
    }
}

/// Runs `script` (a JS expression) in the page until it returns true.
async fn wait_until(c: &Client, what: &str, script: &str) {
    for _ in 0..300 {
        // A script that throws (an element not there yet) counts as not yet.
        let v = c
            .execute(
                &format!("try {{ return Boolean({script}); }} catch (e) {{ return false; }}"),
                vec![],
            )
            .await
            .unwrap();
        if v == Value::Bool(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what} ({script})");
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(&format!("return {script};"), vec![])
        .await
        .unwrap()
}

async fn type_and_send(c: &Client, window: usize, text: &str) {
    let input = c
        .find(Locator::Css(&format!(
            ".window:nth-child({window}) textarea"
        )))
        .await
        .unwrap();
    input.send_keys(text).await.unwrap();
    input.send_keys(&Key::Enter.to_string()).await.unwrap();
}

fn screenshot_path() -> PathBuf {
    // The README's picture is refreshed on request; otherwise the shot goes to the temp dir.
    if std::env::var_os("CHATSTREAM_UPDATE_SCREENSHOT").is_some() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshot.png")
    } else {
        std::env::temp_dir().join("chatstream-screenshot.png")
    }
}

/// Like [`wait_until`], for up to `secs` seconds.
async fn wait_long(c: &Client, what: &str, script: &str, secs: u64) {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        let check = format!(
            "(() => {{ try {{ return Boolean({script}); }} catch (e) {{ return false; }} }})()"
        );
        if js(c, &check).await == Value::Bool(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {secs} s waiting for {what} ({script})");
}

/// Runs an asynchronous script whose result is what it passes to `done`.
async fn js_async(c: &Client, body: &str) -> Value {
    c.execute_async(
        &format!("const done = arguments[arguments.length - 1]; {body}"),
        vec![],
    )
    .await
    .unwrap()
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test]
async fn two_windows_stream_stop_reload_and_render_markup_as_text() {
    if !have_browser("two_windows_stream_stop_reload_and_render_markup_as_text") {
        return;
    }
    let page = Page::open().await;
    run(&page.c, &page.base).await;
    page.close().await;
}

async fn run(c: &Client, base: &str) {
    c.goto(base).await.unwrap();
    // A first visit opens two windows, each on a new chat.
    wait_until(
        c,
        "two chat windows",
        "document.querySelectorAll('.window').length === 2",
    )
    .await;

    type_and_send(c, 1, "Hello from the first window").await;
    let markup = "<img src=x onerror=alert(1)> <b>bold?</b>";
    type_and_send(c, 2, markup).await;
    wait_until(
        c,
        "both windows streaming at once",
        "document.querySelectorAll('.window.generating .msg.assistant.streaming').length === 2",
    )
    .await;
    wait_until(
        c,
        "text arriving in the second window",
        "document.querySelector('.window:nth-child(2) .msg.assistant .text').textContent.length > 0",
    )
    .await;
    c.find(Locator::Css(".window:nth-child(2) button.stop"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_until(
        c,
        "the second reply stopped",
        "document.querySelector('.window:nth-child(2) .msg.assistant .meta').textContent === 'stopped'",
    )
    .await;
    wait_until(
        c,
        "the first reply finished",
        "!document.querySelector('.window:nth-child(1) .msg.assistant').classList.contains('streaming')",
    )
    .await;
    let first = js(
        c,
        "document.querySelector('.window:nth-child(1) .msg.assistant .text').textContent",
    )
    .await;
    let expected = DemoProvider::reply_for(&chatstream::ChatRequest::user(
        "Hello from the first window",
    ));
    // Paragraphs become <p> elements, so compare without the whitespace between them.
    let squash = |s: &str| s.split_whitespace().collect::<String>();
    assert_eq!(squash(first.as_str().unwrap()), squash(&expected));
    let stopped = js(
        c,
        "document.querySelector('.window:nth-child(2) .msg.assistant .text').textContent",
    )
    .await;
    let stopped = stopped.as_str().unwrap().to_string();
    assert!(!stopped.is_empty());

    // Markup in a message and in a reply is shown as text: no element was created from it.
    let user_text = js(
        c,
        "document.querySelector('.window:nth-child(2) .msg.user').textContent",
    )
    .await;
    assert!(user_text.as_str().unwrap().contains(markup), "{user_text}");
    assert_eq!(
        js(
            c,
            "document.querySelectorAll('.messages img, .messages b').length"
        )
        .await,
        json!(0)
    );
    assert_eq!(
        js(
            c,
            "document.querySelectorAll('.window:nth-child(2) .msg.assistant .text p').length > 0"
        )
        .await,
        json!(true)
    );

    // After a reload both windows come back with their histories.
    c.refresh().await.unwrap();
    wait_until(
        c,
        "two windows after reload",
        "document.querySelectorAll('.window').length === 2",
    )
    .await;
    wait_until(
        c,
        "both histories loaded",
        "[...document.querySelectorAll('.window')].every(w => w.querySelectorAll('.msg').length === 2)",
    )
    .await;
    let reloaded = js(
        c,
        "document.querySelector('.window:nth-child(2) .msg.assistant .meta').textContent",
    )
    .await;
    assert_eq!(reloaded, json!("stopped"));
    let reloaded_text = js(
        c,
        "document.querySelector('.window:nth-child(2) .msg.assistant .text').textContent",
    )
    .await;
    assert_eq!(squash(reloaded_text.as_str().unwrap()), squash(&stopped));
    let first_again = js(
        c,
        "document.querySelector('.window:nth-child(1) .msg.assistant .text').textContent",
    )
    .await;
    assert_eq!(squash(first_again.as_str().unwrap()), squash(&expected));
}

/// What the first window's reply to [`MARKDOWN`] rendered as.
const RENDERED: &str = r#"(() => {
  const msg = document.querySelector('.window:nth-child(1) .msg.assistant');
  const t = msg.querySelector('.text');
  const link = t.querySelector('a[rel~=noopener]');
  return {
    h2: t.querySelector('h2') && t.querySelector('h2').textContent,
    items: [...t.querySelectorAll('li')].map((li) => li.textContent),
    inlineCode: [...t.querySelectorAll('li code')].map((c) => c.textContent),
    cells: [...t.querySelectorAll('table th, table td')].map((c) => c.textContent),
    link: link && { href: link.getAttribute('href'), rel: link.rel, target: link.target },
    hrefs: [...document.querySelectorAll('.messages a')].map((a) => a.getAttribute('href')),
    rust: [...t.querySelectorAll('pre code.hljs.language-rust')].map((c) => c.textContent),
    keywords: [...t.querySelectorAll('pre code .hljs-keyword')].map((k) => k.textContent),
    copyButtons: t.querySelectorAll('.code-block button.copy-code').length,
    images: [...document.querySelectorAll('.messages img')].map((i) => i.getAttribute('src').slice(0, 22)),
    scripts: document.querySelectorAll('.messages script').length,
    pwned: window.__pwned === undefined ? null : window.__pwned,
    text: t.textContent,
    fetched: performance.getEntriesByType('resource').map((e) => e.name).filter((n) => n.includes('pixel')),
    tool: msg.querySelector('.tool-call summary').textContent,
    args: msg.querySelector('.tool-call pre code').textContent,
    reasoning: msg.querySelector('details.reasoning').textContent,
  };
})()"#;

async fn check_markdown(c: &Client, when: &str) {
    let r = js(c, RENDERED).await;
    assert_eq!(r["h2"], "Streaming in Rust", "{when}: {r:#}");
    assert_eq!(
        r["items"],
        json!(["text comes as Delta::Text", "a stop closes the upstream"]),
        "{when}"
    );
    assert_eq!(r["inlineCode"], json!(["Delta::Text"]), "{when}");
    assert_eq!(
        r["cells"],
        json!(["Store", "Feature", "memory", "always", "SQLite", "sqlite"]),
        "{when}"
    );
    assert_eq!(
        r["link"],
        json!({"href": "https://docs.rs/chatstream", "rel": "noopener noreferrer nofollow", "target": "_blank"}),
        "{when}"
    );
    // Only the docs link and the remote picture (as a link, not fetched) are links; neither
    // javascript: URL became one.
    assert_eq!(
        r["hrefs"],
        json!(["https://docs.rs/chatstream", "http://127.0.0.1:9/pixel.png"]),
        "{when}"
    );
    let text = r["text"].as_str().unwrap();
    for literal in [
        "[this](javascript:window.__pwned=3)",
        "<javascript:window.__pwned=4>",
        r#"<img src=x onerror="window.__pwned=1">"#,
        "<script>window.__pwned=2</script>",
    ] {
        assert!(
            text.contains(literal),
            "{when}: {literal} is not shown as text"
        );
    }
    assert_eq!(r["scripts"], json!(0), "{when}");
    assert_eq!(r["pwned"], Value::Null, "{when}: markup in a reply ran");
    assert_eq!(r["images"], json!(["data:image/png;base64,"]), "{when}");
    assert_eq!(
        r["fetched"],
        json!([]),
        "{when}: a remote image was fetched"
    );
    assert_eq!(
        r["rust"],
        json!(["fn main() {\n    let answer = 42;\n    println!(\"{answer}\");\n}\n"]),
        "{when}"
    );
    assert_eq!(r["keywords"], json!(["fn", "let"]), "{when}");
    assert_eq!(r["copyButtons"], json!(1), "{when}");
    assert!(
        r["tool"].as_str().unwrap().contains("get_weather"),
        "{when}"
    );
    assert_eq!(
        r["args"], "{\n  \"city\": \"Paris\",\n  \"unit\": \"C\"\n}",
        "{when}"
    );
    assert!(
        r["reasoning"]
            .as_str()
            .unwrap()
            .contains("Answering in Markdown"),
        "{when}"
    );
}

/// axe-core's check of the whole page: no serious or critical violation.
async fn check_accessibility(c: &Client) {
    let axe =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web/node_modules/axe-core/axe.min.js");
    let Ok(source) = std::fs::read_to_string(&axe) else {
        common::skip(
            "the accessibility check",
            &format!("{} is missing (run `npm ci` in web/)", axe.display()),
        );
        return;
    };
    c.execute(&source, vec![]).await.unwrap();
    let violations = js_async(
        c,
        "axe.run(document, { resultTypes: ['violations'] }).then((r) => done(r.violations\
           .filter((v) => v.impact === 'serious' || v.impact === 'critical')\
           .map((v) => ({ id: v.id, impact: v.impact, help: v.help,\
                          nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ')) }))))\
         .catch((e) => done(String(e)));",
    )
    .await;
    assert_eq!(violations, json!([]), "axe-core: {violations:#}");
}

#[tokio::test]
async fn markdown_renders_as_elements_and_stays_safe_live_and_after_reload() {
    if !have_browser("markdown_renders_as_elements_and_stays_safe_live_and_after_reload") {
        return;
    }
    let page = Page::open().await;
    let c = &page.c;
    type_and_send(c, 1, "markdown, please").await;
    type_and_send(c, 2, "Show me some code").await;
    wait_until(
        c,
        "both replies finished",
        "document.querySelectorAll('.msg.assistant').length === 2 \
         && !document.querySelector('.msg.streaming')",
    )
    .await;
    check_markdown(c, "live").await;
    // Screen readers heard the reply, its code included, block by block as each was finished.
    let heard = js(
        c,
        "document.querySelector('.window:nth-child(1) [aria-live=polite]').textContent",
    )
    .await;
    let heard = heard.as_str().unwrap();
    for part in [
        "Streaming in Rust",
        "a stop closes the upstream",
        "Code: fn main()",
    ] {
        assert!(heard.contains(part), "{part:?} was not announced: {heard}");
    }
    // The demo's reply has a highlighted Rust block too.
    assert_eq!(
        js(
            c,
            "document.querySelectorAll('.window:nth-child(2) pre code.hljs.language-rust .hljs-keyword').length > 0"
        )
        .await,
        json!(true)
    );

    // A code block's button copies its code.
    click(c, ".window:nth-child(1) button.copy-code").await;
    wait_until(
        c,
        "the code copied",
        "document.querySelector('.window:nth-child(1) button.copy-code').textContent.startsWith('Copied')",
    )
    .await;

    check_accessibility(c).await;

    c.refresh().await.unwrap();
    wait_until(
        c,
        "both histories after reload",
        "document.querySelectorAll('.msg.assistant').length === 2",
    )
    .await;
    check_markdown(c, "after reload").await;

    // The README's picture: a tour of the Markdown beside the demo's code, its heading on top.
    c.set_window_size(1280, 960).await.unwrap();
    type_and_send(c, 1, "tour, please").await;
    wait_until(
        c,
        "the tour",
        "document.querySelectorAll('.window:nth-child(1) .msg.assistant').length === 2 \
         && !document.querySelector('.msg.streaming')",
    )
    .await;
    js(
        c,
        "(() => { const l = document.querySelector('.window:nth-child(1) .messages');\
           const h = [...l.querySelectorAll('h2')].pop(); l.scrollTop = h.offsetTop - 64;\
           document.activeElement.blur(); return true; })()",
    )
    .await;
    let shot = c.screenshot().await.unwrap();
    let path = screenshot_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&path, shot).unwrap();
    page.close().await;
}

#[tokio::test]
async fn scrolling_up_loads_older_pages_once_each_in_order() {
    if !have_browser("scrolling_up_loads_older_pages_once_each_in_order") {
        return;
    }
    let page = Page::open().await;
    let c = &page.c;
    let chat = ChatId::new("long-chat").unwrap();
    let store = page.service.store();
    store
        .create_chat(
            &UserId::anonymous(),
            Some(chat.clone()),
            Some("Long chat".into()),
        )
        .await
        .unwrap();
    let total = 150;
    for i in 0..total {
        let role = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        store
            .append(&Message::new(chat.clone(), role, format!("message {i}")))
            .await
            .unwrap();
    }
    c.refresh().await.unwrap();
    wait_until(
        c,
        "the chat listed",
        "document.querySelector('#chat-list option[value=\"long-chat\"]')",
    )
    .await;
    c.find(Locator::Css("#chat-list"))
        .await
        .unwrap()
        .select_by_value("long-chat")
        .await
        .unwrap();
    let list = "document.querySelector('.window[data-chat=\"long-chat\"] .messages')";
    let count = format!("{list}.querySelectorAll('.msg').length");
    let requests = "performance.getEntriesByType('resource').map((e) => e.name)\
                    .filter((n) => n.includes('/api/messages/long-chat'))";
    wait_until(c, "the newest page", &format!("{count} === 50")).await;
    // The chat opens on one page, whatever its length.
    assert_eq!(js(c, &format!("{requests}.length")).await, json!(1));
    assert_eq!(
        js(
            c,
            &format!("{list}.scrollHeight - {list}.scrollTop - {list}.clientHeight < 2")
        )
        .await,
        json!(true),
        "opens at the newest message"
    );

    for _ in 0..10 {
        // Scroll to the top; note where the oldest shown message is.
        let before = js(
            c,
            &format!(
                "(() => {{ const l = {list}; l.scrollTop = 0; const m = l.querySelector('.msg');\
                   return {{ count: l.querySelectorAll('.msg').length, id: m.dataset.id,\
                            top: m.getBoundingClientRect().top - l.getBoundingClientRect().top }}; }})()"
            ),
        )
        .await;
        let shown = before["count"].as_u64().unwrap();
        if shown == total {
            break;
        }
        wait_until(
            c,
            "an older page",
            &format!("{count} > {shown} && !{list}.querySelector('.history-edge').textContent.startsWith('Loading')"),
        )
        .await;
        // What was in view stays in view.
        let top = js(
            c,
            &format!(
                "(() => {{ const l = {list}; const m = l.querySelector('[data-id=\"{}\"]');\
                   return m.getBoundingClientRect().top - l.getBoundingClientRect().top; }})()",
                before["id"].as_str().unwrap()
            ),
        )
        .await;
        let moved = top.as_f64().unwrap() - before["top"].as_f64().unwrap();
        assert!(moved.abs() < 2.0, "the view jumped by {moved}px");
    }
    let texts = js(
        c,
        &format!("[...{list}.querySelectorAll('.msg .text')].map((t) => t.textContent.trim())"),
    )
    .await;
    let expected: Vec<String> = (0..total).map(|i| format!("message {i}")).collect();
    assert_eq!(texts, json!(expected), "every message once, in order");
    let urls = js(c, requests).await;
    let urls: Vec<&str> = urls
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(urls.len(), 3, "one request per page: {urls:?}");
    assert!(!urls[0].contains("before="), "{urls:?}");
    let cursors: std::collections::HashSet<_> = urls
        .iter()
        .filter_map(|u| u.split("before=").nth(1))
        .collect();
    assert_eq!(cursors.len(), 2, "each older page asked for once: {urls:?}");
    assert_eq!(
        js(
            c,
            &format!("{list}.querySelector('.history-edge').textContent")
        )
        .await,
        json!("Start of the chat")
    );
    page.close().await;
}

#[tokio::test]
async fn regenerate_supersedes_the_earlier_reply_and_a_failed_reply_offers_it() {
    if !have_browser("regenerate_supersedes_the_earlier_reply_and_a_failed_reply_offers_it") {
        return;
    }
    let page = Page::open().await;
    let c = &page.c;

    // Shift+Enter starts a new line, Enter sends, Escape stops.
    let input = c
        .find(Locator::Css(".window:nth-child(1) textarea"))
        .await
        .unwrap();
    input.send_keys("first line").await.unwrap();
    input
        .send_keys(&format!("{}{}{}", Key::Shift, Key::Enter, Key::Null))
        .await
        .unwrap();
    input.send_keys("second line").await.unwrap();
    input.send_keys(&Key::Enter.to_string()).await.unwrap();
    wait_until(
        c,
        "the reply streaming",
        "document.querySelector('.window:nth-child(1) .msg.assistant .text').textContent.length > 0",
    )
    .await;
    input.send_keys(&Key::Escape.to_string()).await.unwrap();
    wait_until(
        c,
        "the reply stopped by Escape",
        "document.querySelector('.window:nth-child(1) .msg.assistant .meta').textContent === 'stopped'",
    )
    .await;
    assert_eq!(
        js(
            c,
            "document.querySelector('.window:nth-child(1) .msg.user .text').textContent"
        )
        .await,
        json!("first line\nsecond line")
    );

    click(c, ".window:nth-child(1) button.regenerate:not([hidden])").await;
    let settled = "document.querySelectorAll('.window:nth-child(1) .msg.assistant').length === 2 \
                   && !document.querySelector('.window:nth-child(1) .msg.streaming')";
    wait_until(c, "the regenerated reply", settled).await;
    let shape = r#"(() => {
      const w = document.querySelector('.window:nth-child(1)');
      const replies = [...w.querySelectorAll('.msg.assistant')];
      return {
        users: w.querySelectorAll('.msg.user').length,
        superseded: replies.map((r) => r.classList.contains('superseded')),
        earlierShown: replies[0].querySelector('.text').offsetParent !== null,
        offered: replies.map((r) => !r.querySelector('.footer button.regenerate').hidden),
        meta: replies.map((r) => r.querySelector('.meta').textContent),
      };
    })()"#;
    let expected = json!({
        "users": 1,
        "superseded": [true, false],
        "earlierShown": false,
        "offered": [false, true],
        "meta": ["stopped", ""],
    });
    assert_eq!(js(c, shape).await, expected);
    // The server kept both replies to the one user message.
    let chat = js(
        c,
        "document.querySelector('.window:nth-child(1)').dataset.chat",
    )
    .await;
    let history = js_async(
        c,
        &format!(
            "fetch('/api/messages/{}').then((r) => r.json()).then(done);",
            chat.as_str().unwrap()
        ),
    )
    .await;
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
    assert_eq!(history[1]["replyTo"], history[0]["id"]);
    assert_eq!(history[2]["replyTo"], history[0]["id"]);
    // The earlier reply can still be read.
    click(
        c,
        ".window:nth-child(1) .msg.superseded .superseded-bar button",
    )
    .await;
    assert_eq!(
        js(
            c,
            "document.querySelector('.window:nth-child(1) .msg.superseded .text').offsetParent !== null"
        )
        .await,
        json!(true)
    );
    c.refresh().await.unwrap();
    wait_until(c, "the history after reload", settled).await;
    assert_eq!(js(c, shape).await, expected, "after reload");

    // A failed reply says so and offers to regenerate.
    type_and_send(c, 2, "flaky question").await;
    wait_until(
        c,
        "the reply failed",
        "document.querySelector('.window:nth-child(2) .msg.assistant .meta').textContent === 'failed'",
    )
    .await;
    let error = js(
        c,
        "document.querySelector('.window:nth-child(2) .msg.assistant .error').textContent",
    )
    .await;
    assert!(error.as_str().unwrap().contains("Regenerate"), "{error}");
    // A superseded reply beside a failed one.
    check_accessibility(c).await;
    click(c, ".window:nth-child(2) .error button.regenerate").await;
    wait_until(
        c,
        "the regenerated reply complete",
        "document.querySelectorAll('.window:nth-child(2) .msg.assistant').length === 2 \
         && !document.querySelector('.window:nth-child(2) .msg.streaming') \
         && document.querySelector('.window:nth-child(2) .msg.assistant:last-child .meta').textContent === ''",
    )
    .await;
    assert_eq!(
        js(
            c,
            "document.querySelectorAll('.window:nth-child(2) .msg.user').length"
        )
        .await,
        json!(1)
    );

    // Renaming a chat.
    click(c, ".window:nth-child(1) button.rename").await;
    let title = c
        .find(Locator::Css(".window:nth-child(1) .window-head input"))
        .await
        .unwrap();
    // The title is selected: typing replaces it.
    title
        .send_keys(&format!("Renamed chat{}", Key::Enter))
        .await
        .unwrap();
    wait_until(
        c,
        "the new title",
        "document.querySelector('.window:nth-child(1) h2').textContent === 'Renamed chat'",
    )
    .await;
    c.refresh().await.unwrap();
    wait_until(
        c,
        "the new title after reload",
        "document.querySelector('.window:nth-child(1) h2').textContent === 'Renamed chat'",
    )
    .await;

    // On a narrow screen the windows stack.
    let columns = "new Set([...document.querySelectorAll('.window')].map((w) => w.getBoundingClientRect().left)).size";
    assert_eq!(js(c, columns).await, json!(2));
    c.set_window_size(500, 900).await.unwrap();
    wait_until(c, "the windows stacked", &format!("{columns} === 1")).await;
    page.close().await;
}

#[tokio::test]
async fn a_five_thousand_token_reply_renders_once_per_frame_and_keeps_finished_blocks() {
    if !have_browser("a_five_thousand_token_reply_renders_once_per_frame_and_keeps_finished_blocks")
    {
        return;
    }
    let page = Page::open().await;
    let c = &page.c;
    // Counts frames, and the batches of changes to the window's messages.
    js(
        c,
        "(() => { window.__frames = 0; const tick = () => { window.__frames++; requestAnimationFrame(tick); };\
           requestAnimationFrame(tick); window.__batches = 0;\
           new MutationObserver(() => { window.__batches++; }).observe(\
             document.querySelector('.window:nth-child(1) .messages'),\
             { childList: true, subtree: true, characterData: true });\
           return true; })()",
    )
    .await;
    type_and_send(c, 1, "essay, please").await;
    // Once the second section is written, the first one's blocks are final.
    wait_long(
        c,
        "the second section",
        "document.querySelectorAll('.window:nth-child(1) .msg.assistant .text h2').length >= 2",
        60,
    )
    .await;
    js(
        c,
        "window.__firstP = document.querySelector('.window:nth-child(1) .msg.assistant .text p')",
    )
    .await;
    wait_long(
        c,
        "the long reply finished",
        "document.querySelector('.window:nth-child(1) .msg.assistant:not(.streaming)')",
        120,
    )
    .await;
    let tokens = essay();
    let sections = tokens.iter().filter(|t| t.starts_with("## ")).count();
    assert!(tokens.len() >= ESSAY_TOKENS);
    let r = js(
        c,
        "(() => { const t = document.querySelector('.window:nth-child(1) .msg.assistant .text');\
           return { h2: t.querySelectorAll('h2').length, p: t.querySelectorAll('p').length,\
                    li: t.querySelectorAll('li').length, kept: window.__firstP.isConnected,\
                    frames: window.__frames, batches: window.__batches }; })()",
    )
    .await;
    assert_eq!(r["h2"], json!(sections), "{r}");
    assert_eq!(r["p"], json!(sections * 3), "{r}");
    assert_eq!(r["li"], json!(sections * 4), "{r}");
    // Finished blocks are rendered once and kept, not rebuilt with every delta.
    assert_eq!(r["kept"], json!(true), "{r}");
    // The page changed at most once per frame, not once per delta (plus a few changes for the
    // user message and the start and end of the reply).
    let (frames, batches) = (
        r["frames"].as_u64().unwrap(),
        r["batches"].as_u64().unwrap(),
    );
    assert!(
        batches <= frames + 10,
        "{batches} batches of changes in {frames} frames"
    );
    assert!(
        batches < tokens.len() as u64 / 2,
        "{batches} batches of changes for {} deltas",
        tokens.len()
    );
    page.close().await;
}

/// The built `examples/react-chat` page (Vite's `dist/`): `index.html` at `/`, its assets under
/// `/assets/`. Three file types do not warrant tower-http's `fs` feature for one test.
fn react_chat_page(dist: PathBuf) -> axum::Router {
    use axum::{extract::Path as UrlPath, http::header, response::IntoResponse, routing::get};
    let index = std::fs::read_to_string(dist.join("index.html")).unwrap();
    let assets = dist.join("assets");
    axum::Router::new()
        .route(
            "/",
            get(move || {
                let index = index.clone();
                async move { axum::response::Html(index) }
            }),
        )
        .route(
            "/assets/{file}",
            get(move |UrlPath(file): UrlPath<String>| {
                let path = assets.join(&file);
                async move {
                    let kind = match path.extension().and_then(|e| e.to_str()) {
                        Some("js") => "text/javascript",
                        Some("css") => "text/css",
                        _ => "application/octet-stream",
                    };
                    match std::fs::read(&path) {
                        Ok(bytes) if !file.contains("..") => {
                            ([(header::CONTENT_TYPE, kind)], bytes).into_response()
                        }
                        _ => axum::http::StatusCode::NOT_FOUND.into_response(),
                    }
                }
            }),
        )
}

#[tokio::test]
async fn the_use_chat_example_sends_stops_reloads_and_resumes() {
    const TEST: &str = "the_use_chat_example_sends_stops_reloads_and_resumes";
    if !have_browser(TEST) {
        return;
    }
    let dist = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/react-chat/dist");
    if !dist.join("index.html").exists() {
        common::skip(
            &format!("the browser test {TEST}"),
            "examples/react-chat is not built (npm ci && npm run build there)",
        );
        return;
    }
    let words = |n: usize| (0..n).map(|i| format!("w{i} ")).collect::<Vec<_>>();
    let slow = |n: usize| {
        let mut s = Script::new().per_delta_delay(Duration::from_millis(40));
        for w in words(n) {
            s = s.text(w);
        }
        s.finish(FinishReason::Stop).usage(3, n as u64)
    };
    let provider = ScriptedProvider::new().then(slow(60)).then(slow(400));
    let service = ChatService::builder()
        .provider(Arc::new(provider))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = react_chat_page(dist).merge(chatstream::server::router(
        service.clone(),
        ServerOptions::default(),
    ));
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service())
            .await
            .unwrap()
    });
    let (_driver, driver_url) = start_driver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver_url, profile.path()).await;
    c.goto(&format!("{base}/?chat=react-1")).await.unwrap();
    let input = "document.querySelector('input[aria-label=Message]')";
    wait_until(&c, "the page", input).await;
    let reply = "document.querySelector('[data-role=assistant]:last-child')";
    let replies = "document.querySelectorAll('[data-role=assistant]').length";

    // Send, then reload in the middle of the reply: the page loads the history and resumes.
    let field = c
        .find(Locator::Css("input[aria-label=Message]"))
        .await
        .unwrap();
    field.send_keys("tell me a long story").await.unwrap();
    field.send_keys(&Key::Enter.to_string()).await.unwrap();
    wait_until(
        &c,
        "the reply streaming",
        &format!("{reply}.textContent.length > 20"),
    )
    .await;
    c.refresh().await.unwrap();
    // Reloaded while the reply is still live: only the resume can finish it on this page.
    wait_until(
        &c,
        "the reloaded page showing the live reply",
        &format!("{reply}.dataset.status === 'streaming'"),
    )
    .await;
    let full = words(60).concat();
    wait_long(
        &c,
        "the resumed reply, whole",
        &format!("{reply}.querySelector('.text').textContent === {full:?}"),
        20,
    )
    .await;
    assert_eq!(
        js(&c, replies).await,
        json!(1),
        "resumed in place, not added"
    );
    wait_until(
        &c,
        "the page ready again",
        "document.querySelector('[data-testid=status]').textContent === 'ready'",
    )
    .await;

    // Send, stop: the server stops the reply and saves it cancelled; a reload shows it so, and
    // finds nothing to resume.
    let field = c
        .find(Locator::Css("input[aria-label=Message]"))
        .await
        .unwrap();
    field.send_keys("and another").await.unwrap();
    field.send_keys(&Key::Enter.to_string()).await.unwrap();
    wait_until(
        &c,
        "the second reply streaming",
        &format!("{replies} === 2 && {reply}.textContent.length > 20"),
    )
    .await;
    c.find(Locator::XPath("//button[text()='Stop']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let chat = ChatKey::from("react-1".parse::<ChatId>().unwrap());
    for _ in 0..200 {
        if !service.hub().is_live(&chat).await.unwrap() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stored = service
        .store()
        .history(&chat, chatstream::store::HistoryPage::default())
        .await
        .unwrap();
    let stopped = stored.last().unwrap();
    assert_eq!(stopped.status, chatstream::MessageStatus::Cancelled);
    assert!(stopped.content.len() < words(400).concat().len());
    c.refresh().await.unwrap();
    wait_until(
        &c,
        "the stopped reply after a reload",
        &format!("{replies} === 2 && {reply}.dataset.status === 'cancelled'"),
    )
    .await;
    assert_eq!(
        js(&c, &format!("{reply}.querySelector('.text').textContent")).await,
        json!(stopped.content)
    );
    c.close().await.unwrap();
}

/// The page on a server with API keys: it asks for a key on the 401, signs in by cookie (an
/// `EventSource` cannot send a header), streams two windows, keeps the session over a reload,
/// and signs out. The cookie is out of the page's reach, and a request borne by it from another
/// origin is refused.
#[tokio::test]
async fn the_page_signs_in_by_cookie_streams_keeps_the_session_and_signs_out() {
    const TEST: &str = "the_page_signs_in_by_cookie_streams_keeps_the_session_and_signs_out";
    if !have_browser(TEST) {
        return;
    }
    let alice = chatstream::UserId::new("alice").unwrap();
    let key = chatstream::server::auth::NewApiKey::generate(alice.clone()).unwrap();
    let keys = chatstream::server::auth::ApiKeys::new().with_key(alice.clone(), key.key());
    let service = ChatService::builder()
        .provider(Arc::new(
            DemoProvider::new().with_delay(Duration::from_millis(40)),
        ))
        .build()
        .unwrap();
    let options = ServerOptions::default()
        .with_authenticator(Arc::new(keys))
        .with_session_cookie(
            chatstream::server::auth::SessionCookie::random()
                .unwrap()
                .with_secure(false),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = chatstream::server::router(service.clone(), options).merge(page::routes());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service())
            .await
            .unwrap()
    });
    let (_driver, driver_url) = start_driver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver_url, profile.path()).await;
    c.goto(&base).await.unwrap();

    // The first request met a 401: the sign-in form, and no window yet.
    wait_until(
        &c,
        "the sign-in form",
        "!document.getElementById('sign-in').hidden",
    )
    .await;
    assert_eq!(
        js(&c, "document.querySelectorAll('.window').length").await,
        json!(0)
    );
    check_accessibility(&c).await;
    let sign_in = async |token: &str| {
        let field = c.find(Locator::Css("#sign-in-token")).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(token).await.unwrap();
        field.send_keys(&Key::Enter.to_string()).await.unwrap();
    };
    sign_in("cs_not_a_key").await;
    wait_until(
        &c,
        "the refusal shown",
        "document.getElementById('sign-in-error').textContent.includes('unknown API key')",
    )
    .await;
    sign_in(key.key()).await;
    wait_until(
        &c,
        "two chat windows once signed in",
        "document.getElementById('sign-in').hidden && document.querySelectorAll('.window').length === 2",
    )
    .await;
    assert_eq!(
        js(&c, "document.getElementById('who').textContent").await,
        json!("Signed in as alice")
    );
    // The windows' chats are Alice's, and no one else's.
    let page = chatstream::store::ChatPage::default();
    let store = service.store();
    assert_eq!(store.list_chats(&alice, page).await.unwrap().len(), 2);
    let anonymous = chatstream::UserId::anonymous();
    assert!(store.list_chats(&anonymous, page).await.unwrap().is_empty());
    // HttpOnly: the page's script cannot read the session, nor did it keep the key.
    assert_eq!(js(&c, "document.cookie").await, json!(""));
    assert_eq!(
        js(&c, "JSON.stringify(localStorage).includes('cs_')").await,
        json!(false)
    );

    // Both windows stream at once, their event streams authenticated by the cookie.
    type_and_send(&c, 1, "Hello from the first window").await;
    type_and_send(&c, 2, "Hello from the second window").await;
    wait_until(
        &c,
        "both windows streaming at once",
        "document.querySelectorAll('.window.generating .msg.assistant.streaming').length === 2",
    )
    .await;
    wait_long(
        &c,
        "both replies finished",
        "document.querySelectorAll('.msg.assistant.streaming').length === 0 \
         && document.querySelectorAll('.msg.assistant').length === 2",
        30,
    )
    .await;

    // A reload keeps the session: the windows and their histories come back, no sign-in.
    c.refresh().await.unwrap();
    wait_until(
        &c,
        "both histories after a reload",
        "document.querySelectorAll('.window').length === 2 && [...document.querySelectorAll('.window')].every(w => w.querySelectorAll('.msg').length === 2)",
    )
    .await;
    assert_eq!(
        js(&c, "document.getElementById('sign-in').hidden").await,
        json!(true)
    );

    // The cookie the browser holds: HttpOnly, SameSite=Strict, for the whole host.
    let cookie = c
        .get_named_cookie("chatstream_session")
        .await
        .expect("the session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(
        cookie.same_site().map(|s| s.to_string()),
        Some("Strict".into())
    );
    assert_eq!(cookie.path(), Some("/"));
    assert!(!cookie.value().contains("alice"), "the value is encrypted");
    // Borne by that cookie, a change from another origin is refused, one from the page is not.
    let http = reqwest::Client::new();
    let cookie_header = format!("chatstream_session={}", cookie.value());
    let create = |origin: Option<&str>| {
        let mut request = http
            .post(format!("{base}/api/chats"))
            .header("cookie", &cookie_header)
            .json(&json!({}));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let foreign = create(Some("http://evil.example")).await.unwrap();
    assert_eq!(foreign.status(), 403);
    let body: Value = foreign.json().await.unwrap();
    assert_eq!(body["error"]["code"], "cross_origin");
    assert_eq!(
        create(None).await.unwrap().status(),
        403,
        "no Origin at all"
    );
    assert_eq!(create(Some(&base)).await.unwrap().status(), 201);

    // Signing out clears the cookie: the page asks for a key again, and the API answers 401.
    click(&c, "#sign-out").await;
    wait_until(
        &c,
        "the sign-in form after signing out",
        "!document.getElementById('sign-in').hidden",
    )
    .await;
    assert!(c.get_named_cookie("chatstream_session").await.is_err());
    let status = js_async(
        &c,
        "fetch('/api/chats').then((r) => done(r.status)).catch((e) => done(String(e)));",
    )
    .await;
    assert_eq!(status, json!(401));
    c.close().await.unwrap();
}

#[tokio::test]
async fn images_are_attached_by_picker_paste_and_drop_shown_and_kept_in_history() {
    if !have_browser("images_are_attached_by_picker_paste_and_drop_shown_and_kept_in_history") {
        return;
    }
    let page = Page::open().await;
    let c = &page.c;
    const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
    let window = ".window:nth-child(1)";

    // The picker: a file given to the (hidden) file input.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dot.png");
    let bytes: Vec<u8> = js(
        c,
        &format!("Array.from(atob('{PNG}'), (ch) => ch.charCodeAt(0))"),
    )
    .await
    .as_array()
    .unwrap()
    .iter()
    .map(|b| b.as_u64().unwrap() as u8)
    .collect();
    std::fs::write(&file, bytes).unwrap();
    c.find(Locator::Css(&format!("{window} input[type=file]")))
        .await
        .unwrap()
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    wait_until(
        c,
        "a thumbnail of the picked image",
        &format!("document.querySelectorAll('{window} .thumbs img').length === 1"),
    )
    .await;

    // Paste and drop: the events a browser fires, with a PNG file and a text file.
    let fire = |event: &str, target: &str, file_name: &str, kind: &str| {
        format!(
            r#"(() => {{
              const bytes = Uint8Array.from(atob('{PNG}'), (ch) => ch.charCodeAt(0));
              const dt = new DataTransfer();
              dt.items.add(new File([bytes], '{file_name}', {{ type: '{kind}' }}));
              const target = document.querySelector('{window} {target}');
              const e = '{event}' === 'paste'
                ? new ClipboardEvent('paste', {{ clipboardData: dt, bubbles: true, cancelable: true }})
                : new DragEvent('drop', {{ dataTransfer: dt, bubbles: true, cancelable: true }});
              target.dispatchEvent(e);
              return true;
            }})()"#
        )
    };
    js(c, &fire("paste", "textarea", "pasted.png", "image/png")).await;
    wait_until(
        c,
        "a thumbnail of the pasted image",
        &format!("document.querySelectorAll('{window} .thumbs img').length === 2"),
    )
    .await;
    js(c, &fire("drop", ".messages", "notes.txt", "text/plain")).await;
    wait_until(
        c,
        "a text file refused",
        &format!(
            "document.querySelector('{window} .notice').textContent.includes('not a PNG, JPEG, GIF or WebP')"
        ),
    )
    .await;
    js(c, &fire("drop", ".messages", "dropped.png", "image/png")).await;
    wait_until(
        c,
        "a thumbnail of the dropped image",
        &format!("document.querySelectorAll('{window} .thumbs img').length === 3"),
    )
    .await;
    // One removed before sending.
    click(
        c,
        &format!("{window} .thumbs figure:nth-child(2) button.remove"),
    )
    .await;
    assert_eq!(
        js(
            c,
            &format!("[...document.querySelectorAll('{window} .thumbs img')].map((i) => i.alt)")
        )
        .await,
        json!(["dot.png", "dropped.png"])
    );

    type_and_send(c, 1, "What are these?").await;
    let shown = format!(
        "document.querySelectorAll('{window} .msg.user .images img[src^=\"data:image/png;base64,\"]').length === 2 \
         && document.querySelector('{window} .thumbs').hidden \
         && !document.querySelector('{window} .msg.streaming') \
         && document.querySelector('{window} .msg.assistant')"
    );
    wait_until(c, "the sent images in the chat", &shown).await;
    let chat = js(
        c,
        &format!("document.querySelector('{window}').dataset.chat"),
    )
    .await;
    let history = js_async(
        c,
        &format!(
            "fetch('/api/messages/{}').then((r) => r.json()).then(done);",
            chat.as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        history[0]["parts"],
        json!([
            {"type": "text", "text": "What are these?"},
            {"type": "imageBase64", "mediaType": "image/png", "data": PNG},
            {"type": "imageBase64", "mediaType": "image/png", "data": PNG},
        ])
    );

    // After a reload, history shows them again, after the text.
    c.refresh().await.unwrap();
    wait_until(c, "the images after a reload", &shown).await;
    assert_eq!(
        js(
            c,
            &format!(
                "[...document.querySelector('{window} .msg.user .body').children].map((e) => e.className)"
            )
        )
        .await,
        json!(["text", "images", "footer"])
    );
    page.close().await;
}
