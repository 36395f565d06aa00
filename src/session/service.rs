//! [`ChatService`]: the conversations of an application, and its builder.

use std::{
    fmt,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    ChatKey, Error, Result,
    hub::{self, DynStreamHub, LocalHub},
    provider::DynLlmProvider,
    store::{DynMessageStore, MemoryStore},
};

use super::{ContextBudget, SendOptions, Session};

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) system_prompt: Option<String>,
    pub(super) model: Option<String>,
    /// The other defaults of every send; its model and system prompt are always unset, kept in
    /// the two fields above.
    pub(super) defaults: SendOptions,
    pub(super) budget: ContextBudget,
    pub(super) checkpoint_every: Duration,
    pub(super) checkpoint_deltas: u64,
    pub(super) unwatched_timeout: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            system_prompt: None,
            model: None,
            defaults: SendOptions::default(),
            budget: ContextBudget::Unlimited,
            checkpoint_every: Duration::from_millis(250),
            checkpoint_deltas: 64,
            unwatched_timeout: None,
        }
    }
}

pub(super) struct Inner {
    pub(super) provider: DynLlmProvider,
    pub(super) store: DynMessageStore,
    pub(super) hub: DynStreamHub,
    pub(super) settings: Settings,
    /// Every reply task, so that shutdown can wait for them.
    pub(super) tasks: TaskTracker,
    /// Fired when shutdown stops waiting: live replies end as `interrupted`.
    pub(super) shutdown: CancellationToken,
    /// The background recovery: started once, stopped on shutdown or when the service goes away.
    recovery: Recovery,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.recovery.stop.cancel();
    }
}

/// The state of the background recovery passes (see [`ChatService::recover_orphans`]).
#[derive(Debug, Default)]
struct Recovery {
    started: AtomicBool,
    stop: CancellationToken,
    failures: AtomicU64,
}

/// How long [`ChatService::delete_chat`] waits for a stopped reply's final write.
const DELETE_WAIT: Duration = Duration::from_secs(5);

/// The conversations of an application: owns the provider, the store, the hub and the settings,
/// and hands out a [`Session`] per chat ([`ChatKey`]: an owner and a chat id). Many chats stream
/// at once, each reply in its own task.
///
/// Cheap to clone (an `Arc` inside). Built with [`ChatService::builder`]; see the
/// [module docs](crate::session) for an example.
///
/// # Recovery
///
/// Replies left `streaming` by a process that is gone are marked `interrupted` by
/// [`recover_orphans`](ChatService::recover_orphans): call it once at start-up. When the hub is
/// shared by several processes (its
/// [`recovery_interval`](crate::StreamHub::recovery_interval) says how often, e.g. the
/// `RedisHub`'s), the service also runs it in the background on that cadence, so that a dead
/// instance's replies are marked soon after their lease expired. That
/// task starts when the service is built inside a Tokio runtime (or else with the first
/// [`session`](ChatService::session) or `recover_orphans` called inside one), and stops on
/// [`shutdown`](ChatService::shutdown) or when the last clone of the service is dropped. A
/// failed pass is logged and counted ([`recovery_failures`](ChatService::recovery_failures)),
/// and the next one runs on time.
#[derive(Clone)]
pub struct ChatService {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for ChatService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatService")
            .field("provider", &self.inner.provider.name())
            .field("store", &self.inner.store.backend())
            .field("hub", &self.inner.hub.backend())
            .field("settings", &self.inner.settings)
            .finish()
    }
}

/// Configures a [`ChatService`]. Only the provider is required.
#[derive(Default)]
#[must_use = "a builder does nothing until it is built"]
pub struct ChatServiceBuilder {
    provider: Option<DynLlmProvider>,
    store: Option<DynMessageStore>,
    hub: Option<DynStreamHub>,
    settings: Settings,
}

impl fmt::Debug for ChatServiceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatServiceBuilder")
            .field("provider", &self.provider.as_ref().map(|p| p.name()))
            .field("store", &self.store.as_ref().map(|s| s.backend()))
            .field("hub", &self.hub.as_ref().map(|h| h.backend()))
            .field("settings", &self.settings)
            .finish()
    }
}

impl ChatServiceBuilder {
    /// The model provider (required), usually wrapped in the resilience decorators.
    pub fn provider(mut self, provider: DynLlmProvider) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Where messages are persisted (default: a fresh [`MemoryStore`]).
    pub fn store(mut self, store: DynMessageStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Where live replies are published (default: a [`LocalHub`]).
    pub fn hub(mut self, hub: DynStreamHub) -> Self {
        self.hub = Some(hub);
        self
    }

    /// A system prompt sent first in every request (not stored in the history).
    pub fn system_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.settings.system_prompt = Some(prompt.into());
        self
    }

    /// The model to ask for (default: the provider's).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.settings.model = Some(model.into());
        self
    }

    /// The options of every send unless the send sets its own, field by field (see
    /// [`SendOptions::over`]): sampling, token limit, reasoning, tools, response format, extra
    /// fields. Its model and system prompt are the same settings as [`model`](Self::model) and
    /// [`system_prompt`](Self::system_prompt): whichever is called last wins.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use chatstream::{ChatService, SendOptions, provider::DemoProvider};
    ///
    /// let service = ChatService::builder()
    ///     .provider(Arc::new(DemoProvider::new()))
    ///     .system_prompt("Be brief.")
    ///     .default_options(SendOptions::default().with_temperature(0.3).with_max_output_tokens(600))
    ///     .build()?;
    /// # Ok::<(), chatstream::Error>(())
    /// ```
    pub fn default_options(mut self, mut options: SendOptions) -> Self {
        if let Some(model) = options.model.take() {
            self.settings.model = Some(model);
        }
        if let Some(system) = options.system.take() {
            self.settings.system_prompt = Some(system);
        }
        self.settings.defaults = options;
        self
    }

    /// How much history a request may carry (default: all of it).
    pub fn context_budget(mut self, budget: ContextBudget) -> Self {
        self.settings.budget = budget;
        self
    }

    /// How often a growing reply is checkpointed to the store: `every` after the first delta not
    /// yet saved, or after `every_deltas` deltas, whichever comes first (defaults: 250 ms, 64).
    /// Writes run beside the stream, one at a time, so a slow store never slows a reply; a
    /// checkpoint that comes due during a write follows it at once. A crash loses at most the
    /// deltas since the last write that landed.
    pub fn checkpoint(mut self, every: Duration, every_deltas: u64) -> Self {
        self.settings.checkpoint_every = every;
        self.settings.checkpoint_deltas = every_deltas.max(1);
        self
    }

    /// Cancels a reply that nobody has followed for this long (default: never). It needs a hub
    /// that counts its subscribers ([`StreamHub::watchers`](crate::StreamHub::watchers)); the check runs every quarter of the
    /// timeout, so a reply stops between one and one and a quarter timeouts after its last
    /// subscriber left.
    pub fn unwatched_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.unwatched_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// Builds the service. Fails with [`Error::Config`] without a provider or with default
    /// options that do not [validate](SendOptions::validate).
    pub fn build(self) -> Result<ChatService> {
        let provider = self
            .provider
            .ok_or_else(|| Error::Config("a chat service needs a provider".into()))?;
        self.settings
            .defaults
            .validate()
            .map_err(|e| Error::Config(format!("default send options: {e}")))?;
        let service = ChatService {
            inner: Arc::new(Inner {
                provider,
                store: self.store.unwrap_or_else(|| Arc::new(MemoryStore::new())),
                hub: self.hub.unwrap_or_else(|| Arc::new(LocalHub::new())),
                settings: self.settings,
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                recovery: Recovery::default(),
            }),
        };
        service.start_recovery();
        Ok(service)
    }
}

impl ChatService {
    /// Starts configuring a service.
    pub fn builder() -> ChatServiceBuilder {
        ChatServiceBuilder::default()
    }

    /// The session of one chat (the chat is created when the first message is sent): `chat` is
    /// a [`ChatKey`], or a [`ChatId`](crate::ChatId) for the anonymous owner's chat.
    ///
    /// The caller vouches for the owner: a server takes it from the request's authentication,
    /// never from its body. Sessions of two owners' chats of one id are two chats.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
    /// use chatstream::{ChatKey, ChatService, ChatSession, provider::DemoProvider};
    /// use std::sync::Arc;
    ///
    /// let service = ChatService::builder().provider(Arc::new(DemoProvider::new())).build()?;
    /// let alice = service.session(ChatKey::new("alice".parse()?, "demo".parse()?));
    /// let bob = service.session(ChatKey::new("bob".parse()?, "demo".parse()?));
    /// let reply = alice.send("Hello".into()).await?;
    /// assert!(bob.subscribe(None).await?.is_none(), "bob's demo has no reply");
    /// # drop(reply); Ok(()) }
    /// ```
    pub fn session(&self, chat: impl Into<ChatKey>) -> Session {
        self.start_recovery();
        Session {
            service: self.clone(),
            key: chat.into(),
        }
    }

    /// The provider.
    pub fn provider(&self) -> &DynLlmProvider {
        &self.inner.provider
    }

    /// The store.
    pub fn store(&self) -> &DynMessageStore {
        &self.inner.store
    }

    /// The hub.
    pub fn hub(&self) -> &DynStreamHub {
        &self.inner.hub
    }

    /// The model a reply asks for when its send names none: the service's
    /// ([`ChatServiceBuilder::model`]), else the provider's default.
    pub fn model(&self) -> &str {
        self.inner
            .settings
            .model
            .as_deref()
            .unwrap_or_else(|| self.inner.provider.default_model())
    }

    /// Stops the live reply of a chat (see [`ChatSession::cancel`](crate::ChatSession::cancel)).
    pub async fn terminate(&self, chat: &ChatKey) -> Result<bool> {
        self.inner.hub.terminate(chat).await
    }

    /// Deletes a chat and all its messages; returns whether it existed.
    ///
    /// A live reply in the chat is stopped first and given a moment (up to
    /// five seconds) to write its final state, so that it does not keep writing into a chat
    /// that no longer exists.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
    /// use chatstream::{ChatService, ChatSession, provider::DemoProvider};
    /// use std::sync::Arc;
    ///
    /// let service = ChatService::builder().provider(Arc::new(DemoProvider::new())).build()?;
    /// let chat = chatstream::ChatKey::new("alice".parse()?, "to-delete".parse()?);
    /// service.session(chat.clone()).send("Hello".into()).await?;
    /// assert!(service.delete_chat(&chat).await?);
    /// assert!(!service.delete_chat(&chat).await?);
    /// # Ok(()) }
    /// ```
    pub async fn delete_chat(&self, chat: &ChatKey) -> Result<bool> {
        let hub = &self.inner.hub;
        if hub.terminate(chat).await? || hub.is_live(chat).await? {
            // A reply's events end after its final write: wait for that, not for a guess.
            if let Some(events) = hub.subscribe(chat, None).await? {
                let ended = tokio::time::timeout(DELETE_WAIT, events.for_each(|_| async {}));
                if ended.await.is_err() {
                    tracing::warn!(chat_id = %chat.id, "deleting a chat whose reply did not stop in time");
                }
            }
        }
        self.inner.store.delete_chat(chat).await
    }

    /// Shuts the service down: new sends are refused, live replies get `grace` to finish, and
    /// those still running then are stopped (upstream closed) and persisted as `interrupted`.
    /// Returns once every reply's final state is written.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
    /// use chatstream::{ChatService, provider::DemoProvider};
    /// use std::{sync::Arc, time::Duration};
    ///
    /// let service = ChatService::builder().provider(Arc::new(DemoProvider::new())).build()?;
    /// service.shutdown(Duration::from_secs(5)).await;
    /// assert!(service.is_shutting_down());
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.recovery.stop.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::info!(
                live = self.inner.tasks.len(),
                "grace period over; interrupting live replies"
            );
            self.inner.shutdown.cancel();
            self.inner.tasks.wait().await;
        }
    }

    /// Whether [`shutdown`](Self::shutdown) was called: sends fail from then on.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.tasks.is_closed()
    }

    /// Marks `interrupted` the stored replies whose generating process is gone, keeping their
    /// checkpointed content, and returns how many it marked: one pass of
    /// [`hub::recover_orphans`] on the service's store and hub. Replies that any instance
    /// sharing the hub is still generating are never touched.
    ///
    /// Call it once at start-up, to recover the replies of this process's previous run (or of
    /// instances that died while none was running). Later passes, when the hub needs them, run
    /// in the background (see [Recovery](ChatService#recovery)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
    /// use chatstream::{
    ///     ChatService, Message, MessageStatus, MessageStore, provider::DemoProvider,
    ///     store::MemoryStore,
    /// };
    /// use std::sync::Arc;
    ///
    /// let store = MemoryStore::new();
    /// let chat = store.create_chat(&"alice".parse()?, None, None).await?;
    /// let left_behind = Message::assistant_streaming(chat.key()); // by a crashed run
    /// store.append(&left_behind).await?;
    /// let service = ChatService::builder()
    ///     .provider(Arc::new(DemoProvider::new()))
    ///     .store(Arc::new(store.clone()))
    ///     .build()?;
    /// assert_eq!(service.recover_orphans().await?, 1);
    /// let message = store
    ///     .get_message(&chat.owner, &left_behind.id)
    ///     .await?
    ///     .expect("stored");
    /// assert_eq!(message.status, MessageStatus::Interrupted);
    /// # Ok(()) }
    /// ```
    pub async fn recover_orphans(&self) -> Result<u64> {
        self.start_recovery();
        hub::recover_orphans(self.inner.store.as_ref(), self.inner.hub.as_ref()).await
    }

    /// How many background recovery passes failed since the service was built (each is logged
    /// at `warn`).
    pub fn recovery_failures(&self) -> u64 {
        self.inner.recovery.failures.load(Ordering::Relaxed)
    }

    /// Starts the background recovery passes once, if the hub asks for them and a runtime is
    /// there to run them.
    fn start_recovery(&self) {
        let Some(every) = self.inner.hub.recovery_interval() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let recovery = &self.inner.recovery;
        if recovery.stop.is_cancelled() || recovery.started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(recover_periodically(
            Arc::downgrade(&self.inner),
            every.max(MIN_RECOVERY_INTERVAL),
            recovery.stop.clone(),
        ));
    }
}

/// The shortest interval between two background recovery passes, whatever the hub asks: each
/// pass is a store query.
const MIN_RECOVERY_INTERVAL: Duration = Duration::from_millis(10);

/// Runs a recovery pass every `every` (the first one `every` after the start: the application
/// runs one at start-up) until `stop` fires or the service is gone.
async fn recover_periodically(service: Weak<Inner>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // A slow pass delays the next one: passes never overlap or bunch up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Held for one pass only, so that dropping the last clone of the service ends the task.
        let Some(inner) = service.upgrade() else {
            return;
        };
        let pass = tokio::select! {
            () = stop.cancelled() => return,
            pass = hub::recover_orphans(inner.store.as_ref(), inner.hub.as_ref()) => pass,
        };
        match pass {
            Ok(marked) => {
                if marked > 0 {
                    tracing::warn!(
                        marked,
                        "marked replies whose instance is gone as interrupted"
                    );
                }
                if failing > 0 {
                    tracing::info!(failed = failing, "recovery passes work again");
                    failing = 0;
                }
            }
            Err(e) => {
                failing += 1;
                let failures = inner.recovery.failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(error = %e, in_a_row = failing, failures, "a recovery pass failed; the next one runs on time");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::{
        ChatId, Message, MessageId, MessageStatus, MessageStore, UserId,
        hub::{HubEventStream, LiveReply, LiveReplyInfo, StreamHub},
        provider::DemoProvider,
    };

    /// A [`LocalHub`] that asks for a recovery pass every second, counts the passes' questions
    /// and can be made to fail them.
    #[derive(Debug, Default)]
    struct SharedHub {
        local: LocalHub,
        failing: AtomicBool,
        asked: AtomicU64,
    }

    impl SharedHub {
        fn asked(&self) -> u64 {
            self.asked.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl StreamHub for SharedHub {
        fn backend(&self) -> &'static str {
            "shared"
        }

        async fn start(&self, chat: &ChatKey, message_id: MessageId) -> Result<LiveReply> {
            self.local.start(chat, message_id).await
        }

        async fn live_reply(&self, chat: &ChatKey) -> Result<Option<LiveReplyInfo>> {
            self.local.live_reply(chat).await
        }

        async fn subscribe(
            &self,
            chat: &ChatKey,
            after: Option<u64>,
        ) -> Result<Option<HubEventStream>> {
            self.local.subscribe(chat, after).await
        }

        async fn terminate(&self, chat: &ChatKey) -> Result<bool> {
            self.local.terminate(chat).await
        }

        async fn terminate_reply(&self, chat: &ChatKey, message_id: &MessageId) -> Result<bool> {
            self.local.terminate_reply(chat, message_id).await
        }

        async fn live_replies(&self, chats: &[ChatKey]) -> Result<Vec<Option<LiveReplyInfo>>> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                return Err(Error::Hub {
                    backend: "shared",
                    message: "down".into(),
                    source: None,
                });
            }
            self.local.live_replies(chats).await
        }

        fn recovery_interval(&self) -> Option<Duration> {
            Some(Duration::from_secs(1))
        }
    }

    /// A reply left streaming in a new chat of `store`.
    async fn orphan_in(store: &MemoryStore) -> MessageId {
        let chat = store
            .create_chat(&UserId::anonymous(), None, None)
            .await
            .unwrap();
        let orphan = Message::assistant_streaming(chat.key());
        store.append(&orphan).await.unwrap();
        orphan.id
    }

    /// A store holding one orphaned reply, and a service on it and `hub`.
    async fn orphan_and_service(hub: &Arc<SharedHub>) -> (MemoryStore, MessageId, ChatService) {
        let store = MemoryStore::new();
        let orphan = orphan_in(&store).await;
        let service = ChatService::builder()
            .provider(Arc::new(DemoProvider::new()))
            .store(Arc::new(store.clone()))
            .hub(hub.clone())
            .build()
            .unwrap();
        (store, orphan, service)
    }

    async fn status(store: &MemoryStore, id: MessageId) -> MessageStatus {
        store
            .get_message(&UserId::anonymous(), &id)
            .await
            .unwrap()
            .unwrap()
            .status
    }

    #[tokio::test(start_paused = true)]
    async fn recovery_runs_on_the_hubs_cadence_counts_failures_and_ends_with_the_service() {
        let hub = Arc::new(SharedHub::default());
        hub.failing.store(true, Ordering::SeqCst);
        let (store, orphan, service) = orphan_and_service(&hub).await;
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(hub.asked(), 0, "the first pass is the application's");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(hub.asked(), 1);
        assert_eq!(service.recovery_failures(), 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!((hub.asked(), service.recovery_failures()), (2, 2));
        assert_eq!(status(&store, orphan).await, MessageStatus::Streaming);

        hub.failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!((hub.asked(), service.recovery_failures()), (3, 2));
        assert_eq!(status(&store, orphan).await, MessageStatus::Interrupted);

        // A clone keeps the passes going; dropping the last one ends them.
        let clone = service.clone();
        drop(service);
        let second = orphan_in(&store).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(hub.asked(), 4);
        assert_eq!(status(&store, second).await, MessageStatus::Interrupted);
        drop(clone);
        let third = orphan_in(&store).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(hub.asked(), 4, "no pass after the service is gone");
        assert_eq!(status(&store, third).await, MessageStatus::Streaming);
        assert_eq!(Arc::strong_count(&hub), 1, "the task let the hub go");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_recovery_passes() {
        let hub = Arc::new(SharedHub::default());
        let (_store, _orphan, service) = orphan_and_service(&hub).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(hub.asked(), 1);
        service.shutdown(Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(hub.asked(), 1, "no pass after shutdown");
        // Nor does a later use start them again.
        let _ = service.session("c".parse::<ChatId>().unwrap());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(hub.asked(), 1);
        // One pass on request still works.
        assert_eq!(service.recover_orphans().await.unwrap(), 0);
    }

    #[test]
    fn recovery_starts_once_with_the_first_use_inside_a_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let hub = Arc::new(SharedHub::default());
        // Failing passes leave the orphan in place, so every pass asks the hub.
        hub.failing.store(true, Ordering::SeqCst);
        let store = MemoryStore::new();
        runtime.block_on(orphan_in(&store));
        // Built outside any runtime: nothing can be spawned yet.
        let service = ChatService::builder()
            .provider(Arc::new(DemoProvider::new()))
            .store(Arc::new(store))
            .hub(hub.clone())
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert_eq!(hub.asked(), 0, "not started outside a runtime");
            let _ = service.session("c".parse::<ChatId>().unwrap());
            let _ = service.session("d".parse::<ChatId>().unwrap());
            tokio::time::sleep(Duration::from_millis(1100)).await;
            assert_eq!(hub.asked(), 1, "one pass: the task started once");
        });
    }
}
