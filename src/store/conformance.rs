//! The conformance suite every [`MessageStore`] must pass (feature `conformance`).
//!
//! Each check is an async function that panics, with a message naming the backend and what went
//! wrong, when the store misbehaves. The crate runs them unchanged against its memory, SQLite and
//! PostgreSQL stores; a store of your own proves itself the same way:
//!
//! ```
//! use std::sync::Arc;
//! use chatstream::store::{MemoryStore, conformance};
//!
//! # #[tokio::main] async fn main() {
//! let store = MemoryStore::new(); // your store here
//! conformance::run_all(&store).await;
//! conformance::idempotent_append_spawned(Arc::new(store.clone())).await;
//! // and with two handles on one database (clones of a MemoryStore share their data):
//! conformance::two_instances(&store, &store.clone()).await;
//! # }
//! ```
//!
//! The checks only touch chats they create (with generated ids, or of owners they make up), so
//! they can run on a database that holds other data, but two checks should not run at once on
//! one store: chat listing and crash recovery look at the whole store.
//!
//! Timestamps: the checks build messages whose timestamps are whole microseconds and expect them
//! back exactly (PostgreSQL keeps microseconds; finer precision is not required).

use std::collections::HashSet;

use chrono::{DateTime, Duration, SubsecRound, TimeZone, Utc};
use futures::future::join_all;

use super::{Appended, ChatPage, DynMessageStore, HistoryPage, MessageStore};
use crate::{
    Chat, ChatId, ChatKey, ContentPart, Error, FinishReason, Generation, Message, MessageId,
    MessageStatus, Result, Role, ToolCall, Usage, UserId,
    provider::{ReasoningEffort, ThinkingBlock},
};

/// How many identical sends race in the idempotency checks.
pub const DUPLICATE_SENDS: usize = 20;

/// Runs every check that needs only a reference to the store, one after the other.
///
/// [`idempotent_append_spawned`] (which needs an `Arc` to spawn tasks) and [`two_instances`]
/// (which needs two stores on one database) are separate.
pub async fn run_all(store: &dyn MessageStore) {
    ordering(store).await;
    pagination(store).await;
    idempotent_append(store).await;
    turns(store).await;
    updates(store).await;
    chats(store).await;
    unicode_and_large(store).await;
    content_parts(store).await;
    recovery(store).await;
    reply_recovery(store).await;
    ownership(store).await;
    ping(store).await;
}

#[track_caller]
fn ok<T>(store: &dyn MessageStore, result: Result<T>, doing: &str) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("[{}] {doing} failed: {e:?}", store.backend()),
    }
}

/// Now, at the precision every store must keep.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn message_at(chat: &ChatKey, role: Role, content: &str, at: DateTime<Utc>) -> Message {
    let mut m = Message::new(chat.clone(), role, content);
    m.created_at = at;
    m.updated_at = at;
    m
}

/// The key of a chat no check creates.
fn unknown_chat() -> ChatKey {
    ChatKey::from(ChatId::generate())
}

async fn new_chat(store: &dyn MessageStore) -> Chat {
    ok(
        store,
        store.create_chat(&UserId::anonymous(), None, None).await,
        "create_chat",
    )
}

async fn all_history(store: &dyn MessageStore, chat: &ChatKey) -> Vec<Message> {
    ok(
        store,
        store.history(chat, HistoryPage::newest(usize::MAX)).await,
        "history (everything)",
    )
}

fn ids(messages: &[Message]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

/// Messages come back in append order, even when they share one timestamp (or time runs
/// backwards) and their ids sort the other way.
pub async fn ordering(store: &dyn MessageStore) {
    let b = store.backend();
    let chat = new_chat(store).await;
    let at = now();
    // Ids generated up front and used in reverse: order must come from the append, not the id.
    let mut fresh: Vec<MessageId> = (0..100).map(|_| MessageId::generate()).collect();
    fresh.reverse();
    let mut appended = Vec::new();
    for (i, id) in fresh.into_iter().enumerate() {
        let role = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        let mut m = message_at(&chat.key(), role, &format!("message {i}"), at);
        m.id = id;
        ok(store, store.append(&m).await, "append");
        appended.push(m);
    }
    let older = message_at(
        &chat.key(),
        Role::User,
        "clock went back",
        at - Duration::hours(1),
    );
    ok(store, store.append(&older).await, "append");
    appended.push(older);

    let history = all_history(store, &chat.key()).await;
    assert_eq!(
        ids(&history),
        ids(&appended),
        "[{b}] history must list messages in append order, whatever their timestamps and ids"
    );
    assert_eq!(
        history, appended,
        "[{b}] messages must read back exactly as appended"
    );

    // Walking back page by page gives the same sequence.
    let mut walked: Vec<Message> = Vec::new();
    let mut page = HistoryPage::newest(7);
    loop {
        let chunk = ok(
            store,
            store.history(&chat.key(), page).await,
            "history page",
        );
        assert!(chunk.len() <= 7, "[{b}] a page must respect its limit");
        let Some(first) = chunk.first() else { break };
        page = HistoryPage::before(first.id, 7);
        walked.splice(0..0, chunk);
    }
    assert_eq!(
        ids(&walked),
        ids(&appended),
        "[{b}] paging backwards must visit every message once, in order"
    );
}

/// Page edges: an empty or unknown chat, a chat of exactly one page, a cursor at the oldest
/// message, a limit larger than the chat, a zero limit, and bad cursors.
pub async fn pagination(store: &dyn MessageStore) {
    let b = store.backend();
    let empty = new_chat(store).await;
    assert!(
        ok(
            store,
            store.history(&empty.key(), HistoryPage::default()).await,
            "history"
        )
        .is_empty(),
        "[{b}] a chat without messages has an empty history"
    );
    assert!(
        ok(
            store,
            store.history(&unknown_chat(), HistoryPage::default()).await,
            "history of an unknown chat"
        )
        .is_empty(),
        "[{b}] a chat that does not exist has an empty history"
    );

    let chat = new_chat(store).await;
    let at = now();
    let mut m = Vec::new();
    for i in 0..5 {
        let msg = message_at(&chat.key(), Role::User, &format!("{i}"), at);
        ok(store, store.append(&msg).await, "append");
        m.push(msg);
    }
    let key = chat.key();
    let chat_key = &key;
    let page =
        |p: HistoryPage| async move { ok(store, store.history(chat_key, p).await, "history") };
    assert_eq!(
        page(HistoryPage::newest(5)).await,
        m,
        "[{b}] a limit equal to the chat's length gives all of it"
    );
    assert_eq!(
        page(HistoryPage::newest(50)).await,
        m,
        "[{b}] a limit larger than the chat gives all of it"
    );
    assert!(
        page(HistoryPage::newest(0)).await.is_empty(),
        "[{b}] a zero limit gives nothing"
    );
    assert_eq!(
        page(HistoryPage::newest(2)).await,
        m[3..],
        "[{b}] the default page is the newest one, oldest first"
    );
    assert_eq!(
        page(HistoryPage::before(m[3].id, 2)).await,
        m[1..3],
        "[{b}] `before` gives the messages just older than the cursor"
    );
    assert_eq!(
        page(HistoryPage::before(m[1].id, 2)).await,
        m[..1],
        "[{b}] the last page may be short"
    );
    assert!(
        page(HistoryPage::before(m[0].id, 10)).await.is_empty(),
        "[{b}] nothing is older than the oldest message"
    );
    assert_eq!(
        page(HistoryPage::before(m[4].id, 10)).await,
        m[..4],
        "[{b}] a cursor at the newest message gives everything before it"
    );

    let exact = new_chat(store).await;
    let limit = HistoryPage::default().limit;
    let mut all = Vec::new();
    for i in 0..limit {
        let msg = message_at(&exact.key(), Role::User, &format!("{i}"), at);
        ok(store, store.append(&msg).await, "append");
        all.push(msg);
    }
    let first = ok(
        store,
        store.history(&exact.key(), HistoryPage::default()).await,
        "history",
    );
    assert_eq!(
        first, all,
        "[{b}] a chat of exactly one page fits in the default page"
    );
    let rest = ok(
        store,
        store
            .history(&exact.key(), HistoryPage::before(all[0].id, limit))
            .await,
        "history",
    );
    assert!(
        rest.is_empty(),
        "[{b}] the page before a whole chat is empty"
    );

    for (cursor, what) in [
        (all[0].id, "a message of another chat"),
        (MessageId::generate(), "an unknown message"),
    ] {
        match store
            .history(&chat.key(), HistoryPage::before(cursor, 10))
            .await
        {
            Err(Error::NotFound {
                what: "message", ..
            }) => {}
            other => panic!("[{b}] a cursor at {what} must fail with NotFound, got {other:?}"),
        }
    }
}

fn duplicate_sends(chat: &ChatKey, key: &str, at: DateTime<Utc>) -> Vec<Message> {
    // Distinct message ids: every retry of a client builds its message anew.
    (0..DUPLICATE_SENDS)
        .map(|_| message_at(chat, Role::User, "only once", at).with_client_message_id(key))
        .collect()
}

#[track_caller]
fn assert_one_created(b: &str, results: &[Appended], history: &[Message]) {
    let created: Vec<&Appended> = results.iter().filter(|r| r.created).collect();
    assert_eq!(
        created.len(),
        1,
        "[{b}] exactly one of {} duplicate sends must report `created: true`",
        results.len()
    );
    let original = &created[0].message;
    for r in results {
        assert_eq!(
            r.message, *original,
            "[{b}] every duplicate send must return the original message"
        );
    }
    assert_eq!(
        history,
        std::slice::from_ref(original),
        "[{b}] duplicate sends must store exactly one message"
    );
}

/// Idempotent appends: [`DUPLICATE_SENDS`] identical sends in flight at once store one message;
/// a repeat returns the original; keys are scoped to their chat; a key is required.
pub async fn idempotent_append(store: &dyn MessageStore) {
    let b = store.backend();
    let chat = new_chat(store).await;
    let sends = duplicate_sends(&chat.key(), "send-1", now());
    let results: Vec<Appended> = join_all(sends.iter().map(|m| store.append_idempotent(m)))
        .await
        .into_iter()
        .map(|r| ok(store, r, "concurrent append_idempotent"))
        .collect();
    let history = all_history(store, &chat.key()).await;
    assert_one_created(b, &results, &history);
    assert!(
        results.iter().all(|r| r.first_in_chat == r.created),
        "[{b}] the send stored in an empty chat is its first message (`first_in_chat`), the \
         repeats are not"
    );
    let original = history[0].clone();

    let again =
        message_at(&chat.key(), Role::User, "retry", now()).with_client_message_id("send-1");
    let repeat = ok(store, store.append_idempotent(&again).await, "repeat send");
    assert!(
        !repeat.created,
        "[{b}] a repeat must say it created nothing"
    );
    assert_eq!(
        repeat.message, original,
        "[{b}] a repeat must return the original"
    );

    let other =
        message_at(&chat.key(), Role::User, "second", now()).with_client_message_id("send-2");
    let second = ok(store, store.append_idempotent(&other).await, "new key");
    assert!(
        !second.first_in_chat,
        "[{b}] a chat's second message is not its first"
    );
    assert!(
        second.created && second.message == other,
        "[{b}] a new key stores a new message"
    );

    let elsewhere = new_chat(store).await;
    let same_key = message_at(&elsewhere.key(), Role::User, "other chat", now())
        .with_client_message_id("send-1");
    assert!(
        ok(
            store,
            store.append_idempotent(&same_key).await,
            "key in another chat"
        )
        .created,
        "[{b}] client message ids are scoped to their chat"
    );
    assert_eq!(
        all_history(store, &chat.key()).await.len(),
        2,
        "[{b}] a key in another chat must not touch this one"
    );

    let keyless = message_at(&chat.key(), Role::User, "no key", now());
    match store.append_idempotent(&keyless).await {
        Err(Error::Invalid { .. }) => {}
        other => panic!("[{b}] append_idempotent without a key must be Invalid, got {other:?}"),
    }
    let taken =
        message_at(&chat.key(), Role::User, "plain", now()).with_client_message_id("send-2");
    match store.append(&taken).await {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("[{b}] a plain append with a taken key must fail, got {other:?}"),
    }
    match store.append(&other).await {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("[{b}] appending one message id twice must fail, got {other:?}"),
    }
    let orphan = message_at(&unknown_chat(), Role::User, "nowhere", now());
    match store.append(&orphan).await {
        Err(Error::NotFound { what: "chat", .. }) => {}
        other => panic!("[{b}] appending to a missing chat must be NotFound, got {other:?}"),
    }
    assert_eq!(
        all_history(store, &chat.key()).await.len(),
        2,
        "[{b}] failed appends must store nothing"
    );
}

/// A turn (a user message and the reply that answers it) is stored in one call: the chat is
/// created when missing, the reply follows its user message, a repeated client key stores
/// nothing, and [`DUPLICATE_SENDS`] identical turns at once store one user message and one reply.
pub async fn turns(store: &dyn MessageStore) {
    let b = store.backend();
    let turn = |chat: &ChatKey, content: &str, key: Option<&str>| {
        let mut user = message_at(chat, Role::User, content, now());
        if let Some(key) = key {
            user = user.with_client_message_id(key);
        }
        let mut reply = Message::assistant_streaming(chat.clone()).replying_to(user.id);
        reply.created_at = user.created_at;
        reply.updated_at = user.updated_at;
        (user, reply)
    };

    // A chat that does not exist yet is created by its first turn.
    let chat = unknown_chat();
    let (user, reply) = turn(&chat, "first", None);
    let first = ok(store, store.append_turn(&user, &reply).await, "append_turn");
    assert!(
        first.created && first.message == user,
        "[{b}] a new turn is created and returns its user message"
    );
    assert!(
        first.first_in_chat,
        "[{b}] the turn that creates a chat is its first (`first_in_chat`)"
    );
    assert!(
        ok(store, store.get_chat(&chat).await, "get_chat").is_some(),
        "[{b}] append_turn creates a missing chat"
    );
    assert_eq!(
        all_history(store, &chat).await,
        vec![user.clone(), reply.clone()],
        "[{b}] a turn stores the user message, then its reply"
    );

    // The next turn comes after the earlier messages, in an existing chat.
    let (keyed, keyed_reply) = turn(&chat, "second", Some("turn-1"));
    let second = ok(
        store,
        store.append_turn(&keyed, &keyed_reply).await,
        "append_turn",
    );
    assert!(second.created, "[{b}] a turn with a new key is created");
    assert!(
        !second.first_in_chat,
        "[{b}] a chat's second turn is not its first"
    );
    assert_eq!(
        ids(&all_history(store, &chat).await),
        vec![user.id, reply.id, keyed.id, keyed_reply.id],
        "[{b}] a turn is appended after the chat's earlier messages"
    );

    // A repeat of the key stores nothing and returns the original user message.
    let (again, again_reply) = turn(&chat, "second, again", Some("turn-1"));
    let repeat = ok(
        store,
        store.append_turn(&again, &again_reply).await,
        "repeat turn",
    );
    assert!(
        !repeat.created && repeat.message == keyed && !repeat.first_in_chat,
        "[{b}] a repeated key returns the original user message and creates nothing"
    );

    // A chat created empty: its first turn is its first message.
    let empty = new_chat(store).await.key();
    let (opening, opening_reply) = turn(&empty, "opening", None);
    assert!(
        ok(
            store,
            store.append_turn(&opening, &opening_reply).await,
            "append_turn"
        )
        .first_in_chat,
        "[{b}] the first turn of a chat created empty is its first"
    );
    assert_eq!(
        all_history(store, &chat).await.len(),
        4,
        "[{b}] a repeated turn stores nothing"
    );

    // Identical turns at once: one user message and one reply.
    let racing = unknown_chat();
    let turns: Vec<(Message, Message)> = (0..DUPLICATE_SENDS)
        .map(|_| turn(&racing, "only once", Some("race")))
        .collect();
    let results: Vec<Appended> = join_all(turns.iter().map(|(u, r)| store.append_turn(u, r)))
        .await
        .into_iter()
        .map(|r| ok(store, r, "concurrent append_turn"))
        .collect();
    let winners: Vec<usize> = (0..results.len()).filter(|&i| results[i].created).collect();
    assert_eq!(
        winners.len(),
        1,
        "[{b}] exactly one of {DUPLICATE_SENDS} identical turns is created"
    );
    assert!(
        results[winners[0]].first_in_chat
            && results.iter().filter(|r| r.first_in_chat).count() == 1,
        "[{b}] of identical turns in a new chat, the one created is the chat's first"
    );
    let (won_user, won_reply) = &turns[winners[0]];
    assert!(
        results.iter().all(|r| r.message == *won_user),
        "[{b}] every identical turn returns the stored user message"
    );
    assert_eq!(
        all_history(store, &racing).await,
        vec![won_user.clone(), won_reply.clone()],
        "[{b}] identical turns store one user message and one reply"
    );

    // A reply in another chat is refused, and nothing is stored.
    let (stray, _) = turn(&chat, "stray", None);
    let elsewhere = Message::assistant_streaming(unknown_chat()).replying_to(stray.id);
    match store.append_turn(&stray, &elsewhere).await {
        Err(Error::Invalid { .. }) => {}
        other => panic!("[{b}] a reply in another chat must be Invalid, got {other:?}"),
    }
    assert_eq!(
        all_history(store, &chat).await.len(),
        4,
        "[{b}] a refused turn stores nothing"
    );
}

/// Idempotent appends from [`DUPLICATE_SENDS`] spawned tasks at once (on a multi-threaded
/// runtime, truly in parallel): exactly one message, one `created: true`, one id for all.
pub async fn idempotent_append_spawned(store: DynMessageStore) {
    let b = store.backend();
    let chat = new_chat(&*store).await;
    let tasks: Vec<_> = duplicate_sends(&chat.key(), "spawned", now())
        .into_iter()
        .map(|m| {
            let store = store.clone();
            tokio::spawn(async move { store.append_idempotent(&m).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        match task.await {
            Ok(r) => results.push(ok(&*store, r, "spawned append_idempotent")),
            Err(e) => panic!("[{b}] an append_idempotent task panicked: {e}"),
        }
    }
    let history = all_history(&*store, &chat.key()).await;
    assert_one_created(b, &results, &history);
}

/// Updates of a growing assistant reply are visible to `get_message` and `history`, touch only
/// the changing fields, and bump the chat's activity time.
pub async fn updates(store: &dyn MessageStore) {
    let b = store.backend();
    let chat = new_chat(store).await;
    let at = now();
    let user = message_at(&chat.key(), Role::User, "hello?", at);
    ok(store, store.append(&user).await, "append");
    let mut reply = Message::assistant_streaming(chat.key()).replying_to(user.id);
    reply.created_at = at;
    reply.updated_at = at;
    ok(store, store.append(&reply).await, "append streaming reply");

    let expect = |m: &Message, what: &str| {
        let m = m.clone();
        let what = what.to_string();
        async move {
            let got = ok(
                store,
                store.get_message(&UserId::anonymous(), &m.id).await,
                "get_message",
            );
            assert_eq!(got.as_ref(), Some(&m), "[{b}] get_message after {what}");
            let last = all_history(store, &m.key()).await.pop();
            assert_eq!(last.as_ref(), Some(&m), "[{b}] history after {what}");
        }
    };

    reply.content = "Hel".into();
    reply.updated_at = at + Duration::milliseconds(1);
    ok(store, store.update(&reply).await, "checkpoint");
    expect(&reply, "a checkpoint").await;

    reply.content = "Hello, world".into();
    reply.reasoning = Some("The user greets; greet back.".into());
    reply.tool_calls = vec![
        ToolCall {
            index: 0,
            id: "call_1".into(),
            name: "lookup".into(),
            arguments: r#"{"q":"world"}"#.into(),
        },
        ToolCall {
            index: 1,
            id: "call_2".into(),
            name: "clock".into(),
            arguments: "{}".into(),
        },
    ];
    reply.status = MessageStatus::Complete;
    reply.finish_reason = Some(FinishReason::ToolCalls);
    reply.usage = Some(Usage {
        input_tokens: 12,
        output_tokens: 34,
    });
    reply.updated_at = at + Duration::seconds(2);
    // Fields that never change on update must be left alone, whatever the caller passes.
    let mut sent = reply.clone();
    sent.created_at = at + Duration::days(1);
    sent.client_message_id = Some("ignored".into());
    ok(store, store.update(&sent).await, "final update");
    expect(&reply, "the final update").await;

    let chat_now = ok(store, store.get_chat(&chat.key()).await, "get_chat");
    assert_eq!(
        chat_now.map(|c| c.updated_at),
        Some(reply.updated_at),
        "[{b}] an update must bump the chat's updated_at"
    );

    reply.status = MessageStatus::Failed;
    reply.error = Some("upstream went away".into());
    reply.reasoning = None;
    reply.tool_calls.clear();
    reply.usage = None;
    reply.finish_reason = None;
    reply.updated_at = at + Duration::seconds(3);
    ok(store, store.update(&reply).await, "update clearing fields");
    expect(&reply, "clearing optional fields").await;
    assert_eq!(
        ids(&all_history(store, &chat.key()).await),
        vec![user.id, reply.id],
        "[{b}] updates must not reorder or duplicate messages"
    );

    let ghost = Message::assistant_streaming(chat.key());
    match store.update(&ghost).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("[{b}] updating a message never appended must be NotFound, got {other:?}"),
    }
}

/// Chats: create with a chosen or generated id, `AlreadyExists` on a taken id, get, list most
/// recently active first with limit and offset, rename, and delete with all its messages.
pub async fn chats(store: &dyn MessageStore) {
    let b = store.backend();
    let id = ChatId::generate();
    let created = ok(
        store,
        store
            .create_chat(&UserId::anonymous(), Some(id.clone()), Some("Plans".into()))
            .await,
        "create_chat with an id",
    );
    assert_eq!(created.id, id, "[{b}] a chosen id must be kept");
    assert_eq!(created.title.as_deref(), Some("Plans"));
    assert_eq!(
        ok(
            store,
            store.get_chat(&ChatKey::from(id.clone())).await,
            "get_chat"
        ),
        Some(created.clone()),
        "[{b}] get_chat must return the chat as created"
    );
    match store
        .create_chat(&UserId::anonymous(), Some(id.clone()), None)
        .await
    {
        Err(Error::AlreadyExists { what: "chat", .. }) => {}
        other => panic!("[{b}] a taken chat id must give AlreadyExists, got {other:?}"),
    }
    let generated = ok(
        store,
        store.create_chat(&UserId::anonymous(), None, None).await,
        "create_chat",
    );
    assert!(generated.title.is_none());
    assert_ne!(generated.id, id, "[{b}] generated ids must be fresh");
    assert_eq!(
        ok(store, store.get_chat(&generated.key()).await, "get_chat"),
        Some(generated.clone())
    );
    assert!(
        ok(store, store.get_chat(&unknown_chat()).await, "get_chat").is_none(),
        "[{b}] an unknown chat is None"
    );

    // Activity far in the future puts these chats on top of whatever else the store holds.
    let (a, quiet, c) = (
        new_chat(store).await,
        new_chat(store).await,
        new_chat(store).await,
    );
    let base = now() + Duration::days(1000);
    let in_a = message_at(&a.key(), Role::User, "a", base + Duration::hours(1));
    ok(store, store.append(&in_a).await, "append");
    let in_c = message_at(&c.key(), Role::User, "c", base + Duration::hours(2));
    ok(store, store.append(&in_c).await, "append");
    let top = ok(
        store,
        store
            .list_chats(
                &UserId::anonymous(),
                ChatPage {
                    limit: 2,
                    offset: 0,
                },
            )
            .await,
        "list_chats",
    );
    assert_eq!(
        top.iter().map(|c| &c.id).collect::<Vec<_>>(),
        vec![&c.id, &a.id],
        "[{b}] chats must be listed most recently active first"
    );
    assert_eq!(
        top[0].updated_at, in_c.updated_at,
        "[{b}] a chat's updated_at is its latest message's"
    );
    let second = ok(
        store,
        store
            .list_chats(
                &UserId::anonymous(),
                ChatPage {
                    limit: 1,
                    offset: 1,
                },
            )
            .await,
        "list_chats",
    );
    assert_eq!(
        second.iter().map(|c| &c.id).collect::<Vec<_>>(),
        vec![&a.id],
        "[{b}] list_chats must honour offset and limit"
    );
    let everything = ok(
        store,
        store
            .list_chats(
                &UserId::anonymous(),
                ChatPage {
                    limit: usize::MAX,
                    offset: 0,
                },
            )
            .await,
        "list_chats",
    );
    let mine: Vec<&ChatId> = everything
        .iter()
        .map(|c| &c.id)
        .filter(|i| [&a.id, &quiet.id, &c.id].contains(i))
        .collect();
    assert_eq!(
        mine,
        vec![&c.id, &a.id, &quiet.id],
        "[{b}] full listing order"
    );
    assert!(
        ok(
            store,
            store
                .list_chats(
                    &UserId::anonymous(),
                    ChatPage {
                        limit: 0,
                        offset: 0
                    }
                )
                .await,
            "list_chats"
        )
        .is_empty(),
        "[{b}] a zero limit lists nothing"
    );

    let renamed = ok(
        store,
        store.rename_chat(&a.key(), Some("Renamed ✓".into())).await,
        "rename_chat",
    );
    assert_eq!(renamed.title.as_deref(), Some("Renamed ✓"));
    assert_eq!(
        ok(store, store.get_chat(&a.key()).await, "get_chat").and_then(|c| c.title),
        Some("Renamed ✓".into()),
        "[{b}] a rename must persist"
    );
    let cleared = ok(
        store,
        store.rename_chat(&a.key(), None).await,
        "rename_chat",
    );
    assert!(cleared.title.is_none(), "[{b}] a title can be cleared");
    match store.rename_chat(&unknown_chat(), Some("x".into())).await {
        Err(Error::NotFound { what: "chat", .. }) => {}
        other => panic!("[{b}] renaming an unknown chat must be NotFound, got {other:?}"),
    }

    assert!(
        ok(store, store.delete_chat(&a.key()).await, "delete_chat"),
        "[{b}] deleting a chat reports it existed"
    );
    assert!(ok(store, store.get_chat(&a.key()).await, "get_chat").is_none());
    assert!(
        ok(
            store,
            store.get_message(&UserId::anonymous(), &in_a.id).await,
            "get_message"
        )
        .is_none(),
        "[{b}] deleting a chat must delete its messages"
    );
    assert!(all_history(store, &a.key()).await.is_empty());
    assert!(
        !ok(store, store.delete_chat(&a.key()).await, "delete_chat"),
        "[{b}] deleting twice reports the chat was gone"
    );
    match store
        .append(&message_at(&a.key(), Role::User, "late", now()))
        .await
    {
        Err(Error::NotFound { what: "chat", .. }) => {}
        other => panic!("[{b}] appending to a deleted chat must be NotFound, got {other:?}"),
    }
    // The id is free again, and nothing of the old chat comes back with it.
    ok(
        store,
        store
            .create_chat(&UserId::anonymous(), Some(a.id.clone()), None)
            .await,
        "create_chat with a deleted chat's id",
    );
    assert!(
        all_history(store, &a.key()).await.is_empty(),
        "[{b}] a recreated chat starts empty"
    );
    let fresh = message_at(&a.key(), Role::User, "again", now());
    ok(
        store,
        store.append(&fresh).await,
        "append to a recreated chat",
    );
    assert_eq!(all_history(store, &a.key()).await, vec![fresh]);
}

/// Unicode everywhere, SQL-looking text, and a 1 MiB content, appended and updated.
pub async fn unicode_and_large(store: &dyn MessageStore) {
    let b = store.backend();
    let title = "Grüße 👋 — 你好 — مرحبا — e\u{301}";
    let chat = ok(
        store,
        store
            .create_chat(&UserId::anonymous(), None, Some(title.into()))
            .await,
        "create_chat with a unicode title",
    );
    assert_eq!(
        ok(store, store.get_chat(&chat.key()).await, "get_chat").and_then(|c| c.title),
        Some(title.into())
    );
    let mut m = message_at(
        &chat.key(),
        Role::Assistant,
        "👩‍👩‍👧 family, 🇫🇷 flag, \u{feff}BOM, tabs\tand\r\nlines, 'quotes' \"double\" \\ \
         '; DROP TABLE messages; --",
        now(),
    );
    m.reasoning = Some("思考中… ∑ ∞ ≠".into());
    m.tool_calls = vec![ToolCall {
        index: 0,
        id: "call_ü".into(),
        name: "météo".into(),
        arguments: r#"{"ville":"Zürich","note":"\u00e9 é 😀"}"#.into(),
    }];
    m.client_message_id = Some("clé-🔑".into());
    ok(store, store.append(&m).await, "append unicode");
    assert_eq!(
        ok(
            store,
            store.get_message(&UserId::anonymous(), &m.id).await,
            "get_message"
        ),
        Some(m.clone()),
        "[{b}] unicode must round-trip exactly"
    );

    // 1 MiB exactly, of one- to four-byte characters.
    let unit = "aé€😀"; // 1 + 2 + 3 + 4 bytes
    let mut big = unit.repeat((1 << 20) / unit.len());
    while big.len() < 1 << 20 {
        big.push('x');
    }
    let mut large = message_at(&chat.key(), Role::User, &big, now());
    ok(store, store.append(&large).await, "append 1 MiB");
    let history = all_history(store, &chat.key()).await;
    assert_eq!(history.len(), 2);
    assert!(
        history[1] == large,
        "[{b}] a 1 MiB message must round-trip exactly (got {} bytes)",
        history[1].content.len()
    );
    large.content.push_str(" and a little more ✓");
    large.updated_at += Duration::milliseconds(5);
    ok(store, store.update(&large).await, "update 1 MiB");
    assert!(
        ok(
            store,
            store.get_message(&UserId::anonymous(), &large.id).await,
            "get_message"
        )
        .as_ref()
            == Some(&large),
        "[{b}] a 1 MiB update must round-trip exactly"
    );
}

/// A message of text and two images (one by URL, one inline) round-trips byte for byte, in
/// `append_turn`, `get_message` and `history`; a reply's thinking blocks and generation are kept
/// by its checkpoints, and cleared by one that has none; a text-only message keeps no parts.
pub async fn content_parts(store: &dyn MessageStore) {
    let b = store.backend();
    let chat = new_chat(store).await;
    let at = now();
    // A 1x1 PNG, and bytes that only a byte-exact store returns unchanged.
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
    let mut user = Message::with_parts(
        chat.key(),
        Role::User,
        [
            ContentPart::text("Which of these is the cat? 🐱 'quoted' \"double\""),
            ContentPart::image_url("https://example.com/images/a.png?size=large&v=2"),
            ContentPart::text(" And this one?"),
            ContentPart::image_base64("image/png", png),
        ],
    )
    .with_client_message_id("parts-1");
    user.created_at = at;
    user.updated_at = at;
    assert_eq!(user.parts.len(), 4, "[{b}] the parts are kept");
    let mut reply = Message::assistant_streaming(chat.key()).replying_to(user.id);
    reply.created_at = at;
    reply.updated_at = at;
    ok(
        store,
        store.append_turn(&user, &reply).await,
        "append_turn with images",
    );
    let got = ok(
        store,
        store.get_message(&UserId::anonymous(), &user.id).await,
        "get_message",
    );
    assert_eq!(
        got.as_ref(),
        Some(&user),
        "[{b}] a message with images must round-trip exactly"
    );
    assert_eq!(
        all_history(store, &chat.key()).await.first(),
        Some(&user),
        "[{b}] history must give the parts back exactly"
    );

    reply.content = "The first.".into();
    reply.reasoning = Some("Look at the ears.".into());
    reply.thinking = vec![
        ThinkingBlock::Thinking {
            text: "Look at the ears.".into(),
            signature: "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxyu+/=".into(),
        },
        ThinkingBlock::Redacted {
            data: "EmwKAhgBEgy3va3pzix/LafPsn4a".into(),
        },
    ];
    let mut generation = Generation::of(
        &crate::ChatRequest::user("x")
            .with_temperature(0.25)
            .with_max_tokens(4096)
            .with_reasoning_effort(ReasoningEffort::High)
            .with_thinking_budget(2048)
            // JSON Schemas name `$schema` and `$defs`, and extra fields are anyone's: keys
            // with `$` and `.` must be kept like any other.
            .with_response_format(crate::provider::JsonSchema::new(
                "answer",
                serde_json::json!({
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "$defs": {"city": {"type": "string"}},
                    "type": "object",
                    "properties": {"city": {"$ref": "#/$defs/city"}},
                }),
            ))
            .with_extra("seed", 7)
            .with_extra(
                "metadata",
                serde_json::json!({"a.b": 1, "$c": [1.5, null, true]}),
            ),
        "anthropic",
        "claude-sonnet-4-5",
    );
    generation.tools = vec!["get_time".into()];
    reply.generation = Some(generation);
    reply.status = MessageStatus::Complete;
    reply.finish_reason = Some(FinishReason::Stop);
    reply.updated_at = at + Duration::seconds(1);
    ok(
        store,
        store.update(&reply).await,
        "update with thinking and generation",
    );
    assert_eq!(
        ok(
            store,
            store.get_message(&UserId::anonymous(), &reply.id).await,
            "get_message"
        ),
        Some(reply.clone()),
        "[{b}] thinking blocks and the generation must round-trip exactly"
    );
    reply.thinking.clear();
    reply.generation = None;
    reply.updated_at = at + Duration::seconds(2);
    ok(store, store.update(&reply).await, "update clearing them");
    assert_eq!(
        all_history(store, &chat.key()).await,
        vec![user, reply],
        "[{b}] an update without thinking or generation must clear them"
    );

    let plain = Message::with_parts(chat.key(), Role::User, [ContentPart::text("just text")]);
    assert!(plain.parts.is_empty(), "text alone keeps no parts");
    assert_eq!(plain.content, "just text");
}

/// Crash recovery: `streaming` assistant replies become `interrupted` with their checkpointed
/// content kept, and `updated_before` spares replies checkpointed since.
pub async fn recovery(store: &dyn MessageStore) {
    let b = store.backend();
    let chat = new_chat(store).await;
    let long_ago = Utc.with_ymd_and_hms(2001, 1, 1, 0, 0, 0).single();
    let Some(long_ago) = long_ago else {
        panic!("a valid date")
    };
    let user = message_at(&chat.key(), Role::User, "question", long_ago);
    ok(store, store.append(&user).await, "append");
    let mut stale = Message::assistant_streaming(chat.key()).replying_to(user.id);
    stale.content = "partial answ".into();
    stale.reasoning = Some("half a thought".into());
    stale.created_at = long_ago;
    stale.updated_at = long_ago;
    ok(store, store.append(&stale).await, "append stale reply");
    let mut done = message_at(&chat.key(), Role::Assistant, "finished", long_ago);
    done.status = MessageStatus::Complete;
    ok(store, store.append(&done).await, "append finished reply");
    let mut live = Message::assistant_streaming(chat.key());
    live.content = "still going".into();
    live.created_at = now();
    live.updated_at = live.created_at;
    ok(store, store.append(&live).await, "append live reply");

    let changed = ok(
        store,
        store
            .recover_streaming(Some(long_ago + Duration::days(1)))
            .await,
        "recover_streaming(updated_before)",
    );
    assert_eq!(
        changed, 1,
        "[{b}] only the reply checkpointed before the cutoff may change"
    );
    let get = |id: MessageId| async move {
        match ok(
            store,
            store.get_message(&UserId::anonymous(), &id).await,
            "get_message",
        ) {
            Some(m) => m,
            None => panic!("[{b}] message {id} vanished during recovery"),
        }
    };
    let recovered = get(stale.id).await;
    assert_eq!(
        recovered.status,
        MessageStatus::Interrupted,
        "[{b}] stale reply"
    );
    assert_eq!(
        (recovered.content.as_str(), recovered.reasoning.as_deref()),
        ("partial answ", Some("half a thought")),
        "[{b}] recovery must keep the checkpointed content"
    );
    assert_eq!(
        get(live.id).await.status,
        MessageStatus::Streaming,
        "[{b}] a reply checkpointed after `updated_before` must be left alone"
    );

    let changed = ok(
        store,
        store.recover_streaming(None).await,
        "recover_streaming(None)",
    );
    assert!(
        changed >= 1,
        "[{b}] recovery without a cutoff must take every streaming reply"
    );
    let live_now = get(live.id).await;
    assert_eq!(live_now.status, MessageStatus::Interrupted);
    assert_eq!(live_now.content, "still going");
    assert_eq!(
        get(done.id).await,
        done,
        "[{b}] finished replies are never touched"
    );
    assert_eq!(
        get(user.id).await,
        user,
        "[{b}] user messages are never touched"
    );
}

/// Recovery one reply at a time: `streaming_replies` lists the assistant replies still streaming
/// (and nothing else), `interrupt_reply` marks one of them `interrupted` with its checkpointed
/// content, and leaves finished replies and other messages alone.
pub async fn reply_recovery(store: &dyn MessageStore) {
    let b = store.backend();
    let chat = new_chat(store).await;
    let user = message_at(&chat.key(), Role::User, "question", now());
    ok(store, store.append(&user).await, "append");
    let mut first = Message::assistant_streaming(chat.key()).replying_to(user.id);
    first.content = "checkpointed".into();
    ok(store, store.append(&first).await, "append streaming reply");
    let second = Message::assistant_streaming(chat.key());
    ok(store, store.append(&second).await, "append streaming reply");
    let mut done = message_at(&chat.key(), Role::Assistant, "finished", now());
    done.status = MessageStatus::Complete;
    ok(store, store.append(&done).await, "append finished reply");

    let listed = ok(store, store.streaming_replies().await, "streaming_replies");
    let mine: Vec<MessageId> = listed
        .iter()
        .filter(|m| m.chat_id == chat.id)
        .map(|m| m.id)
        .collect();
    assert_eq!(
        mine,
        [first.id, second.id],
        "[{b}] streaming_replies lists exactly the streaming assistant replies, oldest first"
    );
    assert!(
        listed
            .iter()
            .all(|m| m.role == Role::Assistant && m.status == MessageStatus::Streaming),
        "[{b}] streaming_replies lists only streaming assistant messages"
    );
    let listed_first = listed.iter().find(|m| m.id == first.id);
    assert_eq!(
        listed_first.map(|m| m.content.as_str()),
        Some("checkpointed"),
        "[{b}] streaming_replies returns the checkpointed content"
    );

    assert!(
        ok(
            store,
            store.interrupt_reply(&first.id).await,
            "interrupt_reply"
        ),
        "[{b}] a streaming reply is interrupted"
    );
    assert!(
        !ok(
            store,
            store.interrupt_reply(&first.id).await,
            "interrupt_reply again"
        ),
        "[{b}] a reply already interrupted does not change again"
    );
    for id in [done.id, user.id, MessageId::generate()] {
        assert!(
            !ok(store, store.interrupt_reply(&id).await, "interrupt_reply"),
            "[{b}] only streaming assistant replies can be interrupted"
        );
    }
    let got = ok(
        store,
        store.get_message(&UserId::anonymous(), &first.id).await,
        "get_message",
    );
    let Some(got) = got else {
        panic!("[{b}] message vanished")
    };
    assert_eq!(
        (got.status, got.content.as_str()),
        (MessageStatus::Interrupted, "checkpointed"),
        "[{b}] interrupt_reply keeps the checkpointed content"
    );
    assert_eq!(
        ok(
            store,
            store.get_message(&UserId::anonymous(), &done.id).await,
            "get_message"
        ),
        Some(done.clone()),
        "[{b}] finished replies are never touched"
    );
    let still: Vec<MessageId> = ok(store, store.streaming_replies().await, "streaming_replies")
        .iter()
        .filter(|m| m.chat_id == chat.id)
        .map(|m| m.id)
        .collect();
    assert_eq!(
        still,
        [second.id],
        "[{b}] the other reply is still streaming"
    );
    ok(
        store,
        store.interrupt_reply(&second.id).await,
        "interrupt_reply",
    );
}

/// Two store handles on one database (two pools on one SQLite file, two PostgreSQL stores on one
/// schema — as two processes would have) see each other's writes, and concurrent appends
/// through both never collide.
pub async fn two_instances(a: &dyn MessageStore, b: &dyn MessageStore) {
    let name = a.backend();
    let chat = ok(
        a,
        a.create_chat(&UserId::anonymous(), None, Some("shared".into()))
            .await,
        "create_chat on a",
    );
    assert_eq!(
        ok(b, b.get_chat(&chat.key()).await, "get_chat on b"),
        Some(chat.clone()),
        "[{name}] b must see a chat created through a"
    );
    let question = message_at(&chat.key(), Role::User, "from a", now());
    ok(a, a.append(&question).await, "append on a");
    assert_eq!(
        all_history(b, &chat.key()).await,
        vec![question.clone()],
        "[{name}] b must see a's message"
    );
    let mut reply = Message::assistant_streaming(chat.key()).replying_to(question.id);
    reply.created_at = now();
    reply.updated_at = reply.created_at;
    ok(b, b.append(&reply).await, "append on b");
    reply.content = "checkpointed by b".into();
    reply.updated_at += Duration::milliseconds(3);
    ok(b, b.update(&reply).await, "update on b");
    assert_eq!(
        ok(
            a,
            a.get_message(&UserId::anonymous(), &reply.id).await,
            "get_message on a"
        ),
        Some(reply.clone()),
        "[{name}] a must see b's checkpoint"
    );

    // Interleaved appends through both: no sequence number may be handed out twice.
    let batch: Vec<Message> = (0..20)
        .map(|i| message_at(&chat.key(), Role::User, &format!("burst {i}"), now()))
        .collect();
    let results = join_all(batch.iter().enumerate().map(|(i, m)| {
        let store = if i % 2 == 0 { a } else { b };
        store.append(m)
    }))
    .await;
    for r in results {
        ok(a, r, "concurrent append through two stores");
    }
    let history = all_history(a, &chat.key()).await;
    assert_eq!(
        history.len(),
        22,
        "[{name}] every concurrent append must be stored once"
    );
    let seen: HashSet<MessageId> = history[2..].iter().map(|m| m.id).collect();
    assert_eq!(
        seen,
        batch.iter().map(|m| m.id).collect::<HashSet<_>>(),
        "[{name}] the concurrent appends must all be there"
    );
    assert_eq!(
        ids(&all_history(b, &chat.key()).await),
        ids(&history),
        "[{name}] both stores must see one order"
    );

    let sends = duplicate_sends(&chat.key(), "twice", now());
    let results = join_all(sends.iter().enumerate().map(|(i, m)| {
        let store = if i % 2 == 0 { a } else { b };
        store.append_idempotent(m)
    }))
    .await
    .into_iter()
    .map(|r| ok(a, r, "append_idempotent through two stores"))
    .collect::<Vec<_>>();
    let created: Vec<&Appended> = results.iter().filter(|r| r.created).collect();
    assert_eq!(
        created.len(),
        1,
        "[{name}] duplicate sends through two stores must create one message"
    );
    assert!(
        results
            .iter()
            .all(|r| r.message.id == created[0].message.id),
        "[{name}] every duplicate send must return the original"
    );
    assert_eq!(all_history(b, &chat.key()).await.len(), 23);

    ok(
        b,
        b.rename_chat(&chat.key(), Some("renamed by b".into()))
            .await,
        "rename on b",
    );
    assert_eq!(
        ok(a, a.get_chat(&chat.key()).await, "get_chat on a").and_then(|c| c.title),
        Some("renamed by b".into()),
        "[{name}] a must see b's rename"
    );
    assert!(ok(b, b.delete_chat(&chat.key()).await, "delete on b"));
    assert!(
        ok(a, a.get_chat(&chat.key()).await, "get_chat on a").is_none(),
        "[{name}] a must see b's delete"
    );
    assert!(all_history(a, &chat.key()).await.is_empty());
}

/// Ownership: two owners' chats of one id are two chats. Listing shows only the caller's chats;
/// every read or write of a chat through another owner's key sees nothing, answers `NotFound` or
/// `false`, and changes nothing; a client message id is scoped to one owner's chat; a write
/// takes its owner from the message; `append_turn` creates the chat under its messages' owner.
pub async fn ownership(store: &dyn MessageStore) {
    let b = store.backend();
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let user = |name: &str| match UserId::new(format!("{name}-{unique}")) {
        Ok(id) => id,
        Err(e) => panic!("a valid user id: {e}"),
    };
    // Characters a backend's encoding might trip on: '|', '/', ':' and non-ASCII.
    let (alice, bob, carol) = (user("älice"), user("auth0|bob/x:y"), user("carol"));
    let Ok(id) = ChatId::new("demo") else {
        panic!("a valid chat id")
    };
    let a_key = ChatKey::new(alice.clone(), id.clone());
    let b_key = ChatKey::new(bob.clone(), id.clone());
    let c_key = ChatKey::new(carol.clone(), id.clone());

    let a_chat = ok(
        store,
        store
            .create_chat(&alice, Some(id.clone()), Some("Alice's".into()))
            .await,
        "create alice's chat",
    );
    assert_eq!(a_chat.key(), a_key, "[{b}] a chat belongs to its creator");
    let b_chat = ok(
        store,
        store
            .create_chat(&bob, Some(id.clone()), Some("Bob's".into()))
            .await,
        "create bob's chat with the id of alice's",
    );
    assert_eq!(b_chat.key(), b_key, "[{b}] a chat belongs to its creator");
    match store.create_chat(&alice, Some(id.clone()), None).await {
        Err(Error::AlreadyExists { what: "chat", .. }) => {}
        other => panic!("[{b}] a chat id is taken within its owner's chats, got {other:?}"),
    }

    // One client key in each owner's chat: two messages.
    let a_user = message_at(&a_key, Role::User, "alice asks", now()).with_client_message_id("k1");
    let b_user = message_at(&b_key, Role::User, "bob asks", now()).with_client_message_id("k1");
    for m in [&a_user, &b_user] {
        let appended = ok(store, store.append_idempotent(m).await, "append_idempotent");
        assert!(
            appended.created && appended.message == *m,
            "[{b}] a client key is scoped to its owner's chat"
        );
    }
    let mut a_reply = Message::assistant_streaming(&a_key).replying_to(a_user.id);
    a_reply.created_at = now();
    a_reply.updated_at = a_reply.created_at;
    ok(store, store.append(&a_reply).await, "append alice's reply");
    let a_history = vec![a_user.clone(), a_reply.clone()];
    assert_eq!(all_history(store, &a_key).await, a_history);
    assert_eq!(
        all_history(store, &b_key).await,
        vec![b_user.clone()],
        "[{b}] one owner's messages never show in another's chat of the same id"
    );
    assert!(all_history(store, &c_key).await.is_empty());

    let listed = |owner: &UserId| {
        let owner = owner.clone();
        async move {
            let page = ChatPage {
                limit: usize::MAX,
                offset: 0,
            };
            ok(store, store.list_chats(&owner, page).await, "list_chats")
                .into_iter()
                .map(|c| (c.owner, c.id, c.title))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed(&alice).await,
        [(alice.clone(), id.clone(), Some("Alice's".into()))],
        "[{b}] listing shows the caller's chats only"
    );
    assert_eq!(
        listed(&bob).await,
        [(bob.clone(), id.clone(), Some("Bob's".into()))],
        "[{b}] listing shows the caller's chats only"
    );
    assert!(listed(&carol).await.is_empty(), "[{b}] carol has no chats");
    let got = |key: &ChatKey| {
        let key = key.clone();
        async move { ok(store, store.get_chat(&key).await, "get_chat") }
    };
    assert_eq!(
        got(&a_key).await.and_then(|c| c.title),
        Some("Alice's".into())
    );
    assert_eq!(
        got(&b_key).await.and_then(|c| c.title),
        Some("Bob's".into())
    );
    assert!(got(&c_key).await.is_none(), "[{b}] carol has no chat demo");
    let b_before = got(&b_key).await;

    // Message lookups are scoped to their owner.
    assert_eq!(
        ok(
            store,
            store.get_message(&alice, &a_user.id).await,
            "get_message"
        ),
        Some(a_user.clone())
    );
    for other in [&bob, &carol] {
        assert!(
            ok(
                store,
                store.get_message(other, &a_user.id).await,
                "get_message"
            )
            .is_none(),
            "[{b}] get_message finds a message only in its owner's chats"
        );
    }
    for key in [&b_key, &c_key] {
        match store
            .history(key, HistoryPage::before(a_reply.id, 10))
            .await
        {
            Err(Error::NotFound {
                what: "message", ..
            }) => {}
            other => panic!(
                "[{b}] a cursor at another owner's message must fail with NotFound, got {other:?}"
            ),
        }
    }

    // Writes through another owner's key change nothing.
    let mut forged = a_reply.clone();
    forged.owner = bob.clone();
    forged.content = "forged".into();
    forged.status = MessageStatus::Complete;
    forged.updated_at += Duration::seconds(5);
    match store.update(&forged).await {
        Err(Error::NotFound { .. }) => {}
        other => {
            panic!("[{b}] updating a message under another owner must be NotFound, got {other:?}")
        }
    }
    assert_eq!(
        ok(
            store,
            store.get_message(&alice, &a_reply.id).await,
            "get_message"
        ),
        Some(a_reply.clone()),
        "[{b}] an update under another owner must not write"
    );
    let stray = message_at(&c_key, Role::User, "carol writes", now());
    match store.append(&stray).await {
        Err(Error::NotFound { what: "chat", .. }) => {}
        other => panic!(
            "[{b}] appending to a chat its owner does not have must be NotFound, got {other:?}"
        ),
    }
    match store.rename_chat(&c_key, Some("taken over".into())).await {
        Err(Error::NotFound { what: "chat", .. }) => {}
        other => {
            panic!("[{b}] renaming a chat its owner does not have must be NotFound, got {other:?}")
        }
    }
    assert!(
        !ok(store, store.delete_chat(&c_key).await, "delete_chat"),
        "[{b}] deleting a chat its owner does not have deletes nothing"
    );
    assert_eq!(all_history(store, &a_key).await, a_history);
    assert_eq!(all_history(store, &b_key).await, vec![b_user.clone()]);
    assert_eq!(
        got(&b_key).await,
        b_before,
        "[{b}] bob's chat is untouched by the others' writes"
    );
    assert_eq!(
        got(&a_key).await.and_then(|c| c.title),
        Some("Alice's".into())
    );

    // The owner's own writes reach only the owner's chat.
    ok(
        store,
        store
            .rename_chat(&b_key, Some("Bob's, renamed".into()))
            .await,
        "rename bob's chat",
    );
    assert_eq!(
        got(&a_key).await.and_then(|c| c.title),
        Some("Alice's".into()),
        "[{b}] renaming bob's chat leaves alice's alone"
    );
    let listed_streaming = ok(store, store.streaming_replies().await, "streaming_replies");
    assert_eq!(
        listed_streaming
            .iter()
            .find(|m| m.id == a_reply.id)
            .map(Message::key),
        Some(a_key.clone()),
        "[{b}] streaming_replies are every owner's, each with its owner"
    );
    a_reply.content = "the answer".into();
    a_reply.status = MessageStatus::Complete;
    a_reply.updated_at += Duration::seconds(1);
    ok(store, store.update(&a_reply).await, "update alice's reply");
    assert_eq!(
        ok(
            store,
            store.get_message(&alice, &a_reply.id).await,
            "get_message"
        ),
        Some(a_reply.clone())
    );

    // A turn creates its chat under its messages' owner.
    let c_user = message_at(&c_key, Role::User, "carol asks", now()).with_client_message_id("k1");
    let mut c_reply = Message::assistant_streaming(&c_key).replying_to(c_user.id);
    c_reply.created_at = c_user.created_at;
    c_reply.updated_at = c_user.updated_at;
    let turn = ok(
        store,
        store.append_turn(&c_user, &c_reply).await,
        "append_turn",
    );
    assert!(
        turn.created,
        "[{b}] the key of another owner's chat is no repeat"
    );
    assert_eq!(
        got(&c_key).await.map(|c| c.key()),
        Some(c_key.clone()),
        "[{b}] append_turn creates the chat under the messages' owner"
    );
    assert_eq!(all_history(store, &c_key).await, vec![c_user, c_reply]);
    assert_eq!(all_history(store, &a_key).await.len(), 2);
    assert_eq!(all_history(store, &b_key).await.len(), 1);
    let mixed_user = message_at(&a_key, Role::User, "mine", now());
    let theirs = Message::assistant_streaming(&b_key).replying_to(mixed_user.id);
    match store.append_turn(&mixed_user, &theirs).await {
        Err(Error::Invalid { .. }) => {}
        other => panic!("[{b}] a reply in another owner's chat must be Invalid, got {other:?}"),
    }

    // Deleting bob's chat leaves alice's and carol's.
    assert!(ok(
        store,
        store.delete_chat(&b_key).await,
        "delete bob's chat"
    ));
    assert!(got(&b_key).await.is_none());
    assert!(
        ok(
            store,
            store.get_message(&bob, &b_user.id).await,
            "get_message"
        )
        .is_none(),
        "[{b}] deleting a chat deletes its messages"
    );
    assert_eq!(
        all_history(store, &a_key).await,
        vec![a_user.clone(), a_reply.clone()],
        "[{b}] deleting bob's chat leaves alice's chat of the same id"
    );
    assert_eq!(all_history(store, &c_key).await.len(), 2);
    for key in [&a_key, &c_key] {
        ok(store, store.delete_chat(key).await, "delete_chat");
    }
}

/// A working store answers `ping`, again and again.
pub async fn ping(store: &dyn MessageStore) {
    for _ in 0..3 {
        ok(store, store.ping().await, "ping");
    }
}
