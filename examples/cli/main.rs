//! The chatstream terminal chat: `cargo run --release --example cli`.
//!
//! With no prompt and a terminal on standard input it is an interactive chat (`/help` lists the
//! commands); with a prompt as argument, or piped on standard input, it prints only the reply and
//! exits, so it composes in shell pipelines. The provider, model and store come from the same
//! environment variables as the server (see `--help`).
// A test, example or bench crate is its own root: `pub` marks what its modules share.
#![allow(unreachable_pub)]

mod interactive;
mod oneshot;
mod render;
mod reply;

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use chatstream::{
    ChatId, ChatKey, ChatService, DynLlmProvider, DynMessageStore, UserId, provider::ProviderKind,
};
use clap::{Parser, ValueEnum};

/// A terminal chat with large language models, on the chatstream library.
///
/// Interactive when started with no prompt in a terminal; otherwise the prompt (the arguments,
/// or standard input) is sent and only the reply is printed.
#[derive(Debug, Parser)]
#[command(name = "cli", version, after_help = AFTER_HELP)]
struct Args {
    /// The message to send (non-interactive mode). Without it, standard input is read when it
    /// is not a terminal.
    prompt: Vec<String>,

    /// Continue (or start) the chat with this id.
    #[arg(long, env = "CHATSTREAM_CHAT", value_name = "ID")]
    chat: Option<ChatId>,

    /// Start a new chat (the default in non-interactive mode without --chat or --continue).
    #[arg(long, env = "CHATSTREAM_NEW", conflicts_with = "continue_last")]
    new: bool,

    /// Non-interactive mode: continue the chat the interactive mode was last in.
    #[arg(
        short = 'c',
        long = "continue",
        env = "CHATSTREAM_CONTINUE",
        conflicts_with = "chat"
    )]
    continue_last: bool,

    /// Non-interactive mode: print the final message as JSON instead of streaming its text.
    #[arg(long, env = "CHATSTREAM_JSON")]
    json: bool,

    /// The upstream: openai, openai-responses, anthropic or demo [default: openai when
    /// OPENAI_API_KEY or OPENAI_BASE_URL is set, else demo].
    #[arg(long, env = "CHATSTREAM_PROVIDER", value_parser = parse_provider)]
    provider: Option<ProviderKind>,

    /// The model sent upstream [default: the provider's usual one].
    #[arg(long, env = "CHATSTREAM_MODEL")]
    model: Option<String>,

    /// Where chats are kept: sqlite://PATH, postgres://…, mongodb://…/DATABASE or memory
    /// [default: a SQLite file in the user's data directory].
    #[arg(long, env = "CHATSTREAM_DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,

    /// A system prompt sent first in every request (not stored in the chat).
    #[arg(long, env = "CHATSTREAM_SYSTEM_PROMPT", value_name = "TEXT")]
    system: Option<String>,

    /// When to use colours (NO_COLOR, when set, turns them off in `auto`).
    #[arg(long, env = "CHATSTREAM_COLOR", value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
}

const AFTER_HELP: &str = "\
Upstream settings: OPENAI_API_KEY, OPENAI_BASE_URL (any OpenAI-compatible server), ANTHROPIC_API_KEY,
ANTHROPIC_BASE_URL. With neither key nor base URL the offline demo provider answers.

Interactive commands: /new [title], /list, /switch <chat>, /history [n], /retry, /model <name>,
/help, /quit. Ctrl-C stops the reply being written; Ctrl-C or Ctrl-D at an empty prompt exits.

Examples (`cargo run --release --example cli -- ARGS`):
  cli                                  interactive, continuing the last chat
  cli --new                            interactive, in a new chat
  cli \"Explain SSE in one line\"        one reply on standard output
  git diff | cli --chat review         a prompt from a pipe, in the chat `review` (created if new)
  cli --json --chat review \"Shorter\"   the final message as JSON";

fn parse_provider(s: &str) -> Result<ProviderKind, String> {
    s.parse().map_err(|e: chatstream::Error| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Exit codes: 0 done, 1 the reply or a setup step failed, 2 bad usage (clap's), 130 stopped by
/// Ctrl-C (the shell convention for SIGINT).
const EXIT_FAILED: u8 = 1;
const EXIT_INTERRUPTED: u8 = 130;

/// What every mode needs.
#[derive(Debug, Clone)]
struct App {
    provider: DynLlmProvider,
    store: DynMessageStore,
    /// Whose chats the CLI makes and reads: one local owner, the anonymous one, whose chats a
    /// server without authentication on the same database shows too.
    owner: UserId,
    system: Option<String>,
    /// Where line history and the current chat are remembered (none: nothing is remembered).
    data_dir: Option<PathBuf>,
}

impl App {
    /// A service asking for `model` (the provider's default when `None`).
    fn service(&self, model: Option<&str>) -> chatstream::Result<ChatService> {
        let mut builder = ChatService::builder()
            .provider(self.provider.clone())
            .store(self.store.clone());
        if let Some(model) = model {
            builder = builder.model(model);
        }
        if let Some(system) = &self.system {
            builder = builder.system_prompt(system.clone());
        }
        builder.build()
    }

    /// The key of the local owner's chat `id`.
    fn chat(&self, id: &ChatId) -> ChatKey {
        ChatKey::new(self.owner.clone(), id.clone())
    }

    /// The chat the interactive mode was in when it last ran, if it still exists.
    async fn remembered_chat(&self) -> Option<ChatId> {
        let path = self.data_dir.as_ref()?.join(CURRENT_CHAT_FILE);
        let id: ChatId = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
        self.store
            .get_chat(&self.chat(&id))
            .await
            .ok()
            .flatten()
            .map(|c| c.id)
    }

    /// Remembers the current chat for the next run; failing to is not worth stopping for.
    fn remember_chat(&self, id: &ChatId) {
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::write(dir.join(CURRENT_CHAT_FILE), id.as_str());
        }
    }
}

const CURRENT_CHAT_FILE: &str = "current-chat";

fn main() -> ExitCode {
    let args = Args::parse();
    let interactive = args.prompt.is_empty() && std::io::stdin().is_terminal();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let style = render::Style::new(
        interactive && std::io::stdout().is_terminal(),
        args.color,
        std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
    );
    let app = match runtime.block_on(setup(&args)) {
        Ok(app) => app,
        Err(e) => {
            style.error_line(&e);
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let code = if interactive {
        interactive::run(&runtime, app, &args, style)
    } else {
        runtime.block_on(oneshot::run(app, &args))
    };
    // A reply task still closing its upstream must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}

/// Opens the store and builds the provider.
async fn setup(args: &Args) -> Result<App, String> {
    let data_dir = dirs::data_dir().map(|d| d.join("chatstream"));
    if let Some(dir) = &data_dir
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        return Err(format!("cannot create {}: {e}", dir.display()));
    }
    let url = match (&args.database_url, &data_dir) {
        (Some(url), _) => url.clone(),
        (None, Some(dir)) => sqlite_url(&dir.join("chatstream.db")),
        (None, None) => {
            return Err(
                "no user data directory to keep chats in: set CHATSTREAM_DATABASE_URL".into(),
            );
        }
    };
    let store = chatstream::store::open(&url)
        .await
        .map_err(|e| format!("cannot open the chat store {url}: {e}"))?;
    // Another terminal may be streaming into the same store right now: only replies that have not
    // been checkpointed for a long time are taken for the leftovers of a crashed run.
    let stale = chrono::Utc::now() - chrono::Duration::minutes(10);
    if let Err(e) = store.recover_streaming(Some(stale)).await {
        return Err(format!("cannot recover interrupted replies: {e}"));
    }
    Ok(App {
        provider: build_provider(args).map_err(|e| e.to_string())?,
        store,
        owner: UserId::anonymous(),
        system: args.system.clone().filter(|s| !s.trim().is_empty()),
        data_dir,
    })
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// The upstream chosen by the server's rules, in the library's standard stack (timeouts,
/// retries, mid-stream recovery).
fn build_provider(args: &Args) -> chatstream::Result<DynLlmProvider> {
    let kind = args.provider.map_or_else(ProviderKind::from_env, Ok)?;
    chatstream::provider::from_env(kind)
}

/// An error as one line: providers may quote multi-line upstream bodies.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
