//! `mcp-chat-bench`: measures mcp-chat against a minimal raw-socket relay on
//! the same machine, in one run, and prints a table (or JSON with `--json`).
//!
//! Sections, one file each, in the order they run:
//! - [`baseline`]: a minimal relay of raw Unix sockets and blocking threads;
//!   every other latency and throughput is reported as a ratio to it.
//! - [`broker_relay`]: two protocol clients through a real `mcp-chat-broker`.
//! - [`end_to_end`]: two real `mcp-chat` shims over stdio, JSON-RPC by hand.
//! - [`startup`]: `mcp-chat` spawn → `initialize`, with and without a broker.
//! - [`http`]: a `chat_status` round trip over `mcp-chat serve --http` (one
//!   kept-alive connection) against the same over stdio.
//! - [`scale`]: many concurrent sessions: broker memory and match rate.
//! - [`federation`]: brokers federated over a real NATS JetStream server,
//!   against NATS's own latency; the realm's match rate over 1, 2 and 4
//!   brokers (skipped, with a note, when no `nats-server` is found).
//!
//! Support: [`broker`] runs the broker child, [`shim`] drives `mcp-chat`
//! over stdio, [`stats`] computes percentiles, [`report`] prints. The raw
//! protocol client, the broker process and the `/proc` readers are the
//! shared dev-only `mcp-chat-testkit`, which the end-to-end tests use too.
//!
//! Targets are reported as met or missed and never fail the run; a broken
//! function (a message that never arrives, a timeout) always does.

// A benchmark's report is its output: printing to stdout is the point here.
#![allow(clippy::print_stdout)]

mod baseline;
mod broker;
mod broker_relay;
mod end_to_end;
mod federation;
mod http;
mod report;
mod scale;
mod shim;
mod startup;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};

use crate::broker::BrokerChild;
use crate::report::Report;
use crate::shim::ShimCommand;

/// Benchmarks mcp-chat: relay latency and throughput against a raw-socket
/// baseline, end to end through two `mcp-chat` shims, start-up time, and
/// broker memory and match rate with many sessions.
///
/// Build the binaries first: `cargo build --release --workspace --bins`.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Small counts for a CI smoke test (well under 30 s). Speed is never
    /// asserted; a functional failure still exits non-zero.
    #[arg(long)]
    quick: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The broker binary [default: mcp-chat-broker next to this executable].
    #[arg(long, value_name = "PATH")]
    broker: Option<PathBuf>,
    /// The shim binary [default: mcp-chat next to this executable].
    #[arg(long, value_name = "PATH")]
    shim: Option<PathBuf>,
    /// Concurrent sessions in the scale section [default: 10000, or 1000
    /// with --quick].
    #[arg(long, value_name = "N")]
    sessions: Option<usize>,
    /// Run only these sections (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SECTION")]
    only: Vec<Section>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    Baseline,
    Relay,
    EndToEnd,
    Startup,
    Http,
    Scale,
    Federation,
}

/// How much of everything to do; `--quick` shrinks it all.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    /// Round trips discarded before measuring, so caches and the allocator
    /// are warm and the first page faults are not counted.
    pub warmup: usize,
    pub latency_round_trips: usize,
    /// Pairs streaming at once in the throughput runs.
    pub stream_pairs: usize,
    pub messages_per_pair: usize,
    /// Throughput runs, of which the best counts: on a shared machine other
    /// work only ever slows a run down, so the best is the least disturbed.
    pub throughput_runs: usize,
    /// Messages in flight per pair. Well under the broker's 1024-frame outbox,
    /// which drops a session that falls that far behind.
    pub window: usize,
    pub e2e_round_trips: usize,
    pub startup_runs: usize,
    /// `chat_status` round trips over each of stdio and HTTP.
    pub http_round_trips: usize,
    pub sessions: usize,
}

impl Plan {
    fn new(quick: bool, sessions: Option<usize>) -> Self {
        if quick {
            Self {
                quick,
                warmup: 200,
                latency_round_trips: 2_000,
                stream_pairs: 4,
                messages_per_pair: 10_000,
                throughput_runs: 1,
                window: 256,
                e2e_round_trips: 100,
                startup_runs: 3,
                http_round_trips: 50,
                sessions: sessions.unwrap_or(1_000),
            }
        } else {
            Self {
                quick,
                warmup: 2_000,
                latency_round_trips: 50_000,
                stream_pairs: 4,
                messages_per_pair: 150_000,
                throughput_runs: 3,
                window: 256,
                e2e_round_trips: 5_000,
                startup_runs: 20,
                http_round_trips: 2_000,
                sessions: sessions.unwrap_or(10_000),
            }
        }
    }
}

/// A reader hands back flow-control credit after this many messages, or
/// sooner when its input runs dry, so credit costs no lock per message.
pub const CREDIT_BATCH: u64 = 32;

/// How long any single wait may take before the run counts as broken. Long
/// enough for a loaded 2-core CI box; a healthy run never comes close.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut` for at most [`WAIT`]. Writes need this as much as reads: a
/// peer that stops reading fills the socket buffer and blocks the writer.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {WAIT:?} {what}"))
}

/// The payload every relay carries: 64 bytes of ASCII, starting with the
/// sequence number in hex so receivers can check order and loss.
pub const PAYLOAD_BYTES: usize = 64;

pub fn payload(seq: u64) -> String {
    format!("{seq:016x}{}", ".".repeat(PAYLOAD_BYTES - 16))
}

/// The sequence number [`payload`] put in front of a message.
pub fn payload_seq(message: &str) -> anyhow::Result<u64> {
    message
        .get(..16)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .with_context(|| format!("message {message:?} is not a bench payload"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("mcp-chat-bench: encoding the report: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mcp-chat-bench: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<Report> {
    let plan = Plan::new(args.quick, args.sessions);
    let wanted = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let binaries = Binaries {
        broker: binary(args.broker.as_deref(), "mcp-chat-broker")?,
        // Only the shim sections need it; a broker-only run works without.
        shim: if wanted(Section::EndToEnd) || wanted(Section::Startup) || wanted(Section::Http) {
            Some(binary(args.shim.as_deref(), "mcp-chat")?)
        } else {
            None
        },
    };
    let mut report = Report::new(plan.quick);

    // The baseline runs before any runtime exists: plain threads, nothing else
    // competing for the two cores.
    let base = if wanted(Section::Baseline) {
        progress("baseline: raw Unix socket relay");
        let base = baseline::run(&plan).context("baseline")?;
        base.report(&mut report);
        Some(base)
    } else {
        None
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        tokio::select! {
            result = sections(&plan, &wanted, &binaries, base.as_ref(), &mut report) => result,
            // Returning drops every child handle and temporary directory, so
            // an interrupted run still cleans up after itself.
            () = interrupted() => bail!("interrupted"),
        }
    });
    // A measuring thread still blocked on a child must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result?;
    report.finish();
    Ok(report)
}

struct Binaries {
    broker: PathBuf,
    shim: Option<PathBuf>,
}

impl Binaries {
    /// How to start the shim, with this run's broker for its auto-start.
    fn shim(&self) -> anyhow::Result<ShimCommand> {
        Ok(ShimCommand {
            shim: self
                .shim
                .clone()
                .context("the shim binary was not located")?,
            broker: self.broker.clone(),
        })
    }
}

async fn sections(
    plan: &Plan,
    wanted: &impl Fn(Section) -> bool,
    binaries: &Binaries,
    base: Option<&baseline::Baseline>,
    report: &mut Report,
) -> anyhow::Result<()> {
    if [
        Section::Relay,
        Section::EndToEnd,
        Section::Startup,
        Section::Http,
    ]
    .into_iter()
    .any(wanted)
    {
        // One broker serves relay, end-to-end, warm start-up and HTTP; the scale
        // section starts its own so its memory figures start clean.
        let mut broker = BrokerChild::start(&binaries.broker, None).await?;
        if wanted(Section::Relay) {
            progress("broker relay: latency and throughput");
            broker_relay::run(plan, &broker, base, report)
                .await
                .context("broker relay")?;
            broker.check_alive()?;
        }
        if wanted(Section::EndToEnd) {
            progress("end to end: two mcp-chat shims over stdio");
            end_to_end::run(plan, &binaries.shim()?, &broker, base, report)
                .await
                .context("end to end")?;
            broker.check_alive()?;
        }
        if wanted(Section::Startup) {
            progress("start-up: mcp-chat spawn to initialize");
            startup::run(plan, &binaries.shim()?, &broker, report)
                .await
                .context("start-up")?;
            broker.check_alive()?;
        }
        if wanted(Section::Http) {
            progress("http: chat_status over HTTP (keep-alive) and over stdio");
            http::run(plan, &binaries.shim()?, broker.socket().to_owned(), report)
                .await
                .context("http")?;
            broker.check_alive()?;
        }
        broker.stop().await?;
    }
    if wanted(Section::Scale) {
        progress(&format!("scale: {} concurrent sessions", plan.sessions));
        scale::run(plan, &binaries.broker, report)
            .await
            .context("scale")?;
    }
    if wanted(Section::Federation) {
        if mcp_chat_testkit::nats::server_bin().is_some() {
            progress("federation: brokers over NATS JetStream, against NATS itself");
            federation::run(plan, &binaries.broker, report)
                .await
                .context("federation")?;
        } else {
            report.note(
                "federation section skipped: no nats-server (./test.sh installs it into .venv; or set MCP_CHAT_NATS_SERVER)",
            );
        }
    }
    Ok(())
}

/// Ctrl-C or SIGTERM (a CI timeout, say).
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `explicit`, else `name` beside this executable: `cargo build --release
/// --workspace --bins` puts every binary of the workspace in one directory.
fn binary(explicit: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX)),
    };
    if !path.is_file() {
        bail!(
            "{} not found; run `cargo build --release --workspace --bins` or pass its path",
            path.display()
        );
    }
    Ok(path)
}

/// Runs `job` on a thread of its own with a single-threaded runtime. The
/// latency runs use it because the baseline's driver is one plain thread:
/// what they measure is then the system under test, not the time the
/// bench's own multi-threaded scheduler takes to hand a ready socket from one
/// worker thread to another.
pub async fn on_own_thread<T: Send + 'static>(
    job: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a single-threaded runtime")?
            .block_on(job)
    })
    .await
    .context("a measuring thread panicked")?
}

/// Progress goes to stderr so stdout holds only the report.
pub fn progress(what: &str) {
    eprintln!("mcp-chat-bench: {what}");
}
