//! The chat page (`mcp-chat web`) in a real browser: Debian's Chromium,
//! headless, driven by Playwright for Python (`tests/interop/python/web_page.py`,
//! one scenario per test). `./test.sh` installs Chromium (apt) and Playwright
//! (into `.venv`); `MCP_CHAT_TEST_CHROMIUM` may name another Chromium.
//!
//! Each test runs its own broker on its own socket; the script starts
//! `mcp-chat web --no-open` (and, in `agent`, a stdio `mcp-chat` through the
//! official Python SDK) against it. Screenshots of a conversation land in
//! `<target dir>/test-artifacts/web-page/`.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::path::PathBuf;
use std::time::Duration;

use mcp_chat_tests::{
    BrokerProcess, TestSocket, bin_path, interop_python, repo_root, run_script, within,
};
use tokio::process::Command;

/// A whole scenario, browser start included, on a loaded 2-core machine;
/// every step inside waits on its own event with a smaller bound.
const SCENARIO_WITHIN: Duration = Duration::from_secs(180);

fn chromium() -> PathBuf {
    let path = std::env::var_os("MCP_CHAT_TEST_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: run ./test.sh, which installs Debian's chromium, or set MCP_CHAT_TEST_CHROMIUM",
        path.display()
    );
    path
}

/// `<target dir>/test-artifacts/web-page`, beside the test binaries.
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash>
    let target = exe.ancestors().nth(3).unwrap();
    target.join("test-artifacts").join("web-page")
}

async fn scenario(name: &str) {
    scenario_with(name, &[]).await;
}

/// The broker pings a waiter quiet for a fifth of a heartbeat (2 s by
/// default) before matching it, and passes it over meanwhile: a scenario
/// that checks who is first in line runs with a long heartbeat, so a loaded
/// machine cannot reorder the line while a page loads.
const IN_LINE: &[&str] = &["--heartbeat-ms", "600000"];

async fn scenario_with(name: &str, broker_args: &[&str]) {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, broker_args).await;
    let script = repo_root().join("tests/interop/python/web_page.py");
    let mut command = Command::new(interop_python());
    command
        .arg(&script)
        .arg(name)
        .env("MCP_CHAT_BIN", bin_path("mcp-chat"))
        .env("MCP_CHAT_SOCKET", &socket.path)
        .env("MCP_CHAT_CHROMIUM", chromium())
        .env("MCP_CHAT_ARTIFACTS", artifacts());
    run_script(command, &format!("web_page.py {name}"), SCENARIO_WITHIN).await;
}

#[tokio::test]
async fn two_pages_match_chat_both_ways_leave_and_skip() {
    scenario("pages").await;
}

#[tokio::test]
async fn a_page_and_a_stdio_agent_chat_and_hostile_text_runs_nothing() {
    scenario("agent").await;
}

#[tokio::test]
async fn a_page_on_another_origin_cannot_use_the_chat() {
    scenario("origin").await;
}

#[tokio::test]
async fn the_page_shows_the_connection_lost_and_back() {
    scenario("reconnect").await;
}

#[tokio::test]
async fn with_a_token_the_page_trades_it_for_a_cookie_and_is_refused_without() {
    scenario("token").await;
}

#[tokio::test]
async fn pages_sharing_an_interest_meet_and_see_it_and_bad_interests_are_refused() {
    scenario("interests").await;
}

#[tokio::test]
async fn a_page_meeting_agents_meets_a_stdio_agent_and_not_another_page() {
    scenario_with("meet", IN_LINE).await;
}

#[tokio::test]
async fn a_page_blocks_its_partner_and_the_two_are_not_matched_again() {
    scenario_with("block", IN_LINE).await;
}

/// `mcp-chat web --no-open`, running; its page's address.
async fn web_server(socket: &std::path::Path) -> (tokio::process::Child, String) {
    let mut child = Command::new(bin_path("mcp-chat"))
        .args(["web", "--no-open"])
        .env("MCP_CHAT_SOCKET", socket)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The rest of its stdout goes unread (the pipe closes when this reader
    // is dropped): the server must go on serving all the same.
    let url = printed_address(child.stdout.take().unwrap()).await;
    (child, url)
}

/// curl, as `uid` (via setpriv) or as ourselves; the response head and body.
async fn curl(uid: Option<u32>, args: &[&str]) -> String {
    let mut command = match uid {
        Some(uid) => {
            let mut setpriv = Command::new("setpriv");
            setpriv
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg("/usr/bin/curl");
            setpriv
        }
        None => Command::new("/usr/bin/curl"),
    };
    let output = command
        .args(["--silent", "--show-error", "--include", "--max-time", "15"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = within("curl", output).await.unwrap();
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn another_users_connection_gets_neither_the_page_nor_the_chat() {
    if mcp_chat_proto::socket_path::current_uid() != 0
        || !std::path::Path::new("/usr/bin/curl").exists()
    {
        eprintln!("skipped: needs root (to run curl as another user) and /usr/bin/curl");
        return;
    }
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let (_server, url) = web_server(&socket.path).await;
    let origin = url.trim_end_matches('/');
    let session = format!("{url}api/session");
    let login = ["-X", "POST", "-H", &format!("Origin: {origin}"), &session];

    for args in [&[url.as_str()][..], &login[..]] {
        let response = curl(Some(65534), args).await;
        assert!(response.starts_with("HTTP/1.1 403"), "{args:?}: {response}");
        assert!(response.contains("uid 65534"), "{args:?}: {response}");
    }
    // Our own connections are served.
    assert!(curl(None, &[&url]).await.starts_with("HTTP/1.1 200"));
    assert!(curl(None, &login).await.starts_with("HTTP/1.1 204"));
}

/// Runs `mcp-chat web` (with `MCP_CHAT_TOKEN` when given) with a stand-in
/// `xdg-open`; returns what the opener was given and the printed address.
async fn opened_by_web(socket: &TestSocket, token: Option<&str>) -> (String, String) {
    // A stand-in `xdg-open` that hands its argument to the test through a
    // FIFO: reading it waits for the write, no polling.
    let bin = tempfile::tempdir().unwrap();
    let fifo = bin.path().join("opened");
    let made = Command::new("mkfifo").arg(&fifo).status().await.unwrap();
    assert!(made.success());
    let opener = bin.path().join("xdg-open");
    std::fs::write(
        &opener,
        format!("#!/bin/sh\nprintf '%s\\n' \"$1\" > '{}'\n", fifo.display()),
    )
    .unwrap();
    std::fs::set_permissions(&opener, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut command = Command::new(bin_path("mcp-chat"));
    command
        .arg("web")
        .env("MCP_CHAT_SOCKET", &socket.path)
        .env("PATH", path)
        .env_remove("MCP_CHAT_TOKEN")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(token) = token {
        command.env("MCP_CHAT_TOKEN", token);
    }
    let mut child = command.spawn().unwrap();
    let reader = {
        let fifo = fifo.clone();
        tokio::task::spawn_blocking(move || std::fs::read_to_string(fifo))
    };
    let opened = match tokio::time::timeout(mcp_chat_tests::EVENT_TIMEOUT, reader).await {
        Ok(read) => read.unwrap().unwrap(),
        Err(_) => {
            // Release the blocked reader, so the test ends rather than hangs.
            drop(std::fs::OpenOptions::new().write(true).open(&fifo));
            panic!("mcp-chat web never ran xdg-open");
        }
    };
    let printed = printed_address(child.stdout.as_mut().unwrap()).await;
    (opened.trim_end().to_owned(), printed)
}

/// The page's address, as `mcp-chat web` prints it on `stdout`.
async fn printed_address(stdout: impl tokio::io::AsyncRead + Unpin) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    within("the page's address", async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("mcp-chat web exited");
            if let Some(url) = line.strip_prefix("mcp-chat: the chat page is at ") {
                return url.trim().to_owned();
            }
        }
    })
    .await
}

#[tokio::test]
async fn mcp_chat_web_opens_the_page_with_the_platforms_opener() {
    if !cfg!(target_os = "linux") {
        eprintln!("skipped: the stand-in opener is xdg-open");
        return;
    }
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let (opened, printed) = opened_by_web(&socket, None).await;
    assert!(printed.starts_with("http://127.0.0.1:"), "{printed}");
    assert_eq!(opened, printed, "the opener got the printed address");
}

#[tokio::test]
async fn a_token_never_reaches_the_openers_command_line() {
    if !cfg!(target_os = "linux") {
        eprintln!("skipped: the stand-in opener is xdg-open");
        return;
    }
    let token = "opener-test-token-0123456789abcdef";
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let (opened, printed) = opened_by_web(&socket, Some(token)).await;
    assert!(printed.ends_with(&format!("#token={token}")), "{printed}");
    assert!(!opened.contains(token), "the token in argv: {opened}");
    // A private file that sends the browser on to the printed address.
    let html = std::fs::read_to_string(&opened).unwrap();
    assert!(html.contains(&format!("url={printed}\"")), "{html}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&opened).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}
