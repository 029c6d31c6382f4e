//! Finding the broker, and starting one when none runs.
//!
//! Connect first. Only when nothing answers: take the start-up lock (so ten
//! shims starting at once spawn one broker), connect again (another shim may
//! have won while we waited), then spawn `mcp-chat-broker` and wait until it
//! answers `Hello`. A stale socket file is the broker's to remove: it does so
//! only while holding its own instance lock, after a refused connect.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mcp_chat_proto::SocketDirError;
use mcp_chat_proto::socket_path::{prepare_socket_dir, startup_lock_path};
use tokio::io::AsyncReadExt;

use mcp_chat_proto::Resume;

use crate::broker_client::{ConnectError, Welcome, handshake};

/// How long a spawned broker may take to answer.
const START_DEADLINE: Duration = Duration::from_secs(5);
/// How long to wait for another shim that is starting a broker.
const LOCK_DEADLINE: Duration = Duration::from_secs(10);

/// Environment variable naming the broker binary to start.
pub const BROKER_ENV_VAR: &str = "MCP_CHAT_BROKER";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    SocketDir(#[from] SocketDirError),
    #[error("could not take the start-up lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another mcp-chat has held the start-up lock {path} for over {LOCK_DEADLINE:?}")]
    LockTimeout { path: PathBuf },
    #[error(
        "could not start the broker {binary}: {source} (install it next to mcp-chat, put it on PATH, or set MCP_CHAT_BROKER)"
    )]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("the broker {binary} exited ({status}) before answering: {stderr}")]
    Exited {
        binary: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("the broker {binary} did not answer on {socket} within {START_DEADLINE:?}")]
    NoAnswer { binary: PathBuf, socket: PathBuf },
}

pub type Connected = (
    tokio_util::codec::Framed<
        interprocess::local_socket::tokio::Stream,
        mcp_chat_proto::ClientCodec,
    >,
    Welcome,
);

/// Connects to the broker on `socket`, starting one if none is running.
/// `resume` claims an earlier session (see [`handshake`]).
pub async fn connect_or_start(
    socket: &Path,
    client_name: &str,
    resume: Option<Resume>,
) -> Result<Connected, StartError> {
    match handshake(socket, client_name, resume.clone()).await {
        Err(ConnectError::NotRunning { .. }) => {}
        other => return Ok(other?),
    }
    prepare_socket_dir(socket)?;
    let _lock = take_startup_lock(socket).await?;
    match handshake(socket, client_name, resume.clone()).await {
        Err(ConnectError::NotRunning { .. }) => {}
        other => return Ok(other?),
    }
    let binary = broker_binary();
    tracing::info!(binary = %binary.display(), socket = %socket.display(), "starting broker");
    let mut child = tokio::process::Command::new(&binary)
        .arg("--socket")
        .arg(socket)
        // Never our stdout: that is the MCP channel.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| StartError::Spawn {
            binary: binary.clone(),
            source,
        })?;

    let deadline = tokio::time::Instant::now() + START_DEADLINE;
    let mut pause = Duration::from_millis(2);
    loop {
        match handshake(socket, client_name, resume.clone()).await {
            Err(ConnectError::NotRunning { .. }) => {}
            other => {
                // The broker outlives us; reap it if it exits while we run.
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
                return Ok(other?);
            }
        }
        if let Some(status) = child.try_wait().ok().flatten() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr).await;
            }
            return Err(StartError::Exited {
                binary,
                status,
                stderr: stderr.trim().to_owned(),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StartError::NoAnswer {
                binary,
                socket: socket.to_owned(),
            });
        }
        // Polling another process's readiness; each try is a real connect.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// `MCP_CHAT_BROKER`, else next to this executable, else from `PATH`.
pub fn broker_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(BROKER_ENV_VAR).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let name = format!("mcp-chat-broker{}", std::env::consts::EXE_SUFFIX);
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&name)))
        .filter(|p| p.is_file())
    {
        return sibling;
    }
    PathBuf::from(name)
}

async fn take_startup_lock(socket: &Path) -> Result<File, StartError> {
    let path = startup_lock_path(socket);
    let lock_err = |source| StartError::Lock {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_err)?;
    // A blocking lock in a blocking thread: the wait ends the moment the
    // other starter releases it, with no polling.
    let locked = tokio::task::spawn_blocking(move || file.lock().map(|()| file));
    match tokio::time::timeout(LOCK_DEADLINE, locked).await {
        Ok(Ok(Ok(file))) => Ok(file),
        Ok(Ok(Err(e))) => Err(lock_err(e)),
        Ok(Err(join)) => Err(lock_err(std::io::Error::other(join))),
        Err(_) => Err(StartError::LockTimeout { path }),
    }
}
