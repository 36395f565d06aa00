//! The chatstream chat server: `cargo run --release --example server`, then open the printed
//! address. Configuration comes from environment variables (see the README).

mod api;
mod app;
mod config;
mod error;
mod openai_compat;
mod stateless;

use std::sync::Arc;

use chatstream::{
    ChatService, DynProvider, LlmProvider,
    provider::{AnthropicProvider, DemoProvider, OpenAiProvider},
    resilience::{RecoveryPolicy, ResilienceExt, RetryPolicy, Timeouts},
};

use crate::config::{Config, ProviderKind};

#[tokio::main]
async fn main() {
    // Logs go to standard error; standard output carries only the start-up line.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=info".into()),
        )
        .init();
    if let Err(e) = run().await {
        eprintln!("chatstream server: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_lookup(|k| std::env::var(k).ok())?;
    let provider = build_provider(&config)?;
    let model = config
        .model
        .clone()
        .unwrap_or_else(|| provider.default_model().to_string());
    let store = chatstream::store::open(&config.database_url).await?;
    let hub = app::open_hub(&config).await?;
    let service = ChatService::builder()
        .provider(provider.clone())
        .store(store)
        .hub(hub)
        .build()?;
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
        "chatstream listening on http://{} (provider {}, model {}, store {}, hub {})",
        listener.local_addr()?,
        config.provider.as_str(),
        model,
        redact(&config.database_url),
        config.redis_url.as_deref().map_or("local".into(), redact),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    // On a signal the listener stops accepting at once; live replies get the grace period, then
    // are stopped and persisted `interrupted`, which ends their event streams so that the
    // server's graceful shutdown can finish.
    let replies_done = tokio::spawn({
        let service = service.clone();
        let shutdown = shutdown.clone();
        let grace = config.shutdown_grace;
        async move {
            shutdown.cancelled().await;
            service.shutdown(grace).await;
        }
    });
    let state = app::AppState {
        service,
        provider,
        model,
        config: Arc::new(config),
    };
    // `into_make_service` hands each connection a clone of the router's `Arc`; serving the
    // `Router` itself rebuilds every route for each new connection (about 10 KiB per connection).
    axum::serve(listener, app::app(state).into_make_service())
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    replies_done.await?;
    tracing::info!("stopped");
    Ok(())
}

/// The upstream, wrapped (innermost first) in timeouts, retries and mid-stream recovery.
fn build_provider(config: &Config) -> chatstream::Result<DynProvider> {
    fn resilient(p: impl LlmProvider) -> DynProvider {
        Arc::new(
            p.with_timeouts(Timeouts::default())
                .with_retry(RetryPolicy::default())
                .with_recovery(RecoveryPolicy::default()),
        )
    }
    Ok(match config.provider {
        ProviderKind::OpenAi => resilient(OpenAiProvider::from_env()?),
        ProviderKind::Anthropic => resilient(AnthropicProvider::from_env()?),
        ProviderKind::Demo => Arc::new(DemoProvider::new()),
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

async fn watch_signals(shutdown: tokio_util::sync::CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
