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
    Chat, ChatId, ChatKey, Error, FinishReason, Message, MessageStatus, MessageStore, Role,
    ToolCall, Usage, UserId,
    store::{
        self, ChatPage, DynMessageStore, HistoryPage, MemoryStore, MongoStore, PostgresStore,
        SqliteStore, conformance,
    },
};
use chrono::{DateTime, TimeZone, Utc};
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
        assert_eq!(stored.get_str("owner").unwrap(), "anonymous");
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

// Databases created by the previous release: chats and messages without owners.

/// What the previous release stored: chats keyed by their id alone, and their messages in
/// sequence order (each as it reads back once it belongs to the anonymous owner).
struct Previous {
    chats: Vec<Chat>,
    /// Per chat of `chats`, its messages in sequence order.
    messages: Vec<Vec<Message>>,
}

impl Previous {
    fn new() -> Self {
        // Whole microseconds: every store keeps them exactly.
        let at = |minute: u32, micros: i64| {
            Utc.with_ymd_and_hms(2026, 11, 2, 9, minute, 0).unwrap()
                + chrono::Duration::microseconds(micros)
        };
        let chat = |id: &str, title: Option<&str>, minute| Chat {
            owner: UserId::anonymous(),
            id: id.parse().unwrap(),
            title: title.map(Into::into),
            created_at: at(0, 0),
            updated_at: at(minute, 17),
        };
        let chats = vec![
            chat("demo", Some("Démo ✓"), 30),
            chat("empty", None, 10),
            chat("018f2a7c5e9d7b3c8a1e2f3a4b5c6d7e", Some("generated"), 20),
        ];
        let message = |chat: &Chat, role, content: &str, minute| {
            let mut m = Message::new(chat.id.clone(), role, content);
            m.created_at = at(minute, 1);
            m.updated_at = at(minute, 2);
            m
        };
        let demo = &chats[0];
        let question =
            message(demo, Role::User, "What's the weather?", 1).with_client_message_id("k1");
        let mut answer = message(demo, Role::Assistant, "Let me look.", 2).replying_to(question.id);
        answer.reasoning = Some("The user wants the weather.".into());
        answer.tool_calls = vec![ToolCall {
            index: 0,
            id: "call_1".into(),
            name: "weather".into(),
            arguments: r#"{"city":"Zürich"}"#.into(),
        }];
        answer.finish_reason = Some(FinishReason::ToolCalls);
        answer.usage = Some(Usage {
            input_tokens: 12,
            output_tokens: 7,
        });
        let mut tool = message(demo, Role::Tool, r#"{"sky":"clear"}"#, 3);
        tool.tool_call_id = Some("call_1".into());
        let mut failed = message(demo, Role::Assistant, "It is cle", 4).replying_to(question.id);
        failed.status = MessageStatus::Failed;
        failed.error = Some("upstream went away".into());
        // Written later with an earlier clock: order is the sequence's, not the time's.
        let late = message(demo, Role::User, "And tomorrow?", 0).with_client_message_id("k2");
        let mut streaming = message(demo, Role::Assistant, "Tomorrow", 5).replying_to(late.id);
        streaming.status = MessageStatus::Streaming;
        let generated = &chats[2];
        let messages = vec![
            vec![question, answer, tool, failed, late, streaming],
            Vec::new(),
            vec![
                message(generated, Role::System, "Be brief.", 6),
                message(generated, Role::User, "Hi", 7),
            ],
        ];
        Previous { chats, messages }
    }

    /// Every message with its chat and sequence number, in an order unlike the sequence's, as
    /// rows are not kept in any order.
    fn rows(&self) -> Vec<(&Chat, i64, &Message)> {
        let mut rows: Vec<_> = self
            .chats
            .iter()
            .zip(&self.messages)
            .flat_map(|(chat, messages)| {
                messages.iter().zip(0..).map(move |(m, seq)| (chat, seq, m))
            })
            .collect();
        rows.reverse();
        rows
    }

    fn next_seq(&self, chat: usize) -> i64 {
        self.messages[chat].len() as i64
    }

    fn tool_calls(m: &Message) -> Option<String> {
        (!m.tool_calls.is_empty()).then(|| serde_json::to_string(&m.tool_calls).unwrap())
    }
}

/// The columns of a message row in the previous release's schema.
const PREVIOUS_MESSAGE_COLUMNS: &str = "id, chat_id, seq, role, content, reasoning, tool_calls, \
    tool_call_id, status, finish_reason, usage_input_tokens, usage_output_tokens, error, \
    client_message_id, reply_to, created_at, updated_at";

/// A directory holding the migrations of `backend` up to the previous release's, for sqlx's
/// migrator: what a database of the previous release was migrated with.
fn previous_migrations(backend: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let name = "20250101000000_init.sql";
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend)
        .join(name);
    std::fs::copy(from, dir.path().join(name)).unwrap();
    dir
}

/// Once a store opened a database of the previous release: every chat and message is there,
/// unchanged, under the anonymous owner, in sequence order; the chats go on where they were; and
/// another owner's chat of the same id coexists with them.
async fn previous_release_is_kept(store: &dyn MessageStore, previous: &Previous) {
    let b = store.backend();
    let anonymous = UserId::anonymous();
    let mut by_activity = previous.chats.clone();
    by_activity.sort_by(|x, y| y.updated_at.cmp(&x.updated_at).then(y.id.cmp(&x.id)));
    assert_eq!(
        store
            .list_chats(&anonymous, ChatPage::default())
            .await
            .unwrap(),
        by_activity,
        "[{b}] every chat is the anonymous owner's, as it was"
    );
    for (chat, messages) in previous.chats.iter().zip(&previous.messages) {
        assert_eq!(
            store.get_chat(&chat.key()).await.unwrap().as_ref(),
            Some(chat)
        );
        assert_eq!(
            store
                .history(&chat.key(), HistoryPage::newest(100))
                .await
                .unwrap(),
            *messages,
            "[{b}] every message of {} is kept, in sequence order",
            chat.id
        );
        for m in messages {
            assert_eq!(
                store.get_message(&anonymous, &m.id).await.unwrap().as_ref(),
                Some(m)
            );
        }
    }
    let demo = &previous.chats[0];
    let old = &previous.messages[0];
    assert_eq!(
        store
            .history(&demo.key(), HistoryPage::before(old[3].id, 2))
            .await
            .unwrap(),
        old[1..3],
        "[{b}] pages walk the old sequence"
    );
    let streaming = store.streaming_replies().await.unwrap();
    assert_eq!(
        streaming
            .iter()
            .map(|m| (m.id, m.key()))
            .collect::<Vec<_>>(),
        [(old[5].id, demo.key())],
        "[{b}] a reply left streaming is found for recovery, with its owner"
    );

    // The chat goes on: after its old messages, its old client keys still known.
    let next = Message::user(demo.key(), "after the upgrade");
    store.append(&next).await.unwrap();
    let repeat = Message::user(demo.key(), "again").with_client_message_id("k1");
    let appended = store.append_idempotent(&repeat).await.unwrap();
    assert!(!appended.created && appended.message == old[0]);
    let history = store
        .history(&demo.key(), HistoryPage::newest(100))
        .await
        .unwrap();
    assert_eq!(history.len(), old.len() + 1);
    assert_eq!(history.last().map(|m| m.id), Some(next.id));

    // Another owner's chat of the same id, with the same client key, is another chat.
    let alice: UserId = "alice".parse().unwrap();
    let theirs = ChatKey::new(alice.clone(), demo.id.clone());
    store
        .create_chat(&alice, Some(demo.id.clone()), Some("Alice's".into()))
        .await
        .unwrap();
    let hello = Message::user(&theirs, "hello").with_client_message_id("k1");
    let hello = store.append_idempotent(&hello).await.unwrap();
    assert!(hello.created);
    assert_eq!(
        store
            .history(&theirs, HistoryPage::newest(100))
            .await
            .unwrap(),
        vec![hello.message],
        "[{b}] alice's demo holds only her message"
    );
    assert_eq!(
        store
            .history(&demo.key(), HistoryPage::newest(100))
            .await
            .unwrap(),
        history,
        "[{b}] the anonymous owner's demo is untouched by alice's"
    );
    assert_eq!(
        store
            .list_chats(&alice, ChatPage::default())
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_database_of_the_previous_release_is_migrated_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("previous.db");
    let previous = Previous::new();
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let migrations = previous_migrations("sqlite");
        sqlx::migrate::Migrator::new(migrations.path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        let nanos = |t: DateTime<Utc>| t.timestamp_nanos_opt().unwrap();
        for (i, chat) in previous.chats.iter().enumerate() {
            sqlx::query(
                "INSERT INTO chats (id, title, created_at, updated_at, next_seq) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(chat.id.as_str())
            .bind(chat.title.as_deref())
            .bind(nanos(chat.created_at))
            .bind(nanos(chat.updated_at))
            .bind(previous.next_seq(i))
            .execute(&pool)
            .await
            .unwrap();
        }
        for (chat, seq, m) in previous.rows() {
            let usage = m
                .usage
                .map(|u| (u.input_tokens as i64, u.output_tokens as i64));
            sqlx::query(&format!(
                "INSERT INTO messages ({PREVIOUS_MESSAGE_COLUMNS}) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .bind(m.id.as_uuid())
            .bind(chat.id.as_str())
            .bind(seq)
            .bind(m.role.as_str())
            .bind(m.content.as_str())
            .bind(m.reasoning.as_deref())
            .bind(Previous::tool_calls(m))
            .bind(m.tool_call_id.as_deref())
            .bind(m.status.as_str())
            .bind(m.finish_reason.map(|f| f.as_str()))
            .bind(usage.map(|u| u.0))
            .bind(usage.map(|u| u.1))
            .bind(m.error.as_deref())
            .bind(m.client_message_id.as_deref())
            .bind(m.reply_to.map(|id| *id.as_uuid()))
            .bind(nanos(m.created_at))
            .bind(nanos(m.updated_at))
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
    }
    let store = SqliteStore::open_path(&path).await.unwrap();
    previous_release_is_kept(&store, &previous).await;
    let broken: Vec<(String, i64, String, i64)> = sqlx::query_as("PRAGMA foreign_key_check")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert!(broken.is_empty(), "foreign keys hold: {broken:?}");
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name LIKE '%before_owners'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(left, 0, "the old tables are gone");
    // Deleting a chat still takes its messages with it (the new foreign key cascades).
    let generated = &previous.chats[2];
    assert!(store.delete_chat(&generated.key()).await.unwrap());
    let orphans: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE chat_id = ?")
        .bind(generated.id.as_str())
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(orphans, 0);
    store.close().await;
    // Opening again runs no migration twice.
    SqliteStore::open_path(&path).await.unwrap().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_schema_of_the_previous_release_is_migrated_with_nothing_lost() {
    with_postgres("postgres_previous_release", |pg| async move {
        use sqlx::{Connection, postgres::PgConnectOptions};
        let previous = Previous::new();
        {
            let options: PgConnectOptions = pg.url.parse().unwrap();
            let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
            sqlx::query(&format!("CREATE SCHEMA \"{}\"", pg.schema))
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
            let options = options.options([("search_path", pg.schema.as_str())]);
            let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
            let migrations = previous_migrations("postgres");
            sqlx::migrate::Migrator::new(migrations.path())
                .await
                .unwrap()
                .run(&mut conn)
                .await
                .unwrap();
            for (i, chat) in previous.chats.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO chats (id, title, created_at, updated_at, next_seq) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(chat.id.as_str())
                .bind(chat.title.as_deref())
                .bind(chat.created_at)
                .bind(chat.updated_at)
                .bind(previous.next_seq(i))
                .execute(&mut conn)
                .await
                .unwrap();
            }
            for (chat, seq, m) in previous.rows() {
                let usage = m
                    .usage
                    .map(|u| (u.input_tokens as i64, u.output_tokens as i64));
                sqlx::query(&format!(
                    "INSERT INTO messages ({PREVIOUS_MESSAGE_COLUMNS}) VALUES ($1, $2, $3, $4, \
                     $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
                ))
                .bind(m.id.as_uuid())
                .bind(chat.id.as_str())
                .bind(seq)
                .bind(m.role.as_str())
                .bind(m.content.as_str())
                .bind(m.reasoning.as_deref())
                .bind(Previous::tool_calls(m))
                .bind(m.tool_call_id.as_deref())
                .bind(m.status.as_str())
                .bind(m.finish_reason.map(|f| f.as_str()))
                .bind(usage.map(|u| u.0))
                .bind(usage.map(|u| u.1))
                .bind(m.error.as_deref())
                .bind(m.client_message_id.as_deref())
                .bind(m.reply_to.map(|id| *id.as_uuid()))
                .bind(m.created_at)
                .bind(m.updated_at)
                .execute(&mut conn)
                .await
                .unwrap();
            }
            conn.close().await.unwrap();
        }
        let store = PostgresStore::open_in_schema(&pg.url, &pg.schema)
            .await
            .unwrap();
        previous_release_is_kept(&store, &previous).await;
        // Deleting a chat still takes its messages with it (the new foreign key cascades).
        let generated = &previous.chats[2];
        assert!(store.delete_chat(&generated.key()).await.unwrap());
        let orphans: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE chat_id = $1")
            .bind(generated.id.as_str())
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(orphans, 0);
        store.close().await;
        // Opening again runs no migration twice.
        PostgresStore::open_in_schema(&pg.url, &pg.schema)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_documents_of_the_previous_release_move_to_the_anonymous_owner() {
    use mongodb::{
        IndexModel,
        bson::{Bson, Document, doc},
        options::IndexOptions,
    };
    with_mongodb("mongodb_previous_release", |url| async move {
        let previous = Previous::new();
        let client = mongodb::Client::with_uri_str(&url).await.unwrap();
        let database = client.default_database().unwrap();
        let (chats, messages) = (
            database.collection::<Document>("chats"),
            database.collection::<Document>("messages"),
        );
        // The previous release's indexes, which keyed a chat by its id alone.
        let index = |keys: Document, name: &str, unique: bool, partial: Option<Document>| {
            IndexModel::builder()
                .keys(keys)
                .options(
                    IndexOptions::builder()
                        .name(name.to_string())
                        .unique(unique.then_some(true))
                        .partial_filter_expression(partial)
                        .build(),
                )
                .build()
        };
        messages
            .create_indexes([
                index(doc! { "chatId": 1, "seq": 1 }, "chat_seq", true, None),
                index(
                    doc! { "chatId": 1, "clientMessageId": 1 },
                    "chat_client_key",
                    true,
                    Some(doc! { "clientMessageId": { "$type": "string" } }),
                ),
            ])
            .await
            .unwrap();
        chats
            .create_index(index(
                doc! { "updatedAt": -1, "_id": -1 },
                "chats_by_activity",
                false,
                None,
            ))
            .await
            .unwrap();
        let micros = |t: DateTime<Utc>| t.timestamp_micros();
        for (i, chat) in previous.chats.iter().enumerate() {
            let mut d = doc! {
                "_id": chat.id.as_str(),
                "createdAt": micros(chat.created_at),
                "updatedAt": micros(chat.updated_at),
                "nextSeq": previous.next_seq(i),
            };
            if let Some(title) = &chat.title {
                d.insert("title", title.as_str());
            }
            chats.insert_one(d).await.unwrap();
        }
        let uuid =
            |id: &chatstream::MessageId| mongodb::bson::Uuid::from_bytes(id.as_uuid().into_bytes());
        for (chat, seq, m) in previous.rows() {
            let mut d = doc! {
                "_id": uuid(&m.id),
                "chatId": chat.id.as_str(),
                "seq": seq,
                "role": m.role.as_str(),
                "content": m.content.as_str(),
                "status": m.status.as_str(),
                "createdAt": micros(m.created_at),
                "updatedAt": micros(m.updated_at),
            };
            let mut optional = |field: &str, value: Option<Bson>| {
                if let Some(value) = value {
                    d.insert(field, value);
                }
            };
            optional("reasoning", m.reasoning.as_deref().map(Into::into));
            optional(
                "toolCalls",
                (!m.tool_calls.is_empty()).then(|| {
                    m.tool_calls
                        .iter()
                        .map(|c| {
                            Bson::from(doc! {
                                "index": i64::from(c.index),
                                "id": c.id.as_str(),
                                "name": c.name.as_str(),
                                "arguments": c.arguments.as_str(),
                            })
                        })
                        .collect::<Vec<_>>()
                        .into()
                }),
            );
            optional("toolCallId", m.tool_call_id.as_deref().map(Into::into));
            optional("finishReason", m.finish_reason.map(|f| f.as_str().into()));
            optional(
                "usage",
                m.usage.map(|u| {
                    doc! {
                        "inputTokens": u.input_tokens as i64,
                        "outputTokens": u.output_tokens as i64,
                    }
                    .into()
                }),
            );
            optional("error", m.error.as_deref().map(Into::into));
            optional(
                "clientMessageId",
                m.client_message_id.as_deref().map(Into::into),
            );
            optional("replyTo", m.reply_to.as_ref().map(|id| uuid(id).into()));
            messages.insert_one(d).await.unwrap();
        }

        let store = MongoStore::open(&url).await.unwrap();
        let unowned = doc! { "owner": { "$exists": false } };
        assert_eq!(chats.count_documents(unowned.clone()).await.unwrap(), 0);
        assert_eq!(messages.count_documents(unowned).await.unwrap(), 0);
        let names = messages.list_index_names().await.unwrap();
        assert!(
            !names
                .iter()
                .any(|n| n == "chat_seq" || n == "chat_client_key"),
            "the indexes that keyed a chat by its id alone are gone: {names:?}"
        );
        previous_release_is_kept(&store, &previous).await;
        // Opening again finds nothing left to move.
        MongoStore::open(&url).await.unwrap();
        previous_release_is_kept_after_reopening(&store, &previous).await;
    })
    .await;
}

/// What [`previous_release_is_kept`] left, still there after the store opened again.
async fn previous_release_is_kept_after_reopening(store: &dyn MessageStore, previous: &Previous) {
    let demo = &previous.chats[0];
    let history = store
        .history(&demo.key(), HistoryPage::newest(100))
        .await
        .unwrap();
    assert_eq!(history[..previous.messages[0].len()], previous.messages[0]);
    assert_eq!(history.len(), previous.messages[0].len() + 1);
}
