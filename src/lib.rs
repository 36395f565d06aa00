//! # chatstream
//!
//! Streaming chat with large language models, with the hard parts solved once: replies stream
//! token by token as [`Delta`]s; a reply can be stopped at any moment and the upstream request
//! really closes; network breaks are retried and recovered mid-stream without repeating a word;
//! every message, a stopped or failed partial reply included, is persisted; many conversations
//! stream at once.
//!
//! ```
//! use chatstream::{Accumulator, ChatRequest, LlmProvider, provider::DemoProvider};
//! use futures::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstream::Result<()> {
//! let provider = DemoProvider::new(); // or OpenAiProvider / AnthropicProvider
//! let mut stream = provider.stream(ChatRequest::user("Why stream replies?"));
//! let mut reply = Accumulator::new();
//! while let Some(delta) = stream.next().await {
//!     let delta = delta?;
//!     reply.push(&delta); // and show it as it arrives
//! }
//! println!("{}", reply.text());
//! # Ok(()) }
//! ```
//!
//! ## Concepts
//!
//! - [`ChatId`], [`MessageId`], [`Message`], [`Chat`]: the data model (serde, camelCase JSON).
//! - [`UserId`] and [`ChatKey`]: owners. Every chat belongs to a user (the
//!   [anonymous](UserId::anonymous) one when there are none) and is named by its key, its owner
//!   and id; stores, the hub and sessions keep two owners' chats of one id apart.
//! - [`Delta`]: the item of every reply stream; [`Accumulator`] folds deltas into a reply.
//! - [`LlmProvider`]: a cancellable stream of deltas from a model API — [`provider`] has the
//!   OpenAI-compatible, OpenAI Responses, Anthropic, demo and scripted providers, the request
//!   options (tools, response format, reasoning) they send, and [`provider::from_env`], the
//!   standard provider stack from the environment.
//! - [`resilience`]: retry with backoff, timeouts, mid-stream recovery and fallback, as
//!   decorators around any provider.
//! - [`MessageStore`]: persistence, scoped by owner — [`store`] has the memory, SQLite,
//!   PostgreSQL and MongoDB backends, and (feature `conformance`) the suite every backend passes.
//! - [`ChatService`] and [`ChatSession`]: conversations — send a message, get the reply's events
//!   and a cancel handle, regenerate, read history; replies run detached and are checkpointed as
//!   they grow ([`session`]: the service, the session, the context window and the reply task,
//!   one file each). A request carries as much history as the model's context window holds
//!   ([`ContextBudget`], by default from a table of well-known models).
//! - [`StreamHub`]: live replies as numbered events, replayable after any event id, followed by
//!   any number of subscribers, terminated by chat key — [`hub`] has the in-process
//!   [`LocalHub`] and, with the `redis` feature, `RedisHub` for several instances sharing live
//!   replies, and (feature `conformance`) the suite every hub passes; the service recovers the
//!   replies of a dead instance on the hub's lease.
//! - `server` (feature `server`): the HTTP surface — the whole contract as an axum router to
//!   serve or to mount beside an app's own routes, with the OpenAI-compatible and AI SDK
//!   dialects, health probes and, with `metrics`, `GET /metrics`. Every route scopes by the
//!   request's owner.
//!
//! ## Feature flags
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `sqlite` | the SQLite message store (sqlx) | yes |
//! | `tiktoken` | OpenAI's tokenizers (`tiktoken-rs`) for [`session::TokenCounter`], to count OpenAI models' requests exactly against the [`ContextBudget`]; without it every model is estimated | yes |
//! | `postgres` | the PostgreSQL message store (sqlx) | no |
//! | `mongodb` | the MongoDB message store (the official driver; a replica set or sharded cluster) | no |
//! | `redis` | the Redis stream hub, to share live replies across instances | no |
//! | `server` | `server`: the HTTP surface as an axum router (axum, tower-http) | no |
//! | `conformance` | exports the store and hub conformance suites for third-party backends | no |
//! | `metrics` | [`metrics`]: counters and histograms through the `metrics` facade, a Prometheus recorder, and `GET /metrics` on the server | no |
#![cfg_attr(docsrs, feature(doc_cfg))]

mod accumulate;
mod delta;
mod error;
mod forward;
pub mod hub;
mod id;
mod message;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod provider;
pub mod resilience;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
pub mod session;
pub mod store;

pub use accumulate::Accumulator;
pub use delta::{Delta, RetryNotice, ToolCallDelta};
pub use error::{BoxError, Error, Result, TimeoutPhase, status_is_retryable};
pub use hub::{
    DynStreamHub, EventPayload, HubEvent, HubEventStream, LiveReplyInfo, LocalHub, StreamHub,
};
pub use id::{ChatId, ChatKey, MessageId, UserId};
pub use message::{
    Chat, ContentPart, FinishReason, Generation, Message, MessageStatus, Role, ToolCall, Usage,
};
pub use provider::{
    ChatRequest, DeltaStream, DynLlmProvider, LlmProvider, LlmProviderExt, RequestMessage, ToolSpec,
};
pub use session::{
    ChatService, ChatServiceBuilder, ChatSession, ContextBudget, ReplyHandle, SendOptions, Session,
    UserInput,
};

pub use store::{DynMessageStore, MessageStore, MessageStoreExt};

// The README's code examples are compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
