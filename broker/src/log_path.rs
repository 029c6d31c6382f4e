//! Where an auto-started broker writes its log (and where any broker keeps
//! its blocks): the one place this rule lives. Shims never compute it; they learn it from the broker's status
//! (`StatusInfo::log_path`), so `mcp-chat doctor` shows the file the running
//! broker really writes.
//!
//! - For the default socket: `broker.log` in the user's state directory
//!   (`$XDG_STATE_HOME/mcp-chat`), where logs belong.
//! - For a socket named with `--socket` or `MCP_CHAT_SOCKET`: beside it
//!   (`<stem>.log`), so tests and side-by-side brokers keep separate logs,
//!   in a directory that is private to the user already.

use std::path::{Path, PathBuf};

use mcp_chat_proto::socket_path::SocketEnv;

/// Where a broker listening on `socket` logs when it runs in the background.
pub fn log_path(socket: &Path) -> PathBuf {
    state_dir_log(socket).unwrap_or_else(|| beside_socket(socket))
}

/// The log in the user's state directory, for the default socket only.
pub fn state_dir_log(socket: &Path) -> Option<PathBuf> {
    let env = SocketEnv::from_process();
    let is_default = env.socket_override.is_none() && socket == env.socket_path();
    let dirs = directories::ProjectDirs::from("", "", "mcp-chat")?;
    let state_dir = dirs.state_dir().unwrap_or(dirs.cache_dir());
    is_default.then(|| state_dir.join("broker.log"))
}

/// `<dir>/<stem>.log` for `<dir>/<stem>.sock`.
pub fn beside_socket(socket: &Path) -> PathBuf {
    beside(socket, ".log")
}

/// Where a broker listening on `socket` keeps its blocks, by the same rule
/// as its log: `blocks` in the state directory for the default socket,
/// `<stem>.blocks` beside an overridden one. Unlike the log, in the
/// foreground too: blocks are a promise to users, not a diagnostic.
pub fn blocks_path(socket: &Path) -> PathBuf {
    state_dir_log(socket)
        .map(|log| log.with_file_name("blocks"))
        .unwrap_or_else(|| beside(socket, ".blocks"))
}

/// Where a broker listening on `socket` pins the realm keys it has seen
/// (`federation::key_pin`), by the same rule as its blocks.
pub fn realm_keys_path(socket: &Path) -> PathBuf {
    state_dir_log(socket)
        .map(|log| log.with_file_name("realm-keys"))
        .unwrap_or_else(|| beside(socket, ".realm-keys"))
}

fn beside(socket: &Path, extension: &str) -> PathBuf {
    let mut name = socket
        .file_stem()
        .map(|s| s.to_os_string())
        .unwrap_or_else(|| "broker".into());
    name.push(extension);
    socket.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overridden_socket_logs_beside_itself() {
        let socket = Path::new("/d/broker.sock");
        assert_eq!(beside_socket(socket), PathBuf::from("/d/broker.log"));
        assert_eq!(log_path(socket), PathBuf::from("/d/broker.log"));
        assert_eq!(blocks_path(socket), PathBuf::from("/d/broker.blocks"));
        assert_eq!(
            realm_keys_path(socket),
            PathBuf::from("/d/broker.realm-keys")
        );
    }
}
