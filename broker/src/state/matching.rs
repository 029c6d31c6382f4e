//! The waiting queue: first come, first matched.

use mcp_chat_proto::{ErrorCode, Event, Reply, RoomId};

use super::{Place, Room, SessionId, State};

impl State {
    pub(super) fn enter_queue(&mut self, session: SessionId) -> Reply {
        match self.sessions[&session].place {
            Place::Waiting => return self.waiting_reply(session),
            Place::InRoom(room_id) if self.partner_of(session, room_id).is_some() => {
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
        self.queue.push_back(session);
        let mut matched = None;
        while self.queue.len() >= 2 {
            let (Some(first), Some(second)) = (self.queue.pop_front(), self.queue.pop_front())
            else {
                break;
            };
            let room_id = self.open_room(first, second);
            if session == first || session == second {
                matched = Some(room_id);
            }
        }
        match matched {
            Some(room_id) => Reply::Matched { room_id },
            None => self.waiting_reply(session),
        }
    }

    fn waiting_reply(&self, session: SessionId) -> Reply {
        let position = self
            .queue
            .iter()
            .position(|&s| s == session)
            .map_or(0, |i| i + 1);
        Reply::Waiting { position }
    }

    fn open_room(&mut self, first: SessionId, second: SessionId) -> RoomId {
        let room_id = RoomId::new_random();
        self.rooms.insert(
            room_id,
            Room {
                members: vec![first, second],
            },
        );
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
        }
    }
}
