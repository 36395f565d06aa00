//! The server's configuration: options with environment-variable twins, and the provider the
//! environment implies.

use chatstream::provider::ProviderKind;
use clap::Parser;

use crate::config::Config;

#[test]
fn configuration_from_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let c = Config::try_parse_from(["server"]).unwrap();
    assert_eq!(
        ProviderKind::from_lookup(env(&[])).unwrap(),
        ProviderKind::Demo
    );
    assert_eq!(c.addr.to_string(), "127.0.0.1:3000");
    assert_eq!(c.database_url, "sqlite://chatstream.db");
    assert_eq!(
        ProviderKind::from_lookup(env(&[("OPENAI_BASE_URL", "http://localhost:11434/v1")]))
            .unwrap(),
        ProviderKind::OpenAi
    );
    assert_eq!(
        ProviderKind::from_lookup(env(&[
            ("OPENAI_API_KEY", "sk-x"),
            ("CHATSTREAM_PROVIDER", "anthropic"),
        ]))
        .unwrap(),
        ProviderKind::Anthropic
    );
    let c = Config::try_parse_from([
        "server",
        "--provider",
        "anthropic",
        "--addr",
        "0.0.0.0:8080",
    ])
    .unwrap();
    assert_eq!(c.provider, Some(ProviderKind::Anthropic));
    assert_eq!(c.addr.port(), 8080);
    let e = Config::try_parse_from(["server", "--provider", "gpt"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("openai, anthropic or demo"), "{e}");
    let e = ProviderKind::from_lookup(env(&[("CHATSTREAM_PROVIDER", "gpt")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("openai, anthropic or demo"), "{e}");
    assert!(Config::try_parse_from(["server", "--addr", "nope"]).is_err());
    assert_eq!(c.context_budget(), chatstream::ContextBudget::Model);
    let c = Config::try_parse_from(["server", "--context-tokens", "32768"]).unwrap();
    assert_eq!(
        c.context_budget(),
        chatstream::ContextBudget::Window(32_768)
    );
    assert!(Config::try_parse_from(["server", "--context-tokens", "lots"]).is_err());
    let c = Config::try_parse_from([
        "server",
        "--cors-origins",
        "https://a.example, https://b.example",
    ])
    .unwrap();
    assert_eq!(
        c.server_options().cors_origins,
        ["https://a.example", "https://b.example"]
    );
}
