//! What an agent sees: two real `mcp-chat` shims on the bench's broker. The
//! clock runs from writing a `send_message` tool call to one shim's stdin
//! until the other's stdout carries the `message.received` notification:
//! shim, broker, shim.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde_json::{Value, json};

use crate::baseline::Baseline;
use crate::broker::BrokerChild;
use crate::report::{MICROS, Report, Row, Target, micros};
use crate::shim::{ShimCommand, find_room_id};
use crate::stats::Summary;
use crate::{Plan, payload};

const SECTION: &str = "end to end";

pub async fn run(
    plan: &Plan,
    shim: &ShimCommand,
    broker: &BrokerChild,
    base: Option<&Baseline>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let latency = crate::on_own_thread(measure(
        plan.clone(),
        shim.clone(),
        broker.socket().to_owned(),
    ))
    .await?;
    let p50_ratio = base.map(|b| b.latency_ratio(latency.p50));
    let p99_ratio = base.map(|b| b.latency_ratio(latency.p99));
    report.add(
        Row::new(
            SECTION,
            "send_message → message.received p50",
            micros(latency.p50),
            MICROS,
        )
        .vs_baseline(p50_ratio)
        .target(Target::ratio_at_most(p50_ratio, 3.0)),
    );
    report.add(
        Row::new(
            SECTION,
            "send_message → message.received p99",
            micros(latency.p99),
            MICROS,
        )
        .vs_baseline(p99_ratio),
    );
    Ok(())
}

async fn measure(plan: Plan, shim: ShimCommand, socket: PathBuf) -> anyhow::Result<Summary> {
    let mut a = shim.spawn(&socket, "A")?;
    let mut b = shim.spawn(&socket, "B")?;
    for shim in [&mut a, &mut b] {
        shim.initialize().await?;
        shim.initialized().await?;
    }
    // Both calls go out before either result is read: enter_queue may wait
    // for a match, and the match needs the second call.
    let enter_a = a.call_tool("enter_queue", json!({})).await?;
    let enter_b = b.call_tool("enter_queue", json!({})).await?;
    let entered_a = a.tool_result(enter_a).await?;
    let entered_b = b.tool_result(enter_b).await?;
    let room_id = match find_room_id(&entered_b).or_else(|| find_room_id(&entered_a)) {
        Some(room_id) => room_id,
        // Neither result named the room: it comes as a notification.
        None => {
            let found = a.notification("chatroom.found", |_| true).await?;
            find_room_id(&found)
                .with_context(|| format!("chatroom.found without a room id: {found}"))?
        }
    };

    // Fewer warm-up rounds than the relay: each is a full MCP round trip.
    let warmup = plan.e2e_round_trips / 10;
    let mut samples = Vec::with_capacity(plan.e2e_round_trips);
    for i in 0..warmup + plan.e2e_round_trips {
        // The two take turns, as in a conversation. That matters: a shim
        // keeps every event for pulling until some tool result takes it, so
        // a session that only ever receives fills that buffer and stalls.
        let (sender, receiver) = if i % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let message = payload(i as u64);
        let id = sender.take_id();
        // Serialized before the clock starts: the client's own JSON work is
        // not the shim's latency.
        let mut call = serde_json::to_vec(&json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": "tools/call",
            "params": {"name": "send_message", "arguments": {"room_id": room_id.to_string(), "message": message}},
        }))?;
        call.push(b'\n');
        let start = Instant::now();
        sender.write_line(&call).await?;
        receiver
            .notification("message.received", |params| {
                params.get("message").and_then(Value::as_str) == Some(message.as_str())
            })
            .await
            .with_context(|| format!("waiting for message {i}"))?;
        let elapsed = start.elapsed();
        sender.tool_result(id).await.context("send_message")?;
        if i >= warmup {
            samples.push(elapsed);
        }
    }
    a.close().await?;
    b.close().await?;

    Summary::of(samples).context("no samples")
}
