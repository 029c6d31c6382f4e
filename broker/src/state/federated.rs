//! The hub's side of federation (see `crate::federation`): waiting through
//! the realm's queue, rooms whose partner is on another broker, and falling
//! back to the local queue while the link is down.
//!
//! The hub stays the arbiter of its own sessions: the link proposes a match
//! ([`FromLink::Matched`]) and the hub takes it only if the session is still
//! waiting in the realm. Everything it tells the link is `try_send`-ed: the
//! hub never waits on the network.
//!
//! Only the plain queue crosses machines: the realm's waiter entries carry
//! no profile yet. An entering session first meets whoever on this broker
//! fits it now (`super::matching`, where interests, kinds and blocks are
//! applied); left waiting, it moves to the realm only when it asked for no
//! interests, meets anyone, and no block this broker holds involves it.
//! Anything else waits on this broker's own queue. Blocks are recorded only
//! in rooms on this broker (a remote partner's installation is never known
//! here, so blocking one is refused), so a realm pair can only be a blocked
//! pair when both are ours and one was blocked after both entered:
//! `paired_locally` checks that and keeps them on the local queue.

use std::collections::HashMap;

use mcp_chat_proto::matching::{Entry, Meet};
use mcp_chat_proto::{DisconnectReason, Event, FederationStatus, Reply, RoomId};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

use super::remote::RemoteRooms;
use super::rule::{Identity, Profile};
use super::{Delivery, Place, Room, RoomParty, SessionId, State};
use crate::federation::{EndReport, FromLink, ToLink};

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
    /// Rooms whose partner is on another broker, while that partner is in,
    /// with their delivery counts and credit (`super::remote`).
    pub(super) remote: RemoteRooms,
}

impl Federated {
    pub(crate) fn new(to_link: mpsc::Sender<ToLink>) -> Self {
        Self {
            to_link,
            up: false,
            status: FederationStatus::default(),
            waiting: HashMap::new(),
            remote: RemoteRooms::default(),
        }
    }

    /// Hands `msg` to the link. False when the link is overloaded or gone.
    pub(super) fn tell(&self, msg: ToLink) -> bool {
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

    /// `enter_queue` with the realm: a waiter on this broker who can meet
    /// the session now comes first (one the realm never sees: it asked for
    /// interests or a kind, or a block involves it); a plain session left
    /// waiting then waits in the realm, answered later. False: not for the
    /// realm (no link, link down, options the realm does not carry), so the
    /// local path answers.
    pub(super) fn realm_enter(&mut self, session: SessionId, id: u64, entry: &Entry) -> bool {
        let Some(place) = self.sessions.get(&session).map(|s| s.place) else {
            return false;
        };
        if !self.federated.as_ref().is_some_and(|f| f.up) {
            return false;
        }
        match place {
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
            Place::InRoom(room_id)
                if self.is_remote_room(room_id) || self.partner_of(session, room_id).is_some() =>
            {
                return false;
            }
            Place::InRoom(_) | Place::Idle => {}
        }
        let Ok(checked) = entry.checked() else {
            // The local path answers with the precise error.
            return false;
        };
        if !checked.interests.is_empty() || checked.meet != Meet::Anyone {
            return false;
        }
        let reply = self.enter_queue(session, entry);
        if !matches!(reply, Reply::Waiting { .. }) || self.blocks.involves(self.identity(session)) {
            self.reply(session, id, reply);
            return true;
        }
        let Some(f) = self.federated.as_mut() else {
            return false;
        };
        if !f.tell(ToLink::Enter { session }) {
            // The link is overloaded: it waits here instead.
            self.reply(session, id, reply);
            return true;
        }
        f.waiting.insert(session, Some(id));
        self.queue.remove(session);
        self.pool.remove(session);
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
            self.list_locally(session);
        }
    }

    /// A realm waiter waits in the local queue instead, as what it is,
    /// meeting anyone, with no interests (the options the realm carries).
    fn list_locally(&mut self, session: SessionId) {
        let kind = self
            .sessions
            .get(&session)
            .map(|s| s.kind)
            .unwrap_or_default();
        let attached = self.is_attached(session);
        self.queue.push(session, attached);
        let profile = Profile {
            kind,
            meet: Meet::Anyone,
            interests: Vec::new(),
        };
        self.pool.insert(session, profile, true);
        if attached {
            self.seek(session, Instant::now());
        } else {
            self.pool.unlist(session);
        }
    }

    /// Whether a local waiter may move to the realm: it asked for nothing
    /// the realm does not carry, and no block involves it.
    fn realm_eligible(&self, session: SessionId) -> bool {
        self.is_attached(session)
            && self
                .pool
                .profile(session)
                .is_some_and(|(p, _)| p.meet == Meet::Anyone && p.interests.is_empty())
            && !self.blocks.involves(self.identity(session))
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
            self.pool.remove(session);
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
            self.list_locally(session);
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
        let told = self.federated.as_ref().is_some_and(|f| {
            f.tell(ToLink::Send {
                room: room_id,
                text,
                sent_at,
            })
        });
        if told {
            self.remote_sent(room_id);
        }
        told
    }

    /// Our side of a remote room ended: the partner's broker is told, with
    /// what our member's client did not get of its texts (`counts`).
    pub(super) fn end_remote(
        &mut self,
        room_id: RoomId,
        reason: DisconnectReason,
        counts: Delivery,
    ) {
        if self.is_remote_room(room_id) {
            let report = self.remote_report(room_id, counts);
            if let Some(f) = self.federated.as_ref() {
                f.tell(ToLink::End {
                    room: room_id,
                    reason,
                    report,
                });
            }
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
            } => self.remote_message(room, text, sent_at),
            FromLink::PartnerEnded {
                room,
                reason,
                report,
            } => self.remote_ended(room, reason, report),
            FromLink::Published { room, count } => self.remote_published(room, count),
            FromLink::Delivered { room, count } => self.remote_delivered(room, count),
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
        let me = self.room_party(session);
        match self.rooms.get_mut(&room) {
            // The second half of a match between two of our sessions.
            Some(r) if local => {
                r.members.push(session);
                r.parties[1] = me;
                self.full_rooms += 1;
            }
            _ => {
                // The first half, or a room with a partner on another
                // broker: that partner's kind and installation are not
                // known here, so it stands as a party no block can name.
                let stranger = RoomParty {
                    identity: Identity {
                        session: SessionId::MAX,
                        installation: None,
                    },
                    kind: Default::default(),
                    known: false,
                };
                self.rooms.insert(
                    room,
                    Room {
                        members: vec![session],
                        parties: [me, stranger],
                        common_interests: Vec::new(),
                    },
                );
                if !local && let Some(f) = self.federated.as_mut() {
                    f.remote.insert(room);
                }
            }
        }
        self.set_place(session, Place::InRoom(room));
        let partner = self.match_info(session, room);
        self.emit(
            session,
            Event::ChatroomFound {
                room_id: room,
                partner: partner.clone(),
            },
        );
        if let Some(id) = pending {
            self.reply(
                session,
                id,
                Reply::Matched {
                    room_id: room,
                    partner,
                },
            );
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
                report: EndReport::default(),
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
            (true, true)
                if self
                    .blocks
                    .blocked(self.identity(first), self.identity(second)) =>
            {
                // Blocked after they entered the realm: the local queue
                // keeps them apart.
                for session in [first, second] {
                    let pending = self
                        .federated
                        .as_mut()
                        .and_then(|f| f.waiting.remove(&session))
                        .flatten();
                    self.realm_withdraw(session);
                    self.list_locally(session);
                    if let Some(id) = pending {
                        let reply = self.placed_reply(session);
                        self.reply(session, id, reply);
                    }
                }
            }
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
                let room_id = self.open_room(first, second, Vec::new());
                for (session, id) in pending {
                    if let Some(id) = id {
                        let partner = self.match_info(session, room_id);
                        self.reply(session, id, Reply::Matched { room_id, partner });
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
            self.list_locally(session);
        }
    }

    /// Waiting goes through the realm: local waiters move there, in order.
    fn link_up(&mut self) {
        let Some(f) = self.federated.as_mut() else {
            return;
        };
        f.up = true;
        let local: Vec<SessionId> = self
            .pool
            .in_arrival_order()
            .into_iter()
            .filter(|&s| self.realm_eligible(s))
            .collect();
        for session in local {
            self.queue.remove(session);
            self.pool.remove(session);
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
            self.list_locally(session);
        }
        for (session, pending) in waiting {
            if let Some(id) = pending {
                let reply = self.placed_reply(session);
                self.reply(session, id, reply);
            }
        }
    }
}
