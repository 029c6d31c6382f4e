//! An `mcp-chat-broker` child process in the foreground. It is started with
//! `--print-ready` and waited for through the one JSON line the broker then
//! prints on stdout once it is bound (`{"ready":true,"socket":…,"pid":…}`),
//! never through its log wording. Its log (stderr) is drained and echoed
//! with a `[broker]` prefix, so a chatty broker never blocks on a full pipe
//! and a failing test shows what it said.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use anyhow::{Context, bail};
use rustix::process::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::{WAIT, within};

/// The flag that makes a broker print its ready line.
pub const PRINT_READY: &str = "--print-ready";

/// What a broker says on stdout once it is listening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyLine {
    pub socket: PathBuf,
    pub pid: u32,
}

impl ReadyLine {
    /// Parses `{"ready":true,"socket":"…","pid":N}`; extra fields are fine.
    pub fn parse(line: &str) -> anyhow::Result<Self> {
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("the broker's ready line is not JSON: {line:?}"))?;
        if value["ready"] != true {
            bail!("the broker's ready line does not say ready: {line}");
        }
        let socket = value["socket"]
            .as_str()
            .with_context(|| format!("no socket in the ready line {line}"))?;
        let pid = value["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .with_context(|| format!("no pid in the ready line {line}"))?;
        Ok(Self {
            socket: socket.into(),
            pid,
        })
    }
}

pub struct BrokerChild {
    pub child: Child,
    stdout: Option<ChildStdout>,
    pid: u32,
    socket: PathBuf,
    ready: Option<ReadyLine>,
}

impl BrokerChild {
    /// `bin --foreground --socket <socket> --print-ready`: add arguments and
    /// environment, then [`Self::start`] it.
    pub fn command(bin: &Path, socket: &Path) -> Command {
        let mut command = Command::new(bin);
        command
            .arg("--foreground")
            .arg("--socket")
            .arg(socket)
            .arg(PRINT_READY);
        command
    }

    /// Spawns `command` (a broker in the foreground that prints its ready
    /// line, such as one from [`Self::command`], possibly wrapped by `sh`)
    /// and returns once it is listening on `socket`.
    pub async fn start(command: Command, socket: &Path) -> anyhow::Result<Self> {
        let mut broker = Self::spawn(command, socket)?;
        let ready = broker.wait_ready().await?;
        if ready.socket != socket {
            bail!(
                "the broker is listening on {}, not {}",
                ready.socket.display(),
                socket.display()
            );
        }
        Ok(broker)
    }

    /// Spawns `command` without waiting for anything; for a broker too old
    /// to print a ready line, follow with [`wait_answering`].
    pub fn spawn(mut command: Command, socket: &Path) -> anyhow::Result<Self> {
        let mut child = command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting mcp-chat-broker")?;
        let pid = child.id().context("the broker exited at once")?;
        let stderr = child.stderr.take().context("broker stderr was not piped")?;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[broker] {line}");
            }
        });
        let stdout = child.stdout.take();
        Ok(Self {
            child,
            stdout,
            pid,
            socket: socket.to_owned(),
            ready: None,
        })
    }

    /// Waits for the ready line. The broker prints it after it has bound
    /// its socket, so a connect that follows cannot race the bind.
    pub async fn wait_ready(&mut self) -> anyhow::Result<ReadyLine> {
        let stdout = self
            .stdout
            .take()
            .context("the ready line was already read")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = within("waiting for the broker's ready line", lines.next_line())
            .await?
            .context("reading the broker's stdout")?;
        let Some(line) = line else {
            let status = within("waiting for the broker to exit", self.child.wait()).await?;
            bail!("the broker exited ({status:?}) before it was ready; its log is above");
        };
        let ready = ReadyLine::parse(&line)?;
        self.ready = Some(ready.clone());
        Ok(ready)
    }

    /// What the broker said when it became ready, once it has.
    pub fn ready(&self) -> Option<&ReadyLine> {
        self.ready.as_ref()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails if the broker has died: a crash mid-run is a broken run even if
    /// every number looked fine.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait().context("checking on the broker")? {
            None => Ok(()),
            Some(status) => bail!("the broker died: {status}"),
        }
    }

    /// Waits for the broker to exit by itself.
    pub async fn wait_exit(&mut self) -> anyhow::Result<ExitStatus> {
        within("waiting for the broker to exit", self.child.wait())
            .await?
            .context("waiting for the broker")
    }

    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        crate::sys::signal(self.pid, signal)
    }

    /// SIGTERM, then waits for a clean exit; kills it if that takes too long.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.signal(Signal::TERM)?;
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
/// accept it (the bench still measures older builds).
pub async fn supports(bin: &Path, flag: &str) -> anyhow::Result<bool> {
    let help = within(
        "running `mcp-chat-broker --help`",
        Command::new(bin).arg("--help").output(),
    )
    .await?
    .with_context(|| format!("running {} --help", bin.display()))?;
    Ok(String::from_utf8_lossy(&help.stdout).contains(flag))
}

/// Waits until a broker on `socket` completes a handshake and answers a
/// status round trip: readiness for a broker too old for `--print-ready`.
/// Until it has bound, connecting fails at once, so this retries on a short
/// cadence; there is no event to await from outside the process.
pub async fn wait_answering(socket: &Path) -> anyhow::Result<()> {
    within("waiting for the broker to answer", async {
        loop {
            if let Ok(mut client) = crate::Client::connect(socket).await
                && let Ok(mcp_chat_proto::Reply::Status(_)) =
                    client.request(mcp_chat_proto::Request::Status).await
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
}

/// A short temporary directory: socket paths have a ~107-byte limit.
pub fn temp_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("creating a temporary directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_line_is_read_and_anything_else_is_refused() {
        let ready = ReadyLine::parse(r#"{"ready":true,"socket":"/d/b.sock","pid":7,"new":1}"#)
            .expect("a ready line");
        assert_eq!(
            ready,
            ReadyLine {
                socket: "/d/b.sock".into(),
                pid: 7
            }
        );
        for bad in [
            "broker listening",
            r#"{"ready":false,"socket":"/d/b.sock","pid":7}"#,
            r#"{"ready":true,"pid":7}"#,
            r#"{"ready":true,"socket":"/d/b.sock","pid":-1}"#,
        ] {
            assert!(ReadyLine::parse(bad).is_err(), "{bad}");
        }
    }
}
