//! [`PostgresStore`]: chats and messages in PostgreSQL, via sqlx, shared by any number of
//! processes.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::{
    Connection, Row,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow},
};

use super::{
    Appended, ChatPage, HistoryPage, MessageStore,
    sql::{self, RawMessage},
};
use crate::{Chat, ChatId, Error, Message, MessageId, Result};

const BACKEND: &str = "postgres";

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// How long opening the store waits for the server before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per store: a checkpoint or append holds one for a few round trips only.
const POOL_SIZE: u32 = 10;

macro_rules! message_columns {
    () => {
        "id, chat_id, role, content, reasoning, tool_calls, tool_call_id, status, finish_reason, \
         usage_input_tokens, usage_output_tokens, error, client_message_id, reply_to, created_at, \
         updated_at"
    };
}

const SELECT_BY_CLIENT_KEY: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE chat_id = $1 AND client_message_id = $2"
);

/// A store in a PostgreSQL database: for production, and for several server processes that
/// share chats.
///
/// Per-chat sequence numbers come from the database (the chat row is incremented in the
/// transaction that inserts the message), so processes sharing the database never collide, and
/// idempotent appends rely on a unique `(chat_id, client_message_id)` constraint. Schema
/// migrations run when the store opens, under sqlx's advisory lock, so processes may start
/// together.
///
/// PostgreSQL keeps timestamps to the microsecond: they read back truncated to microseconds.
/// Text may not contain NUL characters (PostgreSQL rejects them).
///
/// Cheap to clone: clones share one connection pool.
///
/// ```no_run
/// use chatstream::{MessageStore, store::PostgresStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
/// let store = PostgresStore::open("postgres://postgres@localhost/chatstream").await?;
/// // or keep the tables in a schema of their own (created if missing):
/// let store = PostgresStore::open_in_schema("postgres://postgres@localhost/app", "chat").await?;
/// store.recover_streaming(None).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database of a `postgres://` (or `postgresql://`) URL and runs the schema
    /// migrations.
    ///
    /// Fails with [`Error::Config`] for a malformed URL and with [`Error::Store`] when the
    /// server cannot be reached within 10 seconds or refuses the connection.
    pub async fn open(url: &str) -> Result<Self> {
        Self::connect_with(parse_url(url)?).await
    }

    /// Like [`open`](Self::open), with the tables in `schema` (created if missing) instead of
    /// the connection's default search path: several applications, or test runs, can share one
    /// database.
    ///
    /// `schema` must be a plain lower-case identifier: `[a-z_][a-z0-9_]*`, at most 63 bytes.
    pub async fn open_in_schema(url: &str, schema: &str) -> Result<Self> {
        validate_schema(schema)?;
        let options = parse_url(url)?.options([("search_path", schema)]);
        let mut conn = connect_once(&options).await?;
        let created = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .execute(&mut conn)
            .await;
        match created {
            Ok(_) => {}
            // Two processes creating the schema at once: the loser sees a duplicate.
            Err(e) if is_duplicate_object(&e) => {}
            Err(e) => return Err(sql::store_error(BACKEND, "create schema", e)),
        }
        Self::finish_open(conn, options).await
    }

    /// Connects with explicit options (TLS, credentials, `search_path` …) and runs the schema
    /// migrations.
    pub async fn connect_with(options: PgConnectOptions) -> Result<Self> {
        let conn = connect_once(&options).await?;
        Self::finish_open(conn, options).await
    }

    async fn finish_open(mut conn: PgConnection, options: PgConnectOptions) -> Result<Self> {
        migrate(&mut conn).await?;
        // A failed close only loses the connection, which the server cleans up.
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options);
        Ok(PostgresStore { pool })
    }

    /// A store on an existing pool, after running the schema migrations on it.
    pub async fn from_pool(pool: PgPool) -> Result<Self> {
        let mut conn = pool.acquire().await.map_err(err("connect"))?;
        migrate(&mut conn).await?;
        drop(conn);
        Ok(PostgresStore { pool })
    }

    /// The connection pool, for queries of your own (the tables are `chats` and `messages`).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes every connection; the store fails on use afterwards.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn parse_url(url: &str) -> Result<PgConnectOptions> {
    // The URL may hold a password: never repeat it in the error.
    PgConnectOptions::from_str(url)
        .map_err(|e| Error::Config(format!("invalid PostgreSQL URL: {e}")))
}

fn validate_schema(schema: &str) -> Result<()> {
    let mut chars = schema.chars();
    let ok = schema.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "schema name",
            format!("{schema:?}: use 1 to 63 characters of [a-z0-9_], not starting with a digit"),
        ))
    }
}

fn is_duplicate_object(err: &sqlx::Error) -> bool {
    sql::is_unique_violation(err)
        || err
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "42P06")
}

/// One connection, failing fast: a pool would keep retrying a refused connection until its
/// acquire timeout.
async fn connect_once(options: &PgConnectOptions) -> Result<PgConnection> {
    let server = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let database = options.get_database().unwrap_or(options.get_username());
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(Error::Store {
            backend: BACKEND,
            message: format!("cannot connect to database {database:?} at {server}: {e}"),
            source: Some(Box::new(e)),
        }),
        Err(_) => Err(Error::Store {
            backend: BACKEND,
            message: format!(
                "cannot connect to database {database:?} at {server}: no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
            source: None,
        }),
    }
}

async fn migrate(conn: &mut PgConnection) -> Result<()> {
    MIGRATOR.run(conn).await.map_err(|e| Error::Store {
        backend: BACKEND,
        message: format!("schema migration failed: {e}"),
        source: Some(Box::new(e)),
    })
}

fn err(doing: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| sql::store_error(BACKEND, doing, e)
}

/// What PostgreSQL will keep of a timestamp, so values handed back match values read back.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

fn not_found(what: &'static str, id: impl ToString) -> Error {
    Error::NotFound {
        what,
        id: id.to_string(),
    }
}

fn decode_message(row: &PgRow) -> Result<Message> {
    let raw = (|| -> std::result::Result<RawMessage, sqlx::Error> {
        Ok(RawMessage {
            id: row.try_get("id")?,
            chat_id: row.try_get("chat_id")?,
            role: row.try_get("role")?,
            content: row.try_get("content")?,
            reasoning: row.try_get("reasoning")?,
            tool_calls: row.try_get("tool_calls")?,
            tool_call_id: row.try_get("tool_call_id")?,
            status: row.try_get("status")?,
            finish_reason: row.try_get("finish_reason")?,
            usage_input_tokens: row.try_get("usage_input_tokens")?,
            usage_output_tokens: row.try_get("usage_output_tokens")?,
            error: row.try_get("error")?,
            client_message_id: row.try_get("client_message_id")?,
            reply_to: row.try_get("reply_to")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    })()
    .map_err(err("read message"))?;
    raw.into_message(BACKEND)
}

fn decode_chat(row: &PgRow) -> Result<Chat> {
    let id: String = row.try_get("id").map_err(err("read chat"))?;
    Ok(Chat {
        id: id
            .parse()
            .map_err(|e| sql::corrupt(BACKEND, "chat id", e))?,
        title: row.try_get("title").map_err(err("read chat"))?,
        created_at: row.try_get("created_at").map_err(err("read chat"))?,
        updated_at: row.try_get("updated_at").map_err(err("read chat"))?,
    })
}

impl PostgresStore {
    async fn by_client_key(&self, chat: &ChatId, key: &str) -> Result<Option<Message>> {
        sqlx::query(SELECT_BY_CLIENT_KEY)
            .bind(chat.as_str())
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(err("append message"))?
            .as_ref()
            .map(decode_message)
            .transpose()
    }

    /// Appends `message`; with `key`, returns the chat's existing message with that client
    /// message id instead, if there is one.
    async fn insert(&self, message: &Message, key: Option<&str>) -> Result<Option<Message>> {
        let mut tx = self.pool.begin().await.map_err(err("append message"))?;
        match insert_in(&mut tx, message, key).await? {
            Insert::Created => {
                tx.commit().await.map_err(err("append message"))?;
                Ok(None)
            }
            Insert::Existing(original) => {
                tx.rollback().await.map_err(err("append message"))?;
                Ok(Some(*original))
            }
            Insert::Duplicate => {
                drop(tx);
                self.after_duplicate(message, key).await.map(Some)
            }
        }
    }

    /// The answer to an insert that broke a unique constraint: the chat's row lock taken by
    /// [`insert_in`] makes this unreachable for a repeated key, but should a duplicate slip past
    /// it, the constraint still decides: the message that won, or `AlreadyExists`.
    async fn after_duplicate(&self, message: &Message, key: Option<&str>) -> Result<Message> {
        if let Some(key) = key
            && let Some(original) = self.by_client_key(&message.chat_id, key).await?
        {
            return Ok(original);
        }
        Err(Error::AlreadyExists {
            what: "message",
            id: message.id.to_string(),
        })
    }
}

/// What [`insert_in`] did.
enum Insert {
    Created,
    /// The chat already has a message with the key: nothing was written.
    Existing(Box<Message>),
    /// A unique constraint refused the row; the transaction must be dropped.
    Duplicate,
}

/// Appends `message` inside a transaction (see [`PostgresStore::insert`]).
async fn insert_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    message: &Message,
    key: Option<&str>,
) -> Result<Insert> {
    let tool_calls = sql::tool_calls_to_json(BACKEND, &message.tool_calls)?;
    let (input_tokens, output_tokens) = sql::usage_columns(message.usage);
    // The row lock taken here serialises appends to one chat across every process: the
    // duplicate check below then sees any message a concurrent send committed first.
    let seq: Option<i64> = sqlx::query_scalar(
        "UPDATE chats SET next_seq = next_seq + 1, updated_at = GREATEST(updated_at, $1) \
         WHERE id = $2 RETURNING next_seq - 1",
    )
    .bind(message.updated_at)
    .bind(message.chat_id.as_str())
    .fetch_optional(&mut **tx)
    .await
    .map_err(err("append message"))?;
    let Some(seq) = seq else {
        return Err(not_found("chat", &message.chat_id));
    };
    if let Some(key) = key {
        let existing = sqlx::query(SELECT_BY_CLIENT_KEY)
            .bind(message.chat_id.as_str())
            .bind(key)
            .fetch_optional(&mut **tx)
            .await
            .map_err(err("append message"))?;
        if let Some(row) = existing {
            return decode_message(&row).map(|m| Insert::Existing(Box::new(m)));
        }
    }
    let inserted = sqlx::query(concat!(
        "INSERT INTO messages (",
        message_columns!(),
        ", seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
         $16, $17)"
    ))
    .bind(message.id.as_uuid())
    .bind(message.chat_id.as_str())
    .bind(message.role.as_str())
    .bind(&message.content)
    .bind(&message.reasoning)
    .bind(tool_calls)
    .bind(&message.tool_call_id)
    .bind(message.status.as_str())
    .bind(message.finish_reason.map(|f| f.as_str()))
    .bind(input_tokens)
    .bind(output_tokens)
    .bind(&message.error)
    .bind(&message.client_message_id)
    .bind(message.reply_to.map(|id| *id.as_uuid()))
    .bind(message.created_at)
    .bind(message.updated_at)
    .bind(seq)
    .execute(&mut **tx)
    .await;
    match inserted {
        Ok(_) => Ok(Insert::Created),
        Err(e) if sql::is_unique_violation(&e) => Ok(Insert::Duplicate),
        Err(e) => Err(sql::store_error(BACKEND, "append message", e)),
    }
}

#[async_trait]
impl MessageStore for PostgresStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn create_chat(&self, id: Option<ChatId>, title: Option<String>) -> Result<Chat> {
        let now = micros(Utc::now());
        let chat = Chat {
            id: id.unwrap_or_else(ChatId::generate),
            title,
            created_at: now,
            updated_at: now,
        };
        let done = sqlx::query(
            "INSERT INTO chats (id, title, created_at, updated_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(chat.id.as_str())
        .bind(&chat.title)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(err("create chat"))?;
        if done.rows_affected() == 0 {
            return Err(Error::AlreadyExists {
                what: "chat",
                id: chat.id.to_string(),
            });
        }
        Ok(chat)
    }

    async fn get_chat(&self, id: &ChatId) -> Result<Option<Chat>> {
        sqlx::query("SELECT id, title, created_at, updated_at FROM chats WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(err("get chat"))?
            .as_ref()
            .map(decode_chat)
            .transpose()
    }

    async fn list_chats(&self, page: ChatPage) -> Result<Vec<Chat>> {
        sqlx::query(
            "SELECT id, title, created_at, updated_at FROM chats \
             ORDER BY updated_at DESC, id DESC LIMIT $1 OFFSET $2",
        )
        .bind(sql::sql_limit(page.limit))
        .bind(sql::sql_limit(page.offset))
        .fetch_all(&self.pool)
        .await
        .map_err(err("list chats"))?
        .iter()
        .map(decode_chat)
        .collect()
    }

    async fn rename_chat(&self, id: &ChatId, title: Option<String>) -> Result<Chat> {
        sqlx::query(
            "UPDATE chats SET title = $1 WHERE id = $2 \
             RETURNING id, title, created_at, updated_at",
        )
        .bind(&title)
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(err("rename chat"))?
        .as_ref()
        .map(decode_chat)
        .transpose()?
        .ok_or_else(|| not_found("chat", id))
    }

    async fn delete_chat(&self, id: &ChatId) -> Result<bool> {
        // Messages go with it: ON DELETE CASCADE.
        let done = sqlx::query("DELETE FROM chats WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(err("delete chat"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn append(&self, message: &Message) -> Result<()> {
        self.insert(message, None).await.map(|_| ())
    }

    async fn append_idempotent(&self, message: &Message) -> Result<Appended> {
        let key = message.client_message_id.as_deref().ok_or_else(|| {
            Error::invalid("message", "append_idempotent needs a client message id")
        })?;
        Ok(match self.insert(message, Some(key)).await? {
            Some(original) => Appended {
                message: original,
                created: false,
            },
            None => {
                // Hand back what a later read gives, so a repeat compares equal.
                let mut stored = message.clone();
                stored.created_at = micros(stored.created_at);
                stored.updated_at = micros(stored.updated_at);
                Appended {
                    message: stored,
                    created: true,
                }
            }
        })
    }

    async fn append_turn(&self, user: &Message, reply: &Message) -> Result<Appended> {
        super::same_chat(user, reply)?;
        let key = user.client_message_id.as_deref();
        let now = micros(Utc::now());
        let mut tx = self.pool.begin().await.map_err(err("append turn"))?;
        sqlx::query(
            "INSERT INTO chats (id, title, created_at, updated_at) VALUES ($1, NULL, $2, $2) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(user.chat_id.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(err("append turn"))?;
        match insert_in(&mut tx, user, key).await? {
            Insert::Created => {}
            Insert::Existing(original) => {
                tx.rollback().await.map_err(err("append turn"))?;
                return Ok(Appended {
                    message: *original,
                    created: false,
                });
            }
            Insert::Duplicate => {
                drop(tx);
                return Ok(Appended {
                    message: self.after_duplicate(user, key).await?,
                    created: false,
                });
            }
        }
        match insert_in(&mut tx, reply, None).await? {
            Insert::Created => {}
            Insert::Existing(_) | Insert::Duplicate => {
                // Neither message is kept: the whole turn fails.
                tx.rollback().await.map_err(err("append turn"))?;
                return Err(Error::AlreadyExists {
                    what: "message",
                    id: reply.id.to_string(),
                });
            }
        }
        tx.commit().await.map_err(err("append turn"))?;
        // Hand back what a later read gives, so a repeat compares equal.
        let mut stored = user.clone();
        stored.created_at = micros(stored.created_at);
        stored.updated_at = micros(stored.updated_at);
        Ok(Appended {
            message: stored,
            created: true,
        })
    }

    async fn update(&self, message: &Message) -> Result<()> {
        let tool_calls = sql::tool_calls_to_json(BACKEND, &message.tool_calls)?;
        let (input_tokens, output_tokens) = sql::usage_columns(message.usage);
        // One statement, one round trip: the message row and its chat's activity time.
        let done = sqlx::query(
            "WITH m AS ( \
                 UPDATE messages SET content = $1, reasoning = $2, tool_calls = $3, status = $4, \
                 finish_reason = $5, usage_input_tokens = $6, usage_output_tokens = $7, \
                 error = $8, updated_at = $9 WHERE id = $10 RETURNING chat_id \
             ) \
             UPDATE chats SET updated_at = GREATEST(chats.updated_at, $9) \
             FROM m WHERE chats.id = m.chat_id",
        )
        .bind(&message.content)
        .bind(&message.reasoning)
        .bind(tool_calls)
        .bind(message.status.as_str())
        .bind(message.finish_reason.map(|f| f.as_str()))
        .bind(input_tokens)
        .bind(output_tokens)
        .bind(&message.error)
        .bind(message.updated_at)
        .bind(message.id.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(err("update message"))?;
        if done.rows_affected() == 0 {
            return Err(not_found("message", message.id));
        }
        Ok(())
    }

    async fn get_message(&self, id: &MessageId) -> Result<Option<Message>> {
        sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE id = $1"
        ))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(err("get message"))?
        .as_ref()
        .map(decode_message)
        .transpose()
    }

    async fn history(&self, chat: &ChatId, page: HistoryPage) -> Result<Vec<Message>> {
        let upper: i64 = match page.before {
            Some(before) => {
                sqlx::query_scalar("SELECT seq FROM messages WHERE id = $1 AND chat_id = $2")
                    .bind(before.as_uuid())
                    .bind(chat.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(err("load history"))?
                    .ok_or_else(|| not_found("message", before))?
            }
            None => i64::MAX,
        };
        let mut messages = sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE chat_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
        ))
        .bind(chat.as_str())
        .bind(upper)
        .bind(sql::sql_limit(page.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(err("load history"))?
        .iter()
        .map(decode_message)
        .collect::<Result<Vec<_>>>()?;
        messages.reverse();
        Ok(messages)
    }

    async fn recover_streaming(&self, updated_before: Option<DateTime<Utc>>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE messages SET status = 'interrupted', updated_at = $1 \
             WHERE status = 'streaming' AND role = 'assistant' \
             AND ($2::timestamptz IS NULL OR updated_at < $2)",
        )
        .bind(micros(Utc::now()))
        .bind(updated_before)
        .execute(&self.pool)
        .await
        .map_err(err("recover streaming messages"))?;
        Ok(done.rows_affected())
    }

    async fn streaming_replies(&self) -> Result<Vec<Message>> {
        sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE status = 'streaming' AND role = 'assistant' \
             ORDER BY created_at, seq"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(err("list streaming replies"))?
        .iter()
        .map(decode_message)
        .collect()
    }

    async fn interrupt_reply(&self, id: &MessageId) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE messages SET status = 'interrupted', updated_at = $1 \
             WHERE id = $2 AND status = 'streaming' AND role = 'assistant'",
        )
        .bind(micros(Utc::now()))
        .bind(id.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(err("interrupt reply"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(err("ping the database"))
    }
}

#[cfg(test)]
mod tests {
    use super::validate_schema;

    #[test]
    fn schema_names() {
        assert!(validate_schema("chat").is_ok());
        assert!(validate_schema("_t_01").is_ok());
        assert!(validate_schema("").is_err());
        assert!(validate_schema("1abc").is_err());
        assert!(validate_schema("Chat").is_err());
        assert!(validate_schema("a\"; drop").is_err());
        assert!(validate_schema(&"a".repeat(64)).is_err());
    }
}
