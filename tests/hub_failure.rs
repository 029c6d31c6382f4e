//! A broker whose hub (the task owning all chat state) dies must not live on
//! as an empty shell holding the socket and the lock: it exits non-zero,
//! gives up its socket and lock, and the next shim starts a fresh broker.
//!
//! The hub is made to panic by SIGUSR1, a hook compiled in only with the
//! broker's `fault-injection` feature, which `./test.sh` builds.

#![cfg(unix)]
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use mcp_chat_tests::mcp_client::meet;
use mcp_chat_tests::{AutoStartedBroker, BrokerProcess, McpClient, ProtoClient, TestSocket};
use serde_json::json;

/// Makes the broker's hub panic and returns how the broker exited.
async fn kill_the_hub(broker: &mut BrokerProcess) -> ExitStatus {
    broker.signal(rustix::process::Signal::USR1);
    let status = broker.wait_exit().await;
    assert_ne!(
        status.signal(),
        Some(rustix::process::Signal::USR1.as_raw()),
        "the broker has no fault hook: build it with `cargo build -p mcp-chat-broker --features fault-injection` (./test.sh does)"
    );
    status
}

#[tokio::test]
async fn a_broker_whose_hub_panics_exits_and_frees_its_socket_and_lock() {
    let socket = TestSocket::new();
    let mut broker = BrokerProcess::start(&socket.path, &[]).await;
    let mut client = ProtoClient::connect(&socket.path).await;
    client.status().await;
    let status = kill_the_hub(&mut broker).await;
    assert_eq!(status.code(), Some(1), "exits non-zero: {status:?}");
    // Its sessions were ended, not left hanging.
    assert!(!matches!(client.next_frame().await, Some(Ok(_))));
    assert!(!socket.path.exists(), "the socket is removed");
    // The lock is free: a new broker can take the socket.
    let _fresh = BrokerProcess::start(&socket.path, &[]).await;
    let mut again = ProtoClient::connect(&socket.path).await;
    assert_eq!(again.status().await.sessions, 1);
}

#[tokio::test]
async fn shims_recover_against_a_fresh_broker_after_the_hub_panics() {
    let socket = TestSocket::new();
    let mut broker = BrokerProcess::start(&socket.path, &[]).await;
    let old_pid = broker.child.id().unwrap();
    let mut a = McpClient::spawn(&socket.path).await;
    let mut b = McpClient::spawn(&socket.path).await;
    let room = meet(&mut a, &mut b).await;

    let status = kill_the_hub(&mut broker).await;
    assert!(!status.success(), "exits non-zero: {status:?}");
    // Both shims reconnect by themselves, which starts a fresh broker.
    for client in [&mut a, &mut b] {
        let gone = client.expect_notification("partner.disconnected").await;
        assert_eq!(gone, json!({"room_id": room, "reason": "broker_restart"}));
    }
    // Told `broker_restart`, so they reached a broker with a new instance
    // id, which took the lock and wrote its pid there.
    let fresh = AutoStartedBroker::find(&socket.path).expect("a fresh broker holds the lock");
    assert_ne!(fresh.pid, old_pid);
    assert!(fresh.is_alive());
    let again = meet(&mut a, &mut b).await;
    assert_ne!(again, room);
    a.ok(
        "send_message",
        json!({"room_id": again, "message": "back", "untrusted": true}),
    )
    .await;
    assert_eq!(
        b.expect_notification("message.received").await,
        json!({"room_id": again, "message": "back", "untrusted": true})
    );
}
