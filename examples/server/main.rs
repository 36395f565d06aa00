//! The chatstream chat server: `cargo run --release --example server`, then open the printed
//! address. `--help` lists the options; each has an environment-variable twin (see the README).
//!
//! The HTTP API is `chatstream::server`; this program adds its configuration and the web page.

mod config;
mod page;

use std::sync::Arc;

use chatstream::{ChatService, DynStreamHub, server};
use clap::Parser;

use crate::config::Config;

/// How often an instance on Redis looks for replies whose owner died (their lease expired).
const RECOVERY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

#[tokio::main]
async fn main() {
    let config = Config::parse();
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
    let kind = config.provider_kind()?;
    let provider = chatstream::provider::from_env(kind)?;
    let store = chatstream::store::open(&config.database_url).await?;
    let hub = open_hub(&config).await?;
    let mut builder = ChatService::builder()
        .provider(provider)
        .store(store)
        .hub(hub);
    if let Some(model) = &config.model {
        builder = builder.model(model.clone());
    }
    let service = builder.build()?;
    // Replies left streaming by an instance that is gone (this one's last run, or another
    // instance whose lease expired) are marked interrupted, now and, with Redis, periodically.
    let recovered = recover(&service).await?;
    if recovered > 0 {
        tracing::warn!(
            recovered,
            "marked replies whose instance is gone as interrupted"
        );
    }
    if config.redis_url.is_some() {
        spawn_recovery(service.clone());
    }
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    println!(
        "chatstream listening on http://{} (provider {kind}, model {}, store {}, hub {})",
        listener.local_addr()?,
        service.model(),
        redact(&config.database_url),
        config.redis_url.as_deref().map_or("local".into(), redact),
    );
    let options = config.server_options();
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

/// Marks the replies whose generating instance is gone as `interrupted` (never one that a live
/// instance still owns).
async fn recover(service: &ChatService) -> chatstream::Result<u64> {
    chatstream::hub::recover_orphans(service.store().as_ref(), service.hub().as_ref()).await
}

/// Runs [`recover`] periodically, so that the replies of an instance that died are marked once
/// its lease has expired.
fn spawn_recovery(service: ChatService) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RECOVERY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match recover(&service).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    recovered = n,
                    "marked replies of a dead instance as interrupted"
                ),
                Err(e) => tracing::warn!(error = %e, "recovery pass failed"),
            }
        }
    });
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
