//! Rooms: relaying messages and leaving.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcp_chat_proto::message::check_message;
use mcp_chat_proto::{DisconnectReason, ErrorCode, Event, Reply, RoomId};

use super::rate::rate_limited;
use super::{Delivery, Place, SessionId, State};

impl State {
    pub(super) fn send_message(
        &mut self,
        session: SessionId,
        room_id: RoomId,
        message: String,
        now: tokio::time::Instant,
    ) -> Reply {
        if !self.is_member(session, room_id) {
            return unknown_room(room_id);
        }
        if let Err(refusal) = check_message(&message) {
            return Reply::error(refusal.code, refusal.message);
        }
        // Every check comes before anything is spent, so a refused message
        // costs nothing.
        let bytes = message.len() as f64;
        if let Some(s) = self.sessions.get_mut(&session) {
            let waits = [
                s.sending.wait_for(now, 1.0).err(),
                s.sending_bytes.wait_for(now, bytes).err(),
            ];
            if let Some(wait) = waits.into_iter().flatten().max() {
                return rate_limited(
                    wait,
                    "you are sending faster than this broker allows (messages per second, and bytes of text per second)",
                    "send again",
                );
            }
        }
        if self.is_remote_room(room_id) {
            if !self.remote_has_credit(room_id) {
                // As with a local partner's backlog: nothing is lost and
                // nothing claimed sent while the link catches up.
                return rate_limited(
                    PARTNER_BACKLOG_RETRY,
                    "your earlier messages are still on their way to your partner's machine",
                    "send again",
                );
            }
            let sent_at = now_ms();
            if !self.relay_remote(room_id, message, sent_at) {
                return rate_limited(
                    PARTNER_BACKLOG_RETRY,
                    "the broker's link to your partner's machine is overloaded",
                    "send again",
                );
            }
            if let Some(s) = self.sessions.get_mut(&session) {
                s.sending.spend(1.0);
                s.sending_bytes.spend(bytes);
            }
            return Reply::Sent;
        }
        let Some(partner) = self.partner_of(session, room_id) else {
            return Reply::error(
                ErrorCode::PartnerGone,
                format!(
                    "your partner has left room {room_id}; call enter_queue to meet someone new"
                ),
            );
        };
        if !self.has_room_for(partner, message.len()) {
            // Nothing is lost and nothing is claimed sent: the sender waits
            // for the partner's client to catch up (or for the heartbeat to
            // find it gone, which ends the room with exact counts).
            return rate_limited(
                PARTNER_BACKLOG_RETRY,
                "your partner's client has not yet taken in your earlier messages",
                "send again",
            );
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.sending.spend(1.0);
            s.sending_bytes.spend(bytes);
        }
        let sent_at = now_ms();
        self.emit(
            partner,
            Event::MessageReceived {
                room_id,
                message,
                sent_at,
            },
        );
        Reply::Sent
    }

    /// Leaves `room_id`; with `block`, this pair is never matched again,
    /// even when the partner has already gone.
    pub(super) fn leave_chat(&mut self, session: SessionId, room_id: RoomId, block: bool) -> Reply {
        if !self.is_member(session, room_id) {
            return unknown_room(room_id);
        }
        // A member's room is there: it is forgotten only once empty. A
        // partner on another broker is blocked in the realm instead (see
        // `federated::realm_block`), which answers before this is reached.
        if block
            && !self.is_remote_room(room_id)
            && let Some(room) = self.rooms.get(&room_id)
        {
            let [a, b] = room.parties;
            if let Some(pair) = self.blocks.block(a.identity, b.identity) {
                self.new_blocks.push(pair);
            }
            self.share_block(a.who, b.who);
        }
        // The leaver's connection is alive: what its partner sent it is
        // still on its way, so nothing is reported lost.
        self.vacate(
            session,
            room_id,
            DisconnectReason::Left,
            Delivery::default(),
        );
        self.set_place(session, Place::Idle);
        if block { Reply::Blocked } else { Reply::Left }
    }

    /// Takes `session` out of the room and tells the partner why, and what
    /// became of the partner's messages to it. The room is forgotten once
    /// nobody is left in it.
    pub(super) fn vacate(
        &mut self,
        session: SessionId,
        room_id: RoomId,
        reason: DisconnectReason,
        counts: Delivery,
    ) {
        self.end_remote(room_id, reason, counts);
        let partner = self.partner_of(session, room_id);
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        let before = room.members.len();
        room.members.retain(|&m| m != session);
        if before == 2 && room.members.len() < 2 {
            self.full_rooms = self.full_rooms.saturating_sub(1);
        }
        if room.members.is_empty() {
            self.rooms.remove(&room_id);
        }
        if let Some(partner) = partner {
            self.emit(
                partner,
                Event::PartnerDisconnected {
                    room_id,
                    reason,
                    undelivered: counts.undelivered,
                    unconfirmed: counts.unconfirmed,
                },
            );
        }
    }

    pub(super) fn is_member(&self, session: SessionId, room_id: RoomId) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| s.place == Place::InRoom(room_id))
    }

    pub(super) fn partner_of(&self, session: SessionId, room_id: RoomId) -> Option<SessionId> {
        self.rooms
            .get(&room_id)?
            .members
            .iter()
            .copied()
            .find(|&m| m != session)
    }
}

/// Now, in milliseconds since the Unix epoch (`sent_at`).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How long a sender is asked to wait when its partner's backlog is full.
const PARTNER_BACKLOG_RETRY: Duration = Duration::from_millis(100);

fn unknown_room(room_id: RoomId) -> Reply {
    Reply::error(
        ErrorCode::UnknownRoom,
        format!("you are not in room {room_id}; use the room_id from your chatroom.found event"),
    )
}
