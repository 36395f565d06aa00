//! Models' context windows and token counting: the table of well-known models and
//! [`TokenCounter`].

use crate::RequestMessage;

/// The context window assumed for a model the table does not know, in tokens: small enough for
/// most models served today (a local model's server may be set lower still: set the window
/// with [`ContextBudget::Window`](super::ContextBudget::Window) then).
pub const DEFAULT_CONTEXT_WINDOW: usize = 8_192;

/// What every message costs besides its text: the role and the framing around it. OpenAI's own
/// accounting is 3 or 4 tokens per message; the larger is kept.
const MESSAGE_OVERHEAD: usize = 4;

/// What an image costs in tokens: about what a large image costs at the common providers (they
/// bill an image by its pixels, not by the bytes sent), the token twin of
/// [`ContextBudget::IMAGE_CHARS`](super::ContextBudget::IMAGE_CHARS).
const IMAGE_TOKENS: usize = super::ContextBudget::IMAGE_CHARS / 4;

/// Which tokenizer a model uses, as far as the crate can count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// OpenAI's `o200k_base` (GPT-4o and later, the o-series, GPT-5).
    O200k,
    /// OpenAI's `cl100k_base` (GPT-4, GPT-3.5).
    Cl100k,
    /// No public tokenizer: the estimate.
    Unknown,
}

/// The models whose window is known: by name prefix, the longest prefix that matches winning.
/// A window here is what the request's input and its output share; where an API caps the
/// input below the window (GPT-5: 400,000 in all, at most 272,000 of input), the cap is given.
const MODELS: &[(&str, usize, Encoding)] = &[
    ("gpt-5", 272_000, Encoding::O200k),
    ("gpt-5-chat", 128_000, Encoding::O200k),
    ("gpt-4.1", 1_047_576, Encoding::O200k),
    ("gpt-4.5", 128_000, Encoding::O200k),
    ("gpt-4o", 128_000, Encoding::O200k),
    ("chatgpt-4o", 128_000, Encoding::O200k),
    ("o1", 200_000, Encoding::O200k),
    ("o1-mini", 128_000, Encoding::O200k),
    ("o1-preview", 128_000, Encoding::O200k),
    ("o3", 200_000, Encoding::O200k),
    ("o4-mini", 200_000, Encoding::O200k),
    ("gpt-4", 8_192, Encoding::Cl100k),
    ("gpt-4-32k", 32_768, Encoding::Cl100k),
    ("gpt-4-turbo", 128_000, Encoding::Cl100k),
    ("gpt-4-0125", 128_000, Encoding::Cl100k),
    ("gpt-4-1106", 128_000, Encoding::Cl100k),
    ("gpt-3.5-turbo", 16_385, Encoding::Cl100k),
    ("claude-", 200_000, Encoding::Unknown),
    ("gemini-", 1_048_576, Encoding::Unknown),
    ("gemini-1.0", 32_760, Encoding::Unknown),
    ("gemini-pro", 32_760, Encoding::Unknown),
];

/// The table's row for `model`: matched case-insensitively on the name after the last `/`
/// (so `openai/gpt-4o` and `models/gemini-2.5-pro` are found).
fn lookup(model: &str) -> Option<(usize, Encoding)> {
    let name = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    MODELS
        .iter()
        .filter(|(prefix, ..)| name.starts_with(prefix))
        .max_by_key(|(prefix, ..)| prefix.len())
        .map(|&(_, window, encoding)| (window, encoding))
}

/// The context window of a well-known model, in tokens; `None` for a model the table does not
/// know (a budget then assumes [`DEFAULT_CONTEXT_WINDOW`]).
///
/// | models | window |
/// |---|---|
/// | `gpt-5*` (input cap of the 400,000 window) | 272,000 |
/// | `gpt-5-chat*`, `gpt-4o*`, `chatgpt-4o*`, `gpt-4.5*`, `gpt-4-turbo*`, `o1-mini`, `o1-preview` | 128,000 |
/// | `gpt-4.1*` | 1,047,576 |
/// | `o1`, `o3*`, `o4-mini*` | 200,000 |
/// | `gpt-4`, `gpt-4-32k` | 8,192, 32,768 |
/// | `gpt-3.5-turbo*` | 16,385 |
/// | `claude-*` | 200,000 |
/// | `gemini-*` (`gemini-1.0*`, `gemini-pro`: 32,760) | 1,048,576 |
///
/// ```
/// use chatstream::session::context_window;
///
/// assert_eq!(context_window("gpt-4o-mini"), Some(128_000));
/// assert_eq!(context_window("claude-sonnet-4-5"), Some(200_000));
/// assert_eq!(context_window("openai/gpt-4.1"), Some(1_047_576));
/// assert_eq!(context_window("llama3.2"), None);
/// ```
pub fn context_window(model: &str) -> Option<usize> {
    lookup(model).map(|(window, _)| window)
}

/// Counts the tokens of request messages for one model: with the model's own tokenizer where
/// the crate has it (OpenAI's models, with the `tiktoken` feature), and with the estimate
/// elsewhere — one token per 4 characters of text and tool-call arguments, plus 4 per message.
/// The estimate is close for English prose and low for code and most other languages, so
/// budgets counted with it keep a margin (the output reserve, and a retry with half the history
/// when the model refuses a request as too long).
///
/// ```
/// use chatstream::{RequestMessage, Role, session::TokenCounter};
///
/// let hello = RequestMessage::new(Role::User, "Hello there, how are you?");
/// let estimate = TokenCounter::estimate();
/// assert_eq!(estimate.count(&hello), 25_usize.div_ceil(4) + 4);
/// let gpt = TokenCounter::for_model("gpt-4o");
/// # #[cfg(feature = "tiktoken")]
/// assert_eq!(gpt.name(), "o200k_base");
/// assert!(gpt.count(&hello) <= estimate.count(&hello) + 4);
/// assert_eq!(TokenCounter::for_model("claude-sonnet-4-5").name(), "estimate");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCounter {
    encoding: Encoding,
}

impl TokenCounter {
    /// The counter for `model`: its tokenizer when the crate has it, else the estimate.
    pub fn for_model(model: &str) -> Self {
        let encoding = match lookup(model) {
            Some((_, encoding)) if cfg!(feature = "tiktoken") => encoding,
            _ => Encoding::Unknown,
        };
        TokenCounter { encoding }
    }

    /// The estimate: a token per 4 characters, plus 4 per message.
    pub fn estimate() -> Self {
        TokenCounter {
            encoding: Encoding::Unknown,
        }
    }

    /// The tokenizer's name: `o200k_base`, `cl100k_base` or `estimate`.
    pub fn name(&self) -> &'static str {
        match self.encoding {
            Encoding::O200k => "o200k_base",
            Encoding::Cl100k => "cl100k_base",
            Encoding::Unknown => "estimate",
        }
    }

    /// Whether counts come from the model's tokenizer rather than the estimate.
    pub fn is_exact(&self) -> bool {
        self.encoding != Encoding::Unknown
    }

    /// Loads the tokenizer's tables, if they are not loaded yet, on a thread of the blocking
    /// pool: loading takes up to a second (once per process), which must not stall the
    /// runtime's thread that sends.
    pub(crate) async fn load(&self) {
        if self.is_exact() && !bpe::loaded(self.encoding) {
            let counter = *self;
            let _ = tokio::task::spawn_blocking(move || counter.count_text("")).await;
        }
    }

    /// The tokens of a piece of text.
    pub fn count_text(&self, text: &str) -> usize {
        match self.encoding {
            Encoding::Unknown => text.chars().count().div_ceil(4),
            exact => bpe::count(exact, text),
        }
    }

    /// The tokens one message takes in a request: its text, its tool calls' names and
    /// arguments, and the per-message overhead.
    pub fn count(&self, message: &RequestMessage) -> usize {
        let calls = message.tool_calls.iter();
        let tokens = match self.encoding {
            // One division over the whole message, so that short pieces do not each round up.
            Encoding::Unknown => {
                let chars = message.content.chars().count()
                    + calls
                        .map(|c| c.arguments.chars().count() + c.name.len())
                        .sum::<usize>();
                chars.div_ceil(4)
            }
            _ => {
                self.count_text(&message.content)
                    + calls
                        .map(|c| self.count_text(&c.arguments) + self.count_text(&c.name))
                        .sum::<usize>()
            }
        };
        let images = message.parts.iter().filter(|p| p.is_image()).count();
        tokens + images * IMAGE_TOKENS + MESSAGE_OVERHEAD
    }
}

#[cfg(feature = "tiktoken")]
mod bpe {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::Encoding;

    /// Whether `o200k_base` and `cl100k_base` were loaded.
    static LOADED: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

    fn slot(encoding: Encoding) -> &'static AtomicBool {
        &LOADED[usize::from(encoding == Encoding::Cl100k)]
    }

    pub(super) fn loaded(encoding: Encoding) -> bool {
        slot(encoding).load(Ordering::Acquire)
    }

    /// The tokens of `text` by OpenAI's tokenizer. The tables load once per process, on first
    /// use, and are shared from then on. Measured on a busy 2-core machine, a release build
    /// loads `o200k_base` in about 0.9 s and `cl100k_base` in 0.2 s (a debug build in 2.7 s
    /// and 1.7 s), then counts a message of 100 characters in about 18 µs.
    pub(super) fn count(encoding: Encoding, text: &str) -> usize {
        let bpe = match encoding {
            Encoding::Cl100k => tiktoken_rs::cl100k_base_singleton(),
            _ => tiktoken_rs::o200k_base_singleton(),
        };
        slot(encoding).store(true, Ordering::Release);
        bpe.encode_ordinary(text).len()
    }
}

#[cfg(not(feature = "tiktoken"))]
mod bpe {
    use super::Encoding;

    /// Never called: without the tokenizer every counter is the estimate.
    pub(super) fn count(_: Encoding, text: &str) -> usize {
        text.chars().count().div_ceil(4)
    }

    pub(super) fn loaded(_: Encoding) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Role, ToolCall};

    #[test]
    fn the_longest_prefix_wins() {
        assert_eq!(context_window("gpt-4"), Some(8_192));
        assert_eq!(context_window("gpt-4-0613"), Some(8_192));
        assert_eq!(context_window("gpt-4-turbo-2024-04-09"), Some(128_000));
        assert_eq!(context_window("gpt-4o-2024-08-06"), Some(128_000));
        assert_eq!(context_window("gpt-4.1-nano"), Some(1_047_576));
        assert_eq!(context_window("gpt-5-mini"), Some(272_000));
        assert_eq!(context_window("gpt-5-chat-latest"), Some(128_000));
        assert_eq!(context_window("o1"), Some(200_000));
        assert_eq!(context_window("o1-mini"), Some(128_000));
        assert_eq!(context_window("o3-mini"), Some(200_000));
        assert_eq!(context_window("o4-mini-2025-04-16"), Some(200_000));
        assert_eq!(context_window("gpt-3.5-turbo"), Some(16_385));
        assert_eq!(context_window("claude-3-5-haiku-latest"), Some(200_000));
        assert_eq!(context_window("Claude-Opus-4-1"), Some(200_000));
        assert_eq!(context_window("gemini-2.5-flash"), Some(1_048_576));
        assert_eq!(context_window("gemini-1.0-pro"), Some(32_760));
        assert_eq!(context_window("anthropic/claude-sonnet-4"), Some(200_000));
        for unknown in ["llama3.2", "demo", "scripted", "", "mistral-large", "o"] {
            assert_eq!(context_window(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn an_image_costs_the_same_whatever_its_size() {
        let counter = TokenCounter::estimate();
        let text = RequestMessage::new(Role::User, "look");
        let small = RequestMessage::with_parts(
            Role::User,
            [
                crate::ContentPart::text("look"),
                crate::ContentPart::image_base64("image/png", "AAAA"),
            ],
        );
        let large = RequestMessage::with_parts(
            Role::User,
            [
                crate::ContentPart::text("look"),
                crate::ContentPart::image_base64("image/png", "A".repeat(400_000)),
                crate::ContentPart::image_url("https://example.com/b.png"),
            ],
        );
        assert_eq!(counter.count(&small), counter.count(&text) + IMAGE_TOKENS);
        assert_eq!(
            counter.count(&large),
            counter.count(&text) + 2 * IMAGE_TOKENS
        );
    }

    #[test]
    fn the_estimate_counts_characters() {
        let counter = TokenCounter::estimate();
        assert!(!counter.is_exact());
        assert_eq!(counter.count_text(""), 0);
        assert_eq!(counter.count_text("abcde"), 2);
        assert_eq!(counter.count_text("ééé"), 1, "characters, not bytes");
        let mut message = RequestMessage::new(Role::Assistant, "0123456789");
        assert_eq!(counter.count(&message), 3 + 4);
        message.tool_calls.push(ToolCall {
            index: 0,
            id: "c1".into(),
            name: "f".into(),
            arguments: "{\"a\":1}".into(),
        });
        assert_eq!(counter.count(&message), (10 + 1 + 7_usize).div_ceil(4) + 4);
        // Models without a public tokenizer are estimated.
        assert_eq!(TokenCounter::for_model("claude-opus-4"), counter);
        assert_eq!(TokenCounter::for_model("llama3.2"), counter);
    }

    #[cfg(feature = "tiktoken")]
    #[test]
    fn openai_models_are_counted_by_their_tokenizer() {
        let o200k = TokenCounter::for_model("gpt-4o-mini");
        assert_eq!(o200k.name(), "o200k_base");
        assert!(o200k.is_exact());
        assert_eq!(TokenCounter::for_model("o3").name(), "o200k_base");
        assert_eq!(TokenCounter::for_model("gpt-5").name(), "o200k_base");
        let cl100k = TokenCounter::for_model("gpt-3.5-turbo");
        assert_eq!(cl100k.name(), "cl100k_base");
        // Reference counts from OpenAI's tokenizer.
        assert_eq!(o200k.count_text("hello world"), 2);
        assert_eq!(cl100k.count_text("hello world"), 2);
        assert_eq!(cl100k.count_text("tiktoken is great!"), 6);
        assert_eq!(
            o200k.count(&RequestMessage::new(Role::User, "hello world")),
            6
        );
        // Unlike the estimate, a run of digits or CJK text is many tokens.
        let cjk = "日本語のテキストを数える";
        assert!(o200k.count_text(cjk) > TokenCounter::estimate().count_text(cjk));
    }
}
