//! The server's settings: command-line options, each with an environment-variable twin.

use std::{net::SocketAddr, time::Duration};

use chatstream::{provider::ProviderKind, server::ServerOptions};
use clap::Parser;

/// The chatstream chat server: the web page at `/` and the HTTP API of `chatstream::server`.
///
/// Every option can also be set by the environment variable named beside it; the command line
/// wins.
#[derive(Debug, Clone, Parser)]
#[command(name = "server", version, after_help = AFTER_HELP)]
pub struct Config {
    /// The address to listen on.
    #[arg(long, env = "CHATSTREAM_ADDR", default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,

    /// Where chats are kept: sqlite://PATH, postgres://… or memory.
    #[arg(
        long,
        env = "CHATSTREAM_DATABASE_URL",
        default_value = "sqlite://chatstream.db",
        value_name = "URL"
    )]
    pub database_url: String,

    /// The upstream: openai, openai-responses, anthropic or demo [default: openai when
    /// OPENAI_API_KEY or OPENAI_BASE_URL is set, else demo].
    #[arg(long, env = "CHATSTREAM_PROVIDER", value_parser = parse_provider)]
    pub provider: Option<ProviderKind>,

    /// The model sent upstream [default: the provider's usual one].
    #[arg(long, env = "CHATSTREAM_MODEL")]
    pub model: Option<String>,

    /// Share live replies with other instances through this Redis (redis://…).
    #[arg(long, env = "CHATSTREAM_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,

    /// The prefix of every Redis key (several deployments can share one Redis).
    #[arg(long, env = "CHATSTREAM_REDIS_PREFIX", default_value = "chatstream")]
    pub redis_prefix: String,

    /// How long a live reply's lease lasts, in milliseconds: how soon other instances may take
    /// over the replies of an instance that died [default: 10000].
    #[arg(long, env = "CHATSTREAM_REDIS_LEASE_MS", value_name = "MS")]
    pub redis_lease_ms: Option<u64>,

    /// The largest request body, in bytes.
    #[arg(long, env = "CHATSTREAM_BODY_LIMIT", default_value_t = 1024 * 1024, value_name = "BYTES")]
    pub body_limit: usize,

    /// How often an idle event stream gets a keep-alive comment, in seconds.
    #[arg(
        long,
        env = "CHATSTREAM_KEEP_ALIVE_SECS",
        default_value_t = 15,
        value_name = "SECS"
    )]
    pub keep_alive_secs: u64,

    /// On SIGINT/SIGTERM, how long live replies may finish before they are stopped and saved
    /// `interrupted`, in seconds.
    #[arg(
        long,
        env = "CHATSTREAM_SHUTDOWN_GRACE_SECS",
        default_value_t = 5,
        value_name = "SECS"
    )]
    pub shutdown_grace_secs: u64,

    /// Serve Prometheus metrics at `GET /metrics` (see the README's Observability section).
    #[arg(long, env = "CHATSTREAM_METRICS")]
    pub metrics: bool,

    /// Origins allowed by CORS, comma-separated [default: none, CORS off].
    #[arg(
        long,
        env = "CHATSTREAM_CORS_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGINS"
    )]
    pub cors_origins: Vec<String>,
}

const AFTER_HELP: &str = "\
Upstream settings: OPENAI_API_KEY, OPENAI_BASE_URL (any OpenAI-compatible server), ANTHROPIC_API_KEY,
ANTHROPIC_BASE_URL. With neither key nor base URL the offline demo provider answers.";

fn parse_provider(s: &str) -> Result<ProviderKind, String> {
    s.parse().map_err(|e: chatstream::Error| e.to_string())
}

impl Config {
    /// The upstream: the one named, else the one the environment implies.
    pub fn provider_kind(&self) -> chatstream::Result<ProviderKind> {
        self.provider.map_or_else(ProviderKind::from_env, Ok)
    }

    /// The Redis lease, when one is set (at least 100 ms).
    pub fn redis_lease(&self) -> Option<Duration> {
        self.redis_lease_ms
            .map(|ms| Duration::from_millis(ms.max(100)))
    }

    /// How the chat routes serve.
    pub fn server_options(&self) -> ServerOptions {
        ServerOptions::default()
            .with_body_limit(self.body_limit)
            .with_keep_alive(Duration::from_secs(self.keep_alive_secs))
            .with_shutdown_grace(Duration::from_secs(self.shutdown_grace_secs))
            .with_cors_origins(
                self.cors_origins
                    .iter()
                    .map(|o| o.trim())
                    .filter(|o| !o.is_empty()),
            )
    }
}
