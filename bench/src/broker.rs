//! The `mcp-chat-broker` child every broker section talks to: a foreground
//! broker on a socket in its own temporary directory, with the send limits
//! lifted. The process handling is the shared test kit's.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use mcp_chat_testkit::broker::{self as kit, PRINT_READY, supports};

pub struct BrokerChild {
    // Field order is drop order: the process goes before its directory.
    broker: kit::BrokerChild,
    _dir: tempfile::TempDir,
}

impl BrokerChild {
    /// Starts a broker and returns once it is ready: told by its ready line,
    /// or, for a broker older than `--print-ready`, by a status round trip.
    pub async fn start(bin: &Path, max_sessions: Option<usize>) -> anyhow::Result<Self> {
        Self::start_with(bin, max_sessions, &[]).await
    }

    /// As [`Self::start`], with more arguments (`--federation URL …`).
    pub async fn start_with(
        bin: &Path,
        max_sessions: Option<usize>,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let dir = temp_dir()?;
        // A subdirectory the broker creates itself, with the mode it insists on.
        let socket = dir.path().join("sock").join("broker.sock");
        let prints_ready = supports(bin, PRINT_READY).await?;
        let mut command = if prints_ready {
            kit::BrokerChild::command(bin, &socket)
        } else {
            let mut command = tokio::process::Command::new(bin);
            command.arg("--foreground").arg("--socket").arg(&socket);
            command
        };
        command
            .args(["--idle-exit", "0"])
            .env("MCP_CHAT_LOG", "info");
        if let Some(n) = max_sessions {
            command.args(["--max-sessions", &n.to_string()]);
        }
        command.args(extra);
        // The per-session send limit protects people from floods; it would
        // turn every relay measurement into a measurement of the limit.
        for limit in ["--message-rate", "--byte-rate", "--request-rate"] {
            if supports(bin, limit).await? {
                command.args([limit, "0"]);
            }
        }
        let broker = if prints_ready {
            kit::BrokerChild::start(command, &socket).await?
        } else {
            let broker = kit::BrokerChild::spawn(command, &socket)
                .with_context(|| format!("starting {}", bin.display()))?;
            kit::wait_answering(&socket).await?;
            broker
        };
        Ok(Self { broker, _dir: dir })
    }

    pub fn socket(&self) -> &Path {
        self.broker.socket()
    }

    pub fn pid(&self) -> u32 {
        self.broker.pid()
    }

    /// Fails if the broker has died: a crash mid-section is a broken run
    /// even if every number looked fine.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.broker.check_alive().context("during the benchmark")
    }

    /// SIGTERM, then waits for a clean exit; kills it if that takes too long.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.broker.stop().await
    }
}

/// A short temporary directory: socket paths have a ~107-byte limit.
pub fn temp_dir() -> anyhow::Result<tempfile::TempDir> {
    kit::temp_dir("mcp-chat-bench")
}

/// Grace period for a child to exit on its own before it is killed.
pub const EXIT_GRACE: Duration = Duration::from_secs(5);
