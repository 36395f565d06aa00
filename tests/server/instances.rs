//! Several server instances on one PostgreSQL and one Redis: a reply sent through one is
//! followed, resumed and stopped through another, and a dead instance's reply is recovered.

use std::{
    future::Future,
    io::Write,
    sync::Arc,
    time::{Duration, Instant},
};

use chatstream::provider::ScriptedProvider;
use chatstream::{
    ChatRequest, DynLlmProvider, DynStreamHub,
    hub::RedisHub,
    provider::{DemoProvider, OpenAiProvider},
    store::{DynMessageStore, PostgresStore},
};
use futures::StreamExt;
use serde_json::json;

use crate::{
    common::{Relay, TestPostgres, TestRedis, host_port, with_postgres_and_redis},
    support::*,
};

/// A fresh schema and key prefix for one test, removed afterwards even if it panics.
pub(crate) async fn isolated<Fut: Future<Output = ()>>(test: &str, body: impl FnOnce(Env) -> Fut) {
    with_postgres_and_redis(test, |pg, redis| body(Env { pg, redis })).await;
}

/// One test's schema and key prefix, shared by every instance it starts.
pub(crate) struct Env {
    pg: TestPostgres,
    redis: TestRedis,
}

impl Env {
    async fn store(&self) -> DynMessageStore {
        Arc::new(
            PostgresStore::open_in_schema(&self.pg.url, &self.pg.schema)
                .await
                .unwrap(),
        )
    }

    async fn hub(&self, lease: Duration) -> DynStreamHub {
        Arc::new(
            RedisHub::builder(self.redis.url.clone())
                .prefix(self.redis.prefix.clone())
                .lease(lease)
                .connect()
                .await
                .unwrap(),
        )
    }

    /// One instance: its own hub connection (own instance id) on the shared store.
    pub(crate) async fn instance(&self, provider: DynLlmProvider) -> Server {
        serve_with(
            provider,
            self.store().await,
            self.hub(Duration::from_secs(10)).await,
            ServerOptions::default(),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_sent_through_a_is_followed_and_resumed_through_b() {
    isolated(
        "a_reply_sent_through_a_is_followed_and_resumed_through_b",
        |env| async move {
            let provider: DynLlmProvider =
                Arc::new(ScriptedProvider::new().repeat(slow_reply(40, 5)));
            let a = env.instance(provider.clone()).await;
            let b = env.instance(provider).await;

            assert_eq!(a.send("x1", "go", None).await.status(), 202);
            let through_b: Vec<Sse> = sse_events(b.stream("x1", None).await).collect().await;
            assert_eq!(text_of(&through_b), words(40));
            assert_eq!(through_b.last().unwrap().data["status"], "complete");
            assert_eq!(
                b.settled_history("x1").await[1]["content"],
                words(40).as_str()
            );

            assert_eq!(a.send("x2", "go", None).await.status(), 202);
            let mut on_a = Box::pin(sse_events(a.stream("x2", None).await));
            let mut seen = Vec::new();
            while seen.last().is_none_or(|e: &Sse| e.id.unwrap() < 6) {
                seen.push(on_a.next().await.unwrap());
            }
            drop(on_a);
            let rest: Vec<Sse> = sse_events(b.stream("x2", seen.last().unwrap().id).await)
                .collect()
                .await;
            assert!(rest.iter().all(|e| e.id.unwrap() > 6));
            seen.extend(rest);
            assert_eq!(text_of(&seen), words(40));
            // A busy chat is busy for every instance.
            assert_eq!(a.send("x3", "go", None).await.status(), 202);
            assert_eq!(
                error_of(b.send("x3", "again", None).await).await,
                (409, "busy".into())
            );
            b.settled_history("x3").await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_through_b_stops_the_upstream_of_a() {
    isolated(
        "terminate_through_b_stops_the_upstream_of_a",
        |env| async move {
            let (base, closed) = slow_openai_upstream().await;
            let upstream: DynLlmProvider = Arc::new(
                OpenAiProvider::builder()
                    .base_url(base)
                    .model("m")
                    .build()
                    .unwrap(),
            );
            let a = env.instance(upstream.clone()).await;
            let b = env.instance(upstream).await;
            assert_eq!(a.send("stop", "go", None).await.status(), 202);
            let (mut seen, on_b) = b.read_deltas("stop", 3).await;
            assert_eq!(b.terminate("stop").await, json!({"terminated": true}));
            let sent = tokio::time::timeout(Duration::from_secs(10), closed)
                .await
                .expect("A's upstream saw its connection close")
                .unwrap();
            assert!(sent < 1000);
            seen.extend(on_b.collect::<Vec<_>>().await);
            assert_eq!(seen.last().unwrap().data["status"], "cancelled");
            let history = a.settled_history("stop").await;
            assert_eq!(history[1]["status"], "cancelled");
            assert_eq!(history[1]["content"].as_str().unwrap(), text_of(&seen));
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_replies_over_two_instances_complete_exactly_once() {
    isolated(
        "a_hundred_replies_over_two_instances_complete_exactly_once",
        |env| async move {
            let pa = ScriptedProvider::new().repeat(slow_reply(20, 1));
            let pb = ScriptedProvider::new().repeat(slow_reply(20, 1));
            let a = Arc::new(env.instance(Arc::new(pa.clone())).await);
            let b = Arc::new(env.instance(Arc::new(pb.clone())).await);
            let tasks: Vec<_> = (0..100)
                .map(|i| {
                    let (send_to, follow_on) = if i % 2 == 0 {
                        (a.clone(), b.clone())
                    } else {
                        (b.clone(), a.clone())
                    };
                    tokio::spawn(async move {
                        let chat = format!("hundred-{i}");
                        let key = format!("k-{i}");
                        assert_eq!(send_to.send(&chat, "go", Some(&key)).await.status(), 202);
                        // A retry of the same send through the other instance changes nothing.
                        assert_eq!(follow_on.send(&chat, "go", Some(&key)).await.status(), 202);
                        let events: Vec<Sse> = sse_events(follow_on.stream(&chat, None).await)
                            .collect()
                            .await;
                        assert_eq!(text_of(&events), words(20), "{chat}");
                        let history = send_to.settled_history(&chat).await;
                        assert_eq!(history.len(), 2, "{chat}: one user message, one reply");
                        assert_eq!(history[1]["status"], "complete");
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(
                pa.started() + pb.started(),
                100,
                "every reply generated exactly once"
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_is_recovered_by_b_once_its_lease_expired() {
    isolated(
        "a_killed_instance_is_recovered_by_b_once_its_lease_expired",
        |env| async move {
            let lease = Duration::from_secs(3);
            // B's store first: opening it creates the schema and runs the migrations.
            let b_service_store = env.store().await;
            let mut a = start_server(
                &env.pg.search_path_url(),
                &[
                    ("CHATSTREAM_REDIS_URL", &env.redis.url),
                    ("CHATSTREAM_REDIS_PREFIX", &env.redis.prefix),
                    ("CHATSTREAM_REDIS_LEASE_MS", "3000"),
                ],
            );
            // B's service runs recovery by itself, as often as its hub asks.
            let b = serve_with(
                Arc::new(DemoProvider::new()),
                b_service_store,
                env.hub(lease).await,
                ServerOptions::default(),
            )
            .await;
            let a_client = a.server();
            assert_eq!(
                a_client
                    .send("dies", "a long reply please", None)
                    .await
                    .status(),
                202
            );
            let mut on_b = Box::pin(sse_events(b.stream("dies", None).await));
            let mut texts = 0;
            while texts < 12 {
                if on_b.next().await.unwrap().data["type"] == "text" {
                    texts += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(400)).await; // past a checkpoint
            a.child.kill().unwrap();
            a.child.wait().unwrap();
            let killed_at = std::time::Instant::now();

            // Within the lease nothing is touched, however often B looks.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let history = b.history("dies").await;
            assert!(
                killed_at.elapsed() < lease,
                "the check ran within the lease"
            );
            assert_eq!(
                history[1]["status"], "streaming",
                "not marked before the lease expired"
            );

            // Once it expired, B marks the reply interrupted with the checkpointed text.
            let reply = loop {
                let history = b.history("dies").await;
                if history[1]["status"] != "streaming" {
                    break history[1].clone();
                }
                assert!(killed_at.elapsed() < lease * 4, "never recovered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert!(
                killed_at.elapsed() >= Duration::from_millis(1000),
                "recovered too early"
            );
            assert_eq!(reply["status"], "interrupted");
            let content = reply["content"].as_str().unwrap();
            let full = DemoProvider::reply_for(&ChatRequest::user("a long reply please"));
            assert!(
                !content.is_empty() && full.starts_with(content),
                "{content:?}"
            );
            // B's follower was told the reply ended rather than left hanging.
            let rest: Vec<Sse> = tokio::time::timeout(Duration::from_secs(15), on_b.collect())
                .await
                .expect("the follower's stream ends");
            assert_eq!(rest.last().unwrap().data["status"], "interrupted");
        },
    )
    .await;
}

/// Two instances of the server as processes on one PostgreSQL and one Redis, with a 2 s lease:
/// the owner of a reply is killed with SIGKILL mid-reply. The survivor leaves the reply alone
/// while the lease may still hold, marks it `interrupted` (with its checkpointed text) soon
/// after the lease expired, and its follower of the reply gets the end at that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owners_reply_is_interrupted_as_its_lease_expires() {
    isolated(
        "a_killed_owners_reply_is_interrupted_as_its_lease_expires",
        |env| async move {
            let lease = Duration::from_secs(2);
            // Opening a store creates the schema and runs the migrations before either starts.
            env.store().await;
            let url = env.pg.search_path_url();
            let settings = [
                ("CHATSTREAM_REDIS_URL", env.redis.url.as_str()),
                ("CHATSTREAM_REDIS_PREFIX", env.redis.prefix.as_str()),
                ("CHATSTREAM_REDIS_LEASE_MS", "2000"),
            ];
            let mut owner = start_server(&url, &settings);
            let survivor = start_server(&url, &settings);
            let (a, b) = (owner.server(), survivor.server());
            let ask = "a long reply please";
            assert_eq!(a.send("killed", ask, None).await.status(), 202);
            let mut on_b = Box::pin(sse_events(b.stream("killed", None).await));
            let mut seen = Vec::new();
            while text_of(&seen).split_whitespace().count() < 12 {
                seen.push(on_b.next().await.expect("the reply streams through B"));
            }
            // Past a checkpoint (every 250 ms) of what was seen.
            tokio::time::sleep(Duration::from_millis(400)).await;
            owner.child.kill().unwrap();
            owner.child.wait().unwrap();
            let killed_at = Instant::now();
            let follower = tokio::spawn(async move {
                let rest: Vec<Sse> = on_b.collect().await;
                (rest, killed_at.elapsed())
            });

            // Until lease - 0.5 s the lease may still hold: the reply is left alone.
            let until = killed_at + lease - Duration::from_millis(500);
            tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
            let history = b.history("killed").await;
            assert!(
                killed_at.elapsed() < lease - Duration::from_millis(300),
                "read while the lease may hold ({:?})",
                killed_at.elapsed()
            );
            assert_eq!(history[1]["status"], "streaming", "marked before the lease expired");

            // By lease + 1.5 s it is interrupted, with its checkpointed text.
            let deadline = lease + Duration::from_millis(1500);
            let reply = loop {
                let history = b.history("killed").await;
                if history[1]["status"] != "streaming" {
                    break history[1].clone();
                }
                assert!(
                    killed_at.elapsed() < deadline,
                    "still streaming {:?} after the kill",
                    killed_at.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let marked = killed_at.elapsed();
            assert_eq!(reply["status"], "interrupted");
            let content = reply["content"].as_str().unwrap();
            let full = DemoProvider::reply_for(&ChatRequest::user(ask));
            assert!(
                content.len() >= text_of(&seen).len(),
                "the checkpoint holds what was streamed before: {content:?}"
            );
            assert!(
                full.starts_with(content) && content.len() < full.len(),
                "{content:?}"
            );

            // The follower on B got the end at that time: an error, then an interrupted done.
            let (rest, ended) = tokio::time::timeout(deadline, follower)
                .await
                .expect("the follower's stream ends")
                .unwrap();
            let _ = writeln!(
                std::io::stderr(),
                "killed owner, {lease:?} lease: marked interrupted after {marked:?}, follower ended after {ended:?}"
            );
            assert!(ended < deadline, "the follower ended {ended:?} after the kill");
            let last = rest.last().expect("events after the kill");
            assert_eq!((last.event.as_str(), &last.data["status"]), ("done", &json!("interrupted")));
            assert_eq!(rest[rest.len() - 2].event, "error");
        },
    )
    .await;
}

/// `/readyz` of an instance on PostgreSQL and Redis: both answer their ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_store_and_the_hub_that_answer() {
    isolated(
        "readyz_names_the_store_and_the_hub_that_answer",
        |env| async move {
            let a = env.instance(Arc::new(DemoProvider::new())).await;
            let resp = a.get("/readyz").await;
            assert_eq!(resp.status(), 200);
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["status"], "ready");
            assert_eq!(body["store"], json!({"backend": "postgres", "up": true}));
            assert_eq!(body["hub"], json!({"backend": "redis", "up": true}));
        },
    )
    .await;
}

/// `/readyz` goes 503, naming what is down, while Redis or PostgreSQL is unreachable, and back to
/// 200 when it returns. The services are cut by relays in front of them (the test does not stop
/// services it did not start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_redis_or_postgres_is_down() {
    isolated(
        "readyz_is_503_while_redis_or_postgres_is_down",
        |env| async move {
            let pg = Relay::to(host_port(&env.pg.url)).await;
            let redis = Relay::to(host_port(&env.redis.url)).await;
            let store: DynMessageStore = Arc::new(
                PostgresStore::open_in_schema(&pg.url_for(&env.pg.url), &env.pg.schema)
                    .await
                    .unwrap(),
            );
            let hub: DynStreamHub = Arc::new(
                RedisHub::builder(redis.url_for(&env.redis.url))
                    .prefix(env.redis.prefix.clone())
                    .timeout(Duration::from_millis(300))
                    .connect()
                    .await
                    .unwrap(),
            );
            let s = serve_with(
                Arc::new(DemoProvider::new()),
                store,
                hub,
                ServerOptions::default(),
            )
            .await;
            let ready = |expect_store: bool, expect_hub: bool| {
                let s = &s;
                async move {
                    // A backend that comes back is reconnected to within a few seconds.
                    let deadline = std::time::Instant::now() + Duration::from_secs(15);
                    loop {
                        let resp = s.get("/readyz").await;
                        let status = resp.status().as_u16();
                        let body: serde_json::Value = resp.json().await.unwrap();
                        let up = (body["store"]["up"] == true, body["hub"]["up"] == true);
                        if up == (expect_store, expect_hub) {
                            let want = if expect_store && expect_hub { 200 } else { 503 };
                            assert_eq!(status, want, "{body}");
                            assert_eq!(
                                body["status"],
                                if want == 200 { "ready" } else { "unavailable" }
                            );
                            return body;
                        }
                        assert!(
                            std::time::Instant::now() < deadline,
                            "readyz never reported store {expect_store}, hub {expect_hub}: {body}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            ready(true, true).await;
            redis.off();
            let body = ready(true, false).await;
            assert_eq!(body["hub"]["backend"], "redis");
            assert!(body["hub"]["error"].is_string(), "{body}");
            redis.on();
            ready(true, true).await;
            pg.off();
            let body = ready(false, true).await;
            assert_eq!(body["store"]["backend"], "postgres");
            pg.on();
            ready(true, true).await;
            // /healthz answers whatever the backends do.
            pg.off();
            redis.off();
            assert_eq!(s.get("/healthz").await.status(), 200);
            ready(false, false).await;
        },
    )
    .await;
}
