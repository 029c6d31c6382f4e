//! Many sessions at once, on a broker of its own so its memory starts
//! clean: what each connected session costs the broker, and how fast it
//! pairs up a crowd that enters the queue all at once: first plain FIFO,
//! then (on a fresh broker, same crowd size) with the crowd spread evenly
//! over [`INTERESTS`] interests, every pair sharing one.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use mcp_chat_proto::{Entry, Reply, Request, RoomId};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::Plan;
use crate::broker::BrokerChild;
use crate::report::{BYTES, MB, Report, Row, Target, mb};
use crate::stats::rate;
use mcp_chat_testkit::Client;
use mcp_chat_testkit::sys;

const SECTION: &str = "scale";
/// The session count the memory target is written for.
const TARGET_SESSIONS: usize = 10_000;
/// File descriptors beyond one per session: the runtime, pipes, the
/// listener, the broker's log.
const FD_SLACK: usize = 256;
/// Interests the crowd is spread over in the interests run.
const INTERESTS: usize = 100;
/// Handshakes in flight at once. Far below the listen backlog, so a connect
/// never meets a full queue (which a Unix socket reports as EAGAIN).
const CONNECT_CONCURRENCY: usize = 64;

pub async fn run(plan: &Plan, broker_bin: &Path, report: &mut Report) -> anyhow::Result<()> {
    let sessions = sessions_within_fd_limit(plan.sessions, report);
    let mut broker = BrokerChild::start(broker_bin, Some(sessions + 16)).await?;
    let pid = broker.pid();
    let socket = broker.socket().to_owned();
    let rss_idle = sys::rss_bytes(pid)?;

    let began = Instant::now();
    let mut clients: Vec<Client> = futures::stream::iter(0..sessions)
        .map(|_| Client::connect(&socket))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await
        .context("connecting the sessions")?;
    let connect_time = began.elapsed();
    let status = match clients.first_mut() {
        Some(client) => client.request(Request::Status).await?,
        None => bail!("no sessions to measure"),
    };
    match status {
        Reply::Status(info) if info.sessions == sessions => {}
        other => bail!("expected {sessions} sessions in the broker's status, got {other:?}"),
    }
    let rss_connected = sys::rss_bytes(pid)?;

    let (clients, match_time) = match_all(clients, |_| Entry::default()).await?;
    let pairs = sessions / 2;
    let rss_matched = sys::rss_bytes(pid)?;
    let rss_peak = sys::peak_rss_bytes(pid)?;
    broker.check_alive()?;
    // Stop the broker first: it says goodbye to every session that is still
    // open, instead of logging thousands of broken pipes as they close.
    broker.stop().await?;
    drop(clients);

    let per_session = rss_matched.saturating_sub(rss_idle) / sessions as u64;
    report.add(Row::new(
        SECTION,
        "sessions connected at once",
        sessions as f64,
        "sessions",
    ));
    report.add(Row::new(
        SECTION,
        "connect + hello rate",
        rate(sessions, connect_time),
        "sessions/s",
    ));
    report.add(Row::new(SECTION, "broker RSS, idle", mb(rss_idle), MB));
    report.add(Row::new(
        SECTION,
        format!("broker RSS, {sessions} sessions connected"),
        mb(rss_connected),
        MB,
    ));
    let peak_row = Row::new(
        SECTION,
        format!("broker peak RSS, {sessions} sessions in {pairs} rooms"),
        mb(rss_peak),
        MB,
    );
    if sessions == TARGET_SESSIONS {
        report.add(peak_row.target(Target::at_most(mb(rss_peak), 150.0, "≤ 150 MB")));
    } else {
        // Too few (or more) sessions to judge the target directly: project
        // the measured per-session cost to the target's session count.
        report.add(peak_row);
        let projected = rss_idle + per_session * TARGET_SESSIONS as u64;
        report.add(
            Row::new(
                SECTION,
                "broker RSS projected to 10,000 sessions",
                mb(projected),
                MB,
            )
            .target(Target::at_most(mb(projected), 150.0, "≤ 150 MB")),
        );
    }
    report.add(Row::new(
        SECTION,
        "broker memory per session",
        per_session as f64,
        BYTES,
    ));
    let match_rate = rate(pairs, match_time);
    report.add(
        Row::new(SECTION, "queue enter + match rate", match_rate, "pairs/s")
            .target(Target::at_least(match_rate, 10_000.0, "≥ 10,000 pairs/s")),
    );

    let interest_time = match_with_interests(broker_bin, sessions).await?;
    let interest_rate = rate(pairs, interest_time);
    let ratio = interest_rate / match_rate;
    report.add(
        Row::new(
            SECTION,
            format!("match rate, {INTERESTS} interests"),
            interest_rate,
            "pairs/s",
        )
        .target(Target::at_least(ratio, 0.5, "≥ 50% of the FIFO rate")),
    );
    report.note(format!(
        "interests run: each session names one of {INTERESTS} interests, evenly spread, so every session pairs within its interest; {:.0}% of the plain FIFO rate measured just before",
        ratio * 100.0
    ));
    Ok(())
}

/// The same crowd on a fresh broker, session `i` naming interest
/// `i mod INTERESTS`: checks every room shares its interest, and returns
/// the time to the last match.
async fn match_with_interests(
    broker_bin: &Path,
    sessions: usize,
) -> anyhow::Result<std::time::Duration> {
    let mut broker = BrokerChild::start(broker_bin, Some(sessions + 16)).await?;
    let socket = broker.socket().to_owned();
    let clients: Vec<Client> = futures::stream::iter(0..sessions)
        .map(|_| Client::connect(&socket))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await
        .context("connecting the sessions for the interests run")?;
    let (clients, time) = match_all(clients, |i| Entry {
        interests: vec![interest(i)],
        ..Entry::default()
    })
    .await?;
    broker.check_alive()?;
    broker.stop().await?;
    drop(clients);
    Ok(time)
}

fn interest(session: usize) -> String {
    format!("topic-{}", session % INTERESTS)
}

/// All sessions send `EnterQueue` (session `i` with `entry(i)`) at the
/// same moment; returns once every one has its `ChatroomFound`, with the
/// time from the start signal to the last match. Checks that the rooms are
/// exactly pairs, and that the two in each named the same entry.
async fn match_all(
    clients: Vec<Client>,
    entry: impl Fn(usize) -> Entry,
) -> anyhow::Result<(Vec<Client>, std::time::Duration)> {
    let sessions = clients.len();
    let (go, ready) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let mut ready = ready.clone();
        let entry = entry(i);
        tasks.spawn(async move {
            ready
                .wait_for(|go| *go)
                .await
                .context("start signal lost")?;
            client.send(Request::EnterQueue(entry.clone())).await?;
            let room_id = client.chatroom_found().await?;
            anyhow::Ok((client, room_id, Instant::now(), entry))
        });
    }
    go.send(true).context("start signal")?;
    let began = Instant::now();
    let mut last = began;
    let mut rooms: HashMap<RoomId, Vec<Entry>> = HashMap::new();
    let mut clients = Vec::with_capacity(sessions);
    while let Some(joined) = tasks.join_next().await {
        let (client, room_id, matched_at, entry) = joined.context("a session task panicked")??;
        last = last.max(matched_at);
        rooms.entry(room_id).or_default().push(entry);
        clients.push(client);
    }
    if rooms
        .values()
        .any(|members| members.len() == 2 && members[0] != members[1])
    {
        bail!("a room paired two sessions that named different interests");
    }
    if rooms.len() != sessions / 2 || rooms.values().any(|members| members.len() != 2) {
        bail!(
            "{sessions} sessions ended up in {} rooms, not {} rooms of two",
            rooms.len(),
            sessions / 2
        );
    }
    Ok((clients, last - began))
}

/// Raises the open-file limit for the sessions (the broker child inherits
/// it) and, if the OS will not allow enough, runs fewer and says so.
fn sessions_within_fd_limit(wanted: usize, report: &mut Report) -> usize {
    let limit = sys::raise_nofile((wanted + FD_SLACK) as u64);
    if let Some(why) = &limit.refused {
        report.note(why.clone());
    }
    if limit.now > limit.before {
        report.note(format!(
            "raised RLIMIT_NOFILE from {} to {} for the scale run",
            limit.before, limit.now
        ));
    }
    let allowed = usize::try_from(limit.now)
        .unwrap_or(usize::MAX)
        .saturating_sub(FD_SLACK);
    // Even, so every session has a partner.
    let sessions = wanted.min(allowed) & !1;
    if sessions < wanted {
        report.note(format!(
            "ran {sessions} sessions instead of {wanted}: the open-file limit is {}",
            limit.now
        ));
    }
    sessions
}
