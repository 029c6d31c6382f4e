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

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use mcp_chat_proto::{DisconnectReason, RoomId};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wire::{self, Names, Rejected, RoomBody, RoomMsg};
use crate::config::{Limits, SendLimit};
use crate::state::rate::TokenBucket;

/// How far a room's inbound messages may run ahead of a gap.
const MAX_AHEAD: usize = 1024;
/// Outbound messages queued per room while NATS is slow or away: at the
/// default send rate, longer than the grace.
const OUTBOX: usize = 1024;
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
    next_in: u64,
    ahead: BTreeMap<u64, RoomBody>,
    messages: TokenBucket,
    bytes: TokenBucket,
}

/// What an accepted inbound message amounts to, in order.
pub type Delivered = Vec<RoomBody>;

impl RemoteRoom {
    /// Opens our side of `room` and starts its publisher.
    pub fn open(
        js: &jetstream::Context,
        names: &Names,
        me: &str,
        room: RoomId,
        partner: String,
        secret: String,
        limits: Limits,
    ) -> Self {
        let (outbox, rx) = mpsc::channel(OUTBOX);
        let stop = CancellationToken::new();
        tokio::spawn(publish(
            js.clone(),
            names.room(&partner),
            Envelope {
                room,
                secret: secret.clone(),
                from: me.to_owned(),
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
            next_in: 1,
            ahead: BTreeMap::new(),
            messages: TokenBucket::full(double(limits.messages, OUTBOX as f64)),
            bytes: TokenBucket::full(double(limits.bytes, most)),
        }
    }

    /// Queues `body` for the partner. False: the outbox is full (NATS has
    /// been away too long), and the room must end.
    pub fn send(&self, body: RoomBody) -> bool {
        self.outbox.try_send(body).is_ok()
    }

    /// Stops publishing (after what is queued, if `flush`).
    pub fn close(self, flush: bool) {
        if !flush {
            self.stop.cancel();
        }
    }

    /// Checks an inbound message against this room and returns what can be
    /// delivered now, in order.
    pub fn accept(&mut self, msg: RoomMsg, now: Instant) -> Result<Delivered, Rejected> {
        if msg.from != self.partner || msg.secret != self.secret {
            return Err(Rejected::NotMember);
        }
        if msg.seq < self.next_in || self.ahead.contains_key(&msg.seq) {
            return Err(Rejected::Replayed);
        }
        if msg.seq - self.next_in > MAX_AHEAD as u64 {
            return Err(Rejected::TooFarAhead);
        }
        if let RoomBody::Text { text, .. } = &msg.body {
            let len = text.len() as f64;
            if self.messages.wait_for(now, 1.0).is_err() || self.bytes.wait_for(now, len).is_err() {
                return Err(Rejected::TooFast);
            }
            self.messages.spend(1.0);
            self.bytes.spend(len);
        }
        self.ahead.insert(msg.seq, msg.body);
        let mut ready = Vec::new();
        while let Some(body) = self.ahead.remove(&self.next_in) {
            self.next_in += 1;
            ready.push(body);
        }
        Ok(ready)
    }
}

struct Envelope {
    room: RoomId,
    secret: String,
    from: String,
}

/// Publishes a room's outbound messages, until `stop`. Whatever is queued
/// goes out at once (up to [`WINDOW`] messages), then their acks are
/// awaited; one that failed is published again, with the same message id,
/// until it is stored (so a retry that did reach the stream is not stored
/// twice). A retry can land behind a later message of its batch: the
/// receiver puts them back in `seq` order. The next batch waits for every
/// ack of the one before.
async fn publish(
    js: jetstream::Context,
    subject: String,
    envelope: Envelope,
    mut rx: mpsc::Receiver<RoomBody>,
    stop: CancellationToken,
) {
    let mut seq = 0;
    while let Some(first) = tokio::select! {
        () = stop.cancelled() => None,
        body = rx.recv() => body,
    } {
        let mut batch = vec![first];
        while batch.len() < WINDOW
            && !matches!(batch.last(), Some(RoomBody::End { .. }))
            && let Ok(body) = rx.try_recv()
        {
            batch.push(body);
        }
        let end = matches!(batch.last(), Some(RoomBody::End { .. }));
        let mut pending: Vec<(bytes::Bytes, String)> = batch
            .into_iter()
            .map(|body| {
                seq += 1;
                let msg = RoomMsg {
                    room: envelope.room,
                    secret: envelope.secret.clone(),
                    from: envelope.from.clone(),
                    seq,
                    body,
                };
                (wire::encode(&msg), msg.msg_id())
            })
            .collect();
        let mut backoff = Duration::from_millis(50);
        while !pending.is_empty() {
            let attempt = publish_all(&js, &subject, std::mem::take(&mut pending));
            pending = tokio::select! {
                () = stop.cancelled() => return,
                failed = attempt => failed,
            };
            if !pending.is_empty() {
                tracing::debug!(room = %envelope.room, failed = pending.len(), "room publish failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
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
    let mut failed = Vec::new();
    for (message, sent) in acks {
        let stored = match sent {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if !stored {
            failed.push(message);
        }
    }
    failed
}

/// The end a room's messages report, for a reason the partner may see.
pub fn end(reason: DisconnectReason) -> RoomBody {
    RoomBody::End { reason }
}
