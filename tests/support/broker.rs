//! Running `mcp-chat-broker` as a child process: the shared kit's
//! [`BrokerChild`], started from this target directory, where a failure
//! panics (which is how a test fails).

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::ExitStatus;

use mcp_chat_testkit::BrokerChild;
pub use mcp_chat_testkit::sys::processes_mentioning;
use rustix::process::Signal;
use tokio::process::Command;

use crate::bin_path;

pub struct BrokerProcess(BrokerChild);

impl BrokerProcess {
    /// Starts a foreground broker on `socket` and returns once it has printed
    /// its ready line (it binds first, so connecting cannot race).
    pub async fn start(socket: &Path, extra_args: &[&str]) -> Self {
        let mut command = BrokerChild::command(&bin_path("mcp-chat-broker"), socket);
        command.args(extra_args);
        Self::start_command(command, socket).await
    }

    /// As [`Self::start`], with the descriptor limits set first by `sh`'s
    /// `ulimit` (e.g. `"-Sn 1024"`; several separated by `;`).
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
            .arg(mcp_chat_testkit::broker::PRINT_READY)
            .args(extra_args);
        Self::start_command(command, socket).await
    }

    /// Starts `command` (from [`BrokerChild::command`], with arguments and
    /// environment added) as [`Self::start`] does.
    pub async fn start_command(mut command: Command, socket: &Path) -> Self {
        command.env("MCP_CHAT_LOG", "info,mcp_chat_broker=debug");
        match BrokerChild::start(command, socket).await {
            Ok(broker) => Self(broker),
            Err(e) => panic!("starting mcp-chat-broker: {e:#}"),
        }
    }

    pub async fn wait_exit(&mut self) -> ExitStatus {
        self.0.wait_exit().await.unwrap()
    }

    /// Sends `signal` (e.g. `Signal::USR1`).
    pub fn signal(&self, signal: Signal) {
        self.0.signal(signal).unwrap();
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(Signal::TERM);
    }
}

impl Deref for BrokerProcess {
    type Target = BrokerChild;

    fn deref(&self) -> &BrokerChild {
        &self.0
    }
}

impl DerefMut for BrokerProcess {
    fn deref_mut(&mut self) -> &mut BrokerChild {
        &mut self.0
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
        mcp_chat_testkit::sys::is_alive(self.pid)
    }

    pub fn kill(&self, signal: &str) {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status();
    }
}

impl Drop for AutoStartedBroker {
    fn drop(&mut self) {
        self.kill("KILL");
    }
}
