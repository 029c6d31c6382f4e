//! Brokers federated over NATS JetStream (issue 12), on one real
//! `nats-server -js` on loopback, against NATS itself in the same run:
//!
//! - one-way latency: a core NATS publish → subscribe, a JetStream publish
//!   → pull-consumer delivery, and a chat message from a client of broker A
//!   to a client of broker B (client → broker → JetStream → broker →
//!   client). Each message is sent only after the previous one arrived, and
//!   timed from the send to its arrival, in this one process. JetStream
//!   and the cross-broker path take turns (100 samples each), so both meet
//!   the same load on a shared machine.
//! - cross-broker throughput: pairs streaming at once, and the NATS
//!   server's CPU per message and RSS meanwhile.
//! - the realm's match rate: sessions spread over 1, 2 and 4 brokers all
//!   enter at once; the time until every one is in a room of two.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer, stream};
use futures::{StreamExt, TryStreamExt};
use mcp_chat_proto::{ErrorCode, Reply, Request, RoomId};
use mcp_chat_testkit::nats::NatsServer;
use mcp_chat_testkit::{Client, sys};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::{BrokerChild, temp_dir};
use crate::report::{MB, MICROS, MILLIS, Report, Row, TIMES, Target, mb, micros, millis};
use crate::stats::{Summary, rate};
use crate::{Plan, payload};

const SECTION: &str = "federation";
const REALM: &str = "bench";
/// Handshakes in flight at once (see `scale`).
const CONNECT_CONCURRENCY: usize = 64;

pub async fn run(plan: &Plan, broker_bin: &Path, report: &mut Report) -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let nats = NatsServer::start(dir.path()).await?;
    let round_trips = if plan.quick { 200 } else { 5_000 };

    let core = core_latency(&nats, round_trips)
        .await
        .context("core NATS")?;
    let brokers = start_brokers(broker_bin, &nats, 2, None).await?;
    let (js, fed) = paired_latency(&nats, &brokers, round_trips).await?;
    for (what, s) in [
        ("core NATS publish → subscribe", core),
        ("JetStream publish → consume", js),
        ("cross-broker client → client", fed),
    ] {
        report.add(Row::new(
            SECTION,
            format!("{what}, p50 one-way"),
            micros(s.p50),
            MICROS,
        ));
        report.add(Row::new(
            SECTION,
            format!("{what}, p99 one-way"),
            micros(s.p99),
            MICROS,
        ));
    }
    let vs_js = fed.p50.as_secs_f64() / js.p50.as_secs_f64();
    report.add(
        Row::new(SECTION, "cross-broker p50 / JetStream p50", vs_js, TIMES)
            .target(Target::at_most(vs_js, 1.5, "≤ 1.5× JetStream's own")),
    );
    report.add(Row::new(
        SECTION,
        "cross-broker p50 / core NATS p50",
        fed.p50.as_secs_f64() / core.p50.as_secs_f64(),
        TIMES,
    ));

    // One cross-broker match at a time: a waiter on A, then an entrant on B.
    let matches = if plan.quick { 50 } else { 500 };
    let mut samples = Vec::with_capacity(matches);
    for _ in 0..matches {
        let began = Instant::now();
        let (x, y, _) = cross_pair(&brokers[0], &brokers[1]).await?;
        samples.push(began.elapsed());
        drop((x, y));
    }
    let m = Summary::of(samples).context("no samples")?;
    report.add(Row::new(
        SECTION,
        "one cross-broker match (connect, wait, enter, both found), p50",
        millis(m.p50),
        MILLIS,
    ));
    report.add(Row::new(
        SECTION,
        "one cross-broker match, p99",
        millis(m.p99),
        MILLIS,
    ));

    let per_pair = if plan.quick { 500 } else { 5_000 };
    let pairs = 4;
    let cpu_before = sys::cpu_time(nats.pid())?;
    let (count, elapsed) = throughput(&brokers, pairs, per_pair).await?;
    let cpu = sys::cpu_time(nats.pid())?.saturating_sub(cpu_before);
    report.add(Row::new(
        SECTION,
        format!("cross-broker throughput, {pairs} pairs"),
        rate(count, elapsed),
        "msg/s",
    ));
    report.add(Row::new(
        SECTION,
        "nats-server CPU per cross-broker message",
        micros(cpu / u32::try_from(count).unwrap_or(u32::MAX).max(1)),
        MICROS,
    ));
    report.add(Row::new(
        SECTION,
        "nats-server RSS after the throughput run",
        mb(sys::rss_bytes(nats.pid())?),
        MB,
    ));
    for b in brokers {
        b.stop().await?;
    }

    let sessions = if plan.quick {
        1_000
    } else {
        plan.sessions.min(10_000)
    } & !1;
    for count in [1, 2, 4] {
        let brokers = start_brokers(broker_bin, &nats, count, Some(sessions / count + 64)).await?;
        let cpu_before = sys::cpu_time(nats.pid())?;
        let elapsed = match_realm(&brokers, sessions).await?;
        let cpu = sys::cpu_time(nats.pid())?.saturating_sub(cpu_before);
        let pairs_per_s = rate(sessions / 2, elapsed);
        report.add(
            Row::new(
                SECTION,
                format!("realm match rate, {sessions} entering at once on {count} broker(s)"),
                pairs_per_s,
                "pairs/s",
            )
            .target(Target::at_least(pairs_per_s, 5_000.0, "≥ 5,000 pairs/s")),
        );
        report.add(Row::new(
            SECTION,
            format!("nats-server CPU per pair, {count} broker(s)"),
            micros(cpu / u32::try_from(sessions / 2).unwrap_or(u32::MAX).max(1)),
            MICROS,
        ));
        for b in brokers {
            b.stop().await?;
        }
    }
    report.add(Row::new(
        SECTION,
        "nats-server peak RSS",
        mb(sys::peak_rss_bytes(nats.pid())?),
        MB,
    ));
    Ok(())
}

async fn start_brokers(
    bin: &Path,
    nats: &NatsServer,
    count: usize,
    max_sessions: Option<usize>,
) -> anyhow::Result<Vec<BrokerChild>> {
    let args = vec![
        "--federation".to_owned(),
        nats.url(),
        "--realm".to_owned(),
        REALM.to_owned(),
    ];
    let mut brokers = Vec::new();
    for _ in 0..count {
        let broker = BrokerChild::start_with(bin, max_sessions, &args).await?;
        wait_in_realm(broker.socket()).await?;
        brokers.push(broker);
    }
    Ok(brokers)
}

async fn wait_in_realm(socket: &Path) -> anyhow::Result<()> {
    let mut client = Client::connect(socket).await?;
    crate::within("a broker joining the realm", async {
        loop {
            if let Reply::Status(info) = client.request(Request::Status).await?
                && info.federation.is_some_and(|f| f.connected)
            {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?
}

async fn core_latency(nats: &NatsServer, n: usize) -> anyhow::Result<Summary> {
    let client = async_nats::connect(nats.url()).await?;
    let mut sub = client.subscribe("bench.core").await?;
    client.flush().await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let began = Instant::now();
        client
            .publish("bench.core", payload(i as u64).into())
            .await?;
        crate::within("a core NATS message", sub.next())
            .await?
            .context("subscription ended")?;
        samples.push(began.elapsed());
    }
    Summary::of(samples).context("no samples")
}

/// Samples taken in turn from the JetStream baseline and the cross-broker
/// path: on a shared machine the load drifts within a run, and measured
/// one after the other the two would each meet a different share of it.
const TURN: usize = 100;

/// JetStream's own latency and the cross-broker one, `n` samples each,
/// taken in turns of [`TURN`] (both set up first, both warm).
async fn paired_latency(
    nats: &NatsServer,
    brokers: &[BrokerChild],
    n: usize,
) -> anyhow::Result<(Summary, Summary)> {
    let mut js = JetStreamProbe::new(nats).await.context("JetStream")?;
    let mut fed = BrokerProbe::new(brokers)
        .await
        .context("cross-broker latency")?;
    let (mut js_samples, mut fed_samples) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut i = 0;
    while i < n {
        let turn = TURN.min(n - i);
        for k in i..i + turn {
            js_samples.push(js.sample(k).await.context("JetStream")?);
        }
        for k in i..i + turn {
            fed_samples.push(fed.sample(k).await.context("cross-broker latency")?);
        }
        i += turn;
    }
    Ok((
        Summary::of(js_samples).context("no samples")?,
        Summary::of(fed_samples).context("no samples")?,
    ))
}

/// A JetStream publish (with an id) → pull-consumer delivery, as the
/// broker's own path uses JetStream.
struct JetStreamProbe {
    js: jetstream::Context,
    messages: consumer::pull::Stream,
}

impl JetStreamProbe {
    async fn new(nats: &NatsServer) -> anyhow::Result<Self> {
        let client = async_nats::connect(nats.url()).await?;
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(stream::Config {
                name: "BENCH".into(),
                subjects: vec!["bench.js".into()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                "bench",
                consumer::pull::Config {
                    durable_name: Some("bench".into()),
                    ..Default::default()
                },
            )
            .await?;
        let messages = consumer.messages().await?;
        Ok(Self { js, messages })
    }

    async fn sample(&mut self, i: usize) -> anyhow::Result<Duration> {
        let began = Instant::now();
        // As the broker publishes: with an id, and the ack awaited in
        // parallel with the delivery.
        let ack = self
            .js
            .send_publish(
                "bench.js",
                jetstream::message::PublishMessage::build()
                    .payload(payload(i as u64).into())
                    .message_id(i.to_string()),
            )
            .await?;
        let message = crate::within("a JetStream message", self.messages.next())
            .await?
            .context("consumer ended")?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let took = began.elapsed();
        message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        ack.await?;
        Ok(took)
    }
}

async fn cross_pair(a: &BrokerChild, b: &BrokerChild) -> anyhow::Result<(Client, Client, RoomId)> {
    let mut x = Client::connect(a.socket()).await?;
    let mut y = Client::connect(b.socket()).await?;
    match x.request(Request::EnterQueue(Default::default())).await? {
        Reply::Waiting { .. } => {}
        other => bail!("the first waiter should wait, got {other:?}"),
    }
    // As `Client::pair`: y is matched at once or a moment later (after the
    // broker pings x, which reading x answers); both are told by
    // `chatroom.found`, which y gets in either case.
    let reply = y.request(Request::EnterQueue(Default::default())).await?;
    let room = x.chatroom_found().await?;
    match reply {
        Reply::Matched { room_id, .. } if room_id == room => {}
        Reply::Waiting { .. } => {}
        other => bail!("no match into {room}: {other:?}"),
    }
    if y.chatroom_found().await? != room {
        bail!("one match, two rooms");
    }
    Ok((x, y, room))
}

/// A chat message from a client of broker A to a client of broker B.
struct BrokerProbe {
    x: Client,
    y: Client,
    room: RoomId,
}

impl BrokerProbe {
    async fn new(brokers: &[BrokerChild]) -> anyhow::Result<Self> {
        let (x, y, room) = cross_pair(&brokers[0], &brokers[1]).await?;
        Ok(Self { x, y, room })
    }

    async fn sample(&mut self, i: usize) -> anyhow::Result<Duration> {
        let message = payload(i as u64);
        let began = Instant::now();
        self.x
            .send(Request::SendMessage {
                room_id: self.room,
                message: message.clone(),
            })
            .await?;
        let got = self.y.next_message().await?;
        let took = began.elapsed();
        if got != message {
            bail!("expected {message:?}, got {got:?}");
        }
        // The `sent` reply, read after the clock stopped.
        match self.x.recv().await? {
            mcp_chat_proto::BrokerMsg::Response {
                reply: Reply::Sent, ..
            } => {}
            other => bail!("expected sent, got {other:?}"),
        }
        Ok(took)
    }
}

/// `pairs` cross-broker pairs each send `per_pair` messages at once, every
/// one awaited (`sent`) before the next; returns the messages and the time
/// until the last arrived.
async fn throughput(
    brokers: &[BrokerChild],
    pairs: usize,
    per_pair: usize,
) -> anyhow::Result<(usize, Duration)> {
    let mut rooms = Vec::new();
    for _ in 0..pairs {
        rooms.push(cross_pair(&brokers[0], &brokers[1]).await?);
    }
    let began = Instant::now();
    let mut tasks = JoinSet::new();
    for (mut x, mut y, room) in rooms {
        tasks.spawn(async move {
            let send = async {
                for i in 0..per_pair {
                    // Asked to wait (the room's credit: its earlier texts
                    // not yet stored in JetStream), it waits and sends the
                    // same text again, as a client does.
                    loop {
                        match x
                            .request(Request::SendMessage {
                                room_id: room,
                                message: payload(i as u64),
                            })
                            .await?
                        {
                            Reply::Sent => break,
                            Reply::Error {
                                code: ErrorCode::RateLimited,
                                retry_after_ms,
                                ..
                            } => {
                                let wait = retry_after_ms.unwrap_or(10);
                                tokio::time::sleep(Duration::from_millis(wait)).await;
                            }
                            other => bail!("send refused: {other:?}"),
                        }
                    }
                }
                anyhow::Ok(())
            };
            let receive = async {
                for i in 0..per_pair {
                    let got = y.next_message().await?;
                    if crate::payload_seq(&got)? != i as u64 {
                        bail!("out of order: {got:?} for {i}");
                    }
                }
                anyhow::Ok(())
            };
            let (s, r) = tokio::join!(send, receive);
            s.and(r)
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a pair panicked")??;
    }
    Ok((pairs * per_pair, began.elapsed()))
}

/// `sessions` spread evenly over `brokers` all enter at once; the time
/// until every one is in a room of exactly two.
async fn match_realm(brokers: &[BrokerChild], sessions: usize) -> anyhow::Result<Duration> {
    let sockets: Vec<_> = brokers.iter().map(|b| b.socket().to_owned()).collect();
    let clients: Vec<Client> = futures::stream::iter(0..sessions)
        .map(|i| {
            let socket = sockets[i % sockets.len()].clone();
            async move { Client::connect(&socket).await }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await
        .context("connecting the sessions")?;
    let (go, ready) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for mut client in clients {
        let mut ready = ready.clone();
        tasks.spawn(async move {
            ready.wait_for(|go| *go).await.context("start signal")?;
            client.send(Request::EnterQueue(Default::default())).await?;
            let room = client.chatroom_found().await?;
            anyhow::Ok((client, room, Instant::now()))
        });
    }
    go.send(true).context("start signal")?;
    let began = Instant::now();
    let mut last = began;
    let mut rooms: HashMap<RoomId, usize> = HashMap::new();
    let mut clients = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (client, room, at) = joined.context("a session panicked")??;
        last = last.max(at);
        *rooms.entry(room).or_default() += 1;
        clients.push(client);
    }
    if rooms.len() != sessions / 2 || rooms.values().any(|&n| n != 2) {
        bail!(
            "{sessions} sessions ended in {} rooms, not {} of two",
            rooms.len(),
            sessions / 2
        );
    }
    Ok(last - began)
}
