//! A server that stops (aborted, killed with SIGKILL, or stopped by SIGTERM) and one started
//! again on the same database: what was stored survives, and a reply cut short is interrupted.

use std::{sync::Arc, time::Duration};

use chatstream::{ChatRequest, DynLlmProvider, provider::DemoProvider};
use futures::StreamExt;

use crate::support::*;

#[tokio::test]
async fn a_restart_on_the_same_sqlite_file_keeps_history() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("chat.db").display());
    a_restart_keeps_history(&url).await;
}

/// A second server on the database of a first one serves the first one's history.
pub(crate) async fn a_restart_keeps_history(url: &str) {
    let demo: DynLlmProvider = Arc::new(DemoProvider::new().with_delay(Duration::ZERO));
    let first = serve_on(
        demo.clone(),
        chatstream::store::open(url).await.unwrap(),
        ServerOptions::default(),
    )
    .await;
    assert_eq!(first.send("kept", "remember me", None).await.status(), 202);
    let before = first.settled_history("kept").await;
    first.task.abort();
    let second = serve_on(
        demo,
        chatstream::store::open(url).await.unwrap(),
        ServerOptions::default(),
    )
    .await;
    let after = second.history("kept").await;
    assert_eq!(after, before);
    assert_eq!(after[0]["content"], "remember me");
}

#[tokio::test]
async fn a_killed_server_leaves_the_reply_interrupted_with_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("chat.db").display());
    a_killed_server_leaves_its_reply_interrupted(&url).await;
}

/// The server's binary on `url`, killed mid-reply, then started again on the same database.
pub(crate) async fn a_killed_server_leaves_its_reply_interrupted(url: &str) {
    let mut p = start_server(url, &[]);
    let s = p.server();
    assert_eq!(
        s.send("crash", "please write a long answer", None)
            .await
            .status(),
        202
    );
    let mut events = Box::pin(sse_events(s.stream("crash", None).await));
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|e: &&Sse| e.event == "delta" && e.data["type"] == "text")
        .count()
        < 12
    {
        seen.push(events.next().await.unwrap());
    }
    // Past at least one checkpoint interval (250 ms) of the demo's 30 ms tokens.
    tokio::time::sleep(Duration::from_millis(400)).await;
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    drop(events);

    let p2 = start_server(url, &[]);
    let history = p2.server().history("crash").await;
    let reply = &history[1];
    assert_eq!(reply["status"], "interrupted");
    let content = reply["content"].as_str().unwrap();
    let full = DemoProvider::reply_for(&ChatRequest::user("please write a long answer"));
    assert!(
        content.len() >= text_of(&seen).len(),
        "the checkpoint holds what was streamed before"
    );
    assert!(
        full.starts_with(content) && content.len() < full.len(),
        "{content:?}"
    );
}

#[tokio::test]
async fn sigterm_stops_gracefully_and_persists_live_replies() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("chat.db").display());
    let mut p = start_server(&url, &[("CHATSTREAM_SHUTDOWN_GRACE_SECS", "0")]);
    let s = p.server();
    assert_eq!(
        s.send("term", "a long reply please", None).await.status(),
        202
    );
    let mut events = Box::pin(sse_events(s.stream("term", None).await));
    while events.next().await.unwrap().data["type"] != "text" {}
    let pid = p.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // The open event stream ends with the reply's end, and the process exits by itself.
    let rest: Vec<Sse> = events.collect().await;
    assert_eq!(rest.last().unwrap().data["status"], "interrupted");
    let status = p.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let p2 = start_server(&url, &[]);
    let history = p2.server().history("term").await;
    assert_eq!(history[1]["status"], "interrupted");
    assert!(!history[1]["content"].as_str().unwrap().is_empty());
}
