//! Federation checks seen from outside, with real processes and a real
//! `nats-server`: a broker shut down leaves the realm's queue at once.
//!
//! Some use test hooks of the broker's `fault-injection` feature
//! (`broker/src/federation/fault.rs`), which `./test.sh` builds; they are
//! inert unless the broker's environment asks for them.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::path::Path;

use mcp_chat_proto::matching::{Entry, Meet};
use mcp_chat_proto::{Reply, Request};
use mcp_chat_testkit::nats::NatsServer;
use mcp_chat_testkit::proto_client::wait_for_status;
use mcp_chat_tests::federation::{connected, start_broker, write_config};
use mcp_chat_tests::{BrokerProcess, ProtoClient, TestSocket};

/// The realm's queue bucket, as the brokers name it for realm `test`.
const QUEUE_BUCKET: &str = "mcpchat_queue_test";

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
