//! The `mcp-chat-broker` child every broker section talks to: a foreground
//! broker on a socket in its own temporary directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use rustix::process::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::WAIT;

pub struct BrokerChild {
    // Field order is drop order: the process goes before its directory.
    child: Child,
    pid: u32,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl BrokerChild {
    /// Starts a broker and returns once it logs that it is listening (it
    /// binds before it logs, so a connect cannot race the bind).
    pub async fn start(bin: &Path, max_sessions: Option<usize>) -> anyhow::Result<Self> {
        let dir = temp_dir()?;
        // A subdirectory the broker creates itself, with the mode it insists on.
        let socket = dir.path().join("sock").join("broker.sock");
        let mut command = Command::new(bin);
        command
            .arg("--foreground")
            .arg("--socket")
            .arg(&socket)
            .args(["--idle-exit", "0"])
            .env("MCP_CHAT_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(n) = max_sessions {
            command.args(["--max-sessions", &n.to_string()]);
        }
        // The per-session send limit protects people from floods; it would
        // turn every relay measurement into a measurement of the limit.
        if supports(bin, "--message-rate").await? {
            command.args(["--message-rate", "0"]);
        }
        for limit in ["--byte-rate", "--request-rate"] {
            if supports(bin, limit).await? {
                command.args([limit, "0"]);
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the broker exited at once")?;
        let stderr = child.stderr.take().context("broker stderr was not piped")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let listening = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await? {
                let found = line.contains("broker listening");
                seen.push(line);
                if found {
                    return Ok(true);
                }
            }
            std::io::Result::Ok(false)
        })
        .await;
        match listening {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => bail!(
                "the broker exited before listening; its log:\n{}",
                seen.join("\n")
            ),
            Ok(Err(e)) => return Err(e).context("reading the broker's log"),
            Err(_) => bail!(
                "the broker did not log \"broker listening\" within {WAIT:?}; its log:\n{}",
                seen.join("\n")
            ),
        }
        // Keep draining its log, or a chatty broker would block on a full
        // pipe; anything it says from here on is worth seeing.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[broker] {line}");
            }
        });
        Ok(Self {
            child,
            pid,
            socket,
            _dir: dir,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails if the broker has died: a crash mid-section is a broken run
    /// even if every number looked fine.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait().context("checking on the broker")? {
            None => Ok(()),
            Some(status) => bail!("the broker died during the benchmark: {status}"),
        }
    }

    /// SIGTERM, then waits for a clean exit; kills it if that takes too long.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        crate::sys::signal(self.pid, Signal::TERM)?;
        match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => {
                let status = status.context("waiting for the broker")?;
                if !status.success() {
                    bail!("the broker exited with {status} on SIGTERM");
                }
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("the broker did not exit within {WAIT:?} of SIGTERM")
            }
        }
    }
}

/// Whether `bin --help` mentions `flag`: brokers older than a flag do not
/// accept it, and need no help to be measured fairly.
async fn supports(bin: &Path, flag: &str) -> anyhow::Result<bool> {
    let help = tokio::time::timeout(WAIT, Command::new(bin).arg("--help").output())
        .await
        .context("`mcp-chat-broker --help` hung")?
        .with_context(|| format!("running {} --help", bin.display()))?;
    Ok(String::from_utf8_lossy(&help.stdout).contains(flag))
}

/// A short temporary directory: socket paths have a ~107-byte limit.
pub fn temp_dir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("mcp-chat-bench")
        .tempdir()
        .context("creating a temporary directory")
}

/// Grace period for a child to exit on its own before it is killed.
pub const EXIT_GRACE: Duration = Duration::from_secs(5);
