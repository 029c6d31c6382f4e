//! Claiming the socket so that exactly one broker serves it.
//!
//! Order matters: take the lock, then clear a stale socket, then bind. Only
//! the lock holder ever unlinks the socket, so two brokers starting at once
//! cannot delete each other's live socket. On the way out the socket is
//! unlinked while the lock is still held.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use interprocess::local_socket::tokio::Listener;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use mcp_chat_proto::SocketDirError;
use mcp_chat_proto::socket_path::{broker_lock_path, prepare_socket_dir};

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(transparent)]
    SocketDir(#[from] SocketDirError),
    #[error("a broker is already running on {path}{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning { path: PathBuf, pid: Option<u32> },
    #[error("could not use lock file {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error(
        "something that is not an mcp-chat broker is listening on {path}; stop it or set MCP_CHAT_SOCKET"
    )]
    Occupied { path: PathBuf },
    #[error("could not remove stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("could not listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// A listening socket plus the lock that makes it ours. Dropping it unlinks
/// the socket, then releases the lock.
#[derive(Debug)]
pub struct BoundListener {
    listener: Listener,
    path: PathBuf,
    _lock: File,
}

impl BoundListener {
    /// Takes the single-instance lock for `socket` and listens on it.
    pub fn bind(socket: &Path) -> Result<Self, BindError> {
        prepare_socket_dir(socket)?;
        let lock = acquire_lock(socket)?;
        remove_stale_socket(socket)?;
        let name = socket
            .to_fs_name::<GenericFilePath>()
            .map_err(|source| BindError::Bind {
                path: socket.to_owned(),
                source,
            })?;
        let options = || {
            ListenerOptions::new()
                .name(name.clone())
                .reclaim_name(false)
        };
        let listener = listen_private(options, socket).map_err(|source| BindError::Bind {
            path: socket.to_owned(),
            source,
        })?;
        Ok(Self {
            listener,
            path: socket.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn listener(&self) -> &Listener {
        &self.listener
    }
}

impl Drop for BoundListener {
    fn drop(&mut self) {
        // The lock field is dropped after this body runs, so the unlink
        // happens while we still own the path.
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove socket");
        }
    }
}

/// Listens with the socket created `0600`. Interprocess sets the mode before
/// `bind` (no umask race), which only some systems allow (Linux, recent BSDs);
/// elsewhere (macOS) it reports `Unsupported`. There the socket is created
/// with the umask's mode and narrowed right after `bind`: the `0700`
/// directory, checked before we got here, keeps everyone else out meanwhile,
/// and the peer uid check stays behind it.
#[cfg(unix)]
fn listen_private<'n>(
    options: impl Fn() -> ListenerOptions<'n>,
    socket: &Path,
) -> io::Result<Listener> {
    use interprocess::os::unix::local_socket::ListenerOptionsExt;
    let (listener, fell_back) = with_mode_or_without(
        || options().mode(0o600).create_tokio(),
        || options().create_tokio(),
    )?;
    if fell_back {
        use std::os::unix::fs::PermissionsExt;
        tracing::info!(
            path = %socket.display(),
            "this system cannot set a socket's mode before bind; relying on the private directory and setting 0600 after bind"
        );
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

#[cfg(not(unix))]
fn listen_private<'n>(
    options: impl Fn() -> ListenerOptions<'n>,
    _socket: &Path,
) -> io::Result<Listener> {
    options().create_tokio()
}

/// Tries `with_mode`; only when the system says it cannot do that
/// (`Unsupported`) tries `without_mode`. Any other error is the answer. The
/// flag says whether the fallback was taken.
#[cfg(unix)]
fn with_mode_or_without<T>(
    with_mode: impl FnOnce() -> io::Result<T>,
    without_mode: impl FnOnce() -> io::Result<T>,
) -> io::Result<(T, bool)> {
    match with_mode() {
        Ok(listener) => Ok((listener, false)),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok((without_mode()?, true)),
        Err(e) => Err(e),
    }
}

fn acquire_lock(socket: &Path) -> Result<File, BindError> {
    let path = broker_lock_path(socket);
    let lock_err = |source| BindError::Lock {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(BindError::AlreadyRunning {
                path: socket.to_owned(),
                pid: pid.trim().parse().ok(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(lock_err(e)),
    }
    // The pid in the lock file is only for messages and `doctor`; the lock
    // itself is what excludes a second broker.
    file.set_len(0).map_err(lock_err)?;
    file.rewind().map_err(lock_err)?;
    write!(file, "{}", std::process::id()).map_err(lock_err)?;
    Ok(file)
}

/// A socket file left by a crashed broker refuses connections; only then is it
/// removed. A live listener (some other program, or a broker too old to take
/// the lock) is left alone.
#[cfg(unix)]
fn remove_stale_socket(socket: &Path) -> Result<(), BindError> {
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => Err(BindError::Occupied {
            path: socket.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %socket.display(), "removing stale socket");
            std::fs::remove_file(socket).map_err(|source| BindError::RemoveStale {
                path: socket.to_owned(),
                source,
            })
        }
        Err(source) => Err(BindError::RemoveStale {
            path: socket.to_owned(),
            source,
        }),
    }
}

#[cfg(not(unix))]
fn remove_stale_socket(_socket: &Path) -> Result<(), BindError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_bind_reports_the_running_pid() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("private/b.sock");
        let first = BoundListener::bind(&socket).unwrap();
        let err = BoundListener::bind(&socket).unwrap_err();
        let pid = std::process::id();
        assert!(
            matches!(err, BindError::AlreadyRunning { pid: Some(p), .. } if p == pid),
            "{err}"
        );
        drop(first);
        assert!(!socket.exists(), "socket unlinked on drop");
        BoundListener::bind(&socket).unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn socket_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("private/b.sock");
        let _bound = BoundListener::bind(&socket).unwrap();
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn an_unsupported_socket_mode_falls_back_to_the_private_directory() {
        let unsupported = || Err::<&str, _>(io::Error::from(io::ErrorKind::Unsupported));
        let plain = || Ok::<_, io::Error>("plain");
        assert_eq!(
            with_mode_or_without(unsupported, plain).unwrap(),
            ("plain", true)
        );
        // Supported: the fallback is never tried.
        let never = || -> io::Result<&str> { panic!("fallback tried") };
        assert_eq!(
            with_mode_or_without(|| Ok("0600"), never).unwrap(),
            ("0600", false)
        );
        // Any other failure is reported as it is, not papered over.
        let denied = || Err::<&str, _>(io::Error::from(io::ErrorKind::PermissionDenied));
        let err = with_mode_or_without(denied, never).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        // The fallback's own failure is reported too.
        let also_failing = || Err::<&str, _>(io::Error::from(io::ErrorKind::AddrInUse));
        let err = with_mode_or_without(unsupported, also_failing).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("private/b.sock");
        mcp_chat_proto::socket_path::prepare_socket_dir(&socket).unwrap();
        // A bound-then-dropped std listener leaves exactly what a crash leaves.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        assert!(socket.exists());
        let _bound = BoundListener::bind(&socket).unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn live_foreign_listener_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("private/b.sock");
        mcp_chat_proto::socket_path::prepare_socket_dir(&socket).unwrap();
        let _foreign = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let err = BoundListener::bind(&socket).unwrap_err();
        assert!(matches!(err, BindError::Occupied { .. }), "{err}");
        assert!(socket.exists());
    }
}
