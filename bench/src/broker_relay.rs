//! The broker as a relay: two protocol clients in a room, measured exactly
//! as the baseline is (same payloads, same window, same batching), so the
//! ratios isolate the broker's own cost.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::SinkExt;
use mcp_chat_proto::{BrokerMsg, ClientMsg, Reply, Request, RoomId};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::baseline::Baseline;
use crate::broker::BrokerChild;
use crate::report::{MICROS, Report, Row, Target, micros};
use crate::stats::{Summary, per_event, rate};
use crate::{CREDIT_BATCH, Plan, WAIT, payload, payload_seq, within};
use mcp_chat_testkit::client::{self, Client, Reader, Writer};
use mcp_chat_testkit::sys;

const SECTION: &str = "broker relay";

pub async fn run(
    plan: &Plan,
    broker: &BrokerChild,
    base: Option<&Baseline>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let latency = crate::on_own_thread(latency(plan.clone(), broker.socket().to_owned()))
        .await
        .context("latency")?;
    let Streamed {
        throughput,
        broker_cpu,
        client_cpu,
    } = best_of(plan, broker).await.context("throughput")?;
    let p50_ratio = base.map(|b| b.latency_ratio(latency.p50));
    let p99_ratio = base.map(|b| b.latency_ratio(latency.p99));
    let throughput_ratio = base.map(|b| b.throughput_ratio(throughput));
    report.add(
        Row::new(SECTION, "one-way latency p50", micros(latency.p50), MICROS)
            .vs_baseline(p50_ratio)
            .target(Target::ratio_at_most(p50_ratio, 1.5)),
    );
    report.add(
        Row::new(SECTION, "one-way latency p99", micros(latency.p99), MICROS)
            .vs_baseline(p99_ratio),
    );
    report.add(
        Row::new(SECTION, "relay throughput", throughput, "msg/s")
            .vs_baseline(throughput_ratio)
            .target(Target::ratio_at_least(throughput_ratio, 0.6)),
    );
    // Where the CPU goes: on two cores, every microsecond the bench's own
    // clients spend is one the broker does not get.
    report.add(Row::new(
        SECTION,
        "broker CPU per message",
        micros(broker_cpu),
        MICROS,
    ));
    report.add(Row::new(
        SECTION,
        "bench clients' CPU per message",
        micros(client_cpu),
        MICROS,
    ));
    Ok(())
}

/// A sends, B receives the event and sends it back, A receives it; half the
/// round trip is one way. One task plays both, as in the baseline.
async fn latency(plan: Plan, socket: PathBuf) -> anyhow::Result<Summary> {
    let (mut a, mut b, room_id) = Client::pair(&socket).await?;
    let mut samples = Vec::with_capacity(plan.latency_round_trips);
    for i in 0..plan.warmup + plan.latency_round_trips {
        let message = payload(i as u64);
        let request = Request::SendMessage {
            room_id,
            message: message.clone(),
        };
        let start = Instant::now();
        a.send(request).await?;
        let got = b
            .next_message()
            .await
            .context("B waiting for A's message")?;
        b.send(Request::SendMessage {
            room_id,
            message: got,
        })
        .await?;
        let back = a.next_message().await.context("A waiting for B's reply")?;
        let round_trip = start.elapsed();
        if back != message {
            bail!("message {i} came back as {back:?}");
        }
        if i >= plan.warmup {
            samples.push(round_trip / 2);
        }
    }
    let (b_reader, _b_writer, _) = b.into_parts();
    client::part(a, b_reader, room_id).await?;
    Summary::of(samples).context("no samples")
}

/// The best of `plan.throughput_runs` runs, each with fresh pairs.
async fn best_of(plan: &Plan, broker: &BrokerChild) -> anyhow::Result<Streamed> {
    let mut best: Option<Streamed> = None;
    for _ in 0..plan.throughput_runs {
        let run = throughput(plan, broker).await?;
        if best.as_ref().is_none_or(|b| run.throughput > b.throughput) {
            best = Some(run);
        }
    }
    best.context("no throughput runs")
}

struct Streamed {
    /// Messages B received per second, all pairs together.
    throughput: f64,
    broker_cpu: Duration,
    client_cpu: Duration,
}

/// Several pairs at once, each A streaming to its B with `plan.window`
/// messages in flight; counts messages B received per second, all pairs.
async fn throughput(plan: &Plan, broker: &BrokerChild) -> anyhow::Result<Streamed> {
    let socket = broker.socket();
    let n = plan.messages_per_pair as u64;
    let (go, ready) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for _ in 0..plan.stream_pairs {
        let (a, b, room_id) = Client::pair(socket).await?;
        let window = Arc::new(Window::new(plan.window));
        let a_session = a.session_id;
        let (mut a_reader, mut a_writer, next_id) = a.into_parts();
        let (mut b_reader, b_writer, _) = b.into_parts();
        let mut ready = ready.clone();
        let w = window.clone();
        tasks.spawn(async move {
            // Nobody starts before every pair is connected and matched.
            ready
                .wait_for(|go| *go)
                .await
                .context("start signal lost")?;
            // One task for both of A's halves: closing A's write half early
            // would end the session before the broker sent the last `Sent`.
            tokio::try_join!(
                stream(&mut a_writer, next_id, room_id, n, &w),
                acks(&mut a_reader, n, &w)
            )?;
            let a = Client::from_parts(a_reader, a_writer, next_id + n, a_session);
            anyhow::Ok(Side::A { a, room_id })
        });
        tasks.spawn(async move {
            let finished = drain(&mut b_reader, n, &window).await?;
            anyhow::Ok(Side::B {
                reader: b_reader,
                writer: b_writer,
                room_id,
                finished,
            })
        });
    }
    let cpu_before = (
        sys::cpu_time(broker.pid())?,
        sys::cpu_time(std::process::id())?,
    );
    go.send(true).context("start signal")?;
    let began = Instant::now();
    let mut last = began;
    let mut a_sides = Vec::new();
    let mut b_sides = HashMap::new();
    while let Some(side) = tasks.join_next().await {
        match side.context("a stream task panicked")?? {
            Side::A { a, room_id } => a_sides.push((a, room_id)),
            Side::B {
                reader,
                writer,
                room_id,
                finished,
            } => {
                last = last.max(finished);
                b_sides.insert(room_id, (reader, writer));
            }
        }
    }
    let messages = plan.stream_pairs * plan.messages_per_pair;
    let broker_cpu = sys::cpu_time(broker.pid())?.saturating_sub(cpu_before.0);
    let client_cpu = sys::cpu_time(std::process::id())?.saturating_sub(cpu_before.1);
    let streamed = Streamed {
        throughput: rate(messages, last - began),
        broker_cpu: per_event(broker_cpu, messages),
        client_cpu: per_event(client_cpu, messages),
    };
    for (a, room_id) in a_sides {
        let (b_reader, _b_writer) = b_sides.remove(&room_id).context("a pair lost its B")?;
        client::part(a, b_reader, room_id).await?;
    }
    Ok(streamed)
}

/// What a stream task hands back, so the pair can part cleanly afterwards.
enum Side {
    A {
        a: Client,
        room_id: RoomId,
    },
    B {
        reader: Reader,
        /// Kept open until the pair has parted.
        writer: Writer,
        room_id: RoomId,
        finished: Instant,
    },
}

async fn stream(
    writer: &mut Writer,
    mut id: u64,
    room_id: RoomId,
    n: u64,
    window: &Window,
) -> anyhow::Result<()> {
    let mut sent = 0;
    while sent < n {
        let batch = u64::try_from(window.permits.available_permits())
            .unwrap_or(u64::MAX)
            .clamp(1, n - sent);
        let permits = tokio::time::timeout(
            WAIT,
            window
                .permits
                .acquire_many(u32::try_from(batch).context("window too large")?),
        )
        .await
        .with_context(|| format!("no flow-control credit for {WAIT:?}: the reader is stuck"))?
        .context("flow control closed")?;
        permits.forget();
        // One deadline per batch, not per message: the bench's own timer
        // work would otherwise count against the broker on two cores.
        within("writing to the broker", async {
            for _ in 0..batch {
                let request = Request::SendMessage {
                    room_id,
                    message: payload(sent),
                };
                writer.feed(ClientMsg::Request { id, request }).await?;
                id += 1;
                sent += 1;
            }
            writer.flush().await
        })
        .await??;
    }
    Ok(())
}

/// A's side: every request must be answered `Sent`.
async fn acks(reader: &mut Reader, n: u64, window: &Window) -> anyhow::Result<()> {
    let mut unreported = 0;
    for _ in 0..n {
        match client::recv(reader).await? {
            BrokerMsg::Response {
                reply: Reply::Sent, ..
            } => {}
            other => bail!("expected `sent`, got {other:?}"),
        }
        unreported += 1;
        if unreported >= CREDIT_BATCH || reader.read_buffer().is_empty() {
            window.acked.fetch_add(unreported, Ordering::Relaxed);
            window.progress();
            unreported = 0;
        }
    }
    Ok(())
}

/// B's side: all `n` messages, in order; returns when the last arrived.
async fn drain(reader: &mut Reader, n: u64, window: &Window) -> anyhow::Result<Instant> {
    let mut unreported = 0;
    for seq in 0..n {
        let message = client::next_message(reader)
            .await
            .with_context(|| format!("waiting for message {seq} of {n}"))?;
        let got = payload_seq(&message)?;
        if got != seq {
            bail!("message {got} arrived where {seq} was due");
        }
        unreported += 1;
        if unreported >= CREDIT_BATCH || reader.read_buffer().is_empty() {
            window.received.fetch_add(unreported, Ordering::Relaxed);
            window.progress();
            unreported = 0;
        }
    }
    Ok(Instant::now())
}

/// Flow control for one pair. A message stops counting as in flight once B
/// has read it *and* A has read its `Sent`: then neither session's outbox in
/// the broker can hold more than `window` frames, far from the point where
/// the broker drops a slow consumer.
struct Window {
    permits: Semaphore,
    acked: AtomicU64,
    received: AtomicU64,
    released: Mutex<u64>,
}

impl Window {
    fn new(window: usize) -> Self {
        Self {
            permits: Semaphore::new(window),
            acked: AtomicU64::new(0),
            received: AtomicU64::new(0),
            released: Mutex::new(0),
        }
    }

    fn progress(&self) {
        let done = self
            .acked
            .load(Ordering::Relaxed)
            .min(self.received.load(Ordering::Relaxed));
        let mut released = self.released.lock().unwrap_or_else(PoisonError::into_inner);
        if done > *released {
            self.permits
                .add_permits(usize::try_from(done - *released).unwrap_or(usize::MAX));
            *released = done;
        }
    }
}
