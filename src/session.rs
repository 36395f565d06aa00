//! Conversations: [`ChatService`] hands out [`ChatSession`]s by chat id; a session sends user
//! messages and streams the replies.
//!
//! One turn, as [`ChatSession::send`] does it:
//!
//! 1. the user message is persisted (once per client message id: a repeat returns the existing
//!    reply instead of starting a second one);
//! 2. the assistant message is created with status `streaming` and persisted;
//! 3. the request is built from the chat's history, newest first until the
//!    [`ContextBudget`] is spent (the service's system prompt is always sent);
//! 4. the reply runs in its own task: deltas go to the [`StreamHub`](crate::StreamHub) as numbered events, the
//!    growing message is checkpointed to the store at a bounded rate, and the final state is
//!    persisted once (`complete`, `cancelled` or `failed`) before the `done` event.
//!
//! The reply does not depend on anyone watching it: dropping every subscriber (a closed browser
//! tab) leaves it running to the end. Only a cancel stops it (or, when configured, nobody watching
//! for [`unwatched_timeout`](ChatServiceBuilder::unwatched_timeout)).
//!
//! ```
//! use std::sync::Arc;
//! use chatstream::{ChatService, ChatSession, HubEvent, EventPayload, Delta, Script, ScriptedProvider,
//!     UserInput, store::{HistoryPage, MemoryStore}};
//! use futures::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
//! let provider = ScriptedProvider::new().then(Script::reply(["Hel", "lo!"]));
//! let service = ChatService::builder()
//!     .provider(Arc::new(provider))
//!     .store(Arc::new(MemoryStore::new()))
//!     .system_prompt("Be brief.")
//!     .build()?;
//! let session = service.session("support-1".parse()?);
//! let mut reply = session.send(UserInput::new("Hi")).await?;
//! let mut text = String::new();
//! while let Some(event) = reply.events.next().await {
//!     if let EventPayload::Delta(Delta::Text { text: t }) = &*event?.payload {
//!         text.push_str(t);
//!     }
//! }
//! assert_eq!(text, "Hello!");
//! let history = session.history(HistoryPage::default()).await?;
//! assert_eq!(history.len(), 2); // the user message and the complete reply
//! # Ok(()) }
//! ```

use std::{
    fmt,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use chrono::Utc;
use futures::{StreamExt, stream};
use tokio::time::{Instant, Interval};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Accumulator, ChatId, ChatRequest, Delta, Error, Message, MessageId, MessageStatus,
    RequestMessage, Result, Role,
    hub::{
        DynStreamHub, EventPayload, HubEvent, HubEventStream, LiveReply, LocalHub, ReplyPublisher,
    },
    provider::DynProvider,
    store::{DynMessageStore, HistoryPage, MemoryStore},
};

/// How much history a request may carry. The newest messages are kept, the oldest dropped first;
/// the service's system prompt is always sent, and so is the message just sent, even if it alone
/// exceeds the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ContextBudget {
    /// At most this many characters of message text (content and tool-call arguments).
    Chars(usize),
    /// At most about this many tokens, estimated as one token per 4 characters plus 4 per
    /// message: no tokenizer is involved, so leave a margin below the model's real limit.
    Tokens(usize),
    /// The whole history.
    #[default]
    Unlimited,
}

impl ContextBudget {
    fn limit(&self) -> usize {
        match self {
            ContextBudget::Chars(n) | ContextBudget::Tokens(n) => *n,
            ContextBudget::Unlimited => usize::MAX,
        }
    }

    /// What one message costs against this budget.
    pub fn cost(&self, message: &RequestMessage) -> usize {
        let chars = message.content.chars().count()
            + message
                .tool_calls
                .iter()
                .map(|c| c.arguments.chars().count() + c.name.len())
                .sum::<usize>();
        match self {
            ContextBudget::Chars(_) => chars,
            ContextBudget::Tokens(_) => chars.div_ceil(4) + 4,
            ContextBudget::Unlimited => 0,
        }
    }
}

/// What the user sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInput {
    /// The message text.
    pub content: String,
    /// The client's idempotency key: sending the same key twice in a chat stores one message and
    /// starts one reply.
    pub client_message_id: Option<String>,
}

impl UserInput {
    /// A message with no idempotency key.
    pub fn new(content: impl Into<String>) -> Self {
        UserInput {
            content: content.into(),
            client_message_id: None,
        }
    }

    /// Sets the client's idempotency key.
    pub fn with_client_message_id(mut self, key: impl Into<String>) -> Self {
        self.client_message_id = Some(key.into());
        self
    }
}

impl From<&str> for UserInput {
    fn from(content: &str) -> Self {
        UserInput::new(content)
    }
}

impl From<String> for UserInput {
    fn from(content: String) -> Self {
        UserInput::new(content)
    }
}

/// One conversation: send messages, stream and cancel replies, read history.
///
/// [`ChatService::session`] hands out the default implementation, [`Session`].
#[async_trait]
pub trait ChatSession: Send + Sync + fmt::Debug {
    /// The chat this session talks in.
    fn chat_id(&self) -> &ChatId;

    /// Sends a user message and starts the reply (creating the chat if it does not exist yet).
    ///
    /// Fails with [`Error::Busy`] while another reply is live in the chat. With a client message
    /// id already used in this chat, nothing new is stored or started: the handle follows the
    /// existing reply (live, or a summary of the finished one from the store).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future part-way may leave the user message stored without a reply; sending
    /// it again with the same client message id then starts the missing reply.
    async fn send(&self, input: UserInput) -> Result<ReplyHandle>;

    /// Generates a new reply to the chat's last user message, in place of the replies it already
    /// has: they stay in the history but are left out of the new request's context. Fails with
    /// [`Error::Busy`] while a reply is live, and with [`Error::Invalid`] when the chat has no
    /// user message.
    async fn regenerate(&self) -> Result<ReplyHandle>;

    /// Stops the chat's live reply: the upstream request is closed and the partial reply is
    /// persisted as `cancelled`. Returns whether a running reply was stopped; with nothing live,
    /// or when called again, it does nothing and returns `false`.
    async fn cancel(&self) -> Result<bool>;

    /// A page of the chat's messages, oldest first.
    async fn history(&self, page: HistoryPage) -> Result<Vec<Message>>;

    /// Follows the chat's live or recently finished reply after event `after`; `None` when there
    /// is nothing to send (see [`StreamHub::subscribe`](crate::StreamHub::subscribe)).
    async fn subscribe(&self, after: Option<u64>) -> Result<Option<HubEventStream>>;

    /// Whether a reply is live in the chat.
    async fn is_live(&self) -> Result<bool>;
}

#[derive(Debug, Clone)]
struct Settings {
    system_prompt: Option<String>,
    model: Option<String>,
    budget: ContextBudget,
    checkpoint_every: Duration,
    checkpoint_deltas: u64,
    unwatched_timeout: Option<Duration>,
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

struct Inner {
    provider: DynProvider,
    store: DynMessageStore,
    hub: DynStreamHub,
    settings: Settings,
    /// Every reply task, so that shutdown can wait for them.
    tasks: TaskTracker,
    /// Fired when shutdown stops waiting: live replies end as `interrupted`.
    shutdown: CancellationToken,
}

/// The conversations of an application: owns the provider, the store, the hub and the settings,
/// and hands out a [`Session`] per chat id. Many chats stream at once, each reply in its own task.
///
/// Cheap to clone (an `Arc` inside). Built with [`ChatService::builder`]; see the
/// [module docs](self) for an example.
#[derive(Clone)]
pub struct ChatService {
    inner: Arc<Inner>,
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
        Ok(ChatService {
            inner: Arc::new(Inner {
                provider,
                store: self.store.unwrap_or_else(|| Arc::new(MemoryStore::new())),
                hub: self.hub.unwrap_or_else(|| Arc::new(LocalHub::new())),
                settings: self.settings,
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
        })
    }
}

impl ChatService {
    /// Starts configuring a service.
    pub fn builder() -> ChatServiceBuilder {
        ChatServiceBuilder::default()
    }

    /// The session of one chat (the chat is created when the first message is sent).
    pub fn session(&self, chat_id: ChatId) -> Session {
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

/// The default [`ChatSession`]: one chat of a [`ChatService`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Session {
    service: ChatService,
    chat_id: ChatId,
}

/// A reply, as returned by [`ChatSession::send`]: its ids, its events and a way to stop it.
pub struct ReplyHandle {
    /// The chat.
    pub chat_id: ChatId,
    /// The user message, as stored.
    pub user_message: Message,
    /// The assistant message being (or that was) generated.
    pub assistant_message_id: MessageId,
    /// The reply's events from the start, ending after `done`. Dropping it does not stop the
    /// reply.
    pub events: HubEventStream,
    created: bool,
    control: Control,
}

enum Control {
    /// The reply this handle's `send` started.
    Own {
        token: CancellationToken,
        finished: Arc<AtomicBool>,
    },
    /// A reply an earlier send started.
    Existing { service: ChatService },
}

impl fmt::Debug for ReplyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyHandle")
            .field("chat_id", &self.chat_id)
            .field("user_message", &self.user_message.id)
            .field("assistant_message_id", &self.assistant_message_id)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl ReplyHandle {
    /// Whether this send stored the user message and started the reply (`false` when it was a
    /// repeat of an earlier send with the same client message id).
    pub fn is_new(&self) -> bool {
        self.created
    }

    /// Stops the reply if it is still running (see [`ChatSession::cancel`]); returns whether it
    /// did. Harmless when it already ended or was already cancelled.
    pub async fn cancel(&self) -> Result<bool> {
        match &self.control {
            Control::Own { token, finished } => {
                if finished.load(Ordering::Acquire) || token.is_cancelled() {
                    return Ok(false);
                }
                token.cancel();
                Ok(true)
            }
            Control::Existing { service } => {
                let running = service
                    .inner
                    .store
                    .get_message(&self.assistant_message_id)
                    .await?
                    .is_some_and(|m| m.status == MessageStatus::Streaming);
                if !running {
                    return Ok(false);
                }
                service.inner.hub.terminate(&self.chat_id).await
            }
        }
    }
}

#[async_trait]
impl ChatSession for Session {
    fn chat_id(&self) -> &ChatId {
        &self.chat_id
    }

    async fn send(&self, input: UserInput) -> Result<ReplyHandle> {
        if input.content.trim().is_empty() {
            return Err(Error::invalid("message", "the message is empty"));
        }
        let inner = &self.service.inner;
        if inner.tasks.is_closed() {
            return Err(Error::ShuttingDown);
        }
        let key = input.client_message_id.as_deref();
        // A repeat of a recent send needs neither the hub nor a write.
        if let Some(key) = key
            && let Some(user) = self.find_user_message(key).await?
        {
            return self.existing_reply(user).await;
        }
        let live = match inner.hub.start(&self.chat_id).await {
            Ok(live) => live,
            Err(Error::Busy { chat_id }) => {
                // Busy, perhaps with the very reply this send repeats.
                if let Some(key) = key
                    && let Some(user) = self.find_user_message(key).await?
                {
                    return self.existing_reply(user).await;
                }
                return Err(Error::Busy { chat_id });
            }
            Err(e) => return Err(e),
        };
        let mut user = Message::user(self.chat_id.clone(), input.content);
        if let Some(key) = key {
            user = user.with_client_message_id(key);
        }
        // One write before the reply can start: the chat (if new), the message and the reply.
        let assistant = Message::assistant_streaming(self.chat_id.clone()).replying_to(user.id);
        let appended = match inner.store.append_turn(&user, &assistant).await {
            Ok(appended) => appended,
            Err(e) => {
                // The store's error is the one to report; the hub forgets the reply either way.
                let _ = live.publisher.abort().await;
                return Err(e);
            }
        };
        if !appended.created {
            live.publisher.abort().await?;
            return self.existing_reply(appended.message).await;
        }
        self.start(live, user, assistant, false).await
    }

    async fn regenerate(&self) -> Result<ReplyHandle> {
        let inner = &self.service.inner;
        if inner.tasks.is_closed() {
            return Err(Error::ShuttingDown);
        }
        let user = self
            .last_user_message()
            .await?
            .ok_or_else(|| Error::invalid("chat", "there is no user message to answer again"))?;
        let live = inner.hub.start(&self.chat_id).await?;
        self.launch(live, user, true).await
    }

    async fn cancel(&self) -> Result<bool> {
        self.service.inner.hub.terminate(&self.chat_id).await
    }

    async fn history(&self, page: HistoryPage) -> Result<Vec<Message>> {
        self.service.inner.store.history(&self.chat_id, page).await
    }

    async fn subscribe(&self, after: Option<u64>) -> Result<Option<HubEventStream>> {
        self.service.inner.hub.subscribe(&self.chat_id, after).await
    }

    async fn is_live(&self) -> Result<bool> {
        self.service.inner.hub.is_live(&self.chat_id).await
    }
}

const PAGE: usize = 64;

impl Session {
    /// The chat's service.
    pub fn service(&self) -> &ChatService {
        &self.service
    }

    /// A recent user message with this client key (older ones are caught by `append_idempotent`).
    async fn find_user_message(&self, key: &str) -> Result<Option<Message>> {
        let recent = self
            .service
            .inner
            .store
            .history(&self.chat_id, HistoryPage::newest(PAGE))
            .await?;
        Ok(recent
            .into_iter()
            .rev()
            .find(|m| m.role == Role::User && m.client_message_id.as_deref() == Some(key)))
    }

    /// The assistant message answering `user`, searching back from the newest message.
    async fn find_reply(&self, user: &Message) -> Result<Option<Message>> {
        let store = &self.service.inner.store;
        let mut before = None;
        loop {
            let page = store
                .history(
                    &self.chat_id,
                    HistoryPage {
                        limit: PAGE,
                        before,
                    },
                )
                .await?;
            // The newest reply wins: a regenerated one replaces the earlier ones.
            if let Some(reply) = page.iter().rev().find(|m| m.reply_to == Some(user.id)) {
                return Ok(Some(reply.clone()));
            }
            // The reply comes after its user message: once that is passed, there is none.
            if page.len() < PAGE || page.iter().any(|m| m.id == user.id) {
                return Ok(None);
            }
            before = page.first().map(|m| m.id);
        }
    }

    /// The handle for a send that repeats `user`: its live reply, a summary of its finished one,
    /// or (when the earlier send stored the message but never got to start a reply) a new reply.
    async fn existing_reply(&self, user: Message) -> Result<ReplyHandle> {
        let inner = &self.service.inner;
        let Some(assistant) = self.find_reply(&user).await? else {
            let live = inner.hub.start(&self.chat_id).await?;
            return self.launch(live, user, false).await;
        };
        let control = Control::Existing {
            service: self.service.clone(),
        };
        if assistant.status == MessageStatus::Streaming
            && let Some(mut events) = inner.hub.subscribe(&self.chat_id, None).await?
        {
            // Only follow the live reply if it is this one.
            if let Some(Ok(first)) = events.next().await
                && matches!(&*first.payload, EventPayload::Start { message_id, .. } if *message_id == assistant.id)
            {
                return Ok(ReplyHandle {
                    chat_id: self.chat_id.clone(),
                    user_message: user,
                    assistant_message_id: assistant.id,
                    events: stream::once(async { Ok(first) }).chain(events).boxed(),
                    created: false,
                    control,
                });
            }
        }
        // Finished (or not live here): re-read, it may have finished meanwhile.
        let assistant = inner
            .store
            .get_message(&assistant.id)
            .await?
            .unwrap_or(assistant);
        let events = summary_events(&user, &assistant);
        Ok(ReplyHandle {
            chat_id: self.chat_id.clone(),
            assistant_message_id: assistant.id,
            user_message: user,
            events: stream::iter(events.into_iter().map(Ok)).boxed(),
            created: false,
            control,
        })
    }

    /// The newest user message of the chat.
    async fn last_user_message(&self) -> Result<Option<Message>> {
        let store = &self.service.inner.store;
        let mut before = None;
        loop {
            let page = store
                .history(
                    &self.chat_id,
                    HistoryPage {
                        limit: PAGE,
                        before,
                    },
                )
                .await?;
            if let Some(user) = page.iter().rev().find(|m| m.role == Role::User) {
                return Ok(Some(user.clone()));
            }
            if page.len() < PAGE {
                return Ok(None);
            }
            before = page.first().map(|m| m.id);
        }
    }

    /// Starts generating the reply to `user`; with `replacing`, the earlier replies to `user`
    /// are left out of the request.
    async fn launch(&self, live: LiveReply, user: Message, replacing: bool) -> Result<ReplyHandle> {
        let assistant = Message::assistant_streaming(self.chat_id.clone()).replying_to(user.id);
        if let Err(e) = self.service.inner.store.append(&assistant).await {
            let _ = live.publisher.abort().await;
            return Err(e);
        }
        self.start(live, user, assistant, replacing).await
    }

    /// Starts the reply task for `assistant`, already stored as `streaming`. Should that fail,
    /// the stored reply is marked `failed` with the error, so it does not wait for crash
    /// recovery.
    async fn start(
        &self,
        live: LiveReply,
        user: Message,
        mut assistant: Message,
        replacing: bool,
    ) -> Result<ReplyHandle> {
        let inner = &self.service.inner;
        let LiveReply {
            mut publisher,
            cancel,
        } = live;
        let started = async {
            let request = self.build_request(replacing.then_some(user.id)).await?;
            publisher
                .publish(EventPayload::Start {
                    chat_id: self.chat_id.clone(),
                    message_id: assistant.id,
                    user_message_id: user.id,
                })
                .await?;
            let events = inner
                .hub
                .subscribe(&self.chat_id, None)
                .await?
                .ok_or_else(|| Error::Hub {
                    backend: inner.hub.backend(),
                    message: "a reply just started is not in the hub".into(),
                    source: None,
                })?;
            Ok::<_, Error>((request, events))
        }
        .await;
        let (request, events) = match started {
            Ok(started) => started,
            Err(e) => {
                assistant.status = MessageStatus::Failed;
                assistant.error = Some(e.to_string());
                assistant.updated_at = chrono::Utc::now();
                persist_final(inner, &assistant).await;
                // The error that stopped the start is the one to report; an abort that fails
                // too leaves the hub to end the reply when the publisher drops.
                let _ = publisher.abort().await;
                return Err(e);
            }
        };
        let finished = Arc::new(AtomicBool::new(false));
        let run = ReplyRun {
            service: self.service.inner.clone(),
            publisher,
            cancel: cancel.clone(),
            finished: finished.clone(),
            message: assistant.clone(),
            checkpoint_write: None,
        };
        inner.tasks.spawn(run.run(request));
        Ok(ReplyHandle {
            chat_id: self.chat_id.clone(),
            user_message: user,
            assistant_message_id: assistant.id,
            events,
            created: true,
            control: Control::Own {
                token: cancel,
                finished,
            },
        })
    }

    /// The request: the system prompt, then the newest history that fits the budget.
    async fn build_request(&self, superseded_replies_to: Option<MessageId>) -> Result<ChatRequest> {
        let inner = &self.service.inner;
        let budget = inner.settings.budget;
        let limit = budget.limit();
        let system: Option<RequestMessage> = inner
            .settings
            .system_prompt
            .as_ref()
            .map(|p| RequestMessage::new(Role::System, p.clone()));
        let mut used = system.as_ref().map_or(0, |m| budget.cost(m));
        let mut picked = Vec::new();
        let mut answered: std::collections::HashSet<MessageId> =
            superseded_replies_to.into_iter().collect();
        let mut before = None;
        'pages: loop {
            let page = inner
                .store
                .history(
                    &self.chat_id,
                    HistoryPage {
                        limit: PAGE,
                        before,
                    },
                )
                .await?;
            for m in page.iter().rev() {
                // The reply being generated (and any stale one) is not context; an assistant
                // message that ended early is, with the part it got to.
                let empty_reply = m.role == Role::Assistant
                    && (m.status == MessageStatus::Streaming
                        || (m.content.is_empty() && m.tool_calls.is_empty()));
                // Only the newest reply to a user message is context: a regenerated reply
                // replaces the earlier ones.
                let superseded = m.role == Role::Assistant
                    && !empty_reply
                    && m.reply_to.is_some_and(|u| !answered.insert(u));
                if empty_reply || superseded {
                    continue;
                }
                let message = RequestMessage::from(m);
                let cost = budget.cost(&message);
                if !picked.is_empty() && used.saturating_add(cost) > limit {
                    break 'pages;
                }
                used = used.saturating_add(cost);
                picked.push(message);
            }
            if page.len() < PAGE {
                break;
            }
            before = page.first().map(|m| m.id);
        }
        picked.extend(system);
        picked.reverse();
        let mut request = ChatRequest::new(picked);
        request.model.clone_from(&inner.settings.model);
        Ok(request)
    }
}

/// The events of a reply that is no longer live, rebuilt from its stored message.
fn summary_events(user: &Message, m: &Message) -> Vec<HubEvent> {
    let mut payloads = vec![EventPayload::Start {
        chat_id: m.chat_id.clone(),
        message_id: m.id,
        user_message_id: user.id,
    }];
    if let Some(reasoning) = m.reasoning.as_ref().filter(|r| !r.is_empty()) {
        payloads.push(EventPayload::Delta(Delta::reasoning(reasoning.clone())));
    }
    if !m.content.is_empty() {
        payloads.push(EventPayload::Delta(Delta::text(m.content.clone())));
    }
    for call in &m.tool_calls {
        payloads.push(EventPayload::Delta(Delta::ToolCall(crate::ToolCallDelta {
            index: call.index,
            id: Some(call.id.clone()),
            name: Some(call.name.clone()),
            arguments: call.arguments.clone(),
        })));
    }
    let status = match m.status {
        // Not live anywhere the hub can see: the process generating it is gone.
        MessageStatus::Streaming => MessageStatus::Interrupted,
        s => s,
    };
    if status == MessageStatus::Failed {
        payloads.push(EventPayload::Error {
            code: "failed".into(),
            message: m.error.clone().unwrap_or_default(),
        });
    }
    payloads.push(EventPayload::Done {
        message_id: m.id,
        status,
        finish_reason: m.finish_reason,
        usage: m.usage,
    });
    payloads
        .into_iter()
        .zip(1..)
        .map(|(p, seq)| HubEvent::new(seq, p))
        .collect()
}

/// How a reply's generation ended.
enum End {
    Complete,
    Cancelled,
    Failed(Error),
    /// The service shut down before the reply finished.
    Interrupted,
}

/// The task of one reply: provider stream in, hub events and store checkpoints out.
struct ReplyRun {
    service: Arc<Inner>,
    publisher: Box<dyn ReplyPublisher>,
    cancel: CancellationToken,
    finished: Arc<AtomicBool>,
    /// The assistant message as first stored; the reply's content lives in the accumulator.
    message: Message,
    /// The checkpoint write in flight, if any: at most one at a time, and the reply never waits
    /// for it (a slow store must not slow the stream).
    checkpoint_write: Option<tokio::task::JoinHandle<()>>,
}

async fn wait_write(write: &mut Option<tokio::task::JoinHandle<()>>) {
    match write {
        Some(w) => {
            let _ = w.await;
        }
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl ReplyRun {
    async fn run(mut self, request: ChatRequest) {
        let service = self.service.clone();
        let settings = &service.settings;
        let mut upstream = service.provider.stream(request);
        let mut acc = Accumulator::new();
        let token = self.cancel.clone();
        let mut cancelled = pin!(token.cancelled());
        let shutdown = service.shutdown.clone();
        let mut shutting_down = pin!(shutdown.cancelled());
        let mut checkpoint_due = pin!(tokio::time::sleep(Duration::ZERO));
        let mut unsaved: u64 = 0;
        let mut watch = settings.unwatched_timeout.map(|t| {
            let mut i = tokio::time::interval((t / 4).max(Duration::from_millis(1)));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut unwatched_since: Option<Instant> = None;
        let mut checkpoint_owed = false;
        let end = loop {
            tokio::select! {
                biased;
                () = &mut cancelled => break End::Cancelled,
                () = &mut shutting_down => break End::Interrupted,
                () = &mut checkpoint_due, if unsaved > 0 && !checkpoint_owed => {
                    if self.checkpoint(&acc) {
                        unsaved = 0;
                    } else {
                        checkpoint_owed = true;
                    }
                }
                _ = wait_write(&mut self.checkpoint_write), if self.checkpoint_write.is_some() => {
                    self.checkpoint_write = None;
                    // A checkpoint that came due during the write goes now, with all since.
                    if checkpoint_owed && self.checkpoint(&acc) {
                        checkpoint_owed = false;
                        unsaved = 0;
                    }
                }
                () = tick(&mut watch) => {
                    if self.unwatched_for_too_long(&mut unwatched_since).await {
                        break End::Cancelled;
                    }
                }
                item = upstream.next() => match item {
                    Some(Ok(delta)) => {
                        acc.push(&delta);
                        if unsaved == 0 {
                            checkpoint_due
                                .as_mut()
                                .reset(Instant::now() + settings.checkpoint_every);
                        }
                        unsaved += 1;
                        if let Err(e) = self.publisher.publish(EventPayload::Delta(delta)).await {
                            tracing::warn!(chat_id = %self.message.chat_id, error = %e, "hub publish failed");
                        }
                        if unsaved >= settings.checkpoint_deltas && !checkpoint_owed {
                            if self.checkpoint(&acc) {
                                unsaved = 0;
                            } else {
                                checkpoint_owed = true;
                            }
                        }
                        // A provider that is always ready (in memory, or a fast local server)
                        // must not starve other tasks of this worker.
                        tokio::task::consume_budget().await;
                    }
                    Some(Err(e)) => break End::Failed(e),
                    None if acc.finish_reason().is_some() => break End::Complete,
                    None => break End::Failed(Error::Truncated {
                        provider: service.provider.name().to_owned(),
                    }),
                },
            }
        };
        // Closes the upstream connection now, before anything else.
        drop(upstream);
        // Boxed: the ending's state is only needed at the end, not for the whole live reply.
        Box::pin(self.finish(acc, end)).await;
    }

    async fn unwatched_for_too_long(&self, since: &mut Option<Instant>) -> bool {
        let Some(timeout) = self.service.settings.unwatched_timeout else {
            return false;
        };
        match self.service.hub.watchers(&self.message.chat_id).await {
            Ok(Some(0)) => {
                let since = *since.get_or_insert_with(Instant::now);
                if since.elapsed() >= timeout {
                    tracing::info!(chat_id = %self.message.chat_id, "cancelling a reply nobody watches");
                    return true;
                }
            }
            Ok(_) => *since = None,
            Err(e) => tracing::warn!(error = %e, "could not count a reply's watchers"),
        }
        false
    }

    /// Starts writing the reply so far, unless a write is still in flight (then returns
    /// `false`, and the caller tries again when it is done).
    fn checkpoint(&mut self, acc: &Accumulator) -> bool {
        if self
            .checkpoint_write
            .as_ref()
            .is_some_and(|w| !w.is_finished())
        {
            return false;
        }
        let mut snapshot = self.message.clone();
        acc.apply_to(&mut snapshot);
        snapshot.updated_at = Utc::now();
        let store = self.service.store.clone();
        self.checkpoint_write = Some(tokio::spawn(async move {
            if let Err(e) = store.update(&snapshot).await {
                tracing::warn!(
                    chat_id = %snapshot.chat_id,
                    message_id = %snapshot.id,
                    error = %e,
                    "checkpoint failed; the reply goes on"
                );
            }
        }));
        true
    }

    async fn finish(self, acc: Accumulator, end: End) {
        let ReplyRun {
            service,
            mut publisher,
            finished,
            message,
            checkpoint_write,
            ..
        } = self;
        // The final write must land after any checkpoint, never be overwritten by one.
        if let Some(write) = checkpoint_write {
            let _ = write.await;
        }
        let (status, error) = match end {
            End::Complete => (MessageStatus::Complete, None),
            End::Cancelled => (MessageStatus::Cancelled, None),
            End::Failed(e) => (MessageStatus::Failed, Some(e)),
            End::Interrupted => (MessageStatus::Interrupted, Some(Error::ShuttingDown)),
        };
        if let Some(e) = &error
            && let Err(hub_error) = publisher.publish(EventPayload::error(e)).await
        {
            tracing::warn!(error = %hub_error, "hub publish failed");
        }
        let finish_reason = acc.finish_reason();
        let usage = acc.usage();
        let mut message = acc.into_message(message);
        message.status = status;
        message.error = error.map(|e| e.to_string());
        message.updated_at = Utc::now();
        persist_final(&service, &message).await;
        finished.store(true, Ordering::Release);
        let done = EventPayload::Done {
            message_id: message.id,
            status,
            finish_reason,
            usage,
        };
        if let Err(e) = publisher.publish(done).await {
            tracing::warn!(error = %e, "hub publish of the end of a reply failed");
        }
    }
}

/// The final write, retried a few times: it is the one that matters.
async fn persist_final(service: &Inner, message: &Message) {
    const ATTEMPTS: u32 = 4;
    let mut wait = Duration::from_millis(50);
    for attempt in 1..=ATTEMPTS {
        match service.store.update(message).await {
            Ok(()) => return,
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(message_id = %message.id, attempt, error = %e, "final write failed; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => {
                tracing::error!(message_id = %message.id, error = %e, "final write failed; the message stays as last checkpointed");
            }
        }
    }
}
