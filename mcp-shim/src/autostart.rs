//! Finding the broker, and starting one when none runs.
//!
//! Connect first. Only when nothing answers: take the start-up lock (so ten
//! shims starting at once spawn one broker), connect again (another shim may
//! have won while we waited), then spawn `mcp-chat-broker` and wait until it
//! answers `Hello`. A stale socket file is the broker's to remove: it does so
//! only while holding its own instance lock, after a refused connect.
//!
//! The broker is started by absolute path (see [`find_broker`]), in `/`, with
//! only an allow-list of this process's environment (see `inherited`).

use std::ffi::OsStr;
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
    let binary = find_broker()?;
    tracing::info!(binary = %binary.display(), socket = %socket.display(), "starting broker");
    let mut child = tokio::process::Command::new(&binary)
        .arg("--socket")
        .arg(socket)
        .env_clear()
        .envs(std::env::vars_os().filter(|(name, _)| inherited(name)))
        // Not the client's project directory: the broker outlives it and
        // must not keep it busy (or resolve anything relative to it).
        .current_dir("/")
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

/// The broker to start, always as an absolute path: `MCP_CHAT_BROKER` (a
/// bare name is looked up on `PATH`, a relative path is taken from the
/// current directory), else `mcp-chat-broker` next to this executable, else
/// the first absolute `PATH` directory that has it. Empty and relative `PATH`
/// entries mean "the current directory", which for a shim is whatever
/// project the MCP client was opened in: they are never searched.
pub fn find_broker() -> Result<PathBuf, StartError> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned));
    locate_broker(
        std::env::var_os(BROKER_ENV_VAR).as_deref(),
        exe_dir.as_deref(),
        std::env::var_os("PATH").as_deref(),
    )
}

fn broker_name() -> String {
    format!("mcp-chat-broker{}", std::env::consts::EXE_SUFFIX)
}

/// A missing broker is a [`StartError::Spawn`] with `NotFound`, like a
/// binary that vanished before it could be run: either way waiting will not
/// produce one.
fn locate_broker(
    explicit: Option<&OsStr>,
    exe_dir: Option<&Path>,
    path: Option<&OsStr>,
) -> Result<PathBuf, StartError> {
    let not_found = |binary: PathBuf, searched: &str| StartError::Spawn {
        binary,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("not found {searched} (empty and relative PATH entries are skipped)"),
        ),
    };
    if let Some(explicit) = explicit.filter(|p| !p.is_empty()).map(Path::new) {
        if explicit.parent() == Some(Path::new("")) {
            return search_path(explicit.as_os_str(), path)
                .ok_or_else(|| not_found(explicit.to_owned(), "in any absolute PATH directory"));
        }
        return std::path::absolute(explicit).map_err(|source| StartError::Spawn {
            binary: explicit.to_owned(),
            source,
        });
    }
    let name = broker_name();
    let sibling = exe_dir.map(|dir| dir.join(&name));
    if let Some(sibling) = sibling.as_ref().filter(|p| is_executable_file(p)) {
        return Ok(sibling.clone());
    }
    search_path(OsStr::new(&name), path).ok_or_else(|| {
        not_found(
            sibling.unwrap_or_else(|| PathBuf::from(&name)),
            "next to mcp-chat or in any absolute PATH directory",
        )
    })
}

/// The first executable `name` in the absolute directories of a `PATH` value.
fn search_path(name: &OsStr, path: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable_file(candidate))
}

fn is_executable_file(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    meta.is_file()
}

/// Whether the broker inherits this variable from the shim. The shim runs
/// inside an MCP client whose environment often holds API keys and tokens;
/// the broker outlives it and needs none of them, so it gets only:
/// - `PATH`, `HOME`, `XDG_*`: where the user's files and directories are;
/// - `TMPDIR`: the default socket's fallback directory (per user on macOS);
/// - `LANG`, `LC_*`, `TZ`: locale and time zone, which hold no secrets and
///   which any program started from the user's session keeps;
/// - `MCP_CHAT_*` (our settings, such as the socket and log level) except the
///   HTTP token, a secret the broker never reads;
/// - `RUST_LOG`.
fn inherited(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    matches!(
        name,
        "PATH" | "HOME" | "TMPDIR" | "LANG" | "TZ" | "RUST_LOG"
    ) || name.starts_with("XDG_")
        || name.starts_with("LC_")
        // The HTTP server's bearer token (both names) is a secret the
        // broker never reads.
        || (name.starts_with("MCP_CHAT_") && !matches!(name, "MCP_CHAT_TOKEN" | "MCP_CHAT_HTTP_TOKEN"))
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

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn executable(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn path_of(dirs: &[&Path]) -> std::ffi::OsString {
        std::env::join_paths(dirs).unwrap()
    }

    #[test]
    fn the_broker_is_never_found_through_empty_or_relative_path_entries() {
        let dir = tempfile::tempdir().unwrap();
        let name = broker_name();
        // A relative entry that really leads to a broker: from the current
        // directory up to `/`, then down into the temp dir.
        let cwd = std::env::current_dir().unwrap();
        let up = "../".repeat(cwd.components().count() - 1);
        let relative = Path::new(&up).join(dir.path().strip_prefix("/").unwrap());
        executable(&relative.join(&name));
        assert!(is_executable_file(&relative.join(&name)));
        let absolute = dir.path().join("abs");
        let path = path_of(&[Path::new(""), Path::new("."), &relative, &absolute]);
        let err = locate_broker(None, None, Some(&path)).unwrap_err();
        let StartError::Spawn { source, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert!(
            err.to_string()
                .contains("relative PATH entries are skipped"),
            "{err}"
        );

        executable(&absolute.join(&name));
        assert_eq!(
            locate_broker(None, None, Some(&path)).unwrap(),
            absolute.join(&name)
        );
        // Not executable: skipped.
        let plain = dir.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        std::fs::write(plain.join(&name), "").unwrap();
        let path = path_of(&[&plain, &absolute]);
        assert_eq!(
            locate_broker(None, None, Some(&path)).unwrap(),
            absolute.join(&name)
        );
    }

    #[test]
    fn explicit_then_sibling_then_path() {
        let dir = tempfile::tempdir().unwrap();
        let name = broker_name();
        let exe_dir = dir.path().join("exe");
        let on_path = dir.path().join("path");
        executable(&on_path.join(&name));
        let path = path_of(&[&on_path]);
        assert_eq!(
            locate_broker(None, Some(&exe_dir), Some(&path)).unwrap(),
            on_path.join(&name)
        );
        executable(&exe_dir.join(&name));
        assert_eq!(
            locate_broker(None, Some(&exe_dir), Some(&path)).unwrap(),
            exe_dir.join(&name)
        );
        let explicit = dir.path().join("custom-broker");
        assert_eq!(
            locate_broker(Some(explicit.as_os_str()), Some(&exe_dir), Some(&path)).unwrap(),
            explicit,
            "an explicit path is taken as it is"
        );
        // A relative one is made absolute from the current directory.
        let relative = locate_broker(Some(OsStr::new("./x/b")), None, None).unwrap();
        assert_eq!(relative, std::env::current_dir().unwrap().join("./x/b"));
        // A bare name is looked up like the default, absolute entries only.
        executable(&on_path.join("other-broker"));
        assert_eq!(
            locate_broker(
                Some(OsStr::new("other-broker")),
                Some(&exe_dir),
                Some(&path)
            )
            .unwrap(),
            on_path.join("other-broker")
        );
        assert!(locate_broker(Some(OsStr::new("nope")), Some(&exe_dir), Some(&path)).is_err());
        // Empty counts as unset.
        assert_eq!(
            locate_broker(Some(OsStr::new("")), Some(&exe_dir), Some(&path)).unwrap(),
            exe_dir.join(&name)
        );
    }

    #[test]
    fn only_allow_listed_variables_are_inherited() {
        for kept in [
            "PATH",
            "HOME",
            "TMPDIR",
            "LANG",
            "TZ",
            "RUST_LOG",
            "XDG_RUNTIME_DIR",
            "XDG_STATE_HOME",
            "LC_ALL",
            "LC_CTYPE",
            "MCP_CHAT_SOCKET",
            "MCP_CHAT_LOG",
        ] {
            assert!(inherited(OsStr::new(kept)), "{kept}");
        }
        for dropped in [
            "SECRET_TOKEN",
            "ANTHROPIC_API_KEY",
            "MCP_CHAT_HTTP_TOKEN",
            "MCP_CHAT_TOKEN",
            "LD_PRELOAD",
            "SSH_AUTH_SOCK",
            "PWD",
            "path",
            "XDG",
            "MCP_CHAT",
        ] {
            assert!(!inherited(OsStr::new(dropped)), "{dropped}");
        }
    }
}
