//! A tool-calling round trip: the model asks for a tool, the program runs it and sends the
//! result back, the model answers with it. `cargo run --example tools`.
//!
//! The model is a [`ScriptedProvider`] playing what a real one sends, so that the example runs
//! with no key; the loop is the same with `OpenAiProvider`, `OpenAiResponsesProvider` or
//! `AnthropicProvider`.

use std::sync::Arc;

use chatstream::provider::{Script, ScriptedProvider};
use chatstream::{
    Accumulator, ChatRequest, Delta, FinishReason, LlmProvider, RequestMessage, Role, ToolCall,
    ToolCallDelta, ToolSpec, provider::ToolChoice,
};
use futures::StreamExt;
use serde_json::{Value, json};

/// The tool itself: what the program runs when the model asks.
fn get_time(arguments: &Value) -> String {
    let city = arguments["city"].as_str().unwrap_or("somewhere");
    format!("It is 12:00 in {city}.")
}

/// Streams one reply, printing its text as it arrives; returns it folded.
async fn reply(
    provider: &dyn LlmProvider,
    request: ChatRequest,
) -> chatstream::Result<Accumulator> {
    let mut stream = provider.stream(request);
    let mut reply = Accumulator::new();
    while let Some(delta) = stream.next().await {
        let delta = delta?;
        if let Some(text) = delta.as_text() {
            print!("{text}");
        }
        reply.push(&delta);
    }
    Ok(reply)
}

/// What a model sends when it calls `get_time` (in fragments, as they stream), then its answer.
fn scripted_model() -> ScriptedProvider {
    let call = |id: Option<&str>, arguments: &str| {
        Delta::ToolCall(ToolCallDelta {
            index: 0,
            id: id.map(Into::into),
            name: id.map(|_| "get_time".into()),
            arguments: arguments.into(),
        })
    };
    ScriptedProvider::new()
        .then(
            Script::new()
                .delta(call(Some("call_1"), ""))
                .delta(call(None, "{\"city\":"))
                .delta(call(None, "\"Lisbon\"}"))
                .finish(FinishReason::ToolCalls),
        )
        .then(Script::reply(["In Lisbon ", "it is 12:00 right now."]))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider: Arc<dyn LlmProvider> = Arc::new(scripted_model());
    let tools = [ToolSpec::new(
        "get_time",
        "The current time in a city",
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    )];
    let mut messages = vec![RequestMessage::new(
        Role::User,
        "What time is it in Lisbon?",
    )];
    loop {
        let request = ChatRequest::new(messages.clone())
            .with_tools(tools.clone())
            .with_tool_choice(ToolChoice::Auto);
        let answer = reply(provider.as_ref(), request).await?;
        if answer.finish_reason() != Some(FinishReason::ToolCalls) {
            println!();
            return Ok(());
        }
        // The model's turn, with its calls, then one result per call.
        let mut turn = RequestMessage::new(Role::Assistant, answer.text());
        turn.tool_calls = answer.tool_calls().to_vec();
        messages.push(turn);
        for ToolCall {
            id,
            name,
            arguments,
            ..
        } in answer.tool_calls()
        {
            let arguments: Value = serde_json::from_str(arguments)?;
            let result = get_time(&arguments);
            println!("[{name}({arguments}) -> {result}]");
            let mut message = RequestMessage::new(Role::Tool, result);
            message.tool_call_id = Some(id.clone());
            messages.push(message);
        }
    }
}
