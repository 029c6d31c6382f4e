//! The hub's ledger of rooms whose partner is on another broker: what makes
//! "`sent` means delivered or reported" hold across brokers, and the credit
//! that holds a sender back instead of piling messages up in the link.
//!
//! Per room the hub counts, for its own member's texts: `sent` (answered
//! `sent`), `published` (stored in JetStream, as the link reports) and
//! `confirmed` (acknowledged by the partner's client, as the partner's
//! broker reports, piggybacked on its messages). For the partner's texts it
//! counts what it took in for its member (`received`) and how many of those
//! the member's client acknowledged (sent on to the partner's broker).
//!
//! When the room ends the member's `partner.disconnected` says:
//! - the partner's broker ended it and reported (`EndReport`): texts it
//!   never took in (they crossed the end) plus those it reports never
//!   written to its client are `undelivered`; those it reports written but
//!   not acknowledged are `unconfirmed`;
//! - the partner's broker vanished (silence, or NATS lost): texts never
//!   stored in JetStream are `undelivered` (they never left this machine),
//!   stored but never confirmed are `unconfirmed`.
//!
//! Everything the partner's broker says is untrusted, and kept within what
//! this side sent.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use mcp_chat_proto::{DisconnectReason, Event, RoomId};

use super::{Delivery, Place, SessionId, State};
use crate::federation::{EndReport, Outbox, ToLink};

/// Texts of one room handed to the link and not yet stored in JetStream,
/// at most; past that the sender is asked to wait (`rate_limited`). Half
/// the link's outbox per room, so what the hub lets through always fits.
pub(super) const ROOM_CREDIT: u64 = 512;

/// The remote rooms, while their partner is in them.
#[derive(Debug, Default)]
pub(crate) struct RemoteRooms(HashMap<RoomId, Ledger>);

impl RemoteRooms {
    /// A new room's ledger; an existing one is kept (a room id is never
    /// reused), and `false` said.
    pub(super) fn insert(&mut self, room: RoomId) -> bool {
        match self.0.entry(room) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(Ledger::default());
                true
            }
        }
    }

    pub(super) fn take(&mut self, room: &RoomId) -> Option<Ledger> {
        self.0.remove(room)
    }

    pub(super) fn contains(&self, room: &RoomId) -> bool {
        self.0.contains_key(room)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    fn get_mut(&mut self, room: &RoomId) -> Option<&mut Ledger> {
        self.0.get_mut(room)
    }

    /// Queues a text straight for `room`'s publisher; `Err` gives it back
    /// for the link: the room has no queue here, or its queue was full
    /// (then it has none from now on, so no later text overtakes this one).
    pub(super) fn queue_text(
        &mut self,
        room: RoomId,
        text: String,
        sent_at: u64,
    ) -> Result<(), (String, u64)> {
        let Some(ledger) = self.0.get_mut(&room) else {
            return Err((text, sent_at));
        };
        let Some(outbox) = &ledger.outbox else {
            return Err((text, sent_at));
        };
        outbox
            .text(text, sent_at)
            .inspect(|()| ledger.queued_straight += 1)
            .inspect_err(|_| ledger.outbox = None)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Ledger {
    sent: u64,
    published: u64,
    confirmed: u64,
    received: u64,
    /// `(event seq, received so far)` of the partner's texts not yet
    /// acknowledged by our member's client, oldest first.
    unacked: VecDeque<(u64, u64)>,
    acked: u64,
    /// The room's queue to its publisher (see `relay_remote`).
    outbox: Option<Outbox>,
    /// Texts put straight in that queue. Once it is full, the rest go
    /// through the link, which counts those it queued.
    queued_straight: u64,
}

impl Ledger {
    /// Whether one more text fits in the link's queue for this room.
    fn has_credit(&self) -> bool {
        self.sent.saturating_sub(self.published) < ROOM_CREDIT
    }

    /// What the partner's broker reported at its end, kept within what we
    /// sent.
    fn reported(&self, report: EndReport) -> Delivery {
        let received = report.received.min(self.sent);
        let undelivered = report.undelivered.min(received);
        Delivery {
            undelivered: self.sent - received + undelivered,
            unconfirmed: report.unconfirmed.min(received - undelivered),
        }
    }

    /// The partner's broker vanished: only what we know here counts.
    fn unreported(&self) -> Delivery {
        let confirmed = self.confirmed.min(self.sent);
        let stored = self.published.max(confirmed).min(self.sent);
        Delivery {
            undelivered: self.sent - stored,
            unconfirmed: stored - confirmed,
        }
    }

    /// The room's outbox overflowed after `queued` of our texts were put
    /// in it (by the hub straight, then by the link): the rest never leave
    /// this broker; those queued go out ahead of the room's end,
    /// unconfirmed.
    fn overflowed(&self, queued: u64) -> Delivery {
        let queued = queued.min(self.sent);
        Delivery {
            undelivered: self.sent - queued,
            unconfirmed: queued - self.confirmed.min(queued),
        }
    }

    /// Our report of the partner's texts, when our side ends.
    fn report(&self, counts: Delivery) -> EndReport {
        EndReport {
            received: self.received,
            undelivered: counts.undelivered,
            unconfirmed: counts.unconfirmed,
        }
    }
}

impl State {
    /// Whether the sender may hand the link one more text for `room_id`.
    pub(super) fn remote_has_credit(&self, room_id: RoomId) -> bool {
        self.federated
            .as_ref()
            .and_then(|f| f.remote.0.get(&room_id))
            .is_none_or(Ledger::has_credit)
    }

    /// A text for the partner was answered `sent`.
    pub(super) fn remote_sent(&mut self, room_id: RoomId) {
        if let Some(l) = self.ledger(room_id) {
            l.sent += 1;
        }
    }

    /// Our report when our side of `room_id` ends, `counts` being what our
    /// member's client did not get of the partner's texts.
    pub(super) fn remote_report(&mut self, room_id: RoomId, counts: Delivery) -> EndReport {
        self.federated
            .as_mut()
            .and_then(|f| f.remote.take(&room_id))
            .map(|l| l.report(counts))
            .unwrap_or_default()
    }

    /// A text from the remote partner, for our member.
    pub(super) fn remote_message(&mut self, room_id: RoomId, message: String, sent_at: u64) {
        if !self.is_remote_room(room_id) {
            // Ended here already: the partner counts it as not taken in.
            return;
        }
        let Some(&member) = self.rooms.get(&room_id).and_then(|r| r.members.first()) else {
            return;
        };
        let Some(seq) = self.sessions.get(&member).map(|s| s.next_seq) else {
            return;
        };
        if !self.has_room_for(member, message.len()) {
            // A remote sender cannot be asked to wait as a local one is:
            // rather than grow the replay buffer past its caps, the room
            // ends. This text is not counted received, so the partner's
            // broker reports it (and any crossing the end) undelivered.
            self.remote_backlogged(room_id, member);
            return;
        }
        self.emit(
            member,
            Event::MessageReceived {
                room_id,
                message,
                sent_at,
            },
        );
        if let Some(l) = self.ledger(room_id) {
            l.received += 1;
            l.unacked.push_back((seq, l.received));
        }
    }

    /// Our member's client is not taking in the partner's texts as fast as
    /// they come: the room ends towards the partner (`disconnected`), and
    /// our member is told, with what became of its own texts. The texts
    /// taken in and not acknowledged are reported `unconfirmed`: the session
    /// lives on, so they still reach its client if it reads (or resumes);
    /// the one that did not fit, and any crossing the end, count as never
    /// taken in (`undelivered` on the partner's side).
    fn remote_backlogged(&mut self, room_id: RoomId, member: SessionId) {
        let theirs = self.held_for(member, room_id);
        tracing::warn!(%room_id, member, unconfirmed = theirs.unconfirmed, "a remote partner's texts overran our member's replay buffer; ending the room");
        self.remote_end_towards_member(
            room_id,
            DisconnectReason::Disconnected,
            Some(theirs),
            Ledger::unreported,
        );
    }

    /// The link could not queue all of our member's texts for `room_id`
    /// (see [`Ledger::overflowed`]): the room ends both ways
    /// (`federation_lost`), as when the member's buffers overflow.
    pub(super) fn remote_overflowed(&mut self, room_id: RoomId, queued: u64) {
        let Some(&member) = self.rooms.get(&room_id).and_then(|r| r.members.first()) else {
            return;
        };
        let theirs = self.held_for(member, room_id);
        self.remote_end_towards_member(
            room_id,
            DisconnectReason::FederationLost,
            Some(theirs),
            |l| l.overflowed(l.queued_straight.saturating_add(queued)),
        );
    }

    /// What our member's client has not acknowledged of the partner's
    /// texts when our side ends while the session lives on: all of it
    /// `unconfirmed` (taken in, it still reaches the client if it reads or
    /// resumes); the partner's broker adds what was never taken in.
    fn held_for(&self, member: SessionId, room_id: RoomId) -> Delivery {
        let held = self
            .sessions
            .get(&member)
            .map(|s| s.delivery(room_id))
            .unwrap_or_default();
        Delivery {
            undelivered: 0,
            unconfirmed: held.undelivered + held.unconfirmed,
        }
    }

    /// Ends `room_id` towards our member: its ledger is taken; with
    /// `theirs` (what our member's client did not get of the partner's
    /// texts) our side ends it and the partner's broker is told so; and
    /// our member hears `reason` and what became of its own texts, `mine`
    /// from the ledger. Nothing when the room is no longer a remote room.
    fn remote_end_towards_member(
        &mut self,
        room_id: RoomId,
        reason: DisconnectReason,
        theirs: Option<Delivery>,
        mine: impl FnOnce(&Ledger) -> Delivery,
    ) {
        let Some(ledger) = self
            .federated
            .as_mut()
            .and_then(|f| f.remote.take(&room_id))
        else {
            return;
        };
        if let Some(theirs) = theirs
            && let Some(f) = self.federated.as_ref()
        {
            f.tell(ToLink::End {
                room: room_id,
                reason,
                report: ledger.report(theirs),
            });
        }
        let counts = mine(&ledger);
        if counts != Delivery::default() {
            tracing::warn!(%room_id, undelivered = counts.undelivered, unconfirmed = counts.unconfirmed, "a remote partner's room ended with texts not confirmed delivered");
        }
        if let Some(&member) = self.rooms.get(&room_id).and_then(|r| r.members.first()) {
            self.emit(
                member,
                Event::PartnerDisconnected {
                    room_id,
                    reason,
                    undelivered: counts.undelivered,
                    unconfirmed: counts.unconfirmed,
                },
            );
        }
    }

    /// Our member's client holds every event up to `seq`: the partner's
    /// broker hears how many of its texts that covers.
    pub(super) fn remote_acked(&mut self, session: SessionId, seq: u64) {
        let Some(Place::InRoom(room_id)) = self.sessions.get(&session).map(|s| s.place) else {
            return;
        };
        let Some(l) = self.ledger(room_id) else {
            return;
        };
        let before = l.acked;
        while let Some(&(event, count)) = l.unacked.front()
            && event <= seq
        {
            l.acked = count;
            l.unacked.pop_front();
        }
        if l.acked > before {
            let count = l.acked;
            // Straight to the publisher, so the texts the hub queues from
            // now on carry it; the link hears it too, for texts it queues.
            if let Some(outbox) = &l.outbox {
                outbox.confirm(count);
            }
            if let Some(f) = self.federated.as_ref() {
                // Lost only when the link is overloaded: a later count
                // covers it.
                f.tell(ToLink::Delivered {
                    room: room_id,
                    count,
                });
            }
        }
    }

    /// The link opened `room_id` with this queue to its publisher.
    pub(super) fn remote_outbox(&mut self, room_id: RoomId, outbox: Outbox) {
        if let Some(l) = self.ledger(room_id) {
            l.outbox = Some(outbox);
        }
    }

    pub(super) fn remote_published(&mut self, room_id: RoomId, count: u64) {
        if let Some(l) = self.ledger(room_id) {
            l.published = l.published.max(count.min(l.sent));
        }
    }

    pub(super) fn remote_delivered(&mut self, room_id: RoomId, count: u64) {
        if let Some(l) = self.ledger(room_id) {
            l.confirmed = l.confirmed.max(count.min(l.sent));
        }
    }

    /// The remote side of `room_id` ended: our member is told why, and
    /// what became of its texts.
    pub(super) fn remote_ended(
        &mut self,
        room_id: RoomId,
        reason: DisconnectReason,
        report: Option<EndReport>,
    ) {
        self.remote_end_towards_member(room_id, reason, None, |l| match report {
            Some(report) => l.reported(report),
            None => l.unreported(),
        });
    }

    fn ledger(&mut self, room_id: RoomId) -> Option<&mut Ledger> {
        self.federated
            .as_mut()
            .and_then(|f| f.remote.get_mut(&room_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(sent: u64, published: u64, confirmed: u64) -> Ledger {
        Ledger {
            sent,
            published,
            confirmed,
            ..Ledger::default()
        }
    }

    #[test]
    fn a_report_counts_what_crossed_the_end_as_undelivered() {
        let l = ledger(10, 10, 4);
        let report = EndReport {
            received: 8,
            undelivered: 3,
            unconfirmed: 1,
        };
        // 2 never taken in, 3 never written there; 1 written, unacknowledged.
        assert_eq!(
            l.reported(report),
            Delivery {
                undelivered: 5,
                unconfirmed: 1
            }
        );
    }

    #[test]
    fn a_room_id_in_use_keeps_its_ledger() {
        let mut rooms = RemoteRooms::default();
        let room = RoomId::new_random();
        assert!(rooms.insert(room));
        if let Some(l) = rooms.get_mut(&room) {
            l.sent = 3;
        }
        assert!(!rooms.insert(room), "a second insert is refused");
        assert_eq!(rooms.take(&room).map(|l| l.sent), Some(3));
    }

    #[test]
    fn a_lying_report_is_kept_within_what_was_sent() {
        let l = ledger(5, 5, 0);
        let report = EndReport {
            received: u64::MAX,
            undelivered: u64::MAX,
            unconfirmed: u64::MAX,
        };
        assert_eq!(
            l.reported(report),
            Delivery {
                undelivered: 5,
                unconfirmed: 0
            }
        );
        let report = EndReport {
            received: 5,
            undelivered: 1,
            unconfirmed: u64::MAX,
        };
        assert_eq!(
            l.reported(report),
            Delivery {
                undelivered: 1,
                unconfirmed: 4
            }
        );
    }

    #[test]
    fn a_vanished_partner_leaves_the_unconfirmed_and_the_never_stored() {
        // 12 sent, 10 stored in JetStream, 6 acknowledged by the partner.
        assert_eq!(
            ledger(12, 10, 6).unreported(),
            Delivery {
                undelivered: 2,
                unconfirmed: 4
            }
        );
        // A confirmation beyond what was stored still counts as stored.
        assert_eq!(
            ledger(12, 3, 6).unreported(),
            Delivery {
                undelivered: 6,
                unconfirmed: 0
            }
        );
        // And a count beyond what was sent is nothing more than all of it.
        assert_eq!(ledger(3, 3, u64::MAX).unreported(), Delivery::default());
    }

    #[test]
    fn a_full_queue_sends_that_text_and_every_later_one_through_the_link() {
        let mut rooms = RemoteRooms::default();
        let room = RoomId::new_random();
        rooms.insert(room);
        // One slot for a text, and the last one kept for the room's end.
        let (outbox, mut publisher, _) = Outbox::for_tests(2);
        if let Some(l) = rooms.get_mut(&room) {
            l.outbox = Some(outbox);
        }
        assert_eq!(rooms.queue_text(room, "a".into(), 1), Ok(()));
        assert_eq!(
            rooms.queue_text(room, "b".into(), 2),
            Err(("b".into(), 2)),
            "full but for the end's slot: given back for the link"
        );
        assert_eq!(rooms.get_mut(&room).map(|l| l.queued_straight), Some(1));
        assert!(publisher.try_recv().is_ok());
        // There is room again, but "b" went to the link: "c" must follow it.
        assert_eq!(rooms.queue_text(room, "c".into(), 3), Err(("c".into(), 3)));
        assert!(publisher.try_recv().is_err());
        let other = RoomId::new_random();
        assert_eq!(
            rooms.queue_text(other, "d".into(), 4),
            Err(("d".into(), 4)),
            "no queue: through the link"
        );
    }

    #[test]
    fn credit_runs_out_until_the_link_has_stored_some() {
        let mut l = ledger(ROOM_CREDIT - 1, 0, 0);
        assert!(l.has_credit());
        l.sent += 1;
        assert!(!l.has_credit());
        l.published = 1;
        assert!(l.has_credit());
    }
}
