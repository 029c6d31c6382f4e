//! Liveness, recovery, limits and who may connect, with real processes:
//! frozen clients (SIGSTOP), resumes, the resume grace, probing before a
//! match, the session cap, the send rate limit, and the peer uid check.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use mcp_chat_tests::frozen_receiver::{assert_delivered_or_reported, send_until_partner_gone};
use mcp_chat_tests::proto_client::wait_for_status;
use mcp_chat_tests::{BrokerProcess, McpClient, TestSocket, UNTHROTTLED, within};
use serde_json::{Value, json};

/// Fast heartbeats so a frozen client is noticed in a fraction of a second;
/// a long grace so a resume never races it.
const QUICK_HEARTBEAT: &[&str] = &["--heartbeat-ms", "100", "--resume-grace-ms", "20000"];

fn signal(client: &McpClient, name: &str) {
    let pid = client.child.id().unwrap();
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Pairs `a` (entering first) with `b`. With quick heartbeats the broker may
/// ping `a` before matching, so `b` can be told `waiting` and matched a
/// moment later: the `chatroom.found` notifications are what count.
async fn pair_up(a: &mut McpClient, b: &mut McpClient) -> String {
    a.ok("enter_queue", json!({})).await;
    b.ok("enter_queue", json!({})).await;
    let room = a.expect_notification("chatroom.found").await["room_id"].clone();
    assert_eq!(
        b.expect_notification("chatroom.found").await["room_id"],
        room
    );
    room.as_str().unwrap().to_owned()
}

/// Waits until the broker holds exactly `n` sessions for a resume: 1 once it
/// has dropped a frozen client's connection, 0 again once the client has
/// resumed (asked by status round trips, never read from the log).
async fn held_for_resume(socket: &std::path::Path, n: usize) {
    wait_for_status(socket, &format!("{n} session(s) held for a resume"), |s| {
        s.detached == n
    })
    .await;
}

fn types(pulled: &Value) -> Vec<String> {
    pulled["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_frozen_shim_resumes_its_room_with_nothing_lost() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, QUICK_HEARTBEAT).await;
    let mut a = McpClient::spawn(&socket.path).await;
    let mut b = McpClient::spawn(&socket.path).await;
    let room = pair_up(&mut a, &mut b).await;

    signal(&a, "STOP");
    held_for_resume(&socket.path, 1).await;
    b.ok(
        "send_message",
        json!({"room_id": room, "message": "while you were away"}),
    )
    .await;
    signal(&a, "CONT");
    held_for_resume(&socket.path, 0).await;
    let got = a.expect_notification("message.received").await;
    assert_eq!(
        got,
        json!({"room_id": room, "message": "while you were away", "untrusted": true})
    );
    // The room survived: both ways still work, and b was never told a left.
    a.ok("send_message", json!({"room_id": room, "message": "back"}))
        .await;
    assert_eq!(
        b.expect_notification("message.received").await["message"],
        "back"
    );
    let pulled = b.ok("wait_for_events", json!({"timeout_s": 0})).await;
    assert!(
        !types(&pulled).contains(&"partner.disconnected".to_owned()),
        "{pulled}"
    );
}

#[tokio::test]
async fn past_the_resume_grace_the_partner_is_told() {
    let socket = TestSocket::new();
    // A grace long enough that the live partner, starved on a loaded
    // machine, resumes within it; the frozen one never does.
    let args = ["--heartbeat-ms", "100", "--resume-grace-ms", "3000"];
    let _broker = BrokerProcess::start(&socket.path, &args).await;
    let mut a = McpClient::spawn(&socket.path).await;
    let mut b = McpClient::spawn(&socket.path).await;
    let room = pair_up(&mut a, &mut b).await;
    signal(&a, "STOP");
    let gone = b.expect_notification("partner.disconnected").await;
    assert_eq!(
        gone,
        json!({"room_id": room, "reason": "disconnected", "undelivered": 0, "unconfirmed": 0})
    );
    signal(&a, "CONT");
    // a learns its session ended (same broker, so not a restart) and can
    // simply start over.
    let own = a.expect_notification("partner.disconnected").await;
    assert_eq!(own, json!({"room_id": room, "reason": "disconnected"}));
    assert_eq!(a.ok("enter_queue", json!({})).await["status"], "waiting");
}

#[tokio::test]
async fn a_frozen_waiter_is_never_matched_and_keeps_its_place() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, QUICK_HEARTBEAT).await;
    let mut frozen = McpClient::spawn(&socket.path).await;
    assert_eq!(
        frozen.ok("enter_queue", json!({})).await["status"],
        "waiting"
    );
    signal(&frozen, "STOP");
    // Once the broker has given up on its connection and holds its session
    // for a resume, the waiter is certainly no longer fresh. (That a waiter
    // merely quiet is pinged before a match is the broker's unit tests'.)
    held_for_resume(&socket.path, 1).await;

    let mut b = McpClient::spawn(&socket.path).await;
    let mut c = McpClient::spawn(&socket.path).await;
    b.ok("enter_queue", json!({})).await;
    c.ok("enter_queue", json!({})).await;
    let room = b.expect_notification("chatroom.found").await["room_id"].clone();
    assert_eq!(
        c.expect_notification("chatroom.found").await["room_id"],
        room
    );

    signal(&frozen, "CONT");
    held_for_resume(&socket.path, 0).await;
    // Still in the queue after the resume: the next newcomer meets it.
    let mut d = McpClient::spawn(&socket.path).await;
    d.ok("enter_queue", json!({})).await;
    let found = frozen.expect_notification("chatroom.found").await;
    assert_eq!(d.expect_notification("chatroom.found").await, found);
    assert_ne!(found["room_id"], room);
}

#[tokio::test]
async fn a_full_broker_refuses_new_sessions() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &["--max-sessions", "1"]).await;
    let a = McpClient::spawn(&socket.path).await;
    a.ok("chat_status", json!({})).await;
    let b = McpClient::spawn(&socket.path).await;
    let failure = b.fails("enter_queue", json!({})).await;
    assert_eq!(failure["error"], "broker_full");
    assert!(
        failure["message"].as_str().unwrap().contains("full"),
        "{failure}"
    );
}

#[tokio::test]
async fn sending_too_fast_is_refused_with_a_retry_hint() {
    let socket = TestSocket::new();
    let args = ["--message-rate", "0.1", "--message-burst", "3"];
    let _broker = BrokerProcess::start(&socket.path, &args).await;
    let mut a = McpClient::spawn(&socket.path).await;
    let mut b = McpClient::spawn(&socket.path).await;
    let room = pair_up(&mut a, &mut b).await;
    for i in 0..3 {
        a.ok(
            "send_message",
            json!({"room_id": room, "message": format!("m{i}")}),
        )
        .await;
    }
    let failure = a
        .fails("send_message", json!({"room_id": room, "message": "m3"}))
        .await;
    assert_eq!(failure["error"], "rate_limited");
    let wait = failure["retry_after_ms"].as_u64().unwrap();
    assert!(wait > 0 && wait <= 10_000, "{failure}");
    // The ones that were sent all arrived; the refused one did not.
    for i in 0..3 {
        assert_eq!(
            b.expect_notification("message.received").await["message"],
            format!("m{i}")
        );
    }
}

/// Runs the broker as `nobody` and connects as root: the broker must refuse
/// a peer whose uid differs from its own even when the directory lets it in
/// (root ignores directory modes).
#[cfg(unix)]
#[tokio::test]
async fn another_users_process_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    if mcp_chat_proto::socket_path::current_uid() != 0 {
        eprintln!("skipped: needs root to run a broker as another user");
        return;
    }
    const NOBODY: u32 = 65534;
    let socket = TestSocket::new();
    std::fs::set_permissions(socket.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = socket.path.parent().unwrap();
    std::fs::create_dir(dir).unwrap();
    std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    let mut command = tokio::process::Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(mcp_chat_tests::bin_path("mcp-chat-broker"))
        .args(["--foreground", "--socket"])
        .arg(&socket.path)
        .arg(mcp_chat_testkit::broker::PRINT_READY);
    // Returns once the broker has printed its ready line.
    let _broker = mcp_chat_testkit::BrokerChild::start(command, &socket.path)
        .await
        .unwrap();

    use futures::{SinkExt, StreamExt};
    let stream = mcp_chat_tests::proto_client::connect_raw(&socket.path)
        .await
        .unwrap();
    let mut transport = tokio_util::codec::Framed::new(stream, mcp_chat_proto::ClientCodec::new());
    let _ = transport
        .send(mcp_chat_tests::proto_client::hello(
            mcp_chat_proto::PROTOCOL_VERSION,
        ))
        .await;
    match within("refusal", transport.next()).await {
        Some(Ok(mcp_chat_proto::BrokerMsg::Refused { code, message })) => {
            assert_eq!(code, mcp_chat_proto::ErrorCode::WrongUser);
            assert!(
                message.contains("65534") && message.contains("uid 0"),
                "{message}"
            );
        }
        other => panic!("expected a wrong_user refusal, got {other:?}"),
    }
}

/// A socket directory owned by someone else is refused by the shim, which
/// says why, and is not touched.
#[cfg(unix)]
#[tokio::test]
async fn a_socket_directory_owned_by_another_user_is_refused() {
    use std::os::unix::fs::MetadataExt;
    if mcp_chat_proto::socket_path::current_uid() != 0 {
        eprintln!("skipped: needs root to create a directory owned by another user");
        return;
    }
    let socket = TestSocket::new();
    let dir = socket.path.parent().unwrap();
    std::fs::create_dir(dir).unwrap();
    std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
    let a = McpClient::spawn(&socket.path).await;
    let failure = a.fails("enter_queue", json!({})).await;
    assert_eq!(failure["error"], "broker_unreachable");
    let message = failure["message"].as_str().unwrap();
    assert!(message.contains("belongs to uid 65534"), "{message}");
    assert_eq!(std::fs::metadata(dir).unwrap().uid(), 65534, "left alone");
}

/// `sent` means delivered or reported: a receiving shim frozen while its
/// partner keeps sending is given up on, and the sender's
/// `partner.disconnected` counts exactly the messages that never reached the
/// receiver, checked against what the receiver reads once it runs again.
#[cfg(unix)]
#[tokio::test]
async fn a_frozen_receiver_costs_the_sender_an_exact_undelivered_count() {
    let socket = TestSocket::new();
    // Unthrottled, so only the receiver's backlog holds the sender back;
    // heartbeats and grace short enough that the broker gives up on the
    // frozen receiver within a second or two.
    let mut args = UNTHROTTLED.to_vec();
    args.extend(["--heartbeat-ms", "500", "--resume-grace-ms", "300"]);
    let _broker = BrokerProcess::start(&socket.path, &args).await;
    let mut a = McpClient::spawn(&socket.path).await;
    let mut b = McpClient::spawn(&socket.path).await;
    let room = pair_up(&mut a, &mut b).await;
    b.channel_event().await;
    signal(&b, "STOP");
    let counts = send_until_partner_gone(&mut a, &room, 10_000).await;

    signal(&b, "CONT");
    assert_delivered_or_reported(&mut b, counts).await;
}

/// Whether `pid` is stopped (state `T` in `/proc/<pid>/stat`).
/// Whether every thread of `pid` is stopped. SIGSTOP stops a process one
/// thread at a time, as each next enters the kernel; until the last one has,
/// the broker may still answer.
#[cfg(target_os = "linux")]
fn is_stopped(pid: u32) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks.into_iter().all(|task| {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let after_name = stat.rfind(')').map_or("", |end| &stat[end + 1..]);
        matches!(after_name.split_whitespace().next(), Some("T" | "t"))
    })
}

/// Waits until the stop has reached every thread of `pid`.
#[cfg(target_os = "linux")]
async fn until_stopped(pid: u32) {
    while !is_stopped(pid) {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// A frozen broker keeps its connection open, so only the session's own
/// phase can answer: `chat_status` does, while the broker is still stopped,
/// leaving out the figures it could not get.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn chat_status_answers_while_the_broker_is_frozen() {
    let socket = TestSocket::new();
    let broker = BrokerProcess::start(&socket.path, &[]).await;
    let a = McpClient::spawn(&socket.path).await;
    assert_eq!(a.ok("enter_queue", json!({})).await["status"], "waiting");

    broker.signal(rustix::process::Signal::STOP);
    until_stopped(broker.child.id().unwrap()).await;
    let status = a.ok("chat_status", json!({})).await;
    assert!(
        is_stopped(broker.child.id().unwrap()),
        "answered only after the broker ran again"
    );
    assert_eq!(status, json!({"state": "waiting", "position": 1}));
    // And again at once, whatever the first call left queued.
    assert_eq!(a.ok("chat_status", json!({})).await["state"], "waiting");
    assert!(is_stopped(broker.child.id().unwrap()));

    broker.signal(rustix::process::Signal::CONT);
    let status = a.ok("chat_status", json!({})).await;
    assert_eq!(status["state"], "waiting", "{status}");
}

/// An MCP client that stops reading its stdout stops receiving
/// notifications, but its shim keeps reading and acknowledging what the
/// broker sends: more than the broker's replay buffer could hold arrives
/// while the client is not reading, the sender is never told a message went
/// undelivered, and the client then pulls every one, in order.
#[tokio::test]
async fn a_client_that_stops_reading_does_not_stall_its_session() {
    use mcp_chat_proto::{DisconnectReason, Event, Reply};
    use mcp_chat_tests::{ProtoClient, bin_path};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    // Well past the broker's replay buffer (1,024 events), and small, so a
    // shim that reads its socket keeps up even on a loaded machine: the
    // broker gives a session up only when 1,024 events wait unwritten.
    const MESSAGES: usize = 3000;
    let text = |i: usize| format!("{i:05} {}", "x".repeat(100));

    let socket = TestSocket::new();
    let unlimited = [
        "--message-rate",
        "0",
        "--request-rate",
        "0",
        "--byte-rate",
        "0",
    ];
    let _broker = BrokerProcess::start(&socket.path, &unlimited).await;
    let mut reader = tokio::process::Command::new(bin_path("mcp-chat"))
        .env("MCP_CHAT_SOCKET", &socket.path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = reader.stdin.take().unwrap();
    let mut lines = BufReader::new(reader.stdout.take().unwrap()).lines();
    let mut send = async |msg: Value| {
        let mut line = msg.to_string();
        line.push('\n');
        stdin.write_all(line.as_bytes()).await.unwrap();
    };
    // Reads stdout until the response to `id`, skipping notifications.
    async fn response(
        lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
        id: u64,
    ) -> Value {
        loop {
            let line = within("a stdout line", lines.next_line())
                .await
                .unwrap()
                .expect("stdout open");
            let msg: Value = serde_json::from_str(&line).unwrap();
            if msg["id"].as_u64() == Some(id) {
                return msg["result"].clone();
            }
        }
    }
    send(json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}})).await;
    response(&mut lines, 1).await;
    send(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).await;
    send(json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"enter_queue","arguments":{}}})).await;
    let entered = response(&mut lines, 2).await;
    assert_eq!(
        entered["structuredContent"]["status"], "waiting",
        "{entered}"
    );

    let mut sender = ProtoClient::connect(&socket.path).await;
    // Matched at once, or (when the broker pings the reader first) a
    // moment later: chatroom.found says which room either way.
    let reply = sender.enter().await;
    let Event::ChatroomFound { room_id, .. } = sender.next_event().await else {
        panic!("the sender was not matched with the reader: {reply:?}");
    };
    // From here on nobody reads the reader's stdout.
    for i in 0..MESSAGES {
        assert_eq!(
            sender.say(room_id, &text(i)).await,
            Reply::Sent,
            "message {i}"
        );
    }

    let mut pulled = Vec::new();
    let mut id = 10;
    while pulled.len() < MESSAGES {
        id += 1;
        send(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"wait_for_events","arguments":{"timeout_s":10}}})).await;
        let result = response(&mut lines, id).await;
        let events = result["structuredContent"]["events"].as_array().unwrap();
        assert!(!events.is_empty(), "no events left after {}", pulled.len());
        assert!(
            result["structuredContent"].get("events_dropped").is_none(),
            "{result}"
        );
        for event in events {
            match event["type"].as_str().unwrap() {
                "message.received" => pulled.push(event["message"].as_str().unwrap().to_owned()),
                "chatroom.found" => {}
                other => panic!("unexpected {other}: {event}"),
            }
        }
    }
    assert!(
        pulled.iter().enumerate().all(|(i, m)| *m == text(i)),
        "every message, in order"
    );

    // The reader leaves: the sender's next event about the room is that,
    // with nothing undelivered, nothing unconfirmed.
    id += 1;
    send(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"leave_chat","arguments":{"room_id":room_id.to_string()}}})).await;
    response(&mut lines, id).await;
    assert_eq!(
        sender.next_event().await,
        Event::PartnerDisconnected {
            room_id,
            reason: DisconnectReason::Left,
            undelivered: 0,
            unconfirmed: 0,
        }
    );
}

/// While the shim is re-making its broker connection (here for as long as
/// it keeps trying: the broker is gone and the one it starts exits at once),
/// `chat_status` answers from the session's phase instead of waiting for the
/// reconnect's outcome; the loss is reported when the shim gives up.
#[cfg(unix)]
#[tokio::test]
async fn chat_status_answers_while_the_shim_is_reconnecting() {
    let socket = TestSocket::new();
    let mut broker = BrokerProcess::start(&socket.path, &[]).await;
    let failing = std::path::Path::new("/bin/false");
    let mut a = McpClient::spawn_with_broker(&socket.path, failing).await;
    let mut b = McpClient::spawn_with_broker(&socket.path, failing).await;
    let room = pair_up(&mut a, &mut b).await;

    broker.child.start_kill().unwrap();
    broker.wait_exit().await;
    let mut status = a.ok("chat_status", json!({})).await;
    status.as_object_mut().unwrap().remove("events");
    // The room is only reported lost once the reconnect is given up, so an
    // answer that still says `in_room` came before that; no broker, no figures.
    assert_eq!(status, json!({"state": "in_room", "room_id": room}));
    let gone = a.expect_notification("partner.disconnected").await;
    assert_eq!(gone, json!({"room_id": room, "reason": "broker_lost"}));
    // Given up: the next call tries again, and says why it cannot.
    assert_eq!(
        a.fails("chat_status", json!({})).await["error"],
        "broker_unreachable"
    );
}
