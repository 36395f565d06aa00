//! What the integration tests share: a loud skip when what a test needs is missing, and a
//! PostgreSQL schema or Redis key prefix of a test's own, removed afterwards whether the test
//! passed or failed.
//!
//! PostgreSQL tests need `CHATSTREAM_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`), Redis tests `CHATSTREAM_TEST_REDIS_URL` (e.g.
//! `redis://127.0.0.1:6379`). Without them the tests say loudly that they skipped, and pass.
// Every test binary uses only part of this module.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{future::Future, io::Write, panic::AssertUnwindSafe};

use chatstream::hub::{RedisHub, RedisHubBuilder};
use futures::FutureExt;
use sqlx::Connection;

/// Says loudly that `test` skipped and why.
pub fn skip(test: &str, why: &str) {
    // Straight to the process's stderr: the test harness would swallow `eprintln!` of a passing
    // test, and a skip must not go unnoticed.
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {test}: {why} ***\n");
}

/// A service some tests need, found through an environment variable.
#[derive(Clone, Copy, Debug)]
struct Service {
    name: &'static str,
    var: &'static str,
    example: &'static str,
}

/// The PostgreSQL test database.
const POSTGRES: Service = Service {
    name: "PostgreSQL",
    var: "CHATSTREAM_TEST_POSTGRES_URL",
    example: "postgres://postgres@127.0.0.1:5432/test",
};

/// The Redis test server.
const REDIS: Service = Service {
    name: "Redis",
    var: "CHATSTREAM_TEST_REDIS_URL",
    example: "redis://127.0.0.1:6379",
};

/// The URLs of `services`, or `None` after saying loudly which variables are missing.
fn service_urls<const N: usize>(test: &str, services: [Service; N]) -> Option<[String; N]> {
    let urls = services.map(|s| std::env::var(s.var).ok().filter(|u| !u.trim().is_empty()));
    if urls.iter().all(Option::is_some) {
        return Some(urls.map(Option::unwrap_or_default));
    }
    let missing: Vec<String> = services
        .iter()
        .zip(&urls)
        .filter(|(_, url)| url.is_none())
        .map(|(s, _)| format!("{} (e.g. {})", s.var, s.example))
        .collect();
    let verb = if missing.len() == 1 { "is" } else { "are" };
    let names: Vec<&str> = services.iter().map(|s| s.name).collect();
    skip(
        test,
        &format!(
            "{} {verb} not set; nothing was tested on {}",
            missing.join(" and "),
            names.join(" and ")
        ),
    );
    None
}

/// A PostgreSQL schema of one test's own.
#[derive(Clone, Debug)]
pub struct TestPostgres {
    /// The test database's URL.
    pub url: String,
    /// The schema, unique to the test.
    pub schema: String,
}

impl TestPostgres {
    /// The database URL with the schema as search path, as a server configured by
    /// `CHATSTREAM_DATABASE_URL` gets it.
    pub fn search_path_url(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}options=-c%20search_path%3D{}",
            self.url, self.schema
        )
    }

    async fn drop_schema(&self) -> Result<(), String> {
        let dropped = async {
            let mut conn = sqlx::PgConnection::connect(&self.url).await?;
            sqlx::query(&format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                self.schema
            ))
            .execute(&mut conn)
            .await?;
            conn.close().await
        };
        dropped
            .await
            .map_err(|e| format!("could not drop test schema {}: {e}", self.schema))
    }
}

/// A Redis key prefix of one test's own.
#[derive(Clone, Debug)]
pub struct TestRedis {
    /// The Redis URL.
    pub url: String,
    /// The key prefix, unique to the test.
    pub prefix: String,
}

impl TestRedis {
    /// A hub builder on the test's prefix, as the instance `instance`.
    pub fn builder(&self, instance: &str) -> RedisHubBuilder {
        RedisHub::builder(self.url.clone())
            .prefix(self.prefix.clone())
            .instance_id(instance)
    }

    /// A hub on the test's prefix, as the instance `instance`.
    pub async fn hub(&self, instance: &str) -> RedisHub {
        self.builder(instance).connect().await.expect("connect")
    }

    /// A plain connection, to look at the keys.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.connect().await.unwrap()
    }

    /// Every key under the test's prefix.
    pub async fn keys(&self) -> Vec<String> {
        self.keys_on(&mut self.conn().await).await.unwrap()
    }

    async fn connect(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url.as_str())?
            .get_multiplexed_async_connection()
            .await
    }

    async fn keys_on(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<Vec<String>> {
        redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(conn)
            .await
    }

    async fn delete_keys(&self) -> Result<(), String> {
        let deleted = async {
            let mut conn = self.connect().await?;
            let keys = self.keys_on(&mut conn).await?;
            if !keys.is_empty() {
                redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut conn)
                    .await?;
            }
            Ok::<_, redis::RedisError>(())
        };
        deleted
            .await
            .map_err(|e| format!("could not delete the keys of {}: {e}", self.prefix))
    }
}

/// A name no other test uses: a schema or key prefix of the test's own.
fn unique_name() -> String {
    format!("chatstream_test_{}", uuid::Uuid::now_v7().simple())
}

/// Runs `body`, then `cleanup` whether `body` passed or panicked. The body's panic is the
/// test's failure; a failed clean-up fails a test that passed.
async fn then_clean_up(
    body: impl Future<Output = ()>,
    cleanup: impl Future<Output = Result<(), String>>,
) {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    let cleaned = cleanup.await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    if let Err(e) = cleaned {
        panic!("{e}");
    }
}

/// Runs `body` in a fresh PostgreSQL schema, then drops the schema, pass or fail; without
/// `CHATSTREAM_TEST_POSTGRES_URL`, skips loudly.
pub async fn with_postgres<Fut: Future<Output = ()>>(
    test: &str,
    body: impl FnOnce(TestPostgres) -> Fut,
) {
    if let Some([url]) = service_urls(test, [POSTGRES]) {
        let pg = TestPostgres {
            url,
            schema: unique_name(),
        };
        then_clean_up(body(pg.clone()), pg.drop_schema()).await;
    }
}

/// Runs `body` with a fresh Redis key prefix, then deletes the prefix's keys, pass or fail;
/// without `CHATSTREAM_TEST_REDIS_URL`, skips loudly.
pub async fn with_redis<Fut: Future<Output = ()>>(test: &str, body: impl FnOnce(TestRedis) -> Fut) {
    if let Some([url]) = service_urls(test, [REDIS]) {
        let redis = TestRedis {
            url,
            prefix: unique_name(),
        };
        then_clean_up(body(redis.clone()), redis.delete_keys()).await;
    }
}

/// Runs `body` with a fresh PostgreSQL schema and Redis key prefix, then removes both, pass or
/// fail; without both variables, skips loudly.
pub async fn with_postgres_and_redis<Fut: Future<Output = ()>>(
    test: &str,
    body: impl FnOnce(TestPostgres, TestRedis) -> Fut,
) {
    if let Some([pg_url, redis_url]) = service_urls(test, [POSTGRES, REDIS]) {
        let name = unique_name();
        let pg = TestPostgres {
            url: pg_url,
            schema: name.clone(),
        };
        let redis = TestRedis {
            url: redis_url,
            prefix: name,
        };
        let cleanup = async {
            let dropped = pg.drop_schema().await;
            dropped.and(redis.delete_keys().await)
        };
        then_clean_up(body(pg.clone(), redis.clone()), cleanup).await;
    }
}
