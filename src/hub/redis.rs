//! [`RedisHub`]: live replies kept in Redis, shared by several server instances.
//!
//! Every instance that connects to the same Redis with the same key prefix sees the same live
//! replies: a reply started through instance A can be followed, replayed and terminated through
//! instance B.
//!
//! ## How it is kept in Redis
//!
//! For each chat (`P` is the prefix, `U/C` the chat's key: its owner's user id, a `/` and its
//! chat id; `R` a reply id; the braces are a Redis Cluster hash tag, so one chat's keys share a
//! slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:{U/C}:lease` | string, expires after the lease | the id of the chat's live reply, while its owner is alive |
//! | `P:{U/C}:reply` | hash | the current reply: `reply` (its id), `owner` (instance id), `message` (the assistant message id, given at start), `cancel` (set by a terminate) |
//! | `P:{U/C}:events:R` | stream | the reply's events: entry id `SEQ-0`, fields `e` (event name) and `d` (JSON data) |
//!
//! and for each user, `P:live:{U}`, a sorted set of the user's chats with a live reply, each
//! scored with the time its lease runs out (Redis's clock, in milliseconds): what
//! [`StreamHub::live_count`] counts.
//!
//! The tag `{U/C}` names one chat of one user, so one user's chat `demo` never meets another's:
//! a chat id has no `/` (so the last `/` of the tag ends the user id), and a user id has no `{`
//! or `}` (so the tag ends where the chat id does). The anonymous owner's chats are
//! `{anonymous/C}`. (Here "owner" in the `reply` hash is the instance generating the reply, not
//! the chat's owner.)
//!
//! - **Start** is one script: `SET lease NX PX` and, only if that won, the new `reply` hash
//!   (naming the owner and the message). Two instances can never both start a reply in one chat:
//!   the loser gets [`Error::Busy`]. The live reply of a chat is the `reply` hash while the
//!   lease holds its id ([`StreamHub::live_reply`]).
//! - The scripts move events as opaque strings: every JSON shape is made and read in Rust.
//! - **Live replies per user**: a reply's chat enters its user's set when it starts, gets its
//!   score moved on with every renewal of its lease, and leaves the set when the reply ends. A
//!   dead instance's chats stop counting when their scores pass, as their leases expire; the
//!   count drops them then. The set is apart from the chat's keys (another slot in a cluster),
//!   so it is kept by commands of its own beside the chat's scripts: for a moment around a
//!   reply's start or end it may count one reply more or less.
//! - **Publish** is an `XADD` with the sequence number as the entry id. **Follow** reads with
//!   `XRANGE` after the subscriber's position, then waits with `XREAD BLOCK` on a connection of
//!   the subscription's own (a blocking read would stall every other command on a shared one).
//! - **Lease**: each instance runs one renewal loop that renews the leases of all the replies
//!   it owns every tenth of the lease, in one pipelined round trip (one small script per reply),
//!   and the owner deletes a reply's lease when the reply ends. If the owner dies, its leases
//!   expire between 0.9 and 1 lease later (a renewal just before it died, or one period
//!   earlier). Then followers seal the reply (an `error` and an `interrupted` `done`, appended
//!   atomically once), a new reply may start in the chat, and
//!   [`recover_orphans`](super::recover_orphans) marks the stored message `interrupted`.
//!   Followers waiting for events check the lease after each quiet quarter lease (at most a
//!   second), and recovery runs as often ([`StreamHub::recovery_interval`], which
//!   [`ChatService`](crate::ChatService) follows): a dead instance's reply ends for its
//!   followers and in the store within about that time after its lease expired, and never
//!   before. With a 2 s lease: about 1.8 to 2.5 s after the instance died (plus a pass's time).
//! - **Recovery questions** ([`StreamHub::live_replies`]) are pipelined too: one round trip
//!   answers up to 512 of the chats a recovery pass asks about, and the replies this instance
//!   owns are answered from memory.
//! - **Terminate** sets `cancel` in the `reply` hash (once: a second terminate answers `false`)
//!   and publishes the reply id on the owner's channel `P:cancel:INSTANCE`, which every instance
//!   listens to; the owner fires the reply's cancel token as the message arrives (well under
//!   100 ms on a local network). Pub/sub may lose a message while a connection is re-established,
//!   so the lease renewal also reads the `cancel` flag: a terminate reaches the owner at the
//!   latest one renewal period (a tenth of the lease) later.
//! - **Expiry**: while a reply is live its keys expire a lease plus a grace period after the
//!   last renewal (so nothing of a dead instance stays for ever); once it finished, they expire
//!   after the grace period. A new reply in the chat replaces the `reply` hash at once; the old
//!   reply's stream stays readable for subscribers still reading it until it expires.
//!
//! ## When Redis fails
//!
//! A publish that fails returns [`Error::Hub`], and every later publish of that reply fails at
//! once without waiting for Redis, so the generating session keeps going at full speed and keeps
//! persisting to the store. The `done` is still attempted: if Redis is back, the reply is sealed
//! with an `error` event (code `hub`: some events were lost, reload the history) and its real
//! `done`. Subscribers whose Redis reads fail get one `Err(Error::Hub)` and their stream ends:
//! they should reload the history from the store.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

use async_trait::async_trait;
use futures::StreamExt;
use redis::{
    AsyncConnectionConfig, Client, RedisError, Script,
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSub},
};
use tokio_util::sync::CancellationToken;

use super::{
    EventPayload, HubEvent, HubEventStream, LiveReply, LiveReplyInfo, ReplyPublisher, StreamHub,
};
use crate::{ChatKey, Error, MessageId, MessageStatus, Result, UserId};

/// The key prefix by default.
pub const DEFAULT_PREFIX: &str = "chatstream";

/// How long a live reply's lease lasts by default; the owner renews it every tenth of that.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// How long a finished reply stays replayable by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// How long a connection attempt or a command may take by default before it fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

const BACKEND: &str = "redis";

/// How many stream entries one read fetches at most.
const READ_BATCH: usize = 512;

/// The [`StreamHub`] on Redis, for several server instances sharing live replies (feature
/// `redis`). See the [module documentation](self) for how replies are kept in Redis.
///
/// Cheap to clone: clones share one connection, one terminate listener, one renewal loop and
/// the replies this instance owns. When the last clone is dropped the listener and the renewal
/// loop stop.
///
/// ```no_run
/// use std::{sync::Arc, time::Duration};
/// use chatstream::hub::RedisHub;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
/// let hub = RedisHub::builder("redis://127.0.0.1:6379")
///     .prefix("myapp")
///     .lease(Duration::from_secs(10))
///     .grace(Duration::from_secs(60))
///     .connect()
///     .await?;
/// let hub: chatstream::DynStreamHub = Arc::new(hub);
/// # let _ = hub; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisHub {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    conn: ConnectionManager,
    prefix: String,
    instance_id: String,
    lease: Duration,
    grace: Duration,
    timeout: Duration,
    /// The replies this instance owns, by reply id: what the renewal loop keeps alive.
    owned: Mutex<HashMap<String, Owned>>,
    /// Stops the terminate listener and the renewal loop when the hub goes away.
    shutdown: CancellationToken,
}

/// A live reply this instance generates.
struct Owned {
    chat: ChatKey,
    message_id: MessageId,
    keys: Keys,
    /// Fires when the reply is terminated.
    cancel: CancellationToken,
    /// The lease went to nobody or to another reply (Redis lost it, or this instance could not
    /// renew it in time): renewals stop, and the reply no longer counts as live here.
    lost: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl fmt::Debug for RedisHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The address only: the URL may carry a password.
        f.debug_struct("RedisHub")
            .field("addr", &self.inner.client.get_connection_info().addr)
            .field("prefix", &self.inner.prefix)
            .field("instance_id", &self.inner.instance_id)
            .field("lease", &self.inner.lease)
            .field("grace", &self.inner.grace)
            .finish_non_exhaustive()
    }
}

/// Configures a [`RedisHub`]; made by [`RedisHub::builder`].
#[derive(Clone)]
#[must_use = "a builder does nothing until it is built"]
pub struct RedisHubBuilder {
    url: String,
    prefix: String,
    instance_id: Option<String>,
    lease: Duration,
    grace: Duration,
    timeout: Duration,
}

impl fmt::Debug for RedisHubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisHubBuilder")
            .field("prefix", &self.prefix)
            .field("instance_id", &self.instance_id)
            .field("lease", &self.lease)
            .field("grace", &self.grace)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisHubBuilder {
    /// The prefix of every key and channel (default `chatstream`). Instances that should share
    /// replies use the same prefix; different applications (or test runs) on one Redis use
    /// different ones.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// This instance's id, unique among the instances sharing the prefix (default: a generated
    /// UUID, new at every start). It names the owner of a live reply and the channel terminate
    /// requests for it arrive on.
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// How long a live reply's lease lasts (default 10 s, at least 100 ms). The owner renews
    /// the leases of all its replies every tenth of that, in one round trip; when the owner dies,
    /// its replies count as orphaned once their lease expired (0.9 to 1 lease later), and are
    /// marked `interrupted` within a quarter lease (at most a second) after that. Shorter leases
    /// recover sooner and cost more renewals and recovery passes.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a finished reply stays replayable (default 60 s).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long connecting or one command may take before it fails with [`Error::Hub`]
    /// (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects, checks that Redis answers, and starts listening for terminate requests.
    ///
    /// Fails with [`Error::Config`] for a malformed URL or setting, and with [`Error::Hub`]
    /// when Redis cannot be reached within the timeout.
    pub async fn connect(self) -> Result<RedisHub> {
        let client = Client::open(self.url.as_str())
            .map_err(|e| Error::Config(format!("invalid Redis URL: {e}")))?;
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        };
        if !valid_name(&self.prefix) {
            return Err(Error::Config(format!(
                "invalid Redis key prefix {:?}: use 1 to 128 of [A-Za-z0-9_.:-]",
                self.prefix
            )));
        }
        let instance_id = self
            .instance_id
            .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
        if !valid_name(&instance_id) {
            return Err(Error::Config(format!(
                "invalid hub instance id {instance_id:?}: use 1 to 128 of [A-Za-z0-9_.:-]"
            )));
        }
        if self.lease < Duration::from_millis(100) {
            return Err(Error::Config(
                "the hub lease must be at least 100 ms".into(),
            ));
        }
        let timeout = self.timeout.max(Duration::from_millis(10));
        let addr = client.get_connection_info().addr.to_string();
        let unreachable = |e: RedisError| Error::Hub {
            backend: BACKEND,
            message: format!("cannot connect to Redis at {addr}: {e}"),
            source: Some(Box::new(e)),
        };
        let timed_out = || Error::Hub {
            backend: BACKEND,
            message: format!("cannot connect to Redis at {addr}: no answer within {timeout:?}"),
            source: None,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1)
            .set_max_delay(timeout.as_millis() as u64);
        let mut conn = tokio::time::timeout(
            timeout * 2,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(unreachable)?;
        tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .map_err(|_| timed_out())?
            .map_err(unreachable)?;
        let channel = format!("{}:cancel:{instance_id}", self.prefix);
        let pubsub = tokio::time::timeout(timeout, listen_to(&client, &channel))
            .await
            .map_err(|_| timed_out())?
            .map_err(unreachable)?;
        let inner = Arc::new(Inner {
            client: client.clone(),
            conn,
            prefix: self.prefix,
            instance_id,
            lease: self.lease,
            grace: self.grace,
            timeout,
            owned: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(listen(
            Arc::downgrade(&inner),
            pubsub,
            client,
            channel,
            inner.shutdown.clone(),
        ));
        tokio::spawn(keep_leases(
            Arc::downgrade(&inner),
            inner.renew_every(),
            inner.shutdown.clone(),
        ));
        Ok(RedisHub { inner })
    }
}

impl RedisHub {
    /// Starts configuring a hub on this Redis URL (`redis://[:PASSWORD@]HOST[:PORT][/DB]`, or
    /// `rediss://` with TLS when the `redis` crate has it).
    pub fn builder(url: impl Into<String>) -> RedisHubBuilder {
        RedisHubBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.into(),
            instance_id: None,
            lease: DEFAULT_LEASE,
            grace: DEFAULT_GRACE,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Connects with the default settings (see [`RedisHubBuilder::connect`]).
    pub async fn connect(url: &str) -> Result<RedisHub> {
        Self::builder(url).connect().await
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The lease of live replies.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// How many live replies this instance owns (started here and not yet finished).
    pub fn owned_replies(&self) -> usize {
        lock(&self.inner.owned).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map is only inserted into and removed from: a panic elsewhere cannot leave it
    // inconsistent, so poisoning is safe to ignore.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn hub_error(doing: &str, e: RedisError) -> Error {
    Error::Hub {
        backend: BACKEND,
        message: format!("{doing}: {e}"),
        source: Some(Box::new(e)),
    }
}

fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// The keys of one chat, and of one reply's events; and the set of its user's live chats, in
/// which it is `chat`.
#[derive(Debug, Clone)]
struct Keys {
    lease: String,
    reply: String,
    events: String,
    live: String,
    chat: String,
}

impl Inner {
    /// The keys of `chat` (see the [module documentation](self) for why its tag is unambiguous).
    fn chat_keys(&self, chat: &ChatKey, reply_id: &str) -> Keys {
        let base = format!("{}:{{{}/{}}}", self.prefix, chat.owner, chat.id);
        Keys {
            lease: format!("{base}:lease"),
            reply: format!("{base}:reply"),
            events: format!("{base}:events:{reply_id}"),
            live: self.live_key(&chat.owner),
            chat: chat.id.to_string(),
        }
    }

    /// The set of `owner`'s chats with a live reply.
    fn live_key(&self, owner: &UserId) -> String {
        format!("{}:live:{{{owner}}}", self.prefix)
    }

    /// Marks the reply of `keys` live in its user's set until its lease runs out.
    fn mark_live<'a>(&self, script: &'a Script, keys: &Keys) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.key(&keys.live);
        invocation
            .arg(&keys.chat)
            .arg(millis(self.lease))
            .arg(self.live_ttl());
        invocation
    }

    /// Takes the chat of `keys` out of its user's set of live chats, its reply having ended. A
    /// failure only leaves it counted until its lease would have run out.
    async fn unmark_live(&self, keys: &Keys) {
        let removed: redis::RedisResult<i64> = redis::cmd("ZREM")
            .arg(&keys.live)
            .arg(&keys.chat)
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(e) = removed {
            tracing::debug!(error = %e, "hub: cannot take an ended reply out of its user's live set; it stops counting when its lease runs out");
        }
    }

    /// How long a live reply's keys last after a renewal: a dead owner's keys go away in time.
    fn live_ttl(&self) -> u64 {
        millis(self.lease + self.grace)
    }

    /// How often the owner renews its leases: every tenth of the lease, so that a dead owner's
    /// lease expires between 0.9 and 1 lease after it died.
    fn renew_every(&self) -> Duration {
        self.lease / 10
    }

    /// How soon after a lease expired its reply should be found out: followers check this often
    /// (it is how long one blocking read waits), and recovery runs this often
    /// ([`StreamHub::recovery_interval`]). A quarter lease, at most a second: a dead owner's
    /// reply ends for its followers and in the store at about the same time.
    fn check_every(&self) -> Duration {
        (self.lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    fn cancel_owned(&self, reply_id: &str) {
        if let Some(owned) = lock(&self.owned).get(reply_id) {
            owned.cancel.cancel();
        }
    }

    fn disown(&self, reply_id: &str) {
        lock(&self.owned).remove(reply_id);
    }

    /// Applies the answers of one renewal round ([`RENEW`]'s, one per reply of `due`).
    fn renewed(&self, due: &[(String, Keys)], answers: &[i64]) {
        let mut owned = lock(&self.owned);
        for ((reply_id, _), answer) in due.iter().zip(answers) {
            // A reply that finished during the round trip is no longer here, and its lease is
            // gone on purpose.
            let Some(reply) = owned.get_mut(reply_id) else {
                continue;
            };
            match answer {
                1 => reply.cancel.cancel(),
                -1 => {
                    reply.lost = true;
                    tracing::warn!(chat_id = %reply.chat.id, reply = %reply_id, "lost the lease of a live reply; other instances may recover it");
                }
                _ => {}
            }
        }
    }

    /// Stops the chat's live reply (only if it fills `only`, when given); `true` if this call
    /// stopped it.
    async fn terminate(&self, chat: &ChatKey, only: Option<&MessageId>) -> Result<bool> {
        let keys = self.chat_keys(chat, "");
        let stopped: Option<String> = Script::new(TERMINATE)
            .key(&keys.lease)
            .key(&keys.reply)
            .arg(format!("{}:cancel:", self.prefix))
            .arg(only.map(MessageId::to_string).unwrap_or_default())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| hub_error("terminate a reply", e))?;
        match stopped {
            Some(reply_id) => {
                // Ours: no need to wait for the message to come back.
                self.cancel_owned(&reply_id);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// The message id of a reply record, as stored by [`START`].
fn parse_message_id(stored: Option<&str>) -> Result<MessageId> {
    stored
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| Error::Hub {
            backend: BACKEND,
            message: format!("a reply record names no valid message id: {stored:?}"),
            source: None,
        })
}

async fn listen_to(client: &Client, channel: &str) -> redis::RedisResult<PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// Fires the cancel tokens of terminated replies, reconnecting when the connection drops.
async fn listen(
    hub: Weak<Inner>,
    mut pubsub: PubSub,
    client: Client,
    channel: String,
    shutdown: CancellationToken,
) {
    loop {
        let mut messages = pubsub.into_on_message();
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                message = messages.next() => message,
            };
            let Some(message) = message else { break };
            let Some(hub) = hub.upgrade() else { return };
            if let Ok(reply_id) = message.get_payload::<String>() {
                hub.cancel_owned(&reply_id);
            }
        }
        tracing::warn!(%channel, "lost the Redis terminate listener; reconnecting");
        pubsub = loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            match listen_to(&client, &channel).await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "cannot reach Redis to listen for terminate requests")
                }
            }
        };
    }
}

// The scripts. Each touches the keys of one chat only, or one user's set of live chats.

/// KEYS lease, reply; ARGV reply id, owner, lease ms, live ttl ms, message id. 1 when started,
/// 0 when busy.
const START: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[3]) then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'reply', ARGV[1], 'owner', ARGV[2], 'message', ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return 1
end
return 0
";

/// KEYS events; ARGV seq, event, data, live ttl ms. The first event also gives the stream
/// its expiry, in the same step, so a dead owner's stream cannot stay for ever.
const FIRST: &str = r"
redis.call('XADD', KEYS[1], ARGV[1] .. '-0', 'e', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// KEYS lease, reply. The live reply's message id and owner, or nil when nothing is live.
const LIVE: &str = r"
local holder = redis.call('GET', KEYS[1])
if not holder then return false end
local r = redis.call('HMGET', KEYS[2], 'reply', 'message', 'owner')
if r[1] ~= holder or not r[2] then return false end
return {r[2], r[3] or ''}
";

/// KEYS events, lease, reply; ARGV reply id, seq, data, grace ms.
const FINISH: &str = r"
redis.call('XADD', KEYS[1], ARGV[2] .. '-0', 'e', 'done', 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if redis.call('HGET', KEYS[3], 'reply') == ARGV[1] then redis.call('PEXPIRE', KEYS[3], ARGV[4]) end
return 1
";

/// KEYS lease, reply; ARGV reply id. Forgets a reply that published nothing.
const DISCARD: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('HGET', KEYS[2], 'reply') == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
";

/// Ends a reply that cannot end normally: an `error` and a `done` after whatever the stream
/// holds, unless it already ended.
///
/// KEYS events, lease, reply; ARGV reply id, error data, done data, grace ms, '1' when the owner
/// calls (else the reply must have lost its lease). Returns -1 when the owner is alive, -2 when
/// nothing was ever published (the reply is forgotten), 0 when it had already ended, else the
/// `done` event's number.
const SEAL: &str = r"
if ARGV[5] ~= '1' and redis.call('GET', KEYS[2]) == ARGV[1] then return -1 end
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top == 0 then
  if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
  if redis.call('HGET', KEYS[3], 'reply') == ARGV[1] then redis.call('DEL', KEYS[3]) end
  return -2
end
if top[1][2][2] == 'done' then return 0 end
local seq = tonumber(string.match(top[1][1], '^(%d+)'))
redis.call('XADD', KEYS[1], (seq + 1) .. '-0', 'e', 'error', 'd', ARGV[2])
redis.call('XADD', KEYS[1], (seq + 2) .. '-0', 'e', 'done', 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if redis.call('HGET', KEYS[3], 'reply') == ARGV[1] then redis.call('PEXPIRE', KEYS[3], ARGV[4]) end
return seq + 2
";

/// KEYS live (a user's set of live chats); ARGV chat, lease ms, live ttl ms. Scores the chat
/// with the time its lease runs out, by Redis's clock.
const MARK_LIVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// KEYS live. How many chats of the set have a lease that has not run out; drops the others.
const COUNT_LIVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
";

/// KEYS lease, reply, events; ARGV reply id, lease ms, live ttl ms. -1 when the lease was lost,
/// 1 when a terminate was requested, else 0.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
if redis.call('HGET', KEYS[2], 'cancel') then return 1 end
return 0
";

/// KEYS lease, reply; ARGV channel prefix, message id or '' (any reply). The live reply's id
/// when this call terminated it.
const TERMINATE: &str = r"
local holder = redis.call('GET', KEYS[1])
if not holder then return false end
if redis.call('HGET', KEYS[2], 'reply') ~= holder then return false end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[2], 'message') ~= ARGV[2] then return false end
if redis.call('HSETNX', KEYS[2], 'cancel', '1') == 0 then return false end
local owner = redis.call('HGET', KEYS[2], 'owner')
if owner then redis.call('PUBLISH', ARGV[1] .. owner, holder) end
return holder
";

fn interrupted_error() -> EventPayload {
    EventPayload::Error {
        code: "interrupted".into(),
        message: "the process generating this reply stopped before it finished".into(),
    }
}

/// Seals a reply (see [`SEAL`]) with `error` and `done`.
async fn seal(
    hub: &Inner,
    keys: &Keys,
    reply_id: &str,
    error: &EventPayload,
    done: &EventPayload,
    as_owner: bool,
) -> Result<i64> {
    Script::new(SEAL)
        .key(&keys.events)
        .key(&keys.lease)
        .key(&keys.reply)
        .arg(reply_id)
        .arg(error.to_json())
        .arg(done.to_json())
        .arg(millis(hub.grace))
        .arg(if as_owner { "1" } else { "0" })
        .invoke_async(&mut hub.conn.clone())
        .await
        .map_err(|e| hub_error("end a reply", e))
}

#[async_trait]
impl StreamHub for RedisHub {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn start(&self, chat: &ChatKey, message_id: MessageId) -> Result<LiveReply> {
        let hub = &self.inner;
        let reply_id = uuid::Uuid::now_v7().simple().to_string();
        let keys = hub.chat_keys(chat, &reply_id);
        let started: i64 = Script::new(START)
            .key(&keys.lease)
            .key(&keys.reply)
            .arg(&reply_id)
            .arg(&hub.instance_id)
            .arg(millis(hub.lease))
            .arg(hub.live_ttl())
            .arg(message_id.to_string())
            .invoke_async(&mut hub.conn.clone())
            .await
            .map_err(|e| hub_error("start a reply", e))?;
        if started != 1 {
            return Err(Error::Busy {
                chat_id: chat.id.to_string(),
            });
        }
        let mark = Script::new(MARK_LIVE);
        let marked: redis::RedisResult<i64> = hub
            .mark_live(&mark, &keys)
            .invoke_async(&mut hub.conn.clone())
            .await;
        if let Err(e) = marked {
            // The reply is started: the renewals mark it.
            tracing::debug!(error = %e, "hub: cannot mark a started reply in its user's live set yet");
        }
        let cancel = CancellationToken::new();
        lock(&hub.owned).insert(
            reply_id.clone(),
            Owned {
                chat: chat.clone(),
                message_id,
                keys: keys.clone(),
                cancel: cancel.clone(),
                lost: false,
            },
        );
        Ok(LiveReply {
            publisher: Box::new(RedisPublisher {
                hub: hub.clone(),
                chat: chat.clone(),
                keys,
                reply_id,
                message_id,
                seq: 0,
                finished: false,
                broken: false,
            }),
            cancel,
        })
    }

    async fn subscribe(
        &self,
        chat: &ChatKey,
        after: Option<u64>,
    ) -> Result<Option<HubEventStream>> {
        let hub = &self.inner;
        let keys = hub.chat_keys(chat, "");
        let mut conn = hub.conn.clone();
        let (reply_id, message): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&keys.reply)
            .arg("reply")
            .arg("message")
            .query_async(&mut conn)
            .await
            .map_err(|e| hub_error("look up a reply", e))?;
        let Some(reply_id) = reply_id else {
            return Ok(None);
        };
        let message_id = parse_message_id(message.as_deref())?;
        let keys = hub.chat_keys(chat, &reply_id);
        let top: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
            .arg(&keys.events)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|e| hub_error("read a reply", e))?;
        let after = after.unwrap_or(0);
        if let Some((id, fields)) = top.first()
            && fields.get(1).is_some_and(|e| e == "done")
            && after >= entry_seq(id)?
        {
            return Ok(None);
        }
        let follow = Follow {
            hub: hub.clone(),
            keys,
            reply_id,
            message_id,
            pos: after,
            pending: VecDeque::new(),
            ended: false,
            blocking: None,
        };
        Ok(Some(
            futures::stream::unfold(follow, |mut f| async move {
                let item = f.next().await?;
                Some((item, f))
            })
            .boxed(),
        ))
    }

    async fn live_reply(&self, chat: &ChatKey) -> Result<Option<LiveReplyInfo>> {
        let hub = &self.inner;
        let keys = hub.chat_keys(chat, "");
        let live: Option<(String, String)> = Script::new(LIVE)
            .key(&keys.lease)
            .key(&keys.reply)
            .invoke_async(&mut hub.conn.clone())
            .await
            .map_err(|e| hub_error("look up a reply", e))?;
        live.map(live_info).transpose()
    }

    async fn terminate(&self, chat: &ChatKey) -> Result<bool> {
        self.inner.terminate(chat, None).await
    }

    async fn terminate_reply(&self, chat: &ChatKey, message_id: &MessageId) -> Result<bool> {
        self.inner.terminate(chat, Some(message_id)).await
    }

    async fn is_live(&self, chat: &ChatKey) -> Result<bool> {
        let hub = &self.inner;
        let keys = hub.chat_keys(chat, "");
        redis::cmd("EXISTS")
            .arg(&keys.lease)
            .query_async(&mut hub.conn.clone())
            .await
            .map_err(|e| hub_error("look up a reply", e))
    }

    /// The replies this instance generates are answered from memory (they are live until their
    /// publisher finishes); the others with one pipelined round trip per 512 chats.
    async fn live_replies(&self, chats: &[ChatKey]) -> Result<Vec<Option<LiveReplyInfo>>> {
        let hub = &self.inner;
        let mine: HashMap<ChatKey, MessageId> = lock(&hub.owned)
            .values()
            .filter(|owned| !owned.lost)
            .map(|owned| (owned.chat.clone(), owned.message_id))
            .collect();
        let mut answers: Vec<Option<LiveReplyInfo>> = chats
            .iter()
            .map(|chat| {
                mine.get(chat)
                    .map(|id| LiveReplyInfo::new(*id, Some(hub.instance_id.clone())))
            })
            .collect();
        let ask: Vec<usize> = (0..chats.len()).filter(|i| answers[*i].is_none()).collect();
        let script = Script::new(LIVE);
        for batch in ask.chunks(READ_BATCH) {
            let mut pipe = redis::pipe();
            // A pipeline does not load a script that Redis lost (a restart, `SCRIPT FLUSH`).
            pipe.load_script(&script).ignore();
            for i in batch {
                let keys = hub.chat_keys(&chats[*i], "");
                pipe.invoke_script(script.key(&keys.lease).key(&keys.reply));
            }
            let live: Vec<Option<(String, String)>> = pipe
                .query_async(&mut hub.conn.clone())
                .await
                .map_err(|e| hub_error("look up replies", e))?;
            for (i, live) in batch.iter().zip(live) {
                answers[*i] = live.map(live_info).transpose()?;
            }
        }
        Ok(answers)
    }

    /// Every quarter of the lease, and at least every second: a dead instance's replies are
    /// marked within that time after their lease expired.
    fn recovery_interval(&self) -> Option<Duration> {
        Some(self.inner.check_every())
    }

    /// One `PING`.
    async fn live_count(&self, owner: &UserId) -> Result<Option<usize>> {
        let hub = &self.inner;
        let count: usize = Script::new(COUNT_LIVE)
            .key(hub.live_key(owner))
            .invoke_async(&mut hub.conn.clone())
            .await
            .map_err(|e| hub_error("count live replies", e))?;
        Ok(Some(count))
    }

    async fn ping(&self) -> Result<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.inner.conn.clone())
            .await
            .map(drop)
            .map_err(|e| hub_error("ping Redis", e))
    }
}

/// A live reply as [`LIVE`] answers it: its message id and owner.
fn live_info((message, owner): (String, String)) -> Result<LiveReplyInfo> {
    Ok(LiveReplyInfo::new(
        parse_message_id(Some(&message))?,
        Some(owner).filter(|o| !o.is_empty()),
    ))
}

/// Keeps the leases of every reply this instance owns, all in one pipelined round trip per
/// period, and fires the cancel token of a reply whose terminate request was missed.
async fn keep_leases(hub: Weak<Inner>, every: Duration, shutdown: CancellationToken) {
    let script = Script::new(RENEW);
    let mark = Script::new(MARK_LIVE);
    let mut tick = tokio::time::interval(every);
    // A slow round trip delays the next one rather than bunching renewals up behind it.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(inner) = hub.upgrade() else { return };
        let due: Vec<(String, Keys)> = lock(&inner.owned)
            .iter()
            .filter(|(_, owned)| !owned.lost)
            .map(|(reply_id, owned)| (reply_id.clone(), owned.keys.clone()))
            .collect();
        if due.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        // A pipeline does not load a script that Redis lost (a restart, `SCRIPT FLUSH`).
        pipe.load_script(&script).ignore();
        pipe.load_script(&mark).ignore();
        for (reply_id, keys) in &due {
            pipe.invoke_script(
                script
                    .key(&keys.lease)
                    .key(&keys.reply)
                    .key(&keys.events)
                    .arg(reply_id)
                    .arg(millis(inner.lease))
                    .arg(inner.live_ttl()),
            );
            pipe.invoke_script(&inner.mark_live(&mark, keys)).ignore();
        }
        let mut conn = inner.conn.clone();
        // Not held over the round trip: the hub may go away meanwhile.
        drop(inner);
        let renewed: redis::RedisResult<Vec<i64>> = pipe.query_async(&mut conn).await;
        let Some(inner) = hub.upgrade() else { return };
        match renewed {
            Ok(answers) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("renewing the leases of live replies again");
                }
                inner.renewed(&due, &answers);
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(replies = due.len(), error = %e, "cannot renew the leases of live replies; other instances may recover them once the leases expire");
                }
            }
        }
    }
}

fn entry_seq(id: &str) -> Result<u64> {
    id.split('-')
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Hub {
            backend: BACKEND,
            message: format!("unexpected stream entry id {id:?}"),
            source: None,
        })
}

fn decode_entry(id: &str, fields: &[String]) -> Result<HubEvent> {
    let seq = entry_seq(id)?;
    match fields {
        [e, name, d, data] if e == "e" && d == "d" => {
            Ok(HubEvent::new(seq, EventPayload::from_sse(name, data)?))
        }
        _ => Err(Error::Hub {
            backend: BACKEND,
            message: format!("malformed stream entry {id}"),
            source: None,
        }),
    }
}

type StreamEntries = Vec<(String, Vec<String>)>;

/// One subscription: a position in the reply's stream.
struct Follow {
    hub: Arc<Inner>,
    keys: Keys,
    reply_id: String,
    /// The message the reply fills: what the `done` of a reply sealed here names.
    message_id: MessageId,
    pos: u64,
    pending: VecDeque<HubEvent>,
    ended: bool,
    /// The subscription's own connection for blocking reads, opened when first needed.
    blocking: Option<MultiplexedConnection>,
}

impl Follow {
    async fn next(&mut self) -> Option<Result<HubEvent>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.pos = event.seq;
                self.ended = event.is_terminal();
                return Some(Ok(event));
            }
            if self.ended {
                return None;
            }
            match self.fill().await {
                Ok(true) => {}
                Ok(false) => {
                    self.ended = true;
                    return None;
                }
                Err(e) => {
                    self.ended = true;
                    return Some(Err(e));
                }
            }
        }
    }

    fn push(&mut self, entries: &StreamEntries) -> Result<()> {
        for (id, fields) in entries {
            let event = decode_entry(id, fields)?;
            if event.seq > self.pos {
                self.pending.push_back(event);
            }
        }
        Ok(())
    }

    /// Reads what came after the position, waiting for it if need be. `false` when the reply
    /// went away without anything more to read.
    async fn fill(&mut self) -> Result<bool> {
        let entries: StreamEntries = redis::cmd("XRANGE")
            .arg(&self.keys.events)
            .arg(format!("{}-0", self.pos + 1))
            .arg("+")
            .arg("COUNT")
            .arg(READ_BATCH)
            .query_async(&mut self.hub.conn.clone())
            .await
            .map_err(|e| hub_error("read a reply", e))?;
        if !entries.is_empty() {
            self.push(&entries)?;
            return Ok(true);
        }
        let block = self.hub.check_every();
        let conn = match &mut self.blocking {
            Some(conn) => conn,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(self.hub.timeout)
                    .set_response_timeout(block + self.hub.timeout);
                let conn = self
                    .hub
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| hub_error("connect to follow a reply", e))?;
                self.blocking.insert(conn)
            }
        };
        let read: Option<Vec<(String, StreamEntries)>> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_BATCH)
            .arg("BLOCK")
            .arg(millis(block))
            .arg("STREAMS")
            .arg(&self.keys.events)
            .arg(format!("{}-0", self.pos))
            .query_async(conn)
            .await
            .map_err(|e| hub_error("follow a reply", e))?;
        if let Some(streams) = read
            && streams.iter().any(|(_, entries)| !entries.is_empty())
        {
            for (_, entries) in &streams {
                self.push(entries)?;
            }
            return Ok(true);
        }
        // Nothing for a while: is the owner still there? If not, the reply ends here.
        let sealed = seal(
            &self.hub,
            &self.keys,
            &self.reply_id,
            &interrupted_error(),
            &EventPayload::done(self.message_id, MessageStatus::Interrupted),
            false,
        )
        .await?;
        if sealed == -2 {
            if self.pos > 0 {
                return Err(Error::Hub {
                    backend: BACKEND,
                    message: "the reply is no longer in the hub: reload the history".into(),
                    source: None,
                });
            }
            return Ok(false);
        }
        Ok(true)
    }
}

/// The writer of one reply of a [`RedisHub`].
struct RedisPublisher {
    hub: Arc<Inner>,
    chat: ChatKey,
    keys: Keys,
    reply_id: String,
    message_id: MessageId,
    /// The number of the last event published.
    seq: u64,
    finished: bool,
    /// A publish failed: events may be missing, later ones are not sent.
    broken: bool,
}

impl fmt::Debug for RedisPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPublisher")
            .field("chat", &self.chat)
            .field("reply_id", &self.reply_id)
            .field("seq", &self.seq)
            .field("finished", &self.finished)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// What ending an abandoned reply needs, apart from the publisher.
struct Abandoned {
    hub: Arc<Inner>,
    keys: Keys,
    reply_id: String,
    message_id: MessageId,
    published: bool,
}

impl Abandoned {
    async fn end(self) -> Result<()> {
        let ended = self.seal_or_discard().await;
        self.hub.unmark_live(&self.keys).await;
        ended
    }

    async fn seal_or_discard(&self) -> Result<()> {
        if !self.published {
            return Script::new(DISCARD)
                .key(&self.keys.lease)
                .key(&self.keys.reply)
                .arg(&self.reply_id)
                .invoke_async::<i64>(&mut self.hub.conn.clone())
                .await
                .map(drop)
                .map_err(|e| hub_error("discard a reply", e));
        }
        seal(
            &self.hub,
            &self.keys,
            &self.reply_id,
            &interrupted_error(),
            &EventPayload::done(self.message_id, MessageStatus::Interrupted),
            true,
        )
        .await
        .map(drop)
    }
}

impl RedisPublisher {
    /// Marks the reply finished here: no more renewals, no more terminate requests.
    fn close(&mut self) {
        self.finished = true;
        self.hub.disown(&self.reply_id);
    }

    fn abandon(&mut self) -> Abandoned {
        self.close();
        Abandoned {
            hub: self.hub.clone(),
            keys: self.keys.clone(),
            reply_id: self.reply_id.clone(),
            message_id: self.message_id,
            published: self.seq > 0 || self.broken,
        }
    }

    async fn finish(&mut self, done: EventPayload) -> Result<u64> {
        self.close();
        let finished = self.publish_done(done).await;
        self.hub.unmark_live(&self.keys).await;
        finished
    }

    async fn publish_done(&mut self, done: EventPayload) -> Result<u64> {
        let data = done.to_json();
        if !self.broken {
            let seq = self.seq + 1;
            let finished = Script::new(FINISH)
                .key(&self.keys.events)
                .key(&self.keys.lease)
                .key(&self.keys.reply)
                .arg(&self.reply_id)
                .arg(seq)
                .arg(&data)
                .arg(millis(self.hub.grace))
                .invoke_async::<i64>(&mut self.hub.conn.clone())
                .await;
            match finished {
                Ok(_) => {
                    self.seq = seq;
                    return Ok(seq);
                }
                Err(e) => {
                    tracing::warn!(chat_id = %self.chat.id, error = %e, "hub: cannot publish the end of a reply; sealing it");
                }
            }
        }
        // Some events may be missing: say so, then end with the real `done`.
        let error = EventPayload::Error {
            code: "hub".into(),
            message: "some events of this reply were lost: reload the history".into(),
        };
        let seq = seal(&self.hub, &self.keys, &self.reply_id, &error, &done, true).await?;
        Ok(u64::try_from(seq).unwrap_or(self.seq))
    }
}

#[async_trait]
impl ReplyPublisher for RedisPublisher {
    async fn publish(&mut self, payload: EventPayload) -> Result<u64> {
        if self.finished {
            return Err(Error::invalid(
                "hub event",
                "the reply has already finished",
            ));
        }
        if payload.is_terminal() {
            return self.finish(payload).await;
        }
        if self.broken {
            return Err(Error::Hub {
                backend: BACKEND,
                message: "an earlier publish of this reply failed; its events go to the store only"
                    .into(),
                source: None,
            });
        }
        let seq = self.seq + 1;
        let mut conn = self.hub.conn.clone();
        let data = payload.to_json();
        let sent: redis::RedisResult<()> = if seq == 1 {
            Script::new(FIRST)
                .key(&self.keys.events)
                .arg(seq)
                .arg(payload.event_name())
                .arg(&data)
                .arg(self.hub.live_ttl())
                .invoke_async::<i64>(&mut conn)
                .await
                .map(drop)
        } else {
            redis::cmd("XADD")
                .arg(&self.keys.events)
                .arg(format!("{seq}-0"))
                .arg("e")
                .arg(payload.event_name())
                .arg("d")
                .arg(&data)
                .query_async::<String>(&mut conn)
                .await
                .map(drop)
        };
        match sent {
            Ok(()) => {
                self.seq = seq;
                Ok(seq)
            }
            Err(e) => {
                self.broken = true;
                Err(hub_error("publish an event", e))
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.abandon().end().await
    }
}

impl Drop for RedisPublisher {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let abandoned = self.abandon();
        // Outside a runtime (the process is going away) the lease simply expires.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = abandoned.end().await {
                    tracing::warn!(error = %e, "hub: cannot end an abandoned reply; its lease will expire");
                }
            });
        }
    }
}
