//! Non-interactive mode: one prompt in, only the reply out.

use std::{io::Read, process::ExitCode};

use chatstream::{ChatId, ChatSession, MessageStatus, UserInput, store::ChatPage};

use crate::{
    App, Args, EXIT_FAILED, EXIT_INTERRUPTED,
    render::Style,
    reply::{self, Interrupts, Show},
};

/// Sends the prompt, prints the reply (or the final message as JSON with `--json`), and exits 0
/// only when the reply completed.
pub async fn run(app: App, args: &Args) -> ExitCode {
    match send(app, args).await {
        Ok(code) => code,
        Err(message) => {
            Style::plain().error_line(&message);
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn send(app: App, args: &Args) -> Result<ExitCode, String> {
    let prompt = if args.prompt.is_empty() {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the prompt from standard input: {e}"))?;
        text
    } else {
        args.prompt.join(" ")
    };
    if prompt.trim().is_empty() {
        return Err("nothing to send: give a prompt as argument or on standard input".into());
    }
    let chat = pick_chat(&app, args).await?;
    let service = app
        .service(args.model.as_deref())
        .map_err(|e| e.to_string())?;
    let session = service.session(app.chat(&chat));
    let mut interrupts = Interrupts::install().map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    let handle = session
        .send(UserInput::new(prompt))
        .await
        .map_err(|e| e.to_string())?;
    let show = if args.json { Show::Nothing } else { Show::Text };
    let outcome = reply::follow(handle, show, &mut interrupts)
        .await
        .map_err(|e| e.to_string())?;
    if args.json {
        let message = app
            .store
            .get_message(&app.owner, &outcome.message_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the reply is missing from the store")?;
        let json = serde_json::to_string(&message).map_err(|e| e.to_string())?;
        println!("{json}");
    }
    Ok(match outcome.status {
        MessageStatus::Complete => ExitCode::SUCCESS,
        MessageStatus::Cancelled if outcome.stopped => ExitCode::from(EXIT_INTERRUPTED),
        status => {
            let why = outcome
                .error
                .unwrap_or_else(|| format!("the reply ended {}", status.as_str()));
            Style::plain().error_line(&why);
            ExitCode::from(EXIT_FAILED)
        }
    })
}

/// `--chat ID` (with `--new`: a chat that must not exist yet), `--continue`, or a new chat.
async fn pick_chat(app: &App, args: &Args) -> Result<ChatId, String> {
    match (&args.chat, args.new, args.continue_last) {
        (Some(id), true, _) => app
            .store
            .create_chat(&app.owner, Some(id.clone()), None)
            .await
            .map(|c| c.id)
            .map_err(|e| e.to_string()),
        (Some(id), false, _) => Ok(id.clone()),
        (None, _, true) => match app.remembered_chat().await {
            Some(id) => Ok(id),
            None => app
                .store
                .list_chats(
                    &app.owner,
                    ChatPage {
                        limit: 1,
                        offset: 0,
                    },
                )
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .next()
                .map(|c| c.id)
                .ok_or_else(|| "no chat to continue yet".to_string()),
        },
        (None, _, false) => Ok(ChatId::generate()),
    }
}
