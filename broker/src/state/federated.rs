//! The hub's side of federation (see `crate::federation`): waiting through
//! the realm's queue, rooms whose partner is on another broker, and falling
//! back to the local queue while the link is down.
//!
//! The hub stays the arbiter of its own sessions: the link proposes a match
//! ([`FromLink::Matched`]) and the hub takes it only if the session is still
//! waiting in the realm. Everything it tells the link is `try_send`-ed: the
//! hub never waits on the network.

use std::collections::{HashMap, HashSet};

use mcp_chat_proto::{DisconnectReason, ErrorCode, Event, FederationStatus, Reply, RoomId};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::{Place, Room, SessionId, State};
use crate::federation::{FromLink, ToLink};

/// What the hub knows of its link.
#[derive(Debug)]
pub(crate) struct Federated {
    to_link: mpsc::Sender<ToLink>,
    /// Waiting sessions go through the realm (else the local queue).
    up: bool,
    status: FederationStatus,
    /// Sessions waiting in the realm, with the id of an `enter_queue` not
    /// yet answered.
    waiting: HashMap<SessionId, Option<u64>>,
    /// Rooms whose partner is on another broker, while that partner is in.
    remote: HashSet<RoomId>,
}

impl Federated {
    pub(crate) fn new(to_link: mpsc::Sender<ToLink>) -> Self {
        Self {
            to_link,
            up: false,
            status: FederationStatus::default(),
            waiting: HashMap::new(),
            remote: HashSet::new(),
        }
    }

    /// Hands `msg` to the link. False when the link is overloaded or gone.
    fn tell(&self, msg: ToLink) -> bool {
        match self.to_link.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(msg)) => {
                tracing::error!(?msg, "federation link overloaded; dropping a request to it");
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

impl State {
    pub(crate) fn with_federation(mut self, to_link: Option<mpsc::Sender<ToLink>>) -> Self {
        self.federated = to_link.map(Federated::new);
        self
    }

    /// `enter_queue` through the realm, answered later. False: not for the
    /// realm (no link, link down, or not a session that may enter).
    pub(super) fn realm_enter(&mut self, session: SessionId, id: u64) -> bool {
        let Some(place) = self.sessions.get(&session).map(|s| s.place) else {
            return false;
        };
        if !self.federated.as_ref().is_some_and(|f| f.up) {
            return false;
        }
        match place {
            Place::Idle => {}
            Place::InRoom(room_id)
                if self.is_remote_room(room_id) || self.partner_of(session, room_id).is_some() =>
            {
                return false;
            }
            Place::InRoom(room_id) => {
                self.rooms.remove(&room_id);
            }
            Place::Waiting => {
                let Some(f) = self.federated.as_mut() else {
                    return false;
                };
                if let Some(pending) = f.waiting.get_mut(&session) {
                    // Asked again while still entering: answer once it has.
                    if pending.is_none() {
                        self.reply(session, id, Reply::Waiting { position: 1 });
                    } else {
                        *pending = Some(id);
                    }
                    return true;
                }
                return false;
            }
        }
        let Some(f) = self.federated.as_mut() else {
            return false;
        };
        if !f.tell(ToLink::Enter { session }) {
            self.reply(
                session,
                id,
                Reply::error(
                    ErrorCode::RateLimited,
                    "the broker's link to its realm is overloaded; try again in a moment",
                ),
            );
            return true;
        }
        f.waiting.insert(session, Some(id));
        self.set_place(session, Place::Waiting);
        true
    }

    /// `session` stops waiting: tell the link, if it waited in the realm.
    pub(super) fn realm_withdraw(&mut self, session: SessionId) {
        if let Some(f) = self.federated.as_mut()
            && f.waiting.remove(&session).is_some()
        {
            f.tell(ToLink::Withdraw { session });
        }
    }

    /// A detached realm waiter leaves the realm for the local queue (as
    /// detached, so nothing matches it); one resuming goes back.
    pub(super) fn realm_detach(&mut self, session: SessionId) {
        if self
            .federated
            .as_ref()
            .is_some_and(|f| f.waiting.contains_key(&session))
        {
            self.realm_withdraw(session);
            self.queue.push(session, false);
        }
    }

    pub(super) fn realm_resume(&mut self, session: SessionId) {
        let up = self.federated.as_ref().is_some_and(|f| f.up);
        if up
            && self
                .sessions
                .get(&session)
                .is_some_and(|s| s.place == Place::Waiting)
        {
            self.queue.remove(session);
            self.enter_realm(session);
        }
    }

    fn enter_realm(&mut self, session: SessionId) {
        if let Some(f) = self.federated.as_mut()
            && f.tell(ToLink::Enter { session })
        {
            f.waiting.insert(session, None);
        } else {
            // Not taken: it waits locally instead.
            self.queue.push(session, self.is_attached(session));
        }
    }

    /// Whether `room_id` is a room whose partner is on another broker.
    pub(super) fn is_remote_room(&self, room_id: RoomId) -> bool {
        self.federated
            .as_ref()
            .is_some_and(|f| f.remote.contains(&room_id))
    }

    /// A message for the remote partner: handed to the link.
    pub(super) fn relay_remote(&mut self, room_id: RoomId, text: String, sent_at: u64) -> bool {
        self.federated.as_ref().is_some_and(|f| {
            f.tell(ToLink::Send {
                room: room_id,
                text,
                sent_at,
            })
        })
    }

    /// Our side of a remote room ended: the partner's broker is told.
    pub(super) fn end_remote(&mut self, room_id: RoomId, reason: DisconnectReason) {
        if let Some(f) = self.federated.as_mut()
            && f.remote.remove(&room_id)
        {
            f.tell(ToLink::End {
                room: room_id,
                reason,
            });
        }
    }

    pub(super) fn federation_status(&self) -> Option<FederationStatus> {
        self.federated.as_ref().map(|f| FederationStatus {
            remote_rooms: f.remote.len(),
            ..f.status.clone()
        })
    }

    /// Everything the link reports.
    pub(crate) fn link_report(&mut self, msg: FromLink) {
        match msg {
            FromLink::Up => self.link_up(),
            FromLink::Down => self.link_down(),
            FromLink::Waiting { session, position } => {
                let pending = self
                    .federated
                    .as_mut()
                    .and_then(|f| f.waiting.get_mut(&session))
                    .and_then(Option::take);
                if let Some(id) = pending {
                    self.reply(session, id, Reply::Waiting { position });
                }
            }
            FromLink::Matched {
                session,
                room,
                local,
                confirm,
            } => {
                let taken = self.realm_matched(session, room, local, confirm.is_some());
                if let Some(confirm) = confirm {
                    let _ = confirm.send(taken);
                }
            }
            FromLink::PairedLocally { first, second } => self.paired_locally(first, second),
            FromLink::Message {
                room,
                text,
                sent_at,
            } => {
                if self.is_remote_room(room)
                    && let Some(&member) = self.rooms.get(&room).and_then(|r| r.members.first())
                {
                    self.emit(
                        member,
                        Event::MessageReceived {
                            room_id: room,
                            message: text,
                            sent_at,
                        },
                    );
                }
            }
            FromLink::PartnerEnded { room, reason } => {
                let was_remote = self
                    .federated
                    .as_mut()
                    .is_some_and(|f| f.remote.remove(&room));
                if was_remote
                    && let Some(&member) = self.rooms.get(&room).and_then(|r| r.members.first())
                {
                    self.emit(
                        member,
                        Event::PartnerDisconnected {
                            room_id: room,
                            reason,
                            undelivered: 0,
                            unconfirmed: 0,
                        },
                    );
                }
            }
            FromLink::Status(status) => {
                if let Some(f) = self.federated.as_mut() {
                    f.status = status;
                }
            }
        }
        self.detach_slow_consumers();
    }

    /// The link matched `session` into `room`. Taken only if the session
    /// still waits in the realm; a claimer's match that is not taken ends
    /// the room towards the waiter it claimed.
    fn realm_matched(
        &mut self,
        session: SessionId,
        room: RoomId,
        local: bool,
        asked: bool,
    ) -> bool {
        let pending = match self.federated.as_mut() {
            Some(f)
                if self
                    .sessions
                    .get(&session)
                    .is_some_and(|s| s.place == Place::Waiting) =>
            {
                match f.waiting.remove(&session) {
                    Some(pending) => pending,
                    None => return self.refuse_match(room, local, asked),
                }
            }
            _ => return self.refuse_match(room, local, asked),
        };
        match self.rooms.get_mut(&room) {
            // The second half of a match between two of our sessions.
            Some(r) if local => {
                r.members.push(session);
                self.full_rooms += 1;
            }
            _ => {
                self.rooms.insert(
                    room,
                    Room {
                        members: vec![session],
                    },
                );
                if !local && let Some(f) = self.federated.as_mut() {
                    f.remote.insert(room);
                }
            }
        }
        self.set_place(session, Place::InRoom(room));
        self.emit(session, Event::ChatroomFound { room_id: room });
        if let Some(id) = pending {
            self.reply(session, id, Reply::Matched { room_id: room });
        }
        tracing::debug!(%room, session, local, "matched through the realm");
        true
    }

    fn refuse_match(&mut self, room: RoomId, local: bool, asked: bool) -> bool {
        if asked {
            return false;
        }
        // We claimed a waiter for a session that has left since.
        if local {
            if let Some(members) = self.rooms.get(&room).map(|r| r.members.clone()) {
                for member in members {
                    self.emit(
                        member,
                        Event::PartnerDisconnected {
                            room_id: room,
                            reason: DisconnectReason::Left,
                            undelivered: 0,
                            unconfirmed: 0,
                        },
                    );
                }
            }
        } else if let Some(f) = self.federated.as_ref() {
            f.tell(ToLink::End {
                room,
                reason: DisconnectReason::Left,
            });
        }
        false
    }

    /// Opens a local room for two realm waiters of ours, if both still
    /// wait; one that does is entered again.
    fn paired_locally(&mut self, first: SessionId, second: SessionId) {
        let waiting = |state: &Self, s: SessionId| {
            state
                .sessions
                .get(&s)
                .is_some_and(|x| x.place == Place::Waiting)
                && state
                    .federated
                    .as_ref()
                    .is_some_and(|f| f.waiting.contains_key(&s))
        };
        match (waiting(self, first), waiting(self, second)) {
            (true, true) => {
                let pending: Vec<(SessionId, Option<u64>)> = [first, second]
                    .into_iter()
                    .map(|s| {
                        let id = self
                            .federated
                            .as_mut()
                            .and_then(|f| f.waiting.remove(&s))
                            .flatten();
                        (s, id)
                    })
                    .collect();
                let room_id = self.open_room(first, second);
                for (session, id) in pending {
                    if let Some(id) = id {
                        self.reply(session, id, Reply::Matched { room_id });
                    }
                }
            }
            (true, false) => self.reenter(first),
            (false, true) => self.reenter(second),
            (false, false) => {}
        }
    }

    /// A realm waiter whose match fell through enters again, keeping any
    /// unanswered `enter_queue`.
    fn reenter(&mut self, session: SessionId) {
        if let Some(f) = self.federated.as_ref()
            && !f.tell(ToLink::Enter { session })
        {
            self.realm_withdraw(session);
            self.queue.push(session, self.is_attached(session));
            self.try_match();
        }
    }

    /// Waiting goes through the realm: local waiters move there, in order.
    fn link_up(&mut self) {
        let Some(f) = self.federated.as_mut() else {
            return;
        };
        f.up = true;
        let local: Vec<SessionId> = self.queue.iter().filter(|&s| self.is_attached(s)).collect();
        for session in local {
            self.queue.remove(session);
            self.enter_realm(session);
        }
    }

    /// NATS is away: realm waiters wait (and match) locally meanwhile.
    fn link_down(&mut self) {
        let Some(f) = self.federated.as_mut() else {
            return;
        };
        f.up = false;
        let waiting: Vec<(SessionId, Option<u64>)> = f.waiting.drain().collect();
        for &(session, _) in &waiting {
            self.queue.push(session, self.is_attached(session));
        }
        self.try_match();
        for (session, pending) in waiting {
            if let Some(id) = pending {
                let reply = match self.sessions.get(&session).map(|s| s.place) {
                    Some(Place::InRoom(room_id)) => Reply::Matched { room_id },
                    _ => Reply::Waiting {
                        position: self.queue.position(session).unwrap_or(1),
                    },
                };
                self.reply(session, id, reply);
            }
        }
    }
}
