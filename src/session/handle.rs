//! [`ReplyHandle`]: what a send returns — a reply's ids, its events and a way to stop it.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio_util::sync::CancellationToken;

use crate::{
    ChatId, Delta, Message, MessageId, MessageStatus, Result,
    hub::{EventPayload, HubEvent, HubEventStream},
};

use super::ChatService;
#[cfg(doc)]
use super::ChatSession;

/// A reply, as returned by [`ChatSession::send`]: its ids, its events and a way to stop it.
pub struct ReplyHandle {
    /// The chat's id (its owner is the user message's, [`Message::owner`]).
    pub chat_id: ChatId,
    /// The user message, as stored.
    pub user_message: Message,
    /// The assistant message being (or that was) generated.
    pub assistant_message_id: MessageId,
    /// The reply's events from the start, ending after `done`. Dropping it does not stop the
    /// reply.
    pub events: HubEventStream,
    pub(super) created: bool,
    pub(super) control: Control,
}

pub(super) enum Control {
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
                service
                    .inner
                    .hub
                    .terminate_reply(&self.user_message.key(), &self.assistant_message_id)
                    .await
            }
        }
    }
}

/// The events of a reply that is no longer live, rebuilt from its stored message.
pub(super) fn summary_events(user: &Message, m: &Message) -> Vec<HubEvent> {
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
