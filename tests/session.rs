//! Sessions end to end: scripted providers, every store in `stores()`, the in-process hub.
//!
//! Each test body is a function over an `Arc<dyn MessageStore>`; `stores()` lists the backends
//! it runs against.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use chatstream::provider::{Script, ScriptedProvider};
use chatstream::{
    Chat, ChatId, ChatKey, ChatRequest, ChatService, ChatSession, ContextBudget, Delta,
    DeltaStream, Error, EventPayload, FinishReason, HubEvent, HubEventStream, LlmProvider,
    LocalHub, Message, MessageId, MessageStatus, MessageStore, RetryNotice, Role, SendOptions,
    UserId, UserInput,
    session::TokenCounter,
    store::{Appended, ChatPage, DynMessageStore, HistoryPage, MemoryStore},
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::time::Instant;

/// Every store the session tests run against.
async fn stores() -> Vec<DynMessageStore> {
    vec![Arc::new(MemoryStore::new()), sqlite_store().await]
}

/// A SQLite file store in a fresh temp dir (kept until the process ends: the crash test needs
/// the file to outlive the runtime the store was opened on).
async fn sqlite_store() -> DynMessageStore {
    let dir = tempfile::tempdir().unwrap().keep();
    Arc::new(
        chatstream::store::SqliteStore::open_path(dir.join("session.db"))
            .await
            .unwrap(),
    )
}

fn service(provider: &ScriptedProvider, store: DynMessageStore) -> ChatService {
    ChatService::builder()
        .provider(Arc::new(provider.clone()))
        .store(store)
        .build()
        .unwrap()
}

fn chat() -> ChatId {
    ChatId::generate()
}

#[derive(Debug, Default)]
struct Drained {
    events: Vec<HubEvent>,
    text: String,
    done: Option<(
        MessageStatus,
        Option<FinishReason>,
        Option<chatstream::Usage>,
    )>,
    errors: Vec<String>,
}

fn absorb(d: &mut Drained, e: HubEvent) {
    match &*e.payload {
        EventPayload::Delta(Delta::Text { text }) => d.text.push_str(text),
        EventPayload::Done {
            status,
            finish_reason,
            usage,
            ..
        } => d.done = Some((*status, *finish_reason, *usage)),
        EventPayload::Error { code, .. } => d.errors.push(code.clone()),
        _ => {}
    }
    d.events.push(e);
}

async fn drain(mut events: HubEventStream) -> Drained {
    let mut d = Drained::default();
    while let Some(e) = events.next().await {
        absorb(&mut d, e.expect("event"));
    }
    d
}

/// Reads until the first `n` deltas were seen (delta k is event k + 1, after `start`; a
/// subscriber that lags may get several deltas coalesced into one event).
async fn read_texts(events: &mut HubEventStream, n: u64) -> Drained {
    let mut d = Drained::default();
    while d.events.last().is_none_or(|e| e.seq < n + 1) {
        absorb(&mut d, events.next().await.expect("more events").unwrap());
    }
    d
}

async fn message(store: &DynMessageStore, id: MessageId) -> Message {
    store
        .get_message(&UserId::anonymous(), &id)
        .await
        .unwrap()
        .expect("stored")
}

/// Waits (on tokio's clock) until the message is no longer streaming.
async fn wait_final(store: &DynMessageStore, id: MessageId) -> Message {
    for _ in 0..10_000 {
        let m = message(store, id).await;
        if m.status.is_final() {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("message {id} never finished");
}

fn words(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("w{i} ")).collect()
}

async fn text_reply_is_persisted_complete(store: DynMessageStore) {
    let provider = ScriptedProvider::new().then(Script::reply(["Hel", "lo", " world"]));
    let service = service(&provider, store.clone());
    let session = service.session(chat());
    let reply = session.send(UserInput::new("Hi there")).await.unwrap();
    assert!(reply.is_new());
    let user_id = reply.user_message.id;
    let assistant_id = reply.assistant_message_id;
    let d = drain(reply.events).await;
    assert_eq!(d.text, "Hello world");
    let names: Vec<_> = d.events.iter().map(|e| e.event_name()).collect();
    assert_eq!(names.first(), Some(&"start"));
    assert_eq!(names.last(), Some(&"done"));
    assert!(d.events.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    assert_eq!(d.events[0].seq, 1);
    match &*d.events[0].payload {
        EventPayload::Start {
            message_id,
            user_message_id,
            chat_id,
        } => {
            assert_eq!((*message_id, *user_message_id), (assistant_id, user_id));
            assert_eq!(chat_id, session.chat_id());
        }
        other => panic!("{other:?}"),
    }
    let (status, finish, usage) = d.done.unwrap();
    assert_eq!(status, MessageStatus::Complete);
    assert_eq!(finish, Some(FinishReason::Stop));
    assert_eq!(
        usage.map(|u| (u.input_tokens, u.output_tokens)),
        Some((10, 10))
    );

    let history = session.history(HistoryPage::default()).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(
        (history[0].role, history[0].content.as_str()),
        (Role::User, "Hi there")
    );
    let a = &history[1];
    assert_eq!(a.id, assistant_id);
    assert_eq!(a.status, MessageStatus::Complete);
    assert_eq!(a.content, "Hello world");
    assert_eq!(a.reply_to, Some(user_id));
    assert_eq!(a.finish_reason, Some(FinishReason::Stop));
    assert_eq!(a.usage.map(|u| u.output_tokens), Some(10));
    let requests = provider.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].messages.len(), 1);
    assert_eq!(requests[0].messages[0].content, "Hi there");
    assert_eq!(provider.open_streams(), 0);
    assert!(!session.is_live().await.unwrap());
}

async fn cancel_mid_reply_persists_the_partial_reply(store: DynMessageStore) {
    let provider = ScriptedProvider::new()
        .then(Script::new().text("Par").text("tial").stall())
        .then(Script::new().text("again").stall());
    let service = service(&provider, store.clone());
    let session = service.session(chat());
    let mut reply = session.send(UserInput::new("go")).await.unwrap();
    read_texts(&mut reply.events, 2).await;
    assert_eq!(provider.open_streams(), 1);
    assert!(reply.cancel().await.unwrap());
    assert!(!reply.cancel().await.unwrap(), "second cancel is harmless");
    let rest = drain(reply.events).await;
    assert_eq!(rest.done.map(|d| d.0), Some(MessageStatus::Cancelled));
    assert_eq!(provider.open_streams(), 0, "upstream dropped");
    let m = message(&store, reply.assistant_message_id).await;
    assert_eq!(m.status, MessageStatus::Cancelled);
    assert_eq!(m.content, "Partial");
    assert!(!session.cancel().await.unwrap(), "nothing live");

    // The same through the session (the hub's terminate), from another handle.
    let mut reply = session.send(UserInput::new("more")).await.unwrap();
    read_texts(&mut reply.events, 1).await;
    assert!(session.cancel().await.unwrap());
    assert!(!session.cancel().await.unwrap());
    let rest = drain(reply.events).await;
    assert_eq!(rest.done.map(|d| d.0), Some(MessageStatus::Cancelled));
    assert_eq!(provider.open_streams(), 0);
    let m = message(&store, reply.assistant_message_id).await;
    assert_eq!(
        (m.status, m.content.as_str()),
        (MessageStatus::Cancelled, "again")
    );
    // The cancelled partial reply is context for the next request.
    assert_eq!(
        provider.requests()[1]
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>(),
        ["go", "Partial", "more"]
    );
}

async fn resending_a_client_message_id_returns_the_same_reply(store: DynMessageStore) {
    let provider = ScriptedProvider::new()
        .then(Script::reply(["one"]))
        .then(Script::reply(["slow", " two"]).per_delta_delay(Duration::from_millis(20)));
    let service = service(&provider, store.clone());
    let session = service.session(chat());
    let first = session
        .send(UserInput::new("hello").with_client_message_id("k1"))
        .await
        .unwrap();
    let first_ids = (first.user_message.id, first.assistant_message_id);
    assert_eq!(drain(first.events).await.text, "one");
    // Repeat of a finished reply: same ids, same text, nothing new stored or started.
    let again = session
        .send(UserInput::new("hello").with_client_message_id("k1"))
        .await
        .unwrap();
    assert!(!again.is_new());
    assert_eq!(
        (again.user_message.id, again.assistant_message_id),
        first_ids
    );
    let d = drain(again.events).await;
    assert_eq!(d.text, "one");
    assert_eq!(d.done.map(|d| d.0), Some(MessageStatus::Complete));
    assert_eq!(provider.started(), 1);
    assert_eq!(
        session.history(HistoryPage::default()).await.unwrap().len(),
        2
    );

    // Repeat while the reply is live: it follows the running reply, from its start.
    let live = session
        .send(UserInput::new("again").with_client_message_id("k2"))
        .await
        .unwrap();
    let repeat = session
        .send(UserInput::new("again").with_client_message_id("k2"))
        .await
        .unwrap();
    assert!(!repeat.is_new());
    assert_eq!(repeat.assistant_message_id, live.assistant_message_id);
    let (a, b) = tokio::join!(drain(live.events), drain(repeat.events));
    assert_eq!(a.text, "slow two");
    assert_eq!(b.text, "slow two");
    assert_eq!(provider.started(), 2);
    let history = session.history(HistoryPage::default()).await.unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(
        history.iter().filter(|m| m.role == Role::User).count(),
        2,
        "one user message per key"
    );
}

/// A handle outlives its reply: cancelling it later never stops a newer reply in the same chat,
/// whether the handle started its reply or followed it as a repeated send.
async fn an_old_handle_never_cancels_a_newer_reply(store: DynMessageStore) {
    let provider = ScriptedProvider::new()
        .then(Script::reply(["first"]))
        .then(Script::reply(["slow", " second"]).per_delta_delay(Duration::from_millis(50)));
    let service = service(&provider, store.clone());
    let session = service.session(chat());
    let mut own = session
        .send(UserInput::new("one").with_client_message_id("k1"))
        .await
        .unwrap();
    let own_events = std::mem::replace(&mut own.events, futures::stream::empty().boxed());
    assert_eq!(drain(own_events).await.text, "first");
    // The same send again: a handle on the finished reply.
    let repeat = session
        .send(UserInput::new("one").with_client_message_id("k1"))
        .await
        .unwrap();
    assert!(!repeat.is_new());
    let newer = session.send(UserInput::new("two")).await.unwrap();
    let mut events = newer.events;
    let first = read_texts(&mut events, 1).await;
    assert_eq!(first.text, "slow");
    assert!(
        !own.cancel().await.unwrap(),
        "the own handle of a finished reply"
    );
    assert!(
        !repeat.cancel().await.unwrap(),
        "a repeat's handle of a finished reply"
    );
    assert!(session.is_live().await.unwrap());
    let rest = drain(events).await;
    assert_eq!(rest.text, " second");
    assert_eq!(rest.done.map(|d| d.0), Some(MessageStatus::Complete));
    let m = wait_final(&store, newer.assistant_message_id).await;
    assert_eq!(
        (m.status, m.content.as_str()),
        (MessageStatus::Complete, "slow second")
    );

    // A reply left `streaming` in the store by a process that died: a repeat of its send gets a
    // handle on it, and that handle must not stop the reply that runs in the chat afterwards.
    let provider = ScriptedProvider::new()
        .then(Script::reply(["slow", " third"]).per_delta_delay(Duration::from_millis(50)));
    let service = self::service(&provider, store.clone());
    let session = service.session(chat());
    let user = Message::user(session.key(), "lost").with_client_message_id("k9");
    let left = Message::assistant_streaming(session.key()).replying_to(user.id);
    store.append_turn(&user, &left).await.unwrap();
    let repeat = session
        .send(UserInput::new("lost").with_client_message_id("k9"))
        .await
        .unwrap();
    assert_eq!(repeat.assistant_message_id, left.id);
    let newer = session.send(UserInput::new("three")).await.unwrap();
    let mut events = newer.events;
    assert_eq!(read_texts(&mut events, 1).await.text, "slow");
    assert!(!repeat.cancel().await.unwrap(), "a handle on a dead reply");
    let rest = drain(events).await;
    assert_eq!(rest.text, " third");
    assert_eq!(rest.done.map(|d| d.0), Some(MessageStatus::Complete));
}

async fn a_second_send_while_live_is_busy(store: DynMessageStore) {
    let provider = ScriptedProvider::new()
        .then(Script::new().text("x").stall())
        .then(Script::reply(["ok"]));
    let service = service(&provider, store.clone());
    let session = service.session(chat());
    let mut reply = session.send(UserInput::new("first")).await.unwrap();
    read_texts(&mut reply.events, 1).await;
    let err = session.send(UserInput::new("second")).await.unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err:?}");
    assert_eq!(err.code(), "busy");
    // Another chat is not affected.
    let other = service.session(chat());
    let elsewhere = other.send(UserInput::new("elsewhere")).await.unwrap();
    assert_eq!(drain(elsewhere.events).await.text, "ok");
    assert_eq!(
        session.history(HistoryPage::default()).await.unwrap().len(),
        2,
        "a busy send stores nothing"
    );
    reply.cancel().await.unwrap();
    drain(reply.events).await;
}

async fn a_late_subscriber_replays_exactly(store: DynMessageStore) {
    let w = words(300);
    let provider = ScriptedProvider::new()
        .then(Script::reply(w.clone()).per_delta_delay(Duration::from_millis(1)));
    let service = service(&provider, store);
    let session = service.session(chat());
    let mut reply = session.send(UserInput::new("long")).await.unwrap();
    let first = read_texts(&mut reply.events, 120).await;
    let late = session.subscribe(None).await.unwrap().unwrap();
    let (late, rest) = tokio::join!(drain(late), drain(reply.events));
    assert_eq!(late.text, w.concat());
    assert_eq!(first.text + &rest.text, w.concat());
    assert_eq!(late.done.map(|d| d.0), Some(MessageStatus::Complete));
}

async fn resume_after_n_loses_and_doubles_nothing(store: DynMessageStore) {
    let w = words(200);
    let provider = ScriptedProvider::new()
        .then(Script::reply(w.clone()).per_delta_delay(Duration::from_millis(1)));
    let service = service(&provider, store);
    let session = service.session(chat());
    let mut reply = session.send(UserInput::new("long")).await.unwrap();
    // Resume while live: a client read up to N, dropped, and reconnects with Last-Event-ID N.
    let part = read_texts(&mut reply.events, 50).await;
    let seen = part.events.last().unwrap().seq;
    drop(reply.events);
    let rest = drain(session.subscribe(Some(seen)).await.unwrap().unwrap()).await;
    assert_eq!(part.text + &rest.text, w.concat());
    assert!(rest.events.iter().all(|e| e.seq > seen));
    let done_seq = rest.events.last().unwrap().seq;
    // And after the end, for several N (text delta k has number k + 1).
    for n in [0u64, 1, 2, 3, 17, 64, 100, 150, 199, 200, 201] {
        let d = drain(session.subscribe(Some(n)).await.unwrap().unwrap()).await;
        let skip = (n as usize).saturating_sub(1).min(w.len());
        assert_eq!(d.text, w[skip..].concat(), "after {n}");
        assert!(d.events.iter().all(|e| e.seq > n));
        assert_eq!(d.events.last().unwrap().seq, done_seq);
    }
    assert!(session.subscribe(Some(done_seq)).await.unwrap().is_none());
}

async fn dropping_every_subscriber_does_not_stop_the_reply(store: DynMessageStore) {
    let w = words(50);
    let provider = ScriptedProvider::new()
        .then(Script::reply(w.clone()).per_delta_delay(Duration::from_millis(10)));
    let service = service(&provider, store.clone());
    let session = service.session(chat());
    let mut reply = session.send(UserInput::new("go")).await.unwrap();
    read_texts(&mut reply.events, 3).await;
    let id = reply.assistant_message_id;
    drop(reply);
    let m = wait_final(&store, id).await;
    assert_eq!(m.status, MessageStatus::Complete);
    assert_eq!(m.content, w.concat());
    assert_eq!(provider.open_streams(), 0);
}

/// Replies with the last user message, one character per delta: each chat gets its own text.
#[derive(Debug)]
struct Echo;

impl LlmProvider for Echo {
    fn name(&self) -> &str {
        "echo"
    }
    fn default_model(&self) -> &str {
        "echo"
    }
    fn stream(&self, request: ChatRequest) -> DeltaStream {
        let text = request
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let chars: Vec<String> = text.chars().map(String::from).collect();
        futures::stream::iter(chars)
            .then(|c| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(Delta::text(c))
            })
            .chain(futures::stream::iter([Ok(Delta::finish(
                FinishReason::Stop,
            ))]))
            .boxed()
    }
}

async fn two_hundred_chats_stream_at_once(store: DynMessageStore) {
    let service = ChatService::builder()
        .provider(Arc::new(Echo))
        .store(store.clone())
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let session = service.session(format!("chat-{i}").parse::<ChatId>().unwrap());
        tasks.push(tokio::spawn(async move {
            let content = format!("reply number {i} for this chat");
            let reply = session.send(UserInput::new(content.clone())).await.unwrap();
            let d = drain(reply.events).await;
            (content, d, reply.assistant_message_id)
        }));
    }
    for t in tasks {
        let (content, d, id) = t.await.unwrap();
        assert_eq!(d.text, content);
        assert_eq!(d.done.map(|d| d.0), Some(MessageStatus::Complete));
        let m = message(&store, id).await;
        assert_eq!((m.status, m.content), (MessageStatus::Complete, content));
    }
}

async fn a_slow_subscriber_does_not_delay_a_fast_one(store: DynMessageStore) {
    let w = words(2_000);
    let provider = ScriptedProvider::new()
        .then(Script::reply(w.clone()).per_delta_delay(Duration::from_millis(1)));
    let service = service(&provider, store);
    let session = service.session(chat());
    let started = Instant::now();
    // The handle's own stream is the slow subscriber: never polled until the end.
    let slow = session.send(UserInput::new("go")).await.unwrap();
    let fast = drain(session.subscribe(None).await.unwrap().unwrap()).await;
    let took = started.elapsed();
    assert_eq!(fast.text, w.concat());
    // 2,000 deltas 1 ms apart (tokio's paused clock): the fast one was never held back.
    assert!(
        took < Duration::from_millis(2_100),
        "fast subscriber took {took:?}"
    );
    let late = drain(slow.events).await;
    assert_eq!(late.text, w.concat());
}

/// A store that records every update (time, status, content) and can be told to fail them.
#[derive(Debug)]
struct Recording {
    inner: DynMessageStore,
    updates: Mutex<Vec<(Instant, MessageStatus, String)>>,
    fail_updates: Mutex<u32>,
    fail_history: Mutex<u32>,
    /// How many messages `history` returned, in all.
    rows_read: Mutex<usize>,
}

impl Recording {
    fn new(inner: DynMessageStore) -> Arc<Self> {
        Arc::new(Recording {
            inner,
            updates: Mutex::new(Vec::new()),
            fail_updates: Mutex::new(0),
            fail_history: Mutex::new(0),
            rows_read: Mutex::new(0),
        })
    }
    fn updates(&self) -> Vec<(Instant, MessageStatus, String)> {
        self.updates.lock().unwrap().clone()
    }
    /// The messages `history` returned since the last call.
    fn take_rows_read(&self) -> usize {
        std::mem::take(&mut *self.rows_read.lock().unwrap())
    }
}

#[async_trait]
impl MessageStore for Recording {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn create_chat(
        &self,
        owner: &UserId,
        id: Option<ChatId>,
        title: Option<String>,
    ) -> chatstream::Result<Chat> {
        self.inner.create_chat(owner, id, title).await
    }
    async fn get_chat(&self, chat: &ChatKey) -> chatstream::Result<Option<Chat>> {
        self.inner.get_chat(chat).await
    }
    async fn list_chats(&self, owner: &UserId, page: ChatPage) -> chatstream::Result<Vec<Chat>> {
        self.inner.list_chats(owner, page).await
    }
    async fn rename_chat(&self, chat: &ChatKey, title: Option<String>) -> chatstream::Result<Chat> {
        self.inner.rename_chat(chat, title).await
    }
    async fn delete_chat(&self, chat: &ChatKey) -> chatstream::Result<bool> {
        self.inner.delete_chat(chat).await
    }
    async fn append(&self, message: &Message) -> chatstream::Result<()> {
        self.inner.append(message).await
    }
    async fn append_idempotent(&self, message: &Message) -> chatstream::Result<Appended> {
        self.inner.append_idempotent(message).await
    }
    async fn append_turn(&self, user: &Message, reply: &Message) -> chatstream::Result<Appended> {
        self.inner.append_turn(user, reply).await
    }
    async fn update(&self, message: &Message) -> chatstream::Result<()> {
        {
            let mut fail = self.fail_updates.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(Error::Store {
                    backend: "recording",
                    message: "injected failure".into(),
                    source: None,
                });
            }
        }
        self.updates.lock().unwrap().push((
            Instant::now(),
            message.status,
            message.content.clone(),
        ));
        self.inner.update(message).await
    }
    async fn get_message(
        &self,
        owner: &UserId,
        id: &MessageId,
    ) -> chatstream::Result<Option<Message>> {
        self.inner.get_message(owner, id).await
    }
    async fn history(&self, chat: &ChatKey, page: HistoryPage) -> chatstream::Result<Vec<Message>> {
        {
            let mut fail = self.fail_history.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(Error::Store {
                    backend: "recording",
                    message: "injected history failure".into(),
                    source: None,
                });
            }
        }
        let page = self.inner.history(chat, page).await?;
        *self.rows_read.lock().unwrap() += page.len();
        Ok(page)
    }
    async fn recover_streaming(&self, before: Option<DateTime<Utc>>) -> chatstream::Result<u64> {
        self.inner.recover_streaming(before).await
    }
    async fn streaming_replies(&self) -> chatstream::Result<Vec<Message>> {
        self.inner.streaming_replies().await
    }
}

async fn checkpoints_follow_time_or_count(store: DynMessageStore) {
    let recording = Recording::new(store);
    let mut script = Script::new();
    for i in 0..10 {
        script = script.sleep(Duration::from_millis(10)).text(format!("{i}"));
    }
    script = script.sleep(Duration::from_secs(1));
    for _ in 0..100 {
        script = script.text("x");
    }
    let provider = ScriptedProvider::new().then(script.stall());
    let service = ChatService::builder()
        .provider(Arc::new(provider.clone()))
        .store(recording.clone())
        .checkpoint(Duration::from_millis(250), 64)
        .build()
        .unwrap();
    let session = service.session(chat());
    let t0 = Instant::now();
    let mut reply = session.send(UserInput::new("go")).await.unwrap();
    read_texts(&mut reply.events, 110).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    reply.cancel().await.unwrap();
    let d = drain(reply.events).await;
    assert_eq!(d.done.map(|d| d.0), Some(MessageStatus::Cancelled));
    let ups: Vec<_> = recording
        .updates()
        .into_iter()
        .map(|(t, s, c)| ((t - t0).as_millis(), s, c.len()))
        .collect();
    // 1: 250 ms after the first unsaved delta (10 ms); 2: the 64th delta; 3: 250 ms after the
    // first unsaved one after that (1,100 ms); then nothing until the final write.
    let ten = "0123456789".len();
    assert_eq!(ups.len(), 4, "{ups:?}");
    assert_eq!(
        (ups[0].0, ups[0].1, ups[0].2),
        (260, MessageStatus::Streaming, ten)
    );
    assert_eq!(
        (ups[1].0, ups[1].1, ups[1].2),
        (1100, MessageStatus::Streaming, ten + 64)
    );
    assert_eq!(
        (ups[2].0, ups[2].1, ups[2].2),
        (1350, MessageStatus::Streaming, ten + 100)
    );
    assert_eq!((ups[3].1, ups[3].2), (MessageStatus::Cancelled, ten + 100));
}

async fn failing_checkpoints_do_not_stop_the_reply(store: DynMessageStore) {
    let recording = Recording::new(store.clone());
    *recording.fail_updates.lock().unwrap() = 3;
    let w = words(200);
    let provider = ScriptedProvider::new().then(Script::reply(w.clone()));
    let service = ChatService::builder()
        .provider(Arc::new(provider))
        .store(recording.clone())
        .build()
        .unwrap();
    let reply = service.session(chat()).send("go".into()).await.unwrap();
    let d = drain(reply.events).await;
    assert_eq!(d.text, w.concat());
    let m = message(&store, reply.assistant_message_id).await;
    assert_eq!((m.status, m.content), (MessageStatus::Complete, w.concat()));
}

async fn a_failed_reply_is_persisted_failed_with_an_error_event(store: DynMessageStore) {
    let provider = ScriptedProvider::new()
        .then(Script::new().text("Half a ").fail(|| {
            Error::from_status("scripted", 500, Some("server_error".into()), "boom", None)
        }))
        .then(Script::new().text("no finish"));
    let service = service(&provider, store.clone());
    let session = service.session(chat());
    let reply = session.send(UserInput::new("go")).await.unwrap();
    let d = drain(reply.events).await;
    let names: Vec<_> = d.events.iter().map(|e| e.event_name()).collect();
    assert_eq!(names, ["start", "delta", "error", "done"]);
    assert_eq!(d.errors, ["upstream"]);
    assert_eq!(d.done.map(|d| d.0), Some(MessageStatus::Failed));
    let m = message(&store, reply.assistant_message_id).await;
    assert_eq!(
        (m.status, m.content.as_str()),
        (MessageStatus::Failed, "Half a ")
    );
    assert!(
        m.error.as_deref().unwrap().contains("boom"),
        "{:?}",
        m.error
    );
    assert_eq!(provider.open_streams(), 0);

    // A stream that ends without finishing is a failure too, never a silent success.
    let reply = session.send(UserInput::new("again")).await.unwrap();
    let d = drain(reply.events).await;
    assert_eq!(d.errors, ["truncated"]);
    let m = message(&store, reply.assistant_message_id).await;
    assert_eq!(
        (m.status, m.content.as_str()),
        (MessageStatus::Failed, "no finish")
    );
}

/// A send whose reply cannot get under way (here: the history for the request cannot be read)
/// fails with the store's error, leaves its reply `failed` with that error rather than
/// `streaming`, and the chat free for the next send.
async fn a_send_that_cannot_start_leaves_a_failed_reply(store: DynMessageStore) {
    let recording = Recording::new(store.clone());
    let provider = ScriptedProvider::new().then(Script::reply(["fine"]));
    let service = ChatService::builder()
        .provider(Arc::new(provider.clone()))
        .store(recording.clone())
        .build()
        .unwrap();
    let session = service.session(chat());
    // A message before: the send reads the history (a chat's first turn needs no read).
    store
        .create_chat(&UserId::anonymous(), Some(session.key().id.clone()), None)
        .await
        .unwrap();
    store
        .append(&Message::user(session.key(), "earlier"))
        .await
        .unwrap();
    *recording.fail_history.lock().unwrap() = 1;
    match session.send(UserInput::new("first")).await {
        Err(Error::Store { message, .. }) => assert!(message.contains("injected"), "{message}"),
        other => panic!(
            "the store's error must come back, got {:?}",
            other.map(|_| ())
        ),
    }
    let stored = store
        .history(session.key(), HistoryPage::default())
        .await
        .unwrap();
    assert_eq!(stored.len(), 3, "the turn was stored: {stored:?}");
    assert_eq!(
        (stored[1].role, stored[1].content.as_str()),
        (Role::User, "first")
    );
    assert_eq!(stored[2].status, MessageStatus::Failed);
    assert!(
        stored[2]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("injected"),
        "{:?}",
        stored[2].error
    );
    assert!(!session.is_live().await.unwrap(), "the chat is free again");
    assert_eq!(provider.started(), 0, "no upstream request was made");

    let reply = session.send(UserInput::new("second")).await.unwrap();
    assert_eq!(drain(reply.events).await.text, "fine");
}

async fn retry_notices_pass_through_without_touching_the_text(store: DynMessageStore) {
    let notice = Delta::Retry(RetryNotice {
        attempt: 2,
        provider: "scripted".into(),
        reason: "connection reset".into(),
    });
    let provider = ScriptedProvider::new().then(
        Script::new()
            .text("Hello")
            .delta(notice.clone())
            .text(", again")
            .finish(FinishReason::Stop),
    );
    let service = service(&provider, store.clone());
    let reply = service.session(chat()).send("hi".into()).await.unwrap();
    let d = drain(reply.events).await;
    assert!(
        d.events
            .iter()
            .any(|e| *e.payload == EventPayload::Delta(notice.clone()))
    );
    assert_eq!(d.text, "Hello, again");
    let m = message(&store, reply.assistant_message_id).await;
    assert_eq!(
        (m.status, m.content.as_str()),
        (MessageStatus::Complete, "Hello, again")
    );
}

async fn the_context_budget_drops_the_oldest_and_keeps_the_system_prompt(store: DynMessageStore) {
    let chat_id = chat();
    store
        .create_chat(&UserId::anonymous(), Some(chat_id.clone()), None)
        .await
        .unwrap();
    for (role, text) in [
        (Role::User, "aaaaaaaaaa"),
        (Role::Assistant, "bbbbbbbbbb"),
        (Role::User, "cccccccccc"),
        (Role::Assistant, "dddddddddd"),
    ] {
        store
            .append(&Message::new(chat_id.clone(), role, text))
            .await
            .unwrap();
    }
    let provider = ScriptedProvider::new().repeat(Script::reply(["ok"]));
    let build = |budget| {
        ChatService::builder()
            .provider(Arc::new(provider.clone()))
            .store(store.clone())
            .system_prompt("SYS")
            .context_budget(budget)
            .build()
            .unwrap()
    };
    // 3 (system) + 10 + 10 fits in 30; the next older message would not.
    let reply = build(ContextBudget::Chars(30))
        .session(chat_id.clone())
        .send("eeeeeeeeee".into())
        .await
        .unwrap();
    drain(reply.events).await;
    let sent = |i: usize| -> Vec<(Role, String)> {
        provider.requests()[i]
            .messages
            .iter()
            .map(|m| (m.role, m.content.clone()))
            .collect()
    };
    assert_eq!(
        sent(0),
        [
            (Role::System, "SYS".to_string()),
            (Role::Assistant, "dddddddddd".into()),
            (Role::User, "eeeeeeeeee".into()),
        ]
    );
    // A budget smaller than the new message alone still sends it, with the system prompt.
    let reply = build(ContextBudget::Chars(1))
        .session(chat_id.clone())
        .send("ffffffffff".into())
        .await
        .unwrap();
    drain(reply.events).await;
    assert_eq!(
        sent(1),
        [
            (Role::System, "SYS".to_string()),
            (Role::User, "ffffffffff".into())
        ]
    );
    // Tokens: 4 per message plus a token per 4 characters: SYS = 5, each 10-char message = 7.
    let reply = build(ContextBudget::Tokens(5 + 7 * 3))
        .session(chat_id.clone())
        .send("gggggggggg".into())
        .await
        .unwrap();
    drain(reply.events).await;
    let contents: Vec<_> = sent(2).into_iter().map(|(_, c)| c).collect();
    assert_eq!(contents, ["SYS", "ffffffffff", "ok", "gggggggggg"]);
    // Unlimited: everything.
    let reply = build(ContextBudget::Unlimited)
        .session(chat_id)
        .send("h".into())
        .await
        .unwrap();
    drain(reply.events).await;
    assert_eq!(sent(3).len(), 1 + 4 + 2 * 3 + 1);
}

/// A chat of 5,000 messages: a send reads the history only as far back as its budget reaches,
/// and the request it sends fits that budget, with the default budget (the window assumed for
/// a model the table does not know) and with a window set for one send (counted by OpenAI's
/// tokenizer for `gpt-4o`).
/// A new chat of `n` messages, user and assistant in turn, the `i`th saying `text(i)`.
async fn seeded_chat(store: &DynMessageStore, n: usize, text: impl Fn(usize) -> String) -> ChatId {
    let chat_id = chat();
    store
        .create_chat(&UserId::anonymous(), Some(chat_id.clone()), None)
        .await
        .unwrap();
    for i in 0..n {
        let role = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        store
            .append(&Message::new(chat_id.clone(), role, text(i)))
            .await
            .unwrap();
    }
    chat_id
}

/// A service on a recording of `store`, with the system prompt "Be brief." and a provider that
/// answers every request "ok".
fn recorded_service(store: &DynMessageStore) -> (Arc<Recording>, ScriptedProvider, ChatService) {
    let recording = Recording::new(store.clone());
    let provider = ScriptedProvider::new().repeat(Script::reply(["ok"]));
    let service = ChatService::builder()
        .provider(Arc::new(provider.clone()))
        .store(recording.clone())
        .system_prompt("Be brief.")
        .build()
        .unwrap();
    (recording, provider, service)
}

async fn a_long_chat_reads_and_sends_only_what_the_budget_holds(store: DynMessageStore) {
    const HISTORY: usize = 5_000;
    let chat_id = seeded_chat(&store, HISTORY, |i| {
        format!("message {i}: {}", "lorem ipsum dolor sit amet ".repeat(3))
    })
    .await;
    let (recording, provider, service) = recorded_service(&store);
    let session = service.session(chat_id.clone());
    let sends = [
        (SendOptions::default(), "scripted"),
        (
            SendOptions::default()
                .with_model("gpt-4o")
                .with_context_budget(ContextBudget::Window(4_000))
                .with_max_output_tokens(1_000),
            "gpt-4o",
        ),
    ];
    for (i, (options, model)) in sends.into_iter().enumerate() {
        let budget = options.context_budget.unwrap_or_default();
        let limit = budget
            .input_limit(model, options.max_output_tokens)
            .unwrap();
        recording.take_rows_read();
        let reply = session
            .send(UserInput::new("and now?").with_options(options))
            .await
            .unwrap();
        let rows = recording.take_rows_read();
        drain(reply.events).await;
        let request = &provider.requests()[i];
        let counter = TokenCounter::for_model(model);
        let used: usize = request.messages.iter().map(|m| counter.count(m)).sum();
        let sent = request.messages.len();
        assert!(
            used <= limit,
            "{model}: {used} tokens sent, {limit} allowed"
        );
        // Full: one more message of this chat would not have fitted.
        assert!(
            used + 40 > limit,
            "{model}: {used} tokens sent, {limit} allowed"
        );
        assert_eq!(request.messages[0].content, "Be brief.");
        assert_eq!(request.messages[sent - 1].content, "and now?");
        // Read a page at a time (64 messages), stopping at the first that did not fit.
        assert!(
            rows <= sent + 64,
            "{model}: read {rows} messages to send {sent}"
        );
        assert!(sent > 20 && sent < HISTORY / 10, "{model}: sent {sent}");
    }
    assert_eq!(
        TokenCounter::for_model("gpt-4o").is_exact(),
        cfg!(feature = "tiktoken")
    );
    // Nothing left the chat: the budget shapes requests, not the history.
    let all = session
        .history(HistoryPage::newest(HISTORY + 10))
        .await
        .unwrap();
    assert_eq!(all.len(), HISTORY + 4);
}

/// A chat's first send starts its reply without reading the history back (the store said the
/// turn is the chat's first); the request is the same as with the read. The next send reads it.
async fn a_chats_first_send_reads_no_history(store: DynMessageStore) {
    let (recording, provider, service) = recorded_service(&store);
    let session = service.session(chat());
    let first = session
        .send(UserInput::new("hello").with_image_url("https://example.com/cat.png"))
        .await
        .unwrap();
    assert_eq!(
        recording.take_rows_read(),
        0,
        "{}: the first send read history",
        store.backend()
    );
    drain(first.events).await;
    let second = session.send(UserInput::new("and now?")).await.unwrap();
    assert!(recording.take_rows_read() >= 3, "the second send read none");
    drain(second.events).await;
    let requests = provider.requests();
    let sent = |i: usize| -> Vec<(Role, String, usize)> {
        requests[i]
            .messages
            .iter()
            .map(|m| (m.role, m.content.clone(), m.parts.len()))
            .collect()
    };
    assert_eq!(
        sent(0),
        [
            (Role::System, "Be brief.".to_string(), 0),
            (Role::User, "hello".to_string(), 2),
        ]
    );
    assert_eq!(
        sent(1),
        [
            (Role::System, "Be brief.".to_string(), 0),
            (Role::User, "hello".to_string(), 2),
            (Role::Assistant, "ok".to_string(), 0),
            (Role::User, "and now?".to_string(), 0),
        ]
    );
}

/// An upstream that answers `400 context_length_exceeded` to its first `refusals` requests and
/// streams a reply after that, and a service on it with `history` messages in a chat.
async fn refusing_upstream(
    store: DynMessageStore,
    refusals: u64,
    history: usize,
) -> (wiremock::MockServer, ChatService, ChatId) {
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": {
                "message": "This model's maximum context length is 128000 tokens. However, your \
                    messages resulted in 131000 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded"
            }})),
        )
        .up_to_n_times(refusals)
        .with_priority(1)
        .mount(&server)
        .await;
    let sse = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/fixtures/openai/text.sse"),
    )
    .unwrap();
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(sse, "text/event-stream"))
        .mount(&server)
        .await;
    let provider = chatstream::provider::OpenAiProvider::builder()
        .api_key("k")
        .base_url(server.uri())
        .build()
        .unwrap();
    // The standard retry around it: a context error is not one it repeats.
    let provider = chatstream::resilience::ResilienceExt::with_retry(
        provider,
        chatstream::resilience::RetryPolicy::default(),
    );
    let chat_id = seeded_chat(&store, history, |i| format!("message {i}")).await;
    let service = ChatService::builder()
        .provider(Arc::new(provider))
        .store(store)
        .system_prompt("SYS")
        .model("gpt-4o")
        .build()
        .unwrap();
    (server, service, chat_id)
}

async fn sent_messages(server: &wiremock::MockServer) -> Vec<Vec<String>> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .collect()
}

/// The model refuses the request as too long: it is sent once more with about half the history,
/// and the reply completes; the history keeps every message.
async fn a_request_refused_as_too_long_is_sent_again_with_less_history(store: DynMessageStore) {
    let (server, service, chat_id) = refusing_upstream(store.clone(), 1, 40).await;
    let session = service.session(chat_id);
    let reply = session.send("the question".into()).await.unwrap();
    let d = drain(reply.events).await;
    assert_eq!(d.done.map(|d| d.0), Some(MessageStatus::Complete));
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert!(d.text.starts_with("Streaming"), "{}", d.text);
    // Followers were told of the second attempt.
    assert!(
        d.events.iter().any(|e| matches!(
            &*e.payload,
            EventPayload::Delta(Delta::Retry(RetryNotice { attempt: 2, .. }))
        )),
        "{:?}",
        d.events
    );
    let sent = sent_messages(&server).await;
    assert_eq!(sent.len(), 2, "one refusal, one retry");
    assert_eq!(
        sent[0].len(),
        1 + 40 + 1,
        "the whole history fits gpt-4o's budget"
    );
    assert!(
        sent[1].len() < sent[0].len() / 2 + 2,
        "{} then {} messages",
        sent[0].len(),
        sent[1].len()
    );
    for request in &sent {
        assert_eq!(request[0], "SYS");
        assert_eq!(request.last().unwrap(), "the question");
    }
    // The newest messages are the ones kept.
    assert_eq!(sent[1][sent[1].len() - 2], "message 39");
    let m = message(&store, reply.assistant_message_id).await;
    assert_eq!(m.status, MessageStatus::Complete);
    assert_eq!(
        session
            .history(HistoryPage::newest(100))
            .await
            .unwrap()
            .len(),
        40 + 2
    );
}

/// Refused again with less history: the reply fails with the context error, once.
async fn a_request_refused_twice_as_too_long_fails_the_reply(store: DynMessageStore) {
    let (server, service, chat_id) = refusing_upstream(store.clone(), u64::MAX, 10).await;
    let session = service.session(chat_id);
    let reply = session.send("the question".into()).await.unwrap();
    let d = drain(reply.events).await;
    assert_eq!(d.errors, ["context_length_exceeded"]);
    assert_eq!(d.done.map(|d| d.0), Some(MessageStatus::Failed));
    assert_eq!(sent_messages(&server).await.len(), 2, "retried once only");
    let m = message(&store, reply.assistant_message_id).await;
    assert_eq!(m.status, MessageStatus::Failed);
    assert!(
        m.error.as_deref().unwrap().contains("context window"),
        "{:?}",
        m.error
    );
    // With nothing left to leave out, a refusal is not retried at all.
    let session = service.session(chat());
    let reply = session.send("alone".into()).await.unwrap();
    let d = drain(reply.events).await;
    assert_eq!(d.errors, ["context_length_exceeded"]);
    assert_eq!(sent_messages(&server).await.len(), 3);
}

async fn finished_replies_expire_after_the_grace_period(store: DynMessageStore) {
    let hub = LocalHub::with_grace(Duration::from_secs(30));
    let provider = ScriptedProvider::new().then(Script::reply(["done"]));
    let service = ChatService::builder()
        .provider(Arc::new(provider))
        .store(store)
        .hub(Arc::new(hub.clone()))
        .build()
        .unwrap();
    let session = service.session(chat());
    drain(session.send("go".into()).await.unwrap().events).await;
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(
        drain(session.subscribe(None).await.unwrap().unwrap())
            .await
            .text,
        "done"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(session.subscribe(None).await.unwrap().is_none());
    assert_eq!(hub.held_replies(), 0);
}

async fn an_unwatched_reply_is_cancelled_after_the_timeout(store: DynMessageStore) {
    let provider = ScriptedProvider::new()
        .then(Script::new().text("a").stall())
        .then(Script::new().text("b").stall());
    let service = ChatService::builder()
        .provider(Arc::new(provider.clone()))
        .store(store.clone())
        .unwatched_timeout(Some(Duration::from_secs(10)))
        .build()
        .unwrap();
    // Watched all along: not cancelled.
    let watched = service.session(chat());
    let mut kept = watched.send("go".into()).await.unwrap();
    read_texts(&mut kept.events, 1).await;
    // Nobody watching: cancelled after 10 to 12.5 s.
    let session = service.session(chat());
    let reply = session.send("go".into()).await.unwrap();
    let id = reply.assistant_message_id;
    drop(reply);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(message(&store, id).await.status, MessageStatus::Streaming);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let m = message(&store, id).await;
    assert_eq!(
        (m.status, m.content.as_str()),
        (MessageStatus::Cancelled, "b")
    );
    assert!(watched.is_live().await.unwrap());
    kept.cancel().await.unwrap();
    drain(kept.events).await;
    assert_eq!(provider.open_streams(), 0);
}

/// Runs the service on a runtime of its own and drops that runtime mid-reply, like a crash;
/// recovery then finds the reply `interrupted` with its last checkpoint.
fn a_crash_leaves_the_last_checkpoint_interrupted(store: DynMessageStore) {
    let mut script = Script::new();
    for i in 0..70 {
        script = script.text(format!("{i},"));
    }
    let provider = ScriptedProvider::new().then(script.stall());
    let doomed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let id = doomed.block_on(async {
        let service = ChatService::builder()
            .provider(Arc::new(provider.clone()))
            .store(store.clone())
            .checkpoint(Duration::from_secs(3600), 64)
            .build()
            .unwrap();
        let mut reply = service.session(chat()).send("go".into()).await.unwrap();
        read_texts(&mut reply.events, 70).await;
        // Checkpoints are written beside the stream, not in its way: wait for the one due at
        // delta 64 to land, then crash.
        let id = reply.assistant_message_id;
        for _ in 0..500 {
            if !message(&store, id).await.content.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        id
    });
    drop(doomed);
    assert_eq!(provider.open_streams(), 0, "the crash dropped the upstream");
    let fresh = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    fresh.block_on(async {
        assert_eq!(store.recover_streaming(None).await.unwrap(), 1);
        let m = message(&store, id).await;
        assert_eq!(m.status, MessageStatus::Interrupted);
        let expected: String = (0..64).map(|i| format!("{i},")).collect();
        assert_eq!(m.content, expected);
    });
}

async fn regenerate_replaces_the_last_reply_in_the_context(store: DynMessageStore) {
    let provider = ScriptedProvider::new()
        .then(Script::reply(["first answer"]))
        .then(Script::reply(["second answer"]))
        .then(Script::reply(["third"]));
    let service = service(&provider, store.clone());
    let session = service.session(chat());
    assert!(matches!(
        session.regenerate().await,
        Err(Error::Invalid { .. })
    ));
    let first = session
        .send(UserInput::new("question").with_client_message_id("q"))
        .await
        .unwrap();
    let user_id = first.user_message.id;
    drain(first.events).await;
    let again = session.regenerate().await.unwrap();
    assert_eq!(again.user_message.id, user_id);
    let second_id = again.assistant_message_id;
    assert_eq!(drain(again.events).await.text, "second answer");
    // The new request carries the question but not the answer it replaces.
    let request = &provider.requests()[1];
    let contents: Vec<_> = request
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(contents, ["question"]);
    let history = session.history(HistoryPage::default()).await.unwrap();
    assert_eq!(history.len(), 3, "the earlier reply stays in the history");
    assert_eq!(history[2].reply_to, Some(user_id));
    // A repeat of the original send now finds the newest reply.
    let repeat = session
        .send(UserInput::new("question").with_client_message_id("q"))
        .await
        .unwrap();
    assert_eq!(repeat.assistant_message_id, second_id);
    // The next turn's context holds the regenerated answer only.
    drain(session.send(UserInput::new("next")).await.unwrap().events).await;
    let contents: Vec<_> = provider.requests()[2]
        .messages
        .iter()
        .map(|m| m.content.clone())
        .collect();
    assert_eq!(contents, ["question", "second answer", "next"]);
}

async fn shutdown_interrupts_replies_after_the_grace_period(store: DynMessageStore) {
    let quick = ScriptedProvider::new()
        .then(Script::reply(["done", " in time"]).per_delta_delay(Duration::from_millis(5)));
    let first = service(&quick, store.clone());
    let reply = first.session(chat()).send("a".into()).await.unwrap();
    let finished_in_time = reply.assistant_message_id;
    first.shutdown(Duration::from_secs(2)).await;
    let m = message(&store, finished_in_time).await;
    assert_eq!(
        (m.status, m.content.as_str()),
        (MessageStatus::Complete, "done in time")
    );

    let mut script = Script::new();
    for i in 0..5 {
        script = script.text(format!("{i} "));
    }
    let slow = ScriptedProvider::new().then(script.stall());
    let service = service(&slow, store.clone());
    let mut reply = service.session(chat()).send("b".into()).await.unwrap();
    read_texts(&mut reply.events, 5).await;
    service.shutdown(Duration::from_millis(300)).await;
    assert!(service.is_shutting_down());
    assert_eq!(slow.open_streams(), 0, "the upstream is closed");
    let m = message(&store, reply.assistant_message_id).await;
    assert_eq!(m.status, MessageStatus::Interrupted);
    assert_eq!(m.content, "0 1 2 3 4 ");
    let d = drain(reply.events).await;
    assert_eq!(d.done.map(|d| d.0), Some(MessageStatus::Interrupted));
    assert!(matches!(
        service.session(chat()).send("c".into()).await,
        Err(Error::ShuttingDown)
    ));
}

/// Two owners' chats of one id are two chats to the sessions: sends, replies and their streams,
/// histories, client keys, terminates and deletes of one never reach the other.
async fn two_owners_chats_of_one_id_never_meet(store: DynMessageStore) {
    let provider = ScriptedProvider::new()
        .then(Script::new().text("for alice").stall())
        .then(Script::reply(["for bob"]));
    let service = service(&provider, store.clone());
    let id = chat();
    let (alice_id, bob_id): (UserId, UserId) = ("alice".parse().unwrap(), "bob".parse().unwrap());
    let alice = service.session(ChatKey::new(alice_id.clone(), id.clone()));
    let bob = service.session(ChatKey::new(bob_id.clone(), id.clone()));
    let nobody = service.session(id.clone());
    assert_eq!((alice.chat_id(), bob.chat_id()), (&id, &id));

    let mut alices = alice
        .send(UserInput::new("alice asks").with_client_message_id("k1"))
        .await
        .unwrap();
    let seen = read_texts(&mut alices.events, 1).await;
    assert!(alice.is_live().await.unwrap());
    for other in [&bob, &nobody] {
        assert!(!other.is_live().await.unwrap(), "{:?}", other.key());
        assert!(other.subscribe(None).await.unwrap().is_none());
        assert!(
            other
                .history(HistoryPage::default())
                .await
                .unwrap()
                .is_empty()
        );
        assert!(!other.cancel().await.unwrap(), "nothing of theirs is live");
        assert!(!service.terminate(other.key()).await.unwrap());
    }
    assert!(
        alice.is_live().await.unwrap(),
        "the others' terminates spare alice's reply"
    );

    // Bob's chat is not busy with Alice's reply, and her client key is not his.
    let bobs = bob
        .send(UserInput::new("bob asks").with_client_message_id("k1"))
        .await
        .unwrap();
    assert!(bobs.is_new());
    assert_eq!(bobs.user_message.key(), *bob.key());
    assert_ne!(bobs.user_message.id, alices.user_message.id);
    let bob_reply = bobs.assistant_message_id;
    let d = drain(bobs.events).await;
    assert_eq!(d.text, "for bob");
    assert_eq!(d.done.map(|d| d.0), Some(MessageStatus::Complete));
    let texts = |history: Vec<Message>| {
        history
            .into_iter()
            .map(|m| (m.owner, m.content))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        texts(bob.history(HistoryPage::default()).await.unwrap()),
        [
            (bob_id.clone(), "bob asks".to_string()),
            (bob_id.clone(), "for bob".to_string())
        ]
    );
    assert_eq!(
        provider.requests()[1].messages.len(),
        1,
        "bob's request carries his message only"
    );
    assert!(
        alice.is_live().await.unwrap(),
        "bob's reply ended, not alice's"
    );
    let following = alice.subscribe(None).await.unwrap().unwrap();

    // Alice's reply stops for her terminate only, and her chat keeps her messages only.
    assert!(service.terminate(alice.key()).await.unwrap());
    let d = drain(alices.events).await;
    assert_eq!(seen.text + &d.text, "for alice");
    assert_eq!(d.done.map(|d| d.0), Some(MessageStatus::Cancelled));
    assert_eq!(drain(following).await.text, "for alice");
    // Persisted before its `done`.
    let alice_reply = store
        .get_message(&alice_id, &alices.assistant_message_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice_reply.status, MessageStatus::Cancelled);
    assert_eq!(
        texts(alice.history(HistoryPage::default()).await.unwrap()),
        [
            (alice_id.clone(), "alice asks".to_string()),
            (alice_id.clone(), "for alice".to_string())
        ]
    );
    assert!(
        store
            .get_message(&bob_id, &alices.assistant_message_id)
            .await
            .unwrap()
            .is_none()
    );

    // Deleting Bob's chat leaves Alice's.
    assert!(!service.delete_chat(nobody.key()).await.unwrap());
    assert!(service.delete_chat(bob.key()).await.unwrap());
    assert!(
        bob.history(HistoryPage::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .get_message(&bob_id, &bob_reply)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        alice.history(HistoryPage::default()).await.unwrap().len(),
        2
    );
    assert!(store.get_chat(alice.key()).await.unwrap().is_some());
}

/// An Anthropic upstream answering the first request with the `thinking` fixture (a signed
/// thinking block, then text) and every later one with the `text` fixture.
async fn anthropic_thinking_then_text() -> wiremock::MockServer {
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};
    let fixture = |name: &str| {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/fixtures/anthropic")
                .join(name),
        )
        .unwrap()
    };
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(fixture("thinking.sse"), "text/event-stream"),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(fixture("text.sse"), "text/event-stream"),
        )
        .mount(&server)
        .await;
    server
}

/// A reply's signed thinking is stored with it, with the model and options that made it, and
/// the next turn's request hands the thinking back to Anthropic unchanged, after the user's
/// images of the first turn.
async fn thinking_and_images_are_persisted_and_sent_back(store: DynMessageStore) {
    use chatstream::{
        ContentPart, SendOptions,
        provider::{AnthropicProvider, ThinkingBlock},
    };
    let upstream = anthropic_thinking_then_text().await;
    let provider = AnthropicProvider::builder()
        .base_url(upstream.uri())
        .model("claude-sonnet-4-5")
        .build()
        .unwrap();
    let service = ChatService::builder()
        .provider(Arc::new(provider))
        .store(store.clone())
        .build()
        .unwrap();
    let session = service.session(chat());
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
    let first = UserInput::new("What is 27 * 453? The sum is in the picture.")
        .with_image_base64("image/png", png)
        .with_options(
            SendOptions::default()
                .with_thinking_budget(2048)
                .with_max_output_tokens(4096)
                .with_temperature(1.0),
        );
    let reply = session.send(first).await.unwrap();
    let user = reply.user_message.clone();
    let id = reply.assistant_message_id;
    drain(reply.events).await;
    let stored = wait_final(&store, id).await;
    assert_eq!(stored.status, MessageStatus::Complete);
    assert_eq!(stored.content, "27 × 453 = 12,231");
    let signature = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds";
    assert_eq!(
        stored.thinking,
        [ThinkingBlock::Thinking {
            text: "Let me work out 27 * 453. That is 12231.".into(),
            signature: signature.into(),
        }]
    );
    let generation = stored.generation.expect("the reply says what made it");
    assert_eq!(
        (
            generation.provider.as_str(),
            generation.model.as_str(),
            generation.thinking_budget,
            generation.max_output_tokens,
            generation.temperature,
        ),
        (
            "anthropic",
            "claude-sonnet-4-5",
            Some(2048),
            Some(4096),
            Some(1.0)
        )
    );
    assert_eq!(
        message(&store, user.id).await.parts,
        [
            ContentPart::text("What is 27 * 453? The sum is in the picture."),
            ContentPart::image_base64("image/png", png),
        ],
        "the user's image is stored"
    );

    let reply = session
        .send(
            UserInput::new("And 28 * 453?").with_options(
                SendOptions::default()
                    .with_thinking_budget(2048)
                    .with_max_output_tokens(4096),
            ),
        )
        .await
        .unwrap();
    drain(reply.events).await;
    wait_final(&store, reply.assistant_message_id).await;
    let requests = upstream.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    let second: serde_json::Value = serde_json::from_slice(&requests[1].body).unwrap();
    assert_eq!(
        second["messages"],
        serde_json::json!([
            {"role": "user", "content": [
                {"type": "text", "text": "What is 27 * 453? The sum is in the picture."},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Let me work out 27 * 453. That is 12231.",
                 "signature": signature},
                {"type": "text", "text": "27 × 453 = 12,231"},
            ]},
            {"role": "user", "content": [{"type": "text", "text": "And 28 * 453?"}]},
        ])
    );
    assert_eq!(
        second["thinking"],
        serde_json::json!({"type": "enabled", "budget_tokens": 2048})
    );
}

macro_rules! for_every_store {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        $(
            $(#[$attr])*
            async fn $name() {
                for store in stores().await {
                    super::$name(store).await;
                }
            }
        )*
    };
}

mod every_store {
    use super::stores;

    for_every_store!(
        #[tokio::test]
        text_reply_is_persisted_complete,
        #[tokio::test]
        cancel_mid_reply_persists_the_partial_reply,
        #[tokio::test]
        a_second_send_while_live_is_busy,
        #[tokio::test]
        an_old_handle_never_cancels_a_newer_reply,
        #[tokio::test]
        failing_checkpoints_do_not_stop_the_reply,
        #[tokio::test]
        a_failed_reply_is_persisted_failed_with_an_error_event,
        #[tokio::test]
        a_send_that_cannot_start_leaves_a_failed_reply,
        #[tokio::test]
        retry_notices_pass_through_without_touching_the_text,
        #[tokio::test]
        the_context_budget_drops_the_oldest_and_keeps_the_system_prompt,
        #[tokio::test]
        a_long_chat_reads_and_sends_only_what_the_budget_holds,
        #[tokio::test]
        a_chats_first_send_reads_no_history,
        #[tokio::test]
        a_request_refused_as_too_long_is_sent_again_with_less_history,
        #[tokio::test]
        a_request_refused_twice_as_too_long_fails_the_reply,
        #[tokio::test]
        regenerate_replaces_the_last_reply_in_the_context,
        #[tokio::test]
        two_owners_chats_of_one_id_never_meet,
        #[tokio::test]
        thinking_and_images_are_persisted_and_sent_back,
    );

    #[test]
    fn a_crash_leaves_the_last_checkpoint_interrupted() {
        let stores = tokio::runtime::Runtime::new().unwrap().block_on(stores());
        for store in stores {
            super::a_crash_leaves_the_last_checkpoint_interrupted(store);
        }
    }
}

/// Tests written on tokio's paused clock run on the memory store. A database on its own thread
/// (sqlx's SQLite worker) lets the paused clock jump ahead while a query runs, so on SQLite the
/// same tests run on the real clock instead (their delays are a few milliseconds); the tests of
/// exact timing (checkpoint cadence, grace period, unwatched timeout, slow subscriber) measure
/// the session's timers, not the store, and run on the memory store only.
mod paused_on_memory {
    async fn stores() -> Vec<super::DynMessageStore> {
        vec![std::sync::Arc::new(super::MemoryStore::new())]
    }

    for_every_store!(
        #[tokio::test(start_paused = true)]
        resending_a_client_message_id_returns_the_same_reply,
        #[tokio::test(start_paused = true)]
        a_late_subscriber_replays_exactly,
        #[tokio::test(start_paused = true)]
        resume_after_n_loses_and_doubles_nothing,
        #[tokio::test(start_paused = true)]
        dropping_every_subscriber_does_not_stop_the_reply,
        #[tokio::test(start_paused = true)]
        two_hundred_chats_stream_at_once,
        #[tokio::test(start_paused = true)]
        a_slow_subscriber_does_not_delay_a_fast_one,
        #[tokio::test(start_paused = true)]
        checkpoints_follow_time_or_count,
        #[tokio::test(start_paused = true)]
        finished_replies_expire_after_the_grace_period,
        #[tokio::test(start_paused = true)]
        an_unwatched_reply_is_cancelled_after_the_timeout,
        #[tokio::test(start_paused = true)]
        shutdown_interrupts_replies_after_the_grace_period,
    );
}

mod real_time_on_sqlite {
    async fn stores() -> Vec<super::DynMessageStore> {
        vec![super::sqlite_store().await]
    }

    for_every_store!(
        #[tokio::test]
        resending_a_client_message_id_returns_the_same_reply,
        #[tokio::test]
        a_late_subscriber_replays_exactly,
        #[tokio::test]
        resume_after_n_loses_and_doubles_nothing,
        #[tokio::test]
        dropping_every_subscriber_does_not_stop_the_reply,
        #[tokio::test]
        two_hundred_chats_stream_at_once,
        #[tokio::test]
        shutdown_interrupts_replies_after_the_grace_period,
    );
}

#[tokio::test]
async fn the_service_needs_a_provider() {
    let err = ChatService::builder().build().unwrap_err();
    assert!(matches!(err, Error::Config(_)));
    let provider = ScriptedProvider::new();
    let service = service(&provider, Arc::new(MemoryStore::new()));
    let session = service.session(chat());
    assert!(matches!(
        session.send(UserInput::new("  ")).await,
        Err(Error::Invalid { .. })
    ));
    // Images alone are a message; a text part given as an image is not.
    let mut input = UserInput::new("");
    input.images = vec![chatstream::ContentPart::text("not an image")];
    assert!(matches!(
        session.send(input).await,
        Err(Error::Invalid { .. })
    ));
}
