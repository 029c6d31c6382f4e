//! Federation when things fail short of the server going away (issue 12,
//! "Liveness", and the claim protocol's recoveries in
//! `broker/src/federation/realm.rs`): a network partition between one
//! broker and a NATS server that stays up, a claimer that dies between
//! taking a waiter's entry and asking its broker, and a waiter that outlives
//! the realm bucket's `max_age`.
//!
//! The last two use test hooks of the broker's `fault-injection` feature
//! (`broker/src/federation/fault.rs`), which `./test.sh` builds; they are
//! inert unless the broker's environment asks for them.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::net::SocketAddr;
use std::path::Path;

use futures::StreamExt;
use mcp_chat_proto::{DisconnectReason, Reply};
use mcp_chat_testkit::nats::NatsServer;
use mcp_chat_testkit::proto_client::wait_for_status;
use mcp_chat_testkit::tcp_proxy::TcpProxy;
use mcp_chat_tests::federation::{
    chat, connected, ended, found, met, pair, received, start_broker, write_config,
};
use mcp_chat_tests::{BrokerProcess, ProtoClient, TestSocket, within};

/// A broker in realm `test` on `url`, with `grace_ms` and `env`; its
/// `config.toml` is kept beside its socket.
async fn broker(
    socket: &TestSocket,
    url: &str,
    grace_ms: u64,
    env: &[(&str, &str)],
) -> BrokerProcess {
    let config = write_config(
        socket.dir.path(),
        &[format!("url = \"{url}\""), "realm = \"test\"".to_owned()],
    );
    start_broker(&socket.path, &config, grace_ms, env).await
}

async fn waiting_in_realm(socket: &Path, n: usize) {
    wait_for_status(socket, &format!("{n} waiting in the realm"), |s| {
        s.federation
            .as_ref()
            .is_some_and(|f| f.waiting_in_realm == n)
    })
    .await;
}

/// A partition with NATS up: a proxy between broker A and the server is
/// cut (black-holed, as a lost network is). A's remote partner on B hears
/// `disconnected` (A's presence stops), A's own client in that room hears
/// `federation_lost` after the grace, and A's local rooms and local
/// matching go on. Healed, A re-joins the realm by itself and matches
/// across again.
#[tokio::test]
async fn a_broker_cut_off_from_a_running_nats_server() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).await.unwrap();
    let proxy = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], nats.port)))
        .await
        .unwrap();
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    // A finds out it is cut off by its pings to NATS (every 2 s, cut after
    // two go unanswered); its partners' silence counts only past the
    // grace, so the grace must be longer than that (the default is 20 s).
    let _a = broker(&sa, &proxy.url(), 10_000, &[]).await;
    let _b = broker(&sb, &nats.url(), 10_000, &[]).await;
    connected(&sa.path).await;
    connected(&sb.path).await;
    let mut a1 = ProtoClient::connect(&sa.path).await;
    let mut b1 = ProtoClient::connect(&sb.path).await;
    let across = pair(&mut a1, &mut b1).await;
    // Two of A's sessions meet (through the realm, in a local room).
    let mut a2 = ProtoClient::connect(&sa.path).await;
    let mut a3 = ProtoClient::connect(&sa.path).await;
    let local = pair(&mut a2, &mut a3).await;

    proxy.cut();
    assert_eq!(ended(&mut b1).await, DisconnectReason::Disconnected);
    assert_eq!(ended(&mut a1).await, DisconnectReason::FederationLost);
    match a1.say(across, "anyone?").await {
        Reply::Error { code, .. } => assert_eq!(code, mcp_chat_proto::ErrorCode::PartnerGone),
        other => panic!("{other:?}"),
    }
    // Local chat and local matching on A go on.
    assert_eq!(a2.say(local, "still here").await, Reply::Sent);
    assert_eq!(received(&mut a3).await, "still here");
    let status = wait_for_status(&sa.path, "A to know it is cut off", |s| {
        s.federation.as_ref().is_some_and(|f| !f.connected)
    })
    .await;
    assert_eq!(status.federation.unwrap().remote_rooms, 0);
    let mut a4 = ProtoClient::connect(&sa.path).await;
    let mut a5 = ProtoClient::connect(&sa.path).await;
    chat(&mut a4, &mut a5).await;
    // B serves on meanwhile.
    let mut b2 = ProtoClient::connect(&sb.path).await;
    assert_eq!(b2.enter().await, Reply::Waiting { position: 1 });

    proxy.restore();
    connected(&sa.path).await;
    // A's next session meets B's waiter across the healed link.
    let mut a6 = ProtoClient::connect(&sa.path).await;
    let reply = a6.enter().await;
    let room = found(&mut b2).await;
    assert!(met(&reply, room), "{reply:?}");
    assert_eq!(found(&mut a6).await, room);
    assert_eq!(a6.say(room, "across again").await, Reply::Sent);
    assert_eq!(received(&mut b2).await, "across again");
}

/// A claimer that dies between its compare-and-set delete of a waiter's
/// entry and its claim request leaves the waiter with no entry and no
/// claim on its way. Made to happen deterministically: broker C exits right
/// after its claim's delete (`MCP_CHAT_FAULT_EXIT_AFTER_CLAIM`). A's waiter
/// enters the realm again by itself and meets the next entrant, on B.
#[tokio::test]
async fn a_waiter_whose_claimer_died_enters_again_and_is_matched() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).await.unwrap();
    let (sa, sb, sc) = (TestSocket::new(), TestSocket::new(), TestSocket::new());
    let _a = broker(&sa, &nats.url(), 20_000, &[]).await;
    let _b = broker(&sb, &nats.url(), 20_000, &[]).await;
    let mut c = broker(
        &sc,
        &nats.url(),
        20_000,
        &[("MCP_CHAT_FAULT_EXIT_AFTER_CLAIM", "1")],
    )
    .await;
    for socket in [&sa, &sb, &sc] {
        connected(&socket.path).await;
    }
    let mut a1 = ProtoClient::connect(&sa.path).await;
    assert_eq!(a1.enter().await, Reply::Waiting { position: 1 });
    waiting_in_realm(&sc.path, 1).await;

    // C's entrant claims A's waiter, and C dies before asking A.
    let mut c1 = ProtoClient::connect(&sc.path).await;
    c1.send_request(mcp_chat_proto::Request::EnterQueue(Default::default()))
        .await;
    let exit = c.wait_exit().await;
    assert_eq!(
        exit.code(),
        Some(86),
        "C should exit from its claim hook ({exit:?}): build the broker with `cargo build -p mcp-chat-broker --features fault-injection` (./test.sh does)"
    );
    // The entry is gone from the realm; nobody is asking A for a1. A finds
    // it orphaned and enters it again (after 12 s), which B sees.
    waiting_in_realm(&sb.path, 0).await;
    waiting_in_realm(&sb.path, 1).await;
    // The next entrant, on B, meets a1.
    let mut b1 = ProtoClient::connect(&sb.path).await;
    // a1 has been quiet while it waited: b1 may be told `waiting` first
    // (see `met`).
    let reply = b1.enter().await;
    let room = found(&mut a1).await;
    assert!(met(&reply, room), "{reply:?}");
    assert_eq!(found(&mut b1).await, room);
    assert_eq!(a1.say(room, "found you").await, Reply::Sent);
    assert_eq!(received(&mut b1).await, "found you");
}

/// The realm bucket's `max_age` drops entries silently (a backstop for
/// dead brokers), so a live waiter renews its entry at half that age. With
/// the bucket's `max_age` at 6 s (`MCP_CHAT_FAULT_QUEUE_MAX_AGE_MS`), a
/// waiter on A is watched renewing its entry three times (so it has waited
/// well past 6 s), and is then matched with a newcomer on B.
#[tokio::test]
async fn a_waiter_outliving_the_queues_max_age_is_still_matched() {
    const MAX_AGE_MS: u64 = 6_000;
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).await.unwrap();
    let max_age = MAX_AGE_MS.to_string();
    let env = [("MCP_CHAT_FAULT_QUEUE_MAX_AGE_MS", max_age.as_str())];
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = broker(&sa, &nats.url(), 20_000, &env).await;
    let _b = broker(&sb, &nats.url(), 20_000, &env).await;
    connected(&sa.path).await;
    connected(&sb.path).await;

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let bucket = js.get_key_value("mcpchat_queue_test").await.unwrap();
    let info = js
        .get_stream("KV_mcpchat_queue_test")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(
        info.config.max_age,
        std::time::Duration::from_millis(MAX_AGE_MS),
        "the broker has no queue max-age hook: build it with `cargo build -p mcp-chat-broker --features fault-injection` (./test.sh does)"
    );
    let mut changes = bucket.watch_all().await.unwrap();

    let mut a1 = ProtoClient::connect(&sa.path).await;
    assert_eq!(a1.enter().await, Reply::Waiting { position: 1 });
    // Its entry, then three renewals: each a new entry (a new key) after
    // the old one is deleted.
    let mut keys = Vec::new();
    while keys.len() < 4 {
        let change = within("the waiter's entry to be renewed", changes.next())
            .await
            .unwrap()
            .unwrap();
        if change.operation == async_nats::jetstream::kv::Operation::Put {
            assert!(!keys.contains(&change.key), "a new entry each time");
            keys.push(change.key);
        }
    }
    // B's newcomer meets it (or, entering just as A renews, waits and is
    // claimed by the renewed entry).
    let mut b1 = ProtoClient::connect(&sb.path).await;
    let reply = b1.enter().await;
    assert!(
        matches!(
            reply,
            Reply::Matched { .. } | Reply::Waiting { position: 1 }
        ),
        "{reply:?}"
    );
    let room = found(&mut a1).await;
    assert_eq!(found(&mut b1).await, room);
}
