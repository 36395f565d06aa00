//! Conversations: [`ChatService`] hands out [`ChatSession`]s by chat key (an owner and a chat
//! id, or a chat id alone for the anonymous owner); a session sends user messages and streams the
//! replies. Sessions of two owners' chats of one id never meet: not in the store, not in the hub.
//!
//! One turn, as [`ChatSession::send`] does it:
//!
//! 1. the user message is persisted (once per client message id: a repeat returns the existing
//!    reply instead of starting a second one);
//! 2. the assistant message is created with status `streaming` and persisted;
//! 3. the request is built from the chat's history, read newest first until the
//!    [`ContextBudget`] is spent — by default the model's context window ([`context_window`])
//!    less the reply's room, counted by the model's [`TokenCounter`] (the system prompt and the
//!    newest user message are always sent);
//! 4. the reply runs in its own task: deltas go to the [`StreamHub`](crate::StreamHub) as numbered events, the
//!    growing message is checkpointed to the store at a bounded rate, and the final state is
//!    persisted once (`complete`, `cancelled` or `failed`) before the `done` event. Should the
//!    model refuse the request as too long
//!    ([`Error::ContextLengthExceeded`](crate::Error::ContextLengthExceeded)) before any output,
//!    the request is sent once more with about half its history (the oldest left out of the
//!    request, not out of the chat).
//!
//! The reply does not depend on anyone watching it: dropping every subscriber (a closed browser
//! tab) leaves it running to the end. Only a cancel stops it (or, when configured, nobody watching
//! for [`unwatched_timeout`](ChatServiceBuilder::unwatched_timeout)).
//!
//! ```
//! use std::sync::Arc;
//! use chatstream::{ChatId, ChatService, ChatSession, HubEvent, EventPayload, Delta,
//!     provider::{Script, ScriptedProvider},
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
//! let session = service.session(ChatId::new("support-1")?);
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

mod chat;
mod context;
mod handle;
mod options;
mod recovery;
mod reply;
mod service;
mod telemetry;
mod tokens;

use std::fmt;

use async_trait::async_trait;

use crate::{
    ChatId, ChatKey, ContentPart, Message, Result, hub::HubEventStream, store::HistoryPage,
};

pub use chat::Session;
pub use context::ContextBudget;
pub use handle::ReplyHandle;
pub use options::SendOptions;
pub use service::{ChatService, ChatServiceBuilder};
pub use tokens::{DEFAULT_CONTEXT_WINDOW, TokenCounter, context_window};

/// What the user sends.
///
/// ```
/// use chatstream::UserInput;
///
/// let input = UserInput::new("Summarise this thread")
///     .with_client_message_id("c-42") // a retried send stores one message, starts one reply
///     .with_model("gpt-4o"); // this reply only; the service's model otherwise
/// assert_eq!(input.options.model.as_deref(), Some("gpt-4o"));
/// ```
///
/// With images, after the text:
///
/// ```
/// use chatstream::UserInput;
///
/// let input = UserInput::new("What differs between these two?")
///     .with_image_url("https://example.com/before.png")
///     .with_image_base64("image/png", "iVBORw0KGgo=");
/// assert_eq!(input.images.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct UserInput {
    /// The message text (may be empty when there are images).
    pub content: String,
    /// Images sent with the text, in order ([`ContentPart::ImageUrl`] or
    /// [`ContentPart::ImageBase64`]); the stored message's [`parts`](Message::parts) are the
    /// text, then these.
    pub images: Vec<ContentPart>,
    /// The client's idempotency key: sending the same key twice in a chat stores one message and
    /// starts one reply.
    pub client_message_id: Option<String>,
    /// How to ask for this reply (default: the service's settings).
    pub options: SendOptions,
}

impl UserInput {
    /// A message with no idempotency key.
    pub fn new(content: impl Into<String>) -> Self {
        UserInput {
            content: content.into(),
            images: Vec::new(),
            client_message_id: None,
            options: SendOptions::default(),
        }
    }

    /// Adds an image the provider fetches by URL (`https://…` or a `data:` URL).
    #[must_use]
    pub fn with_image_url(mut self, url: impl Into<String>) -> Self {
        self.images.push(ContentPart::image_url(url));
        self
    }

    /// Adds an inline image: its media type (`image/png`, `image/jpeg`, `image/gif`,
    /// `image/webp`) and its bytes in base64.
    #[must_use]
    pub fn with_image_base64(
        mut self,
        media_type: impl Into<String>,
        data: impl Into<String>,
    ) -> Self {
        self.images
            .push(ContentPart::image_base64(media_type, data));
        self
    }

    /// The user message this input stores in `chat`: its text, then its images.
    pub(crate) fn message(&self, chat: &ChatKey) -> Message {
        if self.images.is_empty() {
            return Message::user(chat, self.content.clone());
        }
        let text = (!self.content.is_empty()).then(|| ContentPart::text(self.content.clone()));
        Message::with_parts(
            chat,
            crate::Role::User,
            text.into_iter().chain(self.images.iter().cloned()),
        )
    }

    /// Sets the client's idempotency key.
    #[must_use]
    pub fn with_client_message_id(mut self, key: impl Into<String>) -> Self {
        self.client_message_id = Some(key.into());
        self
    }

    /// Asks for this model for this reply only.
    #[must_use]
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.options.model = Some(model.into());
        self
    }

    /// Sets every option of this reply.
    #[must_use]
    pub fn with_options(mut self, options: SendOptions) -> Self {
        self.options = options;
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
    /// The chat this session talks in: its owner and id.
    fn key(&self) -> &ChatKey;

    /// The id of the chat this session talks in (among its owner's chats).
    fn chat_id(&self) -> &ChatId {
        &self.key().id
    }

    /// Sends a user message and starts the reply (creating the chat if it does not exist yet).
    ///
    /// Fails with [`Error::Busy`](crate::Error::Busy) while another reply is live in the chat. With a client message
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
    /// [`Error::Busy`](crate::Error::Busy) while a reply is live, and with [`Error::Invalid`](crate::Error::Invalid) when the chat has no
    /// user message.
    async fn regenerate(&self) -> Result<ReplyHandle> {
        self.regenerate_with(SendOptions::default()).await
    }

    /// [`regenerate`](Self::regenerate) with these options (another model, say).
    async fn regenerate_with(&self, options: SendOptions) -> Result<ReplyHandle>;

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

crate::forward::forward_impls!(ChatSession,
    sync {
        fn key(&self) -> &ChatKey;
        fn chat_id(&self) -> &ChatId;
    }
    async {
        fn send(&self, input: UserInput) -> Result<ReplyHandle>;
        fn regenerate(&self) -> Result<ReplyHandle>;
        fn regenerate_with(&self, options: SendOptions) -> Result<ReplyHandle>;
        fn cancel(&self) -> Result<bool>;
        fn history(&self, page: HistoryPage) -> Result<Vec<Message>>;
        fn subscribe(&self, after: Option<u64>) -> Result<Option<HubEventStream>>;
        fn is_live(&self) -> Result<bool>;
    }
);
