//! [`ChatService`]: the conversations of an application, and its builder.

use std::{fmt, sync::Arc, time::Duration};

use futures::StreamExt;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    ChatKey, Error, Result,
    hub::{DynStreamHub, LocalHub},
    provider::DynLlmProvider,
    store::{DynMessageStore, MemoryStore},
};

use super::{ContextBudget, SendOptions, Session, recovery::Recovery};

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) system_prompt: Option<String>,
    pub(super) model: Option<String>,
    /// The other defaults of every send; its model, system prompt and context budget are
    /// always unset, kept in the fields beside it.
    pub(super) defaults: SendOptions,
    /// The context budget of every send that sets none.
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
            budget: ContextBudget::Model,
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
    pub(super) recovery: Recovery,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.recovery.stop.cancel();
    }
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
    /// fields. Its model, system prompt and context budget are the same settings as
    /// [`model`](Self::model), [`system_prompt`](Self::system_prompt) and
    /// [`context_budget`](Self::context_budget): whichever is called last wins.
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
        if let Some(budget) = options.context_budget.take() {
            self.settings.budget = budget;
        }
        self.settings.defaults = options;
        self
    }

    /// How much history a request may carry, unless a send sets its own (default:
    /// [`ContextBudget::Model`], the model's context window less the reply's room).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use chatstream::{ChatService, ContextBudget, provider::DemoProvider};
    ///
    /// // A local model served with a 32k window.
    /// let service = ChatService::builder()
    ///     .provider(Arc::new(DemoProvider::new()))
    ///     .context_budget(ContextBudget::Window(32_768))
    ///     .build()?;
    /// # Ok::<(), chatstream::Error>(())
    /// ```
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
}
