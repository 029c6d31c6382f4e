//! The human subcommands: `join`, `status`, `doctor`, driven through pipes.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::path::Path;
use std::process::{Output, Stdio};

use mcp_chat_tests::{BrokerProcess, TestSocket, bin_path, within};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// `mcp-chat join` with its stdin and stdout in the test's hands.
struct Joiner {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    name: &'static str,
}

impl Joiner {
    fn spawn(socket: &Path, name: &'static str) -> Self {
        Self::spawn_with(socket, name, &[])
    }

    /// `mcp-chat join ARGS`.
    fn spawn_with(socket: &Path, name: &'static str, args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(bin_path("mcp-chat"))
            .arg("join")
            .args(args)
            .env("MCP_CHAT_SOCKET", socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            stdout,
            name,
        }
    }

    /// Reads lines until one contains `needle`; returns it.
    async fn expect(&mut self, needle: &str) -> String {
        let name = self.name;
        within(&format!("{name} to print {needle:?}"), async {
            loop {
                let line = self.stdout.next_line().await.unwrap();
                let line = line.unwrap_or_else(|| panic!("{name} exited before {needle:?}"));
                eprintln!("[{name}] {line:?}");
                if line.contains(needle) {
                    return line;
                }
            }
        })
        .await
    }

    async fn type_line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
    }

    async fn exits_cleanly(mut self) {
        let status = within("join to exit", self.child.wait()).await.unwrap();
        assert!(status.success(), "{} exited with {status}", self.name);
    }
}

#[tokio::test]
async fn two_people_chat_through_join_and_next_finds_a_third() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let mut ann = Joiner::spawn(&socket.path, "ann");
    ann.expect("waiting for a partner (position 1").await;
    let mut bob = Joiner::spawn(&socket.path, "bob");
    bob.expect("matched with a stranger").await;
    ann.expect("matched with a stranger").await;

    ann.type_line("hello bob").await;
    bob.expect("stranger: hello bob").await;
    // A hostile partner tries to clear the screen, retitle the terminal and
    // forge a line from us.
    // And hides words in Unicode tag characters, invisible on screen.
    bob.type_line("\u{1b}[2J\u{1b}]0;pwned\u{7}\u{9b}31m hi\u{202e}\u{e0041}\u{200b}")
        .await;
    let line = ann.expect("stranger: ").await;
    assert!(
        !line
            .chars()
            .any(|c| c.is_control() || matches!(c, '\u{202e}' | '\u{e0041}' | '\u{200b}')),
        "raw control characters reached the terminal: {line:?}"
    );
    assert!(
        line.contains(r"\x1b[2J\x1b]0;pwned\x07\x9b31m hi\u{202e}\u{e0041}\u{200b}"),
        "{line:?}"
    );

    ann.type_line("/next").await;
    bob.expect("the stranger is gone (left)").await;
    ann.expect("waiting for a partner").await;
    let mut cat = Joiner::spawn(&socket.path, "cat");
    cat.expect("matched with a stranger").await;
    ann.expect("matched with a stranger").await;
    cat.type_line("hi ann, cat here").await;
    ann.expect("stranger: hi ann, cat here").await;

    ann.type_line("/quit").await;
    cat.expect("the stranger is gone (left)").await;
    ann.exits_cleanly().await;
    // End of input leaves just as cleanly.
    bob.stdin.take();
    bob.expect("bye").await;
    bob.exits_cleanly().await;
    cat.stdin.take();
    cat.exits_cleanly().await;
}

#[tokio::test]
async fn join_says_when_a_message_cannot_be_sent() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let mut ann = Joiner::spawn(&socket.path, "ann");
    ann.expect("waiting for a partner").await;
    ann.type_line("anyone?").await;
    ann.expect("your message was not sent").await;
    let mut bob = Joiner::spawn(&socket.path, "bob");
    bob.expect("matched").await;
    bob.type_line(&"x".repeat(16 * 1024 + 1)).await;
    bob.expect("not sent (message_too_long)").await;
    ann.type_line("/frobnicate").await;
    ann.expect("unknown command").await;
}

#[tokio::test]
async fn join_with_interests_and_block() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let home = tempfile::tempdir().unwrap();
    let refused = mcp_chat(
        &socket.path,
        &["join", "--interests", "chess,c++"],
        home.path(),
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("'+'"),
        "{}",
        text(&refused.stderr)
    );

    let mut ann = Joiner::spawn_with(
        &socket.path,
        "ann",
        &["--interests", "Chess,go", "--meet", "people"],
    );
    ann.expect("waiting for a partner (position 1").await;
    let mut bob = Joiner::spawn_with(
        &socket.path,
        "bob",
        &["--interests", "GO", "--interest-wait", "0"],
    );
    let line = bob.expect("matched with a stranger").await;
    assert!(
        line.contains("a person") && line.contains("you share: go"),
        "{line}"
    );
    ann.expect("you share: go").await;

    bob.type_line("/block").await;
    bob.expect("blocked").await;
    ann.expect("the stranger is gone (left)").await;
    ann.type_line("/next").await;
    ann.expect("waiting for a partner (position 1").await;
    bob.type_line("/next").await;
    bob.expect("waiting for a partner (position 2").await;
    let status = mcp_chat(&socket.path, &["status"], home.path()).await;
    let out = text(&status.stdout);
    assert!(
        out.contains("2 waiting") && out.contains("waiting by interest: go 2, chess 1"),
        "{out}"
    );
    // A third person shares nothing with ann (who still holds out for
    // chess or go) and meets bob, whose wait is 0.
    let mut cat = Joiner::spawn(&socket.path, "cat");
    cat.expect("matched with a stranger").await;
    bob.expect("matched with a stranger").await;
    cat.type_line("/block").await;
    cat.expect("blocked").await;
    cat.type_line("/block").await;
    cat.expect("/block works while chatting").await;
}

async fn mcp_chat(socket: &Path, args: &[&str], home: &Path) -> Output {
    let run = tokio::process::Command::new(bin_path("mcp-chat"))
        .args(args)
        .env("MCP_CHAT_SOCKET", socket)
        .env("MCP_CHAT_BROKER", bin_path("mcp-chat-broker"))
        // Never read or write the real user's client configs.
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .output();
    within(&format!("mcp-chat {args:?}"), run).await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn status_with_and_without_a_broker() {
    let socket = TestSocket::new();
    let home = tempfile::tempdir().unwrap();
    let none = mcp_chat(&socket.path, &["status"], home.path()).await;
    assert!(!none.status.success());
    assert!(
        text(&none.stderr).contains(&format!("no broker running at {}", socket.path.display())),
        "{}",
        text(&none.stderr)
    );
    assert!(!socket.path.exists(), "status never starts a broker");

    let broker = BrokerProcess::start(&socket.path, &[]).await;
    let pid = broker.child.id().unwrap();
    let human = mcp_chat(&socket.path, &["status"], home.path()).await;
    assert!(human.status.success(), "{}", text(&human.stderr));
    let out = text(&human.stdout);
    assert!(
        out.contains(&format!("pid {pid}")) && out.contains("0 online"),
        "{out}"
    );
    // The status query that just exited is gone once the broker has read
    // its connection's end, which nothing orders before the next query.
    let report = within("the previous status session to be gone", async {
        loop {
            let json = mcp_chat(&socket.path, &["status", "--json"], home.path()).await;
            let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
            if report["sessions"] == 0 {
                return report;
            }
        }
    })
    .await;
    assert_eq!(report["broker_pid"], pid);
    assert_eq!(report["broker_version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn doctor_passes_on_a_healthy_setup() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let home = tempfile::tempdir().unwrap();
    let out = mcp_chat(&socket.path, &["doctor"], home.path()).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for check in [
        "ok    binaries",
        "ok    socket directory",
        "ok    broker",
        "ok    round trip",
    ] {
        assert!(stdout.contains(check), "missing {check:?} in\n{stdout}");
    }
    assert!(stdout.contains("all checks passed"));
}

#[cfg(unix)]
#[tokio::test]
async fn doctor_fails_on_an_open_socket_directory() {
    use std::os::unix::fs::PermissionsExt;
    let socket = TestSocket::new();
    let dir = socket.path.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = mcp_chat(&socket.path, &["doctor"], home.path()).await;
    let stdout = text(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("FAIL  socket directory"), "{stdout}");
    assert!(
        stdout.contains(&format!("chmod 700 {}", dir.display())),
        "{stdout}"
    );
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "doctor reports, it does not chmod");
}

#[tokio::test]
async fn versions_and_help_are_there() {
    for (binary, needle) in [("mcp-chat", "join"), ("mcp-chat-broker", "--foreground")] {
        let version = std::process::Command::new(bin_path(binary))
            .arg("--version")
            .output()
            .unwrap();
        assert!(version.status.success());
        assert_eq!(
            text(&version.stdout).trim(),
            format!("{binary} {}", env!("CARGO_PKG_VERSION"))
        );
        let help = std::process::Command::new(bin_path(binary))
            .arg("--help")
            .output()
            .unwrap();
        assert!(text(&help.stdout).contains(needle));
    }
}
