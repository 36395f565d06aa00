// The server example's modules, for the targets that compile the example's code into themselves
// (tests/server/main.rs, tests/browser.rs, benches/server.rs): `include!` this file at their
// crate root. Paths are relative to this file. Each target uses only part of the example, hence
// `dead_code`.
#[allow(dead_code)]
#[path = "config.rs"]
mod config;
#[allow(dead_code)]
#[path = "page.rs"]
mod page;
