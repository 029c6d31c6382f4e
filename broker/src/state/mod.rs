//! All chat state and the rules that change it. Owned by the hub task alone,
//! so every operation (a match pops two sessions and opens a room) is atomic
//! without a lock. Nothing here awaits: outgoing frames are `try_send`-ed to
//! each session's bounded outbox, and a full outbox marks that session as a
//! slow consumer to be dropped once the current command is done.
//!
//! - `matching`: the FIFO queue, and pinging quiet waiters before matching.
//! - `rooms`: relaying messages (rate limited) and leaving.
//! - `liveness`: dropped connections, resuming them, and the timers.
//! - `rate`: the token bucket behind `rate_limited`.

mod liveness;
mod matching;
mod rate;
mod rooms;

use std::collections::{BTreeSet, HashMap, VecDeque};

use mcp_chat_proto::{
    BrokerMsg, DisconnectReason, ErrorCode, Event, Reply, Request, RoomId, StatusInfo,
};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Liveness, SendLimit};
use liveness::Replay;
use rate::TokenBucket;

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

/// A session admitted by [`State::register`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Admitted {
    pub(crate) session: SessionId,
    pub(crate) connection: ConnectionId,
    pub(crate) resume_token: String,
    pub(crate) resumed: bool,
}

#[derive(Debug)]
struct Session {
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
    sending: TokenBucket,
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
}

#[derive(Debug)]
pub(crate) struct State {
    sessions: HashMap<SessionId, Session>,
    by_token: HashMap<String, SessionId>,
    queue: VecDeque<SessionId>,
    rooms: HashMap<RoomId, Room>,
    /// Resume graces and probe timeouts, soonest first, so the hub finds the
    /// next one without scanning every session. An entry whose session has
    /// since moved on is skipped when it comes due.
    deadlines: BTreeSet<(Instant, SessionId)>,
    next_id: u64,
    started: Instant,
    max_sessions: usize,
    liveness: Liveness,
    send_limit: Option<SendLimit>,
    shutting_down: bool,
    slow_consumers: Vec<SessionId>,
}

impl State {
    pub(crate) fn new(
        max_sessions: usize,
        liveness: Liveness,
        send_limit: Option<SendLimit>,
    ) -> Self {
        Self {
            sessions: HashMap::new(),
            by_token: HashMap::new(),
            queue: VecDeque::new(),
            rooms: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_id: 1,
            started: Instant::now(),
            max_sessions,
            liveness,
            send_limit,
            shutting_down: false,
            slow_consumers: Vec::new(),
        }
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
    ) -> Result<Admitted, (ErrorCode, String)> {
        if self.shutting_down {
            return Err((
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
            return Err((
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
        self.sessions.insert(
            session,
            Session {
                handle: Some(handle),
                connection,
                next_seq: 1,
                place: Place::Idle,
                resume_token: resume_token.clone(),
                replay: Replay::default(),
                detached_until: None,
                last_seen: Instant::now(),
                probe_deadline: None,
                sending: TokenBucket::full(self.send_limit),
            },
        );
        Ok(Admitted {
            session,
            connection,
            resume_token,
            resumed: false,
        })
    }

    /// Answers one request; the reply goes out through the session's outbox,
    /// behind any event the request itself caused to be queued first.
    pub(crate) fn handle_request(&mut self, session: SessionId, id: u64, request: Request) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        s.last_seen = Instant::now();
        let reply = match request {
            Request::EnterQueue => self.enter_queue(session),
            Request::SendMessage { room_id, message } => {
                self.send_message(session, room_id, message)
            }
            Request::LeaveChat { room_id } => self.leave_chat(session, room_id),
            Request::Status => Reply::Status(self.status()),
            Request::Ping => Reply::Pong,
            Request::Unknown => Reply::error(
                ErrorCode::UnknownRequest,
                "this broker does not know that request; upgrade the broker (mcp-chat doctor)",
            ),
        };
        self.reply(session, id, reply);
        self.drop_slow_consumers();
    }

    /// A connection closed: the client is gone for good (a process that
    /// exits closes its socket), so forget the session and tell its partner.
    /// A detached session's old connection closing changes nothing: the
    /// resume grace decides its fate.
    pub(crate) fn disconnect(&mut self, session: SessionId, connection: ConnectionId) {
        let attached = self
            .sessions
            .get(&session)
            .is_some_and(|s| s.handle.is_some());
        if attached && self.is_current(session, connection) {
            self.remove_session(session, DisconnectReason::Disconnected);
            self.drop_slow_consumers();
        }
    }

    /// Tells everyone the broker is going and releases every outbox, so each
    /// connection task flushes what it has and closes.
    pub(crate) fn shutdown(&mut self) {
        self.shutting_down = true;
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in &ids {
            if let Some(Place::InRoom(room_id)) = self.sessions.get(id).map(|s| s.place)
                && self.partner_of(*id, room_id).is_some()
            {
                self.emit(
                    *id,
                    Event::PartnerDisconnected {
                        room_id,
                        reason: DisconnectReason::Shutdown,
                    },
                );
            }
            self.emit(*id, Event::Shutdown);
        }
        self.sessions.clear();
        self.by_token.clear();
        self.queue.clear();
        self.rooms.clear();
        self.slow_consumers.clear();
    }

    pub(crate) fn status(&self) -> StatusInfo {
        StatusInfo {
            broker_version: crate::VERSION.to_owned(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            sessions: self.sessions.len(),
            waiting: self.queue.len(),
            rooms: self.rooms.values().filter(|r| r.members.len() == 2).count(),
        }
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
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
        if let Some(handle) = &removed.handle {
            handle.kick.cancel();
        }
        match removed.place {
            Place::Idle => {}
            Place::Waiting => {
                self.queue.retain(|&s| s != session);
                // The one it was about to be matched with may now pair up.
                self.try_match();
            }
            Place::InRoom(room_id) => self.vacate(session, room_id, reason),
        }
    }

    fn reply(&mut self, session: SessionId, id: u64, reply: Reply) {
        self.deliver(session, BrokerMsg::Response { id, reply });
    }

    /// Queues an event with the session's next sequence number, and keeps it
    /// for replay in case the connection is lost before it is read.
    fn emit(&mut self, session: SessionId, event: Event) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let seq = s.next_seq;
        s.next_seq += 1;
        s.replay.keep(seq, &event);
        self.deliver(session, BrokerMsg::Event { seq, event });
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

    /// A session whose outbox overflowed would otherwise lose an event
    /// silently; it is disconnected instead, and its partner told.
    fn drop_slow_consumers(&mut self) {
        while let Some(session) = self.slow_consumers.pop() {
            tracing::warn!(session, "disconnecting slow consumer: outbox full");
            self.remove_session(session, DisconnectReason::Disconnected);
        }
    }
}

#[cfg(test)]
mod tests;
