//! Interop with clients this project did not write. The Python SDK's venv is
//! made by `./test.sh` (`.venv`, from tests/interop/python/requirements.txt);
//! `MCP_CHAT_TEST_PYTHON` may name another interpreter that has `mcp`.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use mcp_chat_tests::{AutoStartedBroker, TestSocket, bin_path, interop_python, repo_root, within};

#[tokio::test]
async fn python_sdk_initialize_era_client_runs_the_seed_flow() {
    let socket = TestSocket::new();
    let script = repo_root().join("tests/interop/python/seed_flow.py");
    let run = tokio::process::Command::new(interop_python())
        .arg(&script)
        .env("MCP_CHAT_BIN", bin_path("mcp-chat"))
        .env("MCP_CHAT_BROKER", bin_path("mcp-chat-broker"))
        .env("MCP_CHAT_SOCKET", &socket.path)
        .kill_on_drop(true)
        .output();
    let output = within("the Python seed flow", run).await.unwrap();
    // The script stops the broker it started; this is the backstop.
    drop(AutoStartedBroker::find(&socket.path));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "seed_flow.py failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
}
