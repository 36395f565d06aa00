//! [`StreamHub`]: the registry of live replies, with numbered events, fan-out and resume.
//!
//! | backend | type | feature | use it for |
//! |---|---|---|---|
//! | in-process | [`LocalHub`] | always | one process (the default) |
//! | Redis | `RedisHub` | `redis` | several instances sharing live replies |
//!
//! [`recover_orphans`] marks `interrupted` the stored replies whose generating process is gone,
//! and only those. A [`ChatService`](crate::ChatService) runs it: once at start-up when the
//! application calls [`ChatService::recover_orphans`](crate::ChatService::recover_orphans), then
//! as often as the hub asks ([`StreamHub::recovery_interval`]: never for the [`LocalHub`], every
//! quarter lease and at least every second for the `RedisHub`), so a dead instance's replies are
//! marked soon after its lease expired.
//!
//! A reply is a numbered sequence of [`HubEvent`]s: one [`EventPayload::Start`], any number of
//! [`EventPayload::Delta`]s, an optional [`EventPayload::Error`] and exactly one
//! [`EventPayload::Done`]. Sequence numbers start at 1 and increase within a reply; they are what
//! the server sends as SSE `id:`s, so a client that reconnects with `Last-Event-ID: N` calls
//! [`StreamHub::subscribe`] with `after: Some(N)` and gets exactly what it missed.
//!
//! A chat is named by its [`ChatKey`], its owner and id: two users' chats `demo` are two chats
//! to the hub too, each with its own live reply, subscribers and terminate.
//!
//! There is at most one live reply per chat. The hub is told which assistant message a reply
//! fills when it starts ([`StreamHub::start`]) and answers who is generating a chat's reply
//! ([`StreamHub::live_reply`]): nothing downstream reads it back out of the events. The hub keeps
//! the chat's latest reply after it finished, for a grace period, so that late or reconnecting
//! subscribers can still replay it.
//!
//! ```
//! use chatstream::{ChatKey, Delta, MessageId, MessageStatus};
//! use chatstream::hub::{EventPayload, LocalHub, StreamHub};
//! use futures::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
//! let hub = LocalHub::new();
//! let chat = ChatKey::new("alice".parse()?, "demo".parse()?);
//! let message_id = MessageId::generate(); // the assistant message the reply fills
//! let mut live = hub.start(&chat, message_id).await?;
//! assert_eq!(hub.live_reply(&chat).await?.map(|r| r.message_id), Some(message_id));
//! // Bob's chat `demo` is another chat.
//! let bob = ChatKey::new("bob".parse()?, "demo".parse()?);
//! assert!(hub.live_reply(&bob).await?.is_none());
//! live.publisher.publish(EventPayload::Start {
//!     chat_id: chat.id.clone(),
//!     message_id,
//!     user_message_id: MessageId::generate(),
//! }).await?;
//! live.publisher.publish(EventPayload::Delta(Delta::text("Hello"))).await?;
//! live.publisher.publish(EventPayload::done(message_id, MessageStatus::Complete)).await?;
//!
//! // A subscriber that already saw event 1 gets the rest, then the stream ends.
//! let events: Vec<_> = hub.subscribe(&chat, Some(1)).await?.expect("replayable").collect().await;
//! let names: Vec<_> = events.iter().map(|e| e.as_ref().unwrap().event_name()).collect();
//! assert_eq!(names, ["delta", "done"]);
//! // One that saw the end has nothing left (the server answers 204).
//! assert!(hub.subscribe(&chat, Some(3)).await?.is_none());
//! # Ok(()) }
//! ```

use std::{collections::HashMap, fmt::Debug, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    ChatId, ChatKey, Delta, Error, FinishReason, Message, MessageId, MessageStatus, MessageStore,
    Result, Usage, UserId,
};

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
pub mod local;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

pub use local::LocalHub;
#[cfg(feature = "redis")]
pub use redis::{RedisHub, RedisHubBuilder};

/// The events of one subscription: `Send + 'static`, so it can be handed to axum's `Sse`.
pub type HubEventStream = BoxStream<'static, Result<HubEvent>>;

/// A shared, type-erased hub.
pub type DynStreamHub = Arc<dyn StreamHub>;

/// One numbered event of a reply.
///
/// Cheap to clone: the payload is shared (every subscriber of a live reply gets the same
/// allocation).
#[derive(Debug, Clone, PartialEq)]
pub struct HubEvent {
    /// The sequence number: 1 for the `start` event, increasing within the reply. The SSE `id:`.
    pub seq: u64,
    /// What happened.
    pub payload: Arc<EventPayload>,
}

impl HubEvent {
    /// An event with this number and payload.
    pub fn new(seq: u64, payload: EventPayload) -> Self {
        HubEvent {
            seq,
            payload: Arc::new(payload),
        }
    }

    /// The SSE event name: `start`, `delta`, `done` or `error`.
    pub fn event_name(&self) -> &'static str {
        self.payload.event_name()
    }

    /// The SSE data: the payload as JSON.
    pub fn data_json(&self) -> String {
        self.payload.to_json()
    }

    /// Whether this is the reply's last event (`done`).
    pub fn is_terminal(&self) -> bool {
        self.payload.is_terminal()
    }
}

/// What a [`HubEvent`] says. Serializes to exactly the SSE `data` JSON of the server's contract:
///
/// | event | data |
/// |---|---|
/// | `start` | `{"chatId","messageId","userMessageId"}` |
/// | `delta` | one [`Delta`], e.g. `{"type":"text","text":"…"}` |
/// | `done` | `{"messageId","status","finishReason","usage"}` (the last two may be `null`) |
/// | `error` | `{"code","message"}` (sent before a `failed` done) |
///
/// ```
/// use chatstream::{Delta, hub::EventPayload};
///
/// let delta = EventPayload::Delta(Delta::text("Hi"));
/// assert_eq!(delta.event_name(), "delta");
/// assert_eq!(delta.to_json(), r#"{"type":"text","text":"Hi"}"#);
/// assert_eq!(EventPayload::from_sse("delta", &delta.to_json())?, delta);
/// # Ok::<(), chatstream::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum EventPayload {
    /// The reply started: always the first event (sequence number 1).
    #[serde(rename_all = "camelCase")]
    Start {
        /// The chat.
        chat_id: ChatId,
        /// The assistant message being generated.
        message_id: MessageId,
        /// The user message it answers.
        user_message_id: MessageId,
    },
    /// The reply ended: always the last event, exactly once per reply.
    #[serde(rename_all = "camelCase")]
    Done {
        /// The assistant message.
        message_id: MessageId,
        /// How it ended: `complete`, `cancelled` or `failed` (`interrupted` when the process
        /// generating it went away).
        status: MessageStatus,
        /// Why the model stopped, when it said.
        finish_reason: Option<FinishReason>,
        /// Token usage, when the provider reported it.
        usage: Option<Usage>,
    },
    /// The reply failed; a `done` with status `failed` follows.
    Error {
        /// A short machine-readable code (see [`Error::code`]).
        code: String,
        /// A human-readable message.
        message: String,
    },
    /// A piece of the reply (text, reasoning, a tool-call fragment, usage, finish or a retry
    /// notice).
    Delta(Delta),
}

impl EventPayload {
    /// A `done` payload without finish reason or usage.
    pub fn done(message_id: MessageId, status: MessageStatus) -> Self {
        EventPayload::Done {
            message_id,
            status,
            finish_reason: None,
            usage: None,
        }
    }

    /// An `error` payload describing `error`.
    pub fn error(error: &Error) -> Self {
        EventPayload::Error {
            code: error.code().to_string(),
            message: error.to_string(),
        }
    }

    /// The SSE event name: `start`, `delta`, `done` or `error`.
    pub fn event_name(&self) -> &'static str {
        match self {
            EventPayload::Start { .. } => "start",
            EventPayload::Delta(_) => "delta",
            EventPayload::Done { .. } => "done",
            EventPayload::Error { .. } => "error",
        }
    }

    /// Whether this is the terminal `done` event.
    pub fn is_terminal(&self) -> bool {
        matches!(self, EventPayload::Done { .. })
    }

    /// The SSE data JSON.
    pub fn to_json(&self) -> String {
        // Every field is a string, number, enum or map with string keys: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses an event back from its SSE name and data (what a hub that stores events outside
    /// the process, or a client, needs).
    pub fn from_sse(event_name: &str, data: &str) -> Result<Self> {
        let payload: EventPayload = serde_json::from_str(data)
            .map_err(|e| Error::invalid("hub event", format!("{event_name}: {e}")))?;
        if payload.event_name() != event_name {
            return Err(Error::invalid(
                "hub event",
                format!(
                    "data of a {:?} event under the name {event_name:?}",
                    payload.event_name()
                ),
            ));
        }
        Ok(payload)
    }
}

/// A reply that was just started with [`StreamHub::start`].
#[derive(Debug)]
pub struct LiveReply {
    /// Publishes the reply's events.
    pub publisher: Box<dyn ReplyPublisher>,
    /// Fires when anyone [terminates](StreamHub::terminate) the reply: the generator must then
    /// stop, and still publish a `done` (status `cancelled`).
    pub cancel: CancellationToken,
}

/// The single writer of one reply's events, handed out by [`StreamHub::start`].
///
/// Publishing a [`EventPayload::Done`] finishes the reply: the chat is free for the next one,
/// subscribers' streams end after it, and the reply stays replayable for the hub's grace period.
/// A publisher dropped without finishing ends its reply as `interrupted` (or, when it never
/// published anything, releases the chat as though the reply had never started), so a panicking
/// generator cannot leave a chat busy forever.
#[async_trait]
pub trait ReplyPublisher: Send + Sync + Debug {
    /// Appends an event and returns its sequence number (1 for the first).
    ///
    /// Never waits for subscribers: a slow subscriber lags behind and catches up later. Fails with
    /// [`Error::Invalid`] after the reply finished.
    async fn publish(&mut self, payload: EventPayload) -> Result<u64>;

    /// Gives up a reply that never got under way (nothing published): the chat is free again at
    /// once, as though [`StreamHub::start`] had not been called. After events were published it
    /// ends the reply as `interrupted`, like dropping the publisher.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// What a hub knows of a chat's live reply: see [`StreamHub::live_reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LiveReplyInfo {
    /// The assistant message the reply fills, as given to [`StreamHub::start`].
    pub message_id: MessageId,
    /// The instance generating it, for a hub shared by several instances (the `RedisHub`'s
    /// instance id); `None` for an in-process hub.
    pub instance: Option<String>,
}

impl LiveReplyInfo {
    /// The live reply of `message_id`, generated by `instance`.
    pub fn new(message_id: MessageId, instance: Option<String>) -> Self {
        LiveReplyInfo {
            message_id,
            instance,
        }
    }
}

/// The registry of live replies, keyed by chat: one live reply per chat, numbered events,
/// replay after any sequence number, fan-out to any number of subscribers, terminate from
/// anywhere.
///
/// A chat is named by its [`ChatKey`] (owner and id): two owners' chats of one id never share a
/// reply, a subscription or a terminate. The hub trusts the key it is given; who may ask about
/// a chat is decided before (the server takes the owner from the request).
///
/// Implementations are shared as `Arc<dyn StreamHub>` ([`DynStreamHub`]); every method may be
/// called concurrently. Nothing in the trait is tied to one process: events are plain data
/// ([`EventPayload::from_sse`] parses them back), cancellation is a request by chat key, and
/// subscriptions are `'static` streams.
///
/// The conformance suite (`hub::conformance`, feature `conformance`) states the contract as
/// checks that every backend runs.
#[async_trait]
pub trait StreamHub: Send + Sync + Debug + 'static {
    /// The backend's name: `local`, `redis`.
    fn backend(&self) -> &'static str;

    /// Starts the reply that fills the assistant message `message_id` in `chat`. Fails with
    /// [`Error::Busy`] while another reply is live there. A finished reply of that chat still
    /// kept for replay is replaced.
    ///
    /// From this call on, [`live_reply`](Self::live_reply) names `message_id` (on every instance
    /// sharing the hub), and a reply abandoned by its publisher ends with a `done` for it.
    async fn start(&self, chat: &ChatKey, message_id: MessageId) -> Result<LiveReply>;

    /// The chat's live reply (started and not finished): which message it fills and, for a
    /// shared hub, which instance generates it. `None` when nothing is live in the chat.
    async fn live_reply(&self, chat: &ChatKey) -> Result<Option<LiveReplyInfo>>;

    /// Follows the chat's live (or recently finished) reply: first every event numbered after
    /// `after` (all of them with `None` or `Some(0)`), then new events as they come, ending after
    /// the `done` event.
    ///
    /// `Ok(None)` when there is nothing to send: no live or recently finished reply in this chat,
    /// or the subscriber already saw the `done` (`after` at or past its number).
    ///
    /// Consecutive deltas of a reply may come back coalesced for a subscriber that replays or
    /// lags: one event carrying several deltas' text, numbered with the last of them. The text is
    /// always exact: nothing lost, nothing doubled, whatever `after` is.
    async fn subscribe(&self, chat: &ChatKey, after: Option<u64>)
    -> Result<Option<HubEventStream>>;

    /// Asks the chat's live reply to stop (its [`LiveReply::cancel`] token fires). Returns `true`
    /// when this call stopped a running reply, `false` when nothing was live or it was already
    /// being stopped.
    async fn terminate(&self, chat: &ChatKey) -> Result<bool>;

    /// Like [`terminate`](Self::terminate), but only if the chat's live reply fills
    /// `message_id`: a newer reply in the same chat is never stopped by a request meant for an
    /// older one.
    async fn terminate_reply(&self, chat: &ChatKey, message_id: &MessageId) -> Result<bool>;

    /// Whether a reply is live (started and not finished) in this chat.
    ///
    /// The default asks [`live_reply`](Self::live_reply); a backend may answer more cheaply.
    async fn is_live(&self, chat: &ChatKey) -> Result<bool> {
        Ok(self.live_reply(chat).await?.is_some())
    }

    /// How many subscriptions currently follow the chat's live reply, when the backend knows
    /// (`None` otherwise, and by default). Sessions use it to cancel replies nobody watches.
    async fn watchers(&self, chat: &ChatKey) -> Result<Option<usize>> {
        let _ = chat;
        Ok(None)
    }

    /// How many of `owner`'s chats have a live reply, on every instance sharing the hub, when the
    /// backend can tell (`None` otherwise, and by default). The server's limit of live replies
    /// per user counts with it.
    ///
    /// The crate's hubs answer: the [`LocalHub`] from memory; the `RedisHub` from a set per
    /// owner that each reply's instance keeps marked with its lease, so that the replies of an
    /// instance that died stop counting when their leases expire.
    async fn live_count(&self, owner: &UserId) -> Result<Option<usize>> {
        let _ = owner;
        Ok(None)
    }

    /// The live reply of each chat, in the order asked: what [`live_reply`](Self::live_reply)
    /// answers for each, in one call. [`recover_orphans`] asks it about every reply the store
    /// has `streaming`.
    ///
    /// The answers must be at least as recent as the call (asked after it began), so that the
    /// argument in "Why it never marks a live reply" holds. A hub may answer for the replies its
    /// own instance generates without asking its backend: they are live until their publisher
    /// finishes, which it does only after the reply's final write.
    ///
    /// The default asks `live_reply` chat by chat; a hub behind a network overrides it to answer
    /// in one round trip (the `RedisHub` pipelines its lookups).
    async fn live_replies(&self, chats: &[ChatKey]) -> Result<Vec<Option<LiveReplyInfo>>> {
        let mut live = Vec::with_capacity(chats.len());
        for chat in chats {
            live.push(self.live_reply(chat).await?);
        }
        Ok(live)
    }

    /// How often [`recover_orphans`] must run while the application runs; `None` when one pass
    /// at start-up is enough. [`ChatService`](crate::ChatService) runs the passes on this
    /// cadence.
    ///
    /// A hub shared by several processes needs the passes: a process that dies leaves replies
    /// that nobody else finishes, and the hub notices only once the process is known to be gone
    /// (for the `RedisHub`, once its lease expired). Such a hub answers how soon after that
    /// it wants them marked: the `RedisHub` asks for a pass every quarter of its lease, and at
    /// least every second.
    ///
    /// The default, `None`, suits a hub whose replies all live in this process (the
    /// [`LocalHub`]): no other process's reply can be live in it, and replies of this process's
    /// previous run are all recovered by the pass at start-up.
    fn recovery_interval(&self) -> Option<Duration> {
        None
    }

    /// Checks that the hub answers: `Ok` when it does, the error that says why when it does
    /// not. Cheap enough to call every second (a readiness probe).
    ///
    /// The default makes one [`live_reply`](Self::live_reply) lookup of a chat that cannot
    /// exist: a real round trip to any backend. The crate's hubs answer more cheaply (the
    /// `RedisHub` sends `PING`; the [`LocalHub`] lives in memory and always answers).
    async fn ping(&self) -> Result<()> {
        self.live_reply(&ChatKey::from(ChatId::generate()))
            .await
            .map(drop)
    }
}

crate::forward::forward_impls!(StreamHub,
    sync {
        fn backend(&self) -> &'static str;
        fn recovery_interval(&self) -> Option<Duration>;
    }
    async {
        fn start(&self, chat: &ChatKey, message_id: MessageId) -> Result<LiveReply>;
        fn live_reply(&self, chat: &ChatKey) -> Result<Option<LiveReplyInfo>>;
        fn subscribe(&self, chat: &ChatKey, after: Option<u64>) -> Result<Option<HubEventStream>>;
        fn terminate(&self, chat: &ChatKey) -> Result<bool>;
        fn terminate_reply(&self, chat: &ChatKey, message_id: &MessageId) -> Result<bool>;
        fn is_live(&self, chat: &ChatKey) -> Result<bool>;
        fn watchers(&self, chat: &ChatKey) -> Result<Option<usize>>;
        fn live_count(&self, owner: &UserId) -> Result<Option<usize>>;
        fn live_replies(&self, chats: &[ChatKey]) -> Result<Vec<Option<LiveReplyInfo>>>;
        fn ping(&self) -> Result<()>;
    }
);

/// Marks `interrupted` every stored reply left `streaming` whose generating process is gone,
/// keeping its checkpointed content; returns how many it marked. Replies that some instance is
/// still generating are never touched, on this instance or another one sharing the hub.
///
/// "Gone" is the hub's word: a reply is spared while the hub names it as its chat's
/// [live reply](StreamHub::live_reply) (for the `RedisHub`, while its owner's lease has not
/// expired). A [`ChatService`](crate::ChatService) runs it for you: call
/// [`ChatService::recover_orphans`](crate::ChatService::recover_orphans) once at start-up, and
/// the service runs further passes on the hub's [cadence](StreamHub::recovery_interval) (with a
/// `RedisHub`, a dead instance's replies are marked within a quarter lease, at most a second,
/// after their lease expired, and never earlier). With a [`LocalHub`] nothing is live at
/// start-up, so it marks every streaming reply, like [`MessageStore::recover_streaming`].
///
/// One pass costs one store query ([`MessageStore::streaming_replies`]) and one hub question for
/// all the replies found ([`StreamHub::live_replies`]: one round trip for the `RedisHub`, which
/// answers for the replies its own instance generates without asking Redis), then one write per
/// reply it marks.
///
/// # Why it never marks a live reply
///
/// A session takes the chat in the hub ([`StreamHub::start`], naming the assistant message)
/// *before* it stores the streaming assistant message, and gives the chat back only *after* the
/// message's final write. Recovery reads the store first ([`MessageStore::streaming_replies`]),
/// then asks the hub about every reply it found ([`StreamHub::live_replies`], whose answers date
/// from after the read), and marks each with a conditional write
/// ([`MessageStore::interrupt_reply`]: only if still `streaming`). So a reply found streaming
/// that the hub does not name as live either lost its owner, or finished in the meantime, and
/// then the conditional write leaves its final state alone. An older reply left behind in a
/// chat that is now live with a newer one is marked too. A hub that answers for its own
/// instance's replies from memory keeps the argument: such a reply stays in its memory until the
/// publisher finishes, after the final write.
///
/// ```
/// use chatstream::{Message, MessageStatus, MessageStore, UserId};
/// use chatstream::{hub::{LocalHub, recover_orphans}, store::MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
/// let store = MemoryStore::new();
/// let alice: UserId = "alice".parse()?;
/// let chat = store.create_chat(&alice, None, None).await?;
/// let left_behind = Message::assistant_streaming(chat.key());
/// store.append(&left_behind).await?;
/// assert_eq!(recover_orphans(&store, &LocalHub::new()).await?, 1);
/// let message = store.get_message(&alice, &left_behind.id).await?.expect("stored");
/// assert_eq!(message.status, MessageStatus::Interrupted);
/// # Ok(()) }
/// ```
pub async fn recover_orphans(store: &dyn MessageStore, hub: &dyn StreamHub) -> Result<u64> {
    // The store first, the hub second: see "Why it never marks a live reply".
    let streaming = store.streaming_replies().await?;
    if streaming.is_empty() {
        return Ok(0);
    }
    let live = live_messages(hub, &streaming).await?;
    let mut marked = 0;
    for message in streaming {
        if live.get(&message.key()) == Some(&message.id) {
            continue;
        }
        if store.interrupt_reply(&message.id).await? {
            tracing::info!(chat_id = %message.chat_id, owner = %message.owner, message_id = %message.id, "marked a reply whose process is gone as interrupted");
            marked += 1;
            #[cfg(feature = "metrics")]
            crate::metrics::orphans_recovered(1);
        }
    }
    Ok(marked)
}

/// The message each chat of `messages` is generating, as the hub says, asked once per chat.
async fn live_messages(
    hub: &dyn StreamHub,
    messages: &[Message],
) -> Result<HashMap<ChatKey, MessageId>> {
    let mut chats: Vec<ChatKey> = messages.iter().map(Message::key).collect();
    chats.sort_unstable();
    chats.dedup();
    let answers = hub.live_replies(&chats).await?;
    if answers.len() != chats.len() {
        return Err(Error::Hub {
            backend: hub.backend(),
            message: format!(
                "asked about {} chats' live replies, got {} answers",
                chats.len(),
                answers.len()
            ),
            source: None,
        });
    }
    Ok(chats
        .into_iter()
        .zip(answers)
        .filter_map(|(chat, live)| Some((chat, live?.message_id)))
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn payload_json_matches_the_contract() {
        let chat: ChatId = "c".parse().unwrap();
        let (m, u) = (MessageId::generate(), MessageId::generate());
        let start = EventPayload::Start {
            chat_id: chat,
            message_id: m,
            user_message_id: u,
        };
        assert_eq!(
            start.to_json(),
            format!(r#"{{"chatId":"c","messageId":"{m}","userMessageId":"{u}"}}"#)
        );
        let done = EventPayload::Done {
            message_id: m,
            status: MessageStatus::Complete,
            finish_reason: Some(FinishReason::Stop),
            usage: Some(Usage {
                input_tokens: 1,
                output_tokens: 2,
            }),
        };
        assert_eq!(
            done.to_json(),
            format!(
                r#"{{"messageId":"{m}","status":"complete","finishReason":"stop","usage":{{"inputTokens":1,"outputTokens":2}}}}"#
            )
        );
        let bare = EventPayload::done(m, MessageStatus::Cancelled);
        assert_eq!(
            bare.to_json(),
            format!(
                r#"{{"messageId":"{m}","status":"cancelled","finishReason":null,"usage":null}}"#
            )
        );
        let err = EventPayload::error(&Error::Truncated {
            provider: "p".into(),
        });
        assert_eq!(
            err.to_json(),
            r#"{"code":"truncated","message":"p: the stream ended before the reply was finished"}"#
        );
        for p in [
            start,
            done,
            bare,
            err,
            EventPayload::Delta(Delta::text("x")),
        ] {
            assert_eq!(
                EventPayload::from_sse(p.event_name(), &p.to_json()).unwrap(),
                p
            );
        }
        assert!(EventPayload::from_sse("start", r#"{"type":"text","text":"x"}"#).is_err());
        assert!(EventPayload::from_sse("delta", "nope").is_err());
    }
}
