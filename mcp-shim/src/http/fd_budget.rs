//! The HTTP server's file-descriptor budget, as the broker keeps its own.
//! A session can hold three descriptors at once (its broker connection, its
//! open event stream, a call in flight), and a server out of descriptors
//! cannot accept a connection to answer it: clients hang unanswered instead
//! of getting the clear 503 of `--max-sessions`. So at start the server
//! raises its soft `RLIMIT_NOFILE` toward the hard limit and lowers the
//! session cap to what the descriptors it got can serve.

/// Descriptors one session may hold at once.
const FDS_PER_SESSION: u64 = 3;
/// Descriptors besides sessions: stdio, the listener, the runtime, and
/// connections being refused (503) or looked up meanwhile.
const RESERVED_FDS: u64 = 64;

/// Descriptors `sessions` sessions need at most.
pub fn fds_needed(sessions: usize) -> u64 {
    let sessions = u64::try_from(sessions).unwrap_or(u64::MAX);
    RESERVED_FDS.saturating_add(sessions.saturating_mul(FDS_PER_SESSION))
}

/// The most sessions `fds` descriptors serve, at least one: a server that
/// cannot serve one still says so per request rather than refusing to start.
pub fn sessions_within(fds: u64) -> usize {
    let sessions = fds.saturating_sub(RESERVED_FDS) / FDS_PER_SESSION;
    usize::try_from(sessions).unwrap_or(usize::MAX).max(1)
}

/// Raises the soft descriptor limit as far as `requested` sessions need (up
/// to the hard limit) and returns the cap the limit allows: at most
/// `requested`. Says so on stderr when it lowers the cap.
#[cfg(unix)]
pub fn fit_sessions(requested: usize) -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let Some(soft) = limit.current else {
        return requested;
    };
    let wanted = fds_needed(requested);
    let target = limit.maximum.map_or(wanted, |hard| hard.min(wanted));
    let soft = if target > soft
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: limit.maximum,
            },
        )
        .is_ok()
    {
        target
    } else {
        soft
    };
    let allowed = sessions_within(soft);
    if allowed < requested {
        eprintln!(
            "mcp-chat: at most {allowed} sessions: the file-descriptor limit ({soft}) allows no more; raise it with `ulimit -Hn` for more"
        );
    }
    requested.min(allowed)
}

#[cfg(not(unix))]
pub fn fit_sessions(requested: usize) -> usize {
    requested
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_round_trips() {
        for sessions in [1, 21, 320, 1_000] {
            assert_eq!(sessions_within(fds_needed(sessions)), sessions);
        }
    }

    #[test]
    fn the_default_cap_needs_more_than_the_usual_soft_limit() {
        // Why the server raises its limit: 1,000 sessions do not fit in
        // the 1,024 descriptors a desktop session usually starts with.
        assert!(sessions_within(1024) < super::super::DEFAULT_MAX_SESSIONS);
        assert_eq!(sessions_within(0), 1);
    }
}
