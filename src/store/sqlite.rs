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
/// failing on a lock upgrade. In a file, turns and checkpoints that queue behind one another
/// share a transaction and its commit (up to 64 of them): each still applies entirely or not at
/// all, and returns only once its writes are committed. (An in-memory database shares its one
/// connection with readers, so there each write commits alone.)
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
    /// Scripts waiting for `writer` (not counting those only waiting to see their group
    /// committed): while there are any, a script's writes stay in an open transaction for the
    /// next ones to join (see [`SqliteStore::write`]).
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// What the writer lock guards: the connection that write scripts keep using.
#[derive(Debug)]
pub(crate) struct WriteSlot {
    /// Kept between scripts (when `keep`): no pool checkout and return per write, and its page
    /// cache stays warm, since the writes all go through it.
    conn: Option<sqlx::pool::PoolConnection<sqlx::Sqlite>>,
    /// Whether a connection may be kept out of the pool: not when the pool has only one (an
    /// in-memory database), which readers need too. Scripts are grouped only then.
    keep: bool,
    /// The transaction open on `conn` that a group of scripts is writing in, until one of them
    /// commits it.
    open: Option<Group>,
    /// The number the next group gets.
    next_group: u64,
    /// Groups committed with more than one script in them (read by the tests).
    #[cfg(test)]
    shared_commits: u64,
}

/// Scripts writing in one transaction; each waits for its commit before it answers.
#[derive(Debug)]
struct Group {
    id: u64,
    scripts: usize,
    /// `Some(true)` once committed, `Some(false)` once rolled back.
    outcome: tokio::sync::watch::Sender<Option<bool>>,
}

impl Drop for WriteSlot {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            if self.open.is_some() {
                // Uncommitted writes must not go back to the pool: closing rolls them back.
                conn.close_on_drop();
            } else if tokio::runtime::Handle::try_current().is_err() {
                // Handing a connection back to its pool spawns a task, which needs a runtime:
                // a store dropped outside one closes the kept connection here instead.
                drop(conn.detach());
            }
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
            writer: std::sync::Arc::new(tokio::sync::Mutex::new(WriteSlot {
                conn: None,
                keep,
                open: None,
                next_group: 0,
                #[cfg(test)]
                shared_commits: 0,
            })),
            queued: Default::default(),
        })
    }

    /// The connection pool, for queries of your own (the tables are `chats` and `messages`).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection; the store fails on use afterwards.
    pub async fn close(&self) {
        // The writer's connection goes back first: closing waits for every connection.
        drop(self.settled().await.conn.take());
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
    type WriteLock<'a> = Slot;

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

    async fn lock_writes(&self) -> Slot {
        self.settled().await
    }

    /// Writers of this process queue on `writer` (held until the guard drops), then
    /// `BEGIN IMMEDIATE` takes SQLite's write lock at once.
    async fn begin_write(
        &self,
        doing: &'static str,
    ) -> Result<(Slot, sqlx::Transaction<'static, sqlx::Sqlite>)> {
        let writing = self.settled().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sql::err::<Self>(doing))?;
        Ok((writing, tx))
    }

    async fn turn(&self, user: &Message, reply: &Message) -> Result<Appended> {
        let sql = Sql(self);
        let (u, r) = (Columns::of::<Self>(user)?, Columns::of::<Self>(reply)?);
        let (owner, chat) = (user.owner.as_str(), user.chat_id.as_str());
        let key = user.client_message_id.as_deref();
        let user_id = user.id.as_uuid();
        let now = nanos(Utc::now())?;
        let bind = |text| {
            let query = sqlx::query(text).bind(owner).bind(chat).bind(now).bind(now);
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
            Ok(query
                .bind(u.updated_at.max(r.updated_at))
                .bind(owner)
                .bind(chat)
                .bind(user_id)
                .bind(owner)
                .bind(user_id)
                .bind(chat)
                .bind(key))
        };
        let rows = match self.write(&TURN, bind).await? {
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
        let updated_at = nanos(message.updated_at)?;
        let bind = |text| {
            Ok(Sql(self)
                .bind_checkpoint(sqlx::query(text), message)?
                .bind(updated_at)
                .bind(message.owner.as_str())
                .bind(message.id.as_uuid())
                .bind(message.owner.as_str()))
        };
        let rows = self
            .write(&UPDATE, bind)
            .await?
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

/// A write script's statements, in the three forms [`SqliteStore::write`] runs them in.
struct Script {
    /// In a transaction of its own.
    alone: &'static str,
    /// Opening a transaction that later scripts join.
    first: &'static str,
    /// In a transaction already open.
    joining: &'static str,
}

/// Wraps a script's statements in its three forms.
macro_rules! script {
    ($statements:expr) => {
        Script {
            alone: concat!("BEGIN IMMEDIATE;\n", $statements, "COMMIT;"),
            first: concat!(
                "BEGIN IMMEDIATE;\nSAVEPOINT script;\n",
                $statements,
                "RELEASE script;"
            ),
            joining: concat!("SAVEPOINT script;\n", $statements, "RELEASE script;"),
        }
    };
}

/// A checkpoint: the message, then its chat's activity time. `RETURNING` gives no row when the
/// owner has no such message. Its parameters are those of [`Sql::bind_checkpoint`], then
/// `updated_at`, the owner, the message's id and the owner again.
const UPDATE: Script = script!(
    "UPDATE messages SET content = ?, reasoning = ?, tool_calls = ?, status = ?, finish_reason = ?,
    usage_input_tokens = ?, usage_output_tokens = ?, error = ?, parts = ?, thinking = ?,
    generation = ?, updated_at = ?
    WHERE id = ? AND owner = ? RETURNING chat_id;
UPDATE chats SET updated_at = MAX(updated_at, ?)
    WHERE owner = ? AND id = (SELECT chat_id FROM messages WHERE id = ? AND owner = ?);
"
);

/// A turn: the chat if it is new; the user message unless the chat already has its client
/// message id; the reply only if the user message was stored now, each with the chat's next
/// sequence number; then the stored user message (the new one or the original) comes back, with
/// its sequence number.
const TURN: Script = script!(concat!(
    "INSERT INTO chats (owner, id, title, created_at, updated_at) VALUES (?, ?, NULL, ?, ?)
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
"
));

/// The most scripts one transaction takes before it is committed, waiters or not.
const GROUP_LIMIT: usize = 64;

type SqliteQuery<'q> = sql::Query<'q, sqlx::Sqlite>;

/// The writer lock, held.
type Slot = tokio::sync::OwnedMutexGuard<WriteSlot>;

/// A connection running a script; closed rather than reused unless the script is known to have
/// left it in a known state (a script that failed and could not be rolled back, or whose future
/// was dropped part-way, may have left a transaction open).
struct ScriptConnection(Option<sqlx::pool::PoolConnection<sqlx::Sqlite>>);

impl Drop for ScriptConnection {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}

/// Counts a script in [`SqliteStore::queued`] while it waits for the writer lock.
struct Queued<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Queued<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Queued(count)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Held by a script that wrote in a group and waits for its commit: if that wait is dropped,
/// the group is still committed, by a task of its own, should no other script do it.
struct CommitOnDrop {
    store: Option<SqliteStore>,
    group: u64,
}

impl Drop for CommitOnDrop {
    fn drop(&mut self) {
        if let Some(store) = self.store.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let group = self.group;
            runtime.spawn(async move {
                let mut slot = store.writer.clone().lock_owned().await;
                SqliteStore::resolve_lost(&mut slot);
                if slot.open.as_ref().is_some_and(|g| g.id == group) {
                    store.commit(&mut slot).await;
                }
            });
        }
    }
}

impl SqliteStore {
    /// Runs a write script (`script`'s statements, with the arguments `bind` binds) and returns
    /// the rows its statements return.
    ///
    /// A script applies entirely or not at all: when a statement fails, the script stops there
    /// and is rolled back; when its future is dropped part-way, the connection is closed, which
    /// rolls it back.
    ///
    /// Scripts queue for the writer in order, and are bound once their turn comes (so that the
    /// queue holds no arguments). The statements go to the connection's thread as one query:
    /// one round trip instead of one per statement, which is most of what a small write costs
    /// (measured with `cargo bench --bench store`). When nobody waits, a script runs in a
    /// transaction of its own. When others wait, it opens a transaction (or joins the one
    /// open), runs in a savepoint of it, and hands the writer on; the script that finds nobody
    /// waiting behind it (or the 64th) commits for the whole group, and each answers once that
    /// commit is done. Many sends' writes share one commit, a large part of what a small write
    /// costs (the `store` bench's `turn_burst_100`). If the group is rolled back instead (its
    /// connection was lost), each of its scripts runs again, once.
    async fn write<'q, F>(
        &self,
        script: &Script,
        bind: F,
    ) -> Result<std::result::Result<Vec<SqliteRow>, sqlx::Error>>
    where
        F: Fn(&'static str) -> Result<SqliteQuery<'q>>,
    {
        let mut again = true;
        loop {
            let waiting = Queued::enter(&self.queued);
            let mut slot = self.writer.clone().lock_owned().await;
            drop(waiting);
            Self::resolve_lost(&mut slot);
            if !slot.keep || (slot.open.is_none() && !self.others_queued()) {
                let query = bind(script.alone)?;
                return Ok(self.script(&mut slot, query).await);
            }
            let opens = slot.open.is_none();
            let query = match bind(if opens { script.first } else { script.joining }) {
                Ok(query) => query,
                Err(e) => {
                    self.end_group_unless_awaited(slot).await;
                    return Err(e);
                }
            };
            let conn = match slot.conn.take() {
                Some(conn) => conn,
                None => match self.pool.acquire().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        self.end_group_unless_awaited(slot).await;
                        return Ok(Err(e));
                    }
                },
            };
            let mut running = ScriptConnection(Some(conn));
            let Some(conn) = running.0.as_mut() else {
                return Ok(Err(sqlx::Error::PoolClosed));
            };
            let rows = match query.fetch_all(&mut **conn).await {
                Ok(rows) => rows,
                Err(e) => {
                    // Only this script's writes are undone; the group's stay.
                    let undo = if opens {
                        "ROLLBACK"
                    } else {
                        "ROLLBACK TO script; RELEASE script"
                    };
                    if sqlx::query(undo).execute(&mut **conn).await.is_ok() {
                        slot.conn = running.0.take();
                    } else {
                        drop(running);
                        Self::resolve_lost(&mut slot);
                    }
                    // The scripts of the group wait for it to end: not on this one.
                    self.end_group_unless_awaited(slot).await;
                    return Ok(Err(e));
                }
            };
            slot.conn = running.0.take();
            let group = match slot.open.as_mut() {
                Some(group) => group,
                None => {
                    let id = slot.next_group;
                    slot.next_group += 1;
                    slot.open.insert(Group {
                        id,
                        scripts: 0,
                        outcome: tokio::sync::watch::Sender::new(None),
                    })
                }
            };
            group.scripts += 1;
            let (id, full) = (group.id, group.scripts >= GROUP_LIMIT);
            let mut outcome = group.outcome.subscribe();
            let committed = if full || !self.others_queued() {
                self.end_group(slot).await.0
            } else {
                // The next script joins; this one waits for the group's end, or for the writer
                // to come back to it with the group still open (the scripts after it went away),
                // and then commits it.
                let mut pending = CommitOnDrop {
                    store: Some(self.clone()),
                    group: id,
                };
                drop(slot);
                let seen = outcome.clone();
                let ended = async {
                    let ended = outcome.wait_for(Option::is_some).await;
                    ended.ok().and_then(|o| *o)
                };
                let committed = tokio::select! {
                    committed = ended => committed,
                    mut slot = self.writer.clone().lock_owned() => {
                        Self::resolve_lost(&mut slot);
                        if slot.open.as_ref().is_some_and(|g| g.id == id) {
                            self.end_group(slot).await.0
                        } else {
                            *seen.borrow()
                        }
                    }
                };
                pending.store = None;
                committed
            };
            match committed {
                Some(true) => return Ok(Ok(rows)),
                // Rolled back: nothing of it was kept.
                Some(false) if again => again = false,
                Some(false) => {
                    return Ok(Err(sqlx::Error::Protocol(
                        "the transaction this write was grouped in was rolled back twice".into(),
                    )));
                }
                None => {
                    return Ok(Err(sqlx::Error::Protocol(
                        "the transaction this write was grouped in ended unseen".into(),
                    )));
                }
            }
        }
    }

    /// Whether other scripts wait for the writer lock.
    fn others_queued(&self) -> bool {
        self.queued.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Commits the open group, if any, and gives the writer lock back; its scripts learn how
    /// it ended (`Some(true)` committed, `Some(false)` rolled back; `None` when no group was
    /// open).
    ///
    /// The commit runs in a task of its own, so that when this caller goes away part-way the
    /// group still ends, and its scripts still learn how.
    async fn end_group(&self, mut slot: Slot) -> (Option<bool>, Option<Slot>) {
        if slot.open.is_none() {
            return (None, Some(slot));
        }
        let store = self.clone();
        let ending = tokio::spawn(async move {
            let committed = store.commit(&mut slot).await;
            (committed, slot)
        });
        match ending.await {
            Ok((committed, slot)) => (Some(committed), Some(slot)),
            Err(_) => (None, None),
        }
    }

    /// Ends the open group unless another script is queued to join it (whose to end it then
    /// is).
    async fn end_group_unless_awaited(&self, slot: Slot) {
        if !self.others_queued() {
            self.end_group(slot).await;
        }
    }

    /// Commits the open group; `true` when it was committed. Its scripts learn how it ended.
    async fn commit(&self, slot: &mut WriteSlot) -> bool {
        let Some(group) = slot.open.take() else {
            return false;
        };
        let committed = match slot.conn.as_mut() {
            Some(conn) => sqlx::query("COMMIT").execute(&mut **conn).await.is_ok(),
            None => false,
        };
        if !committed && let Some(mut conn) = slot.conn.take() {
            // Closing it rolls back whatever is left open; it is not reused.
            conn.close_on_drop();
        }
        #[cfg(test)]
        if committed && group.scripts > 1 {
            slot.shared_commits += 1;
        }
        group.outcome.send_replace(Some(committed));
        committed
    }

    /// A group whose connection is gone (a script's future was dropped while it ran, which
    /// closed the connection) was rolled back: its scripts learn it.
    fn resolve_lost(slot: &mut WriteSlot) {
        if slot.conn.is_none()
            && let Some(group) = slot.open.take()
        {
            group.outcome.send_replace(Some(false));
        }
    }

    /// The writer lock, with no group open: for writes that do not go through scripts.
    async fn settled(&self) -> Slot {
        let mut slot = self.writer.clone().lock_owned().await;
        Self::resolve_lost(&mut slot);
        if slot.open.is_none() {
            return slot;
        }
        match self.end_group(slot).await {
            (_, Some(slot)) => slot,
            // The commit's task panicked: the lock went with it.
            (_, None) => Box::pin(self.settled()).await,
        }
    }

    /// Runs a script in a transaction of its own (`BEGIN IMMEDIATE; …; COMMIT;`), on the
    /// writer's connection in `slot`.
    async fn script(
        &self,
        slot: &mut WriteSlot,
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
    use super::{SqliteStore, is_memory_url};
    use crate::{ChatKey, Error, Message, MessageStore, UserId, store::HistoryPage};

    async fn file_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = SqliteStore::open_path(dir.path().join("group.db"))
            .await
            .expect("open");
        (dir, store)
    }

    fn turn(chat: &ChatKey, n: usize) -> (Message, Message) {
        (
            Message::user(chat, format!("question {n}")),
            Message::assistant_streaming(chat),
        )
    }

    async fn shared_commits(store: &SqliteStore) -> u64 {
        store.writer.lock().await.shared_commits
    }

    /// Every message of `chat`, oldest first.
    async fn all(store: &SqliteStore, chat: &ChatKey) -> Vec<Message> {
        store
            .history(chat, HistoryPage::default())
            .await
            .expect("history")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_keep_every_turn() {
        let (_dir, store) = file_store().await;
        let owner = UserId::anonymous();
        // 50 chats of 4 turns each, all sent at once, plus a checkpoint of each reply.
        let chats: Vec<ChatKey> = (0..50)
            .map(|i| ChatKey::new(owner.clone(), format!("chat-{i}").parse().expect("id")))
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, chat) in chats.iter().enumerate() {
            for n in 0..4 {
                let (store, chat) = (store.clone(), chat.clone());
                tasks.spawn(async move {
                    let (user, mut reply) = turn(&chat, i * 10 + n);
                    let appended = store.append_turn(&user, &reply).await.expect("turn");
                    assert!(appended.created);
                    reply.content = format!("answer {}", i * 10 + n);
                    store.update(&reply).await.expect("checkpoint");
                });
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task");
        }
        assert!(
            shared_commits(&store).await > 0,
            "no two writes shared a commit"
        );
        for chat in &chats {
            let messages = all(&store, chat).await;
            assert_eq!(messages.len(), 8, "{chat:?}");
            // Each turn's two messages are next to each other, the reply after its question.
            for pair in messages.chunks(2) {
                let n = pair[0]
                    .content
                    .strip_prefix("question ")
                    .expect("a question");
                assert_eq!(pair[1].content, format!("answer {n}"));
            }
        }
        // Nothing is left open: a write of another kind goes through, and reads see it all.
        let extra = Message::user(&chats[0], "after");
        store.append(&extra).await.expect("append after");
        assert_eq!(all(&store, &chats[0]).await.len(), 9);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_leaves_the_rest_of_its_group() {
        let (_dir, store) = file_store().await;
        let owner = UserId::anonymous();
        let chat = ChatKey::new(owner.clone(), "taken".parse().expect("id"));
        let (taken_user, taken_reply) = turn(&chat, 0);
        store
            .append_turn(&taken_user, &taken_reply)
            .await
            .expect("first turn");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..100 {
            let store = store.clone();
            let owner = owner.clone();
            let taken = taken_user.clone();
            tasks.spawn(async move {
                let chat = ChatKey::new(owner, format!("c{i}").parse().expect("id"));
                let (mut user, reply) = turn(&chat, i);
                if i % 3 == 0 {
                    // A message id that is already stored: this turn fails, alone.
                    user.id = taken.id;
                }
                (i, chat, store.append_turn(&user, &reply).await)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (i, chat, result) = done.expect("task");
            let kept = all(&store, &chat).await;
            if i % 3 == 0 {
                assert!(
                    matches!(result, Err(Error::AlreadyExists { .. })),
                    "turn {i}: {result:?}"
                );
                assert!(kept.is_empty(), "turn {i} kept {kept:?}");
            } else {
                result.expect("turn");
                assert_eq!(kept.len(), 2, "turn {i}");
            }
        }
        assert!(shared_commits(&store).await > 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_dropped_part_way_lose_nothing_of_the_others() {
        let (_dir, store) = file_store().await;
        let owner = UserId::anonymous();
        for round in 0..10u64 {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..60u64 {
                let store = store.clone();
                let chat =
                    ChatKey::new(owner.clone(), format!("r{round}-{i}").parse().expect("id"));
                tasks.spawn(async move {
                    let (user, reply) = turn(&chat, i as usize);
                    let write = store.append_turn(&user, &reply);
                    // Every third write is dropped after a while of its own: waiting for the
                    // writer, running, or waiting for its group's commit.
                    let finished = if i % 3 == 0 {
                        let after = std::time::Duration::from_micros((i * 97 + round * 211) % 3000);
                        tokio::time::timeout(after, write).await.ok()
                    } else {
                        Some(write.await)
                    };
                    (i, chat, finished)
                });
            }
            while let Some(done) = tasks.join_next().await {
                let (i, chat, finished) = done.expect("task");
                let kept = all(&store, &chat).await.len();
                match finished {
                    Some(appended) => {
                        appended.expect("turn");
                        assert_eq!(kept, 2, "round {round}, write {i}");
                    }
                    // Dropped: the whole turn or none of it.
                    None => assert!(kept == 0 || kept == 2, "round {round}, write {i}: {kept}"),
                }
            }
        }
        // No transaction was left open.
        let chat = ChatKey::new(owner, "after".parse().expect("id"));
        let (user, reply) = turn(&chat, 0);
        store.append_turn(&user, &reply).await.expect("turn after");
        assert_eq!(all(&store, &chat).await.len(), 2);
        store.close().await;
    }

    #[test]
    fn memory_urls() {
        assert!(is_memory_url("sqlite::memory:"));
        assert!(is_memory_url("sqlite://:memory:"));
        assert!(is_memory_url("sqlite://x.db?mode=memory"));
        assert!(!is_memory_url("sqlite://chatstream.db"));
        assert!(!is_memory_url("sqlite:memory.db"));
    }
}
