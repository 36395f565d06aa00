//! End to end through a session: one reply of 1,000 deltas (scripted provider with no delay,
//! memory store, one subscriber), beside the bare accumulate loop over the same deltas; and the
//! measured memory of 1,000 concurrent live replies of 100 deltas each.
//!
//! The memory figure comes from a counting global allocator (net bytes allocated while the
//! replies are live), printed before the criterion results.
// A benchmark stops at the first failure, like a test.
#![allow(clippy::expect_used)]
use std::{alloc::System, hint::black_box, sync::Arc, time::Duration};

use async_trait::async_trait;
use chatstream::provider::{Script, ScriptedProvider};
use chatstream::{
    Accumulator, Chat, ChatId, ChatKey, ChatRequest, ChatService, ChatSession, Delta, DeltaStream,
    FinishReason, LlmProvider, Message, MessageId, MessageStore, Result, UserId,
    store::{Appended, ChatPage, DynMessageStore, HistoryPage, MemoryStore},
};
use chrono::{DateTime, Utc};
use criterion::{Criterion, Throughput};
use futures::StreamExt;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const WORDS: [&str; 13] = [
    "Stream", "ing", " lets", " the", " user", " see", " the", " reply", " as", " it", " is",
    " written", ".",
];

fn text_deltas(n: usize) -> Vec<Delta> {
    (0..n)
        .map(|i| Delta::text(WORDS[i % WORDS.len()]))
        .collect()
}

fn throughput(c: &mut Criterion) {
    let deltas = text_deltas(1_000);
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(deltas.len() as u64));
    g.bench_function("accumulate_loop_1000", |b| {
        b.iter(|| {
            let mut acc = Accumulator::new();
            for d in &deltas {
                acc.push(d);
            }
            black_box(acc)
        })
    });
    let mut script = Script::new();
    for d in &deltas {
        script = script.delta(d.clone());
    }
    let provider = ScriptedProvider::new().repeat(script.finish(FinishReason::Stop).usage(1, 1000));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    g.bench_function("end_to_end_1000", |b| {
        b.to_async(&rt).iter(|| async {
            let service = ChatService::builder()
                .provider(Arc::new(provider.clone()))
                .store(Arc::new(MemoryStore::new()))
                .build()
                .expect("service");
            let reply = service
                .session(ChatId::generate())
                .send("go".into())
                .await
                .expect("send");
            let mut events = reply.events;
            let mut last = 0;
            while let Some(e) = events.next().await {
                last = e.expect("event").seq;
            }
            black_box(last)
        })
    });
    g.finish();
}

/// 100 deltas, 1 ms apart, then nothing: a reply that stays live.
#[derive(Debug)]
struct Slow;

impl LlmProvider for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn default_model(&self) -> &str {
        "slow"
    }
    fn stream(&self, _request: ChatRequest) -> DeltaStream {
        futures::stream::unfold(0usize, |i| async move {
            if i == 100 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            Some((Ok(Delta::text(WORDS[i % WORDS.len()])), i + 1))
        })
        .boxed()
    }
}

/// Keeps nothing: isolates what a live reply costs from what the store keeps.
#[derive(Debug)]
struct Discard;

#[async_trait]
impl MessageStore for Discard {
    fn backend(&self) -> &'static str {
        "discard"
    }
    async fn create_chat(
        &self,
        owner: &UserId,
        id: Option<ChatId>,
        title: Option<String>,
    ) -> Result<Chat> {
        let now = Utc::now();
        Ok(Chat {
            owner: owner.clone(),
            id: id.unwrap_or_else(ChatId::generate),
            title,
            created_at: now,
            updated_at: now,
        })
    }
    async fn get_chat(&self, _: &ChatKey) -> Result<Option<Chat>> {
        Ok(None)
    }
    async fn list_chats(&self, _: &UserId, _: ChatPage) -> Result<Vec<Chat>> {
        Ok(Vec::new())
    }
    async fn rename_chat(&self, chat: &ChatKey, title: Option<String>) -> Result<Chat> {
        self.create_chat(&chat.owner, Some(chat.id.clone()), title)
            .await
    }
    async fn delete_chat(&self, _: &ChatKey) -> Result<bool> {
        Ok(false)
    }
    async fn append(&self, _: &Message) -> Result<()> {
        Ok(())
    }
    async fn append_idempotent(&self, message: &Message) -> Result<Appended> {
        Ok(Appended {
            message: message.clone(),
            created: true,
            first_in_chat: false,
        })
    }
    async fn update(&self, _: &Message) -> Result<()> {
        Ok(())
    }
    async fn get_message(&self, _: &UserId, _: &MessageId) -> Result<Option<Message>> {
        Ok(None)
    }
    async fn history(&self, _: &ChatKey, _: HistoryPage) -> Result<Vec<Message>> {
        Ok(Vec::new())
    }
    async fn recover_streaming(&self, _: Option<DateTime<Utc>>) -> Result<u64> {
        Ok(0)
    }
    async fn streaming_replies(&self) -> Result<Vec<Message>> {
        Ok(Vec::new())
    }
}

/// Net heap bytes per live reply, with 1,000 replies of 100 deltas live at once.
fn live_reply_memory(store_name: &str, store: DynMessageStore) {
    const REPLIES: usize = 1_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let service = ChatService::builder()
            .provider(Arc::new(Slow))
            .store(store)
            .build()
            .expect("service");
        // Warm up whatever is allocated once (timer wheel, thread locals).
        let warm = service.session(ChatId::generate());
        let mut reply = warm.send("warm".into()).await.expect("send");
        while reply.events.next().await.expect("event").expect("ok").seq < 101 {}
        warm.cancel().await.expect("cancel");
        while reply.events.next().await.is_some() {}
        drop(reply);
        tokio::time::sleep(Duration::from_millis(50)).await;

        let region = Region::new(GLOBAL);
        let mut handles = Vec::with_capacity(REPLIES);
        for i in 0..REPLIES {
            let session = service.session(format!("live-{i}").parse::<ChatId>().expect("id"));
            handles.push(session.send("go".into()).await.expect("send"));
        }
        // Every reply has all its 100 deltas (event 101); each handle is its one subscriber.
        for h in &mut handles {
            while h.events.next().await.expect("event").expect("ok").seq < 101 {}
        }
        // Let the last time-based checkpoints happen, so the figure is the steady state.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let stats = region.change();
        let net = stats.bytes_allocated as isize - stats.bytes_deallocated as isize
            + stats.bytes_reallocated;
        let per_reply = net / REPLIES as isize;
        let text: usize = (0..100).map(|i| WORDS[i % WORDS.len()].len()).sum();
        println!(
            "memory, {REPLIES} live replies of 100 deltas ({store_name} store): \
             {per_reply} B per live reply in all, {text} B of text, {} B beyond the text \
             ({} B beyond three copies of it)",
            per_reply - text as isize,
            per_reply - 3 * text as isize,
        );
        for h in &handles {
            h.cancel().await.expect("cancel");
        }
        for h in &mut handles {
            while h.events.next().await.is_some() {}
        }
    });
}

fn main() {
    live_reply_memory("discarding", Arc::new(Discard));
    live_reply_memory("memory", Arc::new(MemoryStore::new()));
    let mut c = Criterion::default().configure_from_args();
    throughput(&mut c);
    c.final_summary();
}
