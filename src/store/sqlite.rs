//! [`SqliteStore`]: chats and messages in one SQLite file (or in memory), via sqlx.

use std::{path::Path, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteRow, SqliteSynchronous,
};

use super::sql::{self, Columns, Sql, SqlBackend, Statements, chat_columns, message_columns};
use sqlx::Row as _;

use super::{Appended, MessageStore};
use crate::{Error, Message, Result};

/// How long a writer waits for another connection's write to finish before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections of a file-backed pool: writers take turns on SQLite's single write lock anyway,
/// extra connections serve concurrent readers (WAL lets them read while one writes).
const FILE_POOL_SIZE: u32 = 8;

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
/// use chatstream::{Message, MessageStore, UserId, store::{HistoryPage, SqliteStore}};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
/// let store = SqliteStore::open("sqlite::memory:").await?; // or "sqlite://chatstream.db"
/// let chat = store.create_chat(&UserId::anonymous(), None, None).await?.key();
/// store.append(&Message::user(&chat, "hi")).await?;
/// assert_eq!(store.history(&chat, HistoryPage::default()).await?[0].content, "hi");
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
pub(crate) struct WriteSlot {
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
            .map_err(sql::err::<Self>("configure in-memory database"))?
            .foreign_keys(true);
        // Each connection to `:memory:` would be its own database: keep exactly one, forever.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(sql::err::<Self>("open in-memory database"))?;
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
            .map_err(sql::err::<Self>(&format!("open {file}")))?;
        Self::from_pool(pool).await
    }

    /// A store on an existing pool, after running the schema migrations on it.
    ///
    /// The pool's connections must have foreign keys on (sqlx's default), or deleting a chat
    /// leaves its messages behind; WAL mode and a busy timeout are recommended as in
    /// [`open`](Self::open).
    pub async fn from_pool(pool: SqlitePool) -> Result<Self> {
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| sql::migration_error(Self::BACKEND, e))?;
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

/// A timestamp as stored: nanoseconds since the Unix epoch.
fn nanos(t: DateTime<Utc>) -> Result<i64> {
    t.timestamp_nanos_opt().ok_or_else(|| {
        Error::invalid(
            "timestamp",
            format!("{t} is outside what the SQLite store keeps (years 1678 to 2261)"),
        )
    })
}

impl SqlBackend for SqliteStore {
    type Db = sqlx::Sqlite;
    type Time = i64;
    type WriteLock<'a> = tokio::sync::MutexGuard<'a, WriteSlot>;

    const BACKEND: &'static str = "sqlite";
    const SQL: Statements = Statements {
        insert_chat: "INSERT INTO chats (owner, id, title, created_at, updated_at) \
                      VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner, id) DO NOTHING",
        get_chat: concat!(
            "SELECT ",
            chat_columns!(),
            " FROM chats WHERE owner = ? AND id = ?"
        ),
        list_chats: concat!(
            "SELECT ",
            chat_columns!(),
            " FROM chats WHERE owner = ? ORDER BY updated_at DESC, id DESC LIMIT ? OFFSET ?"
        ),
        rename_chat: concat!(
            "UPDATE chats SET title = ? WHERE owner = ? AND id = ? RETURNING ",
            chat_columns!()
        ),
        delete_chat: "DELETE FROM chats WHERE owner = ? AND id = ?",
        next_seq: "UPDATE chats SET next_seq = next_seq + 1, updated_at = MAX(updated_at, ?) \
                   WHERE owner = ? AND id = ? RETURNING next_seq - 1",
        by_client_key: concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE owner = ? AND chat_id = ? AND client_message_id = ?"
        ),
        insert_message: concat!(
            "INSERT INTO messages (",
            message_columns!(),
            ", seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ),
        get_message: concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE id = ? AND owner = ?"
        ),
        seq_of: "SELECT seq FROM messages WHERE id = ? AND owner = ? AND chat_id = ?",
        history: concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE owner = ? AND chat_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
        ),
        recover_streaming: "UPDATE messages SET status = 'interrupted', updated_at = ?1 \
                            WHERE status = 'streaming' AND role = 'assistant' \
                            AND (?2 IS NULL OR updated_at < ?2)",
        interrupt_reply: "UPDATE messages SET status = 'interrupted', updated_at = ? \
                          WHERE id = ? AND status = 'streaming' AND role = 'assistant'",
    };

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn encode_time(time: DateTime<Utc>) -> Result<i64> {
        nanos(time)
    }

    fn decode_time(nanos: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(nanos)
    }

    fn kept(time: DateTime<Utc>) -> DateTime<Utc> {
        time
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    async fn lock_writes(&self) -> tokio::sync::MutexGuard<'_, WriteSlot> {
        self.writer.lock().await
    }

    /// Writers of this process queue on `writer` (held until the guard drops), then
    /// `BEGIN IMMEDIATE` takes SQLite's write lock at once.
    async fn begin_write(
        &self,
        doing: &'static str,
    ) -> Result<(
        tokio::sync::MutexGuard<'_, WriteSlot>,
        sqlx::Transaction<'static, sqlx::Sqlite>,
    )> {
        let writing = self.writer.lock().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sql::err::<Self>(doing))?;
        Ok((writing, tx))
    }

    async fn turn(&self, user: &Message, reply: &Message) -> Result<Appended> {
        // In the writers' queue first: a turn waiting there holds only its messages, not the
        // bound arguments too (at a burst of new chats, a thousand of them wait at once).
        let slot = self.writer.lock().await;
        let sql = Sql(self);
        let (u, r) = (Columns::of::<Self>(user)?, Columns::of::<Self>(reply)?);
        let (owner, chat) = (user.owner.as_str(), user.chat_id.as_str());
        let key = user.client_message_id.as_deref();
        let user_id = user.id.as_uuid();
        let now = nanos(Utc::now())?;
        let query = sqlx::query(TURN_SCRIPT)
            .bind(owner)
            .bind(chat)
            .bind(now)
            .bind(now);
        let query = sql
            .bind_columns(query, &u)
            .bind(owner)
            .bind(chat)
            .bind(owner)
            .bind(chat)
            .bind(key);
        let query = sql
            .bind_columns(query, &r)
            .bind(owner)
            .bind(chat)
            .bind(user_id);
        let query = query
            .bind(u.updated_at.max(r.updated_at))
            .bind(owner)
            .bind(chat)
            .bind(user_id)
            .bind(owner)
            .bind(user_id)
            .bind(chat)
            .bind(key);
        let rows = match self.script(slot, query).await {
            Ok(rows) => rows,
            Err(e) if sql::is_unique_violation(&e) => {
                // The key check in the script makes this unreachable for a repeated key; a taken
                // message id ends up here (and nothing of the turn is kept).
                let taken = if self.get_message(&user.owner, &user.id).await?.is_some() {
                    user.id
                } else {
                    reply.id
                };
                return Err(Error::AlreadyExists {
                    what: "message",
                    id: taken.to_string(),
                });
            }
            Err(e) => return Err(sql::store_error(Self::BACKEND, "append turn", e)),
        };
        let row = rows.first().ok_or_else(|| Error::Store {
            backend: Self::BACKEND,
            message: "append turn: the user message is missing after the write".into(),
            source: None,
        })?;
        let stored = Sql::<Self>::decode_message(row)?;
        let seq: i64 = row
            .try_get("seq")
            .map_err(sql::err::<Self>("append turn"))?;
        let created = stored.id == user.id;
        Ok(Appended {
            created,
            first_in_chat: created && seq == 0,
            message: stored,
        })
    }

    async fn checkpoint(&self, message: &Message) -> Result<()> {
        // Queued first, bound after, as in `turn`: every live reply may have a checkpoint
        // waiting for the writer.
        let slot = self.writer.lock().await;
        let query = Sql(self)
            .bind_checkpoint(sqlx::query(UPDATE_SCRIPT), message)?
            .bind(nanos(message.updated_at)?)
            .bind(message.owner.as_str())
            .bind(message.id.as_uuid())
            .bind(message.owner.as_str());
        let rows = self
            .script(slot, query)
            .await
            .map_err(sql::err::<Self>("update message"))?;
        if rows.is_empty() {
            return Err(sql::not_found("message", message.id));
        }
        Ok(())
    }
}

// Scripts take anonymous parameters only, bound in the order they appear across all their
// statements: sqlx numbers a script's parameters statement by statement, so a `?NNN` that skips
// numbers would shift the ones after it.

/// A checkpoint as one script (see [`SqliteStore::script`]): the message, then its chat's
/// activity time. `RETURNING` gives no row when the owner has no such message. Its parameters
/// are those of [`Sql::bind_checkpoint`], then `updated_at`, the owner, the message's id and the
/// owner again.
const UPDATE_SCRIPT: &str = "BEGIN IMMEDIATE;
UPDATE messages SET content = ?, reasoning = ?, tool_calls = ?, status = ?, finish_reason = ?,
    usage_input_tokens = ?, usage_output_tokens = ?, error = ?, parts = ?, thinking = ?,
    generation = ?, updated_at = ?
    WHERE id = ? AND owner = ? RETURNING chat_id;
UPDATE chats SET updated_at = MAX(updated_at, ?)
    WHERE owner = ? AND id = (SELECT chat_id FROM messages WHERE id = ? AND owner = ?);
COMMIT;";

/// A turn as one script (see [`SqliteStore::script`]): the chat if it is new; the user message
/// unless the chat already has its client message id; the reply only if the user message was
/// stored now, each with the chat's next sequence number; then the stored user message (the new
/// one or the original) comes back, with its sequence number.
const TURN_SCRIPT: &str = concat!(
    "BEGIN IMMEDIATE;
INSERT INTO chats (owner, id, title, created_at, updated_at) VALUES (?, ?, NULL, ?, ?)
    ON CONFLICT (owner, id) DO NOTHING;
INSERT INTO messages (",
    message_columns!(),
    ", seq)
    SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, next_seq FROM chats
    WHERE owner = ? AND id = ?
    AND NOT EXISTS (SELECT 1 FROM messages
        WHERE owner = ? AND chat_id = ? AND client_message_id = ?);
INSERT INTO messages (",
    message_columns!(),
    ", seq)
    SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, next_seq + 1 FROM chats
    WHERE owner = ? AND id = ? AND EXISTS (SELECT 1 FROM messages WHERE id = ?);
UPDATE chats SET next_seq = next_seq + 2, updated_at = MAX(updated_at, ?)
    WHERE owner = ? AND id = ? AND EXISTS (SELECT 1 FROM messages WHERE id = ?);
SELECT ",
    message_columns!(),
    ", seq FROM messages
    WHERE owner = ? AND (id = ? OR (chat_id = ? AND client_message_id = ?));
COMMIT;"
);

type SqliteQuery<'q> = sql::Query<'q, sqlx::Sqlite>;

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
    /// return. `slot` is the writers' queue, taken before the script's arguments were bound; it
    /// is let go when the script ends.
    ///
    /// The statements go to the connection's thread as one query: one round trip instead of one
    /// per statement, which is most of what a small write costs (measured with
    /// `cargo bench --bench store`). When a statement fails the script stops there, inside its
    /// transaction, which is then rolled back: a script applies entirely or not at all, also when
    /// its future is dropped part-way (the connection is closed, which rolls back).
    async fn script(
        &self,
        mut slot: tokio::sync::MutexGuard<'_, WriteSlot>,
        query: SqliteQuery<'_>,
    ) -> std::result::Result<Vec<SqliteRow>, sqlx::Error> {
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
sql::impl_message_store!(SqliteStore);

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
