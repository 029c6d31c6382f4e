//! `mcp-chat`: the stdio MCP server that MCP clients launch, one process per
//! client session, each a thin shim in front of the shared broker.
//!
//! - [`server`]: the rmcp handler: tools, instructions, notification push.
//! - [`tools`]: tool arguments and results, with the schemas models read.
//! - [`events`]: events as clients see them, the pull buffer, and what is
//!   pushed as notifications and Claude Code channel events.
//! - [`phase`]: what a session knows (its phase, through a watch; its
//!   events; the best-effort push), written in wire order.
//! - [`session`]: the session actor: owns the broker connection and its
//!   reconnects; everyone else calls its typed methods.
//! - [`broker_client`]: one broker connection: handshake, requests, events.
//! - [`autostart`]: finding the broker, and starting one when none runs.
//! - [`end_reason`]: why a room ended, including what only a shim can see.
//! - [`identity`]: the installation's pseudonymous id, kept for blocks.
//! - [`cli`]: the human subcommands (`join`, `web`, `status`, `doctor`,
//!   `register`).
//! - [`untrusted`]: a partner's text made safe for a model or a person to
//!   read: no forged frames, no hidden characters.
//! - [`http`]: `mcp-chat serve --http`: the same server over Streamable HTTP,
//!   one [`ChatServer`] per HTTP session.
//!
//! Vocabulary (as in `mcp-chat-proto`): the broker keeps a *broker session*
//! per connected shim (its `session_id`); [`session::ChatSession`] is this
//! shim's side of it, a *chat session*, which survives lost connections by
//! resuming; an *MCP session* is one MCP client talking to this shim (the
//! stdio process, or one `Mcp-Session-Id` in [`http`]), with one chat
//! session each.
//!
//! Nothing in this crate writes to stdout outside `cli/`: in MCP mode stdout
//! is the protocol channel.

#![deny(clippy::print_stdout)]

pub mod autostart;
pub mod broker_client;
pub mod cli;
pub mod end_reason;
pub mod events;
pub mod http;
pub mod identity;
pub mod modern;
pub mod phase;
pub mod server;
pub mod session;
pub mod tools;
pub mod untrusted;

pub use server::ChatServer;

/// This build's version, reported to clients and to the broker.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
