//! The chatstream chat server: `cargo run --release --example server`, then open the printed
//! address. `--help` lists the options; each has an environment-variable twin (see the README).
//!
//! The HTTP API is `chatstream::server`; this program adds its configuration and the web page.
// A test, example or bench crate is its own root: `pub` marks what its modules share.
#![allow(unreachable_pub)]

mod config;
mod page;

use std::sync::Arc;

use chatstream::{ChatService, DynStreamHub, server};
use clap::Parser;

use crate::config::{Command, Config};

#[tokio::main]
async fn main() {
    let config = Config::parse();
    if let Some(Command::Keygen { user }) = &config.command {
        match config::keygen(user) {
            Ok(printed) => {
                print!("{printed}");
                eprintln!(
                    "Hand the key to {user}: it is not shown again. Add the line to the API keys \
                     file (CHATSTREAM_API_KEYS_FILE); it holds only the key's digest."
                );
                return;
            }
            Err(e) => {
                eprintln!("chatstream server: {e}");
                std::process::exit(2);
            }
        }
    }
    // Logs go to standard error; standard output carries only the start-up line.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=info".into()),
        )
        .init();
    if let Err(e) = run(config).await {
        eprintln!("chatstream server: {e}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    // Before anything is opened: a server that would be open to everyone stops here.
    let mut options = config.with_access(config.server_options())?;
    let auth = config.auth_mode()?;
    let kind = config.provider_kind()?;
    let provider = chatstream::provider::from_env(kind)?;
    let store = chatstream::store::open(&config.database_url).await?;
    let hub = open_hub(&config).await?;
    let mut builder = ChatService::builder()
        .provider(provider)
        .store(store)
        .hub(hub)
        .context_budget(config.context_budget());
    if let Some(model) = &config.model {
        builder = builder.model(model.clone());
    }
    let service = builder.build()?;
    // Replies left streaming by an instance that is gone (this one's last run, or another
    // instance whose lease expired) are marked interrupted, now and, with Redis, by the service
    // as each lease expires.
    let recovered = service.recover_orphans().await?;
    if recovered > 0 {
        tracing::warn!(
            recovered,
            "marked replies whose instance is gone as interrupted"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    println!(
        "chatstream listening on http://{} (provider {kind}, model {}, store {}, hub {}, auth {auth})",
        listener.local_addr()?,
        service.model(),
        redact(&config.database_url),
        config.redis_url.as_deref().map_or("local".into(), redact),
    );
    if config.metrics {
        options = options.with_metrics(chatstream::metrics::install()?);
    }
    let app = server::router(service.clone(), options.clone()).merge(page::routes());
    server::serve(listener, app, service, &options, server::shutdown_signal()).await?;
    Ok(())
}

/// The hub of live replies: Redis when `CHATSTREAM_REDIS_URL` is set (several instances share
/// replies), else in-process.
async fn open_hub(config: &Config) -> chatstream::Result<DynStreamHub> {
    Ok(match &config.redis_url {
        Some(url) => {
            let mut builder =
                chatstream::hub::RedisHub::builder(url.clone()).prefix(config.redis_prefix.clone());
            if let Some(lease) = config.redis_lease() {
                builder = builder.lease(lease);
            }
            Arc::new(builder.connect().await?)
        }
        None => Arc::new(chatstream::LocalHub::new()),
    })
}

/// Hides a password in a database URL before it is printed.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
