//! Message store costs: persisting one streamed reply (append, 20 checkpoints, final update), one
//! checkpoint alone, starting a turn (what a session writes and reads before a reply can start),
//! and loading the newest page of 50 from chats of 100 and 10,000 messages, for the memory store
//! and a SQLite file in WAL mode, and MongoDB when `CHATSTREAM_TEST_MONGODB_URL` names a server
//! (each run in a database of its own, dropped at the end).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use chatstream::{
    ChatId, ChatKey, FinishReason, Message, MessageStatus, MessageStore, Usage, UserId,
    store::{HistoryPage, MemoryStore, MongoStore, SqliteStore},
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;

/// Checkpoints per reply: a reply of ~5 s checkpointed every 250 ms.
const CHECKPOINTS: usize = 20;
/// Text added between two checkpoints (about 64 small deltas).
const CHUNK: &str = "Streaming keeps the user reading while the model is still writing. ";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

struct Backends {
    // Kept alive for the SQLite file's lifetime.
    _dir: tempfile::TempDir,
    stores: Vec<(&'static str, Box<dyn MessageStore>)>,
    mongodb: Option<MongoStore>,
}

fn backends(rt: &Runtime) -> Backends {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = rt
        .block_on(SqliteStore::open_path(dir.path().join("bench.db")))
        .unwrap();
    let mut stores: Vec<(&'static str, Box<dyn MessageStore>)> = vec![
        ("memory", Box::new(MemoryStore::new())),
        ("sqlite_file", Box::new(sqlite)),
    ];
    let mongodb = std::env::var("CHATSTREAM_TEST_MONGODB_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .map(|url| {
            let name = format!("chatstream_bench_{}", uuid::Uuid::now_v7().simple());
            rt.block_on(MongoStore::open_in_database(&url, &name))
                .unwrap()
        });
    match &mongodb {
        Some(store) => stores.push(("mongodb", Box::new(store.clone()))),
        None => eprintln!("CHATSTREAM_TEST_MONGODB_URL is not set: MongoDB is not measured"),
    }
    Backends {
        _dir: dir,
        stores,
        mongodb,
    }
}

impl Backends {
    /// Drops the MongoDB database of this run.
    fn finish(self, rt: &Runtime) {
        if let Some(store) = self.mongodb {
            rt.block_on(async { store.database().drop().await })
                .unwrap();
        }
    }
}

/// The owner of the benchmarks' chats: a user's, as on a server with authentication.
fn owner() -> UserId {
    UserId::new("bench-user").expect("a valid user id")
}

async fn one_reply(store: &dyn MessageStore, chat: &ChatKey) {
    let mut reply = Message::assistant_streaming(chat.clone());
    store.append(&reply).await.unwrap();
    for _ in 0..CHECKPOINTS {
        reply.content.push_str(CHUNK);
        reply.updated_at = chrono::Utc::now();
        store.update(&reply).await.unwrap();
    }
    reply.status = MessageStatus::Complete;
    reply.finish_reason = Some(FinishReason::Stop);
    reply.usage = Some(Usage {
        input_tokens: 420,
        output_tokens: 310,
    });
    reply.updated_at = chrono::Utc::now();
    store.update(&reply).await.unwrap();
}

fn reply(c: &mut Criterion) {
    let rt = runtime();
    let backends = backends(&rt);
    let mut group = c.benchmark_group("reply_append_20_checkpoints_final");
    for (name, store) in &backends.stores {
        let store = &**store;
        let chat = rt
            .block_on(store.create_chat(&owner(), None, None))
            .unwrap()
            .key();
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| one_reply(store, &chat));
        });
    }
    group.finish();
    backends.finish(&rt);
}

fn checkpoint(c: &mut Criterion) {
    let rt = runtime();
    let backends = backends(&rt);
    let mut group = c.benchmark_group("checkpoint_update");
    for (name, store) in &backends.stores {
        let store = &**store;
        let chat = rt
            .block_on(store.create_chat(&owner(), None, None))
            .unwrap();
        let mut reply = Message::assistant_streaming(chat.key());
        reply.content = CHUNK.repeat(CHECKPOINTS / 2);
        rt.block_on(store.append(&reply)).unwrap();
        group.bench_function(*name, |b| {
            // The same row rewritten each time: what a checkpoint costs does not depend on
            // whether the text changed.
            b.to_async(&rt).iter(|| store.update(black_box(&reply)));
        });
    }
    group.finish();
    backends.finish(&rt);
}

/// What a send costs the store before its reply can start, in a new chat: the turn (chat, user
/// message, reply placeholder) and the history read that builds the request. Beside it, the same
/// writes made one by one (`get_or_create_chat`, `append`, `append`), as the trait's default does,
/// and the turn alone, which is all a session asks of the store for a chat's first send (the
/// store says `first_in_chat`, and the request is built without the read).
fn turn(c: &mut Criterion) {
    use chatstream::MessageStoreExt;
    let rt = runtime();
    let backends = backends(&rt);
    let mut group = c.benchmark_group("turn_new_chat_then_history");
    for (name, store) in &backends.stores {
        let store = &**store;
        group.bench_function(BenchmarkId::new("append_turn", name), |b| {
            b.to_async(&rt).iter(|| async {
                let chat = ChatKey::new(owner(), ChatId::generate());
                let user = Message::user(&chat, CHUNK);
                let reply = Message::assistant_streaming(&chat).replying_to(user.id);
                assert!(store.append_turn(&user, &reply).await.unwrap().created);
                store.history(&chat, HistoryPage::newest(64)).await.unwrap()
            });
        });
        group.bench_function(BenchmarkId::new("first_turn_no_read", name), |b| {
            b.to_async(&rt).iter(|| async {
                let chat = ChatKey::new(owner(), ChatId::generate());
                let user = Message::user(&chat, CHUNK);
                let reply = Message::assistant_streaming(&chat).replying_to(user.id);
                let appended = store.append_turn(&user, &reply).await.unwrap();
                assert!(appended.created && appended.first_in_chat);
                appended
            });
        });
        group.bench_function(BenchmarkId::new("one_by_one", name), |b| {
            b.to_async(&rt).iter(|| async {
                let chat = ChatKey::new(owner(), ChatId::generate());
                let user = Message::user(&chat, CHUNK);
                let reply = Message::assistant_streaming(&chat).replying_to(user.id);
                store.get_or_create_chat(&chat).await.unwrap();
                store.append(&user).await.unwrap();
                store.append(&reply).await.unwrap();
                store.history(&chat, HistoryPage::newest(64)).await.unwrap()
            });
        });
    }
    group.finish();
    backends.finish(&rt);
}

/// Turns of this many new chats, sent at once or one after another.
const BURST: usize = 100;

/// New chats' first turns sent at once (the SQLite store groups the writes that queue into
/// shared commits) against the same turns sent one after another.
fn burst(c: &mut Criterion) {
    let rt = runtime();
    let backends = backends(&rt);
    let mut group = c.benchmark_group("turn_burst_100");
    let turns = || {
        (0..BURST)
            .map(|_| {
                let chat = ChatKey::new(owner(), ChatId::generate());
                let user = Message::user(&chat, CHUNK);
                let reply = Message::assistant_streaming(&chat).replying_to(user.id);
                (user, reply)
            })
            .collect::<Vec<_>>()
    };
    // The memory store has no commits to share: SQLite's rows only.
    for (name, store) in backends
        .stores
        .iter()
        .filter(|(name, _)| *name == "sqlite_file")
    {
        let store = &**store;
        group.bench_function(BenchmarkId::new("at_once", name), |b| {
            b.to_async(&rt).iter_batched(
                turns,
                |turns| async move {
                    let sent = turns
                        .iter()
                        .map(|(user, reply)| store.append_turn(user, reply));
                    for appended in futures::future::join_all(sent).await {
                        assert!(appended.unwrap().first_in_chat);
                    }
                },
                criterion::BatchSize::SmallInput,
            );
        });
        group.bench_function(BenchmarkId::new("one_after_another", name), |b| {
            b.to_async(&rt).iter_batched(
                turns,
                |turns| async move {
                    for (user, reply) in &turns {
                        assert!(store.append_turn(user, reply).await.unwrap().first_in_chat);
                    }
                },
                criterion::BatchSize::SmallInput,
            );
        });
    }
    group.finish();
    backends.finish(&rt);
}

fn history(c: &mut Criterion) {
    let rt = runtime();
    let backends = backends(&rt);
    let mut group = c.benchmark_group("history_newest_50");
    for (name, store) in &backends.stores {
        let store = &**store;
        for size in [100usize, 10_000] {
            let chat = rt
                .block_on(store.create_chat(&owner(), None, None))
                .unwrap();
            rt.block_on(async {
                for i in 0..size {
                    let mut m = Message::user(chat.key(), format!("message {i}: {CHUNK}"));
                    if i % 2 == 1 {
                        m.role = chatstream::Role::Assistant;
                    }
                    store.append(&m).await.unwrap();
                }
            });
            group.bench_with_input(BenchmarkId::new(*name, size), &chat.key(), |b, chat| {
                b.to_async(&rt).iter(|| async {
                    let page = store.history(chat, HistoryPage::newest(50)).await.unwrap();
                    assert_eq!(page.len(), 50);
                    page
                });
            });
        }
    }
    group.finish();
    backends.finish(&rt);
}

criterion_group!(benches, reply, checkpoint, turn, burst, history);
criterion_main!(benches);
