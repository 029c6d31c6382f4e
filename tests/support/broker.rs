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
        let mut command = Command::new(bin_path("mcp-chat-broker"));
        command
            .arg("--foreground")
            .arg("--socket")
            .arg(socket)
            .args(extra_args);
        Self::from_command(command)
    }

    /// As [`Self::start`], with the descriptor limits set first by `sh`'s
    /// `ulimit` (e.g. `"-Sn 1024"`; several separated by `;`).
    #[cfg(unix)]
    pub async fn start_under_ulimit(socket: &Path, limits: &str, extra_args: &[&str]) -> Self {
        let ulimits: Vec<String> = limits.split(';').map(|l| format!("ulimit {l}")).collect();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{} && exec \"$0\" \"$@\"", ulimits.join(" && ")))
            .arg(bin_path("mcp-chat-broker"))
            .arg("--foreground")
            .arg("--socket")
            .arg(socket)
            .args(extra_args);
        let mut broker = Self::from_command(command);
        broker.wait_for_log("broker listening").await;
        broker
    }

    /// Runs `command`, a broker in the foreground, capturing its log.
    fn from_command(mut command: Command) -> Self {
        let mut child = command
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

    /// Sends `signal` (a name `kill` knows, e.g. `USR1`).
    #[cfg(unix)]
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("broker still running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
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

/// A broker a shim started on its own. It runs detached, so the test stops
/// it explicitly, by the pid in its lock file.
pub struct AutoStartedBroker {
    pub pid: u32,
}

impl AutoStartedBroker {
    /// The broker holding the lock next to `socket`, if one wrote its pid.
    pub fn find(socket: &Path) -> Option<Self> {
        let lock = mcp_chat_proto::socket_path::broker_lock_path(socket);
        let pid = std::fs::read_to_string(lock).ok()?.trim().parse().ok()?;
        Some(Self { pid })
    }

    pub fn is_alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists() && !is_zombie(self.pid)
    }

    pub fn kill(&self, signal: &str) {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status();
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

impl Drop for AutoStartedBroker {
    fn drop(&mut self) {
        self.kill("KILL");
    }
}

/// Processes whose command line mentions `needle` (Linux `/proc`).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !is_zombie(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}
