//! Knobs of a running broker.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    /// Exit after this long with no connected sessions; `None` runs forever.
    pub idle_exit: Option<Duration>,
    /// Connections beyond this are refused with `broker_full`.
    pub max_sessions: usize,
    /// Frames buffered for one session before it counts as a slow consumer
    /// and is disconnected. Large enough for any burst a live client reads.
    pub outbox_capacity: usize,
    /// How long a new connection may take to send its `Hello`.
    pub handshake_timeout: Duration,
    /// How long shutdown waits for sessions to flush before cutting them off.
    pub drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            idle_exit: None,
            max_sessions: 50_000,
            outbox_capacity: 1024,
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(3),
        }
    }
}
