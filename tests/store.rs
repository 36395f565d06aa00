//! The message stores: one conformance suite run unchanged against every backend, two stores on
//! one database, and `store::open`'s URL handling.
//!
//! PostgreSQL tests need `CHATSTREAM_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`); each test works in a schema of its own, dropped
//! at the end, even when the test fails. Without the variable they say loudly that they skipped.
//! MongoDB tests do the same with `CHATSTREAM_TEST_MONGODB_URL` (e.g. `mongodb://127.0.0.1:27017`,
//! a replica set) and a database of their own.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A test, example or bench crate is its own root: `pub` marks what its modules share.
#![allow(unreachable_pub)]

mod common;

use std::{path::Path, sync::Arc};

use chatstream::{
    ChatId, ChatKey, Error, Message, MessageStore, UserId,
    store::{
        self, DynMessageStore, HistoryPage, MemoryStore, MongoStore, PostgresStore, SqliteStore,
        conformance,
    },
};
use common::{with_database_name, with_mongodb, with_postgres};

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
    let owner = UserId::anonymous();
    let chat = store.create_chat(&owner, None, None).await.unwrap();
    let earlier = Message::user(chat.key(), "earlier");
    store.append(&earlier).await.unwrap();
    for key in [chat.key(), ChatKey::from(ChatId::generate())] {
        let user = Message::user(&key, "lost with its reply");
        let mut reply = Message::assistant_streaming(&key).replying_to(user.id);
        reply.id = earlier.id; // taken: the reply's insert fails
        match store.append_turn(&user, &reply).await {
            Err(Error::AlreadyExists { .. }) => {}
            other => panic!("[{b}] a reply with a taken id must fail, got {other:?}"),
        }
        assert!(
            store.get_message(&owner, &user.id).await.unwrap().is_none(),
            "[{b}] the user message of a failed turn must not be stored"
        );
    }
    let history = store
        .history(&chat.key(), HistoryPage::default())
        .await
        .unwrap();
    assert_eq!(
        history.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![earlier.id],
        "[{b}] a failed turn leaves the chat as it was"
    );
    assert_eq!(
        store
            .list_chats(&owner, Default::default())
            .await
            .unwrap()
            .len(),
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
    let chat = a
        .create_chat(&UserId::anonymous(), None, None)
        .await
        .unwrap();
    assert!(b.get_chat(&chat.key()).await.unwrap().is_none());
    // A clone shares the one connection, hence the data.
    assert!(a.clone().get_chat(&chat.key()).await.unwrap().is_some());
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
    let chat = store
        .create_chat(&UserId::anonymous(), None, Some("kept".into()))
        .await
        .unwrap();
    let mut reply = Message::assistant_streaming(chat.key());
    reply.content = "checkpointed before the crash".into();
    store.append(&reply).await.unwrap();
    drop(store);
    assert!(path.exists(), "sqlite:// creates the file");

    // Start-up after a crash: the reply that was streaming comes back interrupted.
    let store = store::open(&url).await.unwrap();
    assert_eq!(store.recover_streaming(None).await.unwrap(), 1);
    let history = store
        .history(&chat.key(), HistoryPage::default())
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

#[test]
fn test_database_names_replace_the_url_path() {
    for (url, expected) in [
        ("mongodb://h:27017", "mongodb://h:27017/t"),
        ("mongodb://h:27017/", "mongodb://h:27017/t"),
        (
            "mongodb://u:p@h1,h2/db?replicaSet=rs0",
            "mongodb://u:p@h1,h2/t?replicaSet=rs0",
        ),
        ("mongodb://h?w=1", "mongodb://h/t?w=1"),
    ] {
        assert_eq!(with_database_name(url, "t"), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_conformance() {
    with_mongodb("mongodb_conformance", |url| async move {
        let store = MongoStore::open(&url).await.unwrap();
        turn_is_all_or_nothing(&store).await;
        suite(Arc::new(store)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_two_instances_on_one_database() {
    with_mongodb("mongodb_two_instances_on_one_database", |url| async move {
        let a = MongoStore::open(&url).await.unwrap();
        // The second instance comes through `store::open`, as a second server process configured
        // by CHATSTREAM_DATABASE_URL would.
        let b = store::open(&url).await.unwrap();
        assert_eq!(b.backend(), "mongodb");
        conformance::two_instances(&a, &*b).await;
        // Opening again finds the indexes in place.
        MongoStore::open(&url).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn unreachable_mongodb_is_a_clear_store_error() {
    // Port 1 on the loopback interface: nothing listens; a short server selection keeps it quick.
    let err = store::open("mongodb://user:secret@127.0.0.1:1/chat?serverSelectionTimeoutMS=500")
        .await
        .unwrap_err();
    let Error::Store {
        backend: "mongodb",
        ref message,
        ..
    } = err
    else {
        panic!("expected a mongodb store error, got {err:?}");
    };
    assert!(message.contains("cannot reach"), "{message}");
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(
        !format!("{err} {err:?}").contains("secret"),
        "the password must not leak: {err:?}"
    );
    for url in ["mongodb://", "mongodb://h/db?w=nonsense&journal=maybe"] {
        match store::open(url).await {
            Err(Error::Config(message)) => assert!(!message.is_empty()),
            other => panic!("{url:?} must be a configuration error, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_documents_are_as_documented_and_gaps_are_paged_over() {
    use mongodb::bson::{Bson, Document, doc, spec::BinarySubtype};
    with_mongodb("mongodb_documents_are_as_documented", |url| async move {
        let store = MongoStore::open(&url).await.unwrap();
        let chat = store
            .create_chat(&UserId::anonymous(), None, None)
            .await
            .unwrap();
        let mut sent = Vec::new();
        for i in 0..10 {
            let m = Message::user(chat.key(), format!("m{i}"));
            store.append(&m).await.unwrap();
            sent.push(m);
        }
        let messages = store.database().collection::<Document>("messages");
        let stored = messages
            .find_one(doc! { "content": "m0" })
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(stored.get("_id"), Some(Bson::Binary(b)) if b.subtype == BinarySubtype::Uuid)
        );
        assert_eq!(stored.get_str("chatId").unwrap(), chat.id.as_str());
        assert_eq!(stored.get_i64("seq").unwrap(), 0);
        assert_eq!(
            stored.get_i64("createdAt").unwrap(),
            sent[0].created_at.timestamp_micros(),
            "times are microseconds since the epoch"
        );
        assert!(
            !stored.contains_key("reasoning") && !stored.contains_key("clientMessageId"),
            "absent fields are left out: {stored:?}"
        );

        // Sequence numbers 3 to 5 removed by hand: pages still walk every message left, in order.
        messages
            .delete_many(doc! { "chatId": chat.id.as_str(), "seq": { "$gte": 3, "$lte": 5 } })
            .await
            .unwrap();
        let left: Vec<_> = sent
            .iter()
            .enumerate()
            .filter(|(i, _)| !(3..=5).contains(i))
            .map(|(_, m)| m.id)
            .collect();
        let mut walked = Vec::new();
        let mut page = HistoryPage::newest(3);
        loop {
            let chunk = store.history(&chat.key(), page).await.unwrap();
            assert!(chunk.len() <= 3);
            let Some(first) = chunk.first() else { break };
            page = HistoryPage::before(first.id, 3);
            walked.splice(0..0, chunk.iter().map(|m| m.id));
        }
        assert_eq!(walked, left);
        assert_eq!(
            store
                .history(&chat.key(), HistoryPage::newest(5))
                .await
                .unwrap()
                .len(),
            5
        );
    })
    .await;
}
