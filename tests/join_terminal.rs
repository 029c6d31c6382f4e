//! `mcp-chat join` in a real terminal: tmux runs it in a pane, the test
//! types into it with `send-keys` and reads the screen with `capture-pane`,
//! while a raw protocol client (the testkit) plays the stranger.
//!
//! Every wait polls `capture-pane` until the expected text is on screen (or
//! an event reaches the stranger), bounded by [`EVENT_TIMEOUT`]; nothing
//! waits for a fixed time. `./test.sh` installs tmux.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mcp_chat_proto::{DisconnectReason, Event, Reply};
use mcp_chat_tests::{BrokerProcess, EVENT_TIMEOUT, ProtoClient, TestSocket, bin_path, within};

/// Between two looks at the screen.
const POLL: Duration = Duration::from_millis(20);

/// A tmux server of this test's own, with one pane running `mcp-chat join`.
struct Pane {
    server: String,
    config: tempfile::NamedTempFile,
}

impl Pane {
    fn start(socket: &Path, name: &str) -> Self {
        assert!(
            Command::new("tmux").arg("-V").output().is_ok(),
            "tmux is missing: run ./test.sh, which installs it, or apt-get install tmux"
        );
        let server = format!("mcp-chat-test-{}-{name}", std::process::id());
        // Keep the pane after join exits, so its last words can be read.
        let config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            config.path(),
            "set -g remain-on-exit on\nset -g history-limit 1000\n",
        )
        .unwrap();
        let command = format!(
            "MCP_CHAT_SOCKET='{}' exec '{}' join",
            socket.display(),
            bin_path("mcp-chat").display()
        );
        let pane = Self { server, config };
        pane.tmux(&[
            "-f",
            &pane.config.path().display().to_string(),
            "new-session",
            "-d",
            "-x",
            "100",
            "-y",
            "30",
            "-s",
            "chat",
            &command,
        ]);
        pane
    }

    fn tmux(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .arg("-L")
            .arg(&self.server)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Types `text` without pressing Enter.
    fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "chat", "-l", text]);
    }

    fn press(&self, key: &str) {
        self.tmux(&["send-keys", "-t", "chat", key]);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "chat"])
    }

    /// Looks at the screen until `wanted` holds; returns that screen.
    async fn until(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let polled = async {
            loop {
                let screen = self.screen();
                if wanted(&screen) {
                    return screen;
                }
                tokio::time::sleep(POLL).await;
            }
        };
        match tokio::time::timeout(EVENT_TIMEOUT, polled).await {
            Ok(screen) => screen,
            Err(_) => panic!("the screen never showed {what}:\n{}", self.screen()),
        }
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.server, "kill-server"])
            .output();
    }
}

/// The last line on screen with something on it.
fn last_line(screen: &str) -> &str {
    screen
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

#[tokio::test]
async fn a_message_arriving_while_you_type_leaves_your_line_intact() {
    let socket = TestSocket::new();
    // The stranger answers the broker's pings only while the test reads it,
    // which it does only once the pane shows the match; a waiter quiet for
    // a fifth of a heartbeat is pinged before it is matched, so with the
    // default (2 s) a slow start of the pane would stall the match. A long
    // heartbeat keeps the stranger fresh.
    let _broker = BrokerProcess::start(&socket.path, &["--heartbeat-ms", "600000"]).await;
    let mut stranger = ProtoClient::connect(&socket.path).await;
    assert!(matches!(stranger.enter().await, Reply::Waiting { .. }));

    let pane = Pane::start(&socket.path, "intact");
    pane.until("the match", |s| s.contains("matched with a stranger"))
        .await;
    let Event::ChatroomFound { room_id, .. } = within("the match", stranger.next_event()).await
    else {
        panic!("expected chatroom.found");
    };

    // Half a line typed, then the stranger speaks.
    pane.type_text("half-typed line of mine");
    pane.until("the half-typed line", |s| {
        last_line(s) == "> half-typed line of mine"
    })
    .await;
    assert_eq!(
        stranger.say(room_id, "interrupting message from C").await,
        Reply::Sent
    );
    let screen = pane
        .until("the stranger's message", |s| {
            s.contains("stranger: interrupting message from C")
        })
        .await;
    let message = screen
        .lines()
        .find(|l| l.contains("stranger: interrupting message from C"))
        .unwrap();
    assert!(
        message.ends_with("] stranger: interrupting message from C"),
        "the message line was garbled:\n{screen}"
    );
    assert_eq!(
        last_line(&screen),
        "> half-typed line of mine",
        "the typed line was garbled:\n{screen}"
    );

    // Finishing the line sends it whole; it is shown like the stranger's.
    pane.type_text(", finished");
    pane.press("Enter");
    let Event::MessageReceived { message, .. } = within("my line", stranger.next_event()).await
    else {
        panic!("expected message.received");
    };
    assert_eq!(message, "half-typed line of mine, finished");
    let screen = pane
        .until("my sent line", |s| {
            s.contains("] you: half-typed line of mine, finished")
        })
        .await;
    assert!(
        !screen.contains("> half-typed"),
        "the typed line stays on screen besides the transcript line:\n{screen}"
    );

    // The up arrow brings my line back; /quit leaves, and the stranger is told.
    pane.press("Up");
    pane.until("the line from history", |s| {
        last_line(s) == "> half-typed line of mine, finished"
    })
    .await;
    pane.press("C-u");
    pane.until("an empty prompt", |s| last_line(s).trim_end() == ">")
        .await;
    pane.type_text("/quit");
    pane.press("Enter");
    let Event::PartnerDisconnected { reason, .. } =
        within("my leaving", stranger.next_event()).await
    else {
        panic!("expected partner.disconnected");
    };
    assert_eq!(reason, DisconnectReason::Left);
    let screen = pane.until("bye", |s| s.contains("] bye")).await;
    eprintln!("{screen}");
}
