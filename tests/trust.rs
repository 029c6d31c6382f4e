//! Only your own broker is trusted. A socket directory another user made
//! first, or a socket some other user's process listens on, gets not one
//! byte from any client: `status`, `join`, `doctor`, the stdio server and
//! `serve --http` each refuse before writing, and say why.
//!
//! The hostile side is a relay run as `nobody` (root is needed to set that
//! up; elsewhere the tests say "skipped"). It reports each connection it
//! accepts with the number of bytes it received.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use mcp_chat_tests::{McpClient, TestSocket, bin_path, within};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

const NOBODY: u32 = 65534;

/// Listens on the socket as `nobody`, socket mode 0777, and prints
/// `conn N` for each connection once it closes, N the bytes it sent.
const RELAY: &str = r#"
import os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
os.chmod(path, 0o777)
s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept()
    n = 0
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        n += len(chunk)
    print(f"conn {n}", flush=True)
    c.close()
"#;

struct Relay {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    socket: PathBuf,
}

impl Relay {
    async fn start(socket: &Path) -> Self {
        let mut child = tokio::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            // The system Python: a user-level one (pyenv) may be out of
            // nobody's reach.
            .args(["/usr/bin/python3", "-c", RELAY])
            .arg(socket)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = within("the relay to listen", lines.next_line())
            .await
            .unwrap();
        assert_eq!(ready.as_deref(), Some("ready"));
        Self {
            _child: child,
            lines,
            socket: socket.to_owned(),
        }
    }

    async fn next_connection(&mut self) -> String {
        within("the relay's report", self.lines.next_line())
            .await
            .unwrap()
            .expect("relay alive")
    }

    /// Everything the relay reported before a marker connection of ours:
    /// the clients have exited, so any connection they made has closed and
    /// been reported already.
    async fn connections_so_far(&mut self) -> Vec<String> {
        let mut marker = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        std::io::Write::write_all(&mut marker, b"MARK").unwrap();
        drop(marker);
        let mut seen = Vec::new();
        loop {
            let line = self.next_connection().await;
            if line == "conn 4" {
                return seen;
            }
            seen.push(line);
        }
    }
}

fn is_root() -> bool {
    if mcp_chat_proto::socket_path::current_uid() == 0 {
        return true;
    }
    eprintln!("skipped: needs root to run a listener as another user");
    false
}

/// `mcp-chat ARGS` against `socket`, stdin closed: its status and stderr.
async fn run(socket: &Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = tokio::process::Command::new(bin_path("mcp-chat"))
        .args(args)
        .env("MCP_CHAT_SOCKET", socket)
        .env("MCP_CHAT_BROKER", bin_path("mcp-chat-broker"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // join reads stdin: end it at once, as a script would.
    child.stdin.take().unwrap().shutdown().await.unwrap();
    let output = within("mcp-chat to exit", child.wait_with_output())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status, text)
}

/// `mcp-chat serve --http` on `socket`: a session is opened over HTTP and
/// calls `enter_queue`; returns what that call answered, as raw HTTP.
async fn enter_queue_over_http(socket: &Path) -> String {
    let mut server = tokio::process::Command::new(bin_path("mcp-chat"))
        .args(["serve", "--http", "127.0.0.1:0"])
        .env("MCP_CHAT_SOCKET", socket)
        .env("MCP_CHAT_BROKER", bin_path("mcp-chat-broker"))
        .env_remove("MCP_CHAT_TOKEN")
        .env_remove("MCP_CHAT_HTTP_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let addr = within("the HTTP server's address", async {
        loop {
            let line = lines.next_line().await.unwrap().expect("serve exited");
            if let Some(url) = line.strip_prefix("mcp-chat: serving MCP over HTTP at http://") {
                return url.trim().trim_end_matches("/mcp").to_owned();
            }
        }
    })
    .await;
    let initialize = json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "trust-test", "version": "0"},
        },
    });
    let opened = post(&addr, None, &initialize).await;
    assert!(opened.starts_with("HTTP/1.1 200"), "{opened}");
    let session = opened
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("mcp-session-id")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no session id: {opened}"));
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    post(&addr, Some(&session), &initialized).await;
    let call = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "enter_queue", "arguments": {}},
    });
    post(&addr, Some(&session), &call).await
}

/// One POST to `/mcp` on a connection of its own, read to its end.
async fn post(addr: &str, session: Option<&str>, message: &serde_json::Value) -> String {
    let body = message.to_string();
    let session = session
        .map(|id| format!("mcp-session-id: {id}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-protocol-version: 2025-11-25\r\n{session}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    within("an HTTP response", async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8_lossy(&response).into_owned()
    })
    .await
}

/// The test socket's parent made traversable, and its own directory made
/// by `nobody`, open to all, the way a squatter would leave it.
fn squatted_dir(socket: &TestSocket) -> PathBuf {
    std::fs::set_permissions(socket.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = socket.path.parent().unwrap().to_owned();
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test]
async fn a_directory_another_user_made_first_gets_not_one_byte() {
    if !is_root() {
        return;
    }
    let socket = TestSocket::new();
    let dir = squatted_dir(&socket);
    let mut relay = Relay::start(&socket.path).await;

    for args in [&["status"][..], &["join"], &["doctor"]] {
        let (status, text) = run(&socket.path, args).await;
        assert!(!status.success(), "mcp-chat {args:?} succeeded: {text}");
        assert!(
            text.contains(&dir.display().to_string()) && text.contains("uid 65534"),
            "mcp-chat {args:?} names the directory and its owner: {text}"
        );
    }
    let (_, doctor) = run(&socket.path, &["doctor"]).await;
    assert!(
        doctor.contains("MCP_CHAT_SOCKET"),
        "doctor says how to fix it: {doctor}"
    );

    let agent = McpClient::spawn(&socket.path).await;
    let failure = agent.fails("enter_queue", json!({})).await;
    assert_eq!(failure["error"], "broker_unreachable");
    assert!(
        failure["message"].as_str().unwrap().contains("uid 65534"),
        "{failure}"
    );
    drop(agent);

    let answer = enter_queue_over_http(&socket.path).await;
    assert!(
        answer.contains("broker_unreachable") && answer.contains("uid 65534"),
        "serve --http names the directory's owner: {answer}"
    );

    assert_eq!(relay.connections_so_far().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_listener_run_by_another_user_gets_not_one_byte() {
    if !is_root() {
        return;
    }
    let socket = TestSocket::new();
    let dir = squatted_dir(&socket);
    let mut relay = Relay::start(&socket.path).await;
    // Now the directory looks like ours: only the listener's uid tells.
    std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    for args in [&["status"][..], &["join"], &["doctor"]] {
        let (status, text) = run(&socket.path, args).await;
        assert!(!status.success(), "mcp-chat {args:?} succeeded: {text}");
        assert!(
            text.contains("runs as uid 65534"),
            "mcp-chat {args:?} says whose listener it is: {text}"
        );
        assert_eq!(relay.next_connection().await, "conn 0", "{args:?}");
    }
    let agent = McpClient::spawn(&socket.path).await;
    let failure = agent.fails("enter_queue", json!({})).await;
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("runs as uid 65534"),
        "{failure}"
    );
    assert_eq!(relay.next_connection().await, "conn 0");

    let answer = enter_queue_over_http(&socket.path).await;
    assert!(
        answer.contains("runs as uid 65534"),
        "serve --http says whose listener it is: {answer}"
    );
    assert_eq!(relay.next_connection().await, "conn 0");
}
