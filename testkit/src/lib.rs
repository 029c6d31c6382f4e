//! What the end-to-end tests (`tests/`) and the bench (`bench/`) both need to
//! drive real binaries, kept once: a dev-only crate, never a dependency of
//! the broker or the shim. It may depend on `mcp-chat-proto` only: tests
//! and bench see the broker and the shim as binaries, never as libraries.
//!
//! - [`client`]: the one raw protocol client, with `Result` errors; it
//!   checks that event `seq` is contiguous, and its framed halves can be
//!   split across tasks (the bench's throughput runs) or written raw.
//! - [`proto_client`]: the same client for tests, panicking on anything
//!   unexpected.
//! - [`broker`]: an `mcp-chat-broker` child process, started and waited for
//!   through its machine-readable ready line, never its log wording.
//! - [`sys`]: `/proc` readers (memory, CPU, zombies, command lines), the
//!   open-file limit, lock holders and signals.
//! - [`nats`]: a real `nats-server` with JetStream, for federation;
//!   [`nats_auth`] makes its TLS certificates and operator-mode credentials,
//!   and [`tcp_proxy`] partitions a broker from it.
//! - [`token_bucket`]: client-side pacing under a broker's send limit.
//!
//! Vocabulary, as across the workspace: a *broker session* is what the
//! broker keeps per client (its `session_id`, resumable after a dropped
//! connection); a *connection* is one socket carrying it.

pub mod broker;
pub mod client;
pub mod nats;
pub mod nats_auth;
pub mod proto_client;
pub mod sys;
pub mod tcp_proxy;
pub mod token_bucket;

use std::time::Duration;

pub use broker::{BrokerChild, ReadyLine};
pub use client::Client;
pub use proto_client::ProtoClient;
pub use token_bucket::TokenBucket;

/// How long any single wait may take before it counts as broken. Long enough
/// for a loaded 2-core CI box; a healthy run never comes close.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `fut` for at most [`WAIT`]. Writes need this as much as reads: a
/// peer that stops reading fills the socket buffer and blocks the writer.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {WAIT:?} {what}"))
}

/// As [`within`], for tests: a timeout panics, naming `what`.
pub async fn within_or_panic<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}
