//! All chat state and the rules that change it. Owned by the hub task alone,
//! so every operation (a match pops two sessions and opens a room) is atomic
//! without a lock. Nothing here awaits: outgoing frames are `try_send`-ed to
//! each session's bounded outbox, and a full outbox marks that session as a
//! slow consumer to be dropped once the current command is done.

mod matching;
mod rooms;

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use mcp_chat_proto::{
    BrokerMsg, DisconnectReason, ErrorCode, Event, Reply, Request, RoomId, StatusInfo,
};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

pub(crate) type SessionId = u64;

/// What the hub needs to reach one connection.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) outbox: mpsc::Sender<BrokerMsg>,
    /// Cancelled when the broker drops the session, so its connection task
    /// stops even while blocked writing to a client that does not read.
    pub(crate) kick: CancellationToken,
}

#[derive(Debug)]
struct Session {
    handle: SessionHandle,
    next_seq: u64,
    place: Place,
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
    queue: VecDeque<SessionId>,
    rooms: HashMap<RoomId, Room>,
    next_session: SessionId,
    started: Instant,
    max_sessions: usize,
    shutting_down: bool,
    slow_consumers: Vec<SessionId>,
}

impl State {
    pub(crate) fn new(max_sessions: usize) -> Self {
        Self {
            sessions: HashMap::new(),
            queue: VecDeque::new(),
            rooms: HashMap::new(),
            next_session: 1,
            started: Instant::now(),
            max_sessions,
            shutting_down: false,
            slow_consumers: Vec::new(),
        }
    }

    pub(crate) fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Admits a new session, or says why not.
    pub(crate) fn register(
        &mut self,
        handle: SessionHandle,
    ) -> Result<SessionId, (ErrorCode, String)> {
        if self.shutting_down {
            return Err((
                ErrorCode::ShuttingDown,
                "the broker is shutting down".into(),
            ));
        }
        if self.sessions.len() >= self.max_sessions {
            return Err((
                ErrorCode::BrokerFull,
                format!(
                    "the broker is full ({} sessions); try again later",
                    self.max_sessions
                ),
            ));
        }
        let id = self.next_session;
        self.next_session += 1;
        self.sessions.insert(
            id,
            Session {
                handle,
                next_seq: 1,
                place: Place::Idle,
            },
        );
        Ok(id)
    }

    /// Answers one request; the reply goes out through the session's outbox,
    /// behind any event the request itself caused to be queued first.
    pub(crate) fn handle_request(&mut self, session: SessionId, id: u64, request: Request) {
        if !self.sessions.contains_key(&session) {
            return;
        }
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

    /// A connection ended: forget the session, tell its partner.
    pub(crate) fn disconnect(&mut self, session: SessionId) {
        self.remove_session(session, DisconnectReason::Disconnected);
        self.drop_slow_consumers();
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

    fn remove_session(&mut self, session: SessionId, reason: DisconnectReason) {
        let Some(removed) = self.sessions.remove(&session) else {
            return;
        };
        removed.handle.kick.cancel();
        match removed.place {
            Place::Idle => {}
            Place::Waiting => self.queue.retain(|&s| s != session),
            Place::InRoom(room_id) => self.vacate(session, room_id, reason),
        }
    }

    fn reply(&mut self, session: SessionId, id: u64, reply: Reply) {
        self.deliver(session, BrokerMsg::Response { id, reply });
    }

    /// Queues an event with the session's next sequence number.
    fn emit(&mut self, session: SessionId, event: Event) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let seq = s.next_seq;
        s.next_seq += 1;
        self.deliver(session, BrokerMsg::Event { seq, event });
    }

    fn deliver(&mut self, session: SessionId, msg: BrokerMsg) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        match s.handle.outbox.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if !self.slow_consumers.contains(&session) {
                    self.slow_consumers.push(session);
                }
            }
            // The connection is already gone; its `Disconnected` is on the way.
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
