//! Harness for the end-to-end tests: every test gets its own temporary socket
//! directory, starts the real binaries from the target directory, and waits
//! on events (a ready line, a frame, a status round trip, a process exit),
//! never on the clock or on log wording. The raw protocol client, the broker
//! process and the `/proc` readers are the shared dev-only
//! `mcp-chat-testkit`, which the bench uses too.
//!
//! The binaries must be built first: `cargo build --workspace --bins` (the
//! test script does this).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

pub mod broker;
pub mod federation;
pub mod frozen_receiver;
pub mod mcp_client;
pub mod script;

pub use mcp_chat_testkit::proto_client;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use broker::{AutoStartedBroker, BrokerProcess};
pub use mcp_chat_testkit::ProtoClient;
pub use mcp_chat_testkit::within_or_panic as within;
pub use mcp_client::McpClient;
pub use script::run_script;

/// Broker flags that lift every per-session rate limit, for tests about
/// load or about what happens to a flood, not about the limits themselves.
pub const UNTHROTTLED: &[&str] = &[
    "--message-rate",
    "0",
    "--byte-rate",
    "0",
    "--request-rate",
    "0",
];

/// Long enough for a loaded 2-core CI box; a test waits this long only when
/// it is about to fail anyway.
pub const EVENT_TIMEOUT: Duration = mcp_chat_testkit::WAIT;

/// A binary of this workspace, from the target directory the tests run from.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test>-<hash>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// The repository root: this crate lives in `<root>/tests`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_owned()
}

/// A Python with the official MCP SDK: `MCP_CHAT_TEST_PYTHON`, else the
/// `.venv` that `./test.sh` creates.
pub fn interop_python() -> PathBuf {
    if let Some(python) = std::env::var_os("MCP_CHAT_TEST_PYTHON") {
        return python.into();
    }
    let venv = repo_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run ./test.sh, which creates it with the official MCP SDK",
        venv.display()
    );
    venv
}

/// A private temporary directory holding one test's socket.
pub struct TestSocket {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TestSocket {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mcp-chat-test")
            .tempdir()
            .unwrap();
        // A subdirectory, so the broker creates it 0700 itself.
        let path = dir.path().join("sock").join("broker.sock");
        Self { dir, path }
    }
}

impl Default for TestSocket {
    fn default() -> Self {
        Self::new()
    }
}
