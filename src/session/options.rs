//! [`SendOptions`]: how one reply is asked for — model, system prompt, sampling, reasoning,
//! tools, response format and extra provider fields — over the service's defaults.

use crate::{
    ChatRequest, ContextBudget, Error, RequestMessage, Result, Role, ToolSpec,
    provider::{ReasoningEffort, ResponseFormat, ToolChoice},
};

/// How one reply is asked for: given with a send ([`UserInput::options`](crate::UserInput::options)) or a
/// [regenerate](crate::ChatSession::regenerate_with), and as the service's defaults
/// ([`ChatServiceBuilder::default_options`](crate::ChatServiceBuilder::default_options)).
///
/// Every field is optional; a send's options override the defaults field by field ([`over`](
/// Self::over)), and [`extra`](Self::extra) key by key. Each provider sends what its API
/// understands (see [`ChatRequest`]).
///
/// ```
/// use chatstream::{SendOptions, ToolSpec, UserInput, provider::{ReasoningEffort, ToolChoice}};
/// use serde_json::json;
///
/// let defaults = SendOptions::default().with_temperature(0.2).with_max_output_tokens(800);
/// let input = UserInput::new("What time is it in Lisbon?").with_options(
///     SendOptions::default()
///         .with_model("gpt-5-mini")
///         .with_reasoning_effort(ReasoningEffort::Low)
///         .with_tools([ToolSpec::new("get_time", "The time in a city", json!({"type": "object"}))])
///         .with_tool_choice(ToolChoice::Required)
///         .with_extra("user", "u-42"),
/// );
/// let options = input.options.over(&defaults);
/// assert_eq!(options.temperature, Some(0.2)); // from the defaults
/// assert_eq!(options.model.as_deref(), Some("gpt-5-mini")); // from the send
/// options.validate()?;
/// # Ok::<(), chatstream::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SendOptions {
    /// The model (default: the service's, else the provider's).
    pub model: Option<String>,
    /// The system prompt, in place of the service's for this reply; an empty one sends none.
    pub system: Option<String>,
    /// Sampling temperature, 0 to 2.
    pub temperature: Option<f32>,
    /// Nucleus sampling, 0 to 1.
    pub top_p: Option<f32>,
    /// The most tokens to generate (at least 1).
    pub max_output_tokens: Option<u32>,
    /// Stop sequences (none of them empty). `Some(vec![])` sends none, whatever the defaults.
    pub stop: Option<Vec<String>>,
    /// How hard a reasoning model thinks ([`ChatRequest::reasoning_effort`]).
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Anthropic's extended thinking with this budget of tokens: at least 1,024, and less than
    /// [`max_output_tokens`](Self::max_output_tokens) when both are set.
    pub thinking_budget: Option<u32>,
    /// Tools the model may call (names of `[A-Za-z0-9_-]{1,64}`, each once; parameters a JSON
    /// Schema object). `Some(vec![])` sends none, whatever the defaults.
    pub tools: Option<Vec<ToolSpec>>,
    /// Whether and which tool the model must call (a named tool must be among the tools).
    pub tool_choice: Option<ToolChoice>,
    /// The shape of the answer (structured output).
    pub response_format: Option<ResponseFormat>,
    /// Fields merged into the upstream request body ([`ChatRequest::extra`]); `stream`,
    /// `messages` and `input` are the library's and refused.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// How much history the request carries (default: the service's, which is
    /// [`ContextBudget::Model`] unless set).
    pub context_budget: Option<ContextBudget>,
}

impl SendOptions {
    /// Asks for this model.
    #[must_use]
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Uses this system prompt instead of the service's.
    #[must_use]
    pub fn with_system(mut self, prompt: impl Into<String>) -> Self {
        self.system = Some(prompt.into());
        self
    }

    /// Sets the temperature.
    #[must_use]
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Sets nucleus sampling.
    #[must_use]
    pub fn with_top_p(mut self, top_p: f32) -> Self {
        self.top_p = Some(top_p);
        self
    }

    /// Sets the token limit.
    #[must_use]
    pub fn with_max_output_tokens(mut self, max_output_tokens: u32) -> Self {
        self.max_output_tokens = Some(max_output_tokens);
        self
    }

    /// Sets the stop sequences.
    #[must_use]
    pub fn with_stop(mut self, stop: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.stop = Some(stop.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the reasoning effort.
    #[must_use]
    pub fn with_reasoning_effort(mut self, effort: ReasoningEffort) -> Self {
        self.reasoning_effort = Some(effort);
        self
    }

    /// Switches Anthropic's extended thinking on with this budget of tokens.
    #[must_use]
    pub fn with_thinking_budget(mut self, budget_tokens: u32) -> Self {
        self.thinking_budget = Some(budget_tokens);
        self
    }

    /// Sets the tools the model may call.
    #[must_use]
    pub fn with_tools(mut self, tools: impl IntoIterator<Item = ToolSpec>) -> Self {
        self.tools = Some(tools.into_iter().collect());
        self
    }

    /// Sets whether and which tool the model must call.
    #[must_use]
    pub fn with_tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = Some(choice);
        self
    }

    /// Sets the shape of the answer.
    #[must_use]
    pub fn with_response_format(mut self, format: impl Into<ResponseFormat>) -> Self {
        self.response_format = Some(format.into());
        self
    }

    /// Sets how much history the request carries: a context window of 32,000 tokens for a
    /// model served with one, say.
    ///
    /// ```
    /// use chatstream::{ContextBudget, SendOptions, UserInput};
    ///
    /// let input = UserInput::new("And the next step?")
    ///     .with_options(SendOptions::default().with_context_budget(ContextBudget::Window(32_000)));
    /// assert_eq!(input.options.context_budget, Some(ContextBudget::Window(32_000)));
    /// ```
    #[must_use]
    pub fn with_context_budget(mut self, budget: ContextBudget) -> Self {
        self.context_budget = Some(budget);
        self
    }

    /// Adds a field to merge into the upstream body.
    #[must_use]
    pub fn with_extra(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// These options over `defaults`: each field that is set here wins, the others come from
    /// `defaults`; extra fields are merged key by key, these winning.
    #[must_use]
    pub fn over(mut self, defaults: &SendOptions) -> SendOptions {
        fn or<T: Clone>(mine: Option<T>, default: &Option<T>) -> Option<T> {
            mine.or_else(|| default.clone())
        }
        for (key, value) in &defaults.extra {
            self.extra
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
        SendOptions {
            model: or(self.model, &defaults.model),
            system: or(self.system, &defaults.system),
            temperature: self.temperature.or(defaults.temperature),
            top_p: self.top_p.or(defaults.top_p),
            max_output_tokens: self.max_output_tokens.or(defaults.max_output_tokens),
            stop: or(self.stop, &defaults.stop),
            reasoning_effort: self.reasoning_effort.or(defaults.reasoning_effort),
            thinking_budget: self.thinking_budget.or(defaults.thinking_budget),
            tools: or(self.tools, &defaults.tools),
            tool_choice: or(self.tool_choice, &defaults.tool_choice),
            response_format: or(self.response_format, &defaults.response_format),
            extra: self.extra,
            context_budget: self.context_budget.or(defaults.context_budget),
        }
    }

    /// Checks every value, as a send does before it stores anything.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the first bad value: a blank model, a temperature outside 0–2
    /// or a `top_p` outside 0–1, a token limit of 0, an empty stop sequence, a thinking budget
    /// under 1,024 or not under the token limit, a tool or schema name outside
    /// `[A-Za-z0-9_-]{1,64}`, a tool named twice, parameters or a schema that are not JSON
    /// objects, a tool choice naming a tool that is not given, or an extra field the library
    /// owns.
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: String| Err(Error::invalid("options", message));
        if self.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return invalid("model must not be blank".into());
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return invalid(format!("temperature must be between 0 and 2, not {t}"));
        }
        if let Some(p) = self.top_p
            && !(0.0..=1.0).contains(&p)
        {
            return invalid(format!("top_p must be between 0 and 1, not {p}"));
        }
        if self.max_output_tokens == Some(0) {
            return invalid("the token limit must be at least 1".into());
        }
        if let Some(ContextBudget::Window(0) | ContextBudget::Tokens(0) | ContextBudget::Chars(0)) =
            self.context_budget
        {
            return invalid("the context budget must be at least 1".into());
        }
        if self.stop.iter().flatten().any(String::is_empty) {
            return invalid("stop sequences must not be empty".into());
        }
        if let Some(budget) = self.thinking_budget {
            if budget < 1024 {
                return invalid(format!(
                    "the thinking budget must be at least 1024 tokens, not {budget}"
                ));
            }
            if let Some(limit) = self.max_output_tokens
                && budget >= limit
            {
                return invalid(format!(
                    "the thinking budget ({budget}) must be less than the token limit ({limit})"
                ));
            }
        }
        let tools = self.tools.as_deref().unwrap_or_default();
        for (i, tool) in tools.iter().enumerate() {
            if !is_name(&tool.name) {
                return invalid(format!(
                    "tool name {:?} must be 1 to 64 of A-Z, a-z, 0-9, _ and -",
                    tool.name
                ));
            }
            if tools[..i].iter().any(|t| t.name == tool.name) {
                return invalid(format!("tool {:?} is given twice", tool.name));
            }
            if !tool.parameters.is_object() {
                return invalid(format!(
                    "the parameters of tool {:?} must be a JSON Schema object",
                    tool.name
                ));
            }
        }
        if let (Some(ToolChoice::Tool { name }), Some(tools)) = (&self.tool_choice, &self.tools)
            && !tools.iter().any(|t| &t.name == name)
        {
            return invalid(format!(
                "the tool choice names {name:?}, which is not a tool given"
            ));
        }
        if let Some(ResponseFormat::JsonSchema(schema)) = &self.response_format {
            if !is_name(&schema.name) {
                return invalid(format!(
                    "response format name {:?} must be 1 to 64 of A-Z, a-z, 0-9, _ and -",
                    schema.name
                ));
            }
            if !schema.schema.is_object() {
                return invalid("the response format's schema must be a JSON object".into());
            }
        }
        if let Some(key) = self
            .extra
            .keys()
            .find(|k| k.is_empty() || ["stream", "messages", "input"].contains(&k.as_str()))
        {
            return invalid(format!("extra field {key:?} cannot be set"));
        }
        Ok(())
    }

    /// Sets these options on `request`, built with the service's settings. The system prompt
    /// replaces the request's first message when `service_system` says it is the service's,
    /// and goes first otherwise.
    pub(crate) fn apply_to(&self, request: &mut ChatRequest, service_system: bool) {
        if let Some(system) = &self.system {
            if service_system && !request.messages.is_empty() {
                request.messages.remove(0);
            }
            if !system.is_empty() {
                request
                    .messages
                    .insert(0, RequestMessage::new(Role::System, system.clone()));
            }
        }
        if self.model.is_some() {
            request.model.clone_from(&self.model);
        }
        request.temperature = self.temperature.or(request.temperature);
        request.top_p = self.top_p.or(request.top_p);
        request.max_tokens = self.max_output_tokens.or(request.max_tokens);
        if let Some(stop) = &self.stop {
            request.stop.clone_from(stop);
        }
        request.reasoning_effort = self.reasoning_effort.or(request.reasoning_effort);
        request.thinking_budget = self.thinking_budget.or(request.thinking_budget);
        if let Some(tools) = &self.tools {
            request.tools.clone_from(tools);
        }
        if self.tool_choice.is_some() {
            request.tool_choice.clone_from(&self.tool_choice);
        }
        if self.response_format.is_some() {
            request.response_format.clone_from(&self.response_format);
        }
        for (key, value) in &self.extra {
            request.extra.insert(key.clone(), value.clone());
        }
    }
}

/// A name OpenAI and Anthropic both take for a tool or a schema.
fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tool(name: &str) -> ToolSpec {
        ToolSpec::new(name, "d", json!({"type": "object"}))
    }

    #[test]
    fn a_send_overrides_the_defaults_field_by_field() {
        let defaults = SendOptions::default()
            .with_temperature(0.1)
            .with_stop(["END"])
            .with_tools([tool("a")])
            .with_extra("seed", 1)
            .with_extra("user", "default");
        let send = SendOptions::default()
            .with_top_p(0.5)
            .with_tools([])
            .with_extra("user", "me");
        let merged = send.over(&defaults);
        assert_eq!(merged.temperature, Some(0.1));
        assert_eq!(merged.top_p, Some(0.5));
        assert_eq!(merged.stop, Some(vec!["END".to_owned()]));
        assert_eq!(merged.tools, Some(vec![]), "an empty list overrides");
        assert_eq!(merged.extra["seed"], 1);
        assert_eq!(merged.extra["user"], "me");
    }

    #[test]
    fn applied_to_a_request() {
        let system = RequestMessage::new(Role::System, "service prompt");
        let user = RequestMessage::new(Role::User, "hi");
        let mut request = ChatRequest::new(vec![system, user.clone()]).with_model("m");
        let options = SendOptions::default()
            .with_system("per send")
            .with_max_output_tokens(10)
            .with_reasoning_effort(ReasoningEffort::Low)
            .with_tool_choice(ToolChoice::Auto)
            .with_extra("seed", 3);
        options.apply_to(&mut request, true);
        assert_eq!(
            request.messages,
            [RequestMessage::new(Role::System, "per send"), user.clone()]
        );
        assert_eq!(request.model.as_deref(), Some("m"));
        assert_eq!(request.max_tokens, Some(10));
        assert_eq!(request.reasoning_effort, Some(ReasoningEffort::Low));
        assert_eq!(request.tool_choice, Some(ToolChoice::Auto));
        assert_eq!(request.extra["seed"], 3);

        // Without a service prompt, the first message is history: the prompt goes before it.
        let mut request = ChatRequest::new(vec![user.clone()]);
        SendOptions::default()
            .with_system("s")
            .apply_to(&mut request, false);
        assert_eq!(request.messages[0], RequestMessage::new(Role::System, "s"));
        assert_eq!(request.messages[1], user);
        // An empty one removes the service's.
        let mut request = ChatRequest::new(vec![
            RequestMessage::new(Role::System, "service prompt"),
            user.clone(),
        ]);
        SendOptions::default()
            .with_system("")
            .apply_to(&mut request, true);
        assert_eq!(request.messages, [user]);
    }

    #[test]
    fn bad_values_are_refused() {
        let bad = [
            SendOptions::default().with_model(" "),
            SendOptions::default().with_temperature(2.5),
            SendOptions::default().with_temperature(f32::NAN),
            SendOptions::default().with_top_p(-0.1),
            SendOptions::default().with_max_output_tokens(0),
            SendOptions::default().with_context_budget(ContextBudget::Window(0)),
            SendOptions::default().with_stop([""]),
            SendOptions::default().with_thinking_budget(512),
            SendOptions::default()
                .with_thinking_budget(2048)
                .with_max_output_tokens(2048),
            SendOptions::default().with_tools([tool("has space")]),
            SendOptions::default().with_tools([tool("a"), tool("a")]),
            SendOptions::default().with_tools([ToolSpec::new("a", "d", json!("string"))]),
            SendOptions::default()
                .with_tools([tool("a")])
                .with_tool_choice(ToolChoice::tool("b")),
            SendOptions::default()
                .with_response_format(crate::provider::JsonSchema::new("n", json!([]))),
            SendOptions::default().with_extra("stream", false),
        ];
        for options in bad {
            assert!(
                matches!(
                    options.validate(),
                    Err(Error::Invalid {
                        what: "options",
                        ..
                    })
                ),
                "{options:?}"
            );
        }
        SendOptions::default()
            .with_temperature(0.0)
            .with_top_p(1.0)
            .with_thinking_budget(1024)
            .with_max_output_tokens(4096)
            .with_tools([tool("get_time-2")])
            .with_tool_choice(ToolChoice::tool("get_time-2"))
            .with_extra("seed", 1)
            .validate()
            .unwrap();
    }
}
