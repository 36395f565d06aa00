//! [`MemoryStore`]: chats and messages in process memory.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Appended, ChatPage, HistoryPage, MessageStore};
use crate::{
    Chat, ChatId, ChatKey, Error, Message, MessageId, MessageStatus, Result, Role, UserId,
};

#[derive(Debug, Default)]
struct ChatEntry {
    chat: Option<Chat>,
    next_seq: u64,
    /// Messages in order, by per-chat sequence number.
    order: BTreeMap<u64, MessageId>,
    by_client_key: HashMap<String, MessageId>,
}

#[derive(Debug, Default)]
struct Inner {
    chats: HashMap<ChatKey, ChatEntry>,
    /// Every owner's messages: ids are unique store-wide, and each message carries its owner,
    /// which every lookup checks.
    messages: HashMap<MessageId, (u64, Message)>,
}

/// A store that keeps everything in memory: always compiled, no dependencies, lost on exit.
///
/// Cheap to clone: clones share the same data.
///
/// ```
/// use chatstream::{Message, MessageStore, UserId, store::{HistoryPage, MemoryStore}};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
/// let store = MemoryStore::new();
/// let chat = store.create_chat(&UserId::anonymous(), None, Some("Hello".into())).await?;
/// store.append(&Message::user(chat.key(), "hi")).await?;
/// assert_eq!(store.history(&chat.key(), HistoryPage::default()).await?.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves the maps consistent (every write is a
        // few infallible inserts), so poisoning is safe to ignore.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn not_found(what: &'static str, id: impl ToString) -> Error {
    Error::NotFound {
        what,
        id: id.to_string(),
    }
}

impl Inner {
    /// Stores `message` in its (existing) chat; its sequence number in the chat.
    fn push(&mut self, message: &Message) -> Result<u64> {
        if self.messages.contains_key(&message.id) {
            return Err(Error::AlreadyExists {
                what: "message",
                id: message.id.to_string(),
            });
        }
        let entry = self
            .chats
            .get_mut(&message.key())
            .filter(|e| e.chat.is_some())
            .ok_or_else(|| not_found("chat", &message.chat_id))?;
        if let Some(key) = &message.client_message_id {
            // One message per client message id and chat, as the SQL backends' unique
            // constraint enforces.
            if entry.by_client_key.contains_key(key) {
                return Err(Error::AlreadyExists {
                    what: "message",
                    id: message.id.to_string(),
                });
            }
            entry.by_client_key.insert(key.clone(), message.id);
        }
        let seq = entry.next_seq;
        entry.next_seq += 1;
        entry.order.insert(seq, message.id);
        if let Some(chat) = entry.chat.as_mut() {
            chat.updated_at = chat.updated_at.max(message.updated_at);
        }
        self.messages.insert(message.id, (seq, message.clone()));
        Ok(seq)
    }
}

#[async_trait]
impl MessageStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn create_chat(
        &self,
        owner: &UserId,
        id: Option<ChatId>,
        title: Option<String>,
    ) -> Result<Chat> {
        let id = id.unwrap_or_else(ChatId::generate);
        let mut inner = self.lock();
        let entry = inner
            .chats
            .entry(ChatKey::new(owner.clone(), id.clone()))
            .or_default();
        if entry.chat.is_some() {
            return Err(Error::AlreadyExists {
                what: "chat",
                id: id.to_string(),
            });
        }
        let now = Utc::now();
        let chat = Chat {
            owner: owner.clone(),
            id,
            title,
            created_at: now,
            updated_at: now,
        };
        entry.chat = Some(chat.clone());
        Ok(chat)
    }

    async fn get_chat(&self, chat: &ChatKey) -> Result<Option<Chat>> {
        Ok(self.lock().chats.get(chat).and_then(|e| e.chat.clone()))
    }

    async fn list_chats(&self, owner: &UserId, page: ChatPage) -> Result<Vec<Chat>> {
        let inner = self.lock();
        let mut chats: Vec<&Chat> = inner
            .chats
            .iter()
            .filter(|(key, _)| key.owner == *owner)
            .filter_map(|(_, e)| e.chat.as_ref())
            .collect();
        chats.sort_by(|a, b| {
            b.updated_at
                .cmp(&a.updated_at)
                .then_with(|| b.id.cmp(&a.id))
        });
        Ok(chats
            .into_iter()
            .skip(page.offset)
            .take(page.limit)
            .cloned()
            .collect())
    }

    async fn rename_chat(&self, chat: &ChatKey, title: Option<String>) -> Result<Chat> {
        let mut inner = self.lock();
        let found = inner
            .chats
            .get_mut(chat)
            .and_then(|e| e.chat.as_mut())
            .ok_or_else(|| not_found("chat", &chat.id))?;
        found.title = title;
        Ok(found.clone())
    }

    async fn delete_chat(&self, chat: &ChatKey) -> Result<bool> {
        let mut inner = self.lock();
        let Some(entry) = inner.chats.remove(chat) else {
            return Ok(false);
        };
        for message in entry.order.values() {
            inner.messages.remove(message);
        }
        Ok(entry.chat.is_some())
    }

    async fn append(&self, message: &Message) -> Result<()> {
        self.lock().push(message).map(|_| ())
    }

    async fn append_idempotent(&self, message: &Message) -> Result<Appended> {
        let key = message.client_message_id.as_deref().ok_or_else(|| {
            Error::invalid("message", "append_idempotent needs a client message id")
        })?;
        let mut inner = self.lock();
        let existing = inner
            .chats
            .get(&message.key())
            .and_then(|e| e.by_client_key.get(key))
            .and_then(|id| inner.messages.get(id));
        if let Some((_, original)) = existing {
            return Ok(Appended {
                message: original.clone(),
                created: false,
                first_in_chat: false,
            });
        }
        let seq = inner.push(message)?;
        Ok(Appended {
            message: message.clone(),
            created: true,
            first_in_chat: seq == 0,
        })
    }

    async fn append_turn(&self, user: &Message, reply: &Message) -> Result<Appended> {
        super::same_chat(user, reply)?;
        let mut inner = self.lock();
        let entry = inner.chats.entry(user.key()).or_default();
        if entry.chat.is_none() {
            let now = Utc::now();
            entry.chat = Some(Chat {
                owner: user.owner.clone(),
                id: user.chat_id.clone(),
                title: None,
                created_at: now,
                updated_at: now,
            });
        }
        let original = user
            .client_message_id
            .as_deref()
            .and_then(|key| entry.by_client_key.get(key))
            .copied();
        if let Some((_, original)) = original.and_then(|id| inner.messages.get(&id)) {
            return Ok(Appended {
                message: original.clone(),
                created: false,
                first_in_chat: false,
            });
        }
        // All or nothing: what would refuse the reply is checked before the user message is
        // stored.
        let reply_key_taken = reply.client_message_id.as_deref().is_some_and(|key| {
            inner
                .chats
                .get(&reply.key())
                .is_some_and(|e| e.by_client_key.contains_key(key))
                || user.client_message_id.as_deref() == Some(key)
        });
        if inner.messages.contains_key(&reply.id) || reply.id == user.id || reply_key_taken {
            return Err(Error::AlreadyExists {
                what: "message",
                id: reply.id.to_string(),
            });
        }
        let seq = inner.push(user)?;
        inner.push(reply)?;
        Ok(Appended {
            message: user.clone(),
            created: true,
            first_in_chat: seq == 0,
        })
    }

    async fn update(&self, message: &Message) -> Result<()> {
        let mut inner = self.lock();
        let (_, stored) = inner
            .messages
            .get_mut(&message.id)
            .filter(|(_, stored)| stored.owner == message.owner)
            .ok_or_else(|| not_found("message", message.id))?;
        stored.content.clone_from(&message.content);
        stored.parts.clone_from(&message.parts);
        stored.reasoning.clone_from(&message.reasoning);
        stored.thinking.clone_from(&message.thinking);
        stored.tool_calls.clone_from(&message.tool_calls);
        stored.status = message.status;
        stored.finish_reason = message.finish_reason;
        stored.usage = message.usage;
        stored.generation.clone_from(&message.generation);
        stored.error.clone_from(&message.error);
        stored.updated_at = message.updated_at;
        let (chat, updated_at) = (stored.key(), stored.updated_at);
        if let Some(chat) = inner.chats.get_mut(&chat).and_then(|e| e.chat.as_mut()) {
            chat.updated_at = chat.updated_at.max(updated_at);
        }
        Ok(())
    }

    async fn get_message(&self, owner: &UserId, id: &MessageId) -> Result<Option<Message>> {
        Ok(self
            .lock()
            .messages
            .get(id)
            .filter(|(_, m)| m.owner == *owner)
            .map(|(_, m)| m.clone()))
    }

    async fn history(&self, chat: &ChatKey, page: HistoryPage) -> Result<Vec<Message>> {
        let inner = self.lock();
        // The cursor is checked first: a cursor that is not a message of this chat is an error
        // even when the chat does not exist, as in the SQL backends.
        let upper = match page.before {
            Some(before) => match inner.messages.get(&before) {
                Some((seq, m)) if m.chat_id == chat.id && m.owner == chat.owner => *seq,
                _ => return Err(not_found("message", before)),
            },
            None => u64::MAX,
        };
        let Some(entry) = inner.chats.get(chat) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Message> = entry
            .order
            .range(..upper)
            .rev()
            .take(page.limit)
            .filter_map(|(_, id)| inner.messages.get(id).map(|(_, m)| m.clone()))
            .collect();
        out.reverse();
        Ok(out)
    }

    async fn recover_streaming(&self, updated_before: Option<DateTime<Utc>>) -> Result<u64> {
        let mut inner = self.lock();
        let mut changed = 0;
        for (_, m) in inner.messages.values_mut() {
            if m.role == Role::Assistant
                && m.status == MessageStatus::Streaming
                && updated_before.is_none_or(|t| m.updated_at < t)
            {
                m.status = MessageStatus::Interrupted;
                m.updated_at = Utc::now();
                changed += 1;
            }
        }
        Ok(changed)
    }

    async fn streaming_replies(&self) -> Result<Vec<Message>> {
        let inner = self.lock();
        let mut found: Vec<_> = inner
            .messages
            .values()
            .filter(|(_, m)| m.role == Role::Assistant && m.status == MessageStatus::Streaming)
            .cloned()
            .collect();
        found.sort_by_key(|(seq, m)| (m.created_at, *seq));
        Ok(found.into_iter().map(|(_, m)| m).collect())
    }

    async fn interrupt_reply(&self, id: &MessageId) -> Result<bool> {
        let mut inner = self.lock();
        match inner.messages.get_mut(id) {
            Some((_, m)) if m.role == Role::Assistant && m.status == MessageStatus::Streaming => {
                m.status = MessageStatus::Interrupted;
                m.updated_at = Utc::now();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Always `Ok`: the data is in this process's memory.
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
