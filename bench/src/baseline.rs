//! The yardstick: a minimal relay. Raw Unix sockets, blocking std I/O, one
//! thread per direction, fixed 64-byte messages, no parsing: each message is
//! read with one `read` and passed on with one `write`. Ratios against it say
//! what the broker adds (JSON, the hub hop, the async runtime) and what its
//! batching wins back.
//!
//! Throughput is also measured through a batched relay (read what is there,
//! write it all, flush when the input runs dry), the most this machine can
//! move through a relay thread. It is reported as an upper bound; targets
//! are judged against the minimal relay.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Barrier, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::report::{MICROS, Report, Row, micros};
use crate::stats::{Summary, per_event, rate};
use crate::{PAYLOAD_BYTES, Plan, WAIT, payload, payload_seq};
use mcp_chat_testkit::sys;

const SECTION: &str = "baseline";
/// Socket-side buffers: large enough that a full window is one syscall.
const BUF_BYTES: usize = 64 * 1024;

pub struct Baseline {
    pub latency: Summary,
    /// Messages per second delivered, all pairs together, minimal relay.
    pub throughput: f64,
    /// CPU time of the whole baseline (relay and clients) per message.
    pub cpu_per_message: Duration,
    /// The same through the batched relay.
    pub throughput_batched: f64,
}

/// How a relay thread moves messages.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// One `read` and one `write` per message.
    PerMessage,
    /// Buffered both ways, flushed when the input in hand is used up.
    Batched,
}

impl Baseline {
    /// How many times slower than the baseline a one-way p50 is.
    pub fn latency_ratio(&self, p50: Duration) -> f64 {
        p50.as_secs_f64() / self.latency.p50.as_secs_f64()
    }

    /// What fraction of the baseline's throughput a rate is.
    pub fn throughput_ratio(&self, rate: f64) -> f64 {
        rate / self.throughput
    }

    pub fn report(&self, report: &mut Report) {
        report.add(Row::new(
            SECTION,
            "one-way latency p50",
            micros(self.latency.p50),
            MICROS,
        ));
        report.add(Row::new(
            SECTION,
            "one-way latency p99",
            micros(self.latency.p99),
            MICROS,
        ));
        report.add(Row::new(
            SECTION,
            "relay throughput",
            self.throughput,
            "msg/s",
        ));
        report.add(Row::new(
            SECTION,
            "CPU per message, relay + clients",
            micros(self.cpu_per_message),
            MICROS,
        ));
        report.add(
            Row::new(
                SECTION,
                "relay throughput, batched relay (upper bound)",
                self.throughput_batched,
                "msg/s",
            )
            .vs_baseline(Some(self.throughput_ratio(self.throughput_batched))),
        );
    }
}

pub fn run(plan: &Plan) -> anyhow::Result<Baseline> {
    let latency = latency(plan).context("latency")?;
    let minimal = best_of(plan, Mode::PerMessage).context("throughput")?;
    Ok(Baseline {
        latency,
        throughput: minimal.0,
        cpu_per_message: minimal.1,
        throughput_batched: best_of(plan, Mode::Batched)
            .context("batched throughput")?
            .0,
    })
}

/// Ping-pong through the relay, one driver thread playing both clients, as
/// the broker run does: A → relay → B, B → relay → A; half of that is one way.
fn latency(plan: &Plan) -> anyhow::Result<Summary> {
    let (relay, mut pairs) = Relay::start(1, Mode::PerMessage)?;
    let (mut a, mut b) = pairs.pop().context("the relay made no pair")?;
    let mut samples = Vec::with_capacity(plan.latency_round_trips);
    let mut buf = [0u8; PAYLOAD_BYTES];
    for i in 0..plan.warmup + plan.latency_round_trips {
        let msg = payload(i as u64);
        let start = Instant::now();
        a.write_all(msg.as_bytes())?;
        b.read_exact(&mut buf)
            .context("B waiting for A's message")?;
        b.write_all(&buf)?;
        a.read_exact(&mut buf).context("A waiting for B's reply")?;
        let round_trip = start.elapsed();
        if buf != msg.as_bytes() {
            bail!("the relay garbled message {i}");
        }
        if i >= plan.warmup {
            samples.push(round_trip / 2);
        }
    }
    drop((a, b));
    relay.finish()?;
    Summary::of(samples).context("no samples")
}

/// The best of `plan.throughput_runs` runs.
fn best_of(plan: &Plan, mode: Mode) -> anyhow::Result<(f64, Duration)> {
    let mut best: Option<(f64, Duration)> = None;
    for _ in 0..plan.throughput_runs {
        let run = throughput(plan, mode)?;
        if best.is_none_or(|b| run.0 > b.0) {
            best = Some(run);
        }
    }
    best.context("no throughput runs")
}

/// Several pairs at once, each A streaming to its B with `plan.window`
/// messages in flight; counts messages B received per second, all pairs.
/// Also returns this process's CPU time per message: relay and clients.
fn throughput(plan: &Plan, mode: Mode) -> anyhow::Result<(f64, Duration)> {
    let (relay, pairs) = Relay::start(plan.stream_pairs, mode)?;
    let n = plan.messages_per_pair as u64;
    let start = Arc::new(Barrier::new(2 * pairs.len() + 1));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (a, b) in pairs {
        let credit = Arc::new(Credit::new(plan.window as u64));
        let (go, window) = (start.clone(), credit.clone());
        writers.push(std::thread::spawn(move || {
            go.wait();
            stream(a, n, &window)
        }));
        let go = start.clone();
        readers.push(std::thread::spawn(move || {
            go.wait();
            drain(b, n, &credit)
        }));
    }
    let cpu_before = sys::cpu_time(std::process::id())?;
    start.wait();
    let began = Instant::now();
    let mut last = began;
    for reader in readers {
        last = last.max(join(reader)?);
    }
    for writer in writers {
        join(writer)?;
    }
    let cpu = sys::cpu_time(std::process::id())?.saturating_sub(cpu_before);
    relay.finish()?;
    let messages = plan.stream_pairs * plan.messages_per_pair;
    Ok((rate(messages, last - began), per_event(cpu, messages)))
}

fn stream(a: UnixStream, n: u64, credit: &Credit) -> anyhow::Result<()> {
    let mut out = BufWriter::with_capacity(BUF_BYTES, a);
    let mut sent = 0;
    while sent < n {
        let allowed = credit.room(sent)?.min(n - sent);
        for _ in 0..allowed {
            out.write_all(payload(sent).as_bytes())?;
            sent += 1;
        }
        out.flush()?;
    }
    Ok(())
}

/// Reads all `n` messages in order; returns when the last one arrived.
fn drain(b: UnixStream, n: u64, credit: &Credit) -> anyhow::Result<Instant> {
    let mut input = BufReader::with_capacity(BUF_BYTES, b);
    let mut buf = [0u8; PAYLOAD_BYTES];
    let mut unreported = 0;
    for seq in 0..n {
        input
            .read_exact(&mut buf)
            .with_context(|| format!("waiting for message {seq} of {n}"))?;
        let got = payload_seq(std::str::from_utf8(&buf).context("payload is not UTF-8")?)?;
        if got != seq {
            bail!("message {got} arrived where {seq} was due");
        }
        unreported += 1;
        if unreported >= crate::CREDIT_BATCH || input.buffer().is_empty() {
            credit.add(unreported);
            unreported = 0;
        }
    }
    Ok(Instant::now())
}

/// Flow control: a writer may run `window` messages ahead of its reader.
struct Credit {
    received: Mutex<u64>,
    more: Condvar,
    window: u64,
}

impl Credit {
    fn new(window: u64) -> Self {
        Self {
            received: Mutex::new(0),
            more: Condvar::new(),
            window,
        }
    }

    /// Blocks until fewer than `window` are in flight; returns how many more
    /// may be sent.
    fn room(&self, sent: u64) -> anyhow::Result<u64> {
        let mut received = self.received.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let in_flight = sent - *received;
            if in_flight < self.window {
                return Ok(self.window - in_flight);
            }
            let (guard, waited) = self
                .more
                .wait_timeout(received, WAIT)
                .unwrap_or_else(PoisonError::into_inner);
            if waited.timed_out() {
                bail!("the reader made no progress for {WAIT:?}");
            }
            received = guard;
        }
    }

    fn add(&self, count: u64) {
        *self.received.lock().unwrap_or_else(PoisonError::into_inner) += count;
        self.more.notify_one();
    }
}

/// The relay: per pair, one thread A → B and one B → A.
struct Relay {
    threads: Vec<JoinHandle<io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// Starts `pairs` relayed pairs and returns the client ends (A, B).
    fn start(pairs: usize, mode: Mode) -> anyhow::Result<(Self, Vec<(UnixStream, UnixStream)>)> {
        let dir = crate::broker::temp_dir()?;
        let path = dir.path().join("relay.sock");
        let listener = UnixListener::bind(&path).context("binding the relay socket")?;
        let mut ends = Vec::new();
        let mut threads = Vec::new();
        let accept = || -> anyhow::Result<(UnixStream, UnixStream)> {
            // Connect, then accept: a Unix connect completes into the backlog,
            // so one thread can do both and knows which end is which.
            let client = UnixStream::connect(&path).context("connecting to the relay")?;
            client.set_read_timeout(Some(WAIT))?;
            client.set_write_timeout(Some(WAIT))?;
            let (server, _) = listener.accept().context("accepting")?;
            Ok((client, server))
        };
        for _ in 0..pairs {
            let (a, relay_a) = accept()?;
            let (b, relay_b) = accept()?;
            let (a_in, b_out) = (relay_a.try_clone()?, relay_b.try_clone()?);
            let forward = match mode {
                Mode::PerMessage => forward_per_message,
                Mode::Batched => forward_batched,
            };
            threads.push(std::thread::spawn(move || forward(a_in, b_out)));
            threads.push(std::thread::spawn(move || forward(relay_b, relay_a)));
            ends.push((a, b));
        }
        Ok((Self { threads, _dir: dir }, ends))
    }

    /// Waits for every relay thread; call after dropping the client ends.
    fn finish(self) -> anyhow::Result<()> {
        for thread in self.threads {
            join(thread)?;
        }
        Ok(())
    }
}

/// Copies whole messages from `from` to `to`, one `write` each, until
/// `from` closes.
fn forward_per_message(mut from: UnixStream, mut to: UnixStream) -> io::Result<()> {
    let mut msg = [0u8; PAYLOAD_BYTES];
    loop {
        match from.read_exact(&mut msg) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        to.write_all(&msg)?;
    }
    pass_on_close(&to)
}

/// Copies whole messages from `from` to `to` in batches until `from` closes.
fn forward_batched(from: UnixStream, to: UnixStream) -> io::Result<()> {
    let mut input = BufReader::with_capacity(BUF_BYTES, from);
    let mut output = BufWriter::with_capacity(BUF_BYTES, to);
    let mut msg = [0u8; PAYLOAD_BYTES];
    loop {
        match input.read_exact(&mut msg) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        output.write_all(&msg)?;
        // Flush once the input in hand is used up: a pipelined burst goes
        // out in one write, a lone message at once.
        if input.buffer().is_empty() {
            output.flush()?;
        }
    }
    output.flush()?;
    pass_on_close(output.get_ref())
}

/// Passes a close on, so the far client sees EOF too; if it has already
/// gone, there is nobody left to tell.
fn pass_on_close(to: &UnixStream) -> io::Result<()> {
    match to.shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}

fn join<T, E>(thread: JoinHandle<Result<T, E>>) -> anyhow::Result<T>
where
    anyhow::Error: From<E>,
{
    match thread.join() {
        Ok(result) => Ok(result?),
        Err(_) => bail!("a baseline thread panicked"),
    }
}
