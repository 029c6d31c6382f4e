//! Federation checks seen from outside, with real processes and a real
//! `nats-server`: a broker shut down leaves the realm's queue at once; the
//! realm key is pinned on first use, so a realm member overwriting it in
//! the bucket neither locks restarting brokers out nor unbinds blocks; a
//! frozen realm waiter is not matched while frozen; a waiter whose broker
//! was killed outright leaves the realm's queue with the bucket's
//! `max_age`; and remote texts past a frozen receiver's replay caps end the
//! room towards the sender with counts that add up.
//!
//! Some use test hooks of the broker's `fault-injection` feature
//! (`broker/src/federation/fault.rs`), which `./test.sh` builds; they are
//! inert unless the broker's environment asks for them.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::path::Path;

use mcp_chat_proto::matching::{Entry, Meet};
use mcp_chat_proto::{Event, Reply, Request, RoomId};
use mcp_chat_testkit::nats::NatsServer;
use mcp_chat_testkit::proto_client::wait_for_status;
use mcp_chat_tests::federation::{connected, found_with_partner, met, start_broker, write_config};
use mcp_chat_tests::{BrokerProcess, ProtoClient, TestSocket, within};

/// The realm's buckets, as the brokers name them for realm `test`.
const QUEUE_BUCKET: &str = "mcpchat_queue_test";
const BLOCKS_BUCKET: &str = "mcpchat_blocks_test";
/// The realm key's entry in the blocks bucket.
const KEY_ENTRY: &str = "realmkey";

/// A broker in realm `test` on `url`, with `env`; its `config.toml` is
/// kept beside its socket. Returned once it is in the realm.
async fn broker(socket: &TestSocket, url: &str, env: &[(&str, &str)]) -> BrokerProcess {
    let config = write_config(
        socket.dir.path(),
        &[format!("url = \"{url}\""), "realm = \"test\"".to_owned()],
    );
    let broker = start_broker(&socket.path, &config, 20_000, env).await;
    connected(&socket.path).await;
    broker
}

async fn waiting_in_realm(socket: &Path, n: usize) {
    wait_for_status(socket, &format!("{n} waiting in the realm"), |s| {
        s.federation
            .as_ref()
            .is_some_and(|f| f.waiting_in_realm == n)
    })
    .await;
}

/// The keys of the realm's queue bucket, read by a plain NATS client.
async fn queue_keys(nats: &NatsServer) -> Vec<String> {
    use futures::TryStreamExt;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let bucket = js.get_key_value(QUEUE_BUCKET).await.unwrap();
    bucket.keys().await.unwrap().try_collect().await.unwrap()
}

/// Sessions waiting on A when A is stopped by `signal`; returns how A
/// exited, once another broker's status shows nobody waiting in the realm
/// (its mirror follows the bucket's deletes), its newcomer waits first in
/// line instead of claiming a ghost, and the bucket itself, read by a
/// plain NATS client, holds no entry.
async fn leaves_no_waiter_behind(signal: rustix::process::Signal) -> std::process::ExitStatus {
    const WAITERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).await.unwrap();
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let mut a = broker(&sa, &nats.url(), &[]).await;
    let _b = broker(&sb, &nats.url(), &[]).await;
    // Agents who only meet people: they never meet each other.
    let people_only = Entry {
        meet: Meet::People,
        ..Entry::default()
    };
    let mut waiters = Vec::new();
    for _ in 0..WAITERS {
        let mut client = ProtoClient::connect(&sa.path).await;
        let reply = enter(&mut client, &people_only).await;
        assert!(matches!(reply, Reply::Waiting { .. }), "{reply:?}");
        waiters.push(client);
    }
    waiting_in_realm(&sb.path, WAITERS).await;
    assert_eq!(queue_keys(&nats).await.len(), WAITERS);

    a.signal(signal);
    let exit = a.wait_exit().await;
    waiting_in_realm(&sb.path, 0).await;
    assert_eq!(queue_keys(&nats).await, Vec::<String>::new());
    let mut b1 = ProtoClient::connect(&sb.path).await;
    assert_eq!(b1.enter().await, Reply::Waiting { position: 1 });
    exit
}

/// A broker stopped with SIGTERM deletes its waiters' entries from the
/// realm's queue before it exits, so nobody claims them in vain.
#[tokio::test]
async fn a_broker_shut_down_leaves_no_waiter_behind_in_the_realm() {
    let exit = leaves_no_waiter_behind(rustix::process::Signal::TERM).await;
    assert!(exit.success(), "{exit:?}");
}

/// So does a broker whose hub failed (made to panic by SIGUSR1, a hook of
/// the `fault-injection` feature): it exits non-zero, but only once its
/// link has left the realm, which no withdrawal of the hub's asked for.
#[tokio::test]
async fn a_broker_whose_hub_failed_leaves_no_waiter_behind_in_the_realm() {
    let exit = leaves_no_waiter_behind(rustix::process::Signal::USR1).await;
    assert_eq!(
        exit.code(),
        Some(1),
        "exits non-zero from a failed hub ({exit:?}): build the broker with `cargo build -p mcp-chat-broker --features fault-injection` (./test.sh does)"
    );
}

/// An entry made as the broker shuts down goes too: the link learns of it
/// only after the hub has withdrawn its session (held back by
/// `MCP_CHAT_FAULT_ENTERED_DELAY_MS`, while the entry is in the bucket
/// already), and deletes it before the process exits.
#[tokio::test]
async fn an_entry_made_as_the_broker_shuts_down_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).await.unwrap();
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let mut a = broker(
        &sa,
        &nats.url(),
        &[("MCP_CHAT_FAULT_ENTERED_DELAY_MS", "2000")],
    )
    .await;
    let _b = broker(&sb, &nats.url(), &[]).await;
    let mut a1 = ProtoClient::connect(&sa.path).await;
    // Answered only once the link knows its entry is made.
    a1.send_request(Request::EnterQueue(Entry::default())).await;
    waiting_in_realm(&sb.path, 1).await;

    a.terminate();
    assert!(a.wait_exit().await.success());
    waiting_in_realm(&sb.path, 0).await;
    assert_eq!(queue_keys(&nats).await, Vec::<String>::new());
}

async fn enter(client: &mut ProtoClient, entry: &Entry) -> Reply {
    client.request(Request::EnterQueue(entry.clone())).await
}

/// `client` enters and is matched (at once, or claimed by its quiet
/// partner a moment later: see `met`); its room.
async fn matched(client: &mut ProtoClient, entry: &Entry) -> RoomId {
    let reply = enter(client, entry).await;
    let (room, _) = found_with_partner(client).await;
    assert!(met(&reply, room), "{reply:?}");
    room
}

fn installation(id: &str) -> Entry {
    Entry {
        block_id: Some(id.into()),
        ..Entry::default()
    }
}

/// New sessions of installations X (on `sa`) and Y (on `sb`), which
/// blocked each other, wait side by side without meeting: the next
/// newcomer meets X, the first in line, and the one after meets Y.
async fn kept_apart(sa: &Path, sb: &Path) {
    let mut x = ProtoClient::connect(sa).await;
    let reply = enter(&mut x, &installation("installation-x")).await;
    assert!(matches!(reply, Reply::Waiting { .. }), "{reply:?}");
    waiting_in_realm(sb, 1).await;
    let mut y = ProtoClient::connect(sb).await;
    let reply = enter(&mut y, &installation("installation-y")).await;
    assert!(matches!(reply, Reply::Waiting { .. }), "{reply:?}");
    waiting_in_realm(sa, 2).await;
    let mut third = ProtoClient::connect(sb).await;
    let room = matched(&mut third, &Entry::default()).await;
    assert_eq!(found_with_partner(&mut x).await.0, room);
    let mut fourth = ProtoClient::connect(sa).await;
    let room = matched(&mut fourth, &Entry::default()).await;
    assert_eq!(found_with_partner(&mut y).await.0, room);
    // Their rooms end as they go; nobody is left waiting.
    drop((x, y, third, fourth));
    waiting_in_realm(sa, 0).await;
}

/// The realm key is pinned on first use: a realm member that overwrites
/// it in the bucket, with garbage or with another valid key, neither keeps
/// a restarting broker out of the realm nor unbinds a block made before
/// between sessions on two brokers; the restarted broker's status says
/// the bucket's key is not the pinned one. A broker that never pinned one
/// still joins past a garbage key, its realm blocks then binding its own
/// sessions only, as its status says.
#[tokio::test]
async fn a_realm_key_replaced_in_the_bucket_is_not_used_by_brokers_that_pinned_one() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).await.unwrap();
    let (sa, sb, sc) = (TestSocket::new(), TestSocket::new(), TestSocket::new());
    let _a = broker(&sa, &nats.url(), &[]).await;
    let mut b = broker(&sb, &nats.url(), &[]).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let bucket = js.get_key_value(BLOCKS_BUCKET).await.unwrap();
    let key = bucket.get(KEY_ENTRY).await.unwrap().unwrap();
    let key = std::str::from_utf8(&key).unwrap().to_owned();
    for socket in [&sa, &sb] {
        let pins = socket.path.with_file_name("broker.realm-keys");
        let text = std::fs::read_to_string(&pins).unwrap();
        assert!(text.contains(&key), "the bucket's key is pinned: {text}");
    }

    // X on A blocks Y on B.
    let mut x = ProtoClient::connect(&sa.path).await;
    let reply = enter(&mut x, &installation("installation-x")).await;
    assert!(matches!(reply, Reply::Waiting { .. }), "{reply:?}");
    let mut y = ProtoClient::connect(&sb.path).await;
    let room = matched(&mut y, &installation("installation-y")).await;
    assert_eq!(found_with_partner(&mut x).await.0, room);
    let reply = x
        .request(Request::LeaveChat {
            room_id: room,
            block: true,
        })
        .await;
    assert_eq!(reply, Reply::Blocked);
    assert!(matches!(
        y.next_event().await,
        Event::PartnerDisconnected { .. }
    ));
    drop((x, y));

    let another = "ab".repeat(32);
    for replaced in ["garbage", another.as_str()] {
        bucket
            .put(KEY_ENTRY, replaced.to_owned().into())
            .await
            .unwrap();
        b.terminate();
        assert!(b.wait_exit().await.success());
        b = broker(&sb, &nats.url(), &[]).await;
        let status = connected(&sb.path).await.federation.unwrap();
        let note = status.realm_key_note.unwrap_or_default();
        assert!(note.contains("pinned"), "{note:?}");
        kept_apart(&sa.path, &sb.path).await;
    }

    // A broker with no pin, and garbage in the bucket.
    bucket.put(KEY_ENTRY, "garbage".into()).await.unwrap();
    let _c = broker(&sc, &nats.url(), &[]).await;
    let status = connected(&sc.path).await.federation.unwrap();
    let note = status.realm_key_note.unwrap_or_default();
    assert!(note.contains("this broker's sessions only"), "{note:?}");
}

/// The ping before a claim, across brokers: a realm waiter on A whose
/// client has gone quiet (it reads, and answers nothing) is pinged by A
/// before B's entrant may take it, so the entrant is not matched with it
/// while it is frozen; once it answers, the two meet. That it has been
/// quiet long enough to be pinged is shown by A's heartbeat ping, which
/// only a connection silent for longer than that comes to. A's heartbeat
/// is 5 s (so a waiter is fresh for 1 s, and has 1.5 s to answer a ping),
/// so that the first ping comes well within a test's wait.
#[tokio::test]
async fn a_frozen_realm_waiter_is_not_matched_until_it_answers() {
    use futures::{SinkExt, StreamExt};
    use mcp_chat_proto::{BrokerMsg, ClientMsg};

    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).await.unwrap();
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let url = nats.url();
    let _a = BrokerProcess::start(
        &sa.path,
        &[
            "--federation",
            &url,
            "--realm",
            "test",
            "--heartbeat-ms",
            "5000",
        ],
    )
    .await;
    connected(&sa.path).await;
    let _b = broker(&sb, &url, &[]).await;
    let mut a1 = ProtoClient::connect(&sa.path).await;
    assert_eq!(a1.enter().await, Reply::Waiting { position: 1 });
    waiting_in_realm(&sb.path, 1).await;
    let (mut reader, mut writer) = a1.into_parts();
    let mut next = async || match within("a frame for the waiter", reader.next()).await {
        Some(Ok(msg)) => msg,
        other => panic!("{other:?}"),
    };
    // Frozen: the broker's heartbeat comes to it, unanswered.
    assert!(matches!(next().await, BrokerMsg::Ping { .. }));

    let mut b1 = ProtoClient::connect(&sb.path).await;
    let id = b1.send_request(Request::EnterQueue(Entry::default())).await;
    // B's claim makes A ping its waiter first, rather than match it.
    let nonce = match next().await {
        BrokerMsg::Ping { nonce } => nonce,
        other => panic!("a frozen waiter was matched: {other:?}"),
    };
    let reply = match b1.next_frame().await {
        Some(Ok(BrokerMsg::Response { id: got, reply })) if got == id => reply,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        reply,
        Reply::Waiting { position: 1 },
        "not matched while frozen"
    );
    // Thawed: it answers, and the two meet.
    writer.send(ClientMsg::Pong { nonce }).await.unwrap();
    let room = loop {
        match next().await {
            BrokerMsg::Event {
                event: Event::ChatroomFound { room_id, .. },
                ..
            } => break room_id,
            BrokerMsg::Ping { nonce } => writer.send(ClientMsg::Pong { nonce }).await.unwrap(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(found_with_partner(&mut b1).await.0, room);
}

/// The realm bucket's `max_age` is the backstop for a broker that dies
/// without leaving the realm: a waiter on A, killed with SIGKILL, is gone
/// from B's count of the realm once that age passes (B's mirror drops the
/// entry as the server does, which no watcher is told of), and B's
/// newcomer then waits first in line. The age is 6 s here
/// (`MCP_CHAT_FAULT_QUEUE_MAX_AGE_MS`), an hour otherwise.
#[tokio::test]
async fn a_killed_brokers_waiter_leaves_the_realm_with_the_buckets_max_age() {
    const MAX_AGE_MS: &str = "6000";
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).await.unwrap();
    let env = [("MCP_CHAT_FAULT_QUEUE_MAX_AGE_MS", MAX_AGE_MS)];
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let mut a = broker(&sa, &nats.url(), &env).await;
    let _b = broker(&sb, &nats.url(), &env).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let info = js
        .get_stream(format!("KV_{QUEUE_BUCKET}"))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(
        info.config.max_age.as_millis().to_string(),
        MAX_AGE_MS,
        "the broker has no queue max-age hook: build it with `cargo build -p mcp-chat-broker --features fault-injection` (./test.sh does)"
    );
    let mut a1 = ProtoClient::connect(&sa.path).await;
    assert_eq!(a1.enter().await, Reply::Waiting { position: 1 });
    waiting_in_realm(&sb.path, 1).await;

    a.signal(rustix::process::Signal::KILL);
    a.wait_exit().await;
    waiting_in_realm(&sb.path, 0).await;
    assert_eq!(queue_keys(&nats).await, Vec::<String>::new());
    let mut b1 = ProtoClient::connect(&sb.path).await;
    assert_eq!(b1.enter().await, Reply::Waiting { position: 1 });
}

/// Remote texts past a frozen receiver's replay caps end the room towards
/// the sender, with counts that add up. As
/// `a_frozen_receiver_on_another_broker_costs_the_sender_an_exact_undelivered_count`
/// in tests/federation.rs, but with B's liveness left at its defaults (a
/// silent client is dropped only after half a minute), so that what ends
/// the room is the replay caps while the receiver's session lives on
/// (there, B also drops the frozen client within a second or two, and
/// either may come first): B's status still counts the receiver's session
/// when the sender hears the end.
#[tokio::test]
async fn remote_texts_past_a_frozen_receivers_replay_caps_end_the_room_with_exact_counts() {
    use mcp_chat_tests::McpClient;
    use mcp_chat_tests::frozen_receiver::{assert_delivered_or_reported, send_until_partner_gone};
    use rustix::process::Signal;
    use serde_json::json;

    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).await.unwrap();
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let url = nats.url();
    let mut args = vec!["--federation", &url, "--realm", "test"];
    args.extend_from_slice(mcp_chat_tests::UNTHROTTLED);
    let _a = BrokerProcess::start(&sa.path, &args).await;
    let _b = BrokerProcess::start(&sb.path, &args).await;
    connected(&sa.path).await;
    connected(&sb.path).await;
    let mut a = McpClient::spawn(&sa.path).await;
    let mut b = McpClient::spawn(&sb.path).await;
    a.ok("enter_queue", json!({})).await;
    b.ok("enter_queue", json!({})).await;
    let room = a.expect_notification("chatroom.found").await["room_id"].clone();
    assert_eq!(
        b.expect_notification("chatroom.found").await["room_id"],
        room
    );
    let room = room.as_str().unwrap().to_owned();
    b.channel_event().await;
    let receiver =
        rustix::process::Pid::from_raw(i32::try_from(b.child.id().unwrap()).unwrap()).unwrap();
    rustix::process::kill_process(receiver, Signal::STOP).unwrap();

    let counts = send_until_partner_gone(&mut a, &room, 20_000).await;
    let status = ProtoClient::connect(&sb.path).await.status().await;
    assert_eq!(
        status.sessions, 2,
        "the receiver's session (and this one) live on: {status:?}"
    );

    rustix::process::kill_process(receiver, Signal::CONT).unwrap();
    assert_delivered_or_reported(&mut b, counts).await;
}
