//! What the federation tests share: a realm (a `nats-server` with
//! JetStream) and brokers joined to it by flags or by a `config.toml` (as
//! users configure them), and the waits of a match across brokers.

use std::path::{Path, PathBuf};

use mcp_chat_proto::{DisconnectReason, Event, MatchInfo, Reply, RoomId, StatusInfo};
use mcp_chat_testkit::BrokerChild;
use mcp_chat_testkit::nats::NatsServer;
use mcp_chat_testkit::proto_client::wait_for_status;

use crate::{BrokerProcess, ProtoClient, TestSocket, bin_path};

/// One realm: a server, and brokers joined to it.
pub struct Realm {
    pub nats: NatsServer,
    pub name: String,
    _dir: tempfile::TempDir,
}

impl Realm {
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mcp-chat-nats")
            .tempdir()
            .unwrap();
        let nats = NatsServer::start(dir.path()).await.unwrap();
        Self {
            nats,
            name: "test".into(),
            _dir: dir,
        }
    }

    /// A broker joined to the realm, with `grace_ms` for remote rooms, once
    /// its status says it is connected.
    pub async fn broker(&self, socket: &TestSocket, grace_ms: u64) -> BrokerProcess {
        let grace = grace_ms.to_string();
        let url = self.nats.url();
        let broker = BrokerProcess::start(
            &socket.path,
            &[
                "--federation",
                &url,
                "--realm",
                &self.name,
                "--federation-grace-ms",
                &grace,
            ],
        )
        .await;
        connected(&socket.path).await;
        broker
    }
}

/// Writes `config.toml` with a `[federation]` table of `lines` (`url = …`,
/// `realm = …`, …) under `dir`, and returns its path.
pub fn write_config(dir: &Path, lines: &[String]) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, format!("[federation]\n{}\n", lines.join("\n"))).unwrap();
    path
}

/// A broker on `socket` reading `config` (its settings, credentials file
/// and TLS CA), with `grace_ms` for remote rooms and `env` set; returned
/// once it listens (not necessarily in the realm: see [`connected`]).
pub async fn start_broker(
    socket: &Path,
    config: &Path,
    grace_ms: u64,
    env: &[(&str, &str)],
) -> BrokerProcess {
    let mut command = BrokerChild::command(&bin_path("mcp-chat-broker"), socket);
    command
        .arg("--config")
        .arg(config)
        .arg("--federation-grace-ms")
        .arg(grace_ms.to_string());
    for (key, value) in env {
        command.env(key, value);
    }
    BrokerProcess::start_command(command, socket).await
}

/// Waits until the broker on `socket` is in its realm.
pub async fn connected(socket: &Path) -> StatusInfo {
    wait_for_status(socket, "the broker to join the realm", |s| {
        s.federation.as_ref().is_some_and(|f| f.connected)
    })
    .await
}

/// Waits until the broker on `socket` reports a federation error saying
/// `why` (any case), and returns it; it is not in the realm then.
pub async fn failed(socket: &Path, why: &str) -> String {
    let why = why.to_lowercase();
    let status = wait_for_status(socket, &format!("a federation error saying {why:?}"), |s| {
        s.federation.as_ref().is_some_and(|f| {
            f.last_error
                .as_ref()
                .is_some_and(|e| e.to_lowercase().contains(&why))
        })
    })
    .await;
    let f = status.federation.unwrap();
    assert!(!f.connected, "{f:?}");
    f.last_error.unwrap()
}

pub async fn found(client: &mut ProtoClient) -> RoomId {
    found_with_partner(client).await.0
}

/// The next event is `chatroom.found`: its room and what it says of the
/// partner.
pub async fn found_with_partner(client: &mut ProtoClient) -> (RoomId, MatchInfo) {
    match client.next_event().await {
        Event::ChatroomFound { room_id, partner } => (room_id, partner),
        other => panic!("expected chatroom.found, got {other:?}"),
    }
}

/// Whether `reply`, to a session entering while a partner waits, agrees
/// with the room both were then told of: `matched` into that room, or
/// `waiting`. A waiter whose client has been quiet for a while is pinged by
/// its broker before it may be matched (so a frozen client never is), and
/// the newcomer is then told `waiting` and claimed by the waiter a moment
/// later; on a busy machine any waiter can be that quiet.
pub fn met(reply: &Reply, room: RoomId) -> bool {
    match reply {
        Reply::Matched { room_id, .. } => *room_id == room,
        Reply::Waiting { .. } => true,
        _ => false,
    }
}

pub async fn received(client: &mut ProtoClient) -> String {
    match client.next_event().await {
        Event::MessageReceived { message, .. } => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

pub async fn ended(client: &mut ProtoClient) -> DisconnectReason {
    match client.next_event().await {
        Event::PartnerDisconnected { reason, .. } => reason,
        other => panic!("expected partner.disconnected, got {other:?}"),
    }
}

/// `a` leaves `room` (without blocking), and its partner `b` is told.
pub async fn leave(a: &mut ProtoClient, room: RoomId, b: &mut ProtoClient) {
    let leave = mcp_chat_proto::Request::LeaveChat {
        room_id: room,
        block: false,
    };
    assert_eq!(a.request(leave).await, Reply::Left);
    assert_eq!(ended(b).await, DisconnectReason::Left);
}

/// `a` waits, then `b` is matched with it (across brokers, or on one).
pub async fn pair(a: &mut ProtoClient, b: &mut ProtoClient) -> RoomId {
    assert_eq!(a.enter().await, Reply::Waiting { position: 1 });
    let reply = b.enter().await;
    let room = found(a).await;
    assert!(met(&reply, room), "{reply:?}");
    assert_eq!(found(b).await, room);
    room
}

/// `a` and `b` meet and say one line each way.
pub async fn chat(a: &mut ProtoClient, b: &mut ProtoClient) {
    let room = pair(a, b).await;
    assert_eq!(a.say(room, "hello from a").await, Reply::Sent);
    assert_eq!(received(b).await, "hello from a");
    assert_eq!(b.say(room, "hello from b").await, Reply::Sent);
    assert_eq!(received(a).await, "hello from b");
}

/// Returns once the server has processed everything `nats` sent before:
/// `flush` only empties the client's write buffer, so a subscription just
/// made may not be in place yet when another connection publishes (seen on
/// a loaded machine: the spy missed the message it waited for). A request
/// the server itself answers is a round trip on the same connection, and
/// the server handles a connection's operations in order.
pub async fn synced(nats: &async_nats::Client) {
    async_nats::jetstream::new(nats.clone())
        .query_account()
        .await
        .unwrap();
}
