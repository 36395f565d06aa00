//! [`ScriptedProvider`]: plays back scripted replies, for tests of code built on chatstream.

use std::{
    collections::VecDeque,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;

use super::{ChatRequest, DeltaStream, LlmProvider};
use crate::{Delta, Error, FinishReason};

type MakeError = Arc<dyn Fn() -> Error + Send + Sync>;

#[derive(Clone)]
enum Step {
    Delta(Delta),
    Fail(MakeError),
    Sleep(Duration),
    Stall,
}

/// One scripted reply: deltas, pauses and errors in order.
///
/// A script that ends without a finish or an error ends its stream there, like a truncated
/// upstream body would, but without an error: add [`Script::finish`] for a well-formed reply.
///
/// ```
/// use chatstream::{FinishReason, provider::{Script, ScriptedProvider}};
/// use std::time::Duration;
///
/// let provider = ScriptedProvider::new()
///     .then(Script::new().text("Hel").sleep(Duration::from_millis(5)).text("lo").finish(FinishReason::Stop));
/// ```
#[derive(Clone, Default)]
pub struct Script {
    steps: Vec<Step>,
    delay: Duration,
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script")
            .field("steps", &self.steps.len())
            .field("delay", &self.delay)
            .finish()
    }
}

impl Script {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// A complete reply made of these text pieces, with a finish and a usage.
    pub fn reply<I, S>(pieces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut s = Script::new();
        for p in pieces {
            s = s.text(p);
        }
        s.finish(FinishReason::Stop).usage(10, 10)
    }

    /// Adds a delta.
    pub fn delta(mut self, delta: Delta) -> Self {
        self.steps.push(Step::Delta(delta));
        self
    }

    /// Adds a text delta.
    pub fn text(self, text: impl Into<String>) -> Self {
        self.delta(Delta::text(text))
    }

    /// Adds a reasoning delta.
    pub fn reasoning(self, text: impl Into<String>) -> Self {
        self.delta(Delta::reasoning(text))
    }

    /// Adds a usage delta.
    pub fn usage(self, input_tokens: u64, output_tokens: u64) -> Self {
        self.delta(Delta::usage(input_tokens, output_tokens))
    }

    /// Adds a finish delta.
    pub fn finish(self, reason: FinishReason) -> Self {
        self.delta(Delta::finish(reason))
    }

    /// Ends the stream with the error `make` builds.
    pub fn fail(mut self, make: impl Fn() -> Error + Send + Sync + 'static) -> Self {
        self.steps.push(Step::Fail(Arc::new(make)));
        self
    }

    /// Pauses (on tokio's clock, so paused-time tests work).
    pub fn sleep(mut self, duration: Duration) -> Self {
        self.steps.push(Step::Sleep(duration));
        self
    }

    /// Stops producing anything, forever, like a stalled upstream.
    pub fn stall(mut self) -> Self {
        self.steps.push(Step::Stall);
        self
    }

    /// Pauses this long before every delta.
    pub fn per_delta_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
struct Shared {
    scripts: Mutex<VecDeque<Script>>,
    repeat: Mutex<Option<Script>>,
    requests: Mutex<Vec<ChatRequest>>,
    started: AtomicUsize,
    open: AtomicUsize,
}

/// A provider that plays back [`Script`]s: each call to [`stream`](LlmProvider::stream) takes the
/// next queued script (or the one set with [`ScriptedProvider::repeat`]). It records every request
/// and counts the streams still open, so tests can check that a stream was really dropped.
#[derive(Clone, Default)]
pub struct ScriptedProvider {
    name: String,
    shared: Arc<Shared>,
}

impl fmt::Debug for ScriptedProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedProvider")
            .field("name", &self.name)
            .field("started", &self.started())
            .field("open", &self.open_streams())
            .finish()
    }
}

impl ScriptedProvider {
    /// A provider with no scripts (named `scripted`).
    pub fn new() -> Self {
        ScriptedProvider {
            name: "scripted".into(),
            shared: Arc::default(),
        }
    }

    /// Renames it (useful to tell providers apart in a fallback chain).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Queues a script for the next call.
    pub fn then(self, script: Script) -> Self {
        self.push(script);
        self
    }

    /// Queues a script (through a shared handle).
    pub fn push(&self, script: Script) {
        lock(&self.shared.scripts).push_back(script);
    }

    /// Plays this script whenever the queue is empty.
    pub fn repeat(self, script: Script) -> Self {
        *lock(&self.shared.repeat) = Some(script);
        self
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<ChatRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many streams were started.
    pub fn started(&self) -> usize {
        self.shared.started.load(Ordering::SeqCst)
    }

    /// How many streams are still alive (not yet dropped).
    pub fn open_streams(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LlmProvider for ScriptedProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn default_model(&self) -> &str {
        "scripted"
    }

    fn stream(&self, request: ChatRequest) -> DeltaStream {
        let shared = self.shared.clone();
        lock(&shared.requests).push(request);
        shared.started.fetch_add(1, Ordering::SeqCst);
        let script = lock(&shared.scripts)
            .pop_front()
            .or_else(|| lock(&shared.repeat).clone());
        let Some(script) = script else {
            return futures::stream::once(async {
                Err(Error::Config("scripted provider: no script left".into()))
            })
            .boxed();
        };
        shared.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(shared);
        let delay = script.delay;
        let steps = script.steps.into_iter();
        futures::stream::unfold(
            (steps, guard, false),
            move |(mut steps, guard, done)| async move {
                if done {
                    return None;
                }
                loop {
                    match steps.next()? {
                        Step::Sleep(d) => tokio::time::sleep(d).await,
                        Step::Stall => std::future::pending::<()>().await,
                        Step::Fail(make) => return Some((Err(make()), (steps, guard, true))),
                        Step::Delta(d) => {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            return Some((Ok::<_, Error>(d), (steps, guard, false)));
                        }
                    }
                }
            },
        )
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Accumulator;

    #[tokio::test]
    async fn plays_scripts_in_order_and_counts_open_streams() {
        let p = ScriptedProvider::new()
            .then(Script::reply(["a", "b"]))
            .then(Script::new().text("x").fail(|| Error::Truncated {
                provider: "s".into(),
            }));
        let mut acc = Accumulator::new();
        let mut s = p.stream(ChatRequest::user("1"));
        assert_eq!(p.open_streams(), 1);
        while let Some(d) = s.next().await {
            acc.push(&d.unwrap());
        }
        drop(s);
        assert_eq!(acc.text(), "ab");
        assert_eq!(p.open_streams(), 0);
        let items: Vec<_> = p.stream(ChatRequest::user("2")).collect().await;
        assert!(matches!(items.last(), Some(Err(Error::Truncated { .. }))));
        assert!(
            p.stream(ChatRequest::user("3"))
                .next()
                .await
                .unwrap()
                .is_err()
        );
        assert_eq!(p.requests().len(), 3);
    }
}
