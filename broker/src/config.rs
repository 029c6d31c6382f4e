//! Knobs of a running broker.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    /// Exit after this long with no connected sessions; `None` runs forever.
    pub idle_exit: Option<Duration>,
    /// Sessions beyond this are refused with `broker_full`. The binary lowers
    /// it to what the file-descriptor limit allows (see `fd_limit`), and the
    /// accept loop serves at most this many connections plus a small
    /// handshake headroom, refusing the rest at once (see `server`).
    pub max_sessions: usize,
    /// Frames buffered for one session before it counts as a slow consumer
    /// and is detached. Large enough for any burst a live client reads.
    pub outbox_capacity: usize,
    /// How long a new connection may take to send its `Hello`.
    pub handshake_timeout: Duration,
    /// How long shutdown waits for sessions to flush before cutting them off.
    pub drain_timeout: Duration,
    pub liveness: Liveness,
    /// Per-session `send_message` limit; `None` lets a session send as fast
    /// as it likes (benchmarks and load tests).
    pub send_limit: Option<SendLimit>,
    /// Per-session limit on bytes of message text, beside `send_limit`:
    /// 20 short messages a second are a conversation, 20 of 16 KiB a flood
    /// of a model's context. `None` lifts it.
    pub byte_limit: Option<SendLimit>,
    /// Per-session limit on requests of any kind: they all run on the one
    /// hub task, so one session cannot take it over with status calls.
    /// Generous beside `send_limit`. `None` lifts it.
    pub request_limit: Option<SendLimit>,
    /// The file this broker logs to, reported in `Status` so that `mcp-chat
    /// doctor` can point at it; `None` when it logs to stderr.
    pub log_path: Option<PathBuf>,
    /// Where blocks between installations are kept across broker
    /// processes (see `block_file`); `None` keeps them in memory only.
    pub blocks_path: Option<PathBuf>,
    /// The realm to join over NATS; `None` keeps the broker to this machine.
    pub federation: Option<crate::federation::FederationConfig>,
}

/// Every per-session rate limit; `None` lifts one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Requests of any kind (see [`Config::request_limit`]).
    pub requests: Option<SendLimit>,
    pub messages: Option<SendLimit>,
    pub bytes: Option<SendLimit>,
}

/// Messages a session may send per second, sustained. Generous for any
/// conversation, human or model; a flood is refused with a retry hint.
pub const MESSAGES_PER_SECOND: f64 = 20.0;
/// Messages a session may send in a burst before the rate applies.
pub const MESSAGE_BURST: f64 = 40.0;

/// Requests of any kind one session may make per second, sustained.
pub const REQUESTS_PER_SECOND: f64 = 50.0;
/// Requests one session may make in a burst.
pub const REQUEST_BURST: f64 = 100.0;

/// Bytes of message text one session may send per second, sustained.
pub const BYTES_PER_SECOND: f64 = 64.0 * 1024.0;
/// Bytes of message text one session may send in a burst.
pub const BYTE_BURST: f64 = 256.0 * 1024.0;

/// Outbox frames beyond the replay buffer's events: room for the replies
/// and pings between them. Events alone never fill an outbox (see the
/// replay buffer in `state::liveness`), so an overflow means a client that
/// sends requests without reading the answers.
pub const OUTBOX_HEADROOM: usize = 64;

impl SendLimit {
    /// The default request limit (see [`Config::request_limit`]).
    pub fn requests() -> Self {
        Self {
            per_second: REQUESTS_PER_SECOND,
            burst: REQUEST_BURST,
        }
    }

    /// The default byte limit (see [`Config::byte_limit`]).
    pub fn bytes() -> Self {
        Self {
            per_second: BYTES_PER_SECOND,
            burst: BYTE_BURST,
        }
    }
}

/// A token bucket: `burst` messages at once, then `per_second` sustained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendLimit {
    pub per_second: f64,
    pub burst: f64,
}

impl Default for SendLimit {
    fn default() -> Self {
        Self {
            per_second: MESSAGES_PER_SECOND,
            burst: MESSAGE_BURST,
        }
    }
}

/// How the broker tells a live client from a frozen one.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// A connection silent this long is pinged.
    pub heartbeat: Duration,
    /// Pings that may go unanswered before the connection is dropped; the
    /// session then waits `resume_grace` for its client to come back.
    pub missed_heartbeats: u32,
    /// How long a dropped session keeps its room or queue place for a
    /// resume. Past it, the partner is told.
    pub resume_grace: Duration,
    /// A waiting session heard from this recently is matched at once; one
    /// quiet for longer is pinged first, so a frozen client is never matched.
    pub fresh: Duration,
    /// How long a waiting session may take to answer that ping.
    pub probe_timeout: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(10),
            missed_heartbeats: 3,
            resume_grace: Duration::from_secs(15),
            fresh: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(3),
        }
    }
}

impl Liveness {
    /// Every interval scaled from one heartbeat, for tests and `--heartbeat-ms`.
    pub fn scaled(heartbeat: Duration) -> Self {
        let default = Self::default();
        let scale = heartbeat.as_secs_f64() / default.heartbeat.as_secs_f64();
        Self {
            heartbeat,
            missed_heartbeats: default.missed_heartbeats,
            resume_grace: default.resume_grace.mul_f64(scale),
            fresh: default.fresh.mul_f64(scale),
            probe_timeout: default.probe_timeout.mul_f64(scale),
        }
    }

    /// Silence after which a connection is given up on.
    pub fn unresponsive_after(&self) -> Duration {
        self.heartbeat * self.missed_heartbeats
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            idle_exit: None,
            max_sessions: 50_000,
            outbox_capacity: crate::state::REPLAY_EVENTS + OUTBOX_HEADROOM,
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(3),
            liveness: Liveness::default(),
            send_limit: Some(SendLimit::default()),
            byte_limit: Some(SendLimit::bytes()),
            request_limit: Some(SendLimit::requests()),
            log_path: None,
            blocks_path: None,
            federation: None,
        }
    }
}

impl Config {
    /// The per-session limits the hub applies.
    pub fn limits(&self) -> Limits {
        Limits {
            requests: self.request_limit,
            messages: self.send_limit,
            bytes: self.byte_limit,
        }
    }
}
