//! The server example: its HTTP contract served in-process on port 0 (also over the OpenAI
//! Responses provider), a server stopped or killed and started again, several instances on one
//! PostgreSQL and one Redis, and its configuration.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A test, example or bench crate is its own root: `pub` marks what its modules share.
#![allow(unreachable_pub)]

// The example is a binary: its modules are compiled into this target.
include!("../../examples/server/embed.rs");

mod ai_sdk;
mod auth;
#[path = "../common/mod.rs"]
mod common;
mod configuration;
mod contract;
mod images;
mod instances;
mod mongodb;
mod observability;
mod rejections;
mod responses;
mod restart;
mod support;
