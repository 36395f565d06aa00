//! The stream hub conformance suite: every function takes a `&dyn StreamHub`, so each backend
//! runs the same contract (the in-process hub below; the Redis hub calls the same functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chatstream::{
    ChatId, Delta, Error, FinishReason, MessageId, MessageStatus, Usage,
    hub::{EventPayload, HubEvent, HubEventStream, LocalHub, ReplyPublisher, StreamHub},
};
use futures::StreamExt;

fn start_payload(chat: &ChatId, message_id: MessageId) -> EventPayload {
    EventPayload::Start {
        chat_id: chat.clone(),
        message_id,
        user_message_id: MessageId::generate(),
    }
}

fn done_payload(message_id: MessageId) -> EventPayload {
    EventPayload::Done {
        message_id,
        status: MessageStatus::Complete,
        finish_reason: Some(FinishReason::Stop),
        usage: Some(Usage {
            input_tokens: 1,
            output_tokens: 2,
        }),
    }
}

fn pieces(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("w{i} ")).collect()
}

async fn collect(stream: HubEventStream) -> Vec<HubEvent> {
    stream.map(|e| e.expect("event")).collect().await
}

fn text(events: &[HubEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match &*e.payload {
            EventPayload::Delta(Delta::Text { text }) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn assert_increasing_after(events: &[HubEvent], after: u64) {
    let mut last = after;
    for e in events {
        assert!(e.seq > last, "seq {} after {last}", e.seq);
        last = e.seq;
    }
}

/// Publishes a whole reply of text pieces; returns the `done` event's number.
async fn publish_reply(publisher: &mut dyn ReplyPublisher, chat: &ChatId, words: &[String]) -> u64 {
    let id = MessageId::generate();
    assert_eq!(publisher.publish(start_payload(chat, id)).await.unwrap(), 1);
    for (i, w) in words.iter().enumerate() {
        let seq = publisher
            .publish(EventPayload::Delta(Delta::text(w.clone())))
            .await
            .unwrap();
        assert_eq!(seq, i as u64 + 2);
    }
    publisher.publish(done_payload(id)).await.unwrap()
}

/// One live reply per chat; a finished one frees the chat; other chats are independent.
pub async fn one_live_reply_per_chat(hub: &dyn StreamHub) {
    let chat = ChatId::generate();
    let other = ChatId::generate();
    assert!(!hub.is_live(&chat).await.unwrap());
    let mut live = hub.start(&chat).await.unwrap();
    assert!(hub.is_live(&chat).await.unwrap());
    assert!(matches!(hub.start(&chat).await, Err(Error::Busy { .. })));
    let mut elsewhere = hub.start(&other).await.unwrap();
    publish_reply(&mut *live.publisher, &chat, &pieces(3)).await;
    assert!(!hub.is_live(&chat).await.unwrap());
    assert!(
        live.publisher
            .publish(EventPayload::Delta(Delta::text("late")))
            .await
            .is_err(),
        "publishing after done must fail"
    );
    let mut again = hub.start(&chat).await.unwrap();
    publish_reply(&mut *again.publisher, &chat, &pieces(1)).await;
    publish_reply(&mut *elsewhere.publisher, &other, &pieces(1)).await;
}

/// Numbers start at 1 and increase; replay after every N gives exactly the rest; a subscriber
/// that saw the end, or a chat with nothing, gets `None`.
pub async fn replay_after_every_n(hub: &dyn StreamHub) {
    let chat = ChatId::generate();
    assert!(hub.subscribe(&chat, None).await.unwrap().is_none());
    let words = pieces(100);
    let mut live = hub.start(&chat).await.unwrap();
    let done = publish_reply(&mut *live.publisher, &chat, &words).await;
    assert_eq!(done, words.len() as u64 + 2);
    let all = collect(hub.subscribe(&chat, None).await.unwrap().unwrap()).await;
    assert_eq!(
        all.first().map(|e| (e.seq, e.event_name())),
        Some((1, "start"))
    );
    assert_eq!(
        all.last().map(|e| (e.seq, e.event_name())),
        Some((done, "done"))
    );
    assert_increasing_after(&all, 0);
    assert_eq!(text(&all), words.concat());
    for after in 0..done {
        let events = collect(hub.subscribe(&chat, Some(after)).await.unwrap().unwrap()).await;
        assert_increasing_after(&events, after);
        let skip = (after as usize).saturating_sub(1).min(words.len());
        assert_eq!(text(&events), words[skip..].concat(), "after {after}");
        assert_eq!(events.iter().filter(|e| e.is_terminal()).count(), 1);
        assert_eq!(events.last().map(|e| e.seq), Some(done));
        let starts = events.iter().filter(|e| e.event_name() == "start").count();
        assert_eq!(starts, usize::from(after == 0), "after {after}");
    }
    assert!(hub.subscribe(&chat, Some(done)).await.unwrap().is_none());
    assert!(
        hub.subscribe(&chat, Some(done + 5))
            .await
            .unwrap()
            .is_none()
    );
}

/// Subscribers that join before, during and after the live part all get exactly the reply, and
/// their streams end after `done`.
pub async fn follow_live_with_many_subscribers(hub: &dyn StreamHub) {
    let chat = ChatId::generate();
    let words = pieces(300);
    let mut live = hub.start(&chat).await.unwrap();
    let mut early_tasks = Vec::new();
    for _ in 0..5 {
        let stream = hub.subscribe(&chat, None).await.unwrap().unwrap();
        early_tasks.push(tokio::spawn(collect(stream)));
    }
    let id = MessageId::generate();
    live.publisher
        .publish(start_payload(&chat, id))
        .await
        .unwrap();
    let mut mid = None;
    for (i, w) in words.iter().enumerate() {
        live.publisher
            .publish(EventPayload::Delta(Delta::text(w.clone())))
            .await
            .unwrap();
        if i == 150 {
            mid = Some(tokio::spawn(collect(
                hub.subscribe(&chat, Some(40)).await.unwrap().unwrap(),
            )));
        }
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    live.publisher.publish(done_payload(id)).await.unwrap();
    for t in early_tasks {
        let events = t.await.unwrap();
        assert_increasing_after(&events, 0);
        assert_eq!(text(&events), words.concat());
    }
    let events = mid.unwrap().await.unwrap();
    assert_increasing_after(&events, 40);
    assert_eq!(text(&events), words[39..].concat());
}

/// A subscriber that is never polled does not hold the publisher or other subscribers back, and
/// later catches up exactly.
pub async fn slow_subscriber_lags_without_blocking(hub: &dyn StreamHub) {
    let chat = ChatId::generate();
    let words = pieces(5_000);
    let mut live = hub.start(&chat).await.unwrap();
    let slow = hub.subscribe(&chat, None).await.unwrap().unwrap();
    let fast = tokio::spawn(collect(hub.subscribe(&chat, None).await.unwrap().unwrap()));
    // Publishing everything must not wait for the slow subscriber.
    tokio::time::timeout(
        Duration::from_secs(10),
        publish_reply(&mut *live.publisher, &chat, &words),
    )
    .await
    .expect("publishing was blocked by a subscriber");
    assert_eq!(text(&fast.await.unwrap()), words.concat());
    let late = collect(slow).await;
    assert_increasing_after(&late, 0);
    assert_eq!(text(&late), words.concat());
}

/// Terminate fires the reply's token once; with nothing live it answers `false`.
pub async fn terminate_fires_the_token(hub: &dyn StreamHub) {
    let chat = ChatId::generate();
    assert!(!hub.terminate(&chat).await.unwrap());
    let mut live = hub.start(&chat).await.unwrap();
    assert!(!live.cancel.is_cancelled());
    assert!(hub.terminate(&chat).await.unwrap());
    tokio::time::timeout(Duration::from_millis(100), live.cancel.cancelled())
        .await
        .expect("cancel token fired");
    assert!(!hub.terminate(&chat).await.unwrap(), "second terminate");
    // Still live until the generator publishes its done.
    assert!(hub.is_live(&chat).await.unwrap());
    let id = MessageId::generate();
    live.publisher
        .publish(start_payload(&chat, id))
        .await
        .unwrap();
    live.publisher
        .publish(EventPayload::done(id, MessageStatus::Cancelled))
        .await
        .unwrap();
    assert!(!hub.terminate(&chat).await.unwrap(), "after done");
}

/// Aborting a reply that published nothing frees the chat as though it never started; dropping a
/// publisher mid-reply ends the reply as interrupted, so no subscriber hangs.
pub async fn abandoned_replies_do_not_hang(hub: &dyn StreamHub) {
    let chat = ChatId::generate();
    let live = hub.start(&chat).await.unwrap();
    live.publisher.abort().await.unwrap();
    assert!(!hub.is_live(&chat).await.unwrap());
    assert!(hub.subscribe(&chat, None).await.unwrap().is_none());

    let mut live = hub.start(&chat).await.unwrap();
    let id = MessageId::generate();
    live.publisher
        .publish(start_payload(&chat, id))
        .await
        .unwrap();
    live.publisher
        .publish(EventPayload::Delta(Delta::text("half")))
        .await
        .unwrap();
    let follower = hub.subscribe(&chat, None).await.unwrap().unwrap();
    drop(live);
    let events = tokio::time::timeout(Duration::from_secs(5), collect(follower))
        .await
        .expect("subscriber ended");
    assert_eq!(text(&events), "half");
    let names: Vec<_> = events.iter().map(|e| e.event_name()).collect();
    assert_eq!(names, ["start", "delta", "error", "done"]);
    match &*events[3].payload {
        EventPayload::Done { status, .. } => assert_eq!(*status, MessageStatus::Interrupted),
        other => panic!("{other:?}"),
    }
    assert!(!hub.is_live(&chat).await.unwrap());
}

/// Every kind of delta survives replay (coalesced or not) with its content intact.
pub async fn mixed_deltas_replay_intact(hub: &dyn StreamHub) {
    let chat = ChatId::generate();
    let mut live = hub.start(&chat).await.unwrap();
    let id = MessageId::generate();
    live.publisher
        .publish(start_payload(&chat, id))
        .await
        .unwrap();
    let mut published = Vec::new();
    for i in 0..40u32 {
        let d = match i % 5 {
            0 => Delta::reasoning(format!("r{i}")),
            1 | 2 => Delta::text(format!("t{i}")),
            3 => Delta::ToolCall(chatstream::ToolCallDelta {
                index: i / 10,
                id: (i % 10 == 3).then(|| format!("call{i}")),
                name: (i % 10 == 3).then(|| "f".to_string()),
                arguments: format!("a{i}"),
            }),
            _ => Delta::usage(u64::from(i), 1),
        };
        published.push(d.clone());
        live.publisher
            .publish(EventPayload::Delta(d))
            .await
            .unwrap();
    }
    live.publisher.publish(done_payload(id)).await.unwrap();
    let fold = |deltas: &[Delta]| {
        let mut acc = chatstream::Accumulator::new();
        acc.extend(deltas);
        acc
    };
    let expected = fold(&published);
    for after in [0, 1, 7, 20, 39] {
        let events = collect(hub.subscribe(&chat, Some(after)).await.unwrap().unwrap()).await;
        let deltas: Vec<Delta> = events
            .iter()
            .filter_map(|e| match &*e.payload {
                EventPayload::Delta(d) => Some(d.clone()),
                _ => None,
            })
            .collect();
        let got = fold(&deltas);
        if after == 0 {
            assert_eq!(got.text(), expected.text());
            assert_eq!(got.reasoning(), expected.reasoning());
            assert_eq!(got.tool_calls(), expected.tool_calls());
            assert_eq!(got.usage(), expected.usage());
        } else {
            let rest = fold(&published[after as usize - 1..]);
            assert_eq!(got.text(), rest.text(), "after {after}");
            assert_eq!(got.reasoning(), rest.reasoning(), "after {after}");
            assert_eq!(got.tool_calls(), rest.tool_calls(), "after {after}");
        }
    }
}

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
                    super::$name(&hub).await;
                    let default_hub = chatstream::hub::LocalHub::new();
                    super::$name(&default_hub).await;
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
    abandoned_replies_do_not_hang,
    mixed_deltas_replay_intact,
);

#[tokio::test(start_paused = true)]
async fn local_finished_replies_expire_after_the_grace_period() {
    let hub = LocalHub::with_grace(Duration::from_secs(10));
    let chat = ChatId::generate();
    let mut live = hub.start(&chat).await.unwrap();
    publish_reply(&mut *live.publisher, &chat, &pieces(3)).await;
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
    let chat = ChatId::generate();
    assert_eq!(hub.watchers(&chat).await.unwrap(), Some(0));
    let _live = hub.start(&chat).await.unwrap();
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

    use chatstream::{
        ChatId, ChatService, ChatSession, Delta, Error, FinishReason, Message, MessageId,
        MessageStatus, MessageStore, Script, ScriptedProvider, UserInput,
        hub::{EventPayload, RedisHub, StreamHub, recover_orphans},
        store::MemoryStore,
    };
    use futures::StreamExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::{collect, done_payload, pieces, publish_reply, start_payload, text};
    use crate::common::with_redis;

    macro_rules! redis_hub_suite {
        ($($name:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    with_redis(concat!("redis_hub::", stringify!($name)), |t| async move {
                        let hub = t.hub("a").await;
                        super::$name(&hub).await;
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
        abandoned_replies_do_not_hang,
        mixed_deltas_replay_intact,
    );

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn started_on_one_instance_followed_and_replayed_on_another() {
        with_redis("redis_hub::followed_on_another", |t| async move {
            let (a, b) = (t.hub("a").await, t.hub("b").await);
            let chat = ChatId::generate();
            let mut live = a.start(&chat).await.unwrap();
            assert!(b.is_live(&chat).await.unwrap());
            let follower = tokio::spawn(collect(b.subscribe(&chat, None).await.unwrap().unwrap()));
            let words = pieces(50);
            let done = publish_reply(&mut *live.publisher, &chat, &words).await;
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
            let chat = ChatId::generate();
            let mut live = a.start(&chat).await.unwrap();
            assert!(matches!(b.start(&chat).await, Err(Error::Busy { .. })));
            assert!(matches!(a.start(&chat).await, Err(Error::Busy { .. })));
            // Many instances racing for one chat: exactly one wins.
            let other = ChatId::generate();
            let hubs = [a.clone(), b.clone(), t.hub("c").await, t.hub("d").await];
            let mut tries = Vec::new();
            for hub in &hubs {
                for _ in 0..5 {
                    let (hub, other) = (hub.clone(), other.clone());
                    tries.push(tokio::spawn(async move { hub.start(&other).await }));
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
            publish_reply(&mut *live.publisher, &chat, &pieces(1)).await;
            b.start(&chat)
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
            let chat = ChatId::generate();
            let mut live = a.start(&chat).await.unwrap();
            let id = MessageId::generate();
            live.publisher
                .publish(start_payload(&chat, id))
                .await
                .unwrap();
            assert!(!b.terminate(&ChatId::generate()).await.unwrap());
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
            let chat = store.create_chat(None, None).await.unwrap();
            let b = t.builder("b").lease(lease).connect().await.unwrap();

            // Instance A runs on a runtime of its own, which is then shut down: its renewals
            // and listener die with it, as with a killed process.
            let a_runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let (a_chat, a_store, a_redis) = (chat.id.clone(), store.clone(), t.clone());
            let message_id = a_runtime
                .spawn(async move {
                    let a = a_redis.builder("a").lease(lease).connect().await.unwrap();
                    // The session's order: take the chat in the hub, then store the message.
                    let mut live = a.start(&a_chat).await.unwrap();
                    let mut message = Message::assistant_streaming(a_chat.clone());
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
            let follower = b.subscribe(&chat.id, None).await.unwrap().unwrap();
            a_runtime.shutdown_background();
            let died = Instant::now();

            // Within the lease, B leaves the reply alone.
            assert!(b.is_live(&chat.id).await.unwrap());
            assert_eq!(recover_orphans(&*store, &b).await.unwrap(), 0);
            let m = store.get_message(&message_id).await.unwrap().unwrap();
            assert_eq!(m.status, MessageStatus::Streaming);
            assert!(matches!(b.start(&chat.id).await, Err(Error::Busy { .. })));

            // Once it expired, the follower ends and recovery marks the reply.
            while b.is_live(&chat.id).await.unwrap() {
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
            let m = store.get_message(&message_id).await.unwrap().unwrap();
            assert_eq!(m.status, MessageStatus::Interrupted);
            assert_eq!(m.content, "checkpointed text");
            assert_eq!(recover_orphans(&*store, &b).await.unwrap(), 0);
            // The chat is free again.
            b.start(&chat.id).await.unwrap().publisher.abort().await.unwrap();
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
            let chat = store.create_chat(None, None).await.unwrap();
            let mut live = a.start(&chat.id).await.unwrap();
            let message = Message::assistant_streaming(chat.id.clone());
            store.append(&message).await.unwrap();
            // Before its start event and after it, over three leases: never touched.
            assert_eq!(recover_orphans(&store, &b).await.unwrap(), 0);
            live.publisher
                .publish(start_payload(&chat.id, message.id))
                .await
                .unwrap();
            for _ in 0..9 {
                tokio::time::sleep(lease / 3).await;
                assert_eq!(recover_orphans(&store, &b).await.unwrap(), 0);
            }
            // An orphan in the same chat (an older reply whose owner died) is recovered even
            // while the chat is busy with this one.
            let mut orphan = Message::assistant_streaming(chat.id.clone());
            orphan.created_at = message.created_at - chrono::Duration::seconds(5);
            store.append(&orphan).await.unwrap();
            assert_eq!(recover_orphans(&store, &b).await.unwrap(), 1);
            assert_eq!(
                store
                    .get_message(&message.id)
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
            let chat = ChatId::generate();
            let mut live = hub.start(&chat).await.unwrap();
            publish_reply(&mut *live.publisher, &chat, &pieces(3)).await;
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
            let chat = ChatId::generate();
            let mut live = hub.start(&chat).await.unwrap();
            let id = MessageId::generate();
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
            let session = service.session(ChatId::generate());
            let reply = session.send(UserInput::new("Hi")).await.unwrap();
            let chat = reply.chat_id.clone();
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
                .session(ChatId::generate())
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
            let m = store.get_message(&id).await.unwrap().expect("stored");
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
