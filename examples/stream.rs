//! Prints a reply as it streams in: `cargo run --example stream -- "Why stream replies?"`.
//!
//! It runs on the offline demo provider, so it needs no key; with `OPENAI_API_KEY` (or
//! `CHATSTREAM_PROVIDER` and its variables) set, the same code streams from a real model.

use std::io::Write;

use chatstream::{
    Accumulator, ChatRequest, Delta, LlmProvider,
    provider::{self, ProviderKind},
};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let prompt = if prompt.trim().is_empty() {
        "Why stream replies?".to_owned()
    } else {
        prompt
    };
    // The upstream the environment names, in the standard resilience stack; the demo provider
    // when nothing is set.
    let provider = provider::from_env(ProviderKind::from_env()?)?;
    let mut stream = provider.stream(ChatRequest::user(prompt));
    let mut reply = Accumulator::new();
    let mut stdout = std::io::stdout();
    while let Some(delta) = stream.next().await {
        let delta = delta?;
        match &delta {
            // The reasoning goes to standard error, so that standard output is the reply alone.
            Delta::Reasoning { text } => eprint!("{text}"),
            Delta::Retry(notice) => eprintln!("\n[asking again: {}]", notice.reason),
            _ => {}
        }
        if let Some(text) = delta.as_text() {
            if reply.text().is_empty() && !reply.reasoning().is_empty() {
                eprintln!("\n");
            }
            // Flushed at once: a line-buffered terminal would otherwise wait for the newline.
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
        }
        reply.push(&delta);
    }
    println!();
    if let (Some(finish), Some(usage)) = (reply.finish_reason(), reply.usage()) {
        eprintln!(
            "[{} · {} tokens in, {} out]",
            finish.as_str(),
            usage.input_tokens,
            usage.output_tokens
        );
    }
    Ok(())
}
