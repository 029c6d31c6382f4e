//! The waiting queue: first come, first matched, and only live sessions.

use mcp_chat_proto::{ErrorCode, Event, Reply, RoomId};
use tokio::time::Instant;

use super::{Place, Room, SessionId, State, Tally};

impl State {
    pub(super) fn enter_queue(&mut self, session: SessionId) -> Reply {
        let Some(place) = self.sessions.get(&session).map(|s| s.place) else {
            return Reply::error(ErrorCode::UnknownRequest, "no such session");
        };
        match place {
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
        self.set_place(session, Place::Waiting);
        // Only an attached session sends requests.
        self.queue.push(session, true);
        self.try_match();
        match self.sessions.get(&session).map(|s| s.place) {
            Some(Place::InRoom(room_id)) => Reply::Matched { room_id },
            _ => self.waiting_reply(session),
        }
    }

    /// Pairs the two longest-waiting live sessions, as long as there are two.
    /// A waiter quiet for longer than the freshness window is pinged first
    /// and the pairing waits for its answer, so a frozen client is never
    /// matched; a detached one is skipped until it resumes.
    pub(super) fn try_match(&mut self) {
        let now = Instant::now();
        loop {
            let pair = {
                let mut candidates = self.queue.iter().filter(|&s| self.is_attached(s));
                (candidates.next(), candidates.next())
            };
            let (Some(first), Some(second)) = pair else {
                return;
            };
            let stale: Vec<SessionId> = [first, second]
                .into_iter()
                .filter(|&s| !self.is_fresh(s, now))
                .collect();
            if !stale.is_empty() {
                for session in stale {
                    self.probe(session, now);
                }
                return;
            }
            self.queue.remove(first);
            self.queue.remove(second);
            self.open_room(first, second);
        }
    }

    fn waiting_reply(&self, session: SessionId) -> Reply {
        let position = self.queue.position(session).unwrap_or(1);
        Reply::Waiting { position }
    }

    pub(super) fn open_room(&mut self, first: SessionId, second: SessionId) -> RoomId {
        let room_id = RoomId::new_random();
        self.rooms.insert(
            room_id,
            Room {
                members: vec![first, second],
            },
        );
        self.full_rooms += 1;
        for member in [first, second] {
            self.set_place(member, Place::InRoom(room_id));
            self.emit(member, Event::ChatroomFound { room_id });
        }
        tracing::debug!(%room_id, first, second, "matched");
        room_id
    }

    pub(super) fn set_place(&mut self, session: SessionId, place: Place) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.place = place;
            // Delivery counts are per room.
            s.tally = Tally::default();
        }
    }
}
