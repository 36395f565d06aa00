//! The CLI example, driven as a user drives it: as a process (non-interactive mode) against a
//! wiremock OpenAI-compatible upstream, and in a pseudo-terminal (interactive mode) against a tiny
//! SSE server that streams slowly and notices when the client hangs up.
//!
//! The example binary is built once per test run by `cargo build --example cli` (the cargo that
//! runs the tests, the same profile, target directory and manifest); its path is read from
//! cargo's JSON messages rather than guessed, so a custom `CARGO_TARGET_DIR` or `--release` works.
//! Every test has its own temporary directory: the SQLite file (`CHATSTREAM_DATABASE_URL`), the
//! data directory (`XDG_DATA_HOME`, for line history and the remembered chat) and `HOME`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex, OnceLock, mpsc},
    thread,
    time::Duration,
};

use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

const TEXT_SSE: &str = include_str!("data/fixtures/openai/text.sse");
const TEXT_REPLY: &str = "Streaming lets the user see the reply as it is written.";
/// How long any one expected output may take: generous, for a loaded 2-core machine.
const EXPECT_TIMEOUT_MS: u64 = 60_000;

/// The path of the example binary, built on first use.
fn cli_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--example",
                "cli",
                "--message-format=json-render-diagnostics",
            ])
            .stderr(Stdio::inherit());
        // Cargo gives the test process this package's variables; build scripts that watch them
        // (ring's does) would see them change and rebuild, here and again in the next `cargo test`.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_MANIFEST_LINKS",
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                    "OUT_DIR",
                ]
                .contains(&name.as_ref())
            {
                command.env_remove(name.as_ref());
            }
        }
        if !cfg!(debug_assertions) {
            command.arg("--release");
        }
        let output = command.output().expect("cargo runs");
        assert!(output.status.success(), "cargo build --example cli failed");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "cli")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reports the example's executable")
    })
}

/// One test's world: its own store, data directory and upstream.
struct Sandbox {
    dir: tempfile::TempDir,
    upstream: String,
}

impl Sandbox {
    fn new(upstream: impl Into<String>) -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
            upstream: upstream.into(),
        }
    }

    fn command(&self) -> Command {
        let home = self.dir.path();
        let mut command = Command::new(cli_binary());
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("XDG_DATA_HOME", home.join("data"))
            .env(
                "CHATSTREAM_DATABASE_URL",
                format!("sqlite://{}", home.join("chats.db").display()),
            )
            .env("OPENAI_BASE_URL", &self.upstream)
            .env("OPENAI_API_KEY", "sk-test")
            .current_dir(home);
        command
    }
}

/// What a finished non-interactive run printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run(mut command: Command, stdin: Option<&str>) -> Run {
    let mut command =
        tokio::process::Command::from(std::mem::replace(&mut command, Command::new("unused")));
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the cli starts");
    if let Some(text) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let output = tokio::time::timeout(
        Duration::from_millis(EXPECT_TIMEOUT_MS),
        child.wait_with_output(),
    )
    .await
    .expect("the cli finishes")
    .expect("the cli runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn upstream_with(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(template)
        .mount(&server)
        .await;
    server
}

fn sse(body: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body.to_owned(), "text/event-stream")
}

/// The `messages` of every request the upstream got, as `(role, content)` pairs.
async fn sent_messages(server: &MockServer) -> Vec<Vec<(String, String)>> {
    server
        .received_requests()
        .await
        .expect("recording is on")
        .iter()
        .map(|r| messages_of(&r.body))
        .collect()
}

fn messages_of(body: &[u8]) -> Vec<(String, String)> {
    let body: Value = serde_json::from_slice(body).expect("a JSON request body");
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or_default().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn pair(role: &str, content: &str) -> (String, String) {
    (role.to_owned(), content.to_owned())
}

#[tokio::test]
async fn a_prompt_argument_prints_only_the_reply() {
    let server = upstream_with(sse(TEXT_SSE)).await;
    let sandbox = Sandbox::new(server.uri());
    let mut command = sandbox.command();
    command.args(["Why", "stream?"]);
    let out = run(command, None).await;
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, format!("{TEXT_REPLY}\n"));
    assert_eq!(out.stderr, "");
    assert_eq!(
        sent_messages(&server).await,
        [vec![pair("user", "Why stream?")]]
    );
}

#[tokio::test]
async fn a_prompt_on_standard_input_is_sent() {
    let server = upstream_with(sse(TEXT_SSE)).await;
    let sandbox = Sandbox::new(server.uri());
    let out = run(sandbox.command(), Some("Summarise this\nplease\n")).await;
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, format!("{TEXT_REPLY}\n"));
    assert_eq!(
        sent_messages(&server).await,
        [vec![pair("user", "Summarise this\nplease\n")]]
    );
}

#[tokio::test]
async fn an_upstream_error_exits_non_zero_with_one_line_on_stderr() {
    let server = upstream_with(ResponseTemplate::new(401).set_body_json(json!({
        "error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}
    })))
    .await;
    let sandbox = Sandbox::new(server.uri());
    let mut command = sandbox.command();
    command.arg("Hello");
    let out = run(command, None).await;
    assert_eq!(out.code, Some(1));
    assert_eq!(out.stdout, "");
    assert!(out.stderr.starts_with("error: "), "{:?}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{:?}", out.stderr);
    assert!(out.stderr.contains("401"), "{:?}", out.stderr);
    // Not retried: an authentication error is permanent.
    assert_eq!(sent_messages(&server).await.len(), 1);
}

#[tokio::test]
async fn json_prints_the_final_message() {
    let server = upstream_with(sse(TEXT_SSE)).await;
    let sandbox = Sandbox::new(server.uri());
    let mut command = sandbox.command();
    command.args(["--json", "--chat", "json-chat", "Why stream?"]);
    let out = run(command, None).await;
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 1, "{:?}", out.stdout);
    let message: Value = serde_json::from_str(&out.stdout).expect("one JSON message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["status"], "complete");
    assert_eq!(message["chatId"], "json-chat");
    assert_eq!(message["content"], TEXT_REPLY);
    assert_eq!(message["finishReason"], "stop");
    assert_eq!(message["usage"]["outputTokens"], 13);
}

#[tokio::test]
async fn a_chat_continues_across_runs() {
    let server = upstream_with(sse(TEXT_SSE)).await;
    let sandbox = Sandbox::new(server.uri());
    for prompt in ["First question", "Second question"] {
        let mut command = sandbox.command();
        command.args(["--chat", "ongoing", prompt]);
        let out = run(command, None).await;
        assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    }
    // A run without --chat starts afresh.
    let mut command = sandbox.command();
    command.arg("Unrelated");
    assert_eq!(run(command, None).await.code, Some(0));
    assert_eq!(
        sent_messages(&server).await,
        [
            vec![pair("user", "First question")],
            vec![
                pair("user", "First question"),
                pair("assistant", TEXT_REPLY),
                pair("user", "Second question"),
            ],
            vec![pair("user", "Unrelated")],
        ]
    );
}

/// A raw OpenAI-compatible SSE server on a thread. The first request it gets (when `slow_first`)
/// is answered with "Partial answer" and then one more word every 50 ms, without end, until the
/// client closes the connection, which it reports; every other request gets a quick reply
/// naming how many requests came before. Hand-written: wiremock can delay a body but cannot
/// trickle one out or tell when the client hung up.
struct SlowUpstream {
    url: String,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    closed: mpsc::Receiver<()>,
}

impl SlowUpstream {
    fn start(slow_first: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (closed_tx, closed) = mpsc::channel();
        let recorded = bodies.clone();
        thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let recorded = recorded.clone();
                let closed_tx = closed_tx.clone();
                thread::spawn(move || {
                    serve(stream, n, slow_first && n == 0, &recorded, &closed_tx)
                });
            }
        });
        SlowUpstream {
            url,
            bodies,
            closed,
        }
    }

    fn requests(&self) -> Vec<Vec<(String, String)>> {
        self.bodies
            .lock()
            .expect("lock")
            .iter()
            .map(|b| messages_of(b))
            .collect()
    }
}

fn chunk(text: &str) -> String {
    let data =
        json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    format!("data: {data}\n\n")
}

fn serve(
    stream: TcpStream,
    n: usize,
    slow: bool,
    bodies: &Mutex<Vec<Vec<u8>>>,
    closed: &mpsc::Sender<()>,
) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    bodies.lock().expect("lock").push(body);
    let mut out = stream;
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    if !slow {
        let finish = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        let body = format!(
            "{}{}data: {finish}\n\ndata: [DONE]\n\n",
            chunk("Reply number "),
            chunk(&format!("{}.", n + 1))
        );
        let _ = out.write_all(body.as_bytes());
        return;
    }
    let _ = out.write_all(chunk("Partial answer").as_bytes());
    // Bounded: at most a minute of words, then it gives up without reporting a close.
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut probe = [0u8; 64];
    for _ in 0..1200 {
        match reader.get_mut().read(&mut probe) {
            Ok(0) => {
                let _ = closed.send(());
                return;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                let _ = closed.send(());
                return;
            }
        }
        if out.write_all(chunk(" more").as_bytes()).is_err() {
            let _ = closed.send(());
            return;
        }
    }
}

#[test]
fn ctrl_c_in_a_pipeline_stops_the_reply_and_exits_130() {
    let upstream = SlowUpstream::start(true);
    let sandbox = Sandbox::new(upstream.url.clone());
    let mut command = sandbox.command();
    command
        .args(["--chat", "piped", "Tell me a long story"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("the cli starts");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("Partial answer") {
        assert_eq!(
            stdout.read(&mut byte).expect("read"),
            1,
            "the reply streams"
        );
        seen.push(byte[0]);
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    upstream
        .closed
        .recv_timeout(Duration::from_millis(EXPECT_TIMEOUT_MS))
        .expect("the upstream connection is closed");
    let status = child.wait().expect("the cli exits");
    assert_eq!(status.code(), Some(130));

    // The partial reply was kept: it is context for the chat's next message.
    let mut command = sandbox.command();
    command.args(["--chat", "piped", "Go on"]);
    let out = command.output().expect("the cli runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Reply number 2.\n");
    let requests = upstream.requests();
    assert_eq!(requests[1].len(), 3, "{:?}", requests[1]);
    assert!(requests[1][1].1.starts_with("Partial answer"));
}

fn spawn_pty(sandbox: &Sandbox, args: &[&str]) -> rexpect::session::PtySession {
    let mut command = sandbox.command();
    command.args(args).env("TERM", "xterm").env("NO_COLOR", "1");
    rexpect::session::spawn_with_options(
        command,
        rexpect::reader::Options::new()
            .timeout_ms(Some(EXPECT_TIMEOUT_MS))
            .strip_ansi_escape_codes(true),
    )
    .expect("the cli starts in a pseudo-terminal")
}

const PROMPT: &str = "you> ";

#[test]
fn ctrl_c_stops_a_reply_keeps_it_and_the_next_prompt_works() {
    let upstream = SlowUpstream::start(true);
    let sandbox = Sandbox::new(upstream.url.clone());
    let mut p = spawn_pty(&sandbox, &[]);
    p.exp_string(PROMPT).expect("a prompt");
    p.send_line("Tell me a long story").expect("type");
    // The reply streams: its first words show while the upstream is still writing.
    p.exp_string("Partial answer more")
        .expect("the reply streams");
    p.send_control('c').expect("Ctrl-C");
    upstream
        .closed
        .recv_timeout(Duration::from_millis(EXPECT_TIMEOUT_MS))
        .expect("the upstream connection is closed");
    p.exp_string("[stopped]")
        .expect("the reply is marked stopped");
    p.exp_string(PROMPT).expect("the prompt is back");

    p.send_line("Go on").expect("type");
    p.exp_string("Reply number 2.").expect("the next reply");
    p.exp_string(PROMPT).expect("a prompt");
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    let context = &requests[1];
    assert_eq!(context.len(), 3, "{context:?}");
    assert_eq!(context[0], pair("user", "Tell me a long story"));
    assert_eq!(context[1].0, "assistant");
    assert!(
        context[1].1.starts_with("Partial answer more"),
        "the stopped partial reply is context: {:?}",
        context[1].1
    );
    assert_eq!(context[2], pair("user", "Go on"));

    p.send_line("/history").expect("type");
    p.exp_string("[cancelled]")
        .expect("the stopped reply is stored as cancelled");
    p.exp_string("Reply number 2.").expect("and the next one");
    p.exp_string(PROMPT).expect("a prompt");
    p.send_control('d').expect("Ctrl-D");
    p.exp_eof().expect("Ctrl-D at an empty prompt leaves");
}

#[test]
fn chats_can_be_created_listed_switched_and_shown() {
    let upstream = SlowUpstream::start(false);
    let sandbox = Sandbox::new(upstream.url.clone());
    let mut p = spawn_pty(&sandbox, &[]);
    let (_, banner) = p
        .exp_regex(r"chat [0-9a-f]{32} \(new\)")
        .expect("the banner names a new chat");
    let first = banner[5..37].to_owned();
    p.exp_string(PROMPT).expect("a prompt");
    p.send_line("Hello first").expect("type");
    p.exp_string("Reply number 1.").expect("a reply");
    p.exp_string(PROMPT).expect("a prompt");

    p.send_line("/new Holiday plans").expect("type");
    let (_, line) = p
        .exp_regex(r#"chat [0-9a-f]{32} "Holiday plans" \(new\)"#)
        .expect("a new chat");
    let second = line[5..37].to_owned();
    assert_ne!(first, second);
    p.exp_string(PROMPT).expect("a prompt");
    p.send_line("Hello second").expect("type");
    p.exp_string("Reply number 2.").expect("a reply");
    p.exp_string(PROMPT).expect("a prompt");

    p.send_line("/list").expect("type");
    p.exp_string(&format!("*  1. {second}  Holiday plans"))
        .expect("the current chat first");
    p.exp_string(&format!("   2. {first}  (untitled)"))
        .expect("then the older one");
    p.exp_string(PROMPT).expect("a prompt");

    p.send_line("/switch 2").expect("type");
    p.exp_string(&format!("chat {first} (2 messages"))
        .expect("switched to the first chat");
    p.exp_string(PROMPT).expect("a prompt");
    p.send_line("/history").expect("type");
    p.exp_string("you: Hello first").expect("its user message");
    p.exp_string("assistant: Reply number 1.")
        .expect("its reply");
    p.exp_string(PROMPT).expect("a prompt");
    p.send_line("Back again").expect("type");
    p.exp_string("Reply number 3.").expect("a reply");
    p.exp_string(PROMPT).expect("a prompt");
    p.send_line("/retry").expect("type");
    p.exp_string("Reply number 4.")
        .expect("a regenerated reply");
    p.exp_string(PROMPT).expect("a prompt");

    p.send_line(&format!("/switch {}", &second[..12]))
        .expect("type");
    p.exp_string(&format!("chat {second} \"Holiday plans\" (2 messages"))
        .expect("switched by a prefix of the id");
    p.exp_string(PROMPT).expect("a prompt");
    p.send_line("/bogus").expect("type");
    p.exp_string("error: unknown command /bogus")
        .expect("one error line");
    p.exp_string(PROMPT).expect("and the session goes on");
    p.send_control('c').expect("Ctrl-C");
    p.exp_eof().expect("Ctrl-C at an empty prompt leaves");

    // Each chat's requests carried only its own messages.
    let requests = upstream.requests();
    assert_eq!(requests[1], [pair("user", "Hello second")]);
    assert_eq!(
        requests[2],
        [
            pair("user", "Hello first"),
            pair("assistant", "Reply number 1."),
            pair("user", "Back again"),
        ]
    );
    // /retry asked again without the reply it replaces.
    assert_eq!(requests[3], requests[2]);

    // The next interactive run continues the chat this one was in.
    let mut p = spawn_pty(&sandbox, &[]);
    p.exp_string(&format!("chat {second} \"Holiday plans\" (2 messages"))
        .expect("the last chat is remembered");
    p.exp_string(PROMPT).expect("a prompt");
    p.send_line("/quit").expect("type");
    p.exp_eof().expect("/quit leaves");
}
