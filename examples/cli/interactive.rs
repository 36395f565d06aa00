//! Interactive mode: a prompt with line editing, streamed replies and slash commands.

use std::{path::PathBuf, process::ExitCode};

use chatstream::{
    Chat, ChatId, ChatService, ChatSession, Message, MessageStatus, Role, SendOptions, UserInput,
    store::{ChatPage, HistoryPage},
};
use rustyline::{
    Cmd, ConditionalEventHandler, Config, DefaultEditor, Event, EventContext, EventHandler,
    KeyEvent, Movement, RepeatCount, error::ReadlineError,
};
use tokio::runtime::Runtime;

use crate::{
    App, Args, EXIT_FAILED,
    render::Style,
    reply::{self, Interrupts, Show},
};

const PROMPT: &str = "you> ";
const HISTORY_FILE: &str = "history.txt";
const HELP: &str = "\
/new [title]     start a new chat
/list            list chats, most recent first
/switch <chat>   go to a chat (its id, a unique start of it, or its number in /list)
/history [n]     show the last n messages (default 20)
/retry           generate the last reply again
/model [name]    show or change the model
/help            this help
/quit            leave (or Ctrl-D, or Ctrl-C at an empty prompt)
Ctrl-C while a reply is written stops it; the partial reply is kept.";

/// The REPL's state.
struct Repl {
    app: App,
    style: Style,
    model: Option<String>,
    service: ChatService,
    chat: ChatId,
    /// The chats of the last `/list`, for `/switch N`.
    listed: Vec<Chat>,
    interrupts: Interrupts,
}

enum Next {
    Continue,
    Quit,
}

/// Runs the interactive chat until the user leaves.
pub fn run(rt: &Runtime, app: App, args: &Args, style: Style) -> ExitCode {
    let started = rt.block_on(async {
        let interrupts = Interrupts::install().map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
        let service = app
            .service(args.model.as_deref())
            .map_err(|e| e.to_string())?;
        let chat = first_chat(&app, args).await?;
        Ok::<_, String>((interrupts, service, chat))
    });
    let (interrupts, service, chat) = match started {
        Ok(started) => started,
        Err(e) => {
            style.error_line(&e);
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let mut editor = match editor() {
        Ok(editor) => editor,
        Err(e) => {
            style.error_line(&format!("cannot set up line editing: {e}"));
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let history = app.data_dir.as_ref().map(|d| d.join(HISTORY_FILE));
    if let Some(path) = &history {
        // A first run has no history file yet.
        let _ = editor.load_history(path);
    }
    let mut repl = Repl {
        app,
        style,
        model: args.model.clone(),
        service,
        chat,
        listed: Vec::new(),
        interrupts,
    };
    rt.block_on(repl.banner());
    repl.app.remember_chat(&repl.chat);
    let code = loop {
        match editor.readline(PROMPT) {
            Ok(line) => {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(line);
                match rt.block_on(repl.handle(line)) {
                    Ok(Next::Continue) => {}
                    Ok(Next::Quit) => break ExitCode::SUCCESS,
                    Err(e) => repl.style.error_line(&e),
                }
            }
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => break ExitCode::SUCCESS,
            Err(e) => {
                repl.style.error_line(&format!("cannot read input: {e}"));
                break ExitCode::from(EXIT_FAILED);
            }
        }
    };
    save_history(&mut editor, history);
    code
}

fn editor() -> rustyline::Result<DefaultEditor> {
    let config = Config::builder()
        .auto_add_history(false)
        .history_ignore_dups(true)?
        .max_history_size(1000)?
        .build();
    let mut editor = DefaultEditor::with_config(config)?;
    editor.bind_sequence(
        KeyEvent::ctrl('C'),
        EventHandler::Conditional(Box::new(ClearOrInterrupt)),
    );
    Ok(editor)
}

fn save_history(editor: &mut DefaultEditor, path: Option<PathBuf>) {
    if let Some(path) = path {
        let _ = editor.save_history(&path);
    }
}

/// Ctrl-C clears a line that has text, and leaves only at an empty prompt.
struct ClearOrInterrupt;

impl ConditionalEventHandler for ClearOrInterrupt {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, ctx: &EventContext<'_>) -> Option<Cmd> {
        if ctx.line().is_empty() {
            Some(Cmd::Interrupt)
        } else {
            Some(Cmd::Kill(Movement::WholeLine))
        }
    }
}

/// `--chat`, else `--new`, else the chat of the last run, else the most recent one, else a new
/// one. A new chat is only stored when its first message is sent, so starting and leaving leaves
/// no empty chat behind.
async fn first_chat(app: &App, args: &Args) -> Result<ChatId, String> {
    if let Some(id) = &args.chat {
        if args.new {
            return app
                .store
                .create_chat(&app.owner, Some(id.clone()), None)
                .await
                .map(|c| c.id)
                .map_err(|e| e.to_string());
        }
        return Ok(id.clone());
    }
    if args.new {
        return Ok(ChatId::generate());
    }
    if let Some(id) = app.remembered_chat().await {
        return Ok(id);
    }
    let recent = app
        .store
        .list_chats(
            &app.owner,
            ChatPage {
                limit: 1,
                offset: 0,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(recent
        .into_iter()
        .next()
        .map_or_else(ChatId::generate, |c| c.id))
}

impl Repl {
    fn model_name(&self) -> &str {
        self.model
            .as_deref()
            .unwrap_or_else(|| self.app.provider.default_model())
    }

    async fn banner(&self) {
        println!(
            "{}",
            self.style.dim(&format!(
                "chatstream · {} · model {} · /help for commands, Ctrl-D to leave",
                self.app.provider.name(),
                self.model_name()
            ))
        );
        self.describe_chat().await;
    }

    /// One line about the current chat.
    async fn describe_chat(&self) {
        let key = self.app.chat(&self.chat);
        let chat = self.app.store.get_chat(&key).await.ok().flatten();
        let count = self
            .app
            .store
            .history(&key, HistoryPage::newest(1000))
            .await
            .map_or(0, |h| h.len());
        let title = chat
            .and_then(|c| c.title)
            .map(|t| format!(" {t:?}"))
            .unwrap_or_default();
        let what = if count == 0 {
            "new".to_string()
        } else {
            format!("{count} messages, /history to see them")
        };
        println!(
            "{}",
            self.style
                .dim(&format!("chat {}{title} ({what})", self.chat))
        );
    }

    async fn handle(&mut self, line: &str) -> Result<Next, String> {
        let Some(command) = line.strip_prefix('/') else {
            self.send(line.to_string()).await?;
            return Ok(Next::Continue);
        };
        let (name, rest) = command
            .split_once(char::is_whitespace)
            .map_or((command, ""), |(n, r)| (n, r.trim()));
        match name {
            "new" => self.new_chat(rest).await?,
            "list" | "ls" => self.list().await?,
            "switch" | "sw" => self.switch(rest).await?,
            "history" | "hist" => self.history(rest).await?,
            "retry" => self.retry().await?,
            "model" => self.set_model(rest)?,
            "help" | "?" => println!("{HELP}"),
            "quit" | "exit" | "q" => return Ok(Next::Quit),
            other => return Err(format!("unknown command /{other}: /help lists them")),
        }
        Ok(Next::Continue)
    }

    async fn send(&mut self, text: String) -> Result<(), String> {
        self.interrupts.clear();
        let session = self.service.session(self.app.chat(&self.chat));
        let handle = session
            .send(UserInput::new(text).with_options(self.send_options()))
            .await
            .map_err(|e| e.to_string())?;
        self.show(handle).await
    }

    /// Prints a reply as it streams, and how it ended.
    async fn show(&mut self, handle: chatstream::ReplyHandle) -> Result<(), String> {
        let outcome = reply::follow(handle, Show::Terminal(self.style), &mut self.interrupts)
            .await
            .map_err(|e| e.to_string())?;
        match outcome.status {
            MessageStatus::Complete => {}
            MessageStatus::Cancelled => println!("{}", self.style.warn("[stopped]")),
            MessageStatus::Failed => {
                return Err(outcome
                    .error
                    .unwrap_or_else(|| "the reply failed".to_string()));
            }
            other => println!("{}", self.style.warn(&format!("[{}]", other.as_str()))),
        }
        Ok(())
    }

    async fn new_chat(&mut self, title: &str) -> Result<(), String> {
        let title = (!title.is_empty()).then(|| title.to_string());
        let chat = self
            .app
            .store
            .create_chat(&self.app.owner, None, title)
            .await
            .map_err(|e| e.to_string())?;
        self.enter(chat.id).await;
        Ok(())
    }

    async fn enter(&mut self, chat: ChatId) {
        self.chat = chat;
        self.app.remember_chat(&self.chat);
        self.describe_chat().await;
    }

    async fn list(&mut self) -> Result<(), String> {
        self.listed = self
            .app
            .store
            .list_chats(&self.app.owner, ChatPage::default())
            .await
            .map_err(|e| e.to_string())?;
        if self.listed.is_empty() {
            println!(
                "{}",
                self.style.dim("no chats yet: type a message to start one")
            );
        }
        if !self.listed.iter().any(|c| c.id == self.chat) {
            println!(
                "{}",
                self.style
                    .bold(&format!("*    {}  (current, no messages yet)", self.chat))
            );
        }
        for (n, chat) in self.listed.iter().enumerate() {
            let line = format!(
                "{} {:>2}. {}  {}",
                if chat.id == self.chat { '*' } else { ' ' },
                n + 1,
                chat.id,
                chat.title.as_deref().unwrap_or("(untitled)"),
            );
            let when = self.style.dim(&format!(
                "  {}",
                chat.updated_at
                    .with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M")
            ));
            if chat.id == self.chat {
                println!("{}{when}", self.style.bold(&line));
            } else {
                println!("{line}{when}");
            }
        }
        Ok(())
    }

    async fn switch(&mut self, target: &str) -> Result<(), String> {
        if target.is_empty() {
            return Err("/switch needs a chat: its id, or its number in /list".into());
        }
        let store = &self.app.store;
        if let Ok(id) = target.parse::<ChatId>()
            && store
                .get_chat(&self.app.chat(&id))
                .await
                .map_err(|e| e.to_string())?
                .is_some()
        {
            self.enter(id).await;
            return Ok(());
        }
        if self.listed.is_empty() {
            self.listed = store
                .list_chats(&self.app.owner, ChatPage::default())
                .await
                .map_err(|e| e.to_string())?;
        }
        if let Ok(n) = target.parse::<usize>()
            && let Some(chat) = n.checked_sub(1).and_then(|i| self.listed.get(i))
        {
            let id = chat.id.clone();
            self.enter(id).await;
            return Ok(());
        }
        let mut matching = self
            .listed
            .iter()
            .filter(|c| c.id.as_str().starts_with(target));
        match (matching.next(), matching.next()) {
            (Some(chat), None) => {
                let id = chat.id.clone();
                self.enter(id).await;
                Ok(())
            }
            (Some(_), Some(_)) => Err(format!("{target:?} starts several chats: give more of it")),
            (None, _) => Err(format!("no chat {target:?}: /list shows them")),
        }
    }

    async fn history(&self, count: &str) -> Result<(), String> {
        let limit = if count.is_empty() {
            20
        } else {
            count
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("/history takes a number of messages, not {count:?}"))?
        };
        let messages = self
            .app
            .store
            .history(&self.app.chat(&self.chat), HistoryPage::newest(limit))
            .await
            .map_err(|e| e.to_string())?;
        if messages.is_empty() {
            println!("{}", self.style.dim("no messages in this chat yet"));
        }
        for message in &messages {
            self.print_message(message);
        }
        Ok(())
    }

    fn print_message(&self, message: &Message) {
        let who = match message.role {
            Role::User => "you",
            Role::Assistant => "assistant",
            Role::System => "system",
            Role::Tool => "tool",
        };
        let status = match message.status {
            MessageStatus::Complete => String::new(),
            other => format!(" [{}]", other.as_str()),
        };
        let mut text = message.content.trim_end().to_string();
        if text.is_empty() && message.role == Role::Assistant {
            text = message
                .error
                .as_deref()
                .map(crate::one_line)
                .unwrap_or_default();
        }
        println!(
            "{} {text}{}",
            self.style.bold(&format!("{who}:")),
            self.style.warn(&status)
        );
    }

    /// Generates the last reply again: the earlier one stays in the history but leaves the
    /// model's context.
    async fn retry(&mut self) -> Result<(), String> {
        self.interrupts.clear();
        let handle = self
            .service
            .session(self.app.chat(&self.chat))
            .regenerate_with(self.send_options())
            .await
            .map_err(|e| match e {
                chatstream::Error::Invalid { .. } => {
                    "nothing to retry in this chat yet".to_string()
                }
                other => other.to_string(),
            })?;
        self.show(handle).await
    }

    /// What every send and retry asks for: the model chosen with `/model` (or `--model`).
    fn send_options(&self) -> SendOptions {
        match &self.model {
            Some(model) => SendOptions::default().with_model(model.clone()),
            None => SendOptions::default(),
        }
    }

    fn set_model(&mut self, name: &str) -> Result<(), String> {
        if !name.is_empty() {
            // Per send: the service, its store and its provider stay as they are.
            self.model = Some(name.to_string());
        }
        println!(
            "{}",
            self.style.dim(&format!("model {}", self.model_name()))
        );
        Ok(())
    }
}
