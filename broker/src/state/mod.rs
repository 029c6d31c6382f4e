//! All chat state and the rules that change it. Owned by the hub task alone,
//! so every operation (a match pops two sessions and opens a room) is atomic
//! without a lock. Nothing here awaits: outgoing frames are `try_send`-ed to
//! each session's bounded outbox, and a full outbox marks that session as a
//! slow consumer to be detached once the current command is done.
//!
//! `sent` means delivered or reported: every event a session is sent stays in
//! its replay buffer until its client acknowledges it, and the connection
//! task publishes how far it has written (`Written`). When a session ends in
//! a room, its partner's `partner.disconnected` counts the partner's
//! messages that never left the broker (`undelivered`) and those written to
//! the socket but never acknowledged (`unconfirmed`). A receiver whose
//! buffer is full of messages not yet written holds its sender back
//! (`rate_limited`) instead of losing anything. See `liveness` for how the
//! buffer, the outbox and slow consumers fit together.
//!
//! - `matching`: entering the queue, finding a partner, and pinging quiet
//!   waiters before matching.
//! - `rule`: the matching rule as pure functions (interests, kinds, whom
//!   to meet, blocks), for any queue that applies it.
//! - `pool`: the waiters indexed by class, interest and arrival, so a seek
//!   looks at a few queue heads; `queue`: positions in the waiting line.
//! - `rooms`: relaying messages (rate limited) and leaving.
//! - `liveness`: dropped connections, resuming them, and the timers.
//! - `rate`: the token bucket behind `rate_limited`.
//! - `federated`: waiting through a realm of brokers, and rooms whose
//!   partner is on another broker (see `crate::federation`); `remote`:
//!   those rooms' delivery counts and credit.

mod federated;
mod liveness;
mod matching;
mod pool;
mod queue;
pub(crate) mod rate;
mod remote;
mod rooms;
pub(crate) mod rule;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mcp_chat_proto::{
    BrokerMsg, DisconnectReason, ErrorCode, Event, Kind, Refusal, Reply, Request, RoomId,
    StatusInfo,
};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Limits, Liveness};
pub(crate) use liveness::REPLAY_EVENTS;
use liveness::Replay;
pub(crate) use pool::BUSIEST_SHOWN;
use pool::Pool;
use queue::Queue;
use rate::TokenBucket;
use rule::{Blocks, Identity};

pub(crate) type SessionId = u64;
/// Tells one connection of a session from the next after a resume, so a late
/// notice from the old connection cannot end the resumed session.
pub(crate) type ConnectionId = u64;

/// What the hub needs to reach one connection.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) outbox: mpsc::Sender<BrokerMsg>,
    /// Cancelled when the broker drops the session, so its connection task
    /// stops even while blocked writing to a client that does not read.
    pub(crate) kick: CancellationToken,
}

/// The highest event `seq` a session's connections have written whole to
/// the client's socket. The connection task is its only writer (after each
/// flush, and exactly when it ends); the hub reads it when a session ends.
#[derive(Debug, Clone, Default)]
pub(crate) struct Written(Arc<AtomicU64>);

impl Written {
    pub(crate) fn advance_to(&self, seq: u64) {
        self.0.fetch_max(seq, Ordering::AcqRel);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// A session admitted by [`State::register`].
#[derive(Debug, Clone)]
pub(crate) struct Admitted {
    pub(crate) session: SessionId,
    pub(crate) connection: ConnectionId,
    pub(crate) resume_token: String,
    pub(crate) resumed: bool,
    pub(crate) written: Written,
}

#[derive(Debug)]
struct BrokerSession {
    /// `None` while the client is away and may still resume.
    handle: Option<SessionHandle>,
    connection: ConnectionId,
    next_seq: u64,
    place: Place,
    resume_token: String,
    replay: Replay,
    /// When the resume grace of a dropped connection runs out.
    detached_until: Option<Instant>,
    last_seen: Instant,
    /// Set while a quiet waiter is being pinged before a match.
    probe_deadline: Option<Instant>,
    /// Requests of any kind per second: every request costs the hub work.
    requesting: TokenBucket,
    /// Messages per second, and bytes of message text per second.
    sending: TokenBucket,
    sending_bytes: TokenBucket,
    written: Written,
    /// Whether the connection last attached has ended and so published its
    /// final `written`. False from a hub-side kick until its notice.
    connection_done: bool,
    /// The resume grace ran out before the dropped connection's notice came
    /// in: the session ends with it, so the partner's counts are exact.
    ending: bool,
    /// Delivery counts for the current room, beyond what the replay holds.
    tally: Tally,
    /// What it said it is at its last `enter_queue`.
    kind: Kind,
    /// Keyed hash of its installation's id, for blocks; `None` when its
    /// client sent none.
    installation: Option<u64>,
    /// When a waiter with interests stops waiting for a shared one.
    interest_deadline: Option<Instant>,
    /// What names it to the other brokers of a realm, for blocks (see
    /// `crate::federation::blocks`); set when it enters with federation.
    realm_name: Option<crate::federation::blocks::RealmName>,
}

/// Messages of the current room that the replay buffer no longer holds:
/// written whole to the socket, then let go unacknowledged.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    unconfirmed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Idle,
    Waiting,
    InRoom(RoomId),
}

/// A room keeps its id after one member leaves, so the one left behind gets
/// `partner_gone` rather than `unknown_room` until it moves on.
#[derive(Debug)]
struct Room {
    members: Vec<SessionId>,
    /// Both who were matched, kept after one leaves so the other can
    /// still block them.
    parties: [RoomParty; 2],
    common_interests: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct RoomParty {
    identity: Identity,
    kind: Kind,
    /// Its name in the realm, for blocks across brokers (see `federated`).
    who: Option<crate::federation::blocks::RealmName>,
}

#[derive(Debug)]
pub(crate) struct State {
    sessions: HashMap<SessionId, BrokerSession>,
    by_token: HashMap<String, SessionId>,
    queue: Queue,
    pool: Pool,
    blocks: Blocks,
    /// Keys the hash of installation ids, so the ids are never kept in the
    /// clear: random, and kept with the blocks when they are kept on disk
    /// (see `block_file`).
    block_key: crate::block_file::BlockKey,
    /// Blocks between installations made since the hub last took them, for
    /// it to record.
    new_blocks: Vec<(u64, u64)>,
    rooms: HashMap<RoomId, Room>,
    /// Rooms with both members still in them, kept as a count so `status`
    /// never scans.
    full_rooms: usize,
    /// Sessions held for a resume (no connection), likewise counted.
    detached: usize,
    /// Resume graces and probe timeouts, soonest first, so the hub finds the
    /// next one without scanning every session. An entry whose session has
    /// since moved on is skipped when it comes due.
    deadlines: BTreeSet<(Instant, SessionId)>,
    next_id: u64,
    started: Instant,
    max_sessions: usize,
    liveness: Liveness,
    limits: Limits,
    shutting_down: bool,
    slow_consumers: Vec<SessionId>,
    /// Reported in `Status` (see `Config::log_path`).
    log_path: Option<String>,
    /// The link to a realm of brokers, when federation is on.
    federated: Option<federated::Federated>,
}

impl State {
    pub(crate) fn new(max_sessions: usize, liveness: Liveness, limits: Limits) -> Self {
        Self {
            sessions: HashMap::new(),
            by_token: HashMap::new(),
            queue: Queue::default(),
            pool: Pool::default(),
            blocks: Blocks::default(),
            block_key: crate::block_file::random_key(),
            new_blocks: Vec::new(),
            rooms: HashMap::new(),
            full_rooms: 0,
            detached: 0,
            deadlines: BTreeSet::new(),
            next_id: 1,
            started: Instant::now(),
            max_sessions,
            liveness,
            limits,
            shutting_down: false,
            slow_consumers: Vec::new(),
            log_path: None,
            federated: None,
        }
    }

    /// The log file to report in `Status`.
    pub(crate) fn with_log_path(mut self, path: Option<&std::path::Path>) -> Self {
        self.log_path = path.map(|p| p.display().to_string());
        self
    }

    /// Blocks (and their key) kept from an earlier broker process.
    pub(crate) fn with_blocks(mut self, loaded: crate::block_file::Loaded) -> Self {
        self.block_key = loaded.key;
        for pair in loaded.pairs {
            self.blocks.restore(pair);
        }
        self
    }

    /// Blocks between installations made since the last call, to be kept.
    pub(crate) fn take_new_blocks(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.new_blocks)
    }

    pub(crate) fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Admits a connection: as a new session, or, with a valid resume claim,
    /// as the session it lost (replaying what it missed).
    pub(crate) fn register(
        &mut self,
        handle: SessionHandle,
        resume: Option<mcp_chat_proto::Resume>,
    ) -> Result<Admitted, Refusal> {
        if self.shutting_down {
            return Err(Refusal::new(
                ErrorCode::ShuttingDown,
                "the broker is shutting down".into(),
            ));
        }
        let handle = match resume {
            Some(claim) => match self.resume(handle, &claim) {
                Ok(admitted) => return Ok(admitted),
                Err(handle) => handle,
            },
            None => handle,
        };
        if self.sessions.len() >= self.max_sessions {
            return Err(Refusal::new(
                ErrorCode::BrokerFull,
                format!(
                    "the broker is full ({} sessions); try again later",
                    self.max_sessions
                ),
            ));
        }
        let session = self.fresh_id();
        let connection = self.fresh_id();
        let resume_token = uuid::Uuid::new_v4().simple().to_string();
        self.by_token.insert(resume_token.clone(), session);
        let written = Written::default();
        self.sessions.insert(
            session,
            BrokerSession {
                handle: Some(handle),
                connection,
                next_seq: 1,
                place: Place::Idle,
                resume_token: resume_token.clone(),
                replay: Replay::default(),
                detached_until: None,
                last_seen: Instant::now(),
                probe_deadline: None,
                requesting: TokenBucket::full(self.limits.requests),
                sending: TokenBucket::full(self.limits.messages),
                sending_bytes: TokenBucket::full(self.limits.bytes),
                written: written.clone(),
                connection_done: false,
                ending: false,
                tally: Tally::default(),
                kind: Kind::default(),
                installation: None,
                interest_deadline: None,
                realm_name: None,
            },
        );
        Ok(Admitted {
            session,
            connection,
            resume_token,
            resumed: false,
            written,
        })
    }

    /// Answers one request; the reply goes out through the session's outbox,
    /// behind any event the request itself caused to be queued first.
    pub(crate) fn handle_request(&mut self, session: SessionId, id: u64, request: Request) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.handle.is_none() {
            // A detached session's connection is on its way out; a request
            // it managed to send has nobody to answer.
            return;
        }
        // One clock read per request, shared by the budget, liveness and
        // the send limits: on some VMs reading the clock is a system call.
        let now = Instant::now();
        if let Err(wait) = s.requesting.wait_for(now, 1.0) {
            let reply = rate::rate_limited(wait, "too many requests at once", "try again");
            self.reply(session, id, reply);
            self.detach_slow_consumers();
            return;
        }
        s.requesting.spend(1.0);
        s.last_seen = now;
        if let Request::EnterQueue(entry) = &request
            && self.realm_enter(session, id, entry)
        {
            // Answered when the realm has placed or matched it.
            self.detach_slow_consumers();
            return;
        }
        if let Request::LeaveChat {
            room_id,
            block: true,
        } = &request
            && self.realm_block(session, id, *room_id)
        {
            // Answered once the block is written to the realm.
            self.detach_slow_consumers();
            return;
        }
        let reply = match request {
            Request::EnterQueue(entry) => self.enter_queue(session, &entry),
            Request::SendMessage { room_id, message } => {
                self.send_message(session, room_id, message, now)
            }
            Request::LeaveChat { room_id, block } => self.leave_chat(session, room_id, block),
            Request::Status => Reply::Status(Box::new(self.status())),
            Request::Ping => Reply::Pong,
            Request::Unknown => Reply::error(
                ErrorCode::UnknownRequest,
                "this broker does not know that request; upgrade the broker (mcp-chat doctor)",
            ),
        };
        self.reply(session, id, reply);
        self.detach_slow_consumers();
    }

    /// A connection closed: the client is gone for good (a process that
    /// exits closes its socket), so forget the session and tell its partner.
    /// A detached session's old connection closing only means its final
    /// `written` is in: the resume grace decides the session's fate, unless
    /// it was doomed already.
    pub(crate) fn disconnect(&mut self, session: SessionId, connection: ConnectionId) {
        if !self.is_current(session, connection) {
            return;
        }
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        s.connection_done = true;
        if s.handle.is_some() || s.ending {
            self.remove_session(session, DisconnectReason::Disconnected);
            self.detach_slow_consumers();
        }
    }

    /// Tells everyone the broker is going and releases every outbox, so each
    /// connection task flushes what it has and closes.
    pub(crate) fn shutdown(&mut self) {
        self.shutting_down = true;
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in &ids {
            match self.sessions.get(id).map(|s| s.place) {
                // Every outbox is flushed for the drain timeout, so no
                // counts are claimed; the partner's broker counts what
                // never reached ours.
                Some(Place::InRoom(room_id)) => {
                    self.end_remote(room_id, DisconnectReason::Shutdown, Delivery::default())
                }
                Some(Place::Waiting) => self.realm_withdraw(*id),
                _ => {}
            }
            if let Some(Place::InRoom(room_id)) = self.sessions.get(id).map(|s| s.place)
                && self.partner_of(*id, room_id).is_some()
            {
                // Both sides are going; every outbox is still flushed for
                // the drain timeout, so no counts are claimed here.
                self.emit(
                    *id,
                    Event::PartnerDisconnected {
                        room_id,
                        reason: DisconnectReason::Shutdown,
                        undelivered: 0,
                        unconfirmed: 0,
                    },
                );
            }
            self.emit(*id, Event::Shutdown);
        }
        self.sessions.clear();
        self.by_token.clear();
        self.queue.clear();
        self.pool.clear();
        self.rooms.clear();
        self.full_rooms = 0;
        self.detached = 0;
        self.slow_consumers.clear();
    }

    pub(crate) fn status(&self) -> StatusInfo {
        StatusInfo {
            broker_version: crate::VERSION.to_owned(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            sessions: self.sessions.len(),
            waiting: self.queue.len() + self.realm_waiting(),
            rooms: self.full_rooms,
            detached: self.detached,
            log_path: self.log_path.clone(),
            interests: self.busiest_interests(),
            federation: self.federation_status(),
        }
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    fn is_current(&self, session: SessionId, connection: ConnectionId) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| s.connection == connection)
    }

    fn remove_session(&mut self, session: SessionId, reason: DisconnectReason) {
        let Some(removed) = self.sessions.remove(&session) else {
            return;
        };
        self.by_token.remove(&removed.resume_token);
        match &removed.handle {
            Some(handle) => handle.kick.cancel(),
            None => self.detached = self.detached.saturating_sub(1),
        }
        match removed.place {
            Place::Idle => {}
            Place::Waiting => {
                self.queue.remove(session);
                self.pool.remove(session);
                self.realm_withdraw(session);
            }
            Place::InRoom(room_id) => {
                let counts = removed.delivery(room_id);
                if counts != Delivery::default() {
                    tracing::warn!(
                        session,
                        undelivered = counts.undelivered,
                        unconfirmed = counts.unconfirmed,
                        "session ended with its partner's messages not confirmed delivered"
                    );
                }
                self.vacate(session, room_id, reason, counts);
            }
        }
    }

    fn reply(&mut self, session: SessionId, id: u64, reply: Reply) {
        self.deliver(session, BrokerMsg::Response { id, reply });
    }

    /// Queues an event with the session's next sequence number, and keeps it
    /// for replay until the client acknowledges it. Messages never overflow
    /// the replay buffer: `send_message` holds the sender back first (see
    /// [`State::has_room_for`]), and a remote partner's room ends instead
    /// (`state::remote`); the few other events always fit.
    fn emit(&mut self, session: SessionId, event: Event) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let seq = s.next_seq;
        s.next_seq += 1;
        let room = match s.place {
            Place::InRoom(room_id) => Some(room_id),
            _ => None,
        };
        s.replay
            .keep(seq, &event, s.written.get(), room, &mut s.tally);
        self.deliver(session, BrokerMsg::Event { seq, event });
    }

    /// Whether `session`'s replay buffer can take a message of `len` bytes
    /// without dropping one its client has not been handed yet. When it
    /// cannot, the client is not reading (or the broker cannot write to it
    /// as fast as its partner sends): the sender is asked to wait.
    pub(super) fn has_room_for(&self, session: SessionId, len: usize) -> bool {
        self.sessions
            .get(&session)
            .is_none_or(|s| s.replay.has_room_for(len, s.written.get()))
    }

    fn deliver(&mut self, session: SessionId, msg: BrokerMsg) {
        let Some(handle) = self.sessions.get(&session).and_then(|s| s.handle.as_ref()) else {
            // Away: events wait in the replay buffer for a resume.
            return;
        };
        match handle.outbox.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if !self.slow_consumers.contains(&session) {
                    self.slow_consumers.push(session);
                }
            }
            // The connection is already gone; its notice is on the way.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// A session whose outbox overflowed is detached: its connection is
    /// dropped, and everything it had not acknowledged waits in the replay
    /// buffer for a resume within the grace, as for a frozen client.
    fn detach_slow_consumers(&mut self) {
        while let Some(session) = self.slow_consumers.pop() {
            if self.is_attached(session) {
                tracing::warn!(session, "detaching slow consumer: outbox full");
                self.detach(session);
            }
        }
    }
}

/// A partner's messages that an ended session's client never confirmed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub(crate) undelivered: u64,
    pub(crate) unconfirmed: u64,
}

impl BrokerSession {
    /// What became of the messages this session was sent in `room_id` and
    /// never acknowledged: written whole to its socket (`unconfirmed`), or
    /// not (`undelivered`).
    fn delivery(&self, room_id: RoomId) -> Delivery {
        let written = self.written.get();
        let mut counts = Delivery {
            undelivered: 0,
            unconfirmed: self.tally.unconfirmed,
        };
        for (seq, event) in self.replay.iter() {
            if matches!(event, Event::MessageReceived { room_id: r, .. } if *r == room_id) {
                if seq <= written {
                    counts.unconfirmed += 1;
                } else {
                    counts.undelivered += 1;
                }
            }
        }
        counts
    }
}

#[cfg(test)]
mod federated_tests;
#[cfg(test)]
mod matching_tests;
#[cfg(test)]
mod tests;
