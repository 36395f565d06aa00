//! Sends an image with a question and shows how it is stored and handed to the provider:
//! `cargo run --example images` (or `-- https://example.com/photo.jpg` for an image by URL).
//!
//! The model is a [`ScriptedProvider`], so the example runs with no key; with an
//! `OpenAiProvider`, `OpenAiResponsesProvider` or `AnthropicProvider` in its place, the same
//! send puts the image in each API's own shape (`image_url`, `input_image`, an `image` block).

use std::sync::Arc;

use chatstream::{
    ChatId, ChatService, ChatSession, ContentPart, Delta, EventPayload, UserInput,
    provider::{Script, ScriptedProvider},
    store::{HistoryPage, MemoryStore},
};
use futures::StreamExt;

/// A 1x1 red PNG, in base64.
const RED_DOT: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = ScriptedProvider::new().then(Script::reply(["It is ", "a single red dot."]));
    let service = ChatService::builder()
        .provider(Arc::new(provider.clone()))
        .store(Arc::new(MemoryStore::new()))
        .build()?;
    let session = service.session(ChatId::new("images")?);

    let input = UserInput::new("What is in this picture?");
    let input = match std::env::args().nth(1) {
        // A `data:` URL becomes an inline image; any other URL is fetched by the provider.
        Some(url) => match ContentPart::image(url) {
            ContentPart::ImageBase64 { media_type, data } => {
                input.with_image_base64(media_type, data)
            }
            part => input.with_image_url(part.to_url().unwrap_or_default()),
        },
        None => input.with_image_base64("image/png", RED_DOT),
    };
    let mut reply = session.send(input).await?;
    while let Some(event) = reply.events.next().await {
        if let EventPayload::Delta(Delta::Text { text }) = &*event?.payload {
            print!("{text}");
        }
    }
    println!();

    // The user message keeps its text and its image, in order, as every store does.
    let history = session.history(HistoryPage::default()).await?;
    println!(
        "stored: {}",
        serde_json::to_string_pretty(&history[0].parts)?
    );
    // What the provider was asked: the same parts, which each provider encodes for its API.
    let asked = &provider.requests()[0].messages[0];
    println!(
        "sent {} parts: {}",
        asked.parts.len(),
        asked
            .parts
            .iter()
            .map(|p| if p.is_image() { "image" } else { "text" })
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
