//! Entering the queue and finding a partner under [`super::rule`], through
//! the index in [`super::pool`]; pinging quiet waiters before matching.
//!
//! A seek runs for one session when something may have given it a partner:
//! it entered, it resumed, its interest wait ran out, or it answered the
//! ping sent before matching it. Whoever it could meet is already waiting,
//! so a seek never needs to look at anyone else's behalf.

use std::sync::Arc;

use mcp_chat_proto::{ErrorCode, Event, MatchInfo, Reply, RoomId, matching::Entry};
use tokio::time::Instant;

use super::pool::SCAN_LIMIT;
use super::rule::{Fit, Identity, Profile, fit};
use super::{Place, Room, SessionId, State, Tally};

impl State {
    pub(super) fn enter_queue(&mut self, session: SessionId, entry: &Entry) -> Reply {
        let Some(place) = self.sessions.get(&session).map(|s| s.place) else {
            return Reply::error(ErrorCode::UnknownRequest, "no such session");
        };
        let checked = match entry.checked() {
            Ok(checked) => checked,
            Err(refusal) => return Reply::error(refusal.code, refusal.message),
        };
        match place {
            // Its options stand as first given: a repeated call only asks
            // where it is.
            Place::Waiting => return self.waiting_reply(session),
            Place::InRoom(room_id)
                if self.partner_of(session, room_id).is_some() || self.is_remote_room(room_id) =>
            {
                return Reply::error(
                    ErrorCode::AlreadyInRoom,
                    format!("you are already chatting in room {room_id}; call leave_chat first"),
                );
            }
            // The partner already left: entering the queue again is the
            // obvious way to move on, so close the empty room for them.
            Place::InRoom(room_id) => {
                self.rooms.remove(&room_id);
            }
            Place::Idle => {}
        }
        let now = Instant::now();
        let installation = entry
            .block_id
            .as_deref()
            .map(|id| crate::block_file::installation_hash(&self.block_key, id));
        let open = checked.interests.is_empty() || checked.interest_wait_s == 0;
        let profile = Profile {
            kind: checked.kind,
            meet: checked.meet,
            interests: checked
                .interests
                .iter()
                .map(|t| Arc::from(t.as_str()))
                .collect(),
        };
        if let Some(s) = self.sessions.get_mut(&session) {
            s.installation = installation;
            s.kind = checked.kind;
            s.interest_deadline = None;
            if !open {
                let at = now + std::time::Duration::from_secs(checked.interest_wait_s);
                s.interest_deadline = Some(at);
                self.deadlines.insert((at, session));
            }
        }
        self.set_place(session, Place::Waiting);
        // Only an attached session sends requests.
        self.queue.push(session, true);
        self.pool.insert(session, profile, open);
        self.seek(session, now);
        self.placed_reply(session)
    }

    /// `matched` or `waiting`, as `session` now stands.
    pub(super) fn placed_reply(&self, session: SessionId) -> Reply {
        match self.sessions.get(&session).map(|s| s.place) {
            Some(Place::InRoom(room_id)) => Reply::Matched {
                room_id,
                partner: self.match_info(session, room_id),
            },
            _ => self.waiting_reply(session),
        }
    }

    /// Matches `session` with its best partner waiting now, if any (see
    /// [`super::rule`]). A quiet partner (or a quiet seeker) is pinged
    /// first and passed over: its answer runs a seek of its own, so it is
    /// matched as soon as it proves alive, and a frozen client never is.
    pub(super) fn seek(&mut self, session: SessionId, now: Instant) {
        if !self.pool.is_listed(session) {
            return;
        }
        if !self.is_fresh(session, now) {
            self.probe(session, now);
            return;
        }
        let Some((me, my_open)) = self.pool.profile(session) else {
            return;
        };
        let my_identity = self.identity(session);
        let mut best: Option<(u8, u64, SessionId, Fit)> = None;
        let mut quiet = Vec::new();
        for (shared, line) in self.pool.lines_for(session) {
            // A waiter on an open line who shares an interest is on that
            // interest's line too, where it was seen first.
            let line_rank = if shared { 0 } else { 1 };
            for &other in line.values().filter(|&&o| o != session).take(SCAN_LIMIT) {
                let Some(arrival) = self.pool.arrival(other) else {
                    continue;
                };
                if best
                    .as_ref()
                    .is_some_and(|&(rank, first, _, _)| (rank, first) <= (line_rank, arrival))
                {
                    // Nothing further along this line can beat the best.
                    break;
                }
                let Some((them, their_open)) = self.pool.profile(other) else {
                    continue;
                };
                let Some(how) = fit(me, my_open, them, their_open) else {
                    continue;
                };
                if self.blocks.blocked(my_identity, self.identity(other)) {
                    continue;
                }
                if !self.is_fresh(other, now) {
                    quiet.push(other);
                    continue;
                }
                let candidate = (how.rank(), arrival, other, how);
                if best
                    .as_ref()
                    .is_none_or(|b| (candidate.0, candidate.1) < (b.0, b.1))
                {
                    best = Some(candidate);
                }
                break;
            }
        }
        for other in quiet {
            self.probe(other, now);
        }
        if let Some((_, _, partner, how)) = best {
            self.pair(session, partner, how.common_interests());
        }
    }

    fn pair(&mut self, first: SessionId, second: SessionId, common: Vec<String>) {
        for member in [first, second] {
            self.queue.remove(member);
            self.pool.remove(member);
            if let Some(s) = self.sessions.get_mut(&member) {
                s.interest_deadline = None;
            }
        }
        self.open_room(first, second, common);
    }

    fn waiting_reply(&self, session: SessionId) -> Reply {
        let position = self.queue.position(session).unwrap_or(1);
        Reply::Waiting { position }
    }

    pub(super) fn identity(&self, session: SessionId) -> Identity {
        Identity {
            session,
            installation: self.sessions.get(&session).and_then(|s| s.installation),
        }
    }

    /// What `session` is told of its match in `room_id`.
    pub(super) fn match_info(&self, session: SessionId, room_id: RoomId) -> MatchInfo {
        let Some(room) = self.rooms.get(&room_id) else {
            return MatchInfo::default();
        };
        let partner_kind = room
            .parties
            .iter()
            .find(|p| p.identity.session != session)
            .map(|p| p.kind);
        MatchInfo {
            common_interests: room.common_interests.clone(),
            partner_kind,
        }
    }

    pub(super) fn open_room(
        &mut self,
        first: SessionId,
        second: SessionId,
        common: Vec<String>,
    ) -> RoomId {
        let room_id = RoomId::new_random();
        let parties = [self.room_party(first), self.room_party(second)];
        self.rooms.insert(
            room_id,
            Room {
                members: vec![first, second],
                parties,
                common_interests: common,
            },
        );
        self.full_rooms += 1;
        for member in [first, second] {
            self.set_place(member, Place::InRoom(room_id));
            let partner = self.match_info(member, room_id);
            self.emit(member, Event::ChatroomFound { room_id, partner });
        }
        tracing::debug!(%room_id, first, second, "matched");
        room_id
    }

    /// `session` as a party to a room on this broker.
    pub(super) fn room_party(&self, session: SessionId) -> super::RoomParty {
        super::RoomParty {
            identity: self.identity(session),
            kind: self
                .sessions
                .get(&session)
                .map(|s| s.kind)
                .unwrap_or_default(),
            who: self.sessions.get(&session).and_then(|s| s.realm_name),
        }
    }

    pub(super) fn set_place(&mut self, session: SessionId, place: Place) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.place = place;
            // Delivery counts are per room.
            s.tally = Tally::default();
        }
    }
}
