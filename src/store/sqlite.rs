//! [`SqliteStore`]: chats and messages in one SQLite file (or in memory), via sqlx.

use std::{path::Path, str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    Row,
    migrate::Migrator,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
        SqliteSynchronous,
    },
};

use super::{
    Appended, ChatPage, HistoryPage, MessageStore,
    sql::{self, RawMessage},
};
use crate::{Chat, ChatId, Error, Message, MessageId, Result};

const BACKEND: &str = "sqlite";

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a writer waits for another connection's write to finish before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections of a file-backed pool: writers take turns on SQLite's single write lock anyway,
/// extra connections serve concurrent readers (WAL lets them read while one writes).
const FILE_POOL_SIZE: u32 = 8;

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
    " FROM messages WHERE chat_id = ? AND client_message_id = ?"
);

/// A store in one SQLite file, or in memory: no server, the embedded default.
///
/// The file is created if missing and schema migrations run when the store opens. It runs in WAL
/// mode with `synchronous = NORMAL` (a committed write survives a crash of the process; a power
/// loss may lose the last few commits), foreign keys on and a busy timeout, so any number of
/// tasks of one process may write at once, and several stores (or processes) may share one file.
/// Writers of one process queue in order on an in-process lock; every write transaction starts
/// with `BEGIN IMMEDIATE`, so a writer of another process waits on the busy timeout instead of
/// failing on a lock upgrade.
///
/// Timestamps are stored as integer nanoseconds: a message reads back exactly as written.
///
/// Cheap to clone: clones share one connection pool.
///
/// ```
/// use chatstream::{Message, MessageStore, store::{HistoryPage, SqliteStore}};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
/// let store = SqliteStore::open("sqlite::memory:").await?; // or "sqlite://chatstream.db"
/// let chat = store.create_chat(None, None).await?;
/// store.append(&Message::user(chat.id.clone(), "hi")).await?;
/// assert_eq!(store.history(&chat.id, HistoryPage::default()).await?[0].content, "hi");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// SQLite has one writer at a time; writers of this process queue here, in order, rather
    /// than on SQLite's busy handler, which sleeps in steps of milliseconds under contention.
    /// (Other processes on the same file still meet the busy timeout.)
    writer: std::sync::Arc<tokio::sync::Mutex<WriteSlot>>,
}

/// What the writer lock guards: the connection that write scripts keep using.
#[derive(Debug)]
struct WriteSlot {
    /// Kept between scripts (when `keep`): no pool checkout and return per write, and its page
    /// cache stays warm, since the writes all go through it.
    conn: Option<sqlx::pool::PoolConnection<sqlx::Sqlite>>,
    /// Whether a connection may be kept out of the pool: not when the pool has only one (an
    /// in-memory database), which readers need too.
    keep: bool,
}

impl Drop for WriteSlot {
    fn drop(&mut self) {
        // Handing a connection back to its pool spawns a task, which needs a runtime: a store
        // dropped outside one closes the kept connection here instead.
        if let Some(conn) = self.conn.take()
            && tokio::runtime::Handle::try_current().is_err()
        {
            drop(conn.detach());
        }
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database of a URL: `sqlite://PATH`, `sqlite:PATH`, or
    /// `sqlite::memory:` for a private in-memory database.
    ///
    /// A relative `PATH` is relative to the working directory. An in-memory database lives on
    /// one connection that is never closed, so every query sees the same data, until the store
    /// (all its clones) is dropped.
    pub async fn open(url: &str) -> Result<Self> {
        if is_memory_url(url) {
            return Self::in_memory().await;
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("invalid SQLite URL {url:?}: {e}")))?;
        Self::open_with(options).await
    }

    /// Opens (creating if missing) the database file at `path`.
    pub async fn open_path(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(SqliteConnectOptions::new().filename(path)).await
    }

    /// A new, private, in-memory database.
    pub async fn in_memory() -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(|e| sql::store_error(BACKEND, "configure in-memory database", e))?
            .foreign_keys(true);
        // Each connection to `:memory:` would be its own database: keep exactly one, forever.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|e| sql::store_error(BACKEND, "open in-memory database", e))?;
        Self::from_pool(pool).await
    }

    async fn open_with(options: SqliteConnectOptions) -> Result<Self> {
        let file = options.get_filename().display().to_string();
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(FILE_POOL_SIZE)
            // A connection to a local file does not go stale: no round trip to check it on
            // every acquire (each is a hop to the connection's thread and back).
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| sql::store_error(BACKEND, &format!("open {file}"), e))?;
        Self::from_pool(pool).await
    }

    /// A store on an existing pool, after running the schema migrations on it.
    ///
    /// The pool's connections must have foreign keys on (sqlx's default), or deleting a chat
    /// leaves its messages behind; WAL mode and a busy timeout are recommended as in
    /// [`open`](Self::open).
    pub async fn from_pool(pool: SqlitePool) -> Result<Self> {
        MIGRATOR.run(&pool).await.map_err(|e| Error::Store {
            backend: BACKEND,
            message: format!("schema migration failed: {e}"),
            source: Some(Box::new(e)),
        })?;
        let keep = pool.options().get_max_connections() > 1;
        Ok(SqliteStore {
            pool,
            writer: std::sync::Arc::new(tokio::sync::Mutex::new(WriteSlot { conn: None, keep })),
        })
    }

    /// The connection pool, for queries of your own (the tables are `chats` and `messages`).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection; the store fails on use afterwards.
    pub async fn close(&self) {
        // The writer's connection goes back first: closing waits for every connection.
        drop(self.writer.lock().await.conn.take());
        self.pool.close().await;
    }
}

fn is_memory_url(url: &str) -> bool {
    let rest = url.strip_prefix("sqlite:").unwrap_or(url);
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    path == ":memory:" || query.split('&').any(|kv| kv == "mode=memory")
}

fn err(doing: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| sql::store_error(BACKEND, doing, e)
}

/// A timestamp as stored: nanoseconds since the Unix epoch.
fn nanos(t: DateTime<Utc>) -> Result<i64> {
    t.timestamp_nanos_opt().ok_or_else(|| {
        Error::invalid(
            "timestamp",
            format!("{t} is outside what the SQLite store keeps (years 1678 to 2261)"),
        )
    })
}

fn time(nanos: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(nanos)
}

fn not_found(what: &'static str, id: impl ToString) -> Error {
    Error::NotFound {
        what,
        id: id.to_string(),
    }
}

fn decode_message(row: &SqliteRow) -> Result<Message> {
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
            created_at: time(row.try_get("created_at")?),
            updated_at: time(row.try_get("updated_at")?),
        })
    })()
    .map_err(err("read message"))?;
    raw.into_message(BACKEND)
}

fn decode_chat(row: &SqliteRow) -> Result<Chat> {
    let id: String = row.try_get("id").map_err(err("read chat"))?;
    Ok(Chat {
        id: id
            .parse()
            .map_err(|e| sql::corrupt(BACKEND, "chat id", e))?,
        title: row.try_get("title").map_err(err("read chat"))?,
        created_at: time(row.try_get("created_at").map_err(err("read chat"))?),
        updated_at: time(row.try_get("updated_at").map_err(err("read chat"))?),
    })
}

// Scripts take anonymous parameters only, bound in the order they appear across all their
// statements: sqlx numbers a script's parameters statement by statement, so a `?NNN` that skips
// numbers would shift the ones after it.

/// A checkpoint as one script (see [`SqliteStore::script`]): the message, then its chat's
/// activity time. `RETURNING` gives no row when there is no such message.
const UPDATE_SCRIPT: &str = "BEGIN IMMEDIATE;
UPDATE messages SET content = ?, reasoning = ?, tool_calls = ?, status = ?, finish_reason = ?,
    usage_input_tokens = ?, usage_output_tokens = ?, error = ?, updated_at = ?
    WHERE id = ? RETURNING chat_id;
UPDATE chats SET updated_at = MAX(updated_at, ?)
    WHERE id = (SELECT chat_id FROM messages WHERE id = ?);
COMMIT;";

/// A turn as one script (see [`SqliteStore::script`]): the chat if it is new; the user message
/// unless the chat already has its client message id; the reply only if the user message was
/// stored now, each with the chat's next sequence number; then the stored user message (the new
/// one or the original) comes back.
const TURN_SCRIPT: &str = concat!(
    "BEGIN IMMEDIATE;
INSERT INTO chats (id, title, created_at, updated_at) VALUES (?, NULL, ?, ?)
    ON CONFLICT (id) DO NOTHING;
INSERT INTO messages (",
    message_columns!(),
    ", seq)
    SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, next_seq FROM chats WHERE id = ?
    AND NOT EXISTS (SELECT 1 FROM messages WHERE chat_id = ? AND client_message_id = ?);
INSERT INTO messages (",
    message_columns!(),
    ", seq)
    SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, next_seq + 1 FROM chats WHERE id = ?
    AND EXISTS (SELECT 1 FROM messages WHERE id = ?);
UPDATE chats SET next_seq = next_seq + 2, updated_at = MAX(updated_at, ?)
    WHERE id = ? AND EXISTS (SELECT 1 FROM messages WHERE id = ?);
SELECT ",
    message_columns!(),
    " FROM messages WHERE id = ? OR (chat_id = ? AND client_message_id = ?);
COMMIT;"
);

/// A message's columns as a script binds them, in `message_columns!()` order.
struct Columns<'a> {
    message: &'a Message,
    tool_calls: Option<String>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

impl<'a> Columns<'a> {
    fn of(message: &'a Message) -> Result<Self> {
        let (input_tokens, output_tokens) = sql::usage_columns(message.usage);
        Ok(Columns {
            message,
            tool_calls: sql::tool_calls_to_json(BACKEND, &message.tool_calls)?,
            input_tokens,
            output_tokens,
            created_at: nanos(message.created_at)?,
            updated_at: nanos(message.updated_at)?,
        })
    }

    fn bind<'q>(&'q self, query: SqliteQuery<'q>) -> SqliteQuery<'q>
    where
        'a: 'q,
    {
        let m = self.message;
        query
            .bind(m.id.as_uuid())
            .bind(m.chat_id.as_str())
            .bind(m.role.as_str())
            .bind(&m.content)
            .bind(&m.reasoning)
            .bind(self.tool_calls.as_deref())
            .bind(&m.tool_call_id)
            .bind(m.status.as_str())
            .bind(m.finish_reason.map(|f| f.as_str()))
            .bind(self.input_tokens)
            .bind(self.output_tokens)
            .bind(&m.error)
            .bind(&m.client_message_id)
            .bind(m.reply_to.map(|id| *id.as_uuid()))
            .bind(self.created_at)
            .bind(self.updated_at)
    }
}

/// A connection running a script; closed rather than reused unless the script is known to have
/// ended its transaction (a script that failed and could not be rolled back, or whose future was
/// dropped part-way, may have left it open).
struct ScriptConnection(Option<sqlx::pool::PoolConnection<sqlx::Sqlite>>);

impl Drop for ScriptConnection {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}

impl SqliteStore {
    /// Runs a write script (`BEGIN IMMEDIATE; …; COMMIT;`) and returns the rows its statements
    /// return.
    ///
    /// The statements go to the connection's thread as one query: one round trip instead of one
    /// per statement, which is most of what a small write costs (measured with
    /// `cargo bench --bench store`). When a statement fails the script stops there, inside its
    /// transaction, which is then rolled back: a script applies entirely or not at all, also when
    /// its future is dropped part-way (the connection is closed, which rolls back).
    async fn script(
        &self,
        query: SqliteQuery<'_>,
    ) -> std::result::Result<Vec<SqliteRow>, sqlx::Error> {
        let mut slot = self.writer.lock().await;
        let conn = match slot.conn.take() {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        let mut running = ScriptConnection(Some(conn));
        let Some(conn) = running.0.as_mut() else {
            return Err(sqlx::Error::PoolClosed);
        };
        let result = query.fetch_all(&mut **conn).await;
        let clean = result.is_ok() || sqlx::query("ROLLBACK").execute(&mut **conn).await.is_ok();
        if clean {
            let conn = running.0.take();
            if slot.keep {
                slot.conn = conn;
            }
        }
        result
    }
}

impl SqliteStore {
    /// Begins a write transaction: writers of this process queue on `writer` (held until the
    /// guard drops), then `BEGIN IMMEDIATE` takes SQLite's write lock at once.
    async fn begin_write(
        &self,
        what: &'static str,
    ) -> Result<(
        tokio::sync::MutexGuard<'_, WriteSlot>,
        sqlx::Transaction<'static, sqlx::Sqlite>,
    )> {
        let writing = self.writer.lock().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(err(what))?;
        Ok((writing, tx))
    }

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
        let (_writing, mut tx) = self.begin_write("append message").await?;
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

    /// The answer to an insert that broke a unique constraint: the chat lock taken by
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

/// Appends `message` inside a write transaction (see [`SqliteStore::insert`]).
async fn insert_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    message: &Message,
    key: Option<&str>,
) -> Result<Insert> {
    let updated_at = nanos(message.updated_at)?;
    let created_at = nanos(message.created_at)?;
    let tool_calls = sql::tool_calls_to_json(BACKEND, &message.tool_calls)?;
    let (input_tokens, output_tokens) = sql::usage_columns(message.usage);
    // Taking the next sequence number first also takes the write lock, so the duplicate
    // check below cannot race another append to this chat.
    let seq: Option<i64> = sqlx::query_scalar(
        "UPDATE chats SET next_seq = next_seq + 1, updated_at = MAX(updated_at, ?) \
         WHERE id = ? RETURNING next_seq - 1",
    )
    .bind(updated_at)
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
        ", seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
    .bind(created_at)
    .bind(updated_at)
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
impl MessageStore for SqliteStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn create_chat(&self, id: Option<ChatId>, title: Option<String>) -> Result<Chat> {
        let _writing = self.writer.lock().await;
        let now = Utc::now();
        let chat = Chat {
            id: id.unwrap_or_else(ChatId::generate),
            title,
            created_at: now,
            updated_at: now,
        };
        let now = nanos(chat.created_at)?;
        let done = sqlx::query(
            "INSERT INTO chats (id, title, created_at, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(chat.id.as_str())
        .bind(&chat.title)
        .bind(now)
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
        sqlx::query("SELECT id, title, created_at, updated_at FROM chats WHERE id = ?")
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
             ORDER BY updated_at DESC, id DESC LIMIT ? OFFSET ?",
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
        let _writing = self.writer.lock().await;
        sqlx::query(
            "UPDATE chats SET title = ? WHERE id = ? RETURNING id, title, created_at, updated_at",
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
        let _writing = self.writer.lock().await;
        // Messages go with it: ON DELETE CASCADE.
        let done = sqlx::query("DELETE FROM chats WHERE id = ?")
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
            None => Appended {
                message: message.clone(),
                created: true,
            },
        })
    }

    async fn append_turn(&self, user: &Message, reply: &Message) -> Result<Appended> {
        super::same_chat(user, reply)?;
        let (u, r) = (Columns::of(user)?, Columns::of(reply)?);
        let chat = user.chat_id.as_str();
        let key = user.client_message_id.as_deref();
        let user_id = user.id.as_uuid();
        let now = nanos(Utc::now())?;
        let query = sqlx::query(TURN_SCRIPT).bind(chat).bind(now).bind(now);
        let query = u.bind(query).bind(chat).bind(chat).bind(key);
        let query = r.bind(query).bind(chat).bind(user_id);
        let query = query
            .bind(u.updated_at.max(r.updated_at))
            .bind(chat)
            .bind(user_id)
            .bind(user_id)
            .bind(chat)
            .bind(key);
        let rows = match self.script(query).await {
            Ok(rows) => rows,
            Err(e) if sql::is_unique_violation(&e) => {
                // The key check in the script makes this unreachable for a repeated key; a taken
                // message id ends up here (and nothing of the turn is kept).
                let taken = if self.get_message(&user.id).await?.is_some() {
                    user.id
                } else {
                    reply.id
                };
                return Err(Error::AlreadyExists {
                    what: "message",
                    id: taken.to_string(),
                });
            }
            Err(e) => return Err(sql::store_error(BACKEND, "append turn", e)),
        };
        let stored = rows
            .first()
            .map(decode_message)
            .transpose()?
            .ok_or_else(|| Error::Store {
                backend: BACKEND,
                message: "append turn: the user message is missing after the write".into(),
                source: None,
            })?;
        Ok(Appended {
            created: stored.id == user.id,
            message: stored,
        })
    }

    async fn update(&self, message: &Message) -> Result<()> {
        let tool_calls = sql::tool_calls_to_json(BACKEND, &message.tool_calls)?;
        let (input_tokens, output_tokens) = sql::usage_columns(message.usage);
        let query = sqlx::query(UPDATE_SCRIPT)
            .bind(&message.content)
            .bind(&message.reasoning)
            .bind(tool_calls)
            .bind(message.status.as_str())
            .bind(message.finish_reason.map(|f| f.as_str()))
            .bind(input_tokens)
            .bind(output_tokens)
            .bind(&message.error)
            .bind(nanos(message.updated_at)?)
            .bind(message.id.as_uuid())
            .bind(nanos(message.updated_at)?)
            .bind(message.id.as_uuid());
        let rows = self.script(query).await.map_err(err("update message"))?;
        if rows.is_empty() {
            return Err(not_found("message", message.id));
        }
        Ok(())
    }

    async fn get_message(&self, id: &MessageId) -> Result<Option<Message>> {
        sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE id = ?"
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
                sqlx::query_scalar("SELECT seq FROM messages WHERE id = ? AND chat_id = ?")
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
            " FROM messages WHERE chat_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
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
        let _writing = self.writer.lock().await;
        let before = updated_before.map(nanos).transpose()?.unwrap_or(i64::MAX);
        let done = sqlx::query(
            "UPDATE messages SET status = 'interrupted', updated_at = ? \
             WHERE status = 'streaming' AND role = 'assistant' AND updated_at < ?",
        )
        .bind(nanos(Utc::now())?)
        .bind(before)
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
        let _writing = self.writer.lock().await;
        let done = sqlx::query(
            "UPDATE messages SET status = 'interrupted', updated_at = ? \
             WHERE id = ? AND status = 'streaming' AND role = 'assistant'",
        )
        .bind(nanos(Utc::now())?)
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
    use super::is_memory_url;

    #[test]
    fn memory_urls() {
        assert!(is_memory_url("sqlite::memory:"));
        assert!(is_memory_url("sqlite://:memory:"));
        assert!(is_memory_url("sqlite://x.db?mode=memory"));
        assert!(!is_memory_url("sqlite://chatstream.db"));
        assert!(!is_memory_url("sqlite:memory.db"));
    }
}
