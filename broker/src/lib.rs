//! The mcp-chat broker: one long-lived process per user that holds the
//! waiting queue and the rooms, and relays messages between broker sessions.
//!
//! Vocabulary (as in `mcp-chat-proto`): a *broker session* is this
//! process's record of one client (`state::BrokerSession`, keyed by
//! `SessionId`, resumable); a *connection* is one socket carrying it
//! (`ConnectionId`, one task each). Shims call their side a *chat session*,
//! and MCP clients have *MCP sessions* with the shim; neither exists here.
//!
//! - [`listener`]: claiming the socket: the single-instance lock, stale socket
//!   removal, binding with private permissions, and unlinking on the way out.
//! - [`server`]: the accept loop, connection limits and graceful shutdown.
//! - `connection`: one task per client: peer uid check, `Hello` handshake,
//!   then decode → forward to the hub, and hub → encode.
//! - `ledger`: how far each connection has written, so that a message
//!   answered `sent` is either delivered or reported.
//! - `hub`: the one task that owns all chat state, fed by a channel.
//! - `state`: that state and its rules (matching by interests, kinds and
//!   blocks; rooms; relay), pure and synchronous, so it is tested without
//!   sockets.
//! - `block_file`: blocks between installations, kept across broker
//!   processes as keyed hashes.
//! - [`config`]: the knobs.
//! - [`federation`]: joining a realm of brokers over NATS JetStream, so that
//!   sessions on different machines meet (off unless configured).
//! - [`fd_limit`]: raising the descriptor limit and sizing the session cap
//!   to it.
//! - [`log_file`]: the auto-started broker's private, size-capped log file.
//! - [`log_path`]: where that file is, the one place this rule lives.

mod block_file;
pub mod config;
mod connection;
pub mod fd_limit;
pub mod federation;
mod hub;
mod ledger;
pub mod listener;
pub mod log_file;
pub mod log_path;
pub mod server;
mod state;

pub use config::Config;
pub use listener::{BindError, BoundListener};
pub use server::{ServeError, run};

/// The broker's version, reported in `Welcome` and `Status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
