//! What one session knows, written only by its broker connection (and by its
//! session task when a connection is lost), in the order frames arrive:
//!
//! - the **phase** (`Idle`, `Waiting`, `InRoom`), published through a
//!   `watch` so readers (`chat_status`, a waiting `enter_queue`, `join`)
//!   see it at once without asking the broker or taking a lock;
//! - the **pull buffer** ([`EventBuffer`]), which carries every event;
//! - the **push** to the MCP client, best-effort: an event is offered to
//!   the notification forwarder without waiting, so a client that stops
//!   reading its stdout never stalls the broker connection (which must keep
//!   reading and acknowledging, or the broker gives the session up). Events
//!   the forwarder had no room for are still in the pull buffer.

use std::sync::Mutex;

use mcp_chat_proto::{Event, MatchInfo, Reply, Request, RoomId};

use crate::end_reason::EndReason;
use tokio::sync::{mpsc, watch};

use crate::events::{ChatEvent, EventBuffer, EventKind, Recorded};

/// Where this session stands, as far as its events and replies tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Idle,
    Waiting {
        position: usize,
    },
    /// Matched, and the partner has not left.
    InRoom {
        room: RoomId,
    },
}

/// The session's phase, events and push, shared by its session task and
/// its current broker connection.
#[derive(Debug)]
pub struct SessionFeed {
    phase: watch::Sender<Phase>,
    events: EventBuffer,
    push: Option<mpsc::Sender<ChatEvent>>,
    /// What the last `chatroom.found` said of the match, for the result of
    /// the `enter_queue` call that waited for it.
    matched: Mutex<Option<(RoomId, MatchInfo)>>,
}

impl SessionFeed {
    /// `push`, when given, is offered a copy of every event, in order, after
    /// it is buffered; a full channel skips the push, never the buffer.
    pub fn new(push: Option<mpsc::Sender<ChatEvent>>) -> Self {
        Self {
            phase: watch::Sender::new(Phase::Idle),
            events: EventBuffer::new(),
            push,
            matched: Mutex::new(None),
        }
    }

    /// What `chatroom.found` said of the match in `room` (nothing for a
    /// room it did not announce).
    pub fn match_info(&self, room: RoomId) -> MatchInfo {
        match &*self.matched.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((matched, info)) if *matched == room => info.clone(),
            _ => MatchInfo::default(),
        }
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn watch_phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    pub fn events(&self) -> &EventBuffer {
        &self.events
    }

    /// Takes in one event from the broker. Never waits.
    pub fn ingest(&self, event: Event) {
        if let Some(recorded) = Recorded::from_broker(event) {
            self.record(recorded);
        }
    }

    /// What a reply says about the phase, applied by the connection in wire
    /// order: a `chatroom.found` or `partner.disconnected` read after the
    /// reply then overrides it, as it must.
    pub fn apply_reply(&self, change: PhaseChange, reply: &Reply) {
        match (change, reply) {
            (PhaseChange::Enter, Reply::Waiting { position }) => {
                self.phase.send_replace(Phase::Waiting {
                    position: *position,
                });
            }
            (PhaseChange::Leave(room_id), Reply::Left | Reply::Blocked) => {
                self.phase.send_if_modified(|phase| {
                    // Unless the session has moved on already.
                    let left = *phase == Phase::InRoom { room: room_id };
                    if left {
                        *phase = Phase::Idle;
                    }
                    left
                });
            }
            _ => {}
        }
    }

    /// The session's broker state is gone (the broker restarted, or cannot
    /// be reached): a room it held is reported lost with `reason`. Returns
    /// where the session stood.
    pub fn session_lost(&self, reason: EndReason) -> Phase {
        // Anyone waiting on the phase (enter_queue with wait_s) hears of it.
        let before = self.phase.send_replace(Phase::Idle);
        if let Phase::InRoom { room } = before {
            self.record(Recorded::room_lost(room, reason));
        }
        before
    }

    fn record(&self, recorded: Recorded) {
        // The phase first: whoever sees the event sees the phase it made.
        match recorded.kind {
            EventKind::ChatroomFound => {
                *self.matched.lock().unwrap_or_else(|e| e.into_inner()) = Some((
                    recorded.room_id,
                    recorded.matched.clone().unwrap_or_default(),
                ));
                self.phase.send_replace(Phase::InRoom {
                    room: recorded.room_id,
                });
            }
            EventKind::PartnerDisconnected => {
                let room = recorded.room_id;
                self.phase.send_if_modified(|phase| {
                    let gone = *phase == Phase::InRoom { room };
                    if gone {
                        *phase = Phase::Idle;
                    }
                    gone
                });
            }
            EventKind::MessageReceived => {}
        }
        let event = self.events.record(recorded);
        if let Some(push) = &self.push
            && let Err(mpsc::error::TrySendError::Full(skipped)) = push.try_send(event)
        {
            tracing::debug!(
                seq = skipped.seq,
                "the MCP client is not keeping up with notifications; the event waits for a pull"
            );
        }
    }
}

/// What a request's reply may change about the phase (see
/// [`SessionFeed::apply_reply`]). Events say the rest.
#[derive(Debug, Clone, Copy)]
pub enum PhaseChange {
    /// `enter_queue`: a `waiting` reply puts the session in the queue (a
    /// `matched` one was announced by `chatroom.found`, read just before).
    Enter,
    /// `leave_chat`: a `left` reply takes the session out of that room.
    Leave(RoomId),
    None,
}

impl PhaseChange {
    pub fn of(request: &Request) -> Self {
        match request {
            Request::EnterQueue(_) => Self::Enter,
            Request::LeaveChat { room_id, .. } => Self::Leave(*room_id),
            _ => Self::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_chat_proto::DisconnectReason;

    #[tokio::test]
    async fn push_sees_every_event_after_it_is_buffered() {
        let (tx, mut rx) = mpsc::channel(8);
        let feed = SessionFeed::new(Some(tx));
        let room = RoomId::new_random();
        feed.ingest(Event::ChatroomFound {
            room_id: room,
            partner: MatchInfo::default(),
        });
        let pushed = rx.recv().await.unwrap();
        assert_eq!(feed.events().take_pending(), vec![pushed]);
    }

    #[test]
    fn a_client_that_stops_reading_does_not_hold_up_the_buffer() {
        let (tx, mut rx) = mpsc::channel(2);
        let feed = SessionFeed::new(Some(tx));
        let room = RoomId::new_random();
        for i in 0..10 {
            feed.ingest(Event::MessageReceived {
                room_id: room,
                message: format!("{i}"),
                sent_at: 0,
            });
        }
        assert_eq!(feed.events().take_pending().len(), 10, "all buffered");
        // The push kept what fit, in order.
        assert_eq!(rx.try_recv().unwrap().seq, 1);
        assert_eq!(rx.try_recv().unwrap().seq, 2);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn losing_the_broker_in_a_room_reports_it() {
        let feed = SessionFeed::new(None);
        feed.session_lost(EndReason::BrokerLost);
        assert!(
            feed.events().take_pending().is_empty(),
            "nothing to report when idle"
        );
        let room = RoomId::new_random();
        feed.ingest(Event::ChatroomFound {
            room_id: room,
            partner: MatchInfo::default(),
        });
        assert_eq!(
            feed.session_lost(EndReason::BrokerLost),
            Phase::InRoom { room }
        );
        assert_eq!(feed.phase(), Phase::Idle);
        let events = feed.events().take_pending();
        assert_eq!(events[1].kind, EventKind::PartnerDisconnected);
        assert_eq!(events[1].reason.as_deref(), Some("broker_lost"));
        assert_eq!(events[1].room_id, room.to_string());
    }

    #[test]
    fn replies_and_events_apply_in_wire_order() {
        let feed = SessionFeed::new(None);
        let room = RoomId::new_random();
        feed.apply_reply(PhaseChange::Enter, &Reply::Waiting { position: 1 });
        assert_eq!(feed.phase(), Phase::Waiting { position: 1 });
        feed.ingest(Event::ChatroomFound {
            room_id: room,
            partner: MatchInfo::default(),
        });
        assert_eq!(feed.phase(), Phase::InRoom { room });
        feed.apply_reply(PhaseChange::Leave(RoomId::new_random()), &Reply::Left);
        assert_eq!(feed.phase(), Phase::InRoom { room }, "another room's leave");
        feed.apply_reply(PhaseChange::Leave(room), &Reply::Left);
        assert_eq!(feed.phase(), Phase::Idle);
    }

    #[test]
    fn a_partner_leaving_ends_the_room() {
        let feed = SessionFeed::new(None);
        let room = RoomId::new_random();
        feed.ingest(Event::ChatroomFound {
            room_id: room,
            partner: MatchInfo::default(),
        });
        feed.ingest(Event::PartnerDisconnected {
            room_id: room,
            reason: DisconnectReason::Left,
            undelivered: 0,
            unconfirmed: 0,
        });
        assert_eq!(feed.phase(), Phase::Idle);
    }
}
