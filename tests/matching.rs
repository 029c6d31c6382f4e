//! Interests, kinds and blocks as MCP clients meet them: real shims, a real
//! broker. Every wait is on an event (a result or a notification).

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::path::Path;

use mcp_chat_tests::mcp_client::matched_room;
use mcp_chat_tests::{AutoStartedBroker, BrokerProcess, McpClient, TestSocket, bin_path, within};
use serde_json::{Value, json};

/// A shim that is an installation of its own: its own state directory, so
/// its own pseudonymous id.
async fn installation(socket: &Path, state: &Path) -> McpClient {
    McpClient::spawn_with_env(
        socket,
        &bin_path("mcp-chat-broker"),
        &[("XDG_STATE_HOME", state)],
    )
    .await
}

/// The broker pings a waiter quiet for a fifth of a heartbeat (2 s by
/// default) before matching it, and passes it over meanwhile: tests of who
/// meets whom run with a long heartbeat, so a loaded machine cannot reorder
/// the line between one client's call and the next.
const IN_LINE: &[&str] = &["--heartbeat-ms", "600000"];

fn without_events(mut value: Value) -> Value {
    value.as_object_mut().unwrap().remove("events");
    value
}

#[tokio::test]
async fn a_shared_interest_is_met_first_and_said() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, IN_LINE).await;
    let plain = McpClient::spawn(&socket.path).await;
    let mut a = McpClient::spawn(&socket.path).await;
    let b = McpClient::spawn(&socket.path).await;
    assert_eq!(
        plain.ok("enter_queue", json!({})).await["status"],
        "waiting"
    );
    // a holds out for chess or go, so the open waiter is not for it.
    let entered = a
        .ok(
            "enter_queue",
            json!({"interests": ["Chess", " go "], "interest_wait_s": 50}),
        )
        .await;
    assert_eq!(
        without_events(entered),
        json!({"status": "waiting", "position": 2})
    );
    let reply = without_events(b.ok("enter_queue", json!({"interests": ["GO"]})).await);
    let found = a.expect_notification("chatroom.found").await;
    if reply["status"] == "matched" {
        assert_eq!(
            reply,
            json!({"status": "matched", "room_id": found["room_id"], "common_interests": ["go"], "partner_kind": "agent"})
        );
    }
    assert_eq!(found["common_interests"], json!(["go"]));
    let status = plain.ok("chat_status", json!({})).await;
    assert_eq!(status["state"], "waiting");
    assert_eq!(status["waiting"], 1);
    assert_eq!(status["busiest_interests"], json!([]));
}

#[tokio::test]
async fn after_the_interest_wait_anyone_will_do() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let mut hopeful = McpClient::spawn(&socket.path).await;
    let mut plain = McpClient::spawn(&socket.path).await;
    hopeful
        .ok(
            "enter_queue",
            json!({"interests": ["chess"], "interest_wait_s": 1}),
        )
        .await;
    // Usually hopeful still holds out for chess, and plain waits behind
    // it; on a loaded machine hopeful's second may be over already, and
    // plain is matched at once. Either way the match is what follows.
    let reply = without_events(plain.ok("enter_queue", json!({})).await);
    if reply["status"] == "waiting" {
        assert_eq!(reply, json!({"status": "waiting", "position": 2}));
    } else {
        assert_eq!(reply["status"], "matched", "{reply}");
    }
    // One answer of the broker: while both wait, hopeful's chess shows.
    let status = plain.ok("chat_status", json!({})).await;
    if status["waiting"] == 2 {
        assert_eq!(
            status["busiest_interests"],
            json!([{"interest": "chess", "waiting": 1}])
        );
    }
    // The match comes when hopeful's wait is over: waited for, not slept.
    let found = hopeful.expect_notification("chatroom.found").await;
    assert_eq!(found["common_interests"], json!([]));
    assert_eq!(plain.expect_notification("chatroom.found").await, found);
}

#[tokio::test]
async fn whom_to_meet_and_what_one_is() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, IN_LINE).await;
    let mut picky = McpClient::spawn(&socket.path).await;
    let agent = McpClient::spawn(&socket.path).await;
    let person = McpClient::spawn(&socket.path).await;
    picky.ok("enter_queue", json!({"meet": "people"})).await;
    assert_eq!(
        without_events(agent.ok("enter_queue", json!({})).await)["status"],
        "waiting",
        "an agent is not for someone who meets people"
    );
    let reply = without_events(person.ok("enter_queue", json!({"as": "person"})).await);
    let found = picky.expect_notification("chatroom.found").await;
    assert_eq!(found["partner_kind"], "person");
    if reply["status"] == "matched" {
        assert_eq!(matched_room(&reply), found["room_id"].as_str().unwrap());
        assert_eq!(reply["partner_kind"], "agent");
    }
    assert_eq!(agent.ok("chat_status", json!({})).await["state"], "waiting");
}

#[tokio::test]
async fn a_block_holds_for_new_sessions_of_the_same_installations() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, IN_LINE).await;
    let homes = tempfile::tempdir().unwrap();
    let state = |name: &str| homes.path().join(name);
    let mut ann = installation(&socket.path, &state("ann")).await;
    let bob = installation(&socket.path, &state("bob")).await;
    ann.ok("enter_queue", json!({})).await;
    bob.ok("enter_queue", json!({})).await;
    let room = ann.expect_notification("chatroom.found").await["room_id"].clone();
    let left = ann
        .ok("leave_chat", json!({"room_id": room, "block": true}))
        .await;
    assert_eq!(left["status"], "left");
    // The id is private to its user and never part of what partners see.
    let id_file = state("ann").join("mcp-chat").join("identity");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&id_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let id = std::fs::read_to_string(&id_file).unwrap();
    assert!(!room.to_string().contains(id.trim()));
    drop((ann, bob));

    // New processes of both installations, the only two waiting.
    let ann = installation(&socket.path, &state("ann")).await;
    let bob = installation(&socket.path, &state("bob")).await;
    assert_eq!(
        without_events(ann.ok("enter_queue", json!({})).await)["status"],
        "waiting"
    );
    assert_eq!(
        without_events(bob.ok("enter_queue", json!({})).await)["status"],
        "waiting"
    );
    let status = bob.ok("chat_status", json!({})).await;
    assert_eq!(
        (status["state"].clone(), status["waiting"].clone()),
        (json!("waiting"), json!(2))
    );
    // Anyone else meets the one who waited longest.
    let mut cat = installation(&socket.path, &state("cat")).await;
    cat.ok("enter_queue", json!({})).await;
    cat.expect_notification("chatroom.found").await;
    assert_eq!(ann.ok("chat_status", json!({})).await["state"], "in_room");
    assert_eq!(bob.ok("chat_status", json!({})).await["state"], "waiting");
}

#[tokio::test]
async fn a_block_outlives_the_broker_process() {
    let socket = TestSocket::new();
    let homes = tempfile::tempdir().unwrap();
    let state = |name: &str| homes.path().join(name);
    let mut broker = BrokerProcess::start(&socket.path, &[]).await;
    let mut ann = installation(&socket.path, &state("ann")).await;
    let bob = installation(&socket.path, &state("bob")).await;
    ann.ok("enter_queue", json!({})).await;
    bob.ok("enter_queue", json!({})).await;
    let room = ann.expect_notification("chatroom.found").await["room_id"].clone();
    ann.ok("leave_chat", json!({"room_id": room, "block": true}))
        .await;
    drop((ann, bob));
    broker.terminate();
    assert!(broker.wait_exit().await.success());
    // Kept beside the socket as keyed hashes, never the ids themselves.
    let kept = std::fs::read_to_string(socket.path.with_extension("blocks")).unwrap();
    let ann_id = std::fs::read_to_string(state("ann").join("mcp-chat/identity")).unwrap();
    assert!(!kept.contains(ann_id.trim()), "{kept}");
    assert_eq!(kept.lines().count(), 3, "header, key, one block: {kept}");

    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let ann = installation(&socket.path, &state("ann")).await;
    let bob = installation(&socket.path, &state("bob")).await;
    ann.ok("enter_queue", json!({})).await;
    assert_eq!(
        without_events(bob.ok("enter_queue", json!({})).await),
        json!({"status": "waiting", "position": 2})
    );
}

#[tokio::test]
async fn a_waiter_keeps_its_options_when_its_broker_restarts() {
    let socket = TestSocket::new();
    let mut broker = BrokerProcess::start(&socket.path, &[]).await;
    let a = McpClient::spawn(&socket.path).await;
    let entered = a
        .ok(
            "enter_queue",
            json!({"interests": ["chess"], "interest_wait_s": 50}),
        )
        .await;
    assert_eq!(entered["status"], "waiting");
    broker.child.start_kill().unwrap();
    broker.wait_exit().await;
    // a's shim reconnects by itself, starting a broker, and takes a place
    // in its queue with the same options; b shares chess and so meets a
    // at once (without them, only after b's own 10 s wait, sharing nothing).
    let mut b = McpClient::spawn(&socket.path).await;
    b.ok("enter_queue", json!({"interests": ["chess"]})).await;
    let found = b.expect_notification("chatroom.found").await;
    assert_eq!(found["common_interests"], json!(["chess"]));
    let _restarted = AutoStartedBroker::find(&socket.path).expect("a new broker");
}

/// A broker from before matching options, speaking raw frames: it welcomes
/// one client, matches its `enter_queue` at once, and answers `leave_chat`
/// with a plain `left` whatever the flags. Returns when the client goes.
async fn old_broker(listener: tokio::net::UnixListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut stream, _) = listener.accept().await.unwrap();
    let room = "6f1c2a52-8b44-4c8e-9d57-0c1f9d3f5a10";
    let mut seq = 0;
    loop {
        let Ok(len) = stream.read_u32().await else {
            return;
        };
        let mut body = vec![0; len as usize];
        stream.read_exact(&mut body).await.unwrap();
        let frame: Value = serde_json::from_slice(&body).unwrap();
        let mut replies = Vec::new();
        match (frame["type"].as_str(), frame["request"]["op"].as_str()) {
            (Some("hello"), _) => replies.push(json!({"type": "welcome", "protocol": 1, "broker_version": "0.0.9", "session_id": 1, "resume_token": "t", "resumed": false, "instance": "old"})),
            (Some("request"), Some("enter_queue")) => {
                seq += 1;
                replies.push(json!({"type": "event", "seq": seq, "event": {"event": "chatroom_found", "room_id": room}}));
                replies.push(json!({"type": "response", "id": frame["id"], "reply": {"status": "matched", "room_id": room}}));
            }
            (Some("request"), Some("status")) => {
                replies.push(json!({"type": "response", "id": frame["id"], "reply": {"status": "status", "broker_version": "0.0.9", "pid": 1, "uptime_s": 1, "sessions": 1, "waiting": 0, "rooms": 0}}));
            }
            (Some("request"), Some("leave_chat")) => {
                replies.push(json!({"type": "response", "id": frame["id"], "reply": {"status": "left"}}));
            }
            _ => {}
        }
        for reply in replies {
            let bytes = serde_json::to_vec(&reply).unwrap();
            stream.write_u32(bytes.len() as u32).await.unwrap();
            stream.write_all(&bytes).await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_broker_too_old_to_block_is_never_taken_for_one_that_did() {
    let socket = TestSocket::new();
    let dir = socket.path.parent().unwrap();
    std::fs::create_dir(dir).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let listener = tokio::net::UnixListener::bind(&socket.path).unwrap();
    let broker = tokio::spawn(old_broker(listener));
    let mut a = McpClient::spawn(&socket.path).await;
    // Its match says nothing of interests or kinds: empty, and no kind.
    let matched = without_events(a.ok("enter_queue", json!({"interests": ["chess"]})).await);
    let room = matched_room(&matched);
    assert_eq!(matched["common_interests"], json!([]));
    assert!(matched.get("partner_kind").is_none(), "{matched}");
    let found = a.expect_notification("chatroom.found").await;
    assert_eq!(found, json!({"room_id": room, "common_interests": []}));
    let refused = a
        .call("leave_chat", json!({"room_id": room, "block": true}))
        .await;
    assert_eq!(refused.is_error, Some(true));
    let text = format!("{:?}", refused.content);
    assert!(text.contains("too old to block"), "{text}");
    assert_eq!(
        a.ok("chat_status", json!({})).await["state"],
        "idle",
        "it did leave"
    );
    drop(a);
    within("the fake broker to see the client go", broker)
        .await
        .unwrap();
}
