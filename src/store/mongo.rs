//! [`MongoStore`]: chats and messages in MongoDB, via the official driver, shared by any number
//! of processes.
//!
//! # Documents
//!
//! Two collections in the URL's database (`chatstream` when the URL names none):
//!
//! - `chats`: `{_id, owner, chatId, title?, createdAt, updatedAt, nextSeq}`: a chat is named by
//!   its `owner` (a user id, `anonymous` for chats made without a user) and its `chatId`, unique
//!   together; `_id` names nothing (generated, or the chat id of a chat stored before chats had
//!   owners);
//! - `messages`: `{_id: message id (UUID), owner, chatId, seq, role, content, parts?,
//!   reasoning?, thinking?, toolCalls?, toolCallId?, status, finishReason?,
//!   usage?: {inputTokens, outputTokens}, generation?, error?, clientMessageId?, replyTo?,
//!   createdAt, updatedAt}`, in the chat `(owner, chatId)`; optional fields are absent, never
//!   null (so documents stored before `parts`, `thinking` and `generation` existed read as
//!   before). `parts`, `thinking` and `generation` are the [`Message`] fields' camelCase JSON as
//!   BSON.
//!
//! Every query about a chat or its messages names the owner, so none reads or writes another
//! owner's documents; only the system-wide maintenance (recovery) goes by message alone.
//!
//! Timestamps are Int64 **microseconds** since the Unix epoch: a BSON date holds milliseconds
//! only, and every store keeps at least microseconds (the trait's promise). `seq` orders a chat's
//! messages, without gaps: a number is taken in the transaction that stores its message, and
//! `nextSeq` is the one the chat's next message gets. A history page is therefore the window of
//! numbers just below its cursor (the newest page reads `nextSeq` first), a range of at most one
//! page; should gaps appear (documents removed by hand), the page falls back to the unbounded
//! query.
//!
//! Indexes are created when the store opens (the MongoDB counterpart of migrations; creating an
//! index that exists with the same keys and options is a no-op, so processes may open together):
//! `chats {owner, chatId}` unique, `chats {owner, updatedAt: -1, chatId: -1}` (listing),
//! `messages {owner, chatId, seq}` unique (history pages walk it),
//! `messages {owner, chatId, clientMessageId}` unique where `clientMessageId` is a string
//! (idempotent sends), and `messages {updatedAt}` where `status` is `streaming` (recovery).
//!
//! Documents stored before chats had owners are moved to the anonymous owner when the store
//! opens, before the indexes are made: each chat gets `owner` and `chatId` (its `_id`), each
//! message `owner`, and the indexes that keyed a chat by its id alone (`chat_seq`,
//! `chat_client_key`, `chats_by_activity`) are dropped. Every step is idempotent (it touches
//! only documents still without an owner), so an open that was interrupted is finished by the
//! next one, and processes may open together. Stop the processes of the previous release first:
//! what they write after the move is not seen until the store opens again.
//!
//! # Atomicity: multi-document transactions
//!
//! Appending writes two documents, the chat (its `nextSeq` and activity time) and the message;
//! a turn writes the chat and two messages; deleting a chat removes it and its messages. Each of
//! these is **one multi-document transaction**, so it applies entirely or not at all, as one
//! transaction does in the SQL stores. A single-document design (a chat and its messages in one
//! document) would make each of them atomic without transactions, but every checkpoint would
//! rewrite the chat's whole document (the storage engine writes documents whole), and a chat
//! would stop at MongoDB's 16 MiB document limit.
//!
//! Transactions need a replica set or a sharded cluster: a single-node replica set will do
//! (`mongod --replSet rs0`, then `rs.initiate()` once). Opening the store on a standalone server
//! fails with [`Error::Config`] saying so.
//!
//! Concurrent appends to one chat all write its document, so they conflict; the driver retries
//! the loser's transaction (`TransientTransactionError`) after a short backoff, and the retry
//! sees the winner's commit. An idempotent send reads the client key before it writes, so a
//! retry finds the original; the unique index on the key still decides, should two slip past.
//!
//! A checkpoint ([`update`](MessageStore::update)) is the one write outside a transaction: the
//! message, then its chat's activity time (`$max`), two single-document writes. A transaction
//! left open by a process killed mid-checkpoint would hold that very reply's document until the
//! server reaps it (60 s on MongoDB), and recovery after such a crash must mark that reply
//! `interrupted` at once. The cost: an update dropped between its two writes saves the message
//! without moving its chat's activity time, which the next write to the chat moves.
//! [`recover_streaming`](MessageStore::recover_streaming) is one `updateMany`, atomic per
//! document; it is idempotent, so a partial run is finished by the next.
//!
//! The crate's tests run the conformance suite on SecantusDB, a server that speaks MongoDB's
//! wire protocol: it advertises itself as a single-node replica set, and its sessions,
//! transactions (`WriteConflict` with the `TransientTransactionError` label, first committer
//! wins), partial unique indexes, `findAndModify` and upserts behave as the store needs. It
//! sorts after fetching every matching document, even along an index, which is why history
//! pages are bounded ranges; listing chats still reads every chat there.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use futures::{FutureExt, TryStreamExt};
use mongodb::{
    BoxFuture, Client, ClientSession, Collection, Database, IndexModel,
    bson::{self, Bson, Document, doc},
    error::{ErrorKind, WriteFailure},
    options::{ClientOptions, IndexOptions, ReturnDocument},
};
use serde::{Deserialize, Serialize};

use super::{Appended, ChatPage, HistoryPage, MessageStore};
use crate::{
    Chat, ChatId, ChatKey, ContentPart, Error, FinishReason, Generation, Message, MessageId,
    MessageStatus, Result, Role, ToolCall, Usage, UserId, provider::ThinkingBlock,
};

const BACKEND: &str = "mongodb";

/// The database used when the URL's path names none.
pub const DEFAULT_DATABASE: &str = "chatstream";

/// How long opening the store waits for the server, unless the URL says otherwise
/// (`serverSelectionTimeoutMS`, `connectTimeoutMS`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// MongoDB's code for a write that broke a unique index.
const DUPLICATE_KEY: i32 = 11000;

/// MongoDB's code for a command about a collection that does not exist.
const NAMESPACE_NOT_FOUND: i32 = 26;

/// A store in a MongoDB database: for teams whose data lives in MongoDB, and for several server
/// processes that share chats.
///
/// See the [module documentation](self) for the documents, the indexes and which writes are
/// transactions. Needs a replica set or a sharded cluster (a single-node replica set will do).
///
/// Timestamps read back truncated to microseconds.
///
/// Cheap to clone: clones share one client and its connection pool.
///
/// ```no_run
/// use chatstream::{MessageStore, store::MongoStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
/// let store = MongoStore::open("mongodb://localhost:27017/chatstream").await?;
/// store.recover_streaming(None).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MongoStore {
    database: Database,
    chats: Collection<ChatDoc>,
    messages: Collection<MessageDoc>,
}

impl MongoStore {
    /// Connects to a `mongodb://` (or `mongodb+srv://`) URL, in the database its path names
    /// (`chatstream` when it names none), and creates the indexes.
    ///
    /// Fails with [`Error::Config`] for a malformed URL or a standalone server (see the
    /// [module documentation](self)), and with [`Error::Store`] when the server cannot be reached
    /// within 10 seconds (or the URL's `serverSelectionTimeoutMS`).
    pub async fn open(url: &str) -> Result<Self> {
        Self::connect(url, None).await
    }

    /// Like [`open`](Self::open), in `database` whatever the URL's path says: several
    /// applications, or test runs, can share one server.
    ///
    /// `database` must be a valid MongoDB database name: 1 to 63 bytes, none of `/\. "$` and no
    /// NUL.
    pub async fn open_in_database(url: &str, database: &str) -> Result<Self> {
        validate_database(database)?;
        Self::connect(url, Some(database)).await
    }

    async fn connect(url: &str, database: Option<&str>) -> Result<Self> {
        // The URL may hold a password: the driver's message names the fault, never the URL.
        let mut options = ClientOptions::parse(url).await.map_err(|e| match *e.kind {
            ErrorKind::DnsResolve { .. } => store_error("resolve the MongoDB URL's hosts", e),
            _ => Error::Config(format!("invalid MongoDB URL: {e}")),
        })?;
        options
            .server_selection_timeout
            .get_or_insert(CONNECT_TIMEOUT);
        options.connect_timeout.get_or_insert(CONNECT_TIMEOUT);
        options.app_name.get_or_insert_with(|| "chatstream".into());
        let database = match database {
            Some(name) => name.to_string(),
            None => options
                .default_database
                .clone()
                .unwrap_or_else(|| DEFAULT_DATABASE.into()),
        };
        validate_database(&database)?;
        let client = Client::with_options(options)
            .map_err(|e| Error::Config(format!("invalid MongoDB options: {e}")))?;
        Self::from_database(client.database(&database)).await
    }

    /// A store in `database` of a client of your own (TLS, credentials, pool size …), after
    /// checking that the deployment supports transactions and creating the indexes.
    pub async fn from_database(database: Database) -> Result<Self> {
        let hello = database
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(|e| store_error("connect", e))?;
        let replicated =
            hello.get_str("setName").is_ok() || hello.get_str("msg").ok() == Some("isdbgrid");
        if !replicated {
            return Err(Error::Config(
                "the MongoDB store needs a replica set or a sharded cluster: it writes a turn in \
                 one multi-document transaction, which a standalone server cannot run. A \
                 single-node replica set will do: start mongod with --replSet rs0 and run \
                 rs.initiate() once"
                    .into(),
            ));
        }
        let store = MongoStore {
            chats: database.collection("chats"),
            messages: database.collection("messages"),
            database,
        };
        store.give_owners().await?;
        store.create_indexes().await?;
        Ok(store)
    }

    /// The database, for queries of your own (the collections are `chats` and `messages`).
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Moves the chats and messages stored before chats had owners to the anonymous owner, and
    /// drops the indexes that keyed a chat by its id alone (see the
    /// [module documentation](self)).
    async fn give_owners(&self) -> Result<()> {
        let anonymous = UserId::anonymous();
        let chats = self.chats.clone_with_type::<Document>();
        let unowned: Vec<Document> = chats
            .find(doc! { "owner": { "$exists": false } })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(err("give chats an owner"))?
            .try_collect()
            .await
            .map_err(err("give chats an owner"))?;
        for chat in unowned {
            // Before owners, a chat's `_id` was its id.
            let id = chat.get("_id").cloned().unwrap_or(Bson::Null);
            let Bson::String(chat_id) = &id else {
                return Err(Error::Store {
                    backend: BACKEND,
                    message: format!("a chat stored without an owner has no chat id: {id}"),
                    source: None,
                });
            };
            chats
                .update_one(
                    doc! { "_id": &id, "owner": { "$exists": false } },
                    doc! { "$set": { "owner": anonymous.as_str(), "chatId": chat_id } },
                )
                .await
                .map_err(err("give chats an owner"))?;
        }
        self.messages
            .update_many(
                doc! { "owner": { "$exists": false } },
                doc! { "$set": { "owner": anonymous.as_str() } },
            )
            .await
            .map_err(err("give messages an owner"))?;
        // Two owners' chats of one id would collide in these.
        drop_indexes(&self.messages, &["chat_seq", "chat_client_key"]).await?;
        drop_indexes(&self.chats, &["chats_by_activity"]).await?;
        Ok(())
    }

    async fn create_indexes(&self) -> Result<()> {
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
        self.messages
            .create_indexes([
                index(
                    doc! { "owner": 1, "chatId": 1, "seq": 1 },
                    "owner_chat_seq",
                    true,
                    None,
                ),
                index(
                    doc! { "owner": 1, "chatId": 1, "clientMessageId": 1 },
                    "owner_chat_client_key",
                    true,
                    // Messages without a key never collide.
                    Some(doc! { "clientMessageId": { "$type": "string" } }),
                ),
                index(
                    doc! { "updatedAt": 1 },
                    "streaming",
                    false,
                    Some(doc! { "status": MessageStatus::Streaming.as_str() }),
                ),
            ])
            .await
            .map_err(|e| store_error("create message indexes", e))?;
        self.chats
            .create_indexes([
                index(doc! { "owner": 1, "chatId": 1 }, "owner_chat", true, None),
                index(
                    doc! { "owner": 1, "updatedAt": -1, "chatId": -1 },
                    "owner_chats_by_activity",
                    false,
                    None,
                ),
            ])
            .await
            .map_err(|e| store_error("create chat indexes", e))?;
        Ok(())
    }
}

/// Drops those of `names` that the collection has.
async fn drop_indexes<T: Send + Sync>(collection: &Collection<T>, names: &[&str]) -> Result<()> {
    let existing = match collection.list_index_names().await {
        Ok(existing) => existing,
        // A collection that does not exist yet has no indexes.
        Err(e) if matches!(&*e.kind, ErrorKind::Command(c) if c.code == NAMESPACE_NOT_FOUND) => {
            return Ok(());
        }
        Err(e) => return Err(store_error("list indexes", e)),
    };
    for name in names.iter().filter(|n| existing.iter().any(|e| e == *n)) {
        collection
            .drop_index(*name)
            .await
            .map_err(err("drop an index"))?;
    }
    Ok(())
}

/// The filter of one chat's document, or of its messages.
fn chat_filter(chat: &ChatKey) -> Document {
    doc! { "owner": chat.owner.as_str(), "chatId": chat.id.as_str() }
}

/// A chat as stored; its `_id` is left to the driver (see the [module documentation](self)).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatDoc {
    owner: UserId,
    chat_id: ChatId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    created_at: i64,
    updated_at: i64,
    #[serde(default)]
    next_seq: i64,
}

impl ChatDoc {
    fn into_chat(self) -> Result<Chat> {
        Ok(Chat {
            owner: self.owner,
            id: self.chat_id,
            title: self.title,
            created_at: from_micros("chat", self.created_at)?,
            updated_at: from_micros("chat", self.updated_at)?,
        })
    }
}

/// A message as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageDoc {
    #[serde(rename = "_id")]
    id: bson::Uuid,
    owner: UserId,
    chat_id: ChatId,
    seq: i64,
    role: Role,
    content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    parts: Vec<ContentPart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reasoning: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    thinking: Vec<ThinkingBlock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<String>,
    status: MessageStatus,
    /// Kept as text, like the SQL stores: a reason this version does not know reads as `Other`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<Generation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_to: Option<bson::Uuid>,
    created_at: i64,
    updated_at: i64,
}

impl MessageDoc {
    fn new(m: &Message, seq: i64) -> Self {
        MessageDoc {
            id: bson_uuid(&m.id),
            owner: m.owner.clone(),
            chat_id: m.chat_id.clone(),
            seq,
            role: m.role,
            content: m.content.clone(),
            parts: m.parts.clone(),
            reasoning: m.reasoning.clone(),
            thinking: m.thinking.clone(),
            tool_calls: m.tool_calls.clone(),
            tool_call_id: m.tool_call_id.clone(),
            status: m.status,
            finish_reason: m.finish_reason.map(|f| f.as_str().to_string()),
            usage: m.usage,
            generation: m.generation.clone(),
            error: m.error.clone(),
            client_message_id: m.client_message_id.clone(),
            reply_to: m.reply_to.as_ref().map(bson_uuid),
            created_at: micros(m.created_at),
            updated_at: micros(m.updated_at),
        }
    }

    fn into_message(self) -> Result<Message> {
        Ok(Message {
            id: MessageId::from_uuid(uuid::Uuid::from_bytes(self.id.bytes())),
            owner: self.owner,
            chat_id: self.chat_id,
            role: self.role,
            content: self.content,
            parts: self.parts,
            reasoning: self.reasoning,
            thinking: self.thinking,
            tool_calls: self.tool_calls,
            tool_call_id: self.tool_call_id,
            status: self.status,
            finish_reason: self.finish_reason.as_deref().map(FinishReason::parse),
            usage: self.usage,
            generation: self.generation,
            error: self.error,
            client_message_id: self.client_message_id,
            reply_to: self
                .reply_to
                .map(|u| MessageId::from_uuid(uuid::Uuid::from_bytes(u.bytes()))),
            created_at: from_micros("message", self.created_at)?,
            updated_at: from_micros("message", self.updated_at)?,
        })
    }
}

/// What [`MessageStore::update`] writes: the fields that change as a reply grows, those now empty
/// removed, as [`MessageDoc`] leaves them out.
///
/// Built by hand rather than with serde: the bson crate's serializer has another name in each of
/// the driver's two bson versions, and an application may switch the driver to either. The
/// nested values (`parts`, `thinking`, `generation`) go through their JSON, which both versions
/// read back through serde like the rest of [`MessageDoc`].
fn changes(m: &Message) -> Result<Document> {
    let mut set = doc! {
        "content": m.content.as_str(),
        "status": m.status.as_str(),
        "updatedAt": micros(m.updated_at),
    };
    let mut unset = Document::new();
    let mut optional = |field: &str, value: Option<Bson>| match value {
        Some(value) => set.insert(field, value),
        None => unset.insert(field, ""),
    };
    optional("reasoning", m.reasoning.as_deref().map(Bson::from));
    optional(
        "parts",
        (!m.parts.is_empty())
            .then(|| json_bson("content parts", &m.parts))
            .transpose()?,
    );
    optional(
        "thinking",
        (!m.thinking.is_empty())
            .then(|| json_bson("thinking blocks", &m.thinking))
            .transpose()?,
    );
    optional(
        "generation",
        m.generation
            .as_ref()
            .map(|g| json_bson("generation", g))
            .transpose()?,
    );
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
    optional("finishReason", m.finish_reason.map(|f| f.as_str().into()));
    optional(
        "usage",
        m.usage.map(|u| {
            // Counts beyond i64::MAX cannot occur; they saturate rather than fail a write.
            let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            doc! {
                "inputTokens": count(u.input_tokens),
                "outputTokens": count(u.output_tokens),
            }
            .into()
        }),
    );
    optional("error", m.error.as_deref().map(Bson::from));
    let mut change = doc! { "$set": set };
    if !unset.is_empty() {
        change.insert("$unset", unset);
    }
    Ok(change)
}

/// `value` as BSON, by way of its JSON: objects, arrays, strings, booleans, null, and numbers as
/// 64-bit integers when whole and doubles otherwise (which serde reads back into the Rust
/// types).
fn json_bson<V: Serialize + ?Sized>(what: &str, value: &V) -> Result<Bson> {
    fn convert(value: serde_json::Value) -> Bson {
        match value {
            serde_json::Value::Null => Bson::Null,
            serde_json::Value::Bool(b) => Bson::Boolean(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Bson::Int64(i),
                None => Bson::Double(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Bson::String(s),
            serde_json::Value::Array(a) => Bson::Array(a.into_iter().map(convert).collect()),
            serde_json::Value::Object(o) => {
                Bson::Document(o.into_iter().map(|(k, v)| (k, convert(v))).collect())
            }
        }
    }
    serde_json::to_value(value)
        .map(convert)
        .map_err(|e| Error::Store {
            backend: BACKEND,
            message: format!("cannot encode {what}: {e}"),
            source: Some(Box::new(e)),
        })
}

fn validate_database(name: &str) -> Result<()> {
    let ok =
        !name.is_empty() && name.len() <= 63 && !name.chars().any(|c| "/\\. \"$\0".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "database name",
            format!("{name:?}: use 1 to 63 bytes without /\\. \"$ or NUL"),
        ))
    }
}

fn bson_uuid(id: &MessageId) -> bson::Uuid {
    bson::Uuid::from_bytes(id.as_uuid().into_bytes())
}

/// A timestamp as stored: whole microseconds since the Unix epoch (rounded down).
fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(what: &str, us: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| Error::Store {
        backend: BACKEND,
        message: format!("stored {what} has an unreadable timestamp: {us}"),
        source: None,
    })
}

/// What a later read gives back of `m`: its timestamps truncated to microseconds.
fn as_stored(m: &Message) -> Message {
    let mut stored = m.clone();
    stored.created_at = stored.created_at.trunc_subsecs(6);
    stored.updated_at = stored.updated_at.trunc_subsecs(6);
    stored
}

/// Wraps a driver error into the crate's error, saying what was being done.
fn store_error(doing: &str, err: mongodb::error::Error) -> Error {
    let message = match *err.kind {
        ErrorKind::ServerSelection { .. } | ErrorKind::Io(_) => {
            format!("{doing}: cannot reach the MongoDB server: {err}")
        }
        _ => format!("{doing}: {err}"),
    };
    Error::Store {
        backend: BACKEND,
        message,
        source: Some(Box::new(err)),
    }
}

fn err(doing: &str) -> impl FnOnce(mongodb::error::Error) -> Error + '_ {
    move |e| store_error(doing, e)
}

/// Whether a driver error is a broken unique index (a taken id, client key or sequence number).
fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    match &*err.kind {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .iter()
            .flatten()
            .any(|e| e.code == DUPLICATE_KEY),
        _ => false,
    }
}

fn not_found(what: &'static str, id: impl ToString) -> Error {
    Error::NotFound {
        what,
        id: id.to_string(),
    }
}

fn already_exists(what: &'static str, id: impl ToString) -> Error {
    Error::AlreadyExists {
        what,
        id: id.to_string(),
    }
}

/// The reply of a turn broke a unique index: the whole turn is aborted.
#[derive(Debug)]
struct ReplyTaken;

/// What an insert inside a transaction did.
enum Insert {
    /// Stored, with this sequence number in its chat (0 for the chat's first message).
    Created { seq: i64 },
    /// The chat already has a message with the key: nothing was written.
    Existing(Box<MessageDoc>),
    /// There is no such chat: nothing was written.
    NoChat,
}

impl MongoStore {
    async fn by_client_key(
        &self,
        session: Option<&mut ClientSession>,
        chat: &ChatKey,
        key: &str,
    ) -> mongodb::error::Result<Option<MessageDoc>> {
        let mut filter = chat_filter(chat);
        filter.insert("clientMessageId", key);
        let find = self.messages.find_one(filter);
        match session {
            Some(session) => find.session(session).await,
            None => find.await,
        }
    }

    /// Takes the next `count` sequence numbers of a chat and moves its activity time to
    /// `activity` if that is later; `None` when there is no such chat.
    async fn reserve(
        &self,
        session: &mut ClientSession,
        chat: &ChatKey,
        count: i64,
        activity: i64,
    ) -> mongodb::error::Result<Option<i64>> {
        let chat = self
            .chats
            .find_one_and_update(
                chat_filter(chat),
                doc! { "$inc": { "nextSeq": count }, "$max": { "updatedAt": activity } },
            )
            .return_document(ReturnDocument::After)
            .session(session)
            .await?;
        Ok(chat.map(|c| c.next_seq - count))
    }

    /// Appends `message` inside the session's transaction; with `key`, finds the chat's message
    /// with that client key first, and writes nothing if there is one.
    async fn insert_in(
        &self,
        session: &mut ClientSession,
        message: &Message,
        key: Option<&str>,
    ) -> mongodb::error::Result<Insert> {
        let chat = message.key();
        if let Some(key) = key
            && let Some(existing) = self.by_client_key(Some(&mut *session), &chat, key).await?
        {
            return Ok(Insert::Existing(Box::new(existing)));
        }
        let activity = micros(message.updated_at);
        let Some(seq) = self.reserve(session, &chat, 1, activity).await? else {
            return Ok(Insert::NoChat);
        };
        self.messages
            .insert_one(MessageDoc::new(message, seq))
            .session(session)
            .await?;
        Ok(Insert::Created { seq })
    }

    /// Appends `message` in a transaction of its own; with `key`, returns the chat's existing
    /// message with that client key instead, if there is one.
    async fn insert(
        &self,
        message: &Message,
        key: Option<&str>,
    ) -> Result<std::result::Result<i64, Message>> {
        let inserted = self
            .transaction((self, message, key), |session, context| {
                let (store, message, key) = *context;
                async move { store.insert_in(session, message, key).await }.boxed()
            })
            .await;
        match inserted {
            Ok(Insert::Created { seq }) => Ok(Ok(seq)),
            Ok(Insert::Existing(original)) => original.into_message().map(Err),
            Ok(Insert::NoChat) => Err(not_found("chat", &message.chat_id)),
            Err(e) if is_duplicate_key(&e) => self.after_duplicate(message, key).await.map(Err),
            Err(e) => Err(store_error("append message", e)),
        }
    }

    /// The newest `limit` messages of a chat below sequence number `upper` (and from `lower`),
    /// newest first.
    async fn page_below(
        &self,
        chat: &ChatKey,
        lower: Option<i64>,
        upper: i64,
        limit: i64,
    ) -> Result<Vec<Message>> {
        let mut range = doc! { "$lt": upper };
        if let Some(lower) = lower {
            range.insert("$gte", lower);
        }
        let mut filter = chat_filter(chat);
        filter.insert("seq", range);
        self.messages
            .find(filter)
            .sort(doc! { "seq": -1 })
            .limit(limit)
            .await
            .map_err(err("load history"))?
            .try_collect::<Vec<_>>()
            .await
            .map_err(err("load history"))?
            .into_iter()
            .map(MessageDoc::into_message)
            .collect()
    }

    /// Runs `callback` in a transaction, retried as long as the server calls its failures
    /// transient (a write conflict with a concurrent transaction), for up to 120 seconds.
    async fn transaction<C, R, F>(&self, context: C, callback: F) -> mongodb::error::Result<R>
    where
        F: for<'b> FnMut(
            &'b mut ClientSession,
            &'b mut C,
        ) -> BoxFuture<'b, mongodb::error::Result<R>>,
    {
        let mut session = self.database.client().start_session().await?;
        session.start_transaction().and_run(context, callback).await
    }

    /// Stores a turn inside the session's transaction (see [`MessageStore::append_turn`]).
    async fn turn_in(
        &self,
        session: &mut ClientSession,
        user: &Message,
        reply: &Message,
        key: Option<&str>,
        now: i64,
    ) -> mongodb::error::Result<Insert> {
        let chat = user.key();
        if let Some(key) = key
            && let Some(existing) = self.by_client_key(Some(&mut *session), &chat, key).await?
        {
            return Ok(Insert::Existing(Box::new(existing)));
        }
        // A new chat's document takes its owner and id from the filter.
        self.chats
            .update_one(
                chat_filter(&chat),
                doc! { "$setOnInsert": { "createdAt": now, "updatedAt": now, "nextSeq": 0_i64 } },
            )
            .upsert(true)
            .session(&mut *session)
            .await?;
        let activity = micros(user.updated_at.max(reply.updated_at));
        let Some(seq) = self.reserve(session, &chat, 2, activity).await? else {
            return Ok(Insert::NoChat);
        };
        self.messages
            .insert_one(MessageDoc::new(user, seq))
            .session(&mut *session)
            .await?;
        match self
            .messages
            .insert_one(MessageDoc::new(reply, seq + 1))
            .session(&mut *session)
            .await
        {
            Ok(_) => Ok(Insert::Created { seq }),
            // Neither message is kept: the whole turn fails.
            Err(e) if is_duplicate_key(&e) => Err(mongodb::error::Error::custom(ReplyTaken)),
            Err(e) => Err(e),
        }
    }

    /// The answer to an insert that broke a unique index: the key read before the write makes
    /// this rare for a repeated key, but should a duplicate slip past it, the index decides: the
    /// message that won, or `AlreadyExists`.
    async fn after_duplicate(&self, message: &Message, key: Option<&str>) -> Result<Message> {
        if let Some(key) = key
            && let Some(original) = self
                .by_client_key(None, &message.key(), key)
                .await
                .map_err(err("append message"))?
        {
            return original.into_message();
        }
        Err(already_exists("message", message.id))
    }
}

#[async_trait]
impl MessageStore for MongoStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn create_chat(
        &self,
        owner: &UserId,
        id: Option<ChatId>,
        title: Option<String>,
    ) -> Result<Chat> {
        let now = micros(Utc::now());
        let chat = ChatDoc {
            owner: owner.clone(),
            chat_id: id.unwrap_or_else(ChatId::generate),
            title,
            created_at: now,
            updated_at: now,
            next_seq: 0,
        };
        match self.chats.insert_one(&chat).await {
            Ok(_) => chat.into_chat(),
            Err(e) if is_duplicate_key(&e) => Err(already_exists("chat", &chat.chat_id)),
            Err(e) => Err(store_error("create chat", e)),
        }
    }

    async fn get_chat(&self, chat: &ChatKey) -> Result<Option<Chat>> {
        self.chats
            .find_one(chat_filter(chat))
            .await
            .map_err(err("get chat"))?
            .map(ChatDoc::into_chat)
            .transpose()
    }

    async fn list_chats(&self, owner: &UserId, page: ChatPage) -> Result<Vec<Chat>> {
        // MongoDB reads a zero limit as "no limit".
        if page.limit == 0 {
            return Ok(Vec::new());
        }
        self.chats
            .find(doc! { "owner": owner.as_str() })
            .sort(doc! { "updatedAt": -1, "chatId": -1 })
            .skip(u64::try_from(page.offset).unwrap_or(u64::MAX))
            .limit(i64::try_from(page.limit).unwrap_or(i64::MAX))
            .await
            .map_err(err("list chats"))?
            .try_collect::<Vec<_>>()
            .await
            .map_err(err("list chats"))?
            .into_iter()
            .map(ChatDoc::into_chat)
            .collect()
    }

    async fn rename_chat(&self, chat: &ChatKey, title: Option<String>) -> Result<Chat> {
        let change = match title {
            Some(title) => doc! { "$set": { "title": title } },
            None => doc! { "$unset": { "title": "" } },
        };
        self.chats
            .find_one_and_update(chat_filter(chat), change)
            .return_document(ReturnDocument::After)
            .await
            .map_err(err("rename chat"))?
            .ok_or_else(|| not_found("chat", &chat.id))?
            .into_chat()
    }

    async fn delete_chat(&self, chat: &ChatKey) -> Result<bool> {
        self.transaction((self, chat), |session, context| {
            let (store, chat) = *context;
            async move {
                let deleted = store
                    .chats
                    .delete_one(chat_filter(chat))
                    .session(&mut *session)
                    .await?;
                store
                    .messages
                    .delete_many(chat_filter(chat))
                    .session(&mut *session)
                    .await?;
                Ok(deleted.deleted_count > 0)
            }
            .boxed()
        })
        .await
        .map_err(err("delete chat"))
    }

    async fn append(&self, message: &Message) -> Result<()> {
        self.insert(message, None).await.map(|_| ())
    }

    async fn append_idempotent(&self, message: &Message) -> Result<Appended> {
        let key = message.client_message_id.as_deref().ok_or_else(|| {
            Error::invalid("message", "append_idempotent needs a client message id")
        })?;
        Ok(match self.insert(message, Some(key)).await? {
            Err(original) => Appended {
                message: original,
                created: false,
                first_in_chat: false,
            },
            Ok(seq) => Appended {
                message: as_stored(message),
                created: true,
                first_in_chat: seq == 0,
            },
        })
    }

    async fn append_turn(&self, user: &Message, reply: &Message) -> Result<Appended> {
        super::same_chat(user, reply)?;
        let key = user.client_message_id.as_deref();
        let now = micros(Utc::now());
        let inserted = self
            .transaction((self, user, reply, key), |session, context| {
                let (store, user, reply, key) = *context;
                async move { store.turn_in(session, user, reply, key, now).await }.boxed()
            })
            .await;
        match inserted {
            Ok(Insert::Created { seq }) => Ok(Appended {
                message: as_stored(user),
                created: true,
                first_in_chat: seq == 0,
            }),
            Ok(Insert::Existing(original)) => Ok(Appended {
                message: original.into_message()?,
                created: false,
                first_in_chat: false,
            }),
            // The chat was upserted in the same transaction.
            Ok(Insert::NoChat) => Err(not_found("chat", &user.chat_id)),
            Err(e) if e.get_custom::<ReplyTaken>().is_some() => {
                Err(already_exists("message", reply.id))
            }
            Err(e) if is_duplicate_key(&e) => Ok(Appended {
                message: self.after_duplicate(user, key).await?,
                created: false,
                first_in_chat: false,
            }),
            Err(e) => Err(store_error("append turn", e)),
        }
    }

    async fn update(&self, message: &Message) -> Result<()> {
        let change = changes(message)?;
        // See the module documentation for why a checkpoint is two writes and no transaction.
        let updated = self
            .messages
            .clone_with_type::<Document>()
            .find_one_and_update(
                doc! { "_id": bson_uuid(&message.id), "owner": message.owner.as_str() },
                change,
            )
            .projection(doc! { "chatId": 1 })
            .await
            .map_err(err("update message"))?
            .ok_or_else(|| not_found("message", message.id))?;
        let chat = updated.get_str("chatId").map_err(|e| Error::Store {
            backend: BACKEND,
            message: format!("stored message {} has no chat id: {e}", message.id),
            source: None,
        })?;
        self.chats
            .update_one(
                doc! { "owner": message.owner.as_str(), "chatId": chat },
                doc! { "$max": { "updatedAt": micros(message.updated_at) } },
            )
            .await
            .map_err(err("update message"))?;
        Ok(())
    }

    async fn get_message(&self, owner: &UserId, id: &MessageId) -> Result<Option<Message>> {
        self.messages
            .find_one(doc! { "_id": bson_uuid(id), "owner": owner.as_str() })
            .await
            .map_err(err("get message"))?
            .map(MessageDoc::into_message)
            .transpose()
    }

    async fn history(&self, chat: &ChatKey, page: HistoryPage) -> Result<Vec<Message>> {
        let upper = match page.before {
            Some(before) => {
                let mut cursor = chat_filter(chat);
                cursor.insert("_id", bson_uuid(&before));
                self.messages
                    .find_one(cursor)
                    .await
                    .map_err(err("load history"))?
                    .ok_or_else(|| not_found("message", before))?
                    .seq
            }
            None => match self
                .chats
                .find_one(chat_filter(chat))
                .await
                .map_err(err("load history"))?
            {
                Some(chat) => chat.next_seq,
                None => return Ok(Vec::new()),
            },
        };
        // MongoDB reads a zero limit as "no limit".
        if page.limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
        // A chat's sequence numbers have no gaps (a number is taken in the transaction that
        // stores its message), so the page is the window just below `upper`. Bounding the range
        // keeps the page's cost independent of the chat's length on servers that fetch every
        // match before sorting (SecantusDB does); MongoDB walks the index either way.
        let lower = upper.saturating_sub(limit).max(0);
        let mut messages = self.page_below(chat, Some(lower), upper, limit).await?;
        if messages.len() < page.limit && lower > 0 {
            // Gaps after all (documents removed by hand): the unbounded query is always right.
            messages = self.page_below(chat, None, upper, limit).await?;
        }
        messages.reverse();
        Ok(messages)
    }

    async fn ping(&self) -> Result<()> {
        // The server's own liveness command: the trait's default lists a chat, which some
        // servers answer by reading every chat.
        self.database
            .run_command(doc! { "ping": 1 })
            .await
            .map(drop)
            .map_err(err("ping the database"))
    }

    async fn recover_streaming(&self, updated_before: Option<DateTime<Utc>>) -> Result<u64> {
        let mut filter = doc! {
            "status": MessageStatus::Streaming.as_str(),
            "role": Role::Assistant.as_str(),
        };
        if let Some(before) = updated_before {
            // Stored times are whole microseconds: `t < before` is `t < before` rounded up.
            let sub_micro = before.timestamp_subsec_nanos() % 1000 != 0;
            filter.insert(
                "updatedAt",
                doc! { "$lt": micros(before) + i64::from(sub_micro) },
            );
        }
        let done = self
            .messages
            .update_many(
                filter,
                doc! { "$set": {
                    "status": MessageStatus::Interrupted.as_str(),
                    "updatedAt": micros(Utc::now()),
                } },
            )
            .await
            .map_err(err("recover streaming messages"))?;
        Ok(done.modified_count)
    }

    async fn streaming_replies(&self) -> Result<Vec<Message>> {
        self.messages
            .find(doc! {
                "status": MessageStatus::Streaming.as_str(),
                "role": Role::Assistant.as_str(),
            })
            .sort(doc! { "createdAt": 1, "seq": 1 })
            .await
            .map_err(err("list streaming replies"))?
            .try_collect::<Vec<_>>()
            .await
            .map_err(err("list streaming replies"))?
            .into_iter()
            .map(MessageDoc::into_message)
            .collect()
    }

    async fn interrupt_reply(&self, id: &MessageId) -> Result<bool> {
        let done = self
            .messages
            .update_one(
                doc! {
                    "_id": bson_uuid(id),
                    "status": MessageStatus::Streaming.as_str(),
                    "role": Role::Assistant.as_str(),
                },
                doc! { "$set": {
                    "status": MessageStatus::Interrupted.as_str(),
                    "updatedAt": micros(Utc::now()),
                } },
            )
            .await
            .map_err(err("interrupt reply"))?;
        Ok(done.modified_count == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::validate_database;

    #[test]
    fn database_names() {
        assert!(validate_database("chatstream").is_ok());
        assert!(validate_database("chat_test-01").is_ok());
        assert!(validate_database("").is_err());
        assert!(validate_database("a.b").is_err());
        assert!(validate_database("a/b").is_err());
        assert!(validate_database("a b").is_err());
        assert!(validate_database("$a").is_err());
        assert!(validate_database("a\0").is_err());
        assert!(validate_database(&"a".repeat(64)).is_err());
    }
}
