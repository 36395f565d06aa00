//! Configuration from environment variables (see the table in the README).

use std::{net::SocketAddr, time::Duration};

/// Which upstream the server talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Demo,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Demo => "demo",
        }
    }
}

/// Everything the server reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub database_url: String,
    pub provider: ProviderKind,
    pub model: Option<String>,
    pub redis_url: Option<String>,
    /// The prefix of every Redis key (several deployments can share one Redis).
    pub redis_prefix: String,
    /// How long a live reply's lease lasts without renewal (how soon other instances may take
    /// over the replies of an instance that died).
    pub redis_lease: Option<Duration>,
    pub body_limit: usize,
    pub keep_alive: Duration,
    pub cors_origins: Vec<String>,
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
            database_url: "sqlite://chatstream.db".into(),
            provider: ProviderKind::Demo,
            model: None,
            redis_url: None,
            redis_prefix: "chatstream".into(),
            redis_lease: None,
            body_limit: 1024 * 1024,
            keep_alive: Duration::from_secs(15),
            cors_origins: Vec::new(),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Reads the configuration; `get` looks a variable up (the process environment in `main`).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let mut c = Config::default();
        if let Some(addr) = get("CHATSTREAM_ADDR") {
            c.addr = addr.parse().map_err(|e| {
                format!("CHATSTREAM_ADDR={addr:?} is not an address like 127.0.0.1:3000: {e}")
            })?;
        }
        if let Some(url) = get("CHATSTREAM_DATABASE_URL") {
            c.database_url = url;
        }
        c.provider = match get("CHATSTREAM_PROVIDER").as_deref() {
            Some("openai") => ProviderKind::OpenAi,
            Some("anthropic") => ProviderKind::Anthropic,
            Some("demo") => ProviderKind::Demo,
            Some(other) => {
                return Err(format!(
                    "CHATSTREAM_PROVIDER={other:?}: use openai, anthropic or demo"
                ));
            }
            None if get("OPENAI_API_KEY").is_some() || get("OPENAI_BASE_URL").is_some() => {
                ProviderKind::OpenAi
            }
            None => ProviderKind::Demo,
        };
        c.model = get("CHATSTREAM_MODEL");
        c.redis_url = get("CHATSTREAM_REDIS_URL");
        if let Some(prefix) = get("CHATSTREAM_REDIS_PREFIX") {
            c.redis_prefix = prefix;
        }
        if let Some(ms) = get("CHATSTREAM_REDIS_LEASE_MS") {
            let ms: u64 = ms
                .parse()
                .map_err(|_| format!("CHATSTREAM_REDIS_LEASE_MS={ms:?} is not a number"))?;
            c.redis_lease = Some(Duration::from_millis(ms.max(100)));
        }
        if let Some(limit) = get("CHATSTREAM_BODY_LIMIT") {
            c.body_limit = limit
                .parse()
                .map_err(|_| format!("CHATSTREAM_BODY_LIMIT={limit:?} is not a number of bytes"))?;
        }
        if let Some(secs) = get("CHATSTREAM_KEEP_ALIVE_SECS") {
            let secs: u64 = secs
                .parse()
                .map_err(|_| format!("CHATSTREAM_KEEP_ALIVE_SECS={secs:?} is not a number"))?;
            c.keep_alive = Duration::from_secs(secs.max(1));
        }
        if let Some(secs) = get("CHATSTREAM_SHUTDOWN_GRACE_SECS") {
            let secs: u64 = secs
                .parse()
                .map_err(|_| format!("CHATSTREAM_SHUTDOWN_GRACE_SECS={secs:?} is not a number"))?;
            c.shutdown_grace = Duration::from_secs(secs);
        }
        if let Some(origins) = get("CHATSTREAM_CORS_ORIGINS") {
            c.cors_origins = origins
                .split(',')
                .map(|o| o.trim().to_string())
                .filter(|o| !o.is_empty())
                .collect();
        }
        Ok(c)
    }
}
