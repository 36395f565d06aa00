//! The conformance suite every [`StreamHub`] must pass (feature `conformance`). Not a stable
//! part of the API: checks are added as the contract is refined.
//!
//! Each check is an async function that panics when the hub misbehaves. The crate runs them
//! unchanged against its [`LocalHub`](super::LocalHub) and `RedisHub`; a hub of your own (on
//! NATS, say) proves itself the same way:
//!
//! ```
//! use chatstream::hub::{LocalHub, conformance};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() {
//! let hub = LocalHub::new(); // your hub here
//! conformance::run_all(&hub).await;
//! # }
//! ```
//!
//! The checks only touch chats they create (with generated ids), so they can run on a hub that
//! serves other chats. The helpers ([`publish_reply`], [`collect`], …) are public so that checks
//! of a backend's own (several instances, a broken connection) can be written the same way.
// A test suite: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;

use super::{EventPayload, HubEvent, HubEventStream, ReplyPublisher, StreamHub};
use crate::{ChatId, ChatKey, Delta, Error, FinishReason, MessageId, MessageStatus, Usage, UserId};

/// Runs every check, one after the other.
pub async fn run_all(hub: &dyn StreamHub) {
    one_live_reply_per_chat(hub).await;
    live_reply_names_its_message(hub).await;
    replay_after_every_n(hub).await;
    follow_live_with_many_subscribers(hub).await;
    slow_subscriber_lags_without_blocking(hub).await;
    terminate_fires_the_token(hub).await;
    terminate_reply_spares_newer_replies(hub).await;
    abandoned_replies_do_not_hang(hub).await;
    mixed_deltas_replay_intact(hub).await;
    live_replies_answer_each_chat(hub).await;
    owners_are_independent(hub).await;
    live_count_is_per_owner(hub).await;
    ping_answers(hub).await;
}

/// A chat no other check uses: the anonymous owner's, with a generated id.
pub fn fresh_chat() -> ChatKey {
    ChatKey::from(ChatId::generate())
}

/// The `start` event of a reply filling `message_id`.
pub fn start_payload(chat: &ChatKey, message_id: MessageId) -> EventPayload {
    EventPayload::Start {
        chat_id: chat.id.clone(),
        message_id,
        user_message_id: MessageId::generate(),
    }
}

/// A `complete` `done` event, with a finish reason and usage.
pub fn done_payload(message_id: MessageId) -> EventPayload {
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

/// `n` words of text: `w0 `, `w1 `, …
pub fn pieces(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("w{i} ")).collect()
}

/// Every event of a subscription, until it ends.
pub async fn collect(stream: HubEventStream) -> Vec<HubEvent> {
    stream.map(|e| e.expect("event")).collect().await
}

/// The text of the text deltas among `events`.
pub fn text(events: &[HubEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match &*e.payload {
            EventPayload::Delta(Delta::Text { text }) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// Panics unless the events are numbered after `after`, increasing.
pub fn assert_increasing_after(events: &[HubEvent], after: u64) {
    let mut last = after;
    for e in events {
        assert!(e.seq > last, "seq {} after {last}", e.seq);
        last = e.seq;
    }
}

/// Publishes a whole reply filling `id` (`start`, one delta per word, `done`); returns the
/// `done` event's number.
pub async fn publish_reply(
    publisher: &mut dyn ReplyPublisher,
    chat: &ChatKey,
    id: MessageId,
    words: &[String],
) -> u64 {
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
    let chat = fresh_chat();
    let other = fresh_chat();
    assert!(!hub.is_live(&chat).await.unwrap());
    let (id, other_id) = (MessageId::generate(), MessageId::generate());
    let mut live = hub.start(&chat, id).await.unwrap();
    assert!(hub.is_live(&chat).await.unwrap());
    assert!(matches!(
        hub.start(&chat, MessageId::generate()).await,
        Err(Error::Busy { .. })
    ));
    let mut elsewhere = hub.start(&other, other_id).await.unwrap();
    publish_reply(&mut *live.publisher, &chat, id, &pieces(3)).await;
    assert!(!hub.is_live(&chat).await.unwrap());
    assert!(
        live.publisher
            .publish(EventPayload::Delta(Delta::text("late")))
            .await
            .is_err(),
        "publishing after done must fail"
    );
    let again_id = MessageId::generate();
    let mut again = hub.start(&chat, again_id).await.unwrap();
    publish_reply(&mut *again.publisher, &chat, again_id, &pieces(1)).await;
    publish_reply(&mut *elsewhere.publisher, &other, other_id, &pieces(1)).await;
}

/// Numbers start at 1 and increase; replay after every N gives exactly the rest; a subscriber
/// that saw the end, or a chat with nothing, gets `None`.
pub async fn replay_after_every_n(hub: &dyn StreamHub) {
    let chat = fresh_chat();
    assert!(hub.subscribe(&chat, None).await.unwrap().is_none());
    let words = pieces(100);
    let id = MessageId::generate();
    let mut live = hub.start(&chat, id).await.unwrap();
    let done = publish_reply(&mut *live.publisher, &chat, id, &words).await;
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
    let chat = fresh_chat();
    let words = pieces(300);
    let id = MessageId::generate();
    let mut live = hub.start(&chat, id).await.unwrap();
    let mut early_tasks = Vec::new();
    for _ in 0..5 {
        let stream = hub.subscribe(&chat, None).await.unwrap().unwrap();
        early_tasks.push(tokio::spawn(collect(stream)));
    }
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
    let chat = fresh_chat();
    let words = pieces(5_000);
    let id = MessageId::generate();
    let mut live = hub.start(&chat, id).await.unwrap();
    let slow = hub.subscribe(&chat, None).await.unwrap().unwrap();
    let fast = tokio::spawn(collect(hub.subscribe(&chat, None).await.unwrap().unwrap()));
    // Publishing everything must not wait for the slow subscriber.
    tokio::time::timeout(
        Duration::from_secs(10),
        publish_reply(&mut *live.publisher, &chat, id, &words),
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
    let chat = fresh_chat();
    assert!(!hub.terminate(&chat).await.unwrap());
    let id = MessageId::generate();
    let mut live = hub.start(&chat, id).await.unwrap();
    assert!(!live.cancel.is_cancelled());
    assert!(hub.terminate(&chat).await.unwrap());
    tokio::time::timeout(Duration::from_millis(100), live.cancel.cancelled())
        .await
        .expect("cancel token fired");
    assert!(!hub.terminate(&chat).await.unwrap(), "second terminate");
    // Still live until the generator publishes its done.
    assert!(hub.is_live(&chat).await.unwrap());
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
    let chat = fresh_chat();
    let live = hub.start(&chat, MessageId::generate()).await.unwrap();
    live.publisher.abort().await.unwrap();
    assert!(!hub.is_live(&chat).await.unwrap());
    assert!(hub.subscribe(&chat, None).await.unwrap().is_none());

    let id = MessageId::generate();
    let mut live = hub.start(&chat, id).await.unwrap();
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
    let chat = fresh_chat();
    let id = MessageId::generate();
    let mut live = hub.start(&chat, id).await.unwrap();
    live.publisher
        .publish(start_payload(&chat, id))
        .await
        .unwrap();
    let mut published = Vec::new();
    for i in 0..40u32 {
        let d = match i % 5 {
            0 => Delta::reasoning(format!("r{i}")),
            1 | 2 => Delta::text(format!("t{i}")),
            3 => Delta::ToolCall(crate::ToolCallDelta {
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
        let mut acc = crate::Accumulator::new();
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

/// The hub names a chat's live reply by the message given at start, on every call, from the
/// start to the end; a reply abandoned before its `start` event still ends with a `done` for
/// that message.
pub async fn live_reply_names_its_message(hub: &dyn StreamHub) {
    let chat = fresh_chat();
    assert_eq!(hub.live_reply(&chat).await.unwrap(), None);
    let id = MessageId::generate();
    let mut live = hub.start(&chat, id).await.unwrap();
    let named = |info: Option<super::LiveReplyInfo>| info.map(|i| i.message_id);
    assert_eq!(named(hub.live_reply(&chat).await.unwrap()), Some(id));
    assert_eq!(hub.live_reply(&fresh_chat()).await.unwrap(), None);
    // Known before anything is published, and after.
    live.publisher
        .publish(start_payload(&chat, id))
        .await
        .unwrap();
    assert_eq!(named(hub.live_reply(&chat).await.unwrap()), Some(id));
    live.publisher.publish(done_payload(id)).await.unwrap();
    assert_eq!(hub.live_reply(&chat).await.unwrap(), None, "after done");

    // A publisher that goes away after a delta but before any `start` event.
    let lost = MessageId::generate();
    let mut live = hub.start(&chat, lost).await.unwrap();
    assert_eq!(named(hub.live_reply(&chat).await.unwrap()), Some(lost));
    live.publisher
        .publish(EventPayload::Delta(Delta::text("half")))
        .await
        .unwrap();
    let follower = hub.subscribe(&chat, None).await.unwrap().unwrap();
    drop(live);
    let events = tokio::time::timeout(Duration::from_secs(5), collect(follower))
        .await
        .expect("subscriber ended");
    match events.last().map(|e| &*e.payload) {
        Some(EventPayload::Done {
            message_id, status, ..
        }) => {
            assert_eq!((*message_id, *status), (lost, MessageStatus::Interrupted));
        }
        other => panic!("an abandoned reply ends with its done: {other:?}"),
    }
    assert_eq!(hub.live_reply(&chat).await.unwrap(), None);
}

/// `terminate_reply` stops the chat's live reply only if it fills the given message: a request
/// meant for an older reply never stops a newer one.
pub async fn terminate_reply_spares_newer_replies(hub: &dyn StreamHub) {
    let chat = fresh_chat();
    let old = MessageId::generate();
    assert!(
        !hub.terminate_reply(&chat, &old).await.unwrap(),
        "nothing live"
    );
    let mut live = hub.start(&chat, old).await.unwrap();
    publish_reply(&mut *live.publisher, &chat, old, &pieces(2)).await;
    let new = MessageId::generate();
    let mut newer = hub.start(&chat, new).await.unwrap();
    newer
        .publisher
        .publish(start_payload(&chat, new))
        .await
        .unwrap();
    assert!(!hub.terminate_reply(&chat, &old).await.unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !newer.cancel.is_cancelled(),
        "a terminate for an older reply stopped a newer one"
    );
    assert!(hub.is_live(&chat).await.unwrap());
    assert!(hub.terminate_reply(&chat, &new).await.unwrap());
    tokio::time::timeout(Duration::from_secs(1), newer.cancel.cancelled())
        .await
        .expect("cancel token fired");
    assert!(
        !hub.terminate_reply(&chat, &new).await.unwrap(),
        "second terminate"
    );
    newer
        .publisher
        .publish(EventPayload::done(new, MessageStatus::Cancelled))
        .await
        .unwrap();
}

/// `live_replies` answers for each chat asked, in order, as `live_reply` does: live replies by
/// their message, nothing for idle chats, finished replies or repeated chats alike.
pub async fn live_replies_answer_each_chat(hub: &dyn StreamHub) {
    assert_eq!(hub.live_replies(&[]).await.unwrap(), Vec::new());
    let chats: Vec<ChatKey> = (0..5).map(|_| fresh_chat()).collect();
    let ids: Vec<MessageId> = chats.iter().map(|_| MessageId::generate()).collect();
    // Chats 0, 2 and 4 are live; 1 finished its reply; 3 never had one.
    let mut live = Vec::new();
    for i in [0, 1, 2, 4] {
        live.push(hub.start(&chats[i], ids[i]).await.unwrap());
    }
    let mut finished = live.remove(1);
    publish_reply(&mut *finished.publisher, &chats[1], ids[1], &pieces(1)).await;
    let asked = [
        chats[4].clone(),
        chats[3].clone(),
        chats[0].clone(),
        chats[1].clone(),
        chats[2].clone(),
        chats[0].clone(),
    ];
    let answers = hub.live_replies(&asked).await.unwrap();
    let named: Vec<Option<MessageId>> = answers
        .iter()
        .map(|a| a.as_ref().map(|i| i.message_id))
        .collect();
    assert_eq!(
        named,
        [
            Some(ids[4]),
            None,
            Some(ids[0]),
            None,
            Some(ids[2]),
            Some(ids[0])
        ],
        "one answer per chat asked, in order"
    );
    for (chat, answer) in asked.iter().zip(&answers) {
        assert_eq!(
            *answer,
            hub.live_reply(chat).await.unwrap(),
            "live_replies and live_reply agree"
        );
    }
    for (mut reply, i) in live.into_iter().zip([0, 2, 4]) {
        publish_reply(&mut *reply.publisher, &chats[i], ids[i], &pieces(1)).await;
    }
    let after: Vec<_> = hub.live_replies(&asked).await.unwrap();
    assert!(after.iter().all(Option::is_none), "after done: {after:?}");
}

/// A working hub answers `ping`, again and again.
pub async fn ping_answers(hub: &dyn StreamHub) {
    for _ in 0..3 {
        hub.ping().await.unwrap();
    }
}

/// Two owners' chats of one id are two chats: a reply live in one leaves the other free to start
/// its own, and lookups, subscriptions, terminates and watcher counts reach only their own
/// owner's reply.
pub async fn owners_are_independent(hub: &dyn StreamHub) {
    let id = ChatId::generate();
    let unique = uuid::Uuid::now_v7().simple().to_string();
    // Characters a backend's key layout might split on: '|', '/', ':' and non-ASCII.
    let alice = ChatKey::new(
        UserId::new(format!("auth0|älice/{unique}:x")).unwrap(),
        id.clone(),
    );
    let bob = ChatKey::new(UserId::new(format!("bob-{unique}")).unwrap(), id.clone());
    let nobody = ChatKey::from(id);
    let (a, b) = (MessageId::generate(), MessageId::generate());
    let mut alice_live = hub.start(&alice, a).await.unwrap();
    alice_live
        .publisher
        .publish(start_payload(&alice, a))
        .await
        .unwrap();
    for other in [&bob, &nobody] {
        assert!(!hub.is_live(other).await.unwrap(), "{other} is not live");
        assert_eq!(hub.live_reply(other).await.unwrap(), None, "{other}");
        assert!(
            hub.subscribe(other, None).await.unwrap().is_none(),
            "{other}"
        );
        assert!(!hub.terminate(other).await.unwrap(), "{other}");
        assert!(!hub.terminate_reply(other, &a).await.unwrap(), "{other}");
    }
    let watching_alice = hub.subscribe(&alice, None).await.unwrap().unwrap();
    if let Some(watchers) = hub.watchers(&alice).await.unwrap() {
        assert!(watchers >= 1, "alice's reply has a watcher");
        assert_eq!(hub.watchers(&bob).await.unwrap(), Some(0), "bob's has none");
    }
    assert!(!alice_live.cancel.is_cancelled(), "untouched by the others");

    // Bob's chat of the same id is not busy with Alice's reply.
    let mut bob_live = hub.start(&bob, b).await.unwrap();
    assert!(matches!(
        hub.start(&alice, MessageId::generate()).await,
        Err(Error::Busy { .. })
    ));
    bob_live
        .publisher
        .publish(start_payload(&bob, b))
        .await
        .unwrap();
    let named: Vec<Option<MessageId>> = hub
        .live_replies(&[alice.clone(), bob.clone(), nobody.clone()])
        .await
        .unwrap()
        .into_iter()
        .map(|live| live.map(|i| i.message_id))
        .collect();
    assert_eq!(named, [Some(a), Some(b), None]);
    let watching_bob = hub.subscribe(&bob, None).await.unwrap().unwrap();
    for (live, word) in [(&mut alice_live, "alice "), (&mut bob_live, "bob ")] {
        live.publisher
            .publish(EventPayload::Delta(Delta::text(word)))
            .await
            .unwrap();
    }

    // Stopping Bob's reply leaves Alice's running.
    assert!(hub.terminate(&bob).await.unwrap());
    tokio::time::timeout(Duration::from_secs(1), bob_live.cancel.cancelled())
        .await
        .expect("bob's cancel token fired");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !alice_live.cancel.is_cancelled(),
        "bob's terminate stopped alice's reply"
    );
    assert!(hub.is_live(&alice).await.unwrap());
    bob_live
        .publisher
        .publish(EventPayload::done(b, MessageStatus::Cancelled))
        .await
        .unwrap();
    assert!(
        hub.is_live(&alice).await.unwrap(),
        "bob's done ends only bob's reply"
    );
    alice_live.publisher.publish(done_payload(a)).await.unwrap();

    let alice_events = collect(watching_alice).await;
    let bob_events = collect(watching_bob).await;
    assert_eq!(text(&alice_events), "alice ");
    assert_eq!(text(&bob_events), "bob ");
    let done_of = |events: &[HubEvent]| match events.last().map(|e| &*e.payload) {
        Some(EventPayload::Done {
            message_id, status, ..
        }) => (*message_id, *status),
        other => panic!("a reply ends with its done: {other:?}"),
    };
    assert_eq!(done_of(&alice_events), (a, MessageStatus::Complete));
    assert_eq!(done_of(&bob_events), (b, MessageStatus::Cancelled));
}

/// `live_count` (for a hub that answers it) counts an owner's live replies only, whatever their
/// chats are called, and stops counting a reply once it ends, however it ends.
pub async fn live_count_is_per_owner(hub: &dyn StreamHub) {
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let alice = UserId::new(format!("auth0|älice/{unique}")).unwrap();
    let bob = UserId::new(format!("bob-{unique}")).unwrap();
    let Some(none) = hub.live_count(&alice).await.unwrap() else {
        return;
    };
    assert_eq!(none, 0);
    let chat = |owner: &UserId| ChatKey::new(owner.clone(), ChatId::generate());
    let (a1, a2, b1) = (chat(&alice), chat(&alice), chat(&bob));
    // Bob's chat of the same id as one of Alice's is Bob's.
    let b2 = ChatKey::new(bob.clone(), a1.id.clone());
    let mut live = Vec::new();
    for key in [&a1, &a2, &b1, &b2] {
        let id = MessageId::generate();
        let mut reply = hub.start(key, id).await.unwrap();
        reply
            .publisher
            .publish(start_payload(key, id))
            .await
            .unwrap();
        live.push((id, reply));
    }
    let count = async |owner: &UserId| hub.live_count(owner).await.unwrap();
    assert_eq!(count(&alice).await, Some(2));
    assert_eq!(count(&bob).await, Some(2));
    let (b2_id, mut b2_live) = live.pop().unwrap();
    let (_, b1_live) = live.pop().unwrap();
    let (_, a2_live) = live.pop().unwrap();
    let (a1_id, mut a1_live) = live.pop().unwrap();
    // Finished, abandoned, aborted: none counts any more.
    a1_live
        .publisher
        .publish(done_payload(a1_id))
        .await
        .unwrap();
    assert_eq!(count(&alice).await, Some(1));
    drop(a2_live);
    b1_live.publisher.abort().await.unwrap();
    b2_live
        .publisher
        .publish(done_payload(b2_id))
        .await
        .unwrap();
    for owner in [&alice, &bob] {
        let mut left = None;
        // An abandoned publisher ends its reply in the background.
        for _ in 0..200 {
            left = count(owner).await;
            if left == Some(0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(left, Some(0), "{owner}");
    }
}
