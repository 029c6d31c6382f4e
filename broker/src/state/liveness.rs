//! Clients that go quiet, vanish, or come back.
//!
//! A connection that *closes* means its process exited: the session ends at
//! once (see `State::disconnect`). A connection that stops *answering* (a
//! frozen or suspended process) is dropped by its connection task, and the
//! session is detached instead: it keeps its room or queue place for the
//! resume grace, events for it wait in its replay buffer, and a client that
//! reconnects with its resume token gets them in order. Past the grace, the
//! partner is told.
//!
//! The replay buffer holds every event the client has not acknowledged, up
//! to [`REPLAY_EVENTS`] / [`REPLAY_BYTES`]. Past that it lets go of the
//! oldest events that were already written whole to the socket (counted,
//! for the partner, as unconfirmed). It never lets go of an unwritten one:
//! those are exactly what the outbox (and a blocked write) still holds.
//! Instead, a partner who would push unwritten messages past the cap is
//! told to wait (`rate_limited`): so the buffer's byte cap is also the cap on
//! the outbox's event bytes, and the outbox's frame capacity is sized above
//! [`REPLAY_EVENTS`] so that events never overflow it. A client that stops
//! reading altogether is found by the heartbeat, detached, and ended after
//! the grace, its partner told exactly what did not arrive.

use std::collections::VecDeque;

use mcp_chat_proto::{BrokerMsg, DisconnectReason, Event, Resume, RoomId};
use tokio::time::Instant;

use super::{Admitted, ConnectionId, Place, SessionHandle, SessionId, State, Tally};

/// Unacknowledged events kept for replay, at most.
pub(crate) const REPLAY_EVENTS: usize = 1024;
/// Bytes of unacknowledged message text kept for replay, at most.
pub(crate) const REPLAY_BYTES: usize = 1024 * 1024;

/// The unacknowledged events of one session, for resuming without a gap and
/// for counting what a partner's messages came to.
#[derive(Debug, Default)]
pub(super) struct Replay {
    /// `(seq, event, text bytes kept before it)`: seqs are contiguous, so an
    /// event's place is its seq less the oldest's, and the running total
    /// gives the bytes after any seq without a scan.
    events: VecDeque<(u64, Event, u64)>,
    bytes: usize,
    /// Text bytes ever kept: the running total's end.
    total: u64,
}

impl Replay {
    /// Keeps `event`, letting go of the oldest events written up to
    /// `written` while over the caps (tallied as unconfirmed when they are
    /// messages of `room`). Unwritten events are never let go: past the caps
    /// with only those left, the event is kept anyway (see
    /// [`Self::has_room_for`], which keeps messages from getting here).
    pub(super) fn keep(
        &mut self,
        seq: u64,
        event: &Event,
        written: u64,
        room: Option<RoomId>,
        tally: &mut Tally,
    ) {
        let len = text_len(event);
        while self.events.len() >= REPLAY_EVENTS || self.bytes + len > REPLAY_BYTES {
            if self
                .events
                .front()
                .is_none_or(|(oldest, _, _)| *oldest > written)
            {
                break;
            }
            if let Some((_, old, _)) = self.events.pop_front() {
                self.bytes -= text_len(&old);
                if matches!(old, Event::MessageReceived { room_id, .. } if Some(room_id) == room) {
                    tally.unconfirmed += 1;
                }
            }
        }
        self.bytes += len;
        self.events.push_back((seq, event.clone(), self.total));
        self.total += len as u64;
    }

    /// Whether a message of `len` bytes fits beside the events not yet
    /// written (those after `written`), which are never let go. O(1): it
    /// runs on every message.
    pub(super) fn has_room_for(&self, len: usize, written: u64) -> bool {
        let Some(&(oldest, _, _)) = self.events.front() else {
            return true;
        };
        // Where the first unwritten event kept sits, if any is kept.
        let first =
            usize::try_from(written.saturating_add(1).saturating_sub(oldest)).unwrap_or(usize::MAX);
        let Some(&(_, _, before)) = self.events.get(first) else {
            return true;
        };
        let count = self.events.len() - first;
        let bytes = usize::try_from(self.total - before).unwrap_or(usize::MAX);
        count < REPLAY_EVENTS && bytes.saturating_add(len) <= REPLAY_BYTES
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &Event)> {
        self.events.iter().map(|(seq, event, _)| (*seq, event))
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Forgets events the client has acknowledged.
    pub(super) fn forget_through(&mut self, seq: u64) {
        while self.events.front().is_some_and(|(kept, _, _)| *kept <= seq) {
            if let Some((_, old, _)) = self.events.pop_front() {
                self.bytes -= text_len(&old);
            }
        }
    }

    /// Everything after `last_seq`, or `None` if part of it is gone (or the
    /// claim names events this session never had).
    fn after(&self, last_seq: u64, next_seq: u64) -> Option<Vec<(u64, Event)>> {
        let first_missed = last_seq.checked_add(1)?;
        if first_missed == next_seq {
            return Some(Vec::new());
        }
        if first_missed > next_seq {
            return None;
        }
        let oldest = self.events.front()?.0;
        (oldest <= first_missed).then(|| {
            self.events
                .iter()
                .filter(|(seq, _, _)| *seq > last_seq)
                .map(|(seq, event, _)| (*seq, event.clone()))
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
        match s.handle.replace(handle) {
            Some(old) => old.kick.cancel(),
            None => self.detached = self.detached.saturating_sub(1),
        }
        s.connection = connection;
        s.connection_done = false;
        s.detached_until = None;
        s.last_seen = Instant::now();
        s.probe_deadline = None;
        // The client has everything through `last_seq`: that is both
        // written and acknowledged.
        s.written.advance_to(claim.last_seq);
        s.replay.forget_through(claim.last_seq);
        let resume_token = s.resume_token.clone();
        let written = s.written.clone();
        let waiting = s.place == Place::Waiting;
        self.remote_acked(session, claim.last_seq);
        if waiting {
            self.queue.set_attached(session, true);
            self.pool.relist(session);
            self.realm_resume(session);
        }
        tracing::info!(session, replayed = missed.len(), "session resumed");
        for (seq, event) in missed {
            self.deliver(session, BrokerMsg::Event { seq, event });
        }
        if waiting {
            self.seek(session, Instant::now());
        }
        self.detach_slow_consumers();
        Ok(Admitted {
            session,
            connection,
            resume_token,
            resumed: true,
            written,
        })
    }

    /// The connection stopped answering (and has ended, publishing how far
    /// it wrote): keep the session for a resume.
    pub(crate) fn unresponsive(&mut self, session: SessionId, connection: ConnectionId) {
        if self.is_current(session, connection) {
            self.detach(session);
            if let Some(s) = self.sessions.get_mut(&session) {
                s.connection_done = true;
            }
        }
    }

    pub(super) fn detach(&mut self, session: SessionId) {
        let grace = self.liveness.resume_grace;
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let Some(handle) = s.handle.take() else {
            return;
        };
        self.detached += 1;
        handle.kick.cancel();
        // Its final `written` arrives with the connection's own notice.
        s.connection_done = false;
        let waiting = s.place == Place::Waiting;
        let until = Instant::now() + grace;
        s.detached_until = Some(until);
        s.probe_deadline = None;
        self.deadlines.insert((until, session));
        tracing::warn!(
            session,
            ?grace,
            "client unresponsive; holding its session for a resume"
        );
        // A detached waiter is not matched until it resumes.
        if waiting {
            self.queue.set_attached(session, false);
            self.pool.unlist(session);
            self.realm_detach(session);
        }
    }

    /// The client holds every event up to `seq`: no need to keep them. A
    /// claim beyond what was sent is held to what was sent.
    pub(crate) fn ack(&mut self, session: SessionId, connection: ConnectionId, seq: u64) {
        if self.is_current(session, connection)
            && let Some(s) = self.sessions.get_mut(&session)
        {
            let seq = seq.min(s.next_seq.saturating_sub(1));
            s.written.advance_to(seq);
            s.replay.forget_through(seq);
            self.remote_acked(session, seq);
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
                self.realm_alive(session);
                self.seek(session, Instant::now());
                self.detach_slow_consumers();
            }
        }
    }

    /// The next moment [`Self::expire`] may have something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Ends sessions whose resume grace ran out; detaches waiters that did
    /// not answer the ping sent before matching them; opens waiters whose
    /// interest wait is over to anyone compatible.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&(at, session)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            // One entry may stand for several of a session's deadlines
            // falling on the same instant: the interest wait is handled
            // first, as the others may end the session.
            if let Some(s) = self.sessions.get_mut(&session)
                && s.interest_deadline == Some(at)
            {
                s.interest_deadline = None;
                self.pool.open(session);
                self.seek(session, now);
                self.realm_open(session);
            }
            let Some(s) = self.sessions.get(&session) else {
                continue;
            };
            if s.detached_until == Some(at) {
                tracing::warn!(session, "resume grace over; ending the session");
                if s.connection_done {
                    self.remove_session(session, DisconnectReason::Disconnected);
                } else if let Some(s) = self.sessions.get_mut(&session) {
                    // Its dropped connection has not yet said how far it
                    // wrote: end the session with that notice.
                    s.ending = true;
                }
            } else if s.probe_deadline == Some(at) {
                tracing::warn!(
                    session,
                    "waiting client did not answer a ping; not matching it"
                );
                self.detach(session);
            }
        }
        self.detach_slow_consumers();
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
