//! "`sent` means delivered or reported", checked against a receiver frozen
//! with SIGSTOP: its partner sends until the broker gives up on it, and
//! every message answered `sent` must then either reach the receiver once it
//! thaws, in order, or be counted `undelivered` in the sender's
//! `partner.disconnected`. Shared by the local and the cross-broker test.

use serde_json::{Value, json};

use crate::McpClient;

/// What the sender was told.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    /// Messages answered `sent`.
    pub sent: u64,
    pub undelivered: u64,
    pub unconfirmed: u64,
}

/// `a` sends numbered 16 KiB messages into `room` (waiting out
/// `rate_limited`, which sends nothing) until it is told `partner_gone`
/// (at most `cap` sent), then waits for its `partner.disconnected
/// {disconnected}` and returns the counts.
pub async fn send_until_partner_gone(a: &mut McpClient, room: &str, cap: u64) -> Counts {
    let filler = "x".repeat(mcp_chat_proto::MAX_MESSAGE_BYTES - 8);
    let mut sent = 0u64;
    loop {
        let result = a
            .call(
                "send_message",
                json!({"room_id": room, "message": format!("{sent:05} {filler}")}),
            )
            .await;
        if result.is_error == Some(true) {
            let failure: Value =
                serde_json::from_str(&result.content[0].as_text().unwrap().text).unwrap();
            // A full backlog on the receiver's side holds the sender back:
            // nothing is sent, so it simply sends again.
            if failure["error"] == "rate_limited" {
                continue;
            }
            assert_eq!(failure["error"], "partner_gone", "{failure}");
            break;
        }
        sent += 1;
        assert!(
            sent < cap,
            "the broker never gave up on the frozen receiver"
        );
    }
    let gone = loop {
        let (method, params) = a.notification().await;
        if method == "partner.disconnected" {
            break params;
        }
    };
    assert_eq!(gone["reason"], "disconnected", "{gone}");
    Counts {
        sent,
        undelivered: gone["undelivered"].as_u64().unwrap(),
        unconfirmed: gone["unconfirmed"].as_u64().unwrap(),
    }
}

/// The thawed receiver `b` reads what reached its socket, then finds its
/// session gone: what arrived came in order from the first, and with the
/// undelivered it adds up to exactly what was answered `sent`.
pub async fn assert_delivered_or_reported(b: &mut McpClient, counts: Counts) {
    let mut received = Vec::new();
    loop {
        let (method, params) = b.notification().await;
        match method.as_str() {
            "message.received" => {
                received.push(params["message"].as_str().unwrap()[..5].to_owned())
            }
            "partner.disconnected" => break,
            other => panic!("{other}: {params}"),
        }
    }
    let in_order: Vec<String> = (0..received.len()).map(|i| format!("{i:05}")).collect();
    assert_eq!(
        received, in_order,
        "what arrived, arrived in order from the first"
    );
    let received = received.len() as u64;
    let Counts {
        sent,
        undelivered,
        unconfirmed,
    } = counts;
    assert!(undelivered > 0, "the receiver's buffers filled up");
    assert_eq!(
        sent,
        received + undelivered,
        "every message answered sent reached the receiver or was reported ({unconfirmed} unconfirmed)"
    );
    assert!(
        unconfirmed <= received,
        "unconfirmed ones were on the receiver's side"
    );
}
