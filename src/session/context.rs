//! The context window: how much history a request carries, and building the request.

use std::collections::HashSet;

use futures::TryStreamExt;

use crate::{
    ChatKey, ChatRequest, MessageId, MessageStatus, MessageStore, MessageStoreExt, RequestMessage,
    Result, Role,
};

use super::service::Settings;

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
    /// What an image costs, in characters of text: about the 1,000 tokens a large image costs
    /// at the common providers.
    pub const IMAGE_CHARS: usize = 4_000;

    pub(super) fn limit(&self) -> usize {
        match self {
            ContextBudget::Chars(n) | ContextBudget::Tokens(n) => *n,
            ContextBudget::Unlimited => usize::MAX,
        }
    }

    /// What one message costs against this budget. An image counts as
    /// [`IMAGE_CHARS`](Self::IMAGE_CHARS) characters, whatever its size (providers bill an
    /// image by its pixels, not by the bytes sent).
    pub fn cost(&self, message: &RequestMessage) -> usize {
        let images = message.parts.iter().filter(|p| p.is_image()).count();
        let chars = message.content.chars().count()
            + images * Self::IMAGE_CHARS
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

/// The request for a reply in `chat`: the system prompt, then the newest history that fits the
/// budget. With `superseded_replies_to`, the replies already given to that user message are left
/// out (a regenerated reply replaces them).
pub(super) async fn build_request(
    store: &dyn MessageStore,
    chat: &ChatKey,
    settings: &Settings,
    superseded_replies_to: Option<MessageId>,
) -> Result<ChatRequest> {
    let budget = settings.budget;
    let limit = budget.limit();
    let system: Option<RequestMessage> = settings
        .system_prompt
        .as_ref()
        .map(|p| RequestMessage::new(Role::System, p.clone()));
    let mut used = system.as_ref().map_or(0, |m| budget.cost(m));
    let mut picked = Vec::new();
    let mut answered: HashSet<MessageId> = superseded_replies_to.into_iter().collect();
    let mut messages = store.newest_first(chat);
    while let Some(m) = messages.try_next().await? {
        // The reply being generated (and any stale one) is not context; an assistant message
        // that ended early is, with the part it got to.
        let empty_reply = m.role == Role::Assistant
            && (m.status == MessageStatus::Streaming
                || (m.content.is_empty() && m.tool_calls.is_empty()));
        // Only the newest reply to a user message is context: a regenerated reply replaces the
        // earlier ones.
        let superseded = m.role == Role::Assistant
            && !empty_reply
            && m.reply_to.is_some_and(|u| !answered.insert(u));
        if empty_reply || superseded {
            continue;
        }
        let message = RequestMessage::from(&m);
        let cost = budget.cost(&message);
        if !picked.is_empty() && used.saturating_add(cost) > limit {
            break;
        }
        used = used.saturating_add(cost);
        picked.push(message);
    }
    picked.extend(system);
    picked.reverse();
    let mut request = ChatRequest::new(picked);
    request.model.clone_from(&settings.model);
    Ok(request)
}
