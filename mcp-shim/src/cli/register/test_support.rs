//! What every test of `register` needs: a command path and a scratch directory.

pub(super) const CMD: &str = "/opt/mcp-chat/bin/mcp-chat";

pub(super) fn temp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mcp-chat-register")
        .tempdir()
        .unwrap()
}
