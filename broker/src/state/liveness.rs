//! Clients that go quiet, vanish, or come back.
//!
//! A connection that *closes* means its process exited: the session ends at
//! once (see `State::disconnect`). A connection that stops *answering* (a
//! frozen or suspended process) is dropped by its connection task, and the
//! session is detached instead: it keeps its room or queue place for the
//! resume grace, events for it wait in its replay buffer, and a client that
//! reconnects with its resume token gets them in order. Past the grace, the
//! partner is told.

use std::collections::VecDeque;

use mcp_chat_proto::{BrokerMsg, DisconnectReason, Event, Resume};
use tokio::time::Instant;

use super::{Admitted, ConnectionId, Place, SessionHandle, SessionId, State};

/// Events kept for replay, at most. A client that is further behind than
/// this cannot resume without a gap, so it is refused and starts afresh.
const REPLAY_EVENTS: usize = 256;
/// Bytes of message text kept for replay, at most.
const REPLAY_BYTES: usize = 1024 * 1024;

/// The most recent events of one session, for resuming without a gap.
#[derive(Debug, Default)]
pub(super) struct Replay {
    events: VecDeque<(u64, Event)>,
    bytes: usize,
}

impl Replay {
    pub(super) fn keep(&mut self, seq: u64, event: &Event) {
        self.bytes += text_len(event);
        self.events.push_back((seq, event.clone()));
        while self.events.len() > REPLAY_EVENTS || self.bytes > REPLAY_BYTES {
            match self.events.pop_front() {
                Some((_, old)) => self.bytes -= text_len(&old),
                None => break,
            }
        }
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Forgets events the client has acknowledged.
    fn forget_through(&mut self, seq: u64) {
        while self.events.front().is_some_and(|(kept, _)| *kept <= seq) {
            if let Some((_, old)) = self.events.pop_front() {
                self.bytes -= text_len(&old);
            }
        }
    }

    /// Everything after `last_seq`, or `None` if part of it is gone.
    fn after(&self, last_seq: u64, next_seq: u64) -> Option<Vec<(u64, Event)>> {
        if last_seq + 1 == next_seq {
            return Some(Vec::new());
        }
        let oldest = self.events.front()?.0;
        (oldest <= last_seq + 1).then(|| {
            self.events
                .iter()
                .filter(|(seq, _)| *seq > last_seq)
                .cloned()
                .collect()
        })
    }
}

fn text_len(event: &Event) -> usize {
    match event {
        Event::MessageReceived { message, .. } => message.len(),
        _ => 0,
    }
}

impl State {
    /// Attaches `handle` to the session `claim` names, replaying what it
    /// missed. Hands the handle back when the claim cannot be honoured.
    pub(super) fn resume(
        &mut self,
        handle: SessionHandle,
        claim: &Resume,
    ) -> Result<Admitted, SessionHandle> {
        let Some(&session) = self.by_token.get(&claim.token) else {
            return Err(handle);
        };
        let Some(s) = self.sessions.get(&session) else {
            return Err(handle);
        };
        let Some(missed) = s.replay.after(claim.last_seq, s.next_seq) else {
            tracing::warn!(session, "resume refused: missed events no longer kept");
            self.remove_session(session, DisconnectReason::Disconnected);
            return Err(handle);
        };
        let connection = self.fresh_id();
        let Some(s) = self.sessions.get_mut(&session) else {
            return Err(handle);
        };
        // A resume can beat the broker to noticing the old connection died.
        if let Some(old) = s.handle.replace(handle) {
            old.kick.cancel();
        }
        s.connection = connection;
        s.detached_until = None;
        s.last_seen = Instant::now();
        s.probe_deadline = None;
        let resume_token = s.resume_token.clone();
        tracing::info!(session, replayed = missed.len(), "session resumed");
        for (seq, event) in missed {
            self.deliver(session, BrokerMsg::Event { seq, event });
        }
        self.try_match();
        self.drop_slow_consumers();
        Ok(Admitted {
            session,
            connection,
            resume_token,
            resumed: true,
        })
    }

    /// The connection stopped answering: keep the session for a resume.
    pub(crate) fn unresponsive(&mut self, session: SessionId, connection: ConnectionId) {
        if self.is_current(session, connection) {
            self.detach(session);
        }
    }

    fn detach(&mut self, session: SessionId) {
        let grace = self.liveness.resume_grace;
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if let Some(handle) = s.handle.take() {
            handle.kick.cancel();
        }
        let until = Instant::now() + grace;
        s.detached_until = Some(until);
        s.probe_deadline = None;
        self.deadlines.insert((until, session));
        tracing::warn!(
            session,
            ?grace,
            "client unresponsive; holding its session for a resume"
        );
        // A detached waiter is skipped by matching; others may pair now.
        self.try_match();
    }

    /// The client holds every event up to `seq`: no need to keep them.
    pub(crate) fn ack(&mut self, session: SessionId, connection: ConnectionId, seq: u64) {
        if self.is_current(session, connection)
            && let Some(s) = self.sessions.get_mut(&session)
        {
            s.replay.forget_through(seq);
        }
    }

    /// The client answered a ping.
    pub(crate) fn alive(&mut self, session: SessionId, connection: ConnectionId) {
        if !self.is_current(session, connection) {
            return;
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.last_seen = Instant::now();
            let was_probed = s.probe_deadline.take().is_some();
            if was_probed && s.place == Place::Waiting {
                self.try_match();
                self.drop_slow_consumers();
            }
        }
    }

    /// The next moment [`Self::expire`] may have something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Ends sessions whose resume grace ran out; detaches waiters that did
    /// not answer the ping sent before matching them.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&(at, session)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(s) = self.sessions.get(&session) else {
                continue;
            };
            if s.detached_until == Some(at) {
                tracing::warn!(session, "resume grace over; ending the session");
                self.remove_session(session, DisconnectReason::Disconnected);
            } else if s.probe_deadline == Some(at) {
                tracing::warn!(
                    session,
                    "waiting client did not answer a ping; not matching it"
                );
                self.detach(session);
            }
        }
        self.drop_slow_consumers();
    }

    /// Whether a session can be matched right now without a ping first.
    pub(super) fn is_fresh(&self, session: SessionId, now: Instant) -> bool {
        self.sessions.get(&session).is_some_and(|s| {
            s.handle.is_some() && now.duration_since(s.last_seen) <= self.liveness.fresh
        })
    }

    pub(super) fn is_attached(&self, session: SessionId) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| s.handle.is_some())
    }

    /// Pings a quiet waiter before it is matched; the match waits for the
    /// answer, or for `probe_timeout`.
    pub(super) fn probe(&mut self, session: SessionId, now: Instant) {
        let timeout = self.liveness.probe_timeout;
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.probe_deadline.is_none() {
            s.probe_deadline = Some(now + timeout);
            self.deadlines.insert((now + timeout, session));
            self.deliver(session, BrokerMsg::Ping { nonce: session });
        }
    }
}
