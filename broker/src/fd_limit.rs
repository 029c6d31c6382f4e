//! The file-descriptor budget. Every connection costs one descriptor, and a
//! broker out of descriptors cannot even accept a connection to refuse it:
//! its clients hang unanswered. So at start the broker raises its soft
//! `RLIMIT_NOFILE` toward the hard limit and caps its sessions at what the
//! descriptors it got can serve.

use crate::server::{REFUSALS_IN_FLIGHT, connection_slots};

/// Descriptors the process needs besides connections: stdio, the log and
/// lock files, the listener, the runtime's epoll and waker, the signal pipe,
/// and spare for whatever a library opens.
pub const RESERVED_FDS: u64 = 32;

#[derive(Debug, thiserror::Error)]
#[error(
    "the file-descriptor limit ({limit}) is too low for the broker: it needs at least {needed}; raise it with `ulimit -n`"
)]
pub struct FdLimitTooLow {
    pub limit: u64,
    pub needed: u64,
}

/// Descriptors the broker uses at most when serving `max_sessions`.
pub fn fds_needed(max_sessions: usize) -> u64 {
    let connections = connection_slots(max_sessions).saturating_add(REFUSALS_IN_FLIGHT);
    RESERVED_FDS.saturating_add(u64::try_from(connections).unwrap_or(u64::MAX))
}

/// The most sessions `fds` descriptors can serve (`fds_needed` inverted);
/// `None` when they cannot serve even one.
pub fn sessions_within(fds: u64) -> Option<usize> {
    let overhead = fds_needed(0);
    let sessions = fds.checked_sub(overhead).filter(|n| *n > 0)?;
    Some(usize::try_from(sessions).unwrap_or(usize::MAX))
}

/// Raises the soft descriptor limit as far as `requested` sessions need (up
/// to the hard limit) and returns the session cap the limit allows: at most
/// `requested`. Logs the limit before and after, and any lowering of the cap
/// (a warning when the user asked for that many, `explicit`).
#[cfg(unix)]
pub fn fit_sessions(requested: usize, explicit: bool) -> Result<usize, FdLimitTooLow> {
    use rustix::process::{Resource, getrlimit};
    let before = getrlimit(Resource::Nofile);
    let soft = raise_soft_limit(before.current, before.maximum, fds_needed(requested));
    tracing::info!(
        soft_before = %show(before.current),
        soft = %show(soft),
        hard = %show(before.maximum),
        "file-descriptor limit"
    );
    let Some(soft) = soft else {
        return Ok(requested);
    };
    let allowed = sessions_within(soft).ok_or(FdLimitTooLow {
        limit: soft,
        needed: fds_needed(1),
    })?;
    if allowed < requested {
        let message = "session cap lowered to what the file-descriptor limit allows; raise the hard limit (ulimit -Hn) for more";
        if explicit {
            tracing::warn!(
                requested,
                max_sessions = allowed,
                fd_limit = soft,
                "{message}"
            );
        } else {
            tracing::info!(
                requested,
                max_sessions = allowed,
                fd_limit = soft,
                "{message}"
            );
        }
    }
    Ok(requested.min(allowed))
}

#[cfg(not(unix))]
pub fn fit_sessions(requested: usize, _explicit: bool) -> Result<usize, FdLimitTooLow> {
    Ok(requested)
}

/// Sets the soft limit to `wanted`, capped by `hard`, and returns the soft
/// limit in force afterwards (`None` = unlimited). Where the system caps it
/// below the hard limit (macOS refuses more than `kern.maxfilesperproc`), it
/// settles for the largest half-step that works.
#[cfg(unix)]
fn raise_soft_limit(soft: Option<u64>, hard: Option<u64>, wanted: u64) -> Option<u64> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let current = soft?;
    let mut target = hard.map_or(wanted, |hard| hard.min(wanted));
    while target > current {
        let new = Rlimit {
            current: Some(target),
            maximum: hard,
        };
        match setrlimit(Resource::Nofile, new) {
            Ok(()) => return Some(target),
            Err(e) => {
                tracing::debug!(target, error = %e, "could not raise the file-descriptor limit");
                target = current.max(target / 2);
            }
        }
    }
    Some(current)
}

#[cfg(unix)]
fn show(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_round_trips() {
        for sessions in [1, 100, 944, 50_000] {
            assert_eq!(sessions_within(fds_needed(sessions)), Some(sessions));
        }
    }

    #[test]
    fn too_few_descriptors_serve_nobody() {
        assert_eq!(sessions_within(0), None);
        assert_eq!(sessions_within(fds_needed(0)), None);
        assert_eq!(sessions_within(fds_needed(0) + 1), Some(1));
    }

    #[test]
    fn the_usual_desktop_limits_leave_room_for_sessions() {
        // macOS defaults to 256, Linux desktops to 1024.
        assert!(sessions_within(256).is_some_and(|n| n >= 100));
        assert!(sessions_within(1024).is_some_and(|n| n >= 900));
    }
}
