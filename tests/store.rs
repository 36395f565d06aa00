//! The message stores: one conformance suite run unchanged against every backend, two stores on
//! one database, and `store::open`'s URL handling.
//!
//! PostgreSQL tests need `CHATSTREAM_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`); each test works in a schema of its own, dropped
//! at the end, even when the test fails. Without the variable they say loudly that they skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{path::Path, sync::Arc};

use chatstream::{
    ChatId, Error, Message, MessageStore,
    store::{
        self, DynMessageStore, HistoryPage, MemoryStore, PostgresStore, SqliteStore, conformance,
    },
};
use common::with_postgres;

/// Everything the suite has, on one store.
async fn suite(store: DynMessageStore) {
    conformance::run_all(&*store).await;
    conformance::idempotent_append_spawned(store).await;
}

/// The SQL backends store a turn in one transaction: when the reply cannot be stored, neither is
/// the user message, nor the chat the turn would have created. (The trait's default, which the
/// memory store uses, makes no such promise.)
async fn turn_is_all_or_nothing(store: &dyn MessageStore) {
    let b = store.backend();
    let chat = store.create_chat(None, None).await.unwrap();
    let earlier = Message::user(chat.id.clone(), "earlier");
    store.append(&earlier).await.unwrap();
    for chat_id in [chat.id.clone(), ChatId::generate()] {
        let user = Message::user(chat_id.clone(), "lost with its reply");
        let mut reply = Message::assistant_streaming(chat_id.clone()).replying_to(user.id);
        reply.id = earlier.id; // taken: the reply's insert fails
        match store.append_turn(&user, &reply).await {
            Err(Error::AlreadyExists { .. }) => {}
            other => panic!("[{b}] a reply with a taken id must fail, got {other:?}"),
        }
        assert!(
            store.get_message(&user.id).await.unwrap().is_none(),
            "[{b}] the user message of a failed turn must not be stored"
        );
    }
    let history = store
        .history(&chat.id, HistoryPage::default())
        .await
        .unwrap();
    assert_eq!(
        history.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![earlier.id],
        "[{b}] a failed turn leaves the chat as it was"
    );
    assert_eq!(
        store.list_chats(Default::default()).await.unwrap().len(),
        1,
        "[{b}] a failed turn creates no chat"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_conformance() {
    suite(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_clones_share_data() {
    let store = MemoryStore::new();
    conformance::two_instances(&store, &store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_file_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_path(dir.path().join("chat.db"))
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal", "a file store runs in WAL mode");
    turn_is_all_or_nothing(&store).await;
    suite(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_memory_conformance() {
    let store = store::open("sqlite::memory:").await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    turn_is_all_or_nothing(&*store).await;
    suite(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_memory_stores_are_private() {
    let a = SqliteStore::in_memory().await.unwrap();
    let b = SqliteStore::in_memory().await.unwrap();
    let chat = a.create_chat(None, None).await.unwrap();
    assert!(b.get_chat(&chat.id).await.unwrap().is_none());
    // A clone shares the one connection, hence the data.
    assert!(a.clone().get_chat(&chat.id).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_instances_on_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let a = SqliteStore::open_path(&path).await.unwrap();
    let b = store::open(&sqlite_url(&path)).await.unwrap();
    conformance::two_instances(&a, &*b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_file_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("..").join("kept.db");
    std::fs::create_dir_all(dir.path().join("nested")).unwrap();
    let url = sqlite_url(&path);
    let store = store::open(&url).await.unwrap();
    let chat = store.create_chat(None, Some("kept".into())).await.unwrap();
    let mut reply = Message::assistant_streaming(chat.id.clone());
    reply.content = "checkpointed before the crash".into();
    store.append(&reply).await.unwrap();
    drop(store);
    assert!(path.exists(), "sqlite:// creates the file");

    // Start-up after a crash: the reply that was streaming comes back interrupted.
    let store = store::open(&url).await.unwrap();
    assert_eq!(store.recover_streaming(None).await.unwrap(), 1);
    let history = store
        .history(&chat.id, HistoryPage::default())
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].content, "checkpointed before the crash");
    assert_eq!(history[0].status, chatstream::MessageStatus::Interrupted);
}

#[tokio::test]
async fn sqlite_unopenable_path_is_a_store_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir.path().join("missing-dir").join("x.db"));
    match store::open(&url).await {
        Err(Error::Store {
            backend: "sqlite",
            message,
            ..
        }) => assert!(message.contains("x.db"), "{message}"),
        other => panic!("expected a store error, got {other:?}"),
    }
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

#[tokio::test]
async fn open_picks_the_backend_from_the_url() {
    assert_eq!(store::open("memory").await.unwrap().backend(), "memory");
    assert_eq!(store::open(" memory ").await.unwrap().backend(), "memory");
    assert_eq!(
        store::open("sqlite::memory:").await.unwrap().backend(),
        "sqlite"
    );
    for url in ["mysql://localhost/db", "redis://x", "chatstream.db", ""] {
        match store::open(url).await {
            Err(Error::Config(message)) => {
                assert!(message.contains("unknown store URL scheme"), "{message}")
            }
            other => panic!("{url:?} must be a configuration error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn unreachable_postgres_is_a_clear_store_error() {
    // Port 1 on the loopback interface: nothing listens, the connection is refused at once.
    let err = store::open("postgres://user:secret@127.0.0.1:1/chat")
        .await
        .unwrap_err();
    let Error::Store {
        backend: "postgres",
        ref message,
        ..
    } = err
    else {
        panic!("expected a postgres store error, got {err:?}");
    };
    assert!(message.contains("cannot connect"), "{message}");
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(
        !err.to_string().contains("secret"),
        "the password must not leak: {err}"
    );
    match store::open("postgres://[not a host").await {
        Err(Error::Config(_)) => {}
        other => panic!("a malformed URL must be a configuration error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_conformance() {
    with_postgres("postgres_conformance", |pg| async move {
        let store = PostgresStore::open_in_schema(&pg.url, &pg.schema)
            .await
            .unwrap();
        turn_is_all_or_nothing(&store).await;
        suite(Arc::new(store)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_instances_on_one_schema() {
    with_postgres("postgres_two_instances_on_one_schema", |pg| async move {
        let a = PostgresStore::open_in_schema(&pg.url, &pg.schema)
            .await
            .unwrap();
        // The second instance comes through `store::open`, its schema given in the URL, as a
        // second server process configured by CHATSTREAM_DATABASE_URL would.
        let b = store::open(&pg.search_path_url()).await.unwrap();
        assert_eq!(b.backend(), "postgres");
        conformance::two_instances(&a, &*b).await;
        // Opening again runs no migration twice.
        PostgresStore::open_in_schema(&pg.url, &pg.schema)
            .await
            .unwrap();
    })
    .await;
}
