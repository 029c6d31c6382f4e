//! Typed failures of framing and of the socket directory checks.

use std::io;
use std::path::PathBuf;

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("socket I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("frame larger than the {max}-byte limit")]
    FrameTooLarge { max: usize },
    #[error("frame is not a valid protocol message: {0}")]
    Json(#[from] serde_json::Error),
}

/// The socket directory is missing, unsafe, or the path is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SocketDirError {
    #[error("could not create socket directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("could not inspect socket directory {path}: {source}")]
    Inspect { path: PathBuf, source: io::Error },
    #[error(
        "socket directory {path} is a symbolic link; refusing to use it (remove the link or set MCP_CHAT_SOCKET)"
    )]
    Symlink { path: PathBuf },
    #[error("socket directory {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "socket directory {path} belongs to uid {owner}, not to you (uid {uid}); refusing to use it (set MCP_CHAT_SOCKET to a path in a directory you own)"
    )]
    WrongOwner { path: PathBuf, owner: u32, uid: u32 },
    #[error(
        "socket directory {path} has mode {mode:03o}, open to other users; run `chmod 700 {path}` or set MCP_CHAT_SOCKET"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "socket path {path} is {len} bytes; the OS allows at most {max} (set MCP_CHAT_SOCKET to a shorter path)"
    )]
    PathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("socket path {path} has no parent directory")]
    NoParent { path: PathBuf },
}
