//! When an HTTP MCP session is over.
//!
//! Each MCP session is one chat user, so a session that ends must leave its
//! room at once: its [`ChatServer`](crate::ChatServer) is dropped, which
//! closes its broker connection, and the broker tells the partner
//! `partner.disconnected`. A session ends in one of three ways:
//!
//! - the client closes it (`DELETE`);
//! - it expires: no request and no open stream for the session timeout;
//! - the server shuts down.
//!
//! rmcp has an idle timeout of its own (`SessionConfig::keep_alive`), but it
//! counts only JSON-RPC traffic through the session worker: a client that
//! sits on its `GET` event stream waiting for a partner's message looks idle
//! to it and would be dropped mid-chat. So that timeout is off, and this
//! module counts what the HTTP layer sees instead: every request and every
//! response body still streaming (the `GET` stream, a long-polling tool
//! call) keeps its session alive. Hyper drops a response body when its
//! client goes away (noticed at the latest on the next SSE keep-alive ping),
//! so a vanished client's session runs idle and expires.
//!
//! Ending a session also cancels its [`SessionEnd`] token, which the handler
//! races every tool call against: a long poll in flight must not hold the
//! chat session (and the partner) for the rest of its wait.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};
use rmcp::transport::streamable_http_server::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Cancelled when the MCP session it belongs to is over. The HTTP layer
/// hands it to the session's handler in the `initialize` request's
/// extensions.
#[derive(Debug, Clone, Default)]
pub struct SessionEnd(pub CancellationToken);

#[derive(Debug)]
struct Entry {
    /// Requests in progress plus response bodies still streaming.
    open: usize,
    /// When the session expires, while nothing is open; also its key in
    /// [`State::idle`].
    deadline: Option<Instant>,
    end: CancellationToken,
    /// An rmcp session (initialize era), which expiry closes in rmcp too;
    /// else a 2026-07-28 chat (see `chats`), which rmcp never knew.
    rmcp: bool,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Idle sessions, earliest deadline first: the reaper looks only at the
    /// front, so no request ever scans every session.
    idle: BTreeSet<(Instant, String)>,
    /// `initialize` requests admitted but not yet answered: they count
    /// against the cap, so a burst of them cannot overshoot it.
    admitting: usize,
}

impl State {
    fn mark_busy(&mut self, id: &str) {
        if let Some(entry) = self.entries.get_mut(id)
            && let Some(deadline) = entry.deadline.take()
        {
            self.idle.remove(&(deadline, id.to_owned()));
        }
    }

    fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        if let Some(deadline) = entry.deadline {
            self.idle.remove(&(deadline, id.to_owned()));
        }
        Some(entry)
    }
}

#[derive(Debug)]
pub struct Sessions {
    state: Mutex<State>,
    /// Wakes the reaper when a session may have become idle.
    changed: Notify,
    timeout: Duration,
    max: usize,
    manager: Arc<LocalSessionManager>,
}

/// A session past its deadline: its id, its end, and whether rmcp knows it.
type Expired = (String, CancellationToken, bool);

/// Refused: the server already has `max` sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub max: usize,
}

/// A place reserved for a session that an `initialize` request may create;
/// given back when dropped unless [`Sessions::register`] takes it.
#[derive(Debug)]
pub struct Admission {
    sessions: Arc<Sessions>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut state = self.sessions.lock();
        state.admitting = state.admitting.saturating_sub(1);
    }
}

impl Sessions {
    pub fn new(timeout: Duration, max: usize, manager: Arc<LocalSessionManager>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            timeout,
            max,
            manager,
        })
    }

    /// How long a session lives with nothing open.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Reserves a place for a new session, or says the server is full.
    pub fn admit(self: &Arc<Self>) -> Result<Admission, Full> {
        let mut state = self.lock();
        if state.entries.len() + state.admitting >= self.max {
            return Err(Full { max: self.max });
        }
        state.admitting += 1;
        Ok(Admission {
            sessions: Arc::clone(self),
        })
    }

    /// A session rmcp just created (its `initialize` response carries the
    /// id) in the place `admission` reserved; the guard is that response's
    /// body.
    pub fn register(
        self: &Arc<Self>,
        admission: Admission,
        id: &str,
        end: SessionEnd,
    ) -> StreamGuard {
        self.insert(admission, id, end, true)
    }

    /// A 2026-07-28 chat (see `chats`) in the place `admission` reserved:
    /// it counts against the cap and expires like a session. The guard is
    /// the request that started it.
    pub fn register_chat(
        self: &Arc<Self>,
        admission: Admission,
        id: &str,
        end: SessionEnd,
    ) -> StreamGuard {
        self.insert(admission, id, end, false)
    }

    fn insert(
        self: &Arc<Self>,
        admission: Admission,
        id: &str,
        end: SessionEnd,
        rmcp: bool,
    ) -> StreamGuard {
        {
            let mut state = self.lock();
            // rmcp's ids are fresh UUIDs; should one repeat, the old
            // session is over rather than silently shadowed.
            if let Some(old) = state.remove(id) {
                old.end.cancel();
            }
            state.entries.insert(
                id.to_owned(),
                Entry {
                    open: 1,
                    deadline: None,
                    end: end.0,
                    rmcp,
                },
            );
        }
        // Given back after the entry counts, so the cap never dips.
        drop(admission);
        tracing::info!(session = id, "HTTP session opened");
        StreamGuard {
            sessions: Arc::clone(self),
            id: id.to_owned(),
        }
    }

    /// A request for session `id` begins; `None` when the session is not
    /// (or no longer) known, and rmcp will answer 404.
    pub fn open(self: &Arc<Self>, id: &str) -> Option<StreamGuard> {
        let mut state = self.lock();
        state.entries.get_mut(id)?.open += 1;
        state.mark_busy(id);
        Some(StreamGuard {
            sessions: Arc::clone(self),
            id: id.to_owned(),
        })
    }

    /// The client closed session `id`: its chat ends now.
    pub fn closed_by_client(&self, id: &str) {
        let removed = self.lock().remove(id);
        if let Some(entry) = removed {
            tracing::info!(session = id, "HTTP session closed by the client");
            entry.end.cancel();
        }
    }

    /// Ends every session (server shutdown).
    pub fn end_all(&self) {
        let ended = {
            let mut state = self.lock();
            state.idle.clear();
            std::mem::take(&mut state.entries)
        };
        for entry in ended.into_values() {
            entry.end.cancel();
        }
    }

    /// Expires idle sessions until `shutdown`. Sleeps until the earliest
    /// deadline or until a session may have gone idle, then re-checks.
    pub async fn reap(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            // Registered before looking, so a change made after the look
            // still wakes us (`notify_one` keeps a permit).
            let changed = self.changed.notified();
            let (expired, next) = self.take_expired(Instant::now());
            for (id, end, rmcp) in expired {
                tracing::info!(session = %id, timeout = ?self.timeout, "HTTP session expired");
                end.cancel();
                if rmcp && let Err(e) = self.manager.close_session(&id.clone().into()).await {
                    tracing::warn!(session = %id, error = %e, "closing an expired session");
                }
            }
            let sleep = async {
                match next {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = changed => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Removes sessions idle past the timeout, looking only at those due;
    /// also returns the earliest deadline among the rest.
    fn take_expired(&self, now: Instant) -> (Vec<Expired>, Option<Instant>) {
        let mut state = self.lock();
        let mut expired = Vec::new();
        while let Some((deadline, _)) = state.idle.first()
            && *deadline <= now
        {
            let Some((_, id)) = state.idle.pop_first() else {
                break;
            };
            if let Some(entry) = state.entries.remove(&id) {
                expired.push((id, entry.end, entry.rmcp));
            }
        }
        let next = state.idle.first().map(|(deadline, _)| *deadline);
        (expired, next)
    }

    fn release(&self, id: &str) {
        let mut state = self.lock();
        let deadline = Instant::now() + self.timeout;
        let Some(entry) = state.entries.get_mut(id) else {
            return;
        };
        entry.open = entry.open.saturating_sub(1);
        if entry.open > 0 {
            return;
        }
        if let Some(old) = entry.deadline.replace(deadline) {
            state.idle.remove(&(old, id.to_owned()));
        }
        state.idle.insert((deadline, id.to_owned()));
        drop(state);
        self.changed.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update keeps `entries` and `idle` in step before it
        // returns, and nothing in between can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn is_known(&self, id: &str) -> bool {
        self.lock().entries.contains_key(id)
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.lock().idle.len()
    }
}

/// Keeps its session alive while it exists: held by a request in progress,
/// then by its response body until that body ends or its client goes away.
#[derive(Debug)]
pub struct StreamGuard {
    sessions: Arc<Sessions>,
    id: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.sessions.release(&self.id);
    }
}

/// A response body that holds a [`StreamGuard`] for as long as it streams.
pub fn guarded(body: Body, guard: StreamGuard) -> Body {
    Body::new(Guarded {
        inner: body,
        _guard: guard,
    })
}

struct Guarded {
    inner: Body,
    _guard: StreamGuard,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(timeout_s: u64) -> Arc<Sessions> {
        capped(timeout_s, 100)
    }

    fn capped(timeout_s: u64, max: usize) -> Arc<Sessions> {
        Sessions::new(
            Duration::from_secs(timeout_s),
            max,
            Arc::new(LocalSessionManager::default()),
        )
    }

    fn register(s: &Arc<Sessions>, id: &str, end: SessionEnd) -> StreamGuard {
        s.register(s.admit().unwrap(), id, end)
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_expires_only_when_nothing_is_open() {
        let s = sessions(10);
        let end = SessionEnd::default();
        let init = register(&s, "a", end.clone());
        let stream = s.open("a").unwrap();
        drop(init);
        tokio::time::advance(Duration::from_secs(60)).await;
        // The GET stream is still open: a minute of silence changes nothing.
        assert!(s.take_expired(Instant::now()).0.is_empty());
        drop(stream);
        let (expired, next) = s.take_expired(Instant::now());
        assert!(expired.is_empty());
        assert_eq!(next, Some(Instant::now() + Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        let (expired, next) = s.take_expired(Instant::now());
        assert_eq!(expired.len(), 1);
        assert_eq!(next, None);
        assert!(!s.is_known("a"));
        assert!(s.open("a").is_none(), "an expired session stays gone");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_restarts_the_idle_clock() {
        let s = sessions(10);
        drop(register(&s, "a", SessionEnd::default()));
        tokio::time::advance(Duration::from_secs(9)).await;
        let request = s.open("a").unwrap();
        assert_eq!(s.idle_count(), 0, "a busy session is not in the idle queue");
        drop(request);
        assert_eq!(s.idle_count(), 1);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(s.take_expired(Instant::now()).0.is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.take_expired(Instant::now()).0.len(), 1);
        assert_eq!(s.idle_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_takes_only_the_due_sessions_in_deadline_order() {
        let s = sessions(10);
        for id in ["a", "b", "c"] {
            drop(register(&s, id, SessionEnd::default()));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // "a" became busy again and idle later than "c".
        drop(s.open("a").unwrap());
        tokio::time::advance(Duration::from_secs(9)).await;
        let (expired, next) = s.take_expired(Instant::now());
        let ids: Vec<&str> = expired.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!(next, Some(Instant::now() + Duration::from_secs(1)));
        assert!(s.is_known("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_reaper_ends_expired_sessions() {
        let s = sessions(5);
        let end = SessionEnd::default();
        drop(register(&s, "a", end.clone()));
        let shutdown = CancellationToken::new();
        let reaper = tokio::spawn(Arc::clone(&s).reap(shutdown.clone()));
        // Paused time jumps straight to the reaper's deadline.
        end.0.cancelled().await;
        assert!(!s.is_known("a"));
        shutdown.cancel();
        reaper.await.unwrap();
    }

    #[test]
    fn closing_ends_the_chat_and_forgets_the_session() {
        let s = sessions(5);
        let end = SessionEnd::default();
        let request = register(&s, "a", end.clone());
        s.closed_by_client("a");
        assert!(end.0.is_cancelled());
        drop(request); // a guard outliving its session is harmless
        assert!(!s.is_known("a"));
        assert_eq!(s.idle_count(), 0);
    }

    #[test]
    fn the_cap_counts_sessions_and_admissions_in_flight() {
        let s = capped(5, 2);
        let first = s.admit().unwrap();
        let second = s.admit().unwrap();
        assert_eq!(s.admit().unwrap_err(), Full { max: 2 });
        // An initialize that created no session gives its place back.
        drop(second);
        let _a = s.register(first, "a", SessionEnd::default());
        let _b = s.register(s.admit().unwrap(), "b", SessionEnd::default());
        assert_eq!(s.admit().unwrap_err(), Full { max: 2 });
        // A session that ends frees its place.
        s.closed_by_client("a");
        assert!(s.admit().is_ok());
    }

    #[test]
    fn ending_everything_clears_the_idle_queue() {
        let s = sessions(5);
        let end = SessionEnd::default();
        drop(register(&s, "a", end.clone()));
        assert_eq!(s.idle_count(), 1);
        s.end_all();
        assert!(end.0.is_cancelled());
        assert_eq!(s.idle_count(), 0);
        assert!(s.admit().is_ok());
    }
}
