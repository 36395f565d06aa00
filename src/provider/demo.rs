//! [`DemoProvider`]: a deterministic offline provider, so everything runs with no key and no
//! network.

use std::time::Duration;

use futures::StreamExt;

use super::{ChatRequest, DeltaStream, LlmProvider};
use crate::{Delta, Error, FinishReason, Role};

const PARAGRAPHS: &[&str] = &[
    "Streaming matters because people read faster than models write: showing each token as it \
     arrives turns a ten-second wait into a conversation.",
    "Every reply here is persisted as it grows, so a stopped or failed answer keeps the words that \
     were already written, and a browser that reconnects picks up exactly where it left off.",
    "Press stop at any moment and the upstream request is closed for real; the partial reply is \
     saved with the status cancelled.",
    "Several chats can stream at once, each with its own history, and several windows can follow \
     the same reply.",
];

const CODE: &str = "Here is a small example:\n\n```rust\nlet mut acc = Accumulator::new();\n\
                    while let Some(delta) = stream.next().await {\n    acc.push(&delta?);\n}\n```\n";

/// A provider that needs nothing: it answers every request with a deterministic reply built from
/// the last user message, streamed word by word with a small delay (30 ms by default), preceded
/// by a short reasoning text.
///
/// The same conversation always gets the same reply, so it is also handy in tests and demos.
///
/// ```
/// use chatstream::provider::DemoProvider;
/// use std::time::Duration;
///
/// let demo = DemoProvider::new().with_delay(Duration::from_millis(5));
/// ```
#[derive(Debug, Clone)]
pub struct DemoProvider {
    delay: Duration,
    reasoning: bool,
}

impl Default for DemoProvider {
    fn default() -> Self {
        DemoProvider {
            delay: Duration::from_millis(30),
            reasoning: true,
        }
    }
}

impl DemoProvider {
    /// A demo provider with the default delay.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the pause before each token.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Turns the reasoning prelude on or off.
    pub fn with_reasoning(mut self, on: bool) -> Self {
        self.reasoning = on;
        self
    }

    /// The reply text this provider gives to a request (without the reasoning).
    pub fn reply_for(request: &ChatRequest) -> String {
        let prompt = last_user_text(request);
        let words = prompt.split_whitespace().count();
        let hash = fnv1a(prompt.as_bytes());
        let mut reply = format!(
            "This is the offline demo provider, so no model is involved. You wrote: \u{201c}{}\u{201d} \
             ({} word{}).\n\n",
            prompt.trim(),
            words,
            if words == 1 { "" } else { "s" }
        );
        let first = (hash as usize) % PARAGRAPHS.len();
        let count = if prompt.to_lowercase().contains("long") {
            PARAGRAPHS.len()
        } else {
            1
        };
        for i in 0..count {
            reply.push_str(PARAGRAPHS[(first + i) % PARAGRAPHS.len()]);
            reply.push_str("\n\n");
        }
        if prompt.to_lowercase().contains("code") {
            reply.push_str(CODE);
            reply.push('\n');
        }
        reply.push_str("Set OPENAI_API_KEY or ANTHROPIC_API_KEY to talk to a real model.");
        reply
    }
}

fn last_user_text(request: &ChatRequest) -> &str {
    request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .unwrap_or("")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    // Deterministic across runs and platforms, unlike std's RandomState.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Splits text into word-sized pieces that keep their trailing whitespace.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            out.push(text[start..i].to_string());
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        out.push(text[start..].to_string());
    }
    out
}

impl LlmProvider for DemoProvider {
    fn name(&self) -> &str {
        "demo"
    }

    fn default_model(&self) -> &str {
        "demo"
    }

    fn stream(&self, request: ChatRequest) -> DeltaStream {
        if request.messages.is_empty() {
            return futures::stream::once(async {
                Err(Error::invalid("request", "no messages to answer"))
            })
            .boxed();
        }
        let reply = Self::reply_for(&request);
        let input_tokens = request
            .messages
            .iter()
            .map(|m| m.content.len() as u64 / 4 + 1)
            .sum();
        let mut deltas: Vec<Delta> = Vec::new();
        if self.reasoning {
            let words = last_user_text(&request).split_whitespace().count();
            deltas.extend(
                tokens(&format!(
                    "The user sent {words} words. I will answer from the demo script."
                ))
                .into_iter()
                .map(Delta::reasoning),
            );
        }
        let reply_tokens = tokens(&reply);
        let output_tokens = reply_tokens.len() as u64;
        deltas.extend(reply_tokens.into_iter().map(Delta::text));
        deltas.push(Delta::finish(FinishReason::Stop));
        deltas.push(Delta::usage(input_tokens, output_tokens));
        let delay = self.delay;
        futures::stream::iter(deltas)
            .then(move |d| async move {
                if !delay.is_zero() && d.is_output() {
                    tokio::time::sleep(delay).await;
                }
                Ok(d)
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Accumulator;

    #[test]
    fn tokens_keep_all_text() {
        let t = "Hello  world\n\nagain ";
        assert_eq!(tokens(t).concat(), t);
        assert_eq!(tokens(t), vec!["Hello  ", "world\n\n", "again "]);
    }

    #[tokio::test]
    async fn deterministic_and_echoes_markup_as_text() {
        let p = DemoProvider::new().with_delay(Duration::ZERO);
        let req = ChatRequest::user("<img src=x onerror=alert(1)>");
        let a: Accumulator = p
            .stream(req.clone())
            .map(|d| d.unwrap())
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect();
        let b: Accumulator = p
            .stream(req.clone())
            .map(|d| d.unwrap())
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect();
        assert_eq!(a, b);
        assert!(a.text().contains("<img src=x onerror=alert(1)>"));
        assert_eq!(a.text(), DemoProvider::reply_for(&req));
        assert!(!a.reasoning().is_empty());
        assert_eq!(a.finish_reason(), Some(FinishReason::Stop));
    }
}
