//! The server's configuration, read from the environment.

use crate::config;

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
    let c = config::Config::from_lookup(env(&[])).unwrap();
    assert_eq!(c.provider, config::ProviderKind::Demo);
    assert_eq!(c.addr.to_string(), "127.0.0.1:3000");
    assert_eq!(c.database_url, "sqlite://chatstream.db");
    let c = config::Config::from_lookup(env(&[("OPENAI_BASE_URL", "http://localhost:11434/v1")]))
        .unwrap();
    assert_eq!(c.provider, config::ProviderKind::OpenAi);
    let c = config::Config::from_lookup(env(&[
        ("OPENAI_API_KEY", "sk-x"),
        ("CHATSTREAM_PROVIDER", "anthropic"),
        ("CHATSTREAM_ADDR", "0.0.0.0:8080"),
    ]))
    .unwrap();
    assert_eq!(c.provider, config::ProviderKind::Anthropic);
    assert_eq!(c.addr.port(), 8080);
    let e = config::Config::from_lookup(env(&[("CHATSTREAM_PROVIDER", "gpt")])).unwrap_err();
    assert!(e.contains("openai, anthropic or demo"), "{e}");
    assert!(config::Config::from_lookup(env(&[("CHATSTREAM_ADDR", "nope")])).is_err());
}
