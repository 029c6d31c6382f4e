//! Where the broker listens, decided in one place for broker and shims alike.
//!
//! Order: `MCP_CHAT_SOCKET` (a full path) wins; else
//! `$XDG_RUNTIME_DIR/mcp-chat/broker.sock`; else
//! `<temp dir>/mcp-chat-<uid>/broker.sock`. The rules are pure functions of a
//! [`SocketEnv`], so tests inject their own environment.
//!
//! The directory is the first fence against other users: it must be ours and
//! closed to group and others. The broker's peer uid check is the second.

use std::path::{Path, PathBuf};

use crate::error::SocketDirError;

/// Environment variable that overrides the socket path.
pub const SOCKET_ENV_VAR: &str = "MCP_CHAT_SOCKET";

/// The parts of the environment the path rules read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEnv {
    pub socket_override: Option<PathBuf>,
    pub xdg_runtime_dir: Option<PathBuf>,
    pub temp_dir: PathBuf,
    pub uid: u32,
}

impl SocketEnv {
    /// Reads the real process environment.
    pub fn from_process() -> Self {
        let non_empty = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            socket_override: non_empty(SOCKET_ENV_VAR),
            xdg_runtime_dir: non_empty("XDG_RUNTIME_DIR"),
            temp_dir: std::env::temp_dir(),
            uid: current_uid(),
        }
    }

    /// The broker's socket path under these rules.
    pub fn socket_path(&self) -> PathBuf {
        if let Some(path) = &self.socket_override {
            return path.clone();
        }
        match &self.xdg_runtime_dir {
            Some(runtime) => runtime.join("mcp-chat").join("broker.sock"),
            None => self
                .temp_dir
                .join(format!("mcp-chat-{}", self.uid))
                .join("broker.sock"),
        }
    }
}

/// The socket path for this process's environment.
pub fn default_socket_path() -> PathBuf {
    SocketEnv::from_process().socket_path()
}

/// The single-instance lock the running broker holds for its whole life.
pub fn broker_lock_path(socket: &Path) -> PathBuf {
    sibling(socket, "lock")
}

/// The lock shims take while deciding whether to start a broker, so two
/// starters never both spawn one.
pub fn startup_lock_path(socket: &Path) -> PathBuf {
    sibling(socket, "startup.lock")
}

fn sibling(socket: &Path, extension: &str) -> PathBuf {
    let mut name = socket
        .file_stem()
        .map(|s| s.to_os_string())
        .unwrap_or_else(|| "broker".into());
    name.push(".");
    name.push(extension);
    socket.with_file_name(name)
}

/// Longest socket path the OS accepts (`sun_path` less its NUL).
#[cfg(target_os = "linux")]
pub const MAX_SOCKET_PATH_BYTES: usize = 107;
#[cfg(not(target_os = "linux"))]
pub const MAX_SOCKET_PATH_BYTES: usize = 103;

/// Refuses a path the kernel would truncate, naming the path.
pub fn check_path_length(socket: &Path) -> Result<(), SocketDirError> {
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(SocketDirError::PathTooLong {
            path: socket.to_owned(),
            len,
            max: MAX_SOCKET_PATH_BYTES,
        });
    }
    Ok(())
}

/// Creates the socket's directory (mode 0700) if missing, then checks that it
/// is a real directory, owned by this user, closed to everyone else. An
/// existing directory is never chmod-ed: if it is someone else's, changing it
/// would be worse than refusing.
pub fn prepare_socket_dir(socket: &Path) -> Result<PathBuf, SocketDirError> {
    check_path_length(socket)?;
    let dir = socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| SocketDirError::NoParent {
            path: socket.to_owned(),
        })?;
    create_private_dir(dir)?;
    check_private_dir(dir, current_uid())?;
    Ok(dir.to_owned())
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), SocketDirError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(source) => Err(SocketDirError::Create {
            path: dir.to_owned(),
            source,
        }),
    }
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), SocketDirError> {
    std::fs::create_dir_all(dir).map_err(|source| SocketDirError::Create {
        path: dir.to_owned(),
        source,
    })
}

/// Checks an existing directory: not a link, owned by `uid`, mode `0o700` or
/// stricter.
#[cfg(unix)]
pub fn check_private_dir(dir: &Path, uid: u32) -> Result<(), SocketDirError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(|source| SocketDirError::Inspect {
        path: dir.to_owned(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return Err(SocketDirError::Symlink {
            path: dir.to_owned(),
        });
    }
    if !meta.is_dir() {
        return Err(SocketDirError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    if meta.uid() != uid {
        return Err(SocketDirError::WrongOwner {
            path: dir.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SocketDirError::TooOpen {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn check_private_dir(dir: &Path, _uid: u32) -> Result<(), SocketDirError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(SocketDirError::NotADirectory {
            path: dir.to_owned(),
        })
    }
}

/// This process's effective uid (0 where uids do not exist).
#[cfg(unix)]
pub fn current_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(not(unix))]
pub fn current_uid() -> u32 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SocketEnv {
        SocketEnv {
            socket_override: None,
            xdg_runtime_dir: None,
            temp_dir: PathBuf::from("/tmp"),
            uid: 1000,
        }
    }

    #[test]
    fn override_wins() {
        let env = SocketEnv {
            socket_override: Some("/x/y.sock".into()),
            xdg_runtime_dir: Some("/run/user/1000".into()),
            ..env()
        };
        assert_eq!(env.socket_path(), PathBuf::from("/x/y.sock"));
    }

    #[test]
    fn runtime_dir_next() {
        let env = SocketEnv {
            xdg_runtime_dir: Some("/run/user/1000".into()),
            ..env()
        };
        assert_eq!(
            env.socket_path(),
            PathBuf::from("/run/user/1000/mcp-chat/broker.sock")
        );
    }

    #[test]
    fn temp_dir_per_uid_last() {
        assert_eq!(
            env().socket_path(),
            PathBuf::from("/tmp/mcp-chat-1000/broker.sock")
        );
    }

    #[test]
    fn siblings_share_the_socket_stem() {
        let socket = Path::new("/d/broker.sock");
        assert_eq!(broker_lock_path(socket), PathBuf::from("/d/broker.lock"));
        assert_eq!(
            startup_lock_path(socket),
            PathBuf::from("/d/broker.startup.lock")
        );
    }

    #[test]
    fn too_long_path_is_named() {
        let long = PathBuf::from(format!("/{}", "a".repeat(200)));
        let err = check_path_length(&long).unwrap_err().to_string();
        assert!(
            err.contains("aaaa") && err.contains("MCP_CHAT_SOCKET"),
            "{err}"
        );
    }

    #[cfg(unix)]
    mod unix {
        use super::super::*;
        use std::os::unix::fs::PermissionsExt;

        #[test]
        fn creates_missing_dir_0700() {
            let tmp = tempfile::tempdir().unwrap();
            let socket = tmp.path().join("a/b/broker.sock");
            let dir = prepare_socket_dir(&socket).unwrap();
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }

        #[test]
        fn refuses_group_readable_dir_without_fixing_it() {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("open");
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o740)).unwrap();
            let err = prepare_socket_dir(&dir.join("broker.sock")).unwrap_err();
            assert!(
                matches!(err, SocketDirError::TooOpen { mode: 0o740, .. }),
                "{err}"
            );
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o740, "left as it was");
        }

        #[test]
        fn refuses_symlinked_dir() {
            let tmp = tempfile::tempdir().unwrap();
            let real = tmp.path().join("real");
            std::fs::create_dir(&real).unwrap();
            std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
            let link = tmp.path().join("link");
            std::os::unix::fs::symlink(&real, &link).unwrap();
            let err = prepare_socket_dir(&link.join("broker.sock")).unwrap_err();
            assert!(matches!(err, SocketDirError::Symlink { .. }), "{err}");
        }

        #[test]
        fn refuses_someone_elses_dir() {
            let tmp = tempfile::tempdir().unwrap();
            let err = check_private_dir(tmp.path(), current_uid() + 1).unwrap_err();
            assert!(matches!(err, SocketDirError::WrongOwner { .. }), "{err}");
        }
    }
}
