//! Recovery on the hub's cadence: the service marks `interrupted` the replies of processes that
//! are gone, once at start-up when the application asks, and then in the background as often as
//! the hub needs it.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use super::{ChatService, service::Inner};
use crate::{Result, hub};

/// The state of the background recovery passes (see [`ChatService::recover_orphans`]).
#[derive(Debug, Default)]
pub(super) struct Recovery {
    pub(super) started: AtomicBool,
    pub(super) stop: CancellationToken,
    pub(super) failures: AtomicU64,
}

impl ChatService {
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
    pub(super) fn start_recovery(&self) {
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
        ChatId, ChatKey, Error, Message, MessageId, MessageStatus, MessageStore, UserId,
        hub::{HubEventStream, LiveReply, LiveReplyInfo, LocalHub, StreamHub},
        provider::DemoProvider,
        store::MemoryStore,
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
