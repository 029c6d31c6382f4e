//! What an auto-started broker inherits and leaves on disk: only an
//! allow-listed environment, `/` as its working directory, a binary never
//! found through an empty or relative `PATH` entry, and a private log.
//! Linux only: it reads the broker's `/proc/<pid>/{environ,cwd,exe}`.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use mcp_chat_tests::{AutoStartedBroker, ProtoClient, TestSocket, bin_path, within};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `mcp-chat join` (which starts a broker if none runs) and waits
/// until it is in the queue: by then the broker has answered it.
async fn join_until_waiting(mut command: Command) -> Child {
    let mut child = command
        .arg("join")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    within("join to be waiting", async {
        loop {
            let line = lines.next_line().await.unwrap();
            let line = line.expect("join exited before it was waiting");
            eprintln!("[join] {line}");
            if line.contains("waiting for a partner") {
                break;
            }
        }
    })
    .await;
    child
}

/// Where a broker on a socket named through `MCP_CHAT_SOCKET` logs: beside
/// it, `<stem>.log` (the rule lives in the broker; tests see binaries only).
fn log_beside(socket: &Path) -> PathBuf {
    socket.with_file_name("broker.log")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A stand-in `mcp-chat-broker` that records that it ran, then fails.
fn impostor(dir: &Path, marker: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let script = dir.join("mcp-chat-broker");
    // Written by a child process, so no test thread holds it open for
    // writing while another forks (ETXTBSY).
    let body = format!("#!/bin/sh\ntouch '{}'\nexit 1\n", marker.display());
    let status = std::process::Command::new("sh")
        .args(["-c", "printf '%s' \"$1\" > \"$2\" && chmod 755 \"$2\""])
        .args(["sh", &body])
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success());
}

fn environ(pid: u32) -> BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (name, value) = entry.split_once('=').unwrap_or((&entry, ""));
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

fn allowed(name: &str) -> bool {
    matches!(
        name,
        "PATH" | "HOME" | "TMPDIR" | "LANG" | "TZ" | "RUST_LOG"
    ) || name.starts_with("XDG_")
        || name.starts_with("LC_")
        || (name.starts_with("MCP_CHAT_")
            && !matches!(name, "MCP_CHAT_TOKEN" | "MCP_CHAT_HTTP_TOKEN"))
}

#[tokio::test]
async fn an_auto_started_broker_gets_an_allow_listed_environment_and_root_as_cwd() {
    let socket = TestSocket::new();
    let dir = tempfile::tempdir().unwrap();
    // mcp-chat without a broker beside it, so the broker is looked up on PATH.
    let shim = dir.path().join("shim/mcp-chat");
    std::fs::create_dir_all(shim.parent().unwrap()).unwrap();
    if std::fs::hard_link(bin_path("mcp-chat"), &shim).is_err() {
        std::fs::copy(bin_path("mcp-chat"), &shim).unwrap();
    }
    // The real broker, in an absolute PATH directory.
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(bin_path("mcp-chat-broker"), real.join("mcp-chat-broker")).unwrap();
    // The client's project directory, with impostors where an empty ("")
    // and a relative ("rel") PATH entry would find them.
    let project = dir.path().join("project");
    let marker = dir.path().join("impostor-ran");
    impostor(&project, &marker);
    impostor(&project.join("rel"), &marker);
    let path = format!(":rel:{}:/usr/bin:/bin", real.display());

    let mut command = Command::new(&shim);
    command
        .current_dir(&project)
        .env("PATH", &path)
        .env("MCP_CHAT_SOCKET", &socket.path)
        .env("MCP_CHAT_LOG", "info")
        .env("SECRET_TOKEN", "x")
        .env("MCP_CHAT_HTTP_TOKEN", "also-secret")
        .env("MCP_CHAT_TOKEN", "secret-too")
        .env("LC_TIME", "C")
        .env_remove("MCP_CHAT_BROKER");
    let mut join = join_until_waiting(command).await;
    let broker = AutoStartedBroker::find(&socket.path).expect("a broker wrote its lock");

    assert!(
        !marker.exists(),
        "a broker was run from the project directory"
    );
    let exe = std::fs::read_link(format!("/proc/{}/exe", broker.pid)).unwrap();
    assert_eq!(
        exe,
        std::fs::canonicalize(bin_path("mcp-chat-broker")).unwrap()
    );
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", broker.pid)).unwrap();
    assert_eq!(cwd, PathBuf::from("/"));

    let env = environ(broker.pid);
    let leaked: Vec<_> = env.keys().filter(|name| !allowed(name)).collect();
    assert!(leaked.is_empty(), "not on the allow-list: {leaked:?}");
    assert_eq!(env.get("PATH"), Some(&path));
    assert_eq!(
        env.get("MCP_CHAT_SOCKET").map(PathBuf::from),
        Some(socket.path.clone())
    );
    assert_eq!(env.get("LC_TIME").map(String::as_str), Some("C"));
    assert!(!env.contains_key("SECRET_TOKEN"));
    assert!(!env.contains_key("MCP_CHAT_HTTP_TOKEN"));
    assert!(!env.contains_key("MCP_CHAT_TOKEN"));

    join.stdin.take();
    within("join to exit", join.wait()).await.unwrap();
}

#[tokio::test]
async fn an_auto_started_broker_logs_privately_in_the_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    let state = dir.path().join("state");
    let mut command = Command::new(bin_path("mcp-chat"));
    // The default socket, so the log goes to the state directory.
    command
        .env_remove("MCP_CHAT_SOCKET")
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("XDG_STATE_HOME", &state)
        .env("HOME", dir.path().join("home"))
        .env("MCP_CHAT_BROKER", bin_path("mcp-chat-broker"));
    let mut join = join_until_waiting(command).await;
    let socket = runtime.join("mcp-chat/broker.sock");
    let _broker = AutoStartedBroker::find(&socket).expect("a broker wrote its lock");

    let log_dir = state.join("mcp-chat");
    let log = log_dir.join("broker.log");
    assert!(log.exists(), "the broker logs to {}", log.display());
    let status = ProtoClient::connect(&socket).await.status().await;
    assert_eq!(status.log_path, Some(log.display().to_string()));
    assert_eq!(mode(&log_dir), 0o700);
    assert_eq!(mode(&log), 0o600);

    join.stdin.take();
    within("join to exit", join.wait()).await.unwrap();
}

#[tokio::test]
async fn a_log_left_readable_beside_the_socket_is_made_private() {
    let socket = TestSocket::new();
    mcp_chat_proto::socket_path::prepare_socket_dir(&socket.path).unwrap();
    // As an older broker left it, under the usual umask.
    let log = log_beside(&socket.path);
    std::fs::write(&log, "an older broker's line\n").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut command = Command::new(bin_path("mcp-chat"));
    command
        .env("MCP_CHAT_SOCKET", &socket.path)
        .env("MCP_CHAT_BROKER", bin_path("mcp-chat-broker"));
    let mut join = join_until_waiting(command).await;
    let _broker = AutoStartedBroker::find(&socket.path).expect("a broker wrote its lock");

    assert_eq!(mode(&log), 0o600);
    assert_eq!(mode(log.parent().unwrap()), 0o700);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with("an older broker's line\n"),
        "appended to, not replaced"
    );

    join.stdin.take();
    within("join to exit", join.wait()).await.unwrap();
}

#[tokio::test]
async fn the_log_is_rotated_past_its_cap() {
    let socket = TestSocket::new();
    let mut command = Command::new(bin_path("mcp-chat"));
    // A one-byte cap: every line starts a new file. By the time the broker
    // has welcomed join it has logged at least two lines ("listening", and
    // at debug the session start), so it has rotated at least once.
    command
        .env("MCP_CHAT_SOCKET", &socket.path)
        .env("MCP_CHAT_BROKER", bin_path("mcp-chat-broker"))
        .env("MCP_CHAT_LOG", "debug")
        .env("MCP_CHAT_LOG_MAX_BYTES", "1");
    let mut join = join_until_waiting(command).await;
    let _broker = AutoStartedBroker::find(&socket.path).expect("a broker wrote its lock");

    let log = log_beside(&socket.path);
    // The broker reports the file it writes, and doctor shows it.
    let status = ProtoClient::connect(&socket.path).await.status().await;
    assert_eq!(status.log_path, Some(log.display().to_string()));
    let home = tempfile::tempdir().unwrap();
    let doctor = Command::new(bin_path("mcp-chat"))
        .arg("doctor")
        .env("MCP_CHAT_SOCKET", &socket.path)
        .env("MCP_CHAT_BROKER", bin_path("mcp-chat-broker"))
        .env("HOME", home.path())
        .output();
    let doctor = within("mcp-chat doctor", doctor).await.unwrap();
    let stdout = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        stdout.contains(&format!("ok    broker log: {}", log.display())),
        "{stdout}"
    );
    let mut rotated = log.clone().into_os_string();
    rotated.push(".1");
    let rotated = PathBuf::from(rotated);
    // Replaced by rename and cut only between lines: whole lines only.
    let text = std::fs::read_to_string(&rotated).unwrap();
    assert!(!text.is_empty() && text.ends_with('\n'), "{text:?}");
    assert_eq!(mode(&rotated), 0o600);
    let mut second = rotated.into_os_string();
    second.push(".1");
    assert!(!PathBuf::from(second).exists(), "one rotation only");

    join.stdin.take();
    within("join to exit", join.wait()).await.unwrap();
}
