//! How long an MCP client waits for `mcp-chat` to come up, and what it costs
//! in memory: spawn → `initialize` result, and spawn → first tool result,
//! once with the bench's broker already running and once with none, so the
//! shim has to start one (a fresh socket directory every run).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mcp_chat_proto::socket_path::broker_lock_path;
use serde_json::json;

use crate::Plan;
use crate::broker::{BrokerChild, EXIT_GRACE, temp_dir};
use crate::report::{MB, MILLIS, Report, Row, Target, mb, millis};
use crate::shim::ShimCommand;
use crate::stats::Summary;
use mcp_chat_testkit::sys;

const SECTION: &str = "start-up";

/// One start of the shim.
struct Start {
    initialize: Duration,
    first_tool: Duration,
    rss_after_initialize: u64,
}

pub async fn run(
    plan: &Plan,
    shim: &ShimCommand,
    broker: &BrokerChild,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut warm = Vec::new();
    for _ in 0..plan.startup_runs {
        warm.push(
            start_once(shim, broker.socket())
                .await
                .context("with a broker running")?,
        );
    }
    let mut cold = Vec::new();
    for _ in 0..plan.startup_runs {
        cold.push(
            cold_start(shim)
                .await
                .context("with no broker (auto-start)")?,
        );
    }
    let summary = |runs: &[Start], pick: fn(&Start) -> Duration| {
        Summary::of(runs.iter().map(pick).collect()).context("no runs")
    };
    let runs = plan.startup_runs;

    let warm_init = summary(&warm, |s| s.initialize)?;
    report.add(
        Row::new(
            SECTION,
            format!("spawn → initialize, broker running (p50 of {runs})"),
            millis(warm_init.p50),
            MILLIS,
        )
        .target(Target::at_most(millis(warm_init.p50), 20.0, "≤ 20 ms")),
    );
    let warm_tool = summary(&warm, |s| s.first_tool)?;
    report.add(Row::new(
        SECTION,
        format!("spawn → first tool result, broker running (p50 of {runs})"),
        millis(warm_tool.p50),
        MILLIS,
    ));
    let cold_init = summary(&cold, |s| s.initialize)?;
    report.add(Row::new(
        SECTION,
        format!("spawn → initialize, no broker (p50 of {runs})"),
        millis(cold_init.p50),
        MILLIS,
    ));
    // The shim reaches for its broker lazily, on the first tool call, so
    // only the tool result includes the auto-start: the cold-start target
    // applies to that.
    let cold_tool = summary(&cold, |s| s.first_tool)?;
    report.add(
        Row::new(
            SECTION,
            format!("spawn → first tool result, auto-start (p50 of {runs})"),
            millis(cold_tool.p50),
            MILLIS,
        )
        .target(Target::at_most(millis(cold_tool.p50), 150.0, "≤ 150 ms")),
    );
    let rss = warm
        .iter()
        .chain(&cold)
        .map(|s| s.rss_after_initialize)
        .max()
        .unwrap_or_default();
    report.add(
        Row::new(SECTION, "mcp-chat RSS after initialize (max)", mb(rss), MB)
            .target(Target::at_most(mb(rss), 10.0, "≤ 10 MB")),
    );
    Ok(())
}

/// With no broker on a fresh socket: the shim must start one. That broker
/// outlives the shim by design, so it is stopped here through its lock file.
async fn cold_start(shim: &ShimCommand) -> anyhow::Result<Start> {
    let dir = temp_dir()?;
    let socket = dir.path().join("sock").join("broker.sock");
    let guard = AutoStarted {
        lock: broker_lock_path(&socket),
    };
    let start = start_once(shim, &socket).await?;
    if sys::lock_holder(&guard.lock)?.is_none() {
        bail!(
            "the shim answered a tool call with no broker holding {}",
            guard.lock.display()
        );
    }
    sys::stop_lock_holder(&guard.lock, EXIT_GRACE).await?;
    Ok(start)
}

async fn start_once(shim: &ShimCommand, socket: &Path) -> anyhow::Result<Start> {
    let began = Instant::now();
    let mut shim = shim.spawn(socket, "start-up")?;
    shim.initialize().await?;
    let initialize = began.elapsed();
    let rss_after_initialize = sys::rss_bytes(shim.pid())?;
    shim.initialized().await?;
    // chat_status needs the broker, so this includes connecting (or
    // starting) it, however lazily the shim does that.
    shim.tool("chat_status", json!({})).await?;
    let first_tool = began.elapsed();
    shim.close().await?;
    Ok(Start {
        initialize,
        first_tool,
        rss_after_initialize,
    })
}

/// Kills an auto-started broker if a cold run fails half-way.
struct AutoStarted {
    lock: PathBuf,
}

impl Drop for AutoStarted {
    fn drop(&mut self) {
        sys::kill_lock_holder(&self.lock);
    }
}
