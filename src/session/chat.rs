//! [`Session`]: the default [`ChatSession`], one chat of a [`ChatService`].

use std::sync::{Arc, atomic::AtomicBool};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt, stream};

use crate::{
    ChatKey, ChatRequest, Error, Message, MessageId, MessageStatus, MessageStoreExt, Result, Role,
    hub::{EventPayload, HubEventStream, LiveReply},
    store::HistoryPage,
};

use super::{
    ChatService, ChatSession, ReplyHandle, SendOptions, UserInput,
    context::{Built, Plan, build_request},
    handle::{Control, summary_events},
    reply::{ReplyRun, persist_final},
};

/// The default [`ChatSession`]: one chat of a [`ChatService`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Session {
    pub(super) service: ChatService,
    pub(super) key: ChatKey,
}

#[async_trait]
impl ChatSession for Session {
    fn key(&self) -> &ChatKey {
        &self.key
    }

    async fn send(&self, mut input: UserInput) -> Result<ReplyHandle> {
        if input.content.trim().is_empty() && input.images.is_empty() {
            return Err(Error::invalid("message", "the message is empty"));
        }
        if let Some(part) = input.images.iter().find(|p| !p.is_image()) {
            return Err(Error::invalid(
                "message",
                format!("an image of the message is not an image: {part:?}"),
            ));
        }
        let inner = &self.service.inner;
        let options = std::mem::take(&mut input.options).over(&inner.settings.defaults);
        options.validate()?;
        if inner.tasks.is_closed() {
            return Err(Error::ShuttingDown);
        }
        let key = input.client_message_id.as_deref();
        // A repeat of a recent send needs neither the hub nor a write.
        if let Some(key) = key
            && let Some(user) = self.find_user_message(key).await?
        {
            return self.existing_reply(user, &options).await;
        }
        let mut user = input.message(&self.key);
        if let Some(key) = key {
            user = user.with_client_message_id(key);
        }
        let assistant = Message::assistant_streaming(&self.key).replying_to(user.id);
        let live = match inner.hub.start(&self.key, assistant.id).await {
            Ok(live) => live,
            Err(Error::Busy { chat_id }) => {
                // Busy, perhaps with the very reply this send repeats.
                if let Some(key) = key
                    && let Some(user) = self.find_user_message(key).await?
                {
                    return self.existing_reply(user, &options).await;
                }
                return Err(Error::Busy { chat_id });
            }
            Err(e) => return Err(e),
        };
        // One write before the reply can start: the chat (if new), the message and the reply.
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
            return self.existing_reply(appended.message, &options).await;
        }
        // A chat's first turn is its whole history: the reply starts without reading it back.
        let first_turn = appended.first_in_chat;
        self.start(live, user, assistant, false, first_turn, &options)
            .await
    }

    async fn regenerate_with(&self, options: SendOptions) -> Result<ReplyHandle> {
        let inner = &self.service.inner;
        if inner.tasks.is_closed() {
            return Err(Error::ShuttingDown);
        }
        let options = options.over(&inner.settings.defaults);
        options.validate()?;
        let user = self
            .last_user_message()
            .await?
            .ok_or_else(|| Error::invalid("chat", "there is no user message to answer again"))?;
        self.launch(user, true, &options).await
    }

    async fn cancel(&self) -> Result<bool> {
        self.service.inner.hub.terminate(&self.key).await
    }

    async fn history(&self, page: HistoryPage) -> Result<Vec<Message>> {
        self.service.inner.store.history(&self.key, page).await
    }

    async fn subscribe(&self, after: Option<u64>) -> Result<Option<HubEventStream>> {
        self.service.inner.hub.subscribe(&self.key, after).await
    }

    async fn is_live(&self) -> Result<bool> {
        self.service.inner.hub.is_live(&self.key).await
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
            .history(&self.key, HistoryPage::newest(PAGE))
            .await?;
        Ok(recent
            .into_iter()
            .rev()
            .find(|m| m.role == Role::User && m.client_message_id.as_deref() == Some(key)))
    }

    /// The assistant message answering `user`, searching back from the newest message.
    async fn find_reply(&self, user: &Message) -> Result<Option<Message>> {
        let mut messages = self.service.inner.store.newest_first(&self.key);
        while let Some(m) = messages.try_next().await? {
            // The newest reply wins: a regenerated one replaces the earlier ones.
            if m.reply_to == Some(user.id) {
                return Ok(Some(m));
            }
            // The reply comes after its user message: once that is passed, there is none.
            if m.id == user.id {
                break;
            }
        }
        Ok(None)
    }

    /// The handle for a send that repeats `user`: its live reply, a summary of its finished one,
    /// or (when the earlier send stored the message but never got to start a reply) a new reply.
    async fn existing_reply(&self, user: Message, options: &SendOptions) -> Result<ReplyHandle> {
        let inner = &self.service.inner;
        let Some(assistant) = self.find_reply(&user).await? else {
            return self.launch(user, false, options).await;
        };
        let control = Control::Existing {
            service: self.service.clone(),
        };
        if assistant.status == MessageStatus::Streaming
            && let Some(events) = inner.hub.subscribe(&self.key, None).await?
            // Subscribed first, asked second: a reply the hub still names as live after the
            // subscription began is the one subscribed to (a newer reply could only have
            // replaced it after it finished).
            && inner
                .hub
                .live_reply(&self.key)
                .await?
                .is_some_and(|live| live.message_id == assistant.id)
        {
            return Ok(ReplyHandle {
                chat_id: self.key.id.clone(),
                user_message: user,
                assistant_message_id: assistant.id,
                events,
                created: false,
                control,
            });
        }
        // Finished (or not live here): re-read, it may have finished meanwhile.
        let assistant = inner
            .store
            .get_message(&self.key.owner, &assistant.id)
            .await?
            .unwrap_or(assistant);
        let events = summary_events(&user, &assistant);
        Ok(ReplyHandle {
            chat_id: self.key.id.clone(),
            assistant_message_id: assistant.id,
            user_message: user,
            events: stream::iter(events.into_iter().map(Ok)).boxed(),
            created: false,
            control,
        })
    }

    /// The newest user message of the chat.
    async fn last_user_message(&self) -> Result<Option<Message>> {
        let mut messages = self.service.inner.store.newest_first(&self.key);
        while let Some(m) = messages.try_next().await? {
            if m.role == Role::User {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// Starts generating the reply to `user`; with `replacing`, the earlier replies to `user`
    /// are left out of the request.
    async fn launch(
        &self,
        user: Message,
        replacing: bool,
        options: &SendOptions,
    ) -> Result<ReplyHandle> {
        let assistant = Message::assistant_streaming(&self.key).replying_to(user.id);
        let live = self
            .service
            .inner
            .hub
            .start(&self.key, assistant.id)
            .await?;
        if let Err(e) = self.service.inner.store.append(&assistant).await {
            let _ = live.publisher.abort().await;
            return Err(e);
        }
        self.start(live, user, assistant, replacing, false, options)
            .await
    }

    /// The request for the next reply, with `options`: the system prompt, the history the
    /// context budget holds (leaving out the replies to `superseded_replies_to`), and the
    /// options. With `first_turn`, the chat holds that user message alone (and the reply being
    /// generated), so the history is not read from the store.
    async fn build_request(
        &self,
        options: &SendOptions,
        superseded_replies_to: Option<MessageId>,
        first_turn: Option<&Message>,
    ) -> Result<(ChatRequest, Built)> {
        let inner = &self.service.inner;
        let settings = &inner.settings;
        let system = match &options.system {
            Some(system) => Some(system.as_str()).filter(|s| !s.is_empty()),
            None => settings.system_prompt.as_deref(),
        };
        let model = options
            .model
            .as_deref()
            .or(settings.model.as_deref())
            .unwrap_or_else(|| inner.provider.default_model());
        let limit = options.context_budget.unwrap_or(settings.budget).limit(
            model,
            options.max_output_tokens,
            options.thinking_budget,
        );
        if let Some(limit) = &limit {
            limit.load().await;
        }
        // Tool definitions take their share of the window too.
        let overhead = match (&limit, &options.tools) {
            (Some(limit), Some(tools)) => tools
                .iter()
                .map(|t| limit.cost_text(&serde_json::to_string(t).unwrap_or_default()))
                .sum(),
            _ => 0,
        };
        let plan = Plan {
            system,
            model: settings.model.as_deref(),
            limit,
            overhead,
        };
        let history = match first_turn {
            Some(user) => stream::iter([Ok(user.clone())]).boxed(),
            None => inner.store.newest_first(&self.key),
        };
        let (mut request, built) = build_request(history, &plan, superseded_replies_to).await?;
        // The system prompt is already the one these options ask for: the first message.
        options.apply_to(&mut request, system.is_some());
        Ok((request, built))
    }

    /// Starts the reply task for `assistant`, already stored as `streaming`; with `first_turn`,
    /// `user` is the chat's first message. Should that fail, the stored reply is marked
    /// `failed` with the error, so it does not wait for crash recovery.
    async fn start(
        &self,
        live: LiveReply,
        user: Message,
        mut assistant: Message,
        replacing: bool,
        first_turn: bool,
        options: &SendOptions,
    ) -> Result<ReplyHandle> {
        let inner = &self.service.inner;
        let LiveReply {
            mut publisher,
            cancel,
        } = live;
        let started = async {
            let (request, built) = self
                .build_request(
                    options,
                    replacing.then_some(user.id),
                    first_turn.then_some(&user),
                )
                .await?;
            publisher
                .publish(EventPayload::Start {
                    chat_id: self.key.id.clone(),
                    message_id: assistant.id,
                    user_message_id: user.id,
                })
                .await?;
            let events = inner
                .hub
                .subscribe(&self.key, None)
                .await?
                .ok_or_else(|| Error::Hub {
                    backend: inner.hub.backend(),
                    message: "a reply just started is not in the hub".into(),
                    source: None,
                })?;
            Ok::<_, Error>((request, built, events))
        }
        .await;
        let (request, built, events) = match started {
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
        inner.tasks.spawn(run.run(request, built));
        Ok(ReplyHandle {
            chat_id: self.key.id.clone(),
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
}
