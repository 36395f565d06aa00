//! [`LocalHub`]: the in-process stream hub.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    EventPayload, HubEvent, HubEventStream, LiveReply, LiveReplyInfo, ReplyPublisher, StreamHub,
};
use crate::{ChatKey, Delta, Error, MessageId, MessageStatus, Result, ToolCallDelta, UserId};

/// How long a finished reply stays replayable by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// How many of a reply's newest events are kept as they were published by default.
pub const DEFAULT_LIVE_WINDOW: usize = 16;

/// The in-process [`StreamHub`]: replies live in this process's memory.
///
/// **Fan-out without queues.** Each reply has one shared buffer; a subscription is just a
/// position in it plus a wake-up signal. Publishing never waits for anyone, and a subscriber that
/// is not polled for a while costs nothing but its position: when it is polled again it reads
/// everything it missed from the buffer. Subscribers that keep up receive the very events that
/// were published (one shared allocation per event, whatever the number of subscribers).
///
/// **Bounded memory by coalescing.** The newest events (the live window, 16 by default) are kept
/// as published. Older text, reasoning and tool-argument deltas are folded into runs: one string
/// per run of consecutive deltas of the same kind, plus a 4-byte end offset per delta, so a
/// reply costs about its text plus 4 bytes per delta, however many deltas it had. A run keeps the
/// sequence number of each delta it covers: replay after a number in the middle of a run sends
/// exactly the rest of that run, as one delta numbered with the run's last number. So a
/// subscriber that replays or lags receives fewer, larger deltas, with exactly the same text.
///
/// **Grace period.** A finished reply stays replayable for the grace period (60 s by default),
/// then it is dropped from memory; a new reply in the same chat replaces it at once.
///
/// Cheap to clone: clones share the same replies.
#[derive(Clone)]
pub struct LocalHub {
    inner: Arc<Inner>,
}

struct Inner {
    replies: Mutex<HashMap<ChatKey, Arc<Reply>>>,
    grace: Duration,
    live_window: usize,
}

impl fmt::Debug for LocalHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalHub")
            .field("replies", &self.held_replies())
            .field("grace", &self.inner.grace)
            .field("live_window", &self.inner.live_window)
            .finish()
    }
}

impl Default for LocalHub {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalHub {
    /// A hub with the default grace period (60 s) and live window (16 events).
    pub fn new() -> Self {
        Self::with_settings(DEFAULT_GRACE, DEFAULT_LIVE_WINDOW)
    }

    /// A hub that keeps finished replies replayable for `grace`.
    pub fn with_grace(grace: Duration) -> Self {
        Self::with_settings(grace, DEFAULT_LIVE_WINDOW)
    }

    /// A hub with this grace period and live window (how many of a reply's newest events are
    /// kept as published before they are coalesced; at least 1).
    pub fn with_settings(grace: Duration, live_window: usize) -> Self {
        LocalHub {
            inner: Arc::new(Inner {
                replies: Mutex::new(HashMap::new()),
                grace,
                live_window: live_window.max(1),
            }),
        }
    }

    /// How many replies the hub holds in memory: live ones, and finished ones within their grace
    /// period.
    pub fn held_replies(&self) -> usize {
        lock(&self.inner.replies).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few infallible container operations, so a panic elsewhere
    // cannot leave the data inconsistent: poisoning is safe to ignore.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// Fires the cancel token of the chat's live reply (only if it fills `only`, when given);
    /// `true` if this call stopped it.
    fn terminate(&self, chat: &ChatKey, only: Option<&MessageId>) -> bool {
        let replies = lock(&self.replies);
        let Some(reply) = replies.get(chat) else {
            return false;
        };
        if only.is_some_and(|id| *id != reply.message_id)
            || !reply.is_live()
            || reply.cancel.is_cancelled()
        {
            return false;
        }
        reply.cancel.cancel();
        true
    }

    fn remove_if(&self, chat: &ChatKey, reply: *const Reply) {
        let mut replies = lock(&self.replies);
        if replies
            .get(chat)
            .is_some_and(|r| std::ptr::eq(Arc::as_ptr(r), reply))
        {
            replies.remove(chat);
        }
    }

    /// The chat's reply if it is live or within its grace period; drops an expired one.
    fn current(&self, chat: &ChatKey) -> Option<Arc<Reply>> {
        let mut replies = lock(&self.replies);
        let reply = replies.get(chat)?;
        let expired = match lock(&reply.buffer).state {
            State::Live => false,
            State::Finished { at } => at + self.grace <= Instant::now(),
            State::Discarded => true,
        };
        if expired {
            replies.remove(chat);
            return None;
        }
        Some(reply.clone())
    }
}

/// Drops a finished reply after the grace period (a lookup also drops it once expired, so this
/// is only about freeing memory of chats nobody asks about again).
fn schedule_removal(inner: &Arc<Inner>, chat: ChatKey, reply: &Arc<Reply>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (hub, reply, grace) = (Arc::downgrade(inner), Arc::downgrade(reply), inner.grace);
    runtime.spawn(async move {
        tokio::time::sleep(grace).await;
        if let Some(hub) = hub.upgrade() {
            hub.remove_if(&chat, Weak::as_ptr(&reply));
        }
    });
}

struct Reply {
    /// The assistant message the reply fills, as given at start.
    message_id: MessageId,
    buffer: Mutex<Buffer>,
    /// Notified after every change of the buffer; subscribers wait on it when they caught up.
    wake: Notify,
    cancel: CancellationToken,
    watchers: AtomicUsize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Live,
    Finished {
        at: Instant,
    },
    /// Aborted before anything was published: as though it never started.
    Discarded,
}

struct Buffer {
    last_seq: u64,
    state: State,
    /// Events older than the live window, coalesced, in order.
    compact: Vec<Compacted>,
    /// The newest events, as published; their numbers are consecutive.
    window: VecDeque<HubEvent>,
    window_len: usize,
}

enum Compacted {
    One(HubEvent),
    Run(Run),
}

/// Consecutive deltas of one kind, folded into one string.
struct Run {
    first_seq: u64,
    kind: RunKind,
    text: String,
    /// The end offset in `text` of each delta of the run, in order.
    ends: Vec<u32>,
}

#[derive(PartialEq)]
enum RunKind {
    Text,
    Reasoning,
    Tool {
        index: u32,
        id: Option<String>,
        name: Option<String>,
    },
}

impl Compacted {
    fn last_seq(&self) -> u64 {
        match self {
            Compacted::One(e) => e.seq,
            Compacted::Run(r) => r.last_seq(),
        }
    }
}

impl Run {
    fn last_seq(&self) -> u64 {
        self.first_seq + self.ends.len() as u64 - 1
    }

    /// One delta with the text of every delta of the run numbered after `after`.
    fn event_after(&self, after: u64) -> Option<HubEvent> {
        let last = self.last_seq();
        if after >= last {
            return None;
        }
        let (from, whole) = if after < self.first_seq {
            (0, true)
        } else {
            (self.ends[(after - self.first_seq) as usize] as usize, false)
        };
        let text = self.text.get(from..).unwrap_or_default().to_owned();
        let delta = match &self.kind {
            RunKind::Text => Delta::Text { text },
            RunKind::Reasoning => Delta::Reasoning { text },
            RunKind::Tool { index, id, name } => Delta::ToolCall(ToolCallDelta {
                index: *index,
                // The id and name came with the run's first fragment only.
                id: id.clone().filter(|_| whole),
                name: name.clone().filter(|_| whole),
                arguments: text,
            }),
        };
        Some(HubEvent::new(last, EventPayload::Delta(delta)))
    }
}

/// What part of a delta a run can hold: its kind and its text.
fn run_piece(payload: &EventPayload) -> Option<(RunKind, &str)> {
    match payload {
        EventPayload::Delta(Delta::Text { text }) => Some((RunKind::Text, text)),
        EventPayload::Delta(Delta::Reasoning { text }) => Some((RunKind::Reasoning, text)),
        EventPayload::Delta(Delta::ToolCall(c)) => Some((
            RunKind::Tool {
                index: c.index,
                id: c.id.clone(),
                name: c.name.clone(),
            },
            &c.arguments,
        )),
        _ => None,
    }
}

impl Buffer {
    fn new(window_len: usize) -> Self {
        Buffer {
            last_seq: 0,
            state: State::Live,
            compact: Vec::new(),
            window: VecDeque::with_capacity(window_len.min(64)),
            window_len,
        }
    }

    fn push(&mut self, payload: EventPayload) -> u64 {
        self.last_seq += 1;
        self.window.push_back(HubEvent::new(self.last_seq, payload));
        if self.window.len() > self.window_len
            && let Some(old) = self.window.pop_front()
        {
            self.compact(old);
        }
        self.last_seq
    }

    fn compact(&mut self, event: HubEvent) {
        let Some((kind, text)) = run_piece(&event.payload) else {
            self.compact.push(Compacted::One(event));
            return;
        };
        if let Some(Compacted::Run(run)) = self.compact.last_mut()
            && run.last_seq() + 1 == event.seq
            && continues(&run.kind, &kind)
            && run.text.len() + text.len() <= u32::MAX as usize
        {
            run.text.push_str(text);
            run.ends.push(run.text.len() as u32);
            return;
        }
        self.compact.push(Compacted::Run(Run {
            first_seq: event.seq,
            text: text.to_owned(),
            ends: vec![text.len() as u32],
            kind,
        }));
    }

    /// Appends to `out` every event numbered after `after`.
    fn read_after(&self, after: u64, out: &mut VecDeque<HubEvent>) {
        let window_start = self.window.front().map_or(self.last_seq + 1, |e| e.seq);
        if after + 1 < window_start {
            let first = self.compact.partition_point(|c| c.last_seq() <= after);
            for c in &self.compact[first..] {
                match c {
                    Compacted::One(e) => out.push_back(e.clone()),
                    Compacted::Run(r) => out.extend(r.event_after(after)),
                }
            }
        }
        let skip = (after + 1).saturating_sub(window_start) as usize;
        out.extend(self.window.iter().skip(skip).cloned());
    }

    fn done_seq(&self) -> Option<u64> {
        match self.state {
            State::Live => None,
            State::Finished { .. } | State::Discarded => Some(self.last_seq),
        }
    }
}

fn continues(run: &RunKind, next: &RunKind) -> bool {
    match (run, next) {
        (RunKind::Text, RunKind::Text) | (RunKind::Reasoning, RunKind::Reasoning) => true,
        (
            RunKind::Tool { index: a, .. },
            RunKind::Tool {
                index: b,
                id: None,
                name: None,
            },
        ) => a == b,
        _ => false,
    }
}

impl Reply {
    fn new(message_id: MessageId, window_len: usize) -> Self {
        Reply {
            message_id,
            buffer: Mutex::new(Buffer::new(window_len)),
            wake: Notify::new(),
            cancel: CancellationToken::new(),
            watchers: AtomicUsize::new(0),
        }
    }

    fn wake(&self) {
        self.wake.notify_waiters();
    }

    fn is_live(&self) -> bool {
        lock(&self.buffer).state == State::Live
    }
}

#[async_trait]
impl StreamHub for LocalHub {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn start(&self, chat: &ChatKey, message_id: MessageId) -> Result<LiveReply> {
        let mut replies = lock(&self.inner.replies);
        if replies.get(chat).is_some_and(|r| r.is_live()) {
            return Err(Error::Busy {
                chat_id: chat.id.to_string(),
            });
        }
        let reply = Arc::new(Reply::new(message_id, self.inner.live_window));
        replies.insert(chat.clone(), reply.clone());
        drop(replies);
        let cancel = reply.cancel.clone();
        Ok(LiveReply {
            publisher: Box::new(LocalPublisher {
                hub: self.inner.clone(),
                chat: chat.clone(),
                reply,
                published: false,
                finished: false,
            }),
            cancel,
        })
    }

    async fn subscribe(
        &self,
        chat: &ChatKey,
        after: Option<u64>,
    ) -> Result<Option<HubEventStream>> {
        let Some(reply) = self.inner.current(chat) else {
            return Ok(None);
        };
        let after = after.unwrap_or(0);
        if lock(&reply.buffer)
            .done_seq()
            .is_some_and(|done| after >= done)
        {
            return Ok(None);
        }
        Ok(Some(subscription(reply, after)))
    }

    async fn live_reply(&self, chat: &ChatKey) -> Result<Option<LiveReplyInfo>> {
        let replies = lock(&self.inner.replies);
        Ok(replies
            .get(chat)
            .filter(|r| r.is_live())
            .map(|r| LiveReplyInfo::new(r.message_id, None)))
    }

    async fn terminate(&self, chat: &ChatKey) -> Result<bool> {
        Ok(self.inner.terminate(chat, None))
    }

    async fn terminate_reply(&self, chat: &ChatKey, message_id: &MessageId) -> Result<bool> {
        Ok(self.inner.terminate(chat, Some(message_id)))
    }

    async fn is_live(&self, chat: &ChatKey) -> Result<bool> {
        let replies = lock(&self.inner.replies);
        Ok(replies.get(chat).is_some_and(|r| r.is_live()))
    }

    async fn watchers(&self, chat: &ChatKey) -> Result<Option<usize>> {
        let replies = lock(&self.inner.replies);
        Ok(Some(
            replies
                .get(chat)
                .map_or(0, |r| r.watchers.load(Ordering::Relaxed)),
        ))
    }

    async fn live_count(&self, owner: &UserId) -> Result<Option<usize>> {
        let replies = lock(&self.inner.replies);
        Ok(Some(
            replies
                .iter()
                .filter(|(chat, reply)| chat.owner == *owner && reply.is_live())
                .count(),
        ))
    }

    /// Always `Ok`: the replies are in this process's memory.
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

/// One subscriber: a position in the reply's buffer, and the events read but not yet yielded.
struct Subscription {
    reply: Arc<Reply>,
    pos: u64,
    pending: VecDeque<HubEvent>,
    ended: bool,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.reply.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Subscription {
    /// Reads what was published since the position; `true` if that gave events to yield or
    /// the reply ended.
    fn read(&mut self) -> bool {
        let buffer = lock(&self.reply.buffer);
        buffer.read_after(self.pos, &mut self.pending);
        if self.pending.is_empty() && buffer.done_seq().is_some() {
            self.ended = true;
        }
        !self.pending.is_empty() || self.ended
    }
}

fn subscription(reply: Arc<Reply>, after: u64) -> HubEventStream {
    reply.watchers.fetch_add(1, Ordering::Relaxed);
    let sub = Subscription {
        reply,
        pos: after,
        pending: VecDeque::new(),
        ended: false,
    };
    futures::stream::unfold(sub, |mut sub| async move {
        loop {
            if let Some(event) = sub.pending.pop_front() {
                sub.pos = event.seq;
                sub.ended = event.is_terminal();
                return Some((Ok(event), sub));
            }
            if sub.ended {
                return None;
            }
            if sub.read() {
                continue;
            }
            // Caught up: wait for the next publish, registered before reading once more so
            // that a publish in between is not missed.
            let reply = sub.reply.clone();
            let mut woken = std::pin::pin!(reply.wake.notified());
            woken.as_mut().enable();
            if sub.read() {
                continue;
            }
            woken.await;
            // Let the tasks already waiting run first: on a busy server they are mostly other
            // replies' work, and meanwhile this reply gets more events, which this subscriber
            // then reads (and its client receives) in one go instead of one wake-up and one
            // write per event.
            tokio::task::yield_now().await;
        }
    })
    .boxed()
}

/// The writer of one reply of a [`LocalHub`].
struct LocalPublisher {
    hub: Arc<Inner>,
    chat: ChatKey,
    reply: Arc<Reply>,
    published: bool,
    finished: bool,
}

impl fmt::Debug for LocalPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalPublisher")
            .field("chat", &self.chat)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl LocalPublisher {
    fn finish(&mut self, done: Option<EventPayload>) {
        self.finished = true;
        {
            let mut buffer = lock(&self.reply.buffer);
            if let Some(done) = done {
                buffer.push(done);
            }
            buffer.state = State::Finished { at: Instant::now() };
        }
        self.reply.wake();
        schedule_removal(&self.hub, self.chat.clone(), &self.reply);
    }

    fn give_up(&mut self) {
        if self.finished {
            return;
        }
        if !self.published {
            self.finished = true;
            lock(&self.reply.buffer).state = State::Discarded;
            self.hub.remove_if(&self.chat, Arc::as_ptr(&self.reply));
            self.reply.wake();
            return;
        }
        lock(&self.reply.buffer).push(EventPayload::Error {
            code: "interrupted".into(),
            message: "the process generating this reply stopped before it finished".into(),
        });
        let done = EventPayload::done(self.reply.message_id, MessageStatus::Interrupted);
        self.finish(Some(done));
    }
}

#[async_trait]
impl ReplyPublisher for LocalPublisher {
    async fn publish(&mut self, payload: EventPayload) -> Result<u64> {
        if self.finished {
            return Err(Error::invalid(
                "hub event",
                "the reply has already finished",
            ));
        }
        self.published = true;
        if payload.is_terminal() {
            self.finish(Some(payload));
            return Ok(lock(&self.reply.buffer).last_seq);
        }
        let seq = lock(&self.reply.buffer).push(payload);
        self.reply.wake();
        Ok(seq)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.give_up();
        Ok(())
    }
}

impl Drop for LocalPublisher {
    fn drop(&mut self) {
        self.give_up();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn text_of(events: &VecDeque<HubEvent>) -> String {
        events
            .iter()
            .filter_map(|e| match &*e.payload {
                EventPayload::Delta(Delta::Text { text }) => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn coalesced_runs_replay_exact_suffixes() {
        let mut b = Buffer::new(2);
        let pieces = ["a", "bc", "", "def", "g"];
        for p in pieces {
            b.push(EventPayload::Delta(Delta::text(p)));
        }
        // Seqs 1..=3 are in a run, 4..=5 in the window.
        assert_eq!(b.compact.len(), 1);
        assert_eq!(b.window.len(), 2);
        let full: String = pieces.concat();
        for after in 0..=5u64 {
            let mut out = VecDeque::new();
            b.read_after(after, &mut out);
            let expect: String = pieces[after as usize..].concat();
            assert_eq!(text_of(&out), expect, "after {after}");
            assert!(out.iter().all(|e| e.seq > after));
            assert!(
                out.iter()
                    .zip(out.iter().skip(1))
                    .all(|(x, y)| x.seq < y.seq)
            );
            if after < 5 {
                assert_eq!(out.back().map(|e| e.seq), Some(5));
            }
        }
        assert_eq!(full, "abcdefg");
    }

    #[test]
    fn runs_break_on_kind_and_tool_index() {
        let mut b = Buffer::new(1);
        let call = |index, id: Option<&str>, args: &str| {
            EventPayload::Delta(Delta::ToolCall(ToolCallDelta {
                index,
                id: id.map(Into::into),
                name: id.map(|_| "f".into()),
                arguments: args.into(),
            }))
        };
        for p in [
            EventPayload::Delta(Delta::text("x")),
            EventPayload::Delta(Delta::reasoning("r")),
            call(0, Some("c0"), "{"),
            call(0, None, "}"),
            call(1, Some("c1"), "["),
            EventPayload::Delta(Delta::usage(1, 2)),
            EventPayload::Delta(Delta::text("end")),
        ] {
            b.push(p);
        }
        let mut out = VecDeque::new();
        b.read_after(0, &mut out);
        let names: Vec<_> = out.iter().map(|e| e.seq).collect();
        assert_eq!(names, [1, 2, 4, 5, 6, 7]);
        match &*out[2].payload {
            EventPayload::Delta(Delta::ToolCall(c)) => {
                assert_eq!((c.id.as_deref(), c.arguments.as_str()), (Some("c0"), "{}"));
            }
            other => panic!("{other:?}"),
        }
        // Resuming inside the tool run: the rest of the arguments, without id and name again.
        let mut out = VecDeque::new();
        b.read_after(3, &mut out);
        match &*out[0].payload {
            EventPayload::Delta(Delta::ToolCall(c)) => {
                assert_eq!((c.id.as_deref(), c.arguments.as_str()), (None, "}"));
            }
            other => panic!("{other:?}"),
        }
    }
}
