//! Running `mcp-chat-broker` as a child process.

use std::path::Path;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::{bin_path, within};

pub struct BrokerProcess {
    pub child: Child,
    /// The broker's stderr, line by line, as it arrives.
    pub log: mpsc::Receiver<String>,
}

impl BrokerProcess {
    /// Starts a foreground broker on `socket` and returns once it logs that it
    /// is listening (it binds before it logs, so connecting cannot race).
    pub async fn start(socket: &Path, extra_args: &[&str]) -> Self {
        let mut broker = Self::spawn(socket, extra_args);
        broker.wait_for_log("broker listening").await;
        broker
    }

    /// Starts a broker without waiting for anything.
    pub fn spawn(socket: &Path, extra_args: &[&str]) -> Self {
        let mut child = Command::new(bin_path("mcp-chat-broker"))
            .arg("--foreground")
            .arg("--socket")
            .arg(socket)
            .args(extra_args)
            .env("MCP_CHAT_LOG", "info,mcp_chat_broker=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mcp-chat-broker");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, log) = mpsc::channel(10_000);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[broker] {line}");
                // A test that stopped reading the log does not stall the broker.
                let _ = tx.try_send(line);
            }
        });
        Self { child, log }
    }

    /// Waits for a stderr line containing `needle`; returns it.
    pub async fn wait_for_log(&mut self, needle: &str) -> String {
        within(&format!("broker log line {needle:?}"), async {
            loop {
                match self.log.recv().await {
                    Some(line) if line.contains(needle) => return line,
                    Some(_) => {}
                    None => panic!("broker exited before logging {needle:?}"),
                }
            }
        })
        .await
    }

    pub async fn wait_exit(&mut self) -> ExitStatus {
        within("broker exit", self.child.wait()).await.unwrap()
    }

    /// Sends SIGTERM.
    #[cfg(unix)]
    pub fn terminate(&self) {
        let pid = self.child.id().expect("broker still running");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}
