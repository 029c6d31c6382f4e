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
//! Every message is sealed with the room's key for its direction (`auth`):
//! only the two brokers that agreed the room's keys in its claim can make
//! or read one. Inbound, a message must name a room this broker has with
//! that partner broker and open with the partner's key (anything else is
//! dropped and counted as `Forged`) before anything else is read of it;
//! then it is checked as if a hostile client sent it
//! (`wire::check_room_msg`), and against the room's message and byte
//! rates. A genuine message captured and replayed is a repeat of its `seq`
//! and dropped. A message is sealed once, with a nonce from a counter of
//! its own direction ([`Outgoing`]), and a publish retry resends the
//! stored bytes: no nonce is ever used twice with a key.
//!
//! Delivery counts: every message also says how many of the other side's
//! texts its sender's client has acknowledged (`delivered`, sent alone as
//! `Progress` when there is nothing else to say), and a room's `End` says
//! what became of the rest (`EndReport`). The publisher tells the hub how
//! many of its texts JetStream has stored (`FromLink::Published`): the
//! hub's credit per room, so a sender is asked to wait instead of piling
//! up messages here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use mcp_chat_proto::{DisconnectReason, RoomId};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::FromLink;
use super::auth::{Header, Opener, RoomKeys, SealError, Sealer};
use super::wire::{self, Names, Rejected, RoomBody, RoomMsg, Sealed};
use crate::config::{Limits, SendLimit};
use crate::state::rate::TokenBucket;

/// How far a room's inbound messages may run ahead of a gap.
const MAX_AHEAD: usize = 1024;
/// Outbound texts queued per room while NATS is slow or away: twice the
/// hub's credit per room (`state::remote::ROOM_CREDIT`), so a text the hub
/// lets through always fits. One slot more is kept for the room's end.
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
    opener: Opener,
    outbox: mpsc::Sender<RoomBody>,
    stop: CancellationToken,
    /// How many of the partner's texts our client has acknowledged: read
    /// by the publisher, which stamps it on what it sends.
    delivered: Arc<watch::Sender<u64>>,
    /// Texts the publisher has taken for the partner, all told: the most
    /// it can confirm.
    texts_out: watch::Receiver<u64>,
    /// Texts this link queued itself; those the hub queues straight
    /// ([`Outbox`]) are the hub's to count.
    queued_here: u64,
    /// A text did not fit: it and every later one are refused.
    overflowed: bool,
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
/// It also carries our client's confirmations straight to the publisher:
/// a text the hub queues after a confirmation must carry it, and through
/// the link the confirmation could come second.
#[derive(Debug, Clone)]
pub struct Outbox(mpsc::Sender<RoomBody>, Arc<watch::Sender<u64>>);

impl Outbox {
    /// Queues a text. A full queue (which the hub's credit per room keeps
    /// from happening) gives it back, for the link to decide on, as for
    /// any text it is handed. A closed one means the link has ended the
    /// room: the text is dropped, as the link would drop it.
    pub fn text(&self, text: String, sent_at: u64) -> Result<(), (String, u64)> {
        // The last slot is the room's end's (see `RemoteRoom::send`).
        if self.0.capacity() <= 1 {
            return Err((text, sent_at));
        }
        match self.0.try_send(RoomBody::Text { text, sent_at }) {
            Err(TrySendError::Full(RoomBody::Text { text, sent_at })) => Err((text, sent_at)),
            _ => Ok(()),
        }
    }

    /// Our client has acknowledged `count` of the partner's texts.
    pub fn confirm(&self, count: u64) {
        raise(&self.1, count);
    }

    /// A queue of `capacity` with no publisher, for tests.
    #[cfg(test)]
    pub(crate) fn for_tests(
        capacity: usize,
    ) -> (Self, mpsc::Receiver<RoomBody>, watch::Receiver<u64>) {
        let (tx, rx) = mpsc::channel(capacity);
        let (delivered, confirmed) = watch::channel(0);
        (Self(tx, Arc::new(delivered)), rx, confirmed)
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
        keys: RoomKeys,
        limits: Limits,
    ) -> Self {
        let (outbox, rx) = mpsc::channel(OUTBOX + 1);
        let stop = CancellationToken::new();
        let (delivered, delivered_rx) = watch::channel(0);
        let (taken, texts_out) = watch::channel(0);
        to.tasks.spawn(publish(
            Publisher {
                js: to.js.clone(),
                subject: to.names.room(&partner),
                out: Outgoing {
                    room,
                    from: to.me.to_owned(),
                    sealer: keys.sealer,
                    seq: 0,
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
            opener: keys.opener,
            outbox,
            stop,
            delivered: Arc::new(delivered),
            texts_out,
            queued_here: 0,
            overflowed: false,
            confirmed: 0,
            next_in: 1,
            ahead: BTreeMap::new(),
            messages: TokenBucket::full(double(limits.messages, OUTBOX as f64)),
            bytes: TokenBucket::full(double(limits.bytes, most)),
        }
    }

    /// Queues `body` for the partner. False: the outbox is full, which the
    /// hub's credit per room keeps from happening. Then that text and every
    /// later one are refused, so the partner never gets a text that
    /// follows a lost one, and what was queued stays exact
    /// ([`Self::overflowed`]); the room's end still fits, behind them.
    pub fn send(&mut self, body: RoomBody) -> bool {
        let text = matches!(body, RoomBody::Text { .. });
        if text && (self.overflowed || self.outbox.capacity() <= 1) {
            self.overflowed = true;
            return false;
        }
        let queued = self.outbox.try_send(body).is_ok();
        if queued && text {
            self.queued_here += 1;
        }
        queued
    }

    /// The room's queue, for the hub's texts.
    pub fn outbox(&self) -> Outbox {
        Outbox(self.outbox.clone(), Arc::clone(&self.delivered))
    }

    /// Once a text was refused: how many this link had queued before it.
    pub fn overflowed(&self) -> Option<u64> {
        self.overflowed.then_some(self.queued_here)
    }

    /// Our client has acknowledged `count` of the partner's texts.
    pub fn confirm(&self, count: u64) {
        raise(&self.delivered, count);
    }

    /// Stops publishing (after what is queued, if `flush`).
    pub fn close(self, flush: bool) {
        if !flush {
            self.stop.cancel();
        }
    }

    /// Opens an inbound message of this room (its `header` read): it must
    /// come from the partner, sealed with its key for exactly this header.
    pub fn open_msg(&self, header: &Header, payload: &[u8]) -> Result<RoomMsg, Rejected> {
        let from = header.sender();
        if from != self.partner {
            return Err(Rejected::NotMember);
        }
        let plain = self.opener.open(payload)?;
        wire::parse_sealed(header, from, &plain)
    }

    /// Checks an opened inbound message against this room and returns what
    /// can be delivered now, in order.
    pub fn accept(&mut self, msg: RoomMsg, now: Instant) -> Result<Accepted, Rejected> {
        if msg.from != self.partner {
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

/// One direction of a room, as its publisher makes messages.
struct Outgoing {
    room: RoomId,
    from: String,
    sealer: Sealer,
    seq: u64,
}

impl Outgoing {
    /// The next message, sealed, and its JetStream id: made once per
    /// message; a retry resends these bytes (a new seal would take a new
    /// nonce, which is safe, but the stream's de-duplication keeps the
    /// first copy by its id, and the receiver's `seq` order the rest).
    fn next(
        &mut self,
        delivered: u64,
        body: RoomBody,
    ) -> Result<(bytes::Bytes, String), SealError> {
        self.seq += 1;
        let plain = wire::encode(&Sealed { delivered, body });
        let sealed = self.sealer.seal(self.room, &self.from, self.seq, &plain)?;
        let id = wire::msg_id(&self.from, self.room, self.seq, &sealed);
        Ok((sealed.into(), id))
    }
}

struct Publisher {
    js: jetstream::Context,
    subject: String,
    out: Outgoing,
    to_hub: mpsc::Sender<FromLink>,
    delivered: watch::Receiver<u64>,
    /// Counts the texts taken from the queue, before they are published:
    /// the partner can confirm no more.
    taken: watch::Sender<u64>,
}

/// Raises a confirmation count; one never goes down.
fn raise(delivered: &watch::Sender<u64>, count: u64) {
    delivered.send_if_modified(|v| {
        let moved = count > *v;
        if moved {
            *v = count;
        }
        moved
    });
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
        // Sealed once here; retries below resend these very bytes.
        let sealed: Result<Vec<(bytes::Bytes, String)>, SealError> = batch
            .into_iter()
            .map(|body| p.out.next(delivered, body))
            .collect();
        let mut pending = match sealed {
            Ok(pending) => pending,
            Err(e) => {
                // 2^64 messages in one room: never in practice.
                tracing::error!(room = %p.out.room, error = %e, "federation: cannot seal a room message; its publisher stops");
                return;
            }
        };
        let mut backoff = Duration::from_millis(50);
        let mut first = true;
        while !pending.is_empty() {
            let attempt = publish_all(
                &p.js,
                &p.subject,
                std::mem::take(&mut pending),
                std::mem::replace(&mut first, false),
            );
            pending = tokio::select! {
                () = stop.cancelled() => return,
                failed = attempt => failed,
            };
            if !pending.is_empty() {
                tracing::debug!(room = %p.out.room, failed = pending.len(), "room publish failed; retrying");
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
                    room: p.out.room,
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
/// A retry (`first` false) acked as a duplicate was stored by an attempt
/// whose ack was lost. On a first attempt it means the id was taken before
/// we sealed the message, which its tag in the id should make impossible
/// ([`wire::msg_id`]); it is logged, and counted as stored, since a retry
/// under the same id would only be a duplicate again (the receiver waits
/// for the message and the room ends by its usual timeouts if it never
/// comes).
async fn publish_all(
    js: &jetstream::Context,
    subject: &str,
    messages: Vec<(bytes::Bytes, String)>,
    first: bool,
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
            Ok(ack) => match ack.await {
                Ok(ack) => {
                    if first && ack.duplicate {
                        tracing::warn!(id = %message.1, "federation: a room message's id was already in the stream when first published");
                    }
                    true
                }
                Err(_) => false,
            },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::auth::keys_of_a_room;
    use async_nats::jetstream::stream;
    use futures::StreamExt;

    /// With NATS away the publisher stores nothing and the outbox fills:
    /// the text that does not fit and every later one are refused, and the
    /// room's end still fits behind those queued, so the partner hears of
    /// it.
    #[tokio::test]
    async fn a_full_outbox_refuses_texts_but_keeps_room_for_the_end() {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:1")
            .await
            .unwrap();
        let js = jetstream::new(client);
        let names = Names {
            realm: "test".into(),
        };
        let (to_hub, _from_link) = mpsc::channel(16);
        let tasks = TaskTracker::new();
        let to = Publishing {
            js: &js,
            names: &names,
            me: "me",
            to_hub: &to_hub,
            tasks: &tasks,
        };
        let limits = crate::config::Config::default().limits();
        let mut room =
            RemoteRoom::open(&to, RoomId::new_random(), "partner".into(), keys(), limits);
        let text = || RoomBody::Text {
            text: "x".into(),
            sent_at: 1,
        };
        let mut queued = 0u64;
        while room.send(text()) {
            queued += 1;
            assert!(queued <= 2 * OUTBOX as u64, "never full");
        }
        assert_eq!(room.overflowed(), Some(queued));
        assert!(!room.send(text()), "a later text is refused too");
        assert_eq!(room.overflowed(), Some(queued));
        assert!(room.send(end(DisconnectReason::FederationLost, None)));
        room.close(false);
    }

    /// A publish that finds no stream is not stored (JetStream has no
    /// responder for it): the publisher sends the very same bytes, under
    /// the same message id, until they are stored, stores them once, and
    /// only then tells the hub they are published.
    #[tokio::test]
    async fn a_publish_not_stored_is_sent_again_byte_for_byte_until_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let nats = mcp_chat_testkit::nats::NatsServer::start(dir.path())
            .await
            .unwrap();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        let names = Names {
            realm: "test".into(),
        };
        // Ids as the broker's: the sender's is sealed into each header.
        let (me, partner) = (wire::fresh_id(), wire::fresh_id());
        // Every attempt, stored or not, is seen on the subject itself.
        let mut attempts = client.subscribe(names.room(&partner)).await.unwrap();
        client.flush().await.unwrap();
        let (to_hub, mut from_link) = mpsc::channel(16);
        let tasks = TaskTracker::new();
        let to = Publishing {
            js: &js,
            names: &names,
            me: &me,
            to_hub: &to_hub,
            tasks: &tasks,
        };
        let limits = crate::config::Config::default().limits();
        let mut room = RemoteRoom::open(&to, RoomId::new_random(), partner, keys(), limits);
        assert!(room.send(RoomBody::Text {
            text: "hello".into(),
            sent_at: 1,
        }));
        let wait = Duration::from_secs(20);
        let first = tokio::time::timeout(wait, attempts.next())
            .await
            .unwrap()
            .unwrap();
        // The server has routed that attempt, with no stream to keep it.
        let stream = js
            .create_stream(stream::Config {
                name: names.stream(),
                subjects: vec![names.rooms_wildcard()],
                ..Default::default()
            })
            .await
            .unwrap();
        match tokio::time::timeout(wait, from_link.recv()).await.unwrap() {
            Some(FromLink::Published { count, .. }) => assert_eq!(count, 1),
            other => panic!("expected the text published, got {other:?}"),
        }
        let mut stream = stream;
        assert_eq!(
            stream.info().await.unwrap().state.messages,
            1,
            "stored once"
        );
        let stored = stream.get_raw_message(1).await.unwrap();
        assert_eq!(stored.payload, first.payload, "the same sealed bytes");
        let id = |h: Option<&async_nats::HeaderMap>| {
            h.and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.to_string())
        };
        assert!(id(first.headers.as_ref()).is_some());
        assert_eq!(id(Some(&stored.headers)), id(first.headers.as_ref()));
        let again = tokio::time::timeout(wait, attempts.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.payload, first.payload, "a retry resends the bytes");
        room.close(false);
    }

    /// Our side's keys of a fresh room.
    fn keys() -> RoomKeys {
        keys_of_a_room(&wire::fresh_id(), &wire::fresh_id()).0
    }

    /// Both sides of one room.
    fn room() -> (Outgoing, RemoteRoomKeys) {
        let owner = wire::fresh_id();
        let (o, c, room) = keys_of_a_room(&owner, &wire::fresh_id());
        let out = Outgoing {
            room,
            from: owner.clone(),
            sealer: o.sealer,
            seq: 0,
        };
        (
            out,
            RemoteRoomKeys {
                partner: owner,
                opener: c.opener,
            },
        )
    }

    struct RemoteRoomKeys {
        partner: String,
        opener: Opener,
    }

    fn open(at: &RemoteRoomKeys, payload: &[u8]) -> Result<RoomMsg, Rejected> {
        let header = Header::read(payload)?;
        if header.sender() != at.partner {
            return Err(Rejected::NotMember);
        }
        let plain = at.opener.open(payload)?;
        wire::parse_sealed(&header, header.sender(), &plain)
    }

    fn text(t: &str) -> RoomBody {
        RoomBody::Text {
            text: t.into(),
            sent_at: 1,
        }
    }

    #[test]
    fn each_message_is_sealed_once_with_its_own_nonce_and_opens_as_sent() {
        let (mut out, receiver) = room();
        let (first, id1) = out.next(0, text("one")).unwrap();
        let (second, id2) = out.next(4, text("one")).unwrap();
        assert_ne!(id1, id2);
        // Same text: different bytes all through the sealed part (a new
        // nonce), so a nonce is never reused even for equal content.
        assert_ne!(first[auth_header_len()..], second[auth_header_len()..]);
        let one = open(&receiver, &first).unwrap();
        let two = open(&receiver, &second).unwrap();
        assert_eq!((one.seq, two.seq), (1, 2));
        assert_eq!(two.delivered, 4);
        assert_eq!(one.body, text("one"));
        // The same bytes again (a captured message replayed, or a retry
        // the stream stored twice) open in the receiving room, which drops
        // the repeat.
        let mut r = open_room_for_test(receiver);
        let open_in = |r: &RemoteRoom, p: &[u8]| r.open_msg(&Header::read(p).unwrap(), p).unwrap();
        let now = Instant::now();
        let msg = open_in(&r, &first);
        assert_eq!(msg.room, one.room);
        assert_eq!(r.accept(msg, now).unwrap().ready.len(), 1);
        let again = open_in(&r, &first);
        assert_eq!(
            r.accept(again, now).err(),
            Some(Rejected::Replayed),
            "a captured message replayed"
        );
    }

    /// The stream keeps a message id for its de-duplication window, so an
    /// id a realm member could guess would let it store junk under it first
    /// and have our message dropped as a duplicate: the id ends with the
    /// message's tag, known only once it is sealed.
    #[test]
    fn a_message_id_is_bound_to_its_sealed_bytes() {
        let (mut out, _) = room();
        let (sealed, id) = out.next(0, text("one")).unwrap();
        let predictable = format!("{}.{}.1", out.from, out.room);
        assert_ne!(id, predictable);
        let tag = &sealed[sealed.len() - super::super::auth::TAG_LEN..];
        assert_eq!(
            id,
            format!("{predictable}.{}", super::super::auth::hex(tag))
        );
        // The same seq sealed again (a new nonce): another id.
        out.seq = 0;
        let (again, id_again) = out.next(0, text("one")).unwrap();
        assert_ne!(sealed, again);
        assert_ne!(id, id_again);
    }

    fn auth_header_len() -> usize {
        super::super::auth::HEADER_LEN
    }

    /// The accepting half of the room `keys` open, without a publisher.
    fn open_room_for_test(keys: RemoteRoomKeys) -> RemoteRoom {
        let (outbox, _rx) = mpsc::channel(1);
        RemoteRoom {
            partner: keys.partner,
            opener: keys.opener,
            outbox,
            stop: CancellationToken::new(),
            delivered: Arc::new(watch::channel(0).0),
            texts_out: watch::channel(0).1,
            queued_here: 0,
            overflowed: false,
            confirmed: 0,
            next_in: 1,
            ahead: BTreeMap::new(),
            messages: TokenBucket::full(None),
            bytes: TokenBucket::full(None),
        }
    }
}
