//! `mcp-chat doctor`: checks everything between an MCP client and a working
//! chat, each printed as ok or FAIL with the fix. Exits non-zero on a FAIL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mcp_chat_proto::socket_path::{broker_lock_path, prepare_socket_dir};
use mcp_chat_proto::{PROTOCOL_VERSION, RoomId, SocketDirError};

use super::register::registered_clients;
use crate::autostart::{StartError, connect_or_start, find_broker};
use crate::broker_client::ConnectError;
use crate::events::EventKind;
use crate::session::{CallError, ChatSession, Entered};

/// How long the round trip may take before it counts as failed.
const ROUND_TRIP_DEADLINE: Duration = Duration::from_secs(10);

struct Report {
    failures: usize,
}

impl Report {
    fn ok(&self, what: &str, detail: impl std::fmt::Display) {
        println!("ok    {what}: {detail}"); // stdout-ok
    }

    fn fail(&mut self, what: &str, problem: impl std::fmt::Display, fix: impl std::fmt::Display) {
        self.failures += 1;
        println!("FAIL  {what}: {problem}\n      fix: {fix}"); // stdout-ok
    }

    fn note(&self, what: &str, detail: impl std::fmt::Display) {
        println!("note  {what}: {detail}"); // stdout-ok
    }
}

pub async fn run(socket: &Path) -> anyhow::Result<()> {
    let mut report = Report { failures: 0 };
    check_binaries(&mut report).await;
    let dir_ok = check_socket_dir(&mut report, socket);
    if dir_ok && check_broker(&mut report, socket).await {
        show_log(&report, socket).await;
        show_federation(&mut report, socket).await;
        check_round_trip(&mut report, socket).await;
    }
    check_registrations(&mut report);
    if report.failures > 0 {
        anyhow::bail!("{} check(s) failed", report.failures);
    }
    println!("all checks passed"); // stdout-ok
    Ok(())
}

async fn check_binaries(report: &mut Report) {
    let shim = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("mcp-chat"));
    // The same absolute path auto-start would run, never a PATH lookup
    // through the current directory.
    let broker = match find_broker() {
        Ok(broker) => broker,
        Err(e) => {
            report.fail(
                "binaries",
                e,
                "install mcp-chat-broker next to mcp-chat or on PATH (./install.sh), or set MCP_CHAT_BROKER",
            );
            return;
        }
    };
    let output = tokio::process::Command::new(&broker)
        .arg("--version")
        .output()
        .await;
    match output {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let version = text.split_whitespace().nth(1).unwrap_or("?").to_owned();
            if version == crate::VERSION {
                report.ok(
                    "binaries",
                    format!("mcp-chat {} at {}, mcp-chat-broker {version} at {}", crate::VERSION, shim.display(), broker.display()),
                );
            } else {
                report.fail(
                    "binaries",
                    format!("mcp-chat is {} but {} is {version}", crate::VERSION, broker.display()),
                    "reinstall both from one checkout: ./install.sh",
                );
            }
        }
        Ok(out) => report.fail(
            "binaries",
            format!("{} --version failed: {}", broker.display(), String::from_utf8_lossy(&out.stderr).trim()),
            "reinstall: ./install.sh",
        ),
        Err(e) => report.fail(
            "binaries",
            format!("cannot run the broker {}: {e}", broker.display()),
            "install mcp-chat-broker next to mcp-chat or on PATH (./install.sh), or set MCP_CHAT_BROKER",
        ),
    }
}

fn check_socket_dir(report: &mut Report, socket: &Path) -> bool {
    match prepare_socket_dir(socket) {
        Ok(dir) => {
            report.ok(
                "socket directory",
                format!("{} is yours, mode 700", dir.display()),
            );
            true
        }
        Err(e) => {
            report.fail("socket directory", &e, dir_fix(&e));
            false
        }
    }
}

/// What to do about an unsafe socket directory, in words for the person
/// reading doctor's output.
fn dir_fix(error: &SocketDirError) -> String {
    let elsewhere = "or point MCP_CHAT_SOCKET at a path in a directory only you own, e.g. `export MCP_CHAT_SOCKET=\"$HOME/.mcp-chat/broker.sock\"` (mcp-chat creates it 0700)";
    match error {
        SocketDirError::WrongOwner { path, owner, .. } => format!(
            "uid {owner} created {} before you, so a broker there would not be yours and mcp-chat will not use it; ask its owner or an admin to remove it, {elsewhere}",
            path.display()
        ),
        SocketDirError::TooOpen { path, .. } => {
            format!("run `chmod 700 {}`, {elsewhere}", path.display())
        }
        SocketDirError::Symlink { path } => {
            format!("remove the link {}, {elsewhere}", path.display())
        }
        _ => format!("fix it as the message says, {elsewhere}"),
    }
}

async fn check_broker(report: &mut Report, socket: &Path) -> bool {
    match connect_or_start(socket, "mcp-chat doctor", None).await {
        Ok((_transport, welcome)) => {
            let pid = std::fs::read_to_string(broker_lock_path(socket)).unwrap_or_default();
            let detail = format!(
                "pid {} on {}, broker {}, protocol {PROTOCOL_VERSION}",
                pid.trim(),
                socket.display(),
                welcome.broker_version
            );
            if welcome.broker_version == crate::VERSION {
                report.ok("broker", detail);
            } else {
                report.fail(
                    "broker",
                    format!(
                        "{detail}: an older or newer broker than this mcp-chat ({})",
                        crate::VERSION
                    ),
                    format!(
                        "stop it (kill {}) so the next call starts the matching one",
                        pid.trim()
                    ),
                );
            }
            true
        }
        Err(StartError::Connect(e @ ConnectError::WrongListener { .. })) => {
            report.fail(
                "broker",
                &e,
                "another user's process holds your broker's socket: stop it (or have an admin remove it), or set MCP_CHAT_SOCKET to a path in a directory only you own",
            );
            false
        }
        Err(e) => {
            report.fail(
                "broker",
                &e,
                "run `mcp-chat-broker --foreground -v` in a terminal to see why it does not start",
            );
            false
        }
    }
}

/// Where the running broker logs, as it reports it: the rule is the
/// broker's, so doctor asks rather than guesses. Informational only.
async fn show_log(report: &Report, socket: &Path) {
    match super::status::query(socket).await {
        Ok(info) => match info.log_path {
            Some(path) => report.ok("broker log", path),
            None => report.note(
                "broker log",
                "the broker writes its log to the terminal it was started in (--foreground), or is too old to say where",
            ),
        },
        Err(e) => report.note("broker log", format!("could not ask the broker: {e}")),
    }
}

/// The link to a realm of brokers, if configured: a link that is down is a
/// failure (local chat works, strangers elsewhere are out of reach).
async fn show_federation(report: &mut Report, socket: &Path) {
    let Ok(info) = super::status::query(socket).await else {
        return;
    };
    if let Some(note) = info
        .federation
        .as_ref()
        .and_then(|f| f.realm_key_note.as_ref())
    {
        report.note("realm key", note);
    }
    match info.federation {
        None => report.note(
            "federation",
            "off: this broker matches sessions of this machine only (see README, \"Beyond one machine\")",
        ),
        Some(f) if f.connected => report.ok(
            "federation",
            format!(
                "realm {} on {}, {} waiting in the realm, {} rooms across machines, {} inbound messages rejected",
                f.realm, f.server, f.waiting_in_realm, f.remote_rooms, f.rejected
            ),
        ),
        Some(f) => report.fail(
            "federation",
            format!(
                "realm {} on {} is not reachable{}",
                f.realm,
                f.server,
                f.last_error.map(|e| format!(" (last error: {e})")).unwrap_or_default()
            ),
            "check that the NATS server runs with JetStream (nats-server -js) and the [federation] settings in config.toml",
        ),
    }
}

/// Two temporary sessions matched with each other and a message relayed.
async fn check_round_trip(report: &mut Report, socket: &Path) {
    match tokio::time::timeout(ROUND_TRIP_DEADLINE, round_trip(socket)).await {
        Ok(Ok(RoundTrip::Done(elapsed))) => {
            report.ok("round trip", format!("two test sessions matched and relayed a message in {elapsed:?}"));
        }
        Ok(Ok(RoundTrip::Skipped(waiting))) => report.note(
            "round trip",
            format!("skipped: {waiting} session(s) are waiting for a partner, and a test session would be matched with them"),
        ),
        Ok(Err(problem)) => report.fail("round trip", problem, "see the broker log, or run `mcp-chat-broker --foreground -v`"),
        Err(_) => report.fail(
            "round trip",
            format!("no answer within {ROUND_TRIP_DEADLINE:?}"),
            "see the broker log, or run `mcp-chat-broker --foreground -v`",
        ),
    }
}

enum RoundTrip {
    Done(Duration),
    Skipped(usize),
}

async fn round_trip(socket: &Path) -> Result<RoundTrip, String> {
    let started = std::time::Instant::now();
    let a = ChatSession::new(socket.to_owned(), "mcp-chat doctor", None);
    let b = ChatSession::new(socket.to_owned(), "mcp-chat doctor", None);
    let waiting = a
        .status()
        .await
        .map_err(failed)?
        .broker
        // With federation, the test sessions would meet the realm's waiters.
        .map_or(0, |info| {
            info.waiting + info.federation.map_or(0, |f| f.waiting_in_realm)
        });
    if waiting > 0 {
        return Ok(RoundTrip::Skipped(waiting));
    }
    if let Entered::Matched { room } = a.enter_queue(Duration::ZERO).await.map_err(failed)? {
        // Someone entered after the check above: do not chat with them.
        let _ = a.leave(room).await;
        return Err("a real user entered the queue during the check; run doctor again".into());
    }
    // Each wait is for the one event it needs, whatever else arrives first
    // (b's own chatroom.found, say, is still pending when the probe is sent).
    let deadline = tokio::time::Instant::now() + ROUND_TRIP_DEADLINE;
    let room = match b.enter_queue(Duration::ZERO).await.map_err(failed)? {
        Entered::Matched { room } => room.to_string(),
        // On a busy machine the broker may ping a before matching it (it
        // never matches a waiter it has not heard from lately): the match
        // comes a moment later, announced by chatroom.found.
        Entered::Queued { .. } => b
            .events()
            .wait_for(deadline, |e| e.kind == EventKind::ChatroomFound)
            .await
            .map(|e| e.room_id)
            .map_err(|seen| format!("the test sessions were not matched (got {seen:?})"))?,
    };
    let room_id: RoomId = room
        .parse()
        .map_err(|_| format!("the broker named an invalid room {room:?}"))?;
    let found = a
        .events()
        .wait_for(deadline, |e| e.kind == EventKind::ChatroomFound)
        .await;
    if !found.is_ok_and(|e| e.room_id == room) {
        // Someone else entered between our two sessions; do not chat with them.
        let _ = b.leave(room_id).await;
        return Err("the test sessions were matched with someone else; run doctor again".into());
    }
    let probe = "mcp-chat doctor round trip";
    a.send(room_id, probe.into()).await.map_err(failed)?;
    let got = b
        .events()
        .wait_for(deadline, |e| {
            e.kind == EventKind::MessageReceived && e.message.as_deref() == Some(probe)
        })
        .await;
    let _ = a.leave(room_id).await;
    match got {
        Ok(_) => Ok(RoundTrip::Done(started.elapsed())),
        Err(seen) => Err(format!(
            "the message did not arrive within {ROUND_TRIP_DEADLINE:?} (got {seen:?})"
        )),
    }
}

fn failed(error: CallError) -> String {
    error.to_string()
}

fn check_registrations(report: &mut Report) {
    let registrations = registered_clients();
    if registrations.is_empty() {
        report.note("clients", "no MCP client config registers mcp-chat yet (mcp-chat register claude-desktop | claude-code | print)");
    }
    for registration in registrations {
        let what = format!(
            "{} ({})",
            registration.client,
            registration.config.display()
        );
        match &registration.command {
            Some(command) if command.is_file() => {
                report.ok(&what, format!("runs {}", command.display()))
            }
            Some(command) => report.fail(
                &what,
                format!("points at {}, which does not exist", command.display()),
                format!("mcp-chat register {}", registration.client),
            ),
            None => report.fail(
                &what,
                "the mcp-chat entry has no command",
                format!("mcp-chat register {}", registration.client),
            ),
        }
    }
}
