//! [`PostgresStore`]: chats and messages in PostgreSQL, via sqlx, shared by any number of
//! processes.

use std::{str::FromStr, time::Duration};

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::{
    Connection,
    postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgQueryResult},
};

use super::Appended;
use super::sql::{self, Insert, Sql, SqlBackend, Statements, chat_columns, message_columns};
use crate::{Error, Message, Result};

/// How long opening the store waits for the server before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per store: a checkpoint or append holds one for a few round trips only.
const POOL_SIZE: u32 = 10;

/// A store in a PostgreSQL database: for production, and for several server processes that
/// share chats.
///
/// Per-chat sequence numbers come from the database (the chat row is incremented in the
/// transaction that inserts the message), so processes sharing the database never collide, and
/// idempotent appends rely on a unique `(owner, chat_id, client_message_id)` constraint. Schema
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
            Err(e) => return Err(sql::store_error(Self::BACKEND, "create schema", e)),
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
        let mut conn = pool.acquire().await.map_err(sql::err::<Self>("connect"))?;
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
            backend: PostgresStore::BACKEND,
            message: format!("cannot connect to database {database:?} at {server}: {e}"),
            source: Some(Box::new(e)),
        }),
        Err(_) => Err(Error::Store {
            backend: PostgresStore::BACKEND,
            message: format!(
                "cannot connect to database {database:?} at {server}: no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
            source: None,
        }),
    }
}

async fn migrate(conn: &mut PgConnection) -> Result<()> {
    sqlx::migrate!("migrations/postgres")
        .run(conn)
        .await
        .map_err(|e| sql::migration_error(PostgresStore::BACKEND, e))
}

impl SqlBackend for PostgresStore {
    type Db = sqlx::Postgres;
    type Time = DateTime<Utc>;
    type WriteLock<'a> = ();

    const BACKEND: &'static str = "postgres";
    const SQL: Statements = Statements {
        insert_chat: "INSERT INTO chats (owner, id, title, created_at, updated_at) \
                      VALUES ($1, $2, $3, $4, $5) ON CONFLICT (owner, id) DO NOTHING",
        get_chat: concat!(
            "SELECT ",
            chat_columns!(),
            " FROM chats WHERE owner = $1 AND id = $2"
        ),
        list_chats: concat!(
            "SELECT ",
            chat_columns!(),
            " FROM chats WHERE owner = $1 ORDER BY updated_at DESC, id DESC LIMIT $2 OFFSET $3"
        ),
        rename_chat: concat!(
            "UPDATE chats SET title = $1 WHERE owner = $2 AND id = $3 RETURNING ",
            chat_columns!()
        ),
        delete_chat: "DELETE FROM chats WHERE owner = $1 AND id = $2",
        // The row lock taken here serialises appends to one chat across every process.
        next_seq: "UPDATE chats SET next_seq = next_seq + 1, \
                   updated_at = GREATEST(updated_at, $1) WHERE owner = $2 AND id = $3 \
                   RETURNING next_seq - 1",
        by_client_key: concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE owner = $1 AND chat_id = $2 AND client_message_id = $3"
        ),
        insert_message: concat!(
            "INSERT INTO messages (",
            message_columns!(),
            ", seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
             $16, $17, $18, $19, $20, $21)"
        ),
        get_message: concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE id = $1 AND owner = $2"
        ),
        seq_of: "SELECT seq FROM messages WHERE id = $1 AND owner = $2 AND chat_id = $3",
        history: concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE owner = $1 AND chat_id = $2 AND seq < $3 \
             ORDER BY seq DESC LIMIT $4"
        ),
        recover_streaming: "UPDATE messages SET status = 'interrupted', updated_at = $1 \
                            WHERE status = 'streaming' AND role = 'assistant' \
                            AND ($2::timestamptz IS NULL OR updated_at < $2)",
        interrupt_reply: "UPDATE messages SET status = 'interrupted', updated_at = $1 \
                          WHERE id = $2 AND status = 'streaming' AND role = 'assistant'",
    };

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn encode_time(time: DateTime<Utc>) -> Result<DateTime<Utc>> {
        Ok(time)
    }

    fn decode_time(stored: DateTime<Utc>) -> DateTime<Utc> {
        stored
    }

    /// PostgreSQL keeps timestamps to the microsecond.
    fn kept(time: DateTime<Utc>) -> DateTime<Utc> {
        time.trunc_subsecs(6)
    }

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    /// Writers need no turns: the database's row locks order them.
    async fn lock_writes(&self) {}

    async fn begin_write(
        &self,
        doing: &'static str,
    ) -> Result<((), sqlx::Transaction<'static, sqlx::Postgres>)> {
        let tx = self.pool.begin().await.map_err(sql::err::<Self>(doing))?;
        Ok(((), tx))
    }

    async fn turn(&self, user: &Message, reply: &Message) -> Result<Appended> {
        let sql = Sql(self);
        let err = sql::err::<Self>;
        let key = user.client_message_id.as_deref();
        let now = Self::kept(Utc::now());
        let ((), mut tx) = self.begin_write("append turn").await?;
        sqlx::query(
            "INSERT INTO chats (owner, id, title, created_at, updated_at) \
             VALUES ($1, $2, NULL, $3, $3) ON CONFLICT (owner, id) DO NOTHING",
        )
        .bind(user.owner.as_str())
        .bind(user.chat_id.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(err("append turn"))?;
        let seq = match sql.insert_in(&mut tx, user, key).await? {
            Insert::Created { seq } => seq,
            Insert::Existing(original) => {
                tx.rollback().await.map_err(err("append turn"))?;
                return Ok(Appended {
                    message: *original,
                    created: false,
                    first_in_chat: false,
                });
            }
            Insert::Duplicate => {
                drop(tx);
                return Ok(Appended {
                    message: sql.after_duplicate(user, key).await?,
                    created: false,
                    first_in_chat: false,
                });
            }
        };
        match sql.insert_in(&mut tx, reply, None).await? {
            Insert::Created { .. } => {}
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
        Ok(Appended {
            message: sql::as_stored::<Self>(user),
            created: true,
            first_in_chat: seq == 0,
        })
    }

    async fn checkpoint(&self, message: &Message) -> Result<()> {
        let done = Sql(self)
            .bind_checkpoint(sqlx::query(UPDATE), message)?
            .execute(&self.pool)
            .await
            .map_err(sql::err::<Self>("update message"))?;
        if done.rows_affected() == 0 {
            return Err(sql::not_found("message", message.id));
        }
        Ok(())
    }
}

/// A checkpoint as one statement, one round trip: the message row (only under its owner) and its
/// chat's activity time.
const UPDATE: &str = "WITH m AS ( \
        UPDATE messages SET content = $1, reasoning = $2, tool_calls = $3, status = $4, \
        finish_reason = $5, usage_input_tokens = $6, usage_output_tokens = $7, error = $8, \
        parts = $9, thinking = $10, generation = $11, \
        updated_at = $12 WHERE id = $13 AND owner = $14 RETURNING owner, chat_id \
    ) \
    UPDATE chats SET updated_at = GREATEST(chats.updated_at, $12) \
    FROM m WHERE chats.owner = m.owner AND chats.id = m.chat_id";

sql::impl_message_store!(PostgresStore);

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
