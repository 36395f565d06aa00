//! The stream hubs: the conformance suite (`chatstream::hub::conformance`) run against each
//! backend (the in-process hub below; the Redis hub when `CHATSTREAM_TEST_REDIS_URL` is set), and
//! what only one backend has.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A test, example or bench crate is its own root: `pub` marks what its modules share.
#![allow(unreachable_pub)]

mod common;

use std::time::Duration;

use chatstream::{
    ChatId, ChatKey, MessageId,
    hub::{
        LocalHub, StreamHub,
        conformance::{pieces, publish_reply},
    },
};

macro_rules! local_hub_suite {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    // A small live window, so coalescing is exercised everywhere.
                    let hub = chatstream::hub::LocalHub::with_settings(
                        std::time::Duration::from_secs(60),
                        4,
                    );
                    chatstream::hub::conformance::$name(&hub).await;
                    let default_hub = chatstream::hub::LocalHub::new();
                    chatstream::hub::conformance::$name(&default_hub).await;
                }
            )*
        }
    };
}

local_hub_suite!(
    one_live_reply_per_chat,
    replay_after_every_n,
    follow_live_with_many_subscribers,
    slow_subscriber_lags_without_blocking,
    terminate_fires_the_token,
    terminate_reply_spares_newer_replies,
    live_reply_names_its_message,
    abandoned_replies_do_not_hang,
    mixed_deltas_replay_intact,
    live_replies_answer_each_chat,
    owners_are_independent,
    live_count_is_per_owner,
    ping_answers,
);

#[tokio::test(start_paused = true)]
async fn local_finished_replies_expire_after_the_grace_period() {
    let hub = LocalHub::with_grace(Duration::from_secs(10));
    let chat = ChatKey::from(ChatId::generate());
    let id = MessageId::generate();
    let mut live = hub.start(&chat, id).await.unwrap();
    publish_reply(&mut *live.publisher, &chat, id, &pieces(3)).await;
    assert_eq!(hub.held_replies(), 1);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(hub.subscribe(&chat, None).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hub.held_replies(), 0, "dropped from memory");
    assert!(hub.subscribe(&chat, None).await.unwrap().is_none());
}

#[tokio::test]
async fn local_watchers_are_counted() {
    let hub = LocalHub::new();
    let chat = ChatKey::from(ChatId::generate());
    assert_eq!(hub.watchers(&chat).await.unwrap(), Some(0));
    let _live = hub.start(&chat, MessageId::generate()).await.unwrap();
    let a = hub.subscribe(&chat, None).await.unwrap().unwrap();
    let b = hub.subscribe(&chat, None).await.unwrap().unwrap();
    assert_eq!(hub.watchers(&chat).await.unwrap(), Some(2));
    drop(a);
    drop(b);
    assert_eq!(hub.watchers(&chat).await.unwrap(), Some(0));
}

/// The same suite, and what only a shared hub has, on Redis (`CHATSTREAM_TEST_REDIS_URL`, e.g.
/// `redis://127.0.0.1:6379`). Every test uses a key prefix of its own and deletes its keys at
/// the end, even when it fails; without the variable the tests say loudly that they skipped.
#[cfg(feature = "redis")]
mod redis_hub {
    use std::{
        io::Write,
        sync::Arc,
        time::{Duration, Instant},
    };

    use chatstream::provider::{Script, ScriptedProvider};
    use chatstream::{
        ChatId, ChatKey, ChatService, ChatSession, Delta, Error, FinishReason, Message, MessageId,
        MessageStatus, MessageStore, UserId, UserInput,
        hub::{EventPayload, LiveReplyInfo, RedisHub, StreamHub, recover_orphans},
        store::MemoryStore,
    };
    use futures::StreamExt;
    use tokio::net::{TcpListener, TcpStream};

    use chatstream::hub::conformance::{
        collect, done_payload, pieces, publish_reply, start_payload, text,
    };

    use crate::common::with_redis;

    macro_rules! redis_hub_suite {
        ($($name:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    with_redis(concat!("redis_hub::", stringify!($name)), |t| async move {
                        let hub = t.hub("a").await;
                        chatstream::hub::conformance::$name(&hub).await;
                    })
                    .await;
                }
            )*
        };
    }

    redis_hub_suite!(
        one_live_reply_per_chat,
        replay_after_every_n,
        follow_live_with_many_subscribers,
        slow_subscriber_lags_without_blocking,
        terminate_fires_the_token,
        terminate_reply_spares_newer_replies,
        live_reply_names_its_message,
        abandoned_replies_do_not_hang,
        mixed_deltas_replay_intact,
        live_replies_answer_each_chat,
        owners_are_independent,
        live_count_is_per_owner,
        ping_answers,
    );

    /// A user's live replies are counted on every instance, and those of an instance that died
    /// stop counting once their leases ran out, while a live instance's go on counting past its
    /// lease (its renewals keep them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_users_live_replies_are_counted_across_instances_until_their_lease_runs_out() {
        with_redis("redis_hub::live_count_across", |t| async move {
            let lease = Duration::from_millis(500);
            let alice = UserId::new(format!("alice-{}", ChatId::generate())).unwrap();
            let b = t.builder("b").lease(lease).connect().await.unwrap();
            let on_b = ChatKey::new(alice.clone(), ChatId::generate());
            let id = MessageId::generate();
            let mut b_live = b.start(&on_b, id).await.unwrap();
            b_live
                .publisher
                .publish(start_payload(&on_b, id))
                .await
                .unwrap();

            // Instance A starts two of Alice's replies, then dies without a word.
            let a_runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let (a_redis, a_alice) = (t.clone(), alice.clone());
            a_runtime
                .spawn(async move {
                    let a = a_redis.builder("a").lease(lease).connect().await.unwrap();
                    for _ in 0..2 {
                        let chat = ChatKey::new(a_alice.clone(), ChatId::generate());
                        let id = MessageId::generate();
                        let mut live = a.start(&chat, id).await.unwrap();
                        live.publisher
                            .publish(start_payload(&chat, id))
                            .await
                            .unwrap();
                        std::mem::forget(live);
                    }
                    std::mem::forget(a);
                })
                .await
                .unwrap();
            assert_eq!(b.live_count(&alice).await.unwrap(), Some(3));
            a_runtime.shutdown_background();
            let died = Instant::now();
            while b.live_count(&alice).await.unwrap() != Some(1) {
                assert!(
                    died.elapsed() < Duration::from_secs(10),
                    "A's replies never stopped counting"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Not before their leases could have run out; B's own reply still counts, renewed.
            assert!(died.elapsed() >= lease / 2, "{:?}", died.elapsed());
            tokio::time::sleep(lease * 2).await;
            assert_eq!(b.live_count(&alice).await.unwrap(), Some(1));
            b_live.publisher.publish(done_payload(id)).await.unwrap();
            assert_eq!(b.live_count(&alice).await.unwrap(), Some(0));
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn started_on_one_instance_followed_and_replayed_on_another() {
        with_redis("redis_hub::followed_on_another", |t| async move {
            let (a, b) = (t.hub("a").await, t.hub("b").await);
            let chat = ChatKey::from(ChatId::generate());
            let id = MessageId::generate();
            let mut live = a.start(&chat, id).await.unwrap();
            assert!(b.is_live(&chat).await.unwrap());
            assert_eq!(
                b.live_reply(&chat).await.unwrap(),
                Some(LiveReplyInfo::new(id, Some("a".into()))),
                "B knows which message A is generating, and that A owns it"
            );
            let follower = tokio::spawn(collect(b.subscribe(&chat, None).await.unwrap().unwrap()));
            let words = pieces(50);
            let done = publish_reply(&mut *live.publisher, &chat, id, &words).await;
            let followed = follower.await.unwrap();
            assert_eq!(text(&followed), words.concat());
            assert_eq!(followed.last().map(|e| e.seq), Some(done));
            // Resuming on B after reading part through A: exactly the rest.
            let on_a = collect(a.subscribe(&chat, None).await.unwrap().unwrap()).await;
            let seen = on_a[..12].last().unwrap().seq;
            let rest = collect(b.subscribe(&chat, Some(seen)).await.unwrap().unwrap()).await;
            assert_eq!(rest.first().map(|e| e.seq), Some(seen + 1));
            assert_eq!(text(&rest), words[seen as usize - 1..].concat());
            assert!(!b.is_live(&chat).await.unwrap());
            assert!(b.subscribe(&chat, Some(done)).await.unwrap().is_none());
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busy_across_instances() {
        with_redis("redis_hub::busy_across_instances", |t| async move {
            let (a, b) = (t.hub("a").await, t.hub("b").await);
            let chat = ChatKey::from(ChatId::generate());
            let id = MessageId::generate();
            let mut live = a.start(&chat, id).await.unwrap();
            assert!(matches!(
                b.start(&chat, MessageId::generate()).await,
                Err(Error::Busy { .. })
            ));
            assert!(matches!(
                a.start(&chat, MessageId::generate()).await,
                Err(Error::Busy { .. })
            ));
            // Many instances racing for one chat: exactly one wins.
            let other = ChatKey::from(ChatId::generate());
            let hubs = [a.clone(), b.clone(), t.hub("c").await, t.hub("d").await];
            let mut tries = Vec::new();
            for hub in &hubs {
                for _ in 0..5 {
                    let (hub, other) = (hub.clone(), other.clone());
                    tries.push(tokio::spawn(async move {
                        hub.start(&other, MessageId::generate()).await
                    }));
                }
            }
            let mut won = Vec::new();
            for t in tries {
                match t.await.unwrap() {
                    Ok(live) => won.push(live),
                    Err(Error::Busy { .. }) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
            assert_eq!(won.len(), 1, "exactly one start wins");
            publish_reply(&mut *live.publisher, &chat, id, &pieces(1)).await;
            b.start(&chat, MessageId::generate())
                .await
                .unwrap()
                .publisher
                .abort()
                .await
                .unwrap();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn terminate_through_another_instance_reaches_the_owner() {
        with_redis("redis_hub::terminate_through_another", |t| async move {
            // The default lease (renewed every 3.3 s): a cancel seen within a second came by
            // pub/sub, not by the renewal's fallback check.
            let (a, b) = (t.hub("a").await, t.hub("b").await);
            let chat = ChatKey::from(ChatId::generate());
            let id = MessageId::generate();
            let mut live = a.start(&chat, id).await.unwrap();
            live.publisher
                .publish(start_payload(&chat, id))
                .await
                .unwrap();
            assert!(
                !b.terminate(&ChatKey::from(ChatId::generate()))
                    .await
                    .unwrap()
            );
            let asked = Instant::now();
            assert!(b.terminate(&chat).await.unwrap());
            tokio::time::timeout(Duration::from_secs(1), live.cancel.cancelled())
                .await
                .expect("the owner's cancel token fired");
            let took = asked.elapsed();
            let _ = writeln!(
                std::io::stderr(),
                "terminate through another instance: token fired after {took:?}"
            );
            assert!(!b.terminate(&chat).await.unwrap(), "second terminate");
            assert!(
                !a.terminate(&chat).await.unwrap(),
                "second terminate on the owner"
            );
            assert!(
                b.is_live(&chat).await.unwrap(),
                "live until the owner publishes done"
            );
            live.publisher
                .publish(EventPayload::done(id, MessageStatus::Cancelled))
                .await
                .unwrap();
            assert!(!b.is_live(&chat).await.unwrap());
            assert!(!b.terminate(&chat).await.unwrap(), "after done");
            assert_eq!(a.owned_replies(), 0);
        })
        .await;
    }

    /// An instance that dies mid-reply: its lease expires, and only then is the reply recovered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_instance_is_recovered_once_its_lease_expired() {
        with_redis("redis_hub::dead_instance", |t| async move {
            let lease = Duration::from_millis(500);
            let store = Arc::new(MemoryStore::new());
            let chat = store.create_chat(&UserId::anonymous(), None, None).await.unwrap();
            let b = t.builder("b").lease(lease).connect().await.unwrap();

            // Instance A runs on a runtime of its own, which is then shut down: its renewals
            // and listener die with it, as with a killed process.
            let a_runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let (a_chat, a_store, a_redis) = (chat.key(), store.clone(), t.clone());
            let message_id = a_runtime
                .spawn(async move {
                    let a = a_redis.builder("a").lease(lease).connect().await.unwrap();
                    // The session's order: take the chat in the hub, then store the message.
                    let mut message = Message::assistant_streaming(a_chat.clone());
                    let mut live = a.start(&a_chat, message.id).await.unwrap();
                    a_store.append(&message).await.unwrap();
                    live.publisher
                        .publish(start_payload(&a_chat, message.id))
                        .await
                        .unwrap();
                    live.publisher
                        .publish(EventPayload::Delta(Delta::text("checkpointed text")))
                        .await
                        .unwrap();
                    message.content = "checkpointed text".into();
                    a_store.update(&message).await.unwrap();
                    // Never finished, never dropped: the process just stops.
                    std::mem::forget(live);
                    std::mem::forget(a);
                    message.id
                })
                .await
                .unwrap();
            let follower = b.subscribe(&chat.key(), None).await.unwrap().unwrap();
            a_runtime.shutdown_background();
            let died = Instant::now();

            // Within the lease, B leaves the reply alone.
            assert!(b.is_live(&chat.key()).await.unwrap());
            assert_eq!(recover_orphans(&*store, &b).await.unwrap(), 0);
            let m = store.get_message(&UserId::anonymous(), &message_id).await.unwrap().unwrap();
            assert_eq!(m.status, MessageStatus::Streaming);
            assert!(matches!(
                b.start(&chat.key(), MessageId::generate()).await,
                Err(Error::Busy { .. })
            ));

            // Once it expired, the follower ends and recovery marks the reply.
            while b.is_live(&chat.key()).await.unwrap() {
                assert!(died.elapsed() < Duration::from_secs(10), "the lease never expired");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = writeln!(std::io::stderr(), "lease of a dead instance expired after {:?}", died.elapsed());
            let events = tokio::time::timeout(Duration::from_secs(10), collect(follower))
                .await
                .expect("the follower of a dead reply ends");
            let names: Vec<_> = events.iter().map(|e| e.event_name()).collect();
            assert_eq!(names, ["start", "delta", "error", "done"]);
            assert!(matches!(
                &*events[3].payload,
                EventPayload::Done { status: MessageStatus::Interrupted, message_id, .. } if *message_id == message_id_of(&events)
            ));
            assert_eq!(recover_orphans(&*store, &b).await.unwrap(), 1);
            let m = store.get_message(&UserId::anonymous(), &message_id).await.unwrap().unwrap();
            assert_eq!(m.status, MessageStatus::Interrupted);
            assert_eq!(m.content, "checkpointed text");
            assert_eq!(recover_orphans(&*store, &b).await.unwrap(), 0);
            // The chat is free again.
            b.start(&chat.key(), MessageId::generate())
                .await
                .unwrap()
                .publisher
                .abort()
                .await
                .unwrap();
        })
        .await;
    }

    /// Instance A, on a runtime of its own: `run` starts what A does; shutting the runtime down
    /// then stops A's renewals and listener at once, as killing its process would.
    async fn on_instance_a<T: Send + 'static>(
        run: impl std::future::Future<Output = T> + Send + 'static,
    ) -> (tokio::runtime::Runtime, T) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let out = runtime.spawn(run).await.unwrap();
        (runtime, out)
    }

    /// One renewal loop keeps every live reply of an instance alive, however many, past many
    /// leases; when the instance dies they all expire together, about one lease later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_live_replies_stay_alive_then_expire_a_lease_after_their_instance_died() {
        with_redis("redis_hub::many_live_replies", |t| async move {
            let lease = Duration::from_secs(1);
            let b = t.builder("b").lease(lease).connect().await.unwrap();
            let chats: Vec<ChatKey> = (0..200)
                .map(|_| ChatKey::from(ChatId::generate()))
                .collect();
            let (a_chats, a_redis) = (chats.clone(), t.clone());
            let (a_runtime, ids) = on_instance_a(async move {
                let a = a_redis.builder("a").lease(lease).connect().await.unwrap();
                let mut ids = Vec::new();
                for chat in &a_chats {
                    let id = MessageId::generate();
                    // Never finished, never dropped: only the renewal loop keeps them.
                    std::mem::forget(a.start(chat, id).await.unwrap());
                    ids.push(id);
                }
                assert_eq!(a.owned_replies(), 200);
                std::mem::forget(a);
                ids
            })
            .await;
            let owned_by_a: Vec<_> = ids
                .iter()
                .map(|id| Some(LiveReplyInfo::new(*id, Some("a".into()))))
                .collect();
            let began = Instant::now();
            while began.elapsed() < lease * 4 {
                assert_eq!(
                    b.live_replies(&chats).await.unwrap(),
                    owned_by_a,
                    "every reply still live after {:?}",
                    began.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }

            a_runtime.shutdown_background();
            let died = Instant::now();
            let (mut first_gone, mut all_gone) = (None, None);
            while all_gone.is_none() {
                let live = b.live_replies(&chats).await.unwrap();
                let now = died.elapsed();
                let left = live.iter().filter(|l| l.is_some()).count();
                if left < chats.len() {
                    first_gone.get_or_insert(now);
                }
                if left == 0 {
                    all_gone = Some(now);
                }
                assert!(now < lease * 3, "{left} replies never expired");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let (first_gone, all_gone) = (first_gone.unwrap(), all_gone.unwrap());
            let _ = writeln!(
                std::io::stderr(),
                "200 replies of a dead instance expired between {first_gone:?} and {all_gone:?}"
            );
            // Renewed every tenth of the lease: expired 0.9 to 1 lease after the death (with
            // room for a round trip and the polling).
            assert!(
                first_gone >= lease * 8 / 10,
                "expired early: {first_gone:?}"
            );
            assert!(all_gone <= lease * 12 / 10, "expired late: {all_gone:?}");
        })
        .await;
    }

    /// A terminate whose pub/sub message was lost still reaches the owner: the renewal reads the
    /// `cancel` flag every tenth of the lease.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missed_terminate_reaches_the_owner_with_the_next_renewal() {
        with_redis("redis_hub::missed_terminate", |t| async move {
            let lease = Duration::from_secs(2);
            let a = t.builder("a").lease(lease).connect().await.unwrap();
            let chat = ChatKey::from(ChatId::generate());
            let id = MessageId::generate();
            let mut live = a.start(&chat, id).await.unwrap();
            // What a terminate writes, without its message to the owner.
            redis::cmd("HSET")
                .arg(format!("{}:{{{}}}:reply", t.prefix, chat))
                .arg("cancel")
                .arg("1")
                .query_async::<()>(&mut t.conn().await)
                .await
                .unwrap();
            tokio::time::timeout(lease / 2, live.cancel.cancelled())
                .await
                .expect("the renewal fired the cancel token");
            live.publisher
                .publish(EventPayload::done(id, MessageStatus::Cancelled))
                .await
                .unwrap();
            assert_eq!(a.owned_replies(), 0);
        })
        .await;
    }

    /// A service on a Redis hub recovers a dead instance's reply by itself, soon after the
    /// lease expired and never before; its followers end at about the same time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_service_recovers_a_dead_instances_reply_as_its_lease_expires() {
        with_redis("redis_hub::service_recovers", |t| async move {
            let lease = Duration::from_millis(1000);
            let store = Arc::new(MemoryStore::new());
            let chat = store.create_chat(&UserId::anonymous(), None, None).await.unwrap();
            let b = Arc::new(t.builder("b").lease(lease).connect().await.unwrap());
            assert_eq!(
                b.recovery_interval(),
                Some(lease / 4),
                "a quarter lease, under a second"
            );
            let service = ChatService::builder()
                .provider(Arc::new(ScriptedProvider::new()))
                .store(store.clone())
                .hub(b.clone())
                .build()
                .unwrap();
            let (a_chat, a_store, a_redis) = (chat.key(), store.clone(), t.clone());
            let (a_runtime, message_id) = on_instance_a(async move {
                let a = a_redis.builder("a").lease(lease).connect().await.unwrap();
                let message = Message::assistant_streaming(a_chat.clone());
                let mut live = a.start(&a_chat, message.id).await.unwrap();
                a_store.append(&message).await.unwrap();
                live.publisher
                    .publish(start_payload(&a_chat, message.id))
                    .await
                    .unwrap();
                std::mem::forget(live);
                std::mem::forget(a);
                message.id
            })
            .await;
            let follower = tokio::spawn(async move {
                let events = collect(b.subscribe(&chat.key(), None).await.unwrap().unwrap()).await;
                (events, Instant::now())
            });
            a_runtime.shutdown_background();
            let died = Instant::now();
            let status = |store: Arc<MemoryStore>| async move {
                store.get_message(&UserId::anonymous(), &message_id).await.unwrap().unwrap().status
            };
            let marked = loop {
                if status(store.clone()).await != MessageStatus::Streaming {
                    break died.elapsed();
                }
                assert!(died.elapsed() < lease * 3, "never recovered");
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let (events, ended) = tokio::time::timeout(lease * 2, follower)
                .await
                .expect("the follower ends")
                .unwrap();
            let ended = ended - died;
            let _ = writeln!(
                std::io::stderr(),
                "a dead instance's reply: marked after {marked:?}, its follower ended after {ended:?}"
            );
            assert_eq!(status(store.clone()).await, MessageStatus::Interrupted);
            assert!(marked >= lease * 8 / 10, "marked early: {marked:?}");
            assert!(marked <= lease * 3 / 2, "marked late: {marked:?}");
            assert!(ended <= lease * 3 / 2, "the follower ended late: {ended:?}");
            let names: Vec<_> = events.iter().map(|e| e.event_name()).collect();
            assert_eq!(names, ["start", "error", "done"]);
            assert_eq!(service.recovery_failures(), 0);
        })
        .await;
    }

    fn message_id_of(events: &[chatstream::HubEvent]) -> MessageId {
        match &*events[0].payload {
            EventPayload::Start { message_id, .. } => *message_id,
            other => panic!("{other:?}"),
        }
    }

    /// Recovery spares a reply whose instance is alive, even past several leases.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovery_spares_replies_of_live_instances() {
        with_redis("redis_hub::recovery_spares_live", |t| async move {
            let lease = Duration::from_millis(300);
            let (a, b) = (
                t.builder("a").lease(lease).connect().await.unwrap(),
                t.builder("b").lease(lease).connect().await.unwrap(),
            );
            let store = MemoryStore::new();
            let chat = store
                .create_chat(&UserId::anonymous(), None, None)
                .await
                .unwrap();
            let message = Message::assistant_streaming(chat.key());
            let mut live = a.start(&chat.key(), message.id).await.unwrap();
            store.append(&message).await.unwrap();
            // Before its start event and after it, over three leases: never touched.
            assert_eq!(recover_orphans(&store, &b).await.unwrap(), 0);
            live.publisher
                .publish(start_payload(&chat.key(), message.id))
                .await
                .unwrap();
            for _ in 0..9 {
                tokio::time::sleep(lease / 3).await;
                assert_eq!(recover_orphans(&store, &b).await.unwrap(), 0);
            }
            // An orphan in the same chat (an older reply whose owner died) is recovered even
            // while the chat is busy with this one.
            let mut orphan = Message::assistant_streaming(chat.key());
            orphan.created_at = message.created_at - chrono::Duration::seconds(5);
            store.append(&orphan).await.unwrap();
            assert_eq!(recover_orphans(&store, &b).await.unwrap(), 1);
            assert_eq!(
                store
                    .get_message(&UserId::anonymous(), &message.id)
                    .await
                    .unwrap()
                    .unwrap()
                    .status,
                MessageStatus::Streaming
            );
            live.publisher
                .publish(done_payload(message.id))
                .await
                .unwrap();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finished_replies_expire_after_the_grace_period() {
        with_redis("redis_hub::grace", |t| async move {
            let grace = Duration::from_millis(1500);
            let hub = t.builder("a").grace(grace).connect().await.unwrap();
            let chat = ChatKey::from(ChatId::generate());
            let id = MessageId::generate();
            let mut live = hub.start(&chat, id).await.unwrap();
            publish_reply(&mut *live.publisher, &chat, id, &pieces(3)).await;
            let mut conn = t.conn().await;
            for key in t.keys().await {
                let ttl: i64 = redis::cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(
                    ttl > 0 && ttl <= grace.as_millis() as i64,
                    "{key} expires within the grace period: {ttl}"
                );
            }
            assert!(hub.subscribe(&chat, None).await.unwrap().is_some());
            let finished = Instant::now();
            while hub.subscribe(&chat, None).await.unwrap().is_some() {
                assert!(
                    finished.elapsed() < Duration::from_secs(10),
                    "never expired"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(t.keys().await.is_empty(), "every key of the reply expired");
        })
        .await;
    }

    #[tokio::test]
    async fn unreachable_redis_is_a_clear_error() {
        // Port 1 on the loopback interface: nothing listens, the connection is refused at once.
        let err = RedisHub::connect("redis://:secret@127.0.0.1:1")
            .await
            .unwrap_err();
        let Error::Hub {
            backend: "redis",
            ref message,
            ..
        } = err
        else {
            panic!("expected a Redis hub error, got {err:?}");
        };
        assert!(message.contains("cannot connect"), "{message}");
        assert!(message.contains("127.0.0.1:1"), "{message}");
        assert!(
            !err.to_string().contains("secret"),
            "the password must not leak: {err}"
        );
        assert!(matches!(
            RedisHub::connect("http://nope").await,
            Err(Error::Config(_))
        ));
        assert!(matches!(
            RedisHub::builder("redis://127.0.0.1:1")
                .prefix("bad prefix")
                .connect()
                .await,
            Err(Error::Config(_))
        ));
    }

    /// A TCP proxy to Redis that can be cut, as when Redis goes away.
    struct Proxy {
        addr: std::net::SocketAddr,
        task: tokio::task::JoinHandle<()>,
    }

    impl Proxy {
        async fn to(url: &str) -> Proxy {
            let target = redis::Client::open(url)
                .unwrap()
                .get_connection_info()
                .addr
                .to_string();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let task = tokio::spawn(async move {
                let mut links = tokio::task::JoinSet::new();
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    let target = target.clone();
                    links.spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            });
            Proxy { addr, task }
        }

        fn url(&self) -> String {
            format!("redis://{}", self.addr)
        }

        /// Closes the listener and every connection through it.
        async fn cut(self) {
            self.task.abort();
            let _ = self.task.await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_dropping_mid_reply_fails_publishes_and_ends_followers() {
        with_redis("redis_hub::redis_drops", |t| async move {
            let proxy = Proxy::to(&t.url).await;
            let hub = RedisHub::builder(proxy.url())
                .prefix(t.prefix.clone())
                .timeout(Duration::from_millis(500))
                .connect()
                .await
                .unwrap();
            let chat = ChatKey::from(ChatId::generate());
            let id = MessageId::generate();
            let mut live = hub.start(&chat, id).await.unwrap();
            live.publisher
                .publish(start_payload(&chat, id))
                .await
                .unwrap();
            let mut follower = hub.subscribe(&chat, None).await.unwrap().unwrap();
            assert_eq!(follower.next().await.unwrap().unwrap().seq, 1);
            proxy.cut().await;
            let failed = tokio::time::timeout(
                Duration::from_secs(10),
                live.publisher
                    .publish(EventPayload::Delta(Delta::text("x"))),
            )
            .await
            .expect("a publish with Redis gone fails rather than hangs");
            assert!(matches!(failed, Err(Error::Hub { .. })), "{failed:?}");
            // Later publishes fail at once: the generator is not slowed down.
            let quick = Instant::now();
            for _ in 0..100 {
                assert!(matches!(
                    live.publisher
                        .publish(EventPayload::Delta(Delta::text("y")))
                        .await,
                    Err(Error::Hub { .. })
                ));
            }
            assert!(quick.elapsed() < Duration::from_secs(1));
            let rest: Vec<_> =
                tokio::time::timeout(Duration::from_secs(10), follower.collect::<Vec<_>>())
                    .await
                    .expect("the follower ends rather than hangs");
            assert!(
                matches!(rest.last(), Some(Err(Error::Hub { .. }))),
                "the follower is told: {rest:?}"
            );
            assert!(live.publisher.publish(done_payload(id)).await.is_err());
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ping_fails_while_redis_is_gone() {
        with_redis("redis_hub::ping_fails", |t| async move {
            let proxy = Proxy::to(&t.url).await;
            let hub = RedisHub::builder(proxy.url())
                .prefix(t.prefix.clone())
                .timeout(Duration::from_millis(500))
                .connect()
                .await
                .unwrap();
            hub.ping().await.unwrap();
            proxy.cut().await;
            let failed = tokio::time::timeout(Duration::from_secs(5), hub.ping())
                .await
                .expect("a ping with Redis gone fails rather than hangs");
            assert!(matches!(failed, Err(Error::Hub { .. })), "{failed:?}");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn session_replies_through_redis_are_persisted() {
        with_redis("redis_hub::session", |t| async move {
            let provider = ScriptedProvider::new().then(Script::reply(["Hel", "lo", " world"]));
            let store = Arc::new(MemoryStore::new());
            let a = t.hub("a").await;
            let b = t.hub("b").await;
            let service = ChatService::builder()
                .provider(Arc::new(provider))
                .store(store.clone())
                .hub(Arc::new(a))
                .build()
                .unwrap();
            let session = service.session(ChatKey::from(ChatId::generate()));
            let reply = session.send(UserInput::new("Hi")).await.unwrap();
            let chat = reply.user_message.key();
            let on_b = b.subscribe(&chat, None).await.unwrap().unwrap();
            let events = collect(reply.events).await;
            assert_eq!(text(&events), "Hello world");
            assert_eq!(text(&collect(on_b).await), "Hello world");
            let m = wait_final(&*store, reply.assistant_message_id).await;
            assert_eq!(
                (m.status, m.content.as_str()),
                (MessageStatus::Complete, "Hello world")
            );
            assert_eq!(m.finish_reason, Some(FinishReason::Stop));
            assert!(!b.is_live(&chat).await.unwrap());
            assert_eq!(recover_orphans(&*store, &b).await.unwrap(), 0);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn session_keeps_persisting_when_redis_drops_mid_reply() {
        with_redis("redis_hub::session_redis_drops", |t| async move {
            let proxy = Proxy::to(&t.url).await;
            let hub = RedisHub::builder(proxy.url())
                .prefix(t.prefix.clone())
                .timeout(Duration::from_millis(500))
                .connect()
                .await
                .unwrap();
            let provider = ScriptedProvider::new().then(
                Script::new()
                    .text("before ")
                    .sleep(Duration::from_millis(300))
                    .text("after")
                    .finish(FinishReason::Stop),
            );
            let store = Arc::new(MemoryStore::new());
            let service = ChatService::builder()
                .provider(Arc::new(provider))
                .store(store.clone())
                .hub(Arc::new(hub))
                .build()
                .unwrap();
            let reply = service
                .session(ChatKey::from(ChatId::generate()))
                .send(UserInput::new("Hi"))
                .await
                .unwrap();
            let mut events = reply.events;
            // Read up to the first delta, then Redis goes away.
            while let Some(e) = events.next().await {
                if e.unwrap().event_name() == "delta" {
                    break;
                }
            }
            proxy.cut().await;
            let m = wait_final(&*store, reply.assistant_message_id).await;
            assert_eq!(
                (m.status, m.content.as_str()),
                (MessageStatus::Complete, "before after")
            );
            let rest: Vec<_> =
                tokio::time::timeout(Duration::from_secs(10), events.collect::<Vec<_>>())
                    .await
                    .expect("the reply's own follower ends rather than hangs");
            assert!(
                matches!(rest.last(), Some(Err(Error::Hub { .. }))),
                "{rest:?}"
            );
        })
        .await;
    }

    async fn wait_final(store: &dyn MessageStore, id: MessageId) -> Message {
        let began = Instant::now();
        loop {
            let m = store
                .get_message(&UserId::anonymous(), &id)
                .await
                .unwrap()
                .expect("stored");
            if m.status.is_final() {
                return m;
            }
            assert!(
                began.elapsed() < Duration::from_secs(20),
                "message {id} never finished"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
