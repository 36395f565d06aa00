//! The web page in a real browser: headless Chromium driven through chromedriver (WebDriver).
//!
//! Needs `chromium` and `chromium-driver` (Debian packages; `.ci/run` installs them). Without
//! chromedriver on the machine the test prints that it was SKIPPED and passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The example is a binary: its modules are compiled into this target.
include!("../examples/server/embed.rs");

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use chatstream::{ChatService, DynProvider, LlmProvider, provider::DemoProvider};
use fantoccini::{Client, ClientBuilder, Locator, key::Key};
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
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

async fn serve() -> String {
    let provider: DynProvider = Arc::new(DemoProvider::new().with_delay(Duration::from_millis(40)));
    let service = ChatService::builder()
        .provider(provider.clone())
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = app::AppState {
        service,
        model: provider.default_model().to_string(),
        provider,
        config: Arc::new(config::Config::default()),
    };
    tokio::spawn(async move {
        axum::serve(listener, app::app(state).into_make_service())
            .await
            .unwrap()
    });
    format!("http://{addr}")
}

/// Runs `script` (a JS expression) in the page until it returns true.
async fn wait_until(c: &Client, what: &str, script: &str) {
    for _ in 0..300 {
        let v = c
            .execute(&format!("return Boolean({script});"), vec![])
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
    // The README's picture is refreshed on request; otherwise the shot goes under target/.
    if std::env::var_os("CHATSTREAM_UPDATE_SCREENSHOT").is_some() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshot.png")
    } else {
        std::env::temp_dir().join("chatstream-screenshot.png")
    }
}

#[tokio::test]
async fn two_windows_stream_stop_reload_and_render_markup_as_text() {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        common::skip(
            "the browser test",
            &format!(
                "{CHROMEDRIVER} or {CHROMIUM} is missing (apt-get install chromium chromium-driver)"
            ),
        );
        return;
    }
    let base = serve().await;
    let (_driver, driver_url) = start_driver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver_url, profile.path()).await;
    let result = run(&c, &base).await;
    c.close().await.unwrap();
    result
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

    let shot = c.screenshot().await.unwrap();
    let path = screenshot_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&path, shot).unwrap();

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
