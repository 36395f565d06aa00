//! [`MessageStore`]: where chats and messages are persisted.
//!
//! | backend | type | feature | use it for |
//! |---|---|---|---|
//! | memory | [`MemoryStore`] | always | tests, demos, stateless servers |
//! | SQLite | `SqliteStore` | `sqlite` (default) | one process, one file, no server: the embedded default |
//! | PostgreSQL | `PostgresStore` | `postgres` | production, and several server instances sharing chats |
//! | MongoDB | `MongoStore` | `mongodb` | teams whose data lives in MongoDB (a replica set), several instances |
//!
//! [`open`] picks a backend from a URL (`memory`, `sqlite://PATH`, `sqlite::memory:`,
//! `postgres://…`, `mongodb://…/DATABASE`). With the `conformance` feature, `store::conformance` exports the test suite
//! every backend passes, for stores of your own.
//!
//! ## Checkpointing a streaming reply
//!
//! A reply is appended once with status `streaming`, then saved with
//! [`update`](MessageStore::update) as it grows, and a last time when it ends. Checkpoint **every
//! 250 ms or every 64 deltas, whichever comes first**: a crash then loses at most that much of
//! the reply, and [`recover_streaming`](MessageStore::recover_streaming) marks it `interrupted`
//! on the next start with the checkpointed text kept.
//!
//! An update rewrites one message row (and its chat's activity time), never the chat, so its cost
//! does not grow with the conversation. Measured with `cargo bench --bench store` on a 2-core
//! machine: one checkpoint costs 60 to 95 µs on a SQLite file (WAL) and 0.1 µs in memory; a
//! whole reply (append, 20 checkpoints, final update) 2.5 to 3.6 ms on SQLite and under 20 µs in
//! memory. At four checkpoints a second, a streaming reply spends under 0.05 % of its time
//! persisting (and sessions write checkpoints beside the stream, never in its way). Loading the
//! newest page of 50 messages takes the same time (about 0.25 ms on SQLite) from a chat of 100
//! messages as from one of 10,000: pages are read by the per-chat sequence index.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt, stream::BoxStream};

use crate::{Chat, ChatId, ChatKey, Message, MessageId, Result, UserId};

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod memory;
#[cfg(feature = "mongodb")]
pub mod mongo;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use memory::MemoryStore;
#[cfg(feature = "mongodb")]
pub use mongo::MongoStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// A shared, type-erased store.
pub type DynMessageStore = std::sync::Arc<dyn MessageStore>;

/// Which page of chats to list: most recently active first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatPage {
    /// The most chats to return.
    pub limit: usize,
    /// How many of the most recently active chats to skip.
    pub offset: usize,
}

impl Default for ChatPage {
    fn default() -> Self {
        ChatPage {
            limit: 50,
            offset: 0,
        }
    }
}

/// Which page of a chat's history to load.
///
/// The newest `limit` messages by default; with `before`, the `limit` messages that precede that
/// message. Pages come oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPage {
    /// The most messages to return.
    pub limit: usize,
    /// Only messages older than this one (a cursor: the oldest message of the previous page).
    pub before: Option<MessageId>,
}

impl Default for HistoryPage {
    fn default() -> Self {
        HistoryPage {
            limit: 50,
            before: None,
        }
    }
}

impl HistoryPage {
    /// The newest `limit` messages.
    pub fn newest(limit: usize) -> Self {
        HistoryPage {
            limit,
            before: None,
        }
    }

    /// The `limit` messages before `message`.
    pub fn before(message: MessageId, limit: usize) -> Self {
        HistoryPage {
            limit,
            before: Some(message),
        }
    }
}

/// What [`MessageStore::append_idempotent`] or [`MessageStore::append_turn`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    /// The stored message: the new one, or the original one when this was a repeat.
    pub message: Message,
    /// `true` when the message was stored now, `false` when a message with the same client
    /// message id already existed in the chat.
    pub created: bool,
    /// `true` when the message, stored now, is the first of its chat: nothing was stored in the
    /// chat before it, so after [`append_turn`](MessageStore::append_turn) the chat holds just
    /// the turn. A session then starts the reply without reading the history back.
    ///
    /// A hint: a store that cannot tell cheaply says `false`, which only costs its caller that
    /// read. The crate's stores tell.
    pub first_in_chat: bool,
}

/// Persistence for chats and messages, scoped by owner.
///
/// Implementations are cheap-to-share handles (`Arc<dyn MessageStore>`); every method is safe to
/// call concurrently. Messages of a chat are ordered by a per-chat sequence number assigned at
/// append time, so order is stable even for messages created in the same millisecond.
///
/// # Owners
///
/// Every chat belongs to an owner ([`UserId`]); a chat is named by its [`ChatKey`], its owner and
/// its id, so two users may each have a chat `demo`. The store enforces the scope, so that a
/// forgotten check in a caller cannot leak: a method about one chat takes its key and never
/// reads or writes a row of another owner's chat; [`list_chats`](Self::list_chats) lists one
/// owner's chats; [`get_message`](Self::get_message) finds a message only in its owner's chats;
/// a write takes the owner from the message ([`Message::owner`]), so
/// [`append`](Self::append) needs the chat under that owner, and [`update`](Self::update) of a
/// message stored under another owner is `NotFound`, never a write. Only system-wide maintenance
/// is unscoped, and says so: [`recover_streaming`](Self::recover_streaming),
/// [`streaming_replies`](Self::streaming_replies) (each message carries its owner),
/// [`interrupt_reply`](Self::interrupt_reply) and [`ping`](Self::ping).
///
/// Message ids are unique across the whole store (they are generated UUIDs), whatever their
/// owner.
///
/// Checkpoints: [`update`](MessageStore::update) rewrites one row (the message), never the chat;
/// calling it every 250 ms or every 64 deltas of a growing reply, whichever comes first, keeps a
/// crash from losing more than that and costs well under 0.1 ms per call on SQLite (see the
/// [module documentation](self) for the figures).
///
/// Timestamps are kept to at least the microsecond (PostgreSQL's precision): a message whose
/// timestamps are whole microseconds reads back exactly as it was written.
///
/// # Cancel safety
///
/// Every write is one statement or one transaction: dropping a future part-way either applies the
/// write entirely or not at all.
#[async_trait]
pub trait MessageStore: Send + Sync + std::fmt::Debug + 'static {
    /// The backend's name: `memory`, `sqlite`, `postgres`, `mongodb`.
    fn backend(&self) -> &'static str;

    /// Creates a chat of `owner` with this id (or a generated one) and title.
    ///
    /// Fails with [`Error::AlreadyExists`](crate::Error::AlreadyExists) if the owner already has
    /// a chat with this id (another owner's chat of the same id is no obstacle).
    async fn create_chat(
        &self,
        owner: &UserId,
        id: Option<ChatId>,
        title: Option<String>,
    ) -> Result<Chat>;

    /// The chat with this key, if it exists.
    async fn get_chat(&self, chat: &ChatKey) -> Result<Option<Chat>>;

    /// The chats of `owner`, most recently active first.
    async fn list_chats(&self, owner: &UserId, page: ChatPage) -> Result<Vec<Chat>>;

    /// Sets or clears a chat's title. Fails with [`Error::NotFound`](crate::Error::NotFound) if
    /// there is no such chat.
    async fn rename_chat(&self, chat: &ChatKey, title: Option<String>) -> Result<Chat>;

    /// Deletes a chat and all its messages. Returns whether it existed.
    async fn delete_chat(&self, chat: &ChatKey) -> Result<bool>;

    /// Appends a message to its chat ([`Message::key`]: the chat must exist under the message's
    /// owner), after all earlier ones.
    async fn append(&self, message: &Message) -> Result<()>;

    /// Appends a message keyed by its `client_message_id` (which must be set): if the chat already
    /// has a message with that key, nothing is written and the original is returned with
    /// `created: false`. Safe under concurrent duplicate sends: exactly one message is stored.
    /// Keys are scoped to their chat (so to its owner too).
    async fn append_idempotent(&self, message: &Message) -> Result<Appended>;

    /// Stores the start of a turn in one write: creates `user`'s chat (under `user`'s owner) if
    /// it does not exist yet, appends `user`, then `reply` (the assistant message that answers
    /// it, usually `streaming`) right after it, in the same chat.
    ///
    /// When `user` has a `client_message_id` that the chat already holds, nothing is written and
    /// the original user message comes back with `created: false`, as with
    /// [`append_idempotent`](MessageStore::append_idempotent); otherwise `created: true` and
    /// both messages are stored, with `first_in_chat` telling whether the chat held nothing
    /// before them (a session then builds the request without reading the history back).
    /// Fails with [`Error::Invalid`](crate::Error::Invalid) when the two messages are not of one
    /// chat (one owner, one chat id).
    ///
    /// This is what a session does on every send, before the reply can start: the crate's
    /// backends do it in one transaction (all or nothing, one commit). The default calls
    /// [`get_or_create_chat`](MessageStoreExt::get_or_create_chat), `append_idempotent` (or
    /// `append`) and `append` in turn, and passes on `append_idempotent`'s `first_in_chat`
    /// (`false` after a plain `append`, which cannot tell).
    ///
    /// ```
    /// use chatstream::{ChatKey, Message, MessageStore, store::{HistoryPage, MemoryStore}};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
    /// let store = MemoryStore::new();
    /// let chat = ChatKey::new("alice".parse()?, "support-42".parse()?);
    /// let user = Message::user(&chat, "hi").with_client_message_id("k1");
    /// let reply = Message::assistant_streaming(&chat).replying_to(user.id);
    /// let first = store.append_turn(&user, &reply).await?;
    /// assert!(first.created && first.first_in_chat);
    /// // The same key again: nothing new is stored.
    /// let again = Message::user(&chat, "hi").with_client_message_id("k1");
    /// let retry = Message::assistant_streaming(&chat).replying_to(again.id);
    /// let appended = store.append_turn(&again, &retry).await?;
    /// assert!(!appended.created);
    /// assert_eq!(appended.message.id, user.id);
    /// assert_eq!(store.history(&chat, HistoryPage::default()).await?.len(), 2);
    /// // Bob's chat `support-42` is another chat.
    /// let bob = ChatKey::new("bob".parse()?, "support-42".parse()?);
    /// assert!(store.history(&bob, HistoryPage::default()).await?.is_empty());
    /// # Ok(()) }
    /// ```
    async fn append_turn(&self, user: &Message, reply: &Message) -> Result<Appended> {
        same_chat(user, reply)?;
        self.get_or_create_chat(&user.key()).await?;
        let appended = if user.client_message_id.is_some() {
            self.append_idempotent(user).await?
        } else {
            self.append(user).await?;
            Appended {
                message: user.clone(),
                created: true,
                first_in_chat: false,
            }
        };
        if appended.created {
            self.append(reply).await?;
        }
        Ok(appended)
    }

    /// Saves a message's changing fields: content, parts, reasoning, thinking blocks, tool calls,
    /// status, finish reason, usage, generation, error and `updated_at`. Fails with [`Error::NotFound`](crate::Error::NotFound) if it
    /// was never appended, or was appended under another owner than `message.owner` (nothing is
    /// written then).
    async fn update(&self, message: &Message) -> Result<()>;

    /// The message with this id, if it exists in one of `owner`'s chats.
    async fn get_message(&self, owner: &UserId, id: &MessageId) -> Result<Option<Message>>;

    /// A page of a chat's messages, oldest first (see [`HistoryPage`]). A chat with no messages,
    /// or that does not exist, gives an empty page; a `before` cursor that is not a message of
    /// this chat fails with [`Error::NotFound`](crate::Error::NotFound).
    async fn history(&self, chat: &ChatKey, page: HistoryPage) -> Result<Vec<Message>>;

    /// Marks assistant messages still `streaming` as `interrupted`, keeping their checkpointed
    /// content, and returns how many changed. With `updated_before`, only messages whose last
    /// checkpoint is older than that are touched (so live replies of other processes are left
    /// alone). Call it on start-up to recover from a crash.
    ///
    /// System-wide: the messages of every owner.
    async fn recover_streaming(&self, updated_before: Option<DateTime<Utc>>) -> Result<u64>;

    /// Every assistant message still `streaming`, oldest first: the replies some process is
    /// generating, or left behind when it died. Recovery with several instances
    /// ([`hub::recover_orphans`](crate::hub::recover_orphans)) checks each against the hub.
    ///
    /// System-wide: the messages of every owner, each carrying its owner
    /// ([`Message::key`]).
    async fn streaming_replies(&self) -> Result<Vec<Message>>;

    /// Marks one assistant message `interrupted` if it is still `streaming`, keeping its
    /// checkpointed content; returns whether it changed. A reply that finished meanwhile is left
    /// as it is.
    ///
    /// System-wide: the message is found by its id alone, whatever its owner (recovery calls it
    /// on what [`streaming_replies`](Self::streaming_replies) found).
    ///
    /// The default looks the message up among the streaming replies, then writes, so it can race
    /// with the reply's own final write; the crate's backends do it in one conditional statement.
    async fn interrupt_reply(&self, id: &MessageId) -> Result<bool> {
        let streaming = self.streaming_replies().await?;
        let Some(mut message) = streaming.into_iter().find(|m| m.id == *id) else {
            return Ok(false);
        };
        message.status = crate::MessageStatus::Interrupted;
        message.updated_at = Utc::now();
        self.update(&message).await?;
        Ok(true)
    }

    /// Checks that the store answers: `Ok` when it does, the error that says why when it does
    /// not. Cheap enough to call every second (a readiness probe).
    ///
    /// The default lists one chat of the anonymous owner: a real round trip to any backend. The
    /// crate's SQL stores send `SELECT 1`; the [`MemoryStore`] lives in memory and always
    /// answers.
    async fn ping(&self) -> Result<()> {
        self.list_chats(
            &UserId::anonymous(),
            ChatPage {
                limit: 1,
                offset: 0,
            },
        )
        .await
        .map(drop)
    }
}

crate::forward::forward_impls!(MessageStore,
    sync {
        fn backend(&self) -> &'static str;
    }
    async {
        fn create_chat(&self, owner: &UserId, id: Option<ChatId>, title: Option<String>) -> Result<Chat>;
        fn get_chat(&self, chat: &ChatKey) -> Result<Option<Chat>>;
        fn list_chats(&self, owner: &UserId, page: ChatPage) -> Result<Vec<Chat>>;
        fn rename_chat(&self, chat: &ChatKey, title: Option<String>) -> Result<Chat>;
        fn delete_chat(&self, chat: &ChatKey) -> Result<bool>;
        fn append(&self, message: &Message) -> Result<()>;
        fn append_idempotent(&self, message: &Message) -> Result<Appended>;
        fn append_turn(&self, user: &Message, reply: &Message) -> Result<Appended>;
        fn update(&self, message: &Message) -> Result<()>;
        fn get_message(&self, owner: &UserId, id: &MessageId) -> Result<Option<Message>>;
        fn history(&self, chat: &ChatKey, page: HistoryPage) -> Result<Vec<Message>>;
        fn recover_streaming(&self, updated_before: Option<DateTime<Utc>>) -> Result<u64>;
        fn streaming_replies(&self) -> Result<Vec<Message>>;
        fn interrupt_reply(&self, id: &MessageId) -> Result<bool>;
        fn ping(&self) -> Result<()>;
    }
);

/// The check every [`MessageStore::append_turn`] makes first.
pub(crate) fn same_chat(user: &Message, reply: &Message) -> Result<()> {
    if reply.chat_id != user.chat_id || reply.owner != user.owner {
        return Err(crate::Error::invalid(
            "message",
            "a reply belongs to its user message's chat",
        ));
    }
    Ok(())
}

/// How many messages [`MessageStoreExt::newest_first`] reads per page.
const WALK_PAGE: usize = 64;

/// Conveniences for every [`MessageStore`].
#[async_trait]
pub trait MessageStoreExt: MessageStore {
    /// The chat's messages, newest first, read a page at a time as the stream is polled: a
    /// caller that stops early (it found what it was looking for, or its budget is spent) reads
    /// no further pages. A chat with no messages, or that does not exist, gives an empty stream.
    ///
    /// ```
    /// use chatstream::{ChatId, Message, MessageStore, MessageStoreExt, UserId, store::MemoryStore};
    /// use futures::TryStreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
    /// let store = MemoryStore::new();
    /// let chat = store
    ///     .create_chat(&UserId::anonymous(), Some(ChatId::new("walk")?), None)
    ///     .await?
    ///     .key();
    /// for text in ["one", "two", "three"] {
    ///     store.append(&Message::user(&chat, text)).await?;
    /// }
    /// let newest: Vec<String> = store
    ///     .newest_first(&chat)
    ///     .map_ok(|m| m.content)
    ///     .try_collect()
    ///     .await?;
    /// assert_eq!(newest, ["three", "two", "one"]);
    /// # Ok(()) }
    /// ```
    fn newest_first<'a>(&'a self, chat: &'a ChatKey) -> BoxStream<'a, Result<Message>> {
        // The state is the cursor of the next page to read; `None` once the oldest was read.
        futures::stream::try_unfold(
            Some(None),
            move |cursor: Option<Option<MessageId>>| async move {
                let Some(before) = cursor else {
                    return Ok(None);
                };
                let page = self
                    .history(
                        chat,
                        HistoryPage {
                            limit: WALK_PAGE,
                            before,
                        },
                    )
                    .await?;
                let next = match page.first() {
                    Some(oldest) if page.len() == WALK_PAGE => Some(Some(oldest.id)),
                    _ => None,
                };
                Ok(Some((
                    futures::stream::iter(page.into_iter().rev().map(Ok)),
                    next,
                )))
            },
        )
        .try_flatten()
        .boxed()
    }

    /// The chat with this key, created (untitled) if it does not exist yet.
    async fn get_or_create_chat(&self, chat: &ChatKey) -> Result<Chat> {
        if let Some(found) = self.get_chat(chat).await? {
            return Ok(found);
        }
        match self
            .create_chat(&chat.owner, Some(chat.id.clone()), None)
            .await
        {
            Err(crate::Error::AlreadyExists { .. }) => {
                self.get_chat(chat)
                    .await?
                    .ok_or_else(|| crate::Error::NotFound {
                        what: "chat",
                        id: chat.id.to_string(),
                    })
            }
            other => other,
        }
    }
}

impl<S: MessageStore + ?Sized> MessageStoreExt for S {}

/// Opens a store from a URL: `memory`, `sqlite://PATH` (created if missing), `sqlite::memory:`,
/// `postgres://…` / `postgresql://…`, or `mongodb://…` / `mongodb+srv://…` (in the database the
/// URL's path names, `chatstream` when it names none). Migrations (MongoDB: indexes) run on open.
///
/// Fails with [`Error::Config`](crate::Error::Config) for an unknown scheme or a backend whose
/// feature is off, and with [`Error::Store`](crate::Error::Store) when the database cannot be
/// reached.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
/// let store = chatstream::store::open("memory").await?;
/// assert_eq!(store.backend(), "memory");
/// assert!(chatstream::store::open("mysql://nope").await.is_err());
/// # Ok(()) }
/// ```
pub async fn open(url: &str) -> Result<DynMessageStore> {
    let url = url.trim();
    if url == "memory" || url == "memory:" || url == "memory://" {
        return Ok(std::sync::Arc::new(MemoryStore::new()));
    }
    if url.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        return Ok(std::sync::Arc::new(SqliteStore::open(url).await?));
        #[cfg(not(feature = "sqlite"))]
        return Err(crate::Error::Config(
            "sqlite:// URLs need the `sqlite` feature of chatstream".into(),
        ));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return Ok(std::sync::Arc::new(PostgresStore::open(url).await?));
        #[cfg(not(feature = "postgres"))]
        return Err(crate::Error::Config(
            "postgres:// URLs need the `postgres` feature of chatstream".into(),
        ));
    }
    if url.starts_with("mongodb://") || url.starts_with("mongodb+srv://") {
        #[cfg(feature = "mongodb")]
        return Ok(std::sync::Arc::new(MongoStore::open(url).await?));
        #[cfg(not(feature = "mongodb"))]
        return Err(crate::Error::Config(
            "mongodb:// URLs need the `mongodb` feature of chatstream".into(),
        ));
    }
    let scheme = url.split(':').next().unwrap_or(url);
    Err(crate::Error::Config(format!(
        "unknown store URL scheme {scheme:?}: use memory, sqlite://PATH, postgres://… or \
         mongodb://…"
    )))
}
