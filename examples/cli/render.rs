//! How the terminal looks: colours (or none), the spinner, error lines.

use std::io::Write;

use anstyle::{AnsiColor, Effects};

use crate::{ColorChoice, one_line};

/// Whether to decorate output, decided once at start-up.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Colours and dim text.
    pub color: bool,
    /// The spinner and other in-place redraws: only on a terminal.
    pub animate: bool,
}

const DIM: anstyle::Style = anstyle::Style::new().effects(Effects::DIMMED);
const ITALIC_DIM: anstyle::Style =
    anstyle::Style::new().effects(Effects::DIMMED.insert(Effects::ITALIC));
const RED: anstyle::Style =
    anstyle::Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Red)));
const YELLOW: anstyle::Style =
    anstyle::Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Yellow)));
const BOLD: anstyle::Style = anstyle::Style::new().effects(Effects::BOLD);

impl Style {
    /// `terminal`: standard output is a terminal in interactive mode.
    pub fn new(terminal: bool, choice: ColorChoice, no_color: bool) -> Self {
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => terminal && !no_color,
        };
        Style {
            color,
            animate: terminal,
        }
    }

    /// No decoration at all (non-interactive mode).
    pub fn plain() -> Self {
        Style {
            color: false,
            animate: false,
        }
    }

    fn paint(&self, style: anstyle::Style, text: &str) -> String {
        if self.color && !text.is_empty() {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_string()
        }
    }

    /// Secondary text: hints, list details.
    pub fn dim(&self, text: &str) -> String {
        self.paint(DIM, text)
    }

    /// Reasoning text, kept visibly apart from the reply.
    pub fn reasoning(&self, text: &str) -> String {
        self.paint(ITALIC_DIM, text)
    }

    /// A notice that something stopped early.
    pub fn warn(&self, text: &str) -> String {
        self.paint(YELLOW, text)
    }

    /// Emphasis: the current chat in lists.
    pub fn bold(&self, text: &str) -> String {
        self.paint(BOLD, text)
    }

    /// Prints an error as one red line on standard error.
    pub fn error_line(&self, error: &dyn std::fmt::Display) {
        let line = format!("error: {}", one_line(&error.to_string()));
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}", self.paint(RED, &line));
        let _ = err.flush();
    }
}

/// A one-line spinner drawn in place until the first token arrives. Hand-written: it shares the
/// line with the streamed reply and must vanish without a trace, which a progress-bar crate's
/// own draw thread makes harder, not easier.
#[derive(Debug)]
pub struct Spinner {
    frame: usize,
    shown: bool,
}

const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

impl Spinner {
    pub fn new() -> Self {
        Spinner {
            frame: 0,
            shown: false,
        }
    }

    /// Draws the next frame.
    pub fn tick(&mut self, out: &mut impl Write, style: &Style) {
        let frame = FRAMES[self.frame % FRAMES.len()];
        self.frame += 1;
        self.shown = true;
        let _ = write!(
            out,
            "\r{} ",
            style.dim(&format!("{frame} waiting for the model…"))
        );
        let _ = out.flush();
    }

    /// Erases the spinner's line, if it drew one.
    pub fn clear(&mut self, out: &mut impl Write) {
        if std::mem::take(&mut self.shown) {
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
        }
    }
}
