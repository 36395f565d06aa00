//! An existing axum application that mounts chatstream's chat routes under `/chat`, beside its
//! own routes and state: `cargo run --example mount`, then
//!
//! ```text
//! curl -s localhost:3001/                      # the app's own route
//! curl -s localhost:3001/visits                # the app's own state
//! curl -s -XPOST localhost:3001/chat/api/messages -H 'content-type: application/json' \
//!   -d '{"chatId":"demo","content":"Hello"}'
//! curl -sN localhost:3001/chat/api/stream/demo
//! ```

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use axum::{Router, extract::State, routing::get};
use chatstream::{
    ChatService,
    provider::DemoProvider,
    server::{self, ServerOptions},
};

/// The application's own state, unrelated to chatstream.
#[derive(Clone, Default)]
struct AppState {
    visits: Arc<AtomicU64>,
}

async fn home(State(state): State<AppState>) -> &'static str {
    state.visits.fetch_add(1, Ordering::Relaxed);
    "my app; the chat API is under /chat/api/…\n"
}

async fn visits(State(state): State<AppState>) -> String {
    format!("{} visits\n", state.visits.load(Ordering::Relaxed))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let chat = ChatService::builder()
        .provider(Arc::new(DemoProvider::new()))
        .build()?;
    let options = ServerOptions::default();
    let app = Router::new()
        .route("/", get(home))
        .route("/visits", get(visits))
        .with_state(AppState::default())
        // The chat router carries its own state, so it nests into any app.
        .nest("/chat", server::router(chat.clone(), options.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
    server::serve(listener, app, chat, &options, server::shutdown_signal()).await?;
    Ok(())
}
