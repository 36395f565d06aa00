//! Following one reply: printing its events as they come and stopping it on Ctrl-C.

use std::{io::Write, time::Duration};

use chatstream::{Delta, EventPayload, MessageId, MessageStatus, ReplyHandle};
use futures::StreamExt;

use crate::render::{Spinner, Style};

/// Ctrl-C while a reply streams. Registered once at start-up so that SIGINT never falls back to
/// its default action (ending the process) between two replies.
#[derive(Debug)]
pub struct Interrupts {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Interrupts {
    /// Installs the handler; call it inside the runtime.
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
            Ok(Interrupts { signal })
        }
        #[cfg(not(unix))]
        Ok(Interrupts {})
    }

    /// Forgets a Ctrl-C that came while no reply was running.
    pub fn clear(&mut self) {
        #[cfg(unix)]
        while let Some(Some(())) = futures::FutureExt::now_or_never(self.signal.recv()) {}
    }

    /// Waits for the next Ctrl-C.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        {
            if self.signal.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// What to show of a reply.
#[derive(Debug, Clone, Copy)]
pub enum Show {
    /// Everything, for a person: spinner, reasoning, notices.
    Terminal(Style),
    /// Only the reply text, for a pipe.
    Text,
    /// Nothing (the caller prints the final message itself).
    Nothing,
}

/// How a reply ended.
#[derive(Debug)]
pub struct Outcome {
    pub message_id: MessageId,
    pub status: MessageStatus,
    /// The error message of a failed reply.
    pub error: Option<String>,
    /// Whether the user stopped it.
    pub stopped: bool,
}

/// How long a stopped reply may take to report its end before we stop waiting for it.
const STOP_GRACE: Duration = Duration::from_secs(10);
const SPINNER_FRAME: Duration = Duration::from_millis(80);

/// Prints the reply as it streams until its `done` event; a Ctrl-C cancels it (the upstream
/// request is closed and the partial reply persisted as `cancelled`) and waits for that end.
pub async fn follow(
    mut handle: ReplyHandle,
    show: Show,
    interrupts: &mut Interrupts,
) -> chatstream::Result<Outcome> {
    let style = match show {
        Show::Terminal(style) => Some(style),
        _ => None,
    };
    let animate = style.is_some_and(|s| s.animate);
    let mut out = std::io::stdout();
    let mut printer = Printer::default();
    let mut spinner = Spinner::new();
    let mut frames = tokio::time::interval(SPINNER_FRAME);
    let mut error = None;
    let mut stopped = false;
    let give_up = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(give_up);
    let status = loop {
        tokio::select! {
            biased;
            () = interrupts.next(), if !stopped => {
                stopped = true;
                handle.cancel().await?;
                give_up.as_mut().reset(tokio::time::Instant::now() + STOP_GRACE);
            }
            () = &mut give_up => {
                spinner.clear(&mut out);
                return Err(chatstream::Error::Config("the stopped reply did not report its end".into()));
            }
            _ = frames.tick(), if animate && !printer.started => {
                spinner.tick(&mut out, &style.unwrap_or_else(Style::plain));
            }
            event = handle.events.next() => {
                let event = match event {
                    Some(event) => event?,
                    None => break MessageStatus::Interrupted,
                };
                match &*event.payload {
                    EventPayload::Done { status, .. } => break *status,
                    EventPayload::Error { message, .. } => error = Some(message.clone()),
                    EventPayload::Delta(delta) => {
                        if let Some(piece) = render_delta(delta, show) {
                            spinner.clear(&mut out);
                            printer.write(&mut out, &piece);
                        }
                    }
                    _ => {}
                }
            }
        }
    };
    spinner.clear(&mut out);
    if !matches!(show, Show::Nothing) {
        printer.end_line(&mut out);
    }
    Ok(Outcome {
        message_id: handle.assistant_message_id,
        status,
        error,
        stopped,
    })
}

/// A piece of output, painted, and whether it is reasoning (kept apart from the reply by a
/// blank line).
struct Piece {
    text: String,
    /// Whether the unpainted text ends a line.
    ends_line: bool,
    reasoning: bool,
}

impl Piece {
    fn new(raw: &str, paint: impl Fn(&str) -> String, reasoning: bool) -> Option<Self> {
        (!raw.is_empty()).then(|| Piece {
            text: paint(raw),
            ends_line: raw.ends_with('\n'),
            reasoning,
        })
    }
}

fn render_delta(delta: &Delta, show: Show) -> Option<Piece> {
    match (delta, show) {
        (_, Show::Nothing) => None,
        (Delta::Text { text }, _) => Piece::new(text, str::to_string, false),
        (Delta::Reasoning { text }, Show::Terminal(style)) => {
            Piece::new(text, |t| style.reasoning(t), true)
        }
        (Delta::ToolCall(call), Show::Terminal(style)) => call
            .name
            .as_ref()
            .and_then(|name| Piece::new(&format!("[tool call: {name}]\n"), |t| style.dim(t), true)),
        (Delta::Retry(notice), Show::Terminal(style)) => Piece::new(
            &format!(
                "\n[{} again (attempt {}): {}]\n",
                notice.provider,
                notice.attempt,
                crate::one_line(&notice.reason)
            ),
            |t| style.dim(t),
            true,
        ),
        _ => None,
    }
}

/// Writes the reply, keeping reasoning and reply text on separate paragraphs.
#[derive(Debug, Default)]
struct Printer {
    started: bool,
    in_reasoning: bool,
    at_line_start: bool,
}

impl Printer {
    fn write(&mut self, out: &mut impl Write, piece: &Piece) {
        if self.started && self.in_reasoning && !piece.reasoning {
            let _ = out.write_all(if self.at_line_start { b"\n" } else { b"\n\n" });
        }
        self.started = true;
        self.in_reasoning = piece.reasoning;
        self.at_line_start = piece.ends_line;
        let _ = out.write_all(piece.text.as_bytes());
        let _ = out.flush();
    }

    /// Ends the last line of a reply that printed anything.
    fn end_line(&mut self, out: &mut impl Write) {
        if self.started && !self.at_line_start {
            let _ = out.write_all(b"\n");
            let _ = out.flush();
        }
    }
}
