// The server's modules, for the targets that compile the example's code into themselves
// (tests/server.rs, tests/browser.rs, benches/server.rs) to serve `app::app` on port 0:
// `include!` this file at their crate root. Paths are relative to this file. Each target uses
// only part of the server, hence `dead_code`.
#[allow(dead_code)]
#[path = "api.rs"]
mod api;
#[allow(dead_code)]
#[path = "app.rs"]
mod app;
#[allow(dead_code)]
#[path = "config.rs"]
mod config;
#[allow(dead_code)]
#[path = "error.rs"]
mod error;
#[allow(dead_code)]
#[path = "openai_compat.rs"]
mod openai_compat;
#[allow(dead_code)]
#[path = "stateless.rs"]
mod stateless;
