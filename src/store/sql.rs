//! What the SQL backends share: the logic of every store operation whose steps are the same in
//! SQLite and PostgreSQL, the error mapping, and (in [`row`]) how messages and chats are laid out
//! in columns.
//!
//! A backend implements [`SqlBackend`]: its sqlx database, its SQL text ([`Statements`]), how it
//! stores a timestamp, and how its writers take turns. [`Sql`] runs the operations over those.
//! What a backend does its own way (SQLite's one-round-trip write scripts, PostgreSQL's
//! transactions for a turn) stays in its file and calls on the same pieces.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Transaction, Type};

use super::HistoryPage;
use crate::{Chat, ChatId, ChatKey, Error, Message, MessageId, Result, UserId};

mod row;

pub(crate) use row::{Columns, as_stored, chat_columns, message_columns};
use row::{Extras, RawChat, RawMessage, tool_calls_to_json, usage_columns};

/// The assistant messages still `streaming`, oldest first. No parameters, so no dialect.
pub(crate) const STREAMING_REPLIES: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE status = 'streaming' AND role = 'assistant' ORDER BY created_at, seq"
);

/// A backend's SQL text, in its dialect. Each statement takes its parameters in the order given.
///
/// A chat is the row keyed by `(owner, id)`, its messages those with its `(owner, chat_id)`:
/// every statement about a chat or a message of one names the owner, so no statement reads or
/// writes another owner's rows. Only the system-wide maintenance (`recover_streaming`,
/// `interrupt_reply`, [`STREAMING_REPLIES`]) goes by message alone.
#[derive(Debug)]
pub(crate) struct Statements {
    /// Inserts a chat `(owner, id, title, created_at, updated_at)`; no row when the owner
    /// already has a chat with the id.
    pub(crate) insert_chat: &'static str,
    /// The chat `(owner, id)`: its `chat_columns!()`.
    pub(crate) get_chat: &'static str,
    /// An owner's chats, most recently active first: `(owner, limit, offset)`.
    pub(crate) list_chats: &'static str,
    /// Sets the title `(title, owner, id)`, returning the chat as `get_chat` does.
    pub(crate) rename_chat: &'static str,
    /// Deletes the chat `(owner, id)` and, by cascade, its messages.
    pub(crate) delete_chat: &'static str,
    /// Takes the next sequence number of the chat and moves its activity time forward
    /// `(updated_at, owner, chat id)`, returning the number taken; no row when there is no such
    /// chat.
    pub(crate) next_seq: &'static str,
    /// The message of a chat with a client message id `(owner, chat id, key)`.
    pub(crate) by_client_key: &'static str,
    /// Inserts a message: its `message_columns!()`, then its sequence number.
    pub(crate) insert_message: &'static str,
    /// The message `(id, owner)`.
    pub(crate) get_message: &'static str,
    /// The sequence number of a message in a chat `(id, owner, chat id)`.
    pub(crate) seq_of: &'static str,
    /// A chat's messages below a sequence number, newest first `(owner, chat id, seq, limit)`.
    pub(crate) history: &'static str,
    /// Marks assistant replies still `streaming` as `interrupted` `(now, updated before or
    /// NULL for all)`.
    pub(crate) recover_streaming: &'static str,
    /// Marks one assistant reply `interrupted` if it is still `streaming` `(now, id)`.
    pub(crate) interrupt_reply: &'static str,
}

/// What a SQL backend supplies to [`Sql`]: its database, SQL text and encodings, and how its
/// writers take turns.
pub(crate) trait SqlBackend: Send + Sync + Sized + 'static {
    /// The sqlx database.
    type Db: Database;
    /// A timestamp as the backend stores it.
    type Time: for<'q> Encode<'q, Self::Db> + Type<Self::Db> + Copy + Send + Sync + 'static;
    /// Held while a write runs: what keeps the backend's writers in turn, if anything.
    type WriteLock<'a>: Send
    where
        Self: 'a;

    /// The backend's name, in errors and [`MessageStore::backend`](super::MessageStore::backend).
    const BACKEND: &'static str;
    /// The backend's SQL text.
    const SQL: Statements;

    /// The connection pool.
    fn pool(&self) -> &Pool<Self::Db>;

    /// A timestamp as stored; fails for one the backend cannot keep.
    fn encode_time(time: DateTime<Utc>) -> Result<Self::Time>;

    /// A stored timestamp.
    fn decode_time(stored: Self::Time) -> DateTime<Utc>;

    /// What a timestamp reads back as once stored: what a write hands back, so that it compares
    /// equal to what a later read gives.
    fn kept(time: DateTime<Utc>) -> DateTime<Utc>;

    /// How many rows a statement changed.
    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;

    /// Waits for this backend's turn to write.
    fn lock_writes(&self) -> impl Future<Output = Self::WriteLock<'_>> + Send;

    /// Waits for the turn to write, then begins a write transaction.
    fn begin_write(
        &self,
        doing: &'static str,
    ) -> impl Future<Output = Result<(Self::WriteLock<'_>, Transaction<'static, Self::Db>)>> + Send;

    /// [`MessageStore::append_turn`](super::MessageStore::append_turn), once the two messages
    /// are known to share a chat: each backend writes a turn its own way.
    fn turn(
        &self,
        user: &Message,
        reply: &Message,
    ) -> impl Future<Output = Result<super::Appended>> + Send;

    /// [`MessageStore::update`](super::MessageStore::update): each backend writes a checkpoint
    /// its own way.
    fn checkpoint(&self, message: &Message) -> impl Future<Output = Result<()>> + Send;
}

/// Implements [`MessageStore`](super::MessageStore) for a [`SqlBackend`]: [`Sql`]'s operations,
/// and the backend's own [`turn`](SqlBackend::turn) and [`checkpoint`](SqlBackend::checkpoint).
///
/// A macro rather than a blanket impl over `SqlBackend`, which would need [`Sql`]'s bounds spelt
/// out again and would show in the public docs as implemented for a private trait.
macro_rules! impl_message_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::MessageStore for $store {
            fn backend(&self) -> &'static str {
                <Self as $crate::store::sql::SqlBackend>::BACKEND
            }

            async fn create_chat(
                &self,
                owner: &$crate::UserId,
                id: Option<$crate::ChatId>,
                title: Option<String>,
            ) -> $crate::Result<$crate::Chat> {
                $crate::store::sql::Sql(self)
                    .create_chat(owner, id, title)
                    .await
            }

            async fn get_chat(
                &self,
                chat: &$crate::ChatKey,
            ) -> $crate::Result<Option<$crate::Chat>> {
                $crate::store::sql::Sql(self).get_chat(chat).await
            }

            async fn list_chats(
                &self,
                owner: &$crate::UserId,
                page: $crate::store::ChatPage,
            ) -> $crate::Result<Vec<$crate::Chat>> {
                $crate::store::sql::Sql(self).list_chats(owner, page).await
            }

            async fn rename_chat(
                &self,
                chat: &$crate::ChatKey,
                title: Option<String>,
            ) -> $crate::Result<$crate::Chat> {
                $crate::store::sql::Sql(self).rename_chat(chat, title).await
            }

            async fn delete_chat(&self, chat: &$crate::ChatKey) -> $crate::Result<bool> {
                $crate::store::sql::Sql(self).delete_chat(chat).await
            }

            async fn append(&self, message: &$crate::Message) -> $crate::Result<()> {
                $crate::store::sql::Sql(self).append(message).await
            }

            async fn append_idempotent(
                &self,
                message: &$crate::Message,
            ) -> $crate::Result<$crate::store::Appended> {
                $crate::store::sql::Sql(self)
                    .append_idempotent(message)
                    .await
            }

            async fn append_turn(
                &self,
                user: &$crate::Message,
                reply: &$crate::Message,
            ) -> $crate::Result<$crate::store::Appended> {
                $crate::store::same_chat(user, reply)?;
                $crate::store::sql::SqlBackend::turn(self, user, reply).await
            }

            async fn update(&self, message: &$crate::Message) -> $crate::Result<()> {
                $crate::store::sql::SqlBackend::checkpoint(self, message).await
            }

            async fn get_message(
                &self,
                owner: &$crate::UserId,
                id: &$crate::MessageId,
            ) -> $crate::Result<Option<$crate::Message>> {
                $crate::store::sql::Sql(self).get_message(owner, id).await
            }

            async fn history(
                &self,
                chat: &$crate::ChatKey,
                page: $crate::store::HistoryPage,
            ) -> $crate::Result<Vec<$crate::Message>> {
                $crate::store::sql::Sql(self).history(chat, page).await
            }

            async fn recover_streaming(
                &self,
                updated_before: Option<chrono::DateTime<chrono::Utc>>,
            ) -> $crate::Result<u64> {
                $crate::store::sql::Sql(self)
                    .recover_streaming(updated_before)
                    .await
            }

            async fn streaming_replies(&self) -> $crate::Result<Vec<$crate::Message>> {
                $crate::store::sql::Sql(self).streaming_replies().await
            }

            async fn interrupt_reply(&self, id: &$crate::MessageId) -> $crate::Result<bool> {
                $crate::store::sql::Sql(self).interrupt_reply(id).await
            }

            async fn ping(&self) -> $crate::Result<()> {
                $crate::store::sql::Sql(self).ping().await
            }
        }
    };
}
pub(crate) use impl_message_store;

/// A query of a backend's database.
pub(crate) type Query<'q, Db> = sqlx::query::Query<'q, Db, <Db as Database>::Arguments<'q>>;

type Row<B> = <<B as SqlBackend>::Db as Database>::Row;

/// What [`Sql::insert_in`] did.
pub(crate) enum Insert {
    /// Stored, with this sequence number in its chat (0 for the chat's first message).
    Created { seq: i64 },
    /// The chat already has a message with the key: nothing was written.
    Existing(Box<Message>),
    /// A unique constraint refused the row; the transaction must be dropped.
    Duplicate,
}

/// The operations the SQL backends run alike, over one backend: `Sql(store).get_message(id)`.
pub(crate) struct Sql<'s, B>(pub(crate) &'s B);

// The bounds say what the shared statements need of a database: executing on its connections,
// and encoding and decoding the column types. Both backends meet them; only a generic needs them
// spelt out.
impl<B: SqlBackend> Sql<'_, B>
where
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<&'q str>: Encode<'q, B::Db>,
    for<'q> Option<String>: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> uuid::Uuid: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<uuid::Uuid>: Encode<'q, B::Db>,
    for<'q> i64: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<i64>: Encode<'q, B::Db>,
    for<'q> Option<B::Time>: Encode<'q, B::Db>,
    for<'r> RawMessage<B::Time>: FromRow<'r, Row<B>>,
    for<'r> RawChat<B::Time>: FromRow<'r, Row<B>>,
    for<'r> (i64,): FromRow<'r, Row<B>>,
{
    pub(crate) async fn create_chat(
        &self,
        owner: &UserId,
        id: Option<ChatId>,
        title: Option<String>,
    ) -> Result<Chat> {
        let _writing = self.0.lock_writes().await;
        let now = B::kept(Utc::now());
        let chat = Chat {
            owner: owner.clone(),
            id: id.unwrap_or_else(ChatId::generate),
            title,
            created_at: now,
            updated_at: now,
        };
        let now = B::encode_time(now)?;
        let done = sqlx::query(B::SQL.insert_chat)
            .bind(chat.owner.as_str())
            .bind(chat.id.as_str())
            .bind(chat.title.as_deref())
            .bind(now)
            .bind(now)
            .execute(self.0.pool())
            .await
            .map_err(err::<B>("create chat"))?;
        if B::rows_affected(&done) == 0 {
            return Err(Error::AlreadyExists {
                what: "chat",
                id: chat.id.to_string(),
            });
        }
        Ok(chat)
    }

    pub(crate) async fn get_chat(&self, chat: &ChatKey) -> Result<Option<Chat>> {
        sqlx::query(B::SQL.get_chat)
            .bind(chat.owner.as_str())
            .bind(chat.id.as_str())
            .fetch_optional(self.0.pool())
            .await
            .map_err(err::<B>("get chat"))?
            .as_ref()
            .map(Self::decode_chat)
            .transpose()
    }

    pub(crate) async fn list_chats(
        &self,
        owner: &UserId,
        page: super::ChatPage,
    ) -> Result<Vec<Chat>> {
        sqlx::query(B::SQL.list_chats)
            .bind(owner.as_str())
            .bind(sql_limit(page.limit))
            .bind(sql_limit(page.offset))
            .fetch_all(self.0.pool())
            .await
            .map_err(err::<B>("list chats"))?
            .iter()
            .map(Self::decode_chat)
            .collect()
    }

    pub(crate) async fn rename_chat(&self, chat: &ChatKey, title: Option<String>) -> Result<Chat> {
        let _writing = self.0.lock_writes().await;
        sqlx::query(B::SQL.rename_chat)
            .bind(title.as_deref())
            .bind(chat.owner.as_str())
            .bind(chat.id.as_str())
            .fetch_optional(self.0.pool())
            .await
            .map_err(err::<B>("rename chat"))?
            .as_ref()
            .map(Self::decode_chat)
            .transpose()?
            .ok_or_else(|| not_found("chat", &chat.id))
    }

    pub(crate) async fn delete_chat(&self, chat: &ChatKey) -> Result<bool> {
        let _writing = self.0.lock_writes().await;
        let done = sqlx::query(B::SQL.delete_chat)
            .bind(chat.owner.as_str())
            .bind(chat.id.as_str())
            .execute(self.0.pool())
            .await
            .map_err(err::<B>("delete chat"))?;
        Ok(B::rows_affected(&done) > 0)
    }

    pub(crate) async fn append(&self, message: &Message) -> Result<()> {
        self.insert(message, None).await.map(|_| ())
    }

    pub(crate) async fn append_idempotent(&self, message: &Message) -> Result<super::Appended> {
        let key = message.client_message_id.as_deref().ok_or_else(|| {
            Error::invalid("message", "append_idempotent needs a client message id")
        })?;
        Ok(match self.insert(message, Some(key)).await? {
            Err(original) => super::Appended {
                message: original,
                created: false,
                first_in_chat: false,
            },
            Ok(seq) => super::Appended {
                message: as_stored::<B>(message),
                created: true,
                first_in_chat: seq == 0,
            },
        })
    }

    /// Appends `message`, `Ok(seq)` with its sequence number in the chat; with `key`, gives
    /// the chat's existing message with that client message id instead (`Err`), if there is
    /// one.
    async fn insert(
        &self,
        message: &Message,
        key: Option<&str>,
    ) -> Result<std::result::Result<i64, Message>> {
        let (_writing, mut tx) = self.0.begin_write("append message").await?;
        match self.insert_in(&mut tx, message, key).await? {
            Insert::Created { seq } => {
                tx.commit().await.map_err(err::<B>("append message"))?;
                Ok(Ok(seq))
            }
            Insert::Existing(original) => {
                tx.rollback().await.map_err(err::<B>("append message"))?;
                Ok(Err(*original))
            }
            Insert::Duplicate => {
                drop(tx);
                self.after_duplicate(message, key).await.map(Err)
            }
        }
    }

    /// Appends `message` inside a write transaction: takes the chat's next sequence number,
    /// then (with `key`) looks for a message of the chat with that client message id, then
    /// inserts.
    ///
    /// Taking the sequence number first takes the chat's lock (SQLite's write lock, PostgreSQL's
    /// row lock), so the duplicate check cannot race another append to the chat, in this process
    /// or another.
    pub(crate) async fn insert_in(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        message: &Message,
        key: Option<&str>,
    ) -> Result<Insert> {
        let columns = Columns::of::<B>(message)?;
        let seq: Option<i64> = sqlx::query_scalar(B::SQL.next_seq)
            .bind(columns.updated_at)
            .bind(message.owner.as_str())
            .bind(message.chat_id.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(err::<B>("append message"))?;
        let Some(seq) = seq else {
            return Err(not_found("chat", &message.chat_id));
        };
        if let Some(key) = key {
            let existing = sqlx::query(B::SQL.by_client_key)
                .bind(message.owner.as_str())
                .bind(message.chat_id.as_str())
                .bind(key)
                .fetch_optional(&mut **tx)
                .await
                .map_err(err::<B>("append message"))?;
            if let Some(row) = existing {
                return Self::decode_message(&row).map(|m| Insert::Existing(Box::new(m)));
            }
        }
        let inserted = self
            .bind_columns(sqlx::query(B::SQL.insert_message), &columns)
            .bind(seq)
            .execute(&mut **tx)
            .await;
        match inserted {
            Ok(_) => Ok(Insert::Created { seq }),
            Err(e) if is_unique_violation(&e) => Ok(Insert::Duplicate),
            Err(e) => Err(store_error(B::BACKEND, "append message", e)),
        }
    }

    /// The answer to an insert that broke a unique constraint: the chat's lock taken by
    /// [`insert_in`](Self::insert_in) makes this unreachable for a repeated key, but should a
    /// duplicate slip past it, the constraint still decides: the message that won, or
    /// `AlreadyExists`.
    pub(crate) async fn after_duplicate(
        &self,
        message: &Message,
        key: Option<&str>,
    ) -> Result<Message> {
        if let Some(key) = key
            && let Some(original) = self.by_client_key(&message.key(), key).await?
        {
            return Ok(original);
        }
        Err(Error::AlreadyExists {
            what: "message",
            id: message.id.to_string(),
        })
    }

    async fn by_client_key(&self, chat: &ChatKey, key: &str) -> Result<Option<Message>> {
        sqlx::query(B::SQL.by_client_key)
            .bind(chat.owner.as_str())
            .bind(chat.id.as_str())
            .bind(key)
            .fetch_optional(self.0.pool())
            .await
            .map_err(err::<B>("append message"))?
            .as_ref()
            .map(Self::decode_message)
            .transpose()
    }

    pub(crate) async fn get_message(
        &self,
        owner: &UserId,
        id: &MessageId,
    ) -> Result<Option<Message>> {
        sqlx::query(B::SQL.get_message)
            .bind(id.as_uuid())
            .bind(owner.as_str())
            .fetch_optional(self.0.pool())
            .await
            .map_err(err::<B>("get message"))?
            .as_ref()
            .map(Self::decode_message)
            .transpose()
    }

    pub(crate) async fn history(&self, chat: &ChatKey, page: HistoryPage) -> Result<Vec<Message>> {
        let upper: i64 = match page.before {
            Some(before) => sqlx::query_scalar(B::SQL.seq_of)
                .bind(before.as_uuid())
                .bind(chat.owner.as_str())
                .bind(chat.id.as_str())
                .fetch_optional(self.0.pool())
                .await
                .map_err(err::<B>("load history"))?
                .ok_or_else(|| not_found("message", before))?,
            None => i64::MAX,
        };
        let mut messages = sqlx::query(B::SQL.history)
            .bind(chat.owner.as_str())
            .bind(chat.id.as_str())
            .bind(upper)
            .bind(sql_limit(page.limit))
            .fetch_all(self.0.pool())
            .await
            .map_err(err::<B>("load history"))?
            .iter()
            .map(Self::decode_message)
            .collect::<Result<Vec<_>>>()?;
        messages.reverse();
        Ok(messages)
    }

    pub(crate) async fn recover_streaming(
        &self,
        updated_before: Option<DateTime<Utc>>,
    ) -> Result<u64> {
        let _writing = self.0.lock_writes().await;
        let before = updated_before.map(B::encode_time).transpose()?;
        let done = sqlx::query(B::SQL.recover_streaming)
            .bind(B::encode_time(B::kept(Utc::now()))?)
            .bind(before)
            .execute(self.0.pool())
            .await
            .map_err(err::<B>("recover streaming messages"))?;
        Ok(B::rows_affected(&done))
    }

    pub(crate) async fn streaming_replies(&self) -> Result<Vec<Message>> {
        sqlx::query(STREAMING_REPLIES)
            .fetch_all(self.0.pool())
            .await
            .map_err(err::<B>("list streaming replies"))?
            .iter()
            .map(Self::decode_message)
            .collect()
    }

    pub(crate) async fn interrupt_reply(&self, id: &MessageId) -> Result<bool> {
        let _writing = self.0.lock_writes().await;
        let done = sqlx::query(B::SQL.interrupt_reply)
            .bind(B::encode_time(B::kept(Utc::now()))?)
            .bind(id.as_uuid())
            .execute(self.0.pool())
            .await
            .map_err(err::<B>("interrupt reply"))?;
        Ok(B::rows_affected(&done) == 1)
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(self.0.pool())
            .await
            .map(drop)
            .map_err(err::<B>("ping the database"))
    }

    /// Binds a message's columns, in `message_columns!()` order.
    pub(crate) fn bind_columns<'q>(
        &self,
        query: Query<'q, B::Db>,
        columns: &'q Columns<'q, B::Time>,
    ) -> Query<'q, B::Db> {
        let m = columns.message;
        query
            .bind(m.id.as_uuid())
            .bind(m.owner.as_str())
            .bind(m.chat_id.as_str())
            .bind(m.role.as_str())
            .bind(m.content.as_str())
            .bind(m.reasoning.as_deref())
            .bind(columns.tool_calls.as_deref())
            .bind(m.tool_call_id.as_deref())
            .bind(m.status.as_str())
            .bind(m.finish_reason.map(|f| f.as_str()))
            .bind(columns.input_tokens)
            .bind(columns.output_tokens)
            .bind(m.error.as_deref())
            .bind(m.client_message_id.as_deref())
            .bind(m.reply_to.map(|id| *id.as_uuid()))
            .bind(columns.created_at)
            .bind(columns.updated_at)
            .bind(columns.extras.parts.as_deref())
            .bind(columns.extras.thinking.as_deref())
            .bind(columns.extras.generation.as_deref())
    }

    /// Binds what a checkpoint saves, in this order: content, reasoning, tool calls, status,
    /// finish reason, input and output tokens, error, parts, thinking, generation, `updated_at`,
    /// then the message's id and owner (a checkpoint writes only a message of its owner).
    pub(crate) fn bind_checkpoint<'q>(
        &self,
        query: Query<'q, B::Db>,
        message: &'q Message,
    ) -> Result<Query<'q, B::Db>> {
        let (input_tokens, output_tokens) = usage_columns(message.usage);
        let extras = Extras::of(B::BACKEND, message)?;
        Ok(query
            .bind(message.content.as_str())
            .bind(message.reasoning.as_deref())
            .bind(tool_calls_to_json(B::BACKEND, &message.tool_calls)?)
            .bind(message.status.as_str())
            .bind(message.finish_reason.map(|f| f.as_str()))
            .bind(input_tokens)
            .bind(output_tokens)
            .bind(message.error.as_deref())
            .bind(extras.parts)
            .bind(extras.thinking)
            .bind(extras.generation)
            .bind(B::encode_time(message.updated_at)?)
            .bind(message.id.as_uuid())
            .bind(message.owner.as_str()))
    }

    /// A message row, as `message_columns!()` selects it.
    pub(crate) fn decode_message(row: &Row<B>) -> Result<Message> {
        RawMessage::<B::Time>::from_row(row)
            .map_err(err::<B>("read message"))?
            .into_message::<B>()
    }

    fn decode_chat(row: &Row<B>) -> Result<Chat> {
        RawChat::<B::Time>::from_row(row)
            .map_err(err::<B>("read chat"))?
            .into_chat::<B>()
    }
}

/// Wraps a sqlx error into the crate's error, saying what was being done.
///
/// Connection failures get a message that names the server, so a wrong URL or a stopped database
/// is obvious from the error alone.
pub(crate) fn store_error(backend: &'static str, doing: &str, err: sqlx::Error) -> Error {
    let message = match &err {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            format!("{doing}: cannot reach the database server: {err}")
        }
        sqlx::Error::PoolTimedOut => {
            format!("{doing}: timed out waiting for a database connection")
        }
        _ => format!("{doing}: {err}"),
    };
    Error::Store {
        backend,
        message,
        source: Some(Box::new(err)),
    }
}

/// [`store_error`] for `B`, as a `map_err` argument.
pub(crate) fn err<B: SqlBackend>(doing: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| store_error(B::BACKEND, doing, e)
}

/// A failed schema migration.
pub(crate) fn migration_error(backend: &'static str, err: sqlx::migrate::MigrateError) -> Error {
    Error::Store {
        backend,
        message: format!("schema migration failed: {err}"),
        source: Some(Box::new(err)),
    }
}

/// Whether a sqlx error is a violated unique constraint (a taken id or client message id).
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

/// A chat or message that does not exist.
pub(crate) fn not_found(what: &'static str, id: impl ToString) -> Error {
    Error::NotFound {
        what,
        id: id.to_string(),
    }
}

/// A stored row that cannot be turned back into a message.
pub(crate) fn corrupt(backend: &'static str, what: &str, detail: impl std::fmt::Display) -> Error {
    Error::Store {
        backend,
        message: format!("stored {what} is unreadable: {detail}"),
        source: None,
    }
}

/// The most rows a page may ask for, as SQL wants it.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
