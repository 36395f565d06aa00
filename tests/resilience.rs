//! The resilience decorators against scripted upstreams, on tokio's paused clock.
#![allow(clippy::unwrap_used)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chatstream::provider::{Script, ScriptedProvider};
use chatstream::{
    Accumulator, ChatRequest, Delta, DeltaStream, DynLlmProvider, Error, FinishReason, LlmProvider,
    RequestMessage, RetryNotice, Role, TimeoutPhase, ToolCall, ToolCallDelta,
    resilience::{
        Fallback, Recovering, RecoveryMode, RecoveryPolicy, ResilienceExt, RetryPolicy, Timeouts,
    },
};
use futures::StreamExt;
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

fn request() -> ChatRequest {
    ChatRequest::new(vec![
        RequestMessage::new(Role::System, "Be brief."),
        RequestMessage::new(Role::User, "Tell me about foxes."),
    ])
}

fn http(status: u16, retry_after: Option<Duration>) -> Error {
    Error::from_status("scripted", status, None, "upstream said no", retry_after)
}

fn connection_reset() -> Error {
    Error::Connect {
        provider: "scripted".into(),
        source: Box::new(std::io::Error::other("connection reset by peer")),
    }
}

/// Everything a stream yielded: its deltas, and the error it ended with.
struct Outcome {
    deltas: Vec<Delta>,
    error: Option<Error>,
}

impl Outcome {
    async fn of(mut stream: DeltaStream) -> Self {
        let mut deltas = Vec::new();
        let mut error = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(delta) => deltas.push(delta),
                Err(e) => {
                    assert!(error.is_none(), "a second error after {error:?}: {e}");
                    error = Some(e);
                }
            }
        }
        Outcome { deltas, error }
    }

    fn reply(&self) -> Accumulator {
        let mut acc = Accumulator::new();
        acc.extend(&self.deltas);
        acc
    }

    fn text(&self) -> String {
        self.reply().text().to_owned()
    }

    fn notices(&self) -> Vec<RetryNotice> {
        self.deltas
            .iter()
            .filter_map(|d| match d {
                Delta::Retry(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    fn finishes(&self) -> usize {
        self.deltas
            .iter()
            .filter(|d| matches!(d, Delta::Finish { .. }))
            .count()
    }

    fn success(self) -> Self {
        if let Some(e) = &self.error {
            panic!("the stream failed: {e}");
        }
        self
    }

    fn failure(self) -> Error {
        match self.error {
            Some(e) => e,
            None => panic!("the stream succeeded: {:?}", self.deltas),
        }
    }
}

/// Records when each upstream attempt starts, on tokio's clock.
#[derive(Debug, Clone)]
struct Timed {
    inner: ScriptedProvider,
    starts: Arc<Mutex<Vec<Instant>>>,
}

impl Timed {
    fn new(inner: ScriptedProvider) -> Self {
        Timed {
            inner,
            starts: Arc::default(),
        }
    }

    fn gaps(&self) -> Vec<Duration> {
        let starts = self.starts.lock().unwrap();
        starts.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

impl LlmProvider for Timed {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn default_model(&self) -> &str {
        self.inner.default_model()
    }
    fn stream(&self, request: ChatRequest) -> DeltaStream {
        self.starts.lock().unwrap().push(Instant::now());
        self.inner.stream(request)
    }
}

// ---------------------------------------------------------------------------------------------
// Retrying

#[tokio::test(start_paused = true)]
async fn retry_honours_retry_after_and_jitters_within_the_cap() {
    let run = || async {
        let upstream = ScriptedProvider::new()
            .then(Script::new().fail(|| http(503, Some(Duration::from_secs(2)))))
            .then(Script::new().fail(|| http(502, None)))
            .then(Script::reply(["Hel", "lo"]));
        let timed = Timed::new(upstream.clone());
        let policy = RetryPolicy::default().with_jitter_seed(42);
        let outcome = Outcome::of(timed.clone().with_retry(policy).stream(request()))
            .await
            .success();
        (upstream, timed, outcome)
    };
    let (upstream, timed, outcome) = run().await;
    assert_eq!(outcome.text(), "Hello");
    assert_eq!(upstream.started(), 3);
    let notices = outcome.notices();
    assert_eq!(
        notices.iter().map(|n| n.attempt).collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(notices.iter().all(|n| n.provider == "scripted"));
    assert!(notices[0].reason.contains("503"), "{}", notices[0].reason);
    // Notices come before the attempt they announce, and carry no output.
    assert!(matches!(outcome.deltas[0], Delta::Retry(_)));
    assert!(outcome.notices().len() == 2 && !outcome.deltas[0].is_output());

    let policy = RetryPolicy::default();
    let gaps = timed.gaps();
    assert_eq!(gaps.len(), 2);
    // Retry-After (2 s) is above the first cap (500 ms), so it decides the first wait.
    assert!(
        gaps[0] >= Duration::from_secs(2) && gaps[0] <= Duration::from_secs(2) + MS,
        "{gaps:?}"
    );
    // The second wait is full jitter: the seeded draw, within [0, cap].
    let mut rng = fastrand::Rng::with_seed(42).fork();
    let _first = policy.backoff(0, &mut rng);
    let expected = policy.backoff(1, &mut rng);
    assert!(expected <= policy.backoff_cap(1));
    assert!(
        gaps[1] >= expected && gaps[1] <= expected + MS,
        "{gaps:?} vs {expected:?}"
    );
    assert!(gaps[1] <= policy.backoff_cap(1) + MS);

    // The same seed gives the same waits.
    let (_, again, _) = run().await;
    assert_eq!(again.gaps(), gaps);
}

#[tokio::test(start_paused = true)]
async fn non_retryable_errors_are_not_retried() {
    type MakeError = fn() -> Error;
    let cases: Vec<(&str, MakeError)> = vec![
        ("401", || http(401, None)),
        ("403", || http(403, None)),
        ("insufficient_quota", || {
            Error::from_status(
                "scripted",
                429,
                Some("insufficient_quota".into()),
                "quota",
                None,
            )
        }),
        ("cancelled", || Error::Cancelled),
        ("invalid", || Error::Invalid {
            what: "request",
            message: "empty".into(),
        }),
    ];
    for (name, make) in cases {
        let upstream = ScriptedProvider::new()
            .then(Script::new().fail(make))
            .then(Script::reply(["never"]));
        let outcome = Outcome::of(
            upstream
                .clone()
                .with_retry(RetryPolicy::default())
                .stream(request()),
        )
        .await;
        assert!(outcome.notices().is_empty(), "{name}");
        let error = outcome.failure();
        assert_eq!(upstream.started(), 1, "{name}");
        assert!(!matches!(error, Error::RetriesExhausted { .. }), "{name}");
        assert_eq!(error.code(), make().code(), "{name}");
        assert_eq!(error.status(), make().status(), "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts() {
    let upstream = ScriptedProvider::new().repeat(Script::new().fail(|| http(503, None)));
    let outcome = Outcome::of(
        upstream
            .clone()
            .with_retry(RetryPolicy::default().with_max_attempts(3))
            .stream(request()),
    )
    .await;
    assert_eq!(outcome.notices().len(), 2);
    match outcome.failure() {
        Error::RetriesExhausted { attempts, source } => {
            assert_eq!(attempts, 3);
            assert_eq!(source.status(), Some(503));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(upstream.started(), 3);
    assert_eq!(upstream.open_streams(), 0);
}

#[tokio::test(start_paused = true)]
async fn respects_the_total_budget() {
    // Every attempt asks for 1 s; with no jitter the attempts start at 0, 1, 2 and 3 s, and a
    // fifth would start past the 3 s budget.
    let upstream = ScriptedProvider::new()
        .repeat(Script::new().fail(|| http(429, Some(Duration::from_secs(1)))));
    let policy = RetryPolicy::default()
        .with_max_attempts(10)
        .with_initial_backoff(Duration::ZERO)
        .with_budget(Duration::from_secs(3));
    let start = Instant::now();
    let error = Outcome::of(upstream.clone().with_retry(policy).stream(request()))
        .await
        .failure();
    let elapsed = start.elapsed();
    assert!(
        matches!(error, Error::RetriesExhausted { attempts: 4, .. }),
        "{error:?}"
    );
    assert_eq!(upstream.started(), 4);
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed <= Duration::from_secs(3) + 4 * MS,
        "{elapsed:?}"
    );

    // A Retry-After beyond the budget ends it at once, with the upstream's own error.
    let upstream = ScriptedProvider::new()
        .repeat(Script::new().fail(|| http(429, Some(Duration::from_secs(600)))));
    let start = Instant::now();
    let error = Outcome::of(
        upstream
            .clone()
            .with_retry(RetryPolicy::default())
            .stream(request()),
    )
    .await
    .failure();
    assert_eq!(error.status(), Some(429));
    assert!(matches!(error, Error::Upstream { .. }));
    assert_eq!(upstream.started(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

/// A request longer than the model's window fails the same way every time: the standard stack
/// passes it on at once, as itself (the session decides what to send instead).
#[tokio::test(start_paused = true)]
async fn a_context_length_error_is_not_retried_or_recovered() {
    let too_long = || {
        Error::from_status(
            "scripted",
            400,
            Some("context_length_exceeded".into()),
            "This model's maximum context length is 8192 tokens.",
            None,
        )
    };
    let upstream = ScriptedProvider::new()
        .then(Script::new().fail(too_long))
        .then(Script::reply(["never"]));
    let start = Instant::now();
    let error = Outcome::of(
        upstream
            .clone()
            .with_timeouts(Timeouts::default())
            .with_retry(RetryPolicy::default())
            .with_recovery(RecoveryPolicy::default())
            .stream(request()),
    )
    .await
    .failure();
    assert!(
        matches!(
            error,
            Error::ContextLengthExceeded {
                status: Some(400),
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.code(), "context_length_exceeded");
    assert_eq!(upstream.started(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_output_passes_through_retrying_unchanged() {
    let upstream = ScriptedProvider::new()
        .then(Script::new().text("Hal").fail(|| http(503, None)))
        .then(Script::reply(["never"]));
    let outcome = Outcome::of(
        upstream
            .clone()
            .with_retry(RetryPolicy::default())
            .stream(request()),
    )
    .await;
    assert_eq!(outcome.text(), "Hal");
    assert!(matches!(
        outcome.failure(),
        Error::Upstream {
            status: Some(503),
            ..
        }
    ));
    assert_eq!(upstream.started(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_shared_dyn_provider_can_be_wrapped() {
    let upstream = ScriptedProvider::new()
        .then(Script::new().fail(connection_reset))
        .then(Script::reply(["ok"]));
    let shared: DynLlmProvider = Arc::new(upstream.clone());
    let outcome = Outcome::of(shared.with_retry(RetryPolicy::default()).stream(request()))
        .await
        .success();
    assert_eq!(outcome.text(), "ok");
    assert_eq!(upstream.started(), 2);
}

// ---------------------------------------------------------------------------------------------
// WithTimeouts

#[tokio::test(start_paused = true)]
async fn idle_timeout_fires_on_a_stalled_upstream_and_drops_it() {
    let upstream = ScriptedProvider::new().then(Script::new().text("Hel").stall());
    let timeouts = Timeouts::default().with_idle(Duration::from_secs(5));
    let mut stream = upstream.clone().with_timeouts(timeouts).stream(request());
    let start = Instant::now();
    assert_eq!(stream.next().await.unwrap().unwrap(), Delta::text("Hel"));
    let error = stream.next().await.unwrap().unwrap_err();
    assert!(
        matches!(
            error,
            Error::Timeout {
                phase: TimeoutPhase::Idle,
                after
            } if after == Duration::from_secs(5)
        ),
        "{error:?}"
    );
    assert!(error.is_retryable());
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed <= Duration::from_secs(5) + MS,
        "{elapsed:?}"
    );
    // Dropped when the timeout fired, not when the consumer lets go.
    assert_eq!(upstream.open_streams(), 0);
    assert!(stream.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn first_byte_timeout_fires_when_nothing_arrives() {
    let upstream = ScriptedProvider::new().then(Script::new().stall());
    let timeouts = Timeouts::default().with_first_byte(Duration::from_secs(3));
    let mut stream = upstream.clone().with_timeouts(timeouts).stream(request());
    let start = Instant::now();
    let error = stream.next().await.unwrap().unwrap_err();
    assert!(
        matches!(
            error,
            Error::Timeout {
                phase: TimeoutPhase::FirstByte,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(start.elapsed() >= Duration::from_secs(3));
    assert_eq!(upstream.open_streams(), 0);
    assert!(stream.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_slow_but_steady_reply_is_never_cut() {
    let upstream = ScriptedProvider::new()
        .then(Script::reply(["a", "b", "c", "d", "e"]).per_delta_delay(Duration::from_secs(4)));
    let timeouts = Timeouts::default()
        .with_first_byte(Duration::from_secs(5))
        .with_idle(Duration::from_secs(5));
    let start = Instant::now();
    let outcome = Outcome::of(upstream.with_timeouts(timeouts).stream(request()))
        .await
        .success();
    assert_eq!(outcome.text(), "abcde");
    // Far longer than either limit in all: there is no total-request timeout.
    assert!(start.elapsed() >= Duration::from_secs(20));
}

// ---------------------------------------------------------------------------------------------
// Recovering

const TOKENS: [&str; 10] = [
    "The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".",
];

const UNICODE: [&str; 10] = [
    "Grüße", ", ", "世界", "! ", "🎉", " Ça", " va", " très", " bien", "…",
];

fn broken_after(tokens: &[&str], k: usize) -> Script {
    let mut script = Script::new();
    for t in &tokens[..k] {
        script = script.text(*t);
    }
    script.usage(5, k as u64).fail(connection_reset)
}

/// The whole text again, cut into pieces of `n` characters (never where the tokens were cut).
fn rechunked(text: &str, n: usize) -> Script {
    let chars: Vec<char> = text.chars().collect();
    let pieces: Vec<String> = chars.chunks(n).map(|c| c.iter().collect()).collect();
    Script::reply(pieces)
}

fn recovering(upstream: &ScriptedProvider, mode: RecoveryMode) -> Recovering<ScriptedProvider> {
    upstream
        .clone()
        .with_recovery(RecoveryPolicy::default().with_mode(mode))
}

fn assert_seamless(outcome: &Outcome, full: &str) {
    assert_eq!(outcome.text(), full);
    assert_eq!(outcome.finishes(), 1);
    assert_eq!(outcome.notices().len(), 1);
    assert_eq!(outcome.notices()[0].attempt, 2);
    // The usage is the final attempt's.
    assert_eq!(outcome.reply().usage().map(|u| u.output_tokens), Some(10));
}

#[tokio::test(start_paused = true)]
async fn continue_mode_resumes_from_the_partial_reply() {
    let full = TOKENS.concat();
    for k in [1, 3, 7] {
        let upstream = ScriptedProvider::new()
            .then(broken_after(&TOKENS, k))
            .then(Script::reply(TOKENS[k..].to_vec()));
        let outcome = Outcome::of(recovering(&upstream, RecoveryMode::Continue).stream(request()))
            .await
            .success();
        assert_seamless(&outcome, &full);

        let requests = upstream.requests();
        assert_eq!(requests.len(), 2, "k={k}");
        let continuation = &requests[1];
        assert_eq!(continuation.messages[..2], request().messages[..]);
        assert_eq!(continuation.messages.len(), 3);
        assert_eq!(
            continuation.messages.last(),
            Some(&RequestMessage::new(Role::Assistant, TOKENS[..k].concat()))
        );
        assert_eq!(upstream.open_streams(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn continue_mode_sends_the_partial_without_trailing_whitespace() {
    // Anthropic refuses a final assistant message ending in whitespace; the model then repeats
    // the whitespace, which must not come out twice.
    let tokens = ["Intro:", "\n\n", "Next", " line."];
    for continuation in [vec!["\n", "\nNext", " line."], vec!["Next", " line."]] {
        let upstream = ScriptedProvider::new()
            .then(broken_after(&tokens, 2))
            .then(Script::reply(continuation));
        let outcome = Outcome::of(recovering(&upstream, RecoveryMode::Continue).stream(request()))
            .await
            .success();
        assert_eq!(outcome.text(), "Intro:\n\nNext line.");
        assert_eq!(
            upstream.requests()[1].messages.last(),
            Some(&RequestMessage::new(Role::Assistant, "Intro:"))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn continue_mode_drops_a_continuation_that_starts_over() {
    let full = TOKENS.concat();
    for k in [1, 3, 7] {
        for chunk in [1, 4, 100] {
            let upstream = ScriptedProvider::new()
                .then(broken_after(&TOKENS, k))
                .then(rechunked(&full, chunk));
            let outcome =
                Outcome::of(recovering(&upstream, RecoveryMode::Continue).stream(request()))
                    .await
                    .success();
            assert_eq!(outcome.text(), full, "k={k} chunk={chunk}");
            assert_seamless(&outcome, &full);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn restart_and_skip_passes_only_what_is_new() {
    for tokens in [TOKENS, UNICODE] {
        let full = tokens.concat();
        for k in [1, 3, 7] {
            for chunk in [1, 2, 3] {
                let upstream = ScriptedProvider::new()
                    .then(broken_after(&tokens, k))
                    .then(rechunked(&full, chunk));
                let outcome = Outcome::of(
                    recovering(&upstream, RecoveryMode::RestartAndSkip).stream(request()),
                )
                .await
                .success();
                assert_eq!(outcome.text(), full, "k={k} chunk={chunk}");
                assert_seamless(&outcome, &full);
                // The original request, unchanged.
                assert_eq!(upstream.requests()[1], request());
            }
        }
    }
}

fn call(id: Option<&str>, name: Option<&str>, arguments: &str) -> Delta {
    Delta::ToolCall(ToolCallDelta {
        index: 0,
        id: id.map(Into::into),
        name: name.map(Into::into),
        arguments: arguments.into(),
    })
}

#[tokio::test(start_paused = true)]
async fn a_broken_tool_call_is_restarted_and_skipped_even_in_continue_mode() {
    for mode in [RecoveryMode::RestartAndSkip, RecoveryMode::Continue] {
        let upstream = ScriptedProvider::new()
            .then(
                Script::new()
                    .reasoning("Weather needs a tool.")
                    .text("Let me check.")
                    .delta(call(Some("call_1"), Some("get_weather"), "{\"ci"))
                    .fail(connection_reset),
            )
            .then(
                Script::new()
                    .reasoning("Weather")
                    .reasoning(" needs a tool.")
                    .text("Let me check.")
                    .delta(call(Some("call_1"), Some("get_weather"), ""))
                    .delta(call(None, None, "{"))
                    .delta(call(None, None, "\"city\""))
                    .delta(call(None, None, ":\"Paris\"}"))
                    .finish(FinishReason::ToolCalls),
            );
        let outcome = Outcome::of(recovering(&upstream, mode).stream(request()))
            .await
            .success();
        let reply = outcome.reply();
        assert_eq!(reply.text(), "Let me check.", "{mode:?}");
        assert_eq!(reply.reasoning(), "Weather needs a tool.");
        assert_eq!(
            reply.tool_calls(),
            [ToolCall {
                index: 0,
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into(),
            }]
        );
        let ids = outcome
            .deltas
            .iter()
            .filter(|d| matches!(d, Delta::ToolCall(c) if c.id.is_some() || c.name.is_some()))
            .count();
        assert_eq!(ids, 1, "the id and name went out once");
        assert_eq!(reply.finish_reason(), Some(FinishReason::ToolCalls));
        assert_eq!(upstream.requests()[1], request(), "{mode:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn give_up_mode_passes_the_error() {
    let upstream = ScriptedProvider::new()
        .then(broken_after(&TOKENS, 3))
        .then(Script::reply(["never"]));
    let outcome = Outcome::of(recovering(&upstream, RecoveryMode::GiveUp).stream(request())).await;
    assert_eq!(outcome.text(), TOKENS[..3].concat());
    assert!(outcome.notices().is_empty());
    assert!(matches!(outcome.failure(), Error::Connect { .. }));
    assert_eq!(upstream.started(), 1);
}

#[tokio::test(start_paused = true)]
async fn recovery_stops_after_max_recoveries_and_on_permanent_errors() {
    let upstream = ScriptedProvider::new()
        .then(Script::new().text("a").fail(connection_reset))
        .repeat(Script::new().text("b").fail(connection_reset));
    let outcome = Outcome::of(
        upstream
            .clone()
            .with_recovery(RecoveryPolicy::default().with_max_recoveries(2))
            .stream(request()),
    )
    .await;
    assert_eq!(outcome.text(), "abb");
    assert_eq!(
        outcome
            .notices()
            .iter()
            .map(|n| n.attempt)
            .collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(matches!(outcome.failure(), Error::Connect { .. }));
    assert_eq!(upstream.started(), 3);
    // The second continuation carries everything sent so far.
    assert_eq!(upstream.requests()[2].messages[2].content, "ab");

    // A permanent error mid-reply, or any error before output, is not recovered.
    for script in [
        Script::new().text("a").fail(|| http(400, None)),
        Script::new().fail(connection_reset),
    ] {
        let upstream = ScriptedProvider::new()
            .then(script)
            .then(Script::reply(["never"]));
        let error = Outcome::of(
            upstream
                .clone()
                .with_recovery(RecoveryPolicy::default())
                .stream(request()),
        )
        .await
        .failure();
        assert!(matches!(
            error,
            Error::Upstream { .. } | Error::Connect { .. }
        ));
        assert_eq!(upstream.started(), 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Fallback

#[tokio::test(start_paused = true)]
async fn fallback_moves_to_the_next_provider_before_output() {
    let first = ScriptedProvider::new()
        .named("first")
        .then(Script::new().fail(|| http(500, None)));
    let second = ScriptedProvider::new()
        .named("second")
        .then(Script::reply(["from second"]));
    let chain = Fallback::new(vec![Arc::new(first.clone()), Arc::new(second.clone())]);
    assert_eq!(chain.name(), "first");
    let outcome = Outcome::of(chain.stream(request())).await.success();
    assert_eq!(outcome.text(), "from second");
    let notices = outcome.notices();
    assert_eq!(notices.len(), 1);
    assert_eq!(
        (notices[0].attempt, notices[0].provider.as_str()),
        (2, "second")
    );
    assert_eq!((first.started(), second.started()), (1, 1));
    assert_eq!(second.requests()[0], request());
}

#[tokio::test(start_paused = true)]
async fn fallback_does_not_switch_after_output_or_on_cancel() {
    for script in [
        Script::new().text("partial").fail(|| http(500, None)),
        Script::new().fail(|| Error::Cancelled),
    ] {
        let first = ScriptedProvider::new().named("first").then(script);
        let second = ScriptedProvider::new()
            .named("second")
            .then(Script::reply(["never"]));
        let chain = Fallback::new(vec![Arc::new(first.clone()), Arc::new(second.clone())]);
        let outcome = Outcome::of(chain.stream(request())).await;
        assert!(outcome.notices().is_empty());
        assert!(outcome.error.is_some());
        assert_eq!(second.started(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn fallback_returns_the_last_error_when_all_fail() {
    let providers: Vec<DynLlmProvider> = vec![
        Arc::new(
            ScriptedProvider::new()
                .named("a")
                .then(Script::new().fail(|| http(500, None))),
        ),
        Arc::new(
            ScriptedProvider::new()
                .named("b")
                .then(Script::new().fail(|| http(401, None))),
        ),
    ];
    let outcome = Outcome::of(Fallback::new(providers).stream(request())).await;
    assert_eq!(outcome.notices().len(), 1);
    assert_eq!(outcome.failure().status(), Some(401));
    let empty = Outcome::of(Fallback::new(Vec::new()).stream(request())).await;
    assert!(matches!(empty.failure(), Error::Config(_)));
}

// ---------------------------------------------------------------------------------------------
// The recommended stack

fn stack(primary: &ScriptedProvider, backup: &ScriptedProvider) -> Fallback {
    let timeouts = Timeouts::default()
        .with_first_byte(Duration::from_secs(10))
        .with_idle(Duration::from_secs(10));
    let retry = RetryPolicy::default().with_jitter_seed(7);
    let primary: DynLlmProvider = Arc::new(
        primary
            .clone()
            .with_timeouts(timeouts)
            .with_retry(retry.clone())
            .with_recovery(RecoveryPolicy::default()),
    );
    let backup: DynLlmProvider = Arc::new(
        backup
            .clone()
            .with_timeouts(timeouts)
            .with_retry(retry)
            .with_recovery(RecoveryPolicy::default()),
    );
    Fallback::new(vec![primary, backup])
}

#[tokio::test(start_paused = true)]
async fn the_full_stack_retries_recovers_and_stays_with_the_primary() {
    let primary = ScriptedProvider::new()
        .named("primary")
        // 1. fails before output: retried
        .then(Script::new().fail(|| http(503, None)))
        // 2. streams three tokens, then stalls: the idle timeout ends it, recovery continues
        .then(
            Script::new()
                .text("The")
                .text(" quick")
                .text(" brown")
                .stall(),
        )
        // 3. the continuation fails before output: retried inside the recovery
        .then(Script::new().fail(|| http(500, None)))
        // 4. the continuation
        .then(Script::reply(TOKENS[3..].to_vec()));
    let backup = ScriptedProvider::new()
        .named("backup")
        .then(Script::reply(["never"]));
    let outcome = Outcome::of(stack(&primary, &backup).stream(request()))
        .await
        .success();
    assert_eq!(outcome.text(), TOKENS.concat());
    assert_eq!(outcome.finishes(), 1);
    let notices = outcome.notices();
    assert_eq!(notices.len(), 3, "{notices:?}");
    assert!(notices.iter().all(|n| n.provider == "primary"));
    assert!(notices[1].reason.contains("idle"), "{}", notices[1].reason);
    assert_eq!(primary.started(), 4);
    assert_eq!(backup.started(), 0);
    assert_eq!(primary.open_streams(), 0);
    let requests = primary.requests();
    for continuation in &requests[2..] {
        assert_eq!(
            continuation.messages.last(),
            Some(&RequestMessage::new(Role::Assistant, "The quick brown"))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_full_stack_falls_back_when_the_primary_refuses() {
    let primary = ScriptedProvider::new()
        .named("primary")
        .repeat(Script::new().fail(|| http(401, None)));
    let backup = ScriptedProvider::new()
        .named("backup")
        .then(Script::new().stall())
        .then(Script::reply(["from", " backup"]));
    let start = Instant::now();
    let outcome = Outcome::of(stack(&primary, &backup).stream(request()))
        .await
        .success();
    assert_eq!(outcome.text(), "from backup");
    // The 401 is not retried; the backup's stalled first attempt times out and is retried.
    assert_eq!(primary.started(), 1);
    assert_eq!(backup.started(), 2);
    assert_eq!(
        outcome
            .notices()
            .iter()
            .map(|n| n.provider.as_str())
            .collect::<Vec<_>>(),
        ["backup", "backup"]
    );
    assert!(start.elapsed() >= Duration::from_secs(10));
    assert_eq!(backup.open_streams(), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_stack_closes_the_upstream_at_once() {
    let primary = ScriptedProvider::new()
        .named("primary")
        .then(Script::new().fail(connection_reset))
        .then(Script::new().text("The").stall());
    let backup = ScriptedProvider::new().named("backup");
    let mut stream = stack(&primary, &backup).stream(request());
    assert!(matches!(stream.next().await, Some(Ok(Delta::Retry(_)))));
    assert_eq!(stream.next().await.unwrap().unwrap(), Delta::text("The"));
    assert_eq!(primary.open_streams(), 1);
    drop(stream);
    assert_eq!(primary.open_streams(), 0);
    assert_eq!(primary.started(), 2);
}
