//! Interop with clients this project did not write. The Python SDK's venv is
//! made by `./test.sh` (`.venv`, from tests/interop/python/requirements.txt);
//! `MCP_CHAT_TEST_PYTHON` may name another interpreter that has `mcp`.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use mcp_chat_tests::{
    AutoStartedBroker, TestSocket, bin_path, interop_python, repo_root, run_script,
};

#[tokio::test]
async fn python_sdk_initialize_era_client_runs_the_seed_flow() {
    let socket = TestSocket::new();
    let script = repo_root().join("tests/interop/python/seed_flow.py");
    let mut command = tokio::process::Command::new(interop_python());
    command
        .arg(&script)
        .env("MCP_CHAT_BIN", bin_path("mcp-chat"))
        .env("MCP_CHAT_BROKER", bin_path("mcp-chat-broker"))
        .env("MCP_CHAT_SOCKET", &socket.path);
    let stdout = run_script(command, "seed_flow.py", SCRIPT_WITHIN).await;
    // The script stops the broker it started; this is the backstop.
    drop(AutoStartedBroker::find(&socket.path));
    assert!(stdout.contains("seed flow: all checks passed"), "{stdout}");
}

/// Generous: a loaded 2-core box; a healthy run takes seconds.
const SCRIPT_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);
