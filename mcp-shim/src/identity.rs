//! The installation's pseudonymous id, which lets a block outlast the
//! session that made it: a random value made once per user account and kept
//! in the user's state directory (`$XDG_STATE_HOME/mcp-chat/identity`, mode
//! 0600). It is sent only to the local broker, which keeps a keyed hash of
//! it and never shows it to a partner. It says nothing about the user.
//!
//! Without it (no state directory, a read-only home), blocks still hold for
//! the session that made them: the broker falls back to the session.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The file's name inside the state directory.
const FILE: &str = "identity";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no state directory for this user")]
    NoStateDir,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// This installation's id, read or made once per process; `None` (logged
/// once) when it cannot be kept.
pub fn installation_id() -> Option<String> {
    static ID: OnceLock<Option<String>> = OnceLock::new();
    ID.get_or_init(|| {
        let dir = state_dir().ok_or(IdentityError::NoStateDir);
        match dir.and_then(|dir| load_or_create(&dir)) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(error = %e, "no installation id; a block will bind only this session");
                None
            }
        }
    })
    .clone()
}

fn state_dir() -> Option<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "mcp-chat")?;
    Some(
        dirs.state_dir()
            .unwrap_or_else(|| dirs.data_local_dir())
            .to_owned(),
    )
}

/// Reads the id in `dir`, or makes one. Two processes starting at once
/// agree: the id is written whole to a private temporary file and linked
/// into place only if no id is there yet.
pub fn load_or_create(dir: &Path) -> Result<String, IdentityError> {
    let path = dir.join(FILE);
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    if let Some(id) = read_valid(&path).map_err(io)? {
        return Ok(id);
    }
    create_private_dir(dir).map_err(|source| IdentityError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let temp = dir.join(format!(".{FILE}.{}", uuid::Uuid::new_v4().simple()));
    let written = write_private(&temp, &id).and_then(|()| {
        // A file there that is not a valid id (cut short by a crash) is
        // replaced; a valid one wins over ours.
        if read_valid(&path)?.is_none() && path.exists() {
            std::fs::remove_file(&path)?;
        }
        match std::fs::hard_link(&temp, &path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    });
    let _ = std::fs::remove_file(&temp);
    written.map_err(io)?;
    read_valid(&path)
        .map_err(io)?
        .ok_or_else(|| io(std::io::Error::other("the id file is not a valid id")))
}

fn read_valid(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let id = text.trim();
            let valid = id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit());
            Ok(valid.then(|| id.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn write_private(path: &Path, id: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    writeln!(file, "{id}")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read_back_privately() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state").join("mcp-chat");
        let first = load_or_create(&state).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(load_or_create(&state).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(state.join(FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Only the id is left behind.
        let names: Vec<_> = std::fs::read_dir(&state).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_damaged_id_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "not an id").unwrap();
        let id = load_or_create(dir.path()).unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(load_or_create(dir.path()).unwrap(), id);
    }
}
