//! The auto-started broker's log file: private, and capped in size.
//!
//! The log names sessions and the clients that opened them, which is nobody
//! else's business, so the file is created `0600` in a directory created
//! `0700`. A broker may run for weeks, so the file is capped: once it holds
//! `max_bytes` it is renamed to `<name>.1` (replacing the previous one) and a
//! fresh file is started, which keeps both together near twice the cap.
//! Rotation happens only between lines, so no line is split across files.
//! (`tracing-appender` rotates by time only; the size-based crates bring
//! more than these few lines do.)

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Default cap on `broker.log` before it is rotated: enough for days of
/// `info` logging from a busy broker, small enough to never matter on disk.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// A log file that rotates itself to `<name>.1` past a size cap. Wrap it in a
/// `Mutex` to hand it to `tracing_subscriber` as a writer.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: File,
    /// Bytes in the current file, including what was there when opened.
    len: u64,
    max_bytes: u64,
    /// Whether the last byte written ended a line: the only place to rotate.
    at_line_start: bool,
}

impl LogFile {
    /// Opens `path` for appending, creating it `0600`. An existing file that
    /// group or others may read is narrowed to `0600`: it is ours (it sits in
    /// our private directory) and older versions created it with the umask.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<Self> {
        let file = open_private(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            len,
            max_bytes: max_bytes.max(1),
            at_line_start: true,
        })
    }

    /// Where the previous file goes when this one is full.
    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".1");
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        match std::fs::rename(&self.path, Self::rotated_path(&self.path)) {
            // NotFound: someone deleted the log; start it again.
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.file = open_private(&self.path)?;
        self.len = self.file.metadata()?.len();
        Ok(())
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len >= self.max_bytes
            && self.at_line_start
            && let Err(e) = self.rotate()
        {
            // Losing log lines is worse than a log over its cap: keep writing
            // here and try again after another cap's worth.
            self.len = 0;
            let _ = writeln!(self.file, "could not rotate {}: {e}", self.path.display());
        }
        let written = self.file.write(buf)?;
        if let Some(last) = buf[..written].last() {
            self.at_line_start = *last == b'\n';
        }
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn open_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path)
}

/// Why the log directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogDirError {
    #[error("could not create log directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    /// The checks shared with the socket directory (its wording names it so).
    #[error("unsafe log directory: {0}")]
    Unsafe(#[from] mcp_chat_proto::SocketDirError),
}

/// Creates the log directory `0700` if missing (its parents with the usual
/// modes). An existing one open to group or others is narrowed to `0700`
/// when it is a real directory of ours: this is only called for mcp-chat's
/// own state directory, which older versions created with the umask. Then
/// it gets the same checks as the socket directory.
#[cfg(unix)]
pub fn prepare_state_dir(dir: &Path) -> Result<(), LogDirError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};

    use mcp_chat_proto::socket_path::{check_private_dir, current_uid};

    let create_err = |source| LogDirError::Create {
        path: dir.to_owned(),
        source,
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(create_err)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(create_err(e)),
        _ => {}
    }
    let uid = current_uid();
    let meta = std::fs::symlink_metadata(dir).map_err(create_err)?;
    if meta.is_dir() && meta.uid() == uid && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(create_err)?;
    }
    Ok(check_private_dir(dir, uid)?)
}

#[cfg(not(unix))]
pub fn prepare_state_dir(dir: &Path) -> Result<(), LogDirError> {
    std::fs::create_dir_all(dir).map_err(|source| LogDirError::Create {
        path: dir.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn rotates_once_past_the_cap_between_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.log");
        let rotated = LogFile::rotated_path(&path);
        assert_eq!(rotated, dir.path().join("broker.log.1"));
        let mut log = LogFile::open(&path, 10).unwrap();
        log.write_all(b"first line\n").unwrap();
        assert!(!rotated.exists(), "the cap is checked before a write");
        // A line written in pieces is never split across the two files.
        log.write_all(b"second ").unwrap();
        log.write_all(b"line\n").unwrap();
        assert_eq!(read(&rotated), "first line\n");
        assert_eq!(read(&path), "second line\n");
        log.write_all(b"third line\n").unwrap();
        // One rotation only: the oldest file is replaced.
        assert_eq!(read(&rotated), "second line\n");
        assert_eq!(read(&path), "third line\n");
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 2);
    }

    #[test]
    fn an_existing_log_counts_toward_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.log");
        std::fs::write(&path, "0123456789\n").unwrap();
        let mut log = LogFile::open(&path, 10).unwrap();
        log.write_all(b"new\n").unwrap();
        assert_eq!(read(&LogFile::rotated_path(&path)), "0123456789\n");
        assert_eq!(read(&path), "new\n");
    }

    #[test]
    fn a_deleted_log_is_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.log");
        let mut log = LogFile::open(&path, 4).unwrap();
        log.write_all(b"gone\n").unwrap();
        std::fs::remove_file(&path).unwrap();
        log.write_all(b"back\n").unwrap();
        assert_eq!(read(&path), "back\n");
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private_and_an_open_one_is_narrowed() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.log");
        let mut log = LogFile::open(&path, 4).unwrap();
        assert_eq!(mode(&path), 0o600);
        log.write_all(b"line\n").unwrap();
        log.write_all(b"line\n").unwrap();
        assert_eq!(mode(&path), 0o600, "the fresh file after rotation");
        assert_eq!(mode(&LogFile::rotated_path(&path)), 0o600);

        let old = dir.path().join("old.log");
        std::fs::write(&old, "x\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        LogFile::open(&old, 100).unwrap();
        assert_eq!(mode(&old), 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn the_state_dir_is_created_private_and_an_open_one_narrowed() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state/mcp-chat");
        prepare_state_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);

        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_state_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);

        // A symlink is refused, not followed and not chmod-ed.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        assert!(prepare_state_dir(&link).is_err());
    }
}
