//! The hub's side of federation (see `crate::federation`): waiting through
//! the realm's queue, rooms whose partner is on another broker, and falling
//! back to the local queue while the link is down.
//!
//! The hub stays the arbiter of its own sessions: the link proposes a match
//! ([`FromLink::Matched`]) and the hub takes it only if the session is still
//! waiting in the realm. Everything it tells the link is `try_send`-ed: the
//! hub never waits on the network.
//!
//! Matching choices cross machines: an entering session first meets
//! whoever on this broker fits it now (`super::matching`); left waiting, it
//! waits in the realm with its profile (kind, whom it meets, interests,
//! whether its interest wait is over, and its realm name), where claimers apply
//! the same rule (`crate::federation::realm`). When its interest wait ends
//! (timed here, on this broker's clock), the link enters it again, open.
//!
//! Blocks: a session is named in the realm by a keyed hash of its
//! installation id under the realm's key and a random id of its own
//! (`crate::federation::blocks`); a block with a partner on
//! another broker is a realm block, written to the realm's bucket before
//! `blocked` is answered, and a block between two sessions of this broker
//! is written there too, so claimers on every broker skip the pair. Before
//! it confirms a claim, the hub checks the pair once more: the rule, the
//! realm blocks it knows, and, when both are its own sessions, its own
//! blocks (which also hold blocks kept from an earlier broker process,
//! named by installation only: such a pair found here is written to the
//! realm then, so claimers skip it next time).

use std::collections::{HashMap, HashSet};

use mcp_chat_proto::matching::Entry;
use mcp_chat_proto::{DisconnectReason, Event, FederationStatus, InterestCount, Reply, RoomId};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

use super::remote::RemoteRooms;
use super::rule::{Identity, Profile, fit};
use super::{Delivery, Place, Room, RoomParty, SessionId, State};
use crate::federation::blocks::{self, RealmKey, RealmName, block_key, is_blocked};
use crate::federation::{Answer, EndReport, FromLink, RealmProfile, ToLink, who_hex};

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
    /// The realm's key, once the link has it; kept across outages.
    realm_key: Option<RealmKey>,
    /// What the sessions waiting in the realm asked for.
    profiles: HashMap<SessionId, Profile>,
    /// Pair keys of the realm's blocks (see `crate::federation::blocks`).
    realm_blocks: HashSet<String>,
    /// The realm's busiest interests, as the link last counted them.
    busiest: Vec<InterestCount>,
    /// Realm waiters whose claim found them quiet: pinged, and out of the
    /// realm until they answer (see [`Answer::Quiet`]).
    paused: HashSet<SessionId>,
}

impl Federated {
    pub(crate) fn new(to_link: mpsc::Sender<ToLink>) -> Self {
        Self {
            to_link,
            up: false,
            status: FederationStatus::default(),
            waiting: HashMap::new(),
            remote: RemoteRooms::default(),
            realm_key: None,
            profiles: HashMap::new(),
            realm_blocks: HashSet::new(),
            busiest: Vec::new(),
            paused: HashSet::new(),
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
    /// the session now comes first (one the realm does not hold: its client
    /// is away, or the link was down); a session left waiting then waits in
    /// the realm, answered later. False: not for the realm (no link, link
    /// down), so the local path answers.
    pub(super) fn realm_enter(&mut self, session: SessionId, id: u64, entry: &Entry) -> bool {
        let Some(place) = self.sessions.get(&session).map(|s| s.place) else {
            return false;
        };
        let Some(up) = self.federated.as_ref().map(|f| f.up) else {
            return false;
        };
        match place {
            Place::Waiting => {
                let Some(f) = self.federated.as_mut().filter(|f| f.up) else {
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
        if entry.checked().is_err() {
            // The local path answers with the precise error.
            return false;
        }
        self.name_in_realm(session, entry.block_id.as_deref());
        if !up {
            return false;
        }
        let reply = self.enter_queue(session, entry);
        if !matches!(reply, Reply::Waiting { .. }) || !self.move_to_realm(session) {
            // Matched here, or the link is overloaded: it waits here.
            self.reply(session, id, reply);
            return true;
        }
        if let Some(f) = self.federated.as_mut() {
            f.waiting.insert(session, Some(id));
        }
        true
    }

    /// Gives `session` its name in the realm: the keyed hash of its
    /// installation id (else a random one), and a random one of its own,
    /// both kept for the session's life.
    fn name_in_realm(&mut self, session: SessionId, block_id: Option<&str>) {
        let key = self.federated.as_ref().and_then(|f| f.realm_key);
        if let Some(s) = self.sessions.get_mut(&session) {
            let name = s.realm_name.get_or_insert_with(RealmName::random);
            if let (Some(key), Some(id)) = (key, block_id) {
                name.who = blocks::who(&key, id);
            }
        }
    }

    /// What `session` asks of its match, as the realm carries it.
    fn realm_profile(&mut self, session: SessionId, profile: &Profile) -> RealmProfile {
        let s = self.sessions.get_mut(&session);
        let open = s.as_ref().is_none_or(|s| s.interest_deadline.is_none());
        let name = s.map_or_else(RealmName::random, |s| {
            *s.realm_name.get_or_insert_with(RealmName::random)
        });
        RealmProfile {
            kind: profile.kind,
            meet: profile.meet,
            interests: profile.interests.iter().map(|t| t.to_string()).collect(),
            open,
            who: who_hex(name.who),
            sid: who_hex(name.sid),
        }
    }

    /// Moves a waiter of the local pool to the realm, with its profile.
    /// False (and it stays here) when it is not attached or the link does
    /// not take it.
    fn move_to_realm(&mut self, session: SessionId) -> bool {
        if !self.is_attached(session) {
            return false;
        }
        let Some(profile) = self.pool.profile(session).map(|(p, _)| p.clone()) else {
            return false;
        };
        let wire = self.realm_profile(session, &profile);
        let Some(f) = self.federated.as_mut() else {
            return false;
        };
        if !f.tell(ToLink::Enter {
            session,
            profile: wire,
        }) {
            return false;
        }
        f.waiting.insert(session, None);
        f.profiles.insert(session, profile);
        self.queue.remove(session);
        self.pool.remove(session);
        true
    }

    /// A realm waiter's interest wait is over: the link enters it again,
    /// open (see `crate::federation::realm`).
    pub(super) fn realm_open(&mut self, session: SessionId) {
        if let Some(f) = self.federated.as_ref()
            && f.waiting.contains_key(&session)
        {
            f.tell(ToLink::Open { session });
        }
    }

    /// `leave_chat` with `block` in a room whose partner is on another
    /// broker: the block is a realm block, answered once written. False
    /// when it is not such a room (the local path answers).
    pub(super) fn realm_block(&mut self, session: SessionId, id: u64, room_id: RoomId) -> bool {
        if !self.is_remote_room(room_id) || !self.is_member(session, room_id) {
            return false;
        }
        let Some(room) = self.rooms.get(&room_id) else {
            return false;
        };
        let mine = room.parties.iter().find(|p| p.identity.session == session);
        let theirs = room.parties.iter().find(|p| p.identity.session != session);
        let (Some(a), Some(b)) = (mine.and_then(|p| p.who), theirs.and_then(|p| p.who)) else {
            return false;
        };
        let key = block_key(a, b);
        let reply = self.leave_chat(session, room_id, false);
        if reply != Reply::Left {
            self.reply(session, id, reply);
            return true;
        }
        let Some(f) = self.federated.as_mut() else {
            return false;
        };
        blocks::remember(&mut f.realm_blocks, key.clone());
        if !f.tell(ToLink::Block {
            key,
            reply: Some((session, id)),
        }) {
            // Kept by this broker, which takes part in every match of its
            // own session.
            self.reply(session, id, Reply::Blocked);
        }
        true
    }

    /// A block between two sessions known by their realm names goes to the
    /// realm too, so claimers on every broker skip the pair.
    pub(super) fn share_block(&mut self, a: Option<RealmName>, b: Option<RealmName>) {
        let (Some(a), Some(b)) = (a, b) else {
            return;
        };
        if let Some(f) = self.federated.as_mut() {
            let key = block_key(a, b);
            if !f.realm_blocks.contains(&key) {
                blocks::remember(&mut f.realm_blocks, key.clone());
                f.tell(ToLink::Block { key, reply: None });
            }
        }
    }

    /// Whether the claim of `session` by `partner` may stand: the rule, the
    /// realm's blocks, and this broker's own blocks for a partner that is
    /// one of its sessions.
    fn realm_pair_fits(
        &mut self,
        session: SessionId,
        partner: &RealmProfile,
        partner_session: Option<SessionId>,
    ) -> bool {
        let Some(f) = self.federated.as_ref() else {
            return false;
        };
        let open = self
            .sessions
            .get(&session)
            .is_some_and(|s| s.interest_deadline.is_none());
        let fits = f
            .profiles
            .get(&session)
            .is_some_and(|mine| fit(mine, open, &rule_profile(partner), partner.open).is_some());
        let mine = self.sessions.get(&session).and_then(|s| s.realm_name);
        let theirs = partner.name();
        if !fits || mine.is_some_and(|m| is_blocked(&f.realm_blocks, m, theirs)) {
            return false;
        }
        if let Some(other) = partner_session
            && self
                .blocks
                .blocked(self.identity(session), self.identity(other))
        {
            self.share_block(mine, Some(theirs));
            return false;
        }
        true
    }

    /// Waiting sessions on this broker and in the realm (which holds this
    /// broker's realm waiters too).
    pub(super) fn realm_waiting(&self) -> usize {
        self.federated
            .as_ref()
            .filter(|f| f.up)
            .map_or(0, |f| f.status.waiting_in_realm)
    }

    /// The ten busiest interests: this broker's own pool and, with the
    /// realm, the realm's busiest (each list its own ten, so a tag outside
    /// the realm's ten counts only its waiters here).
    pub(super) fn busiest_interests(&self) -> Vec<InterestCount> {
        let local = self.pool.busiest();
        let Some(f) = self.federated.as_ref().filter(|f| f.up) else {
            return local;
        };
        let mut counts: HashMap<String, usize> = HashMap::new();
        for c in local.into_iter().chain(f.busiest.iter().cloned()) {
            *counts.entry(c.interest).or_default() += c.waiting;
        }
        let mut all: Vec<InterestCount> = counts
            .into_iter()
            .map(|(interest, waiting)| InterestCount { interest, waiting })
            .collect();
        all.sort_by(|a, b| {
            b.waiting
                .cmp(&a.waiting)
                .then_with(|| a.interest.cmp(&b.interest))
        });
        all.truncate(super::BUSIEST_SHOWN);
        all
    }

    /// `session` stops waiting: tell the link, if it waited in the realm.
    pub(super) fn realm_withdraw(&mut self, session: SessionId) {
        if let Some(f) = self.federated.as_mut()
            && f.waiting.remove(&session).is_some()
        {
            f.tell(ToLink::Withdraw { session });
        }
        if let Some(f) = self.federated.as_mut() {
            f.profiles.remove(&session);
            f.paused.remove(&session);
        }
    }

    /// A realm waiter pinged before a claim answered: back to the realm.
    pub(super) fn realm_alive(&mut self, session: SessionId) {
        if let Some(f) = self.federated.as_mut()
            && f.paused.remove(&session)
        {
            f.tell(ToLink::Resume { session });
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
            let profile = self
                .federated
                .as_mut()
                .and_then(|f| f.profiles.remove(&session));
            self.realm_withdraw(session);
            self.list_locally(session, profile);
        }
    }

    /// A realm waiter waits in the local queue instead, with what it asked
    /// for (plain if that is not known).
    fn list_locally(&mut self, session: SessionId, profile: Option<Profile>) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let open = s.interest_deadline.is_none();
        let profile = profile.unwrap_or_else(|| Profile {
            kind: s.kind,
            meet: Default::default(),
            interests: Vec::new(),
        });
        let attached = self.is_attached(session);
        self.queue.push(session, attached);
        self.pool.insert(session, profile, open);
        if attached {
            self.seek(session, Instant::now());
        } else {
            self.pool.unlist(session);
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
            self.move_to_realm(session);
        }
    }

    /// Whether `room_id` is a room whose partner is on another broker.
    pub(super) fn is_remote_room(&self, room_id: RoomId) -> bool {
        self.federated
            .as_ref()
            .is_some_and(|f| f.remote.contains(&room_id))
    }

    /// A message for the remote partner: put straight in the room's
    /// publisher queue, else handed to the link. A full queue (which the
    /// credit keeps from happening) sends this text and every later one of
    /// the room through the link, in order; the link ends the room if the
    /// queue is still full.
    pub(super) fn relay_remote(&mut self, room_id: RoomId, text: String, sent_at: u64) -> bool {
        let Some(f) = self.federated.as_mut() else {
            return false;
        };
        let told = match f.remote.queue_text(room_id, text, sent_at) {
            Ok(()) => true,
            Err((text, sent_at)) => f.tell(ToLink::Send {
                room: room_id,
                text,
                sent_at,
            }),
        };
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
                partner,
                partner_session,
                outbox,
            } => {
                let asked = confirm.is_some();
                let answer =
                    self.realm_matched(session, room, local, asked, &partner, partner_session);
                if answer == Answer::Taken
                    && let Some(outbox) = outbox
                {
                    self.remote_outbox(room, outbox);
                }
                if let Some(confirm) = confirm
                    && confirm.send(answer).is_err()
                    && answer == Answer::Taken
                {
                    self.taken_too_late(session, room, local);
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
            FromLink::Overflowed { room, queued } => self.remote_overflowed(room, queued),
            FromLink::Published { room, count } => self.remote_published(room, count),
            FromLink::Delivered { room, count } => self.remote_delivered(room, count),
            FromLink::Status(status) => {
                if let Some(f) = self.federated.as_mut() {
                    f.status = status;
                }
            }
            FromLink::RealmKey(key) => {
                if let Some(f) = self.federated.as_mut() {
                    f.realm_key = Some(key);
                }
            }
            FromLink::RealmBlock(key) => {
                if let Some(f) = self.federated.as_mut() {
                    blocks::remember(&mut f.realm_blocks, key);
                }
            }
            FromLink::BlockSaved { session, id } => self.reply(session, id, Reply::Blocked),
            FromLink::Busiest(busiest) => {
                if let Some(f) = self.federated.as_mut() {
                    f.busiest = busiest;
                }
            }
        }
        self.detach_slow_consumers();
    }

    /// The link matched `session` into `room` with `partner`. Taken only if
    /// the session still waits in the realm and, for a claim it is asked
    /// about, its client is fresh (a quiet one is pinged first, exactly as
    /// before a local match, so a frozen client is never matched across
    /// brokers either) and the pair still fits (see `realm_pair_fits`; a
    /// waiter refused so stays, and its link enters it again); a claimer's
    /// match that is not taken ends the room towards the waiter it claimed.
    fn realm_matched(
        &mut self,
        session: SessionId,
        room: RoomId,
        local: bool,
        asked: bool,
        partner: &RealmProfile,
        partner_session: Option<SessionId>,
    ) -> Answer {
        // A room id already in use is refused without touching that room:
        // only the second half of a pair of our own sessions joins one, the
        // half-open local room its first half made.
        let half_open = |r: &Room| {
            r.members.len() == 1
                && self
                    .federated
                    .as_ref()
                    .is_some_and(|f| !f.remote.contains(&room))
        };
        if let Some(r) = self.rooms.get(&room)
            && !(local && !asked && half_open(r))
        {
            tracing::warn!(%room, session, "federation: refused a match into a room that exists");
            return Answer::Refused;
        }
        let waits = self
            .sessions
            .get(&session)
            .is_some_and(|s| s.place == Place::Waiting)
            && self
                .federated
                .as_ref()
                .is_some_and(|f| f.waiting.contains_key(&session));
        if !waits {
            if asked && let Some(f) = self.federated.as_ref() {
                // Not (or no longer) a realm waiter: the link drops it.
                f.tell(ToLink::Withdraw { session });
            }
            self.refuse_match(room, local, asked);
            return Answer::Refused;
        }
        if asked {
            let now = Instant::now();
            if !self.is_fresh(session, now) {
                self.probe(session, now);
                if let Some(f) = self.federated.as_mut() {
                    f.paused.insert(session);
                }
                return Answer::Quiet;
            }
            if !self.realm_pair_fits(session, partner, partner_session) {
                return Answer::Refused;
            }
        }
        let open = self
            .sessions
            .get(&session)
            .is_some_and(|s| s.interest_deadline.is_none());
        let Some((pending, mine)) = self.federated.as_mut().map(|f| {
            (
                f.waiting.remove(&session).flatten(),
                f.profiles.remove(&session),
            )
        }) else {
            return Answer::Refused;
        };
        if let Some(s) = self.sessions.get_mut(&session) {
            s.interest_deadline = None;
        }
        let common = mine
            .and_then(|mine| fit(&mine, open, &rule_profile(partner), partner.open))
            .map(super::rule::Fit::common_interests)
            .unwrap_or_default();
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
                // broker: that partner stands as what its profile says,
                // named for blocks by its realm name only.
                let stranger = RoomParty {
                    identity: Identity {
                        session: SessionId::MAX,
                        installation: None,
                    },
                    kind: partner.kind,
                    who: Some(partner.name()),
                };
                self.rooms.insert(
                    room,
                    Room {
                        members: vec![session],
                        parties: [me, stranger],
                        common_interests: common,
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
        Answer::Taken
    }

    /// The link stopped waiting for our answer to a claim (the hub was
    /// slower than its timeout): it told the claimer no, dropped the room
    /// and entered `session` again, but we had put the session in the
    /// room. Undone as if the partner had vanished at once, so the session
    /// hears of it instead of waiting on a partner that never comes, and
    /// the link drops its new entry (the session is told the room ended,
    /// not put back in the queue behind its back).
    fn taken_too_late(&mut self, session: SessionId, room: RoomId, local: bool) {
        tracing::warn!(%room, session, "federation: a claim was taken after the link gave up on it; ending the room");
        if local {
            self.emit(
                session,
                Event::PartnerDisconnected {
                    room_id: room,
                    reason: DisconnectReason::Disconnected,
                    undelivered: 0,
                    unconfirmed: 0,
                },
            );
        } else {
            self.remote_ended(room, DisconnectReason::Disconnected, None);
        }
        if let Some(f) = self.federated.as_ref() {
            f.tell(ToLink::Withdraw { session });
        }
    }

    fn refuse_match(&mut self, room: RoomId, local: bool, asked: bool) {
        if asked {
            return;
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
    }

    /// Opens a local room for two realm waiters of ours, if both still
    /// wait and no block holds between them; one that still waits (or both,
    /// kept apart by a block, now shared with the realm) enters again.
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
                let name =
                    |state: &Self, s: SessionId| state.sessions.get(&s).and_then(|x| x.realm_name);
                let (a, b) = (name(self, first), name(self, second));
                let realm_blocked = match (a, b, self.federated.as_ref()) {
                    (Some(a), Some(b), Some(f)) => is_blocked(&f.realm_blocks, a, b),
                    _ => false,
                };
                if realm_blocked
                    || self
                        .blocks
                        .blocked(self.identity(first), self.identity(second))
                {
                    // Blocked after they entered the realm: shared with it
                    // first, so the claimers skip the pair from now on.
                    self.share_block(a, b);
                    self.reenter(first);
                    self.reenter(second);
                    return;
                }
                let open = |state: &Self, s: SessionId| {
                    state
                        .sessions
                        .get(&s)
                        .is_some_and(|x| x.interest_deadline.is_none())
                };
                let (open_a, open_b) = (open(self, first), open(self, second));
                let mut pending = Vec::new();
                let mut profiles = Vec::new();
                for s in [first, second] {
                    let (id, profile) = self
                        .federated
                        .as_mut()
                        .map(|f| (f.waiting.remove(&s).flatten(), f.profiles.remove(&s)))
                        .unwrap_or_default();
                    pending.push((s, id));
                    profiles.push(profile);
                }
                let common = match (&profiles[0], &profiles[1]) {
                    (Some(p), Some(q)) => fit(p, open_a, q, open_b)
                        .map(super::rule::Fit::common_interests)
                        .unwrap_or_default(),
                    _ => Vec::new(),
                };
                for s in [first, second] {
                    if let Some(x) = self.sessions.get_mut(&s) {
                        x.interest_deadline = None;
                    }
                }
                let room_id = self.open_room(first, second, common);
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
        let Some(profile) = self
            .federated
            .as_ref()
            .and_then(|f| f.profiles.get(&session).cloned())
        else {
            return;
        };
        let wire = self.realm_profile(session, &profile);
        if let Some(f) = self.federated.as_ref()
            && !f.tell(ToLink::Enter {
                session,
                profile: wire,
            })
        {
            let profile = self
                .federated
                .as_mut()
                .and_then(|f| f.profiles.remove(&session));
            let pending = self
                .federated
                .as_mut()
                .and_then(|f| f.waiting.remove(&session))
                .flatten();
            self.realm_withdraw(session);
            self.list_locally(session, profile);
            if let Some(id) = pending {
                let reply = self.placed_reply(session);
                self.reply(session, id, reply);
            }
        }
    }

    /// Waiting goes through the realm: local waiters move there, in order.
    fn link_up(&mut self) {
        let Some(f) = self.federated.as_mut() else {
            return;
        };
        f.up = true;
        for session in self.pool.in_arrival_order() {
            self.move_to_realm(session);
        }
    }

    /// NATS is away: realm waiters wait (and match) locally meanwhile.
    fn link_down(&mut self) {
        let Some(f) = self.federated.as_mut() else {
            return;
        };
        f.up = false;
        f.paused.clear();
        let waiting: Vec<(SessionId, Option<u64>)> = f.waiting.drain().collect();
        let mut profiles = std::mem::take(&mut f.profiles);
        for &(session, _) in &waiting {
            self.list_locally(session, profiles.remove(&session));
        }
        for (session, pending) in waiting {
            if let Some(id) = pending {
                let reply = self.placed_reply(session);
                self.reply(session, id, reply);
            }
        }
    }
}

/// A realm profile as the rule reads it.
fn rule_profile(p: &RealmProfile) -> Profile {
    Profile {
        kind: p.kind,
        meet: p.meet,
        interests: p
            .interests
            .iter()
            .map(|t| std::sync::Arc::from(t.as_str()))
            .collect(),
    }
}
