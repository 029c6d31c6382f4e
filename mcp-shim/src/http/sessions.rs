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

use std::collections::HashMap;
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
    /// When `open` last fell to zero.
    idle_since: Instant,
    end: CancellationToken,
}

#[derive(Debug)]
pub struct Sessions {
    entries: Mutex<HashMap<String, Entry>>,
    /// Wakes the reaper when a session may have become idle.
    changed: Notify,
    timeout: Duration,
    manager: Arc<LocalSessionManager>,
}

impl Sessions {
    pub fn new(timeout: Duration, manager: Arc<LocalSessionManager>) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            timeout,
            manager,
        })
    }

    /// A session rmcp just created (its `initialize` response carries the
    /// id); the guard is that response's body.
    pub fn register(self: &Arc<Self>, id: &str, end: SessionEnd) -> StreamGuard {
        self.lock().insert(
            id.to_owned(),
            Entry {
                open: 1,
                idle_since: Instant::now(),
                end: end.0,
            },
        );
        tracing::info!(session = id, "HTTP session opened");
        StreamGuard {
            sessions: Arc::clone(self),
            id: id.to_owned(),
        }
    }

    /// A request for session `id` begins; `None` when the session is not
    /// (or no longer) known, and rmcp will answer 404.
    pub fn open(self: &Arc<Self>, id: &str) -> Option<StreamGuard> {
        let mut entries = self.lock();
        let entry = entries.get_mut(id)?;
        entry.open += 1;
        Some(StreamGuard {
            sessions: Arc::clone(self),
            id: id.to_owned(),
        })
    }

    /// The client closed session `id`: its chat ends now.
    pub fn closed_by_client(&self, id: &str) {
        if let Some(entry) = self.lock().remove(id) {
            tracing::info!(session = id, "HTTP session closed by the client");
            entry.end.cancel();
        }
    }

    /// Ends every session (server shutdown).
    pub fn end_all(&self) {
        for (_, entry) in self.lock().drain() {
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
            for (id, end) in expired {
                tracing::info!(session = %id, timeout = ?self.timeout, "HTTP session expired");
                end.cancel();
                if let Err(e) = self.manager.close_session(&id.clone().into()).await {
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

    /// Removes sessions idle past the timeout; also returns the earliest
    /// deadline among the remaining idle ones.
    fn take_expired(&self, now: Instant) -> (Vec<(String, CancellationToken)>, Option<Instant>) {
        let mut entries = self.lock();
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        entries.retain(|id, entry| {
            if entry.open > 0 {
                return true;
            }
            let deadline = entry.idle_since + self.timeout;
            if deadline <= now {
                expired.push((id.clone(), entry.end.clone()));
                return false;
            }
            next = Some(next.map_or(deadline, |n| n.min(deadline)));
            true
        });
        (expired, next)
    }

    fn release(&self, id: &str) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(id) {
            entry.open = entry.open.saturating_sub(1);
            if entry.open == 0 {
                entry.idle_since = Instant::now();
                drop(entries);
                self.changed.notify_one();
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Every update is a single insert, remove or counter change, so a
        // panic elsewhere cannot leave an entry half written.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn is_known(&self, id: &str) -> bool {
        self.lock().contains_key(id)
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
        Sessions::new(
            Duration::from_secs(timeout_s),
            Arc::new(LocalSessionManager::default()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_expires_only_when_nothing_is_open() {
        let s = sessions(10);
        let end = SessionEnd::default();
        let init = s.register("a", end.clone());
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
        drop(s.register("a", SessionEnd::default()));
        tokio::time::advance(Duration::from_secs(9)).await;
        drop(s.open("a").unwrap());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(s.take_expired(Instant::now()).0.is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.take_expired(Instant::now()).0.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_reaper_ends_expired_sessions() {
        let s = sessions(5);
        let end = SessionEnd::default();
        drop(s.register("a", end.clone()));
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
        let request = s.register("a", end.clone());
        s.closed_by_client("a");
        assert!(end.0.is_cancelled());
        drop(request); // a guard outliving its session is harmless
        assert!(!s.is_known("a"));
    }
}
