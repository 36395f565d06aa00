//! The server's settings: command-line options, each with an environment-variable twin.

use std::{fmt, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use chatstream::{
    ContextBudget, UserId,
    provider::ProviderKind,
    server::{
        ServerOptions,
        auth::{ApiKeys, DynAuthenticator, JwtAuth, NoAuth, SessionCookie},
    },
};
use clap::{Parser, Subcommand, ValueEnum};

/// The chatstream chat server: the web page at `/` and the HTTP API of `chatstream::server`.
///
/// Every option can also be set by the environment variable named beside it; the command line
/// wins.
#[derive(Debug, Clone, Parser)]
#[command(name = "server", version, after_help = AFTER_HELP)]
pub struct Config {
    /// Something else to do than serving.
    #[command(subcommand)]
    pub command: Option<Command>,

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

    /// The model's context window in tokens, in place of the table's: a request carries as
    /// much history as this less the reply's room holds [default: the model's window from
    /// the table in the README; 8192 for a model it does not know].
    #[arg(long, env = "CHATSTREAM_CONTEXT_TOKENS", value_name = "TOKENS")]
    pub context_tokens: Option<std::num::NonZeroUsize>,

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

    /// How requests are authenticated: none (every request is one anonymous user), keys (API
    /// keys) or jwt (JSON Web Tokens) [default: none, allowed only on a loopback address].
    #[arg(long, env = "CHATSTREAM_AUTH", value_enum, value_name = "MODE")]
    pub auth: Option<AuthMode>,

    /// With --auth keys: the file of `USER_ID SHA256_HEX` lines (see `keygen`).
    #[arg(long, env = "CHATSTREAM_API_KEYS_FILE", value_name = "PATH")]
    pub api_keys_file: Option<PathBuf>,

    /// With --auth jwt: the HS256 secret the app's login signs tokens with (32 bytes or more).
    #[arg(
        long,
        env = "CHATSTREAM_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub jwt_secret: Option<Secret>,

    /// With --auth jwt: the PEM public key (RSA for RS256, EC P-256 for ES256) that verifies
    /// the app's tokens, instead of a secret.
    #[arg(long, env = "CHATSTREAM_JWT_PUBLIC_KEY_FILE", value_name = "PATH")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// With --auth jwt: the `iss` every token must have.
    #[arg(long, env = "CHATSTREAM_JWT_ISSUER", value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,

    /// With --auth jwt: the `aud` every token must have.
    #[arg(long, env = "CHATSTREAM_JWT_AUDIENCE", value_name = "AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// The secret the page's session cookies are encrypted with (32 bytes or more, the same on
    /// every instance) [default: a random one per start, which signs everyone out on restart].
    #[arg(
        long,
        env = "CHATSTREAM_COOKIE_KEY",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub cookie_key: Option<Secret>,

    /// Whether the session cookie is `Secure` (sent over HTTPS only) [default: true unless the
    /// address is loopback]. Set it to true behind a TLS proxy on the same machine.
    #[arg(long, env = "CHATSTREAM_COOKIE_SECURE", value_name = "BOOL")]
    pub cookie_secure: Option<bool>,

    /// At most this many live replies per user at once; one more is answered 429 [default: 4
    /// with authentication, none without].
    #[arg(long, env = "CHATSTREAM_MAX_LIVE_PER_USER", value_name = "N")]
    pub max_live_per_user: Option<usize>,

    /// At most this many requests per user and minute, in a burst or spread out; past it, 429
    /// with Retry-After (0: no limit) [default: 120 with authentication, none without].
    #[arg(long, env = "CHATSTREAM_RATE_LIMIT_PER_MIN", value_name = "N")]
    pub rate_limit_per_min: Option<u32>,
}

/// What the server can do besides serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Mints a random API key for a user: prints the key (once: only its digest is kept) and
    /// the line that admits it in the keys file.
    Keygen {
        /// The user the key belongs to.
        user: String,
    },
}

/// How requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Every request is the one anonymous user's.
    None,
    /// API keys, `Authorization: Bearer KEY`.
    Keys,
    /// JSON Web Tokens from the app's login, `Authorization: Bearer JWT`.
    Jwt,
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMode::None => "none",
            AuthMode::Keys => "keys",
            AuthMode::Jwt => "jwt",
        })
    }
}

/// A secret setting: its `Debug` output hides it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The default per-user limits, with authentication on (without it, every request is one user's
/// and these would throttle the whole server).
const DEFAULT_MAX_LIVE_PER_USER: usize = 4;
const DEFAULT_RATE_LIMIT_PER_MIN: u32 = 120;

const AFTER_HELP: &str = "\
Upstream settings: OPENAI_API_KEY, OPENAI_BASE_URL (any OpenAI-compatible server), ANTHROPIC_API_KEY,
ANTHROPIC_BASE_URL. With neither key nor base URL the offline demo provider answers.

Exposing the server: on an address other than loopback, CHATSTREAM_AUTH must be set (keys or jwt,
or none to serve everyone as one anonymous user). `server keygen USER_ID` mints an API key.";

fn parse_provider(s: &str) -> Result<ProviderKind, String> {
    s.parse().map_err(|e: chatstream::Error| e.to_string())
}

impl Config {
    /// The upstream: the one named, else the one the environment implies.
    pub fn provider_kind(&self) -> chatstream::Result<ProviderKind> {
        self.provider.map_or_else(ProviderKind::from_env, Ok)
    }

    /// How much history a request carries: the window set, else the model's.
    pub fn context_budget(&self) -> ContextBudget {
        self.context_tokens
            .map_or(ContextBudget::Model, |n| ContextBudget::Window(n.get()))
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

    /// How requests are authenticated: the mode chosen, or `none` on a loopback address; on any
    /// other address a mode must be chosen.
    pub fn auth_mode(&self) -> Result<AuthMode, String> {
        match self.auth {
            Some(mode) => Ok(mode),
            None if self.addr.ip().is_loopback() => Ok(AuthMode::None),
            None => Err(format!(
                "refusing to serve {} without authentication: set CHATSTREAM_AUTH=keys or jwt \
                 (or CHATSTREAM_AUTH=none to serve everyone as one anonymous user)",
                self.addr
            )),
        }
    }

    /// `options` with the authentication, the page's session cookie and the per-user limits
    /// these settings ask for.
    pub fn with_access(&self, options: ServerOptions) -> Result<ServerOptions, String> {
        let mode = self.auth_mode()?;
        let authenticator: DynAuthenticator = match mode {
            AuthMode::None => Arc::new(NoAuth),
            AuthMode::Keys => {
                let path = self.api_keys_file.as_ref().ok_or(
                    "CHATSTREAM_AUTH=keys needs CHATSTREAM_API_KEYS_FILE (`server keygen USER_ID` \
                     prints a line for it)",
                )?;
                Arc::new(ApiKeys::from_file(path).map_err(|e| e.to_string())?)
            }
            AuthMode::Jwt => Arc::new(self.jwt()?),
        };
        let mut options = options.with_authenticator(authenticator);
        let on = mode != AuthMode::None;
        if on {
            let cookie = match &self.cookie_key {
                Some(secret) => SessionCookie::from_secret(secret.expose()),
                None => {
                    tracing::warn!(
                        "CHATSTREAM_COOKIE_KEY is not set: the page's sessions use a random key, \
                         end when the server restarts and are not shared with other instances"
                    );
                    SessionCookie::random()
                }
            }
            .map_err(|e| e.to_string())?;
            // Not every browser keeps a Secure cookie set over plain HTTP, even from loopback,
            // where the page is reached over HTTP unless a TLS proxy says otherwise.
            let secure = self.cookie_secure.unwrap_or(!self.addr.ip().is_loopback());
            options = options.with_session_cookie(cookie.with_secure(secure));
        }
        let max_live = self
            .max_live_per_user
            .or(on.then_some(DEFAULT_MAX_LIVE_PER_USER));
        if let Some(max) = max_live {
            options = options.with_max_live_per_user(max);
        }
        let rate = self
            .rate_limit_per_min
            .or(on.then_some(DEFAULT_RATE_LIMIT_PER_MIN));
        if let Some(rate) = rate {
            options = options.with_rate_limit_per_min(rate);
        }
        Ok(options)
    }

    fn jwt(&self) -> Result<JwtAuth, String> {
        let auth = match (&self.jwt_secret, &self.jwt_public_key_file) {
            (Some(secret), None) => JwtAuth::hs256(secret.expose()),
            (None, Some(path)) => JwtAuth::from_public_key_file(path),
            _ => {
                return Err(
                    "CHATSTREAM_AUTH=jwt needs either CHATSTREAM_JWT_SECRET (HS256) or \
                     CHATSTREAM_JWT_PUBLIC_KEY_FILE (RS256, ES256), and not both"
                        .into(),
                );
            }
        }
        .map_err(|e| e.to_string())?;
        let auth = match &self.jwt_issuer {
            Some(issuer) => auth.with_issuer(issuer.clone()),
            None => auth,
        };
        Ok(match &self.jwt_audience {
            Some(audience) => auth.with_audience(audience.clone()),
            None => auth,
        })
    }
}

/// `keygen USER_ID`: a new key and its keys-file line, on standard output.
pub fn keygen(user: &str) -> Result<String, String> {
    let user = UserId::new(user).map_err(|e| e.to_string())?;
    let minted = chatstream::server::auth::NewApiKey::generate(user).map_err(|e| e.to_string())?;
    Ok(format!("key:  {}\nline: {}\n", minted.key(), minted.line()))
}
