//! Rooms whose partner is on another broker (or, with federation on, on
//! this one: the same path either way).
//!
//! Messages travel through the realm's JetStream stream, on the subject of
//! the receiving broker, which reads it through its own durable pull
//! consumer with explicit acks. Each direction of a room numbers its
//! messages 1, 2, 3…; a publish carries the message id `from.room.seq`, so
//! a retry after a lost ack is stored once, and the receiver delivers in
//! seq order, each seq once: a retry that overtook a later message is held
//! until the gap fills, a repeat is dropped. The stream has limits (age,
//! bytes, discard old) so a realm cannot fill the server's disk.
//!
//! Inbound, every message is checked as if a hostile client sent it
//! (`wire::check_room_msg`), then against the room: it must name a room
//! this broker has with that partner broker and that secret, and keep to
//! the room's message and byte rates.
//!
//! Delivery counts: every message also says how many of the other side's
//! texts its sender's client has acknowledged (`delivered`, sent alone as
//! `Progress` when there is nothing else to say), and a room's `End` says
//! what became of the rest (`EndReport`). The publisher tells the hub how
//! many of its texts JetStream has stored (`FromLink::Published`): the
//! hub's credit per room, so a sender is asked to wait instead of piling
//! up messages here.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use mcp_chat_proto::{DisconnectReason, RoomId};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::FromLink;
use super::wire::{self, Names, Rejected, RoomBody, RoomMsg};
use crate::config::{Limits, SendLimit};
use crate::state::rate::TokenBucket;

/// How far a room's inbound messages may run ahead of a gap.
const MAX_AHEAD: usize = 1024;
/// Outbound messages queued per room while NATS is slow or away: twice the
/// hub's credit per room (`state::remote::ROOM_CREDIT`), so a text the hub
/// lets through always fits, and so does the room's end.
const OUTBOX: usize = 1024;
/// How long a confirmation waits for a text to carry it before it is sent
/// alone: confirmations are batched.
const PROGRESS_AFTER: Duration = Duration::from_millis(100);
/// The rooms stream keeps messages this long at most…
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// …and this many bytes, dropping the oldest beyond.
pub const STREAM_MAX_BYTES: i64 = 256 * 1024 * 1024;
/// A broker's consumer is removed this long after the broker stops reading.
pub const CONSUMER_INACTIVE: Duration = Duration::from_secs(600);

/// The link's record of one remote room.
#[derive(Debug)]
pub struct RemoteRoom {
    pub partner: String,
    secret: String,
    outbox: mpsc::Sender<RoomBody>,
    stop: CancellationToken,
    /// How many of the partner's texts our client has acknowledged: read
    /// by the publisher, which stamps it on what it sends.
    delivered: watch::Sender<u64>,
    /// Texts the publisher has taken for the partner, all told: the most
    /// it can confirm.
    texts_out: watch::Receiver<u64>,
    /// The highest confirmation the partner sent us.
    confirmed: u64,
    next_in: u64,
    ahead: BTreeMap<u64, RoomBody>,
    messages: TokenBucket,
    bytes: TokenBucket,
}

/// A room's queue to its publisher, handed to the hub when the room opens:
/// the hub puts its member's texts straight in, one task hop less than
/// through the link. Everything else (the room's `End`) goes through the
/// link, which the hub tells after the texts it queued, so the order holds.
#[derive(Debug, Clone)]
pub struct Outbox(mpsc::Sender<RoomBody>);

impl Outbox {
    /// Queues a text. A full queue (which the hub's credit per room keeps
    /// from happening) gives it back, for the link to decide on, as for
    /// any text it is handed. A closed one means the link has ended the
    /// room: the text is dropped, as the link would drop it.
    pub fn text(&self, text: String, sent_at: u64) -> Result<(), (String, u64)> {
        match self.0.try_send(RoomBody::Text { text, sent_at }) {
            Err(TrySendError::Full(RoomBody::Text { text, sent_at })) => Err((text, sent_at)),
            _ => Ok(()),
        }
    }

    /// A queue of `capacity` with no publisher, for tests.
    #[cfg(test)]
    pub(crate) fn for_tests(capacity: usize) -> (Self, mpsc::Receiver<RoomBody>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self(tx), rx)
    }
}

/// What an accepted inbound message amounts to.
#[derive(Debug, Default)]
pub struct Accepted {
    /// Bodies that can be delivered now, in order.
    pub ready: Vec<RoomBody>,
    /// The partner's confirmation, when it moved on (at most what we sent).
    pub delivered: Option<u64>,
}

/// Where a room's publisher reports, and what it keeps itself to.
pub struct Publishing<'a> {
    pub js: &'a jetstream::Context,
    pub names: &'a Names,
    pub me: &'a str,
    pub to_hub: &'a mpsc::Sender<FromLink>,
    /// Publishers run on it, so that leaving the realm can wait for the
    /// rooms' last words.
    pub tasks: &'a TaskTracker,
}

impl RemoteRoom {
    /// Opens our side of `room` and starts its publisher.
    pub fn open(
        to: &Publishing<'_>,
        room: RoomId,
        partner: String,
        secret: String,
        limits: Limits,
    ) -> Self {
        let (outbox, rx) = mpsc::channel(OUTBOX);
        let stop = CancellationToken::new();
        let (delivered, delivered_rx) = watch::channel(0);
        let (taken, texts_out) = watch::channel(0);
        to.tasks.spawn(publish(
            Publisher {
                js: to.js.clone(),
                subject: to.names.room(&partner),
                envelope: Envelope {
                    room,
                    secret: secret.clone(),
                    from: to.me.to_owned(),
                },
                to_hub: to.to_hub.clone(),
                delivered: delivered_rx,
                taken,
            },
            rx,
            stop.clone(),
        ));
        // A remote broker already applies these limits to its sender; twice
        // the rate, and a burst as large as a sender's whole outbox (what can
        // pile up while NATS is away and arrive at once), so that a partner
        // keeping the limits is never refused: a refused message leaves a
        // gap that holds up the rest of the room.
        let double = |l: Option<SendLimit>, backlog: f64| {
            l.map(|l| SendLimit {
                per_second: l.per_second * 2.0,
                burst: (l.burst * 2.0).max(backlog),
            })
        };
        let most = mcp_chat_proto::MAX_MESSAGE_BYTES as f64 * OUTBOX as f64;
        Self {
            partner,
            secret,
            outbox,
            stop,
            delivered,
            texts_out,
            confirmed: 0,
            next_in: 1,
            ahead: BTreeMap::new(),
            messages: TokenBucket::full(double(limits.messages, OUTBOX as f64)),
            bytes: TokenBucket::full(double(limits.bytes, most)),
        }
    }

    /// Queues `body` for the partner. False: the outbox is full, which the
    /// hub's credit per room keeps from happening.
    pub fn send(&self, body: RoomBody) -> bool {
        self.outbox.try_send(body).is_ok()
    }

    /// The room's queue, for the hub's texts.
    pub fn outbox(&self) -> Outbox {
        Outbox(self.outbox.clone())
    }

    /// Our client has acknowledged `count` of the partner's texts.
    pub fn confirm(&self, count: u64) {
        self.delivered.send_if_modified(|v| {
            let moved = count > *v;
            if moved {
                *v = count;
            }
            moved
        });
    }

    /// Stops publishing (after what is queued, if `flush`).
    pub fn close(self, flush: bool) {
        if !flush {
            self.stop.cancel();
        }
    }

    /// Checks an inbound message against this room and returns what can be
    /// delivered now, in order.
    pub fn accept(&mut self, msg: RoomMsg, now: Instant) -> Result<Accepted, Rejected> {
        if msg.from != self.partner || msg.secret != self.secret {
            return Err(Rejected::NotMember);
        }
        if msg.seq < self.next_in || self.ahead.contains_key(&msg.seq) {
            return Err(Rejected::Replayed);
        }
        if msg.seq - self.next_in > MAX_AHEAD as u64 {
            return Err(Rejected::TooFarAhead);
        }
        // A confirmation alone counts as a message of no text, so a peer
        // cannot flood them either.
        let len = match &msg.body {
            RoomBody::Text { text, .. } => Some(text.len() as f64),
            RoomBody::Progress => Some(0.0),
            RoomBody::End { .. } => None,
        };
        if let Some(len) = len {
            if self.messages.wait_for(now, 1.0).is_err() || self.bytes.wait_for(now, len).is_err() {
                return Err(Rejected::TooFast);
            }
            self.messages.spend(1.0);
            self.bytes.spend(len);
        }
        // Never more than we sent; the highest counts, in whatever order
        // the messages come.
        let claimed = msg.delivered.min(*self.texts_out.borrow());
        let delivered = (claimed > self.confirmed).then(|| {
            self.confirmed = claimed;
            claimed
        });
        self.ahead.insert(msg.seq, msg.body);
        let mut ready = Vec::new();
        while let Some(body) = self.ahead.remove(&self.next_in) {
            self.next_in += 1;
            ready.push(body);
        }
        Ok(Accepted { ready, delivered })
    }
}

struct Envelope {
    room: RoomId,
    secret: String,
    from: String,
}

struct Publisher {
    js: jetstream::Context,
    subject: String,
    envelope: Envelope,
    to_hub: mpsc::Sender<FromLink>,
    delivered: watch::Receiver<u64>,
    /// Counts the texts taken from the queue, before they are published:
    /// the partner can confirm no more.
    taken: watch::Sender<u64>,
}

/// What wakes a publisher.
enum Next {
    Body(RoomBody),
    Progress,
}

/// Publishes a room's outbound messages, until `stop`. Whatever is queued
/// goes out at once (up to [`WINDOW`] messages), then their acks are
/// awaited; one that failed is published again, with the same message id,
/// until it is stored (so a retry that did reach the stream is not stored
/// twice). A retry can land behind a later message of its batch: the
/// receiver puts them back in `seq` order. The next batch waits for every
/// ack of the one before; then the hub hears how many texts are stored.
/// Every message carries our client's latest confirmation; one that moved
/// with nothing to carry it goes alone after [`PROGRESS_AFTER`].
async fn publish(mut p: Publisher, mut rx: mpsc::Receiver<RoomBody>, stop: CancellationToken) {
    let mut seq = 0;
    let mut stamped = 0;
    let mut published = 0;
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            body = rx.recv() => match body {
                Some(body) => Next::Body(body),
                None => return,
            },
            Ok(()) = p.delivered.changed() => Next::Progress,
        };
        let mut batch = match next {
            Next::Body(body) => vec![body],
            // A text that comes meanwhile carries the confirmation itself,
            // and must not wait out the delay.
            Next::Progress => tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(PROGRESS_AFTER) => Vec::new(),
                body = rx.recv() => match body {
                    Some(body) => vec![body],
                    None => return,
                },
            },
        };
        while batch.len() < WINDOW
            && !matches!(batch.last(), Some(RoomBody::End { .. }))
            && let Ok(body) = rx.try_recv()
        {
            batch.push(body);
        }
        let delivered = *p.delivered.borrow_and_update();
        if batch.is_empty() {
            if delivered <= stamped {
                continue;
            }
            batch.push(RoomBody::Progress);
        }
        stamped = delivered;
        let end = matches!(batch.last(), Some(RoomBody::End { .. }));
        let texts = batch
            .iter()
            .filter(|b| matches!(b, RoomBody::Text { .. }))
            .count() as u64;
        if texts > 0 {
            p.taken.send_modify(|n| *n += texts);
        }
        let mut pending: Vec<(bytes::Bytes, String)> = batch
            .into_iter()
            .map(|body| {
                seq += 1;
                let msg = RoomMsg {
                    room: p.envelope.room,
                    secret: p.envelope.secret.clone(),
                    from: p.envelope.from.clone(),
                    seq,
                    delivered,
                    body,
                };
                (wire::encode(&msg), msg.msg_id())
            })
            .collect();
        let mut backoff = Duration::from_millis(50);
        while !pending.is_empty() {
            let attempt = publish_all(&p.js, &p.subject, std::mem::take(&mut pending));
            pending = tokio::select! {
                () = stop.cancelled() => return,
                failed = attempt => failed,
            };
            if !pending.is_empty() {
                tracing::debug!(room = %p.envelope.room, failed = pending.len(), "room publish failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        if texts > 0 {
            published += texts;
            let _ = p
                .to_hub
                .send(FromLink::Published {
                    room: p.envelope.room,
                    count: published,
                })
                .await;
        }
        if end {
            return;
        }
    }
}

/// Messages published at once by one room's publisher, at most.
const WINDOW: usize = 256;

/// Publishes every message, then awaits the acks; returns those not stored.
async fn publish_all(
    js: &jetstream::Context,
    subject: &str,
    messages: Vec<(bytes::Bytes, String)>,
) -> Vec<(bytes::Bytes, String)> {
    let mut acks = Vec::with_capacity(messages.len());
    for (payload, id) in messages {
        let sent = js
            .send_publish(
                subject.to_owned(),
                PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(&id),
            )
            .await;
        acks.push(((payload, id), sent));
    }
    // Awaited together: each ack's timeout starts when it is awaited, so
    // one by one a server gone silent would cost a timeout per message.
    let stored = futures::future::join_all(acks.into_iter().map(|(message, sent)| async move {
        let stored = match sent {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        (message, stored)
    }))
    .await;
    stored
        .into_iter()
        .filter_map(|(message, stored)| (!stored).then_some(message))
        .collect()
}

/// The end a room's messages report, for a reason the partner may see.
pub fn end(reason: DisconnectReason, report: Option<wire::EndReport>) -> RoomBody {
    RoomBody::End { reason, report }
}
