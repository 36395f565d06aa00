//! [`ChatService`]: the conversations of an application, and its builder.

use std::{
    fmt,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    ChatId, Error, Result,
    hub::{self, DynStreamHub, LocalHub},
    provider::DynProvider,
    store::{DynMessageStore, MemoryStore},
};

use super::{ContextBudget, Session};

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) system_prompt: Option<String>,
    pub(super) model: Option<String>,
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
            budget: ContextBudget::Unlimited,
            checkpoint_every: Duration::from_millis(250),
            checkpoint_deltas: 64,
            unwatched_timeout: None,
        }
    }
}

pub(super) struct Inner {
    pub(super) provider: DynProvider,
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

/// The conversations of an application: owns the provider, the store, the hub and the settings,
/// and hands out a [`Session`] per chat id. Many chats stream at once, each reply in its own task.
///
/// Cheap to clone (an `Arc` inside). Built with [`ChatService::builder`]; see the
/// [module docs](self) for an example.
///
/// # Recovery
///
/// Replies left `streaming` by a process that is gone are marked `interrupted` by
/// [`recover_orphans`](ChatService::recover_orphans): call it once at start-up. When the hub is
/// shared by several processes ([`StreamHub::recovery_interval`](crate::StreamHub::recovery_interval)
/// says how often, e.g. the `RedisHub`), the service also runs it in the background on that
/// cadence, so that a dead instance's replies are marked soon after their lease expired. That
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
pub struct ChatServiceBuilder {
    provider: Option<DynProvider>,
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
    pub fn provider(mut self, provider: DynProvider) -> Self {
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

    /// Builds the service. Fails with [`Error::Config`] without a provider.
    pub fn build(self) -> Result<ChatService> {
        let provider = self
            .provider
            .ok_or_else(|| Error::Config("a chat service needs a provider".into()))?;
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

    /// The session of one chat (the chat is created when the first message is sent).
    pub fn session(&self, chat_id: ChatId) -> Session {
        self.start_recovery();
        Session {
            service: self.clone(),
            chat_id,
        }
    }

    /// The provider.
    pub fn provider(&self) -> &DynProvider {
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

    /// Stops the live reply of a chat (see [`ChatSession::cancel`]).
    pub async fn terminate(&self, chat_id: &ChatId) -> Result<bool> {
        self.inner.hub.terminate(chat_id).await
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
    /// use chatstream::{ChatService, Message, MessageStatus, MessageStore, provider::DemoProvider, store::MemoryStore};
    /// use std::sync::Arc;
    ///
    /// let store = MemoryStore::new();
    /// let chat = store.create_chat(None, None).await?;
    /// let left_behind = Message::assistant_streaming(chat.id.clone()); // by a crashed run
    /// store.append(&left_behind).await?;
    /// let service = ChatService::builder()
    ///     .provider(Arc::new(DemoProvider::new()))
    ///     .store(Arc::new(store.clone()))
    ///     .build()?;
    /// assert_eq!(service.recover_orphans().await?, 1);
    /// let message = store.get_message(&left_behind.id).await?.expect("stored");
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
