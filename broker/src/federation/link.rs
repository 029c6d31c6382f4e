//! The link task: the broker's one connection to the realm. It owns the
//! NATS client, this broker's waiters in the realm queue, the link side of
//! remote rooms, and the presence of other brokers; the hub hears of all
//! that only through [`FromLink`] messages.
//!
//! Liveness: every broker publishes its presence every second (core NATS),
//! signed, with a counter that only grows: a presence counts only with a
//! valid signature and a counter above the last one seen from that broker
//! (a partner starts from the counter its claim or answer carried), so an
//! old presence replayed cannot keep a dead broker's rooms open.
//! A room's partner broker silent for the grace ends the room with
//! `disconnected`. While this broker has lost NATS it keeps its remote rooms
//! for the grace (the client reconnects by itself), then ends them with
//! `federation_lost`; local matching goes on meanwhile, and waiting sessions
//! re-enter the realm when the link is back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::Event;
use async_nats::jetstream::{self, consumer, kv, stream};
use futures::StreamExt;
use mcp_chat_proto::{DisconnectReason, FederationStatus, InterestCount, RoomId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::{self, Identity, Pairing, RoomKeys, Side};
use super::blocks::{self, RealmKey};
use super::diagnose::{self, Explainer};
use super::fault;
use super::key_pin;
use super::realm::{self, Entrant, Mirror, Outcome, Realm};
use super::rooms::{self, RemoteRoom};
use super::wire::{
    self, ClaimAnswer, ClaimKeys, Names, Presence, RealmProfile, Rejected, RoomBody,
};
use super::{Answer, FederationConfig, FromLink, ToLink};
use crate::config::Limits;
use crate::state::SessionId;

const PRESENCE_EVERY: Duration = Duration::from_secs(1);
/// How long a room's late messages are expected after it ended: the
/// partner's end, and messages that crossed ours.
const ENDED_KEPT: Duration = Duration::from_secs(600);
/// How long the hub has to accept a claimed waiter.
const CONFIRM_WITHIN: Duration = Duration::from_secs(4);
/// Idle heartbeat of this broker's pull requests for room messages, and
/// how long each request lasts: two missed beats re-issue the pull.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// How long leaving the realm may take, all told: deleting our waiters'
/// entries and storing the rooms' last messages (a shutdown's `End`s).
/// The broker waits this long for its link on the way out.
pub(crate) const LEAVE_WITHIN: Duration = Duration::from_secs(3);

/// What the link's helper tasks report to it.
enum Internal {
    Nats(Event),
    /// The queue bucket, the blocks bucket and the realm key to use.
    Ready(Box<(kv::Store, kv::Store, key_pin::Chosen)>),
    Entered(realm::Batch),
    Confirmed {
        session: SessionId,
        key: String,
        room: RoomId,
        /// The claim's key, named in the answer.
        claimer_kx: String,
        answer: Answer,
        reply: async_nats::Subject,
    },
    /// A block of the realm, from its bucket.
    RealmBlock(String),
    /// A block asked for by the hub is written (or given up on).
    BlockSaved(Option<(SessionId, u64)>),
    /// This broker's room messages, from its durable pull consumer: read
    /// by the link itself, so a message reaches the hub in one hop.
    Consumer(Box<consumer::pull::Stream>),
    /// Setting the realm up failed (it is retried): for `status`.
    Problem(String),
    /// Enter `session` again after a failed attempt.
    Retry(SessionId),
    /// What a connection attempt of our own said about the client's bare
    /// error (see `diagnose`).
    Explained {
        bare: String,
        why: Option<String>,
    },
}

/// One of our sessions in the realm queue.
struct Waiter {
    key: String,
    /// The X25519 key of its entries (the public half is in them): a
    /// claim's room keys are agreed with it. Made when its entry is (see
    /// `run_batch`), new with every `key`, and used once: taken by the
    /// claim accepted (see [`owner_keys`]).
    kx: Option<x25519_dalek::StaticSecret>,
    rev: Option<u64>,
    profile: RealmProfile,
    /// Its first entry's revision: it keeps its place when it enters again.
    arrival: Option<u64>,
    /// Its entry to withdraw before entering again, open (see `realm`).
    withdraw: Option<u64>,
    /// Its interest wait ended while it was being entered: it enters again
    /// once it waits.
    reopen: bool,
    /// The room of a claim its hub is being asked about: a second claim
    /// meanwhile is refused at once.
    confirming: Option<RoomId>,
    /// Its hub is pinging it before it may be matched: out of the realm
    /// until the hub says it answered.
    paused: bool,
    /// That answer came before the hub's answer to the claim did.
    resume_early: bool,
    /// When its entry was made: it is made again before the bucket's
    /// `max_age` would drop it.
    since: Instant,
    /// Its entry was taken by a claimer (`Outcome::Taken`), whose request
    /// is awaited.
    taken: bool,
    /// Since when its entry has been gone from the queue with no claim
    /// request come: a claimer that died between its delete and its
    /// request. Past [`ORPHAN_AFTER`] the waiter enters again.
    orphaned_since: Option<Instant>,
}

/// The owner's keys of a room claimed of a waiter whose X25519 secret is
/// `kx`. The secret is taken: a claim replayed later (a waiter paused as
/// quiet keeps its entry's key) would otherwise derive the same room keys
/// and seal from nonce 1 again. Refused (and the secret kept) for a claim
/// of another entry's key or a weak one; the reason says which.
fn owner_keys(
    kx: &mut Option<x25519_dalek::StaticSecret>,
    pairing: Pairing<'_>,
) -> Result<RoomKeys, &'static str> {
    let secret = kx.as_ref().ok_or("claim of a waiter whose key was used")?;
    if auth::kx_public(secret) != *pairing.owner_kx {
        return Err("claim with another entry's key");
    }
    let keys = auth::room_keys(secret, Side::Owner, pairing).ok_or("claim with a weak key")?;
    *kx = None;
    Ok(keys)
}

/// What a claim of one of our waiters comes to.
enum Taking {
    Taken(SessionId, Box<RoomKeys>),
    /// Answered no: not ours (any more), or not fit.
    Refused,
    /// A copy of a claim already taken: not answered.
    Again,
}

/// Well past a claim's timeout: no claim request is still on its way.
const ORPHAN_AFTER: Duration = Duration::from_secs(12);

struct Link {
    me: String,
    identity: Arc<Identity>,
    names: Names,
    config: FederationConfig,
    limits: Limits,
    client: async_nats::Client,
    js: jetstream::Context,
    to_hub: mpsc::Sender<FromLink>,
    internal: mpsc::Sender<Internal>,
    mirror: watch::Receiver<Mirror>,
    mirror_tx: Option<watch::Sender<Mirror>>,
    /// The mirror's writer once the watch runs: the tick drops what the
    /// bucket expired, which the watch never hears of.
    mirror_expiry: Option<watch::Sender<Mirror>>,
    store: Option<kv::Store>,
    /// Pair keys of the realm's blocks, for claimers (see `blocks`).
    blocks: watch::Sender<HashSet<String>>,
    blocks_store: Option<kv::Store>,
    /// Blocks asked for while the bucket was not ready: written once it is.
    unsaved_blocks: Vec<String>,
    /// The busiest interests last told to the hub.
    busiest: Vec<InterestCount>,
    connected: bool,
    /// Whether the hub was last told `Up`.
    up: bool,
    since: u64,
    down_at: Option<Instant>,
    waiters: HashMap<SessionId, Waiter>,
    keys: HashMap<String, SessionId>,
    /// Entered since the running attempt began: the next batch.
    pending: Vec<SessionId>,
    batch_running: bool,
    /// Rooms ended lately: a message still on its way for one is expected,
    /// not hostile.
    ended: HashMap<RoomId, Instant>,
    /// Entries of waiters that left while NATS was away: deleted once back.
    stale: Vec<(String, u64)>,
    rooms: HashMap<RoomId, RemoteRoom>,
    /// The rooms' publishers.
    publishers: TaskTracker,
    /// Deletes of our waiters' entries under way: leaving the realm waits
    /// for them, so the process does not exit before they are made.
    deletes: TaskTracker,
    /// Our room messages as JetStream delivers them, once the consumer is
    /// open.
    deliveries: Option<consumer::pull::Stream>,
    /// Partners' brokers: when last heard, and their last presence counter.
    seen: HashMap<String, (Instant, u64)>,
    rejected: u64,
    last_error: Option<String>,
    /// Why the realm key in use is not the bucket's (see `key_pin`).
    key_note: Option<String>,
    explainer: Explainer,
    last_status: Option<FederationStatus>,
}

pub(super) async fn run(
    config: FederationConfig,
    limits: Limits,
    mut from_hub: mpsc::Receiver<ToLink>,
    to_hub: mpsc::Sender<FromLink>,
    stop: CancellationToken,
) {
    let identity = match Identity::generate() {
        Ok(identity) => Arc::new(identity),
        Err(e) => {
            tracing::error!(error = %e, "federation: federation stays off");
            let _ = to_hub
                .send(FromLink::Status(FederationStatus {
                    server: config.urls.join(","),
                    realm: config.realm.clone(),
                    last_error: Some(e.to_string()),
                    ..FederationStatus::default()
                }))
                .await;
            return;
        }
    };
    let me = identity.id().to_owned();
    let names = Names {
        realm: config.realm.clone(),
    };
    let (internal, mut internal_rx) = mpsc::channel(1024);
    let client = match connect(&config, internal.clone()).await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "federation: cannot use the NATS settings; federation stays off");
            let _ = to_hub
                .send(FromLink::Status(FederationStatus {
                    server: config.urls.join(","),
                    realm: config.realm.clone(),
                    last_error: Some(e),
                    ..FederationStatus::default()
                }))
                .await;
            return;
        }
    };
    tracing::info!(broker = %me, realm = %config.realm, "federation: joining the realm");
    let js = jetstream::new(client.clone());
    let (mirror_tx, mirror) = watch::channel(Mirror::default());
    let mut link = Link {
        me,
        identity,
        names,
        config,
        limits,
        client,
        js,
        to_hub,
        internal,
        mirror,
        mirror_tx: Some(mirror_tx),
        mirror_expiry: None,
        store: None,
        blocks: watch::channel(HashSet::new()).0,
        blocks_store: None,
        unsaved_blocks: Vec::new(),
        busiest: Vec::new(),
        connected: false,
        up: false,
        since: unix_now(),
        down_at: Some(Instant::now()),
        waiters: HashMap::new(),
        keys: HashMap::new(),
        pending: Vec::new(),
        batch_running: false,
        ended: HashMap::new(),
        stale: Vec::new(),
        rooms: HashMap::new(),
        publishers: TaskTracker::new(),
        deletes: TaskTracker::new(),
        deliveries: None,
        seen: HashMap::new(),
        rejected: 0,
        last_error: None,
        key_note: None,
        explainer: Explainer::default(),
        last_status: None,
    };
    link.start_tasks(stop.clone());
    let mut claims = link.subscribe(link.names.claim(&link.me)).await;
    let mut presence = link.subscribe(link.names.presence()).await;
    let mut tick = tokio::time::interval(PRESENCE_EVERY);
    // The realm's counts in `status` follow the queue as it changes.
    let mut queue_changes = link.mirror.clone();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            command = from_hub.recv() => match command {
                Some(command) => link.command(command),
                None => break,
            },
            Some(event) = internal_rx.recv() => link.internal(event).await,
            delivery = next_delivery(&mut link.deliveries) => match delivery {
                Some(Ok(message)) => link.delivered(message).await,
                Some(Err(e)) => tracing::debug!(error = %e, "federation: consumer hiccup"),
                None => {
                    // The consumer is gone (deleted, or expired after a
                    // long outage): made again shortly.
                    link.deliveries = None;
                    link.reopen_consumer(stop.clone());
                }
            },
            Some(claim) = next(&mut claims) => link.claim(claim).await,
            Some(beat) = next(&mut presence) => link.presence(&beat.payload),
            _ = tick.tick() => link.tick().await,
            Ok(()) = queue_changes.changed() => link.report().await,
        }
    }
    // The hub is gone (a shutdown): what it queued comes first (its
    // waiters' withdrawals, and the rooms' ends for their partners).
    while let Ok(command) = from_hub.try_recv() {
        link.command(command);
    }
    link.leave(internal_rx).await;
}

async fn next_delivery(
    stream: &mut Option<consumer::pull::Stream>,
) -> Option<Result<jetstream::Message, consumer::pull::MessagesError>> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

async fn next(sub: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match sub {
        Some(sub) => sub.next().await,
        None => std::future::pending().await,
    }
}

async fn connect(
    config: &FederationConfig,
    internal: mpsc::Sender<Internal>,
) -> Result<async_nats::Client, String> {
    let (options, addrs) = diagnose::settings(config).await?;
    options
        .retry_on_initial_connect()
        .ping_interval(Duration::from_secs(2))
        .event_callback(move |event| {
            let internal = internal.clone();
            async move {
                let _ = internal.send(Internal::Nats(event)).await;
            }
        })
        .connect(addrs)
        .await
        .map_err(|e| e.to_string())
}

impl Link {
    async fn subscribe(&mut self, subject: String) -> Option<async_nats::Subscriber> {
        match self.client.subscribe(subject.clone()).await {
            Ok(sub) => Some(sub),
            Err(e) => {
                tracing::error!(subject, error = %e, "federation: cannot subscribe");
                self.last_error = Some(e.to_string());
                None
            }
        }
    }

    /// Sets up the realm's stream and bucket (retrying until the server
    /// answers), this broker's consumer, and its presence.
    fn start_tasks(&mut self, stop: CancellationToken) {
        let js = self.js.clone();
        let names = self.names.clone();
        let internal = self.internal.clone();
        let replicas = self.config.replicas;
        let me = self.me.clone();
        let client = self.client.clone();
        let stop_setup = stop.clone();
        let pins = self.config.key_pins.clone().map(key_pin::KeyPins::new);
        let realm_id = key_pin::RealmId {
            realm: self.config.realm.clone(),
            server: self.config.urls.join(","),
        };
        tokio::spawn(async move {
            let ready = loop {
                match setup(&js, &names, replicas).await {
                    Ok(ready) => break ready,
                    Err(e) => {
                        tracing::debug!(error = %e, "federation: realm not ready yet");
                        let _ = internal.send(Internal::Problem(e)).await;
                        tokio::select! {
                            () = stop_setup.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
            };
            let (queue, blocks, bucket_key) = ready;
            let chosen = key_pin::settle(pins.as_ref(), &realm_id, bucket_key);
            let ready = Box::new((queue, blocks, chosen));
            let _ = internal.send(Internal::Ready(ready)).await;
            open_consumer(js, names, me, internal, stop_setup).await;
        });
        let identity = self.identity.clone();
        let subject = self.names.presence();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PRESENCE_EVERY);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = every.tick() => {
                        let presence = Presence {
                            broker: identity.id().to_owned(),
                            beat: identity.next_beat(),
                        };
                        match identity.sign(auth::PRESENCE, &presence) {
                            Ok(signed) => {
                                let _ = client.publish(subject.clone(), signed).await;
                            }
                            Err(e) => tracing::error!(error = %e, "federation: presence not sent"),
                        }
                    }
                }
            }
        });
    }

    /// Opens this broker's consumer again, after a pause.
    fn reopen_consumer(&self, stop: CancellationToken) {
        let (js, names, me) = (self.js.clone(), self.names.clone(), self.me.clone());
        let internal = self.internal.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            open_consumer(js, names, me, internal, stop).await;
        });
    }

    /// One of our room messages, as JetStream stored it: acknowledged after
    /// the hub is handed what it says, in order. One whose ack is lost
    /// comes again and is dropped as a repeat (by its seq).
    ///
    /// The ack waits one turn of the runtime: the hub and the member's
    /// connection task go first, so the text reaches the client's socket
    /// before the ack's write to NATS (a loopback TCP write, which wakes
    /// the server too). Acked first, it sat on every message's way: the
    /// bench measured cross-broker latency at 1.58× JetStream's own with
    /// it there, 1.52× without (BENCHMARKS.md).
    async fn delivered(&mut self, message: jetstream::Message) {
        self.inbound(&message.payload).await;
        tokio::task::yield_now().await;
        if let Err(e) = message.ack().await {
            tracing::debug!(error = %e, "federation: ack failed; the message comes again and is dropped as a repeat");
        }
    }

    fn command(&mut self, command: ToLink) {
        match command {
            ToLink::Enter { session, profile } => self.enter(session, profile, None),
            ToLink::Open { session } => self.open(session),
            ToLink::Resume { session } => {
                if let Some(w) = self.waiters.get_mut(&session) {
                    if w.paused {
                        self.enter_again(session);
                    } else if w.confirming.is_some() {
                        w.resume_early = true;
                    }
                }
            }
            ToLink::Block { key, reply } => self.block(key, reply),
            ToLink::Withdraw { session } => {
                if let Some(w) = self.waiters.remove(&session) {
                    self.keys.remove(&w.key);
                    if let Some(rev) = w.rev {
                        self.delete_entry(w.key, rev);
                    }
                }
            }
            ToLink::Send {
                room,
                text,
                sent_at,
            } => {
                let Some(r) = self.rooms.get_mut(&room) else {
                    return;
                };
                let first = r.overflowed().is_none();
                if !r.send(RoomBody::Text { text, sent_at })
                    && let Some(queued) = r.overflowed().filter(|_| first)
                {
                    // The hub's credit per room keeps this from happening.
                    // The hub ends the room both ways: its `End` still fits
                    // behind the texts queued, so the partner hears of it.
                    tracing::error!(%room, "federation: a room's outbox overflowed; ending it");
                    let hub = self.to_hub.clone();
                    tokio::spawn(async move {
                        let _ = hub.send(FromLink::Overflowed { room, queued }).await;
                    });
                }
            }
            ToLink::End {
                room,
                reason,
                report,
            } => {
                if let Some(mut r) = self.take_room(room) {
                    r.send(rooms::end(reason, Some(report)));
                    r.close(true);
                }
            }
            ToLink::Delivered { room, count } => {
                if let Some(r) = self.rooms.get(&room) {
                    r.confirm(count);
                }
            }
        }
    }

    /// Enters `session` again, as it stands (profile and arrival).
    fn enter_again(&mut self, session: SessionId) {
        if let Some(w) = self.waiters.get(&session) {
            let (profile, arrival) = (w.profile.clone(), w.arrival);
            self.enter(session, profile, arrival);
        }
    }

    fn enter(&mut self, session: SessionId, profile: RealmProfile, arrival: Option<u64>) {
        let key = wire::fresh_id();
        if let Some(old) = self.waiters.insert(
            session,
            Waiter {
                key: key.clone(),
                kx: None,
                rev: None,
                profile,
                arrival,
                withdraw: None,
                reopen: false,
                confirming: None,
                paused: false,
                resume_early: false,
                since: Instant::now(),
                taken: false,
                orphaned_since: None,
            },
        ) {
            self.keys.remove(&old.key);
        }
        self.keys.insert(key, session);
        self.pending.push(session);
        self.run_batch();
    }

    /// `session`'s interest wait is over: its closed entry is withdrawn and
    /// it enters again, open, keeping its key and its arrival (see `realm`).
    fn open(&mut self, session: SessionId) {
        let pending = self.pending.contains(&session);
        let Some(w) = self.waiters.get_mut(&session) else {
            return;
        };
        if std::mem::replace(&mut w.profile.open, true) {
            return;
        }
        if pending {
            // Its next attempt takes the open profile anyway.
            return;
        }
        match w.rev.take() {
            Some(rev) => {
                w.withdraw = Some(rev);
                self.pending.push(session);
                self.run_batch();
            }
            // Being entered (or claimed: a claim takes its entry): settled
            // when that is.
            None => w.reopen = true,
        }
    }

    /// Records a realm block for this broker's claimers at once, then in
    /// the bucket; the hub hears when it is written.
    fn block(&mut self, key: String, reply: Option<(SessionId, u64)>) {
        self.blocks
            .send_modify(|set| blocks::remember(set, key.clone()));
        match (&self.blocks_store, self.connected) {
            (Some(store), true) => {
                let store = store.clone();
                let internal = self.internal.clone();
                tokio::spawn(async move {
                    blocks::write(store, key).await;
                    let _ = internal.send(Internal::BlockSaved(reply)).await;
                });
            }
            _ => {
                self.unsaved_blocks.push(key);
                if let Some((session, id)) = reply {
                    let hub = self.to_hub.clone();
                    tokio::spawn(async move {
                        let _ = hub.send(FromLink::BlockSaved { session, id }).await;
                    });
                }
            }
        }
    }

    /// Starts the next attempt over everyone pending, unless one runs.
    fn run_batch(&mut self) {
        if self.batch_running || self.pending.is_empty() {
            return;
        }
        // The hub enters sessions only while the link is up.
        let Some(store) = self.store.clone() else {
            return;
        };
        let mut entrants: Vec<Entrant> = Vec::new();
        for session in std::mem::take(&mut self.pending) {
            if let Some(w) = self.waiters.get_mut(&session) {
                // New, or its secret went to a claim of its entry
                // meanwhile: the entry made now carries a fresh one (a
                // claim of an old entry then fails the key check).
                if w.kx.is_none() {
                    w.kx = auth::fresh_secret().ok();
                }
                let Some(kx) = w.kx.clone() else {
                    tracing::error!(
                        session,
                        "federation: no randomness for a waiter's key; it stays out of the realm"
                    );
                    continue;
                };
                entrants.push(Entrant {
                    session,
                    key: w.key.clone(),
                    profile: w.profile.clone(),
                    arrival: w.arrival,
                    withdraw: w.withdraw.take(),
                    kx,
                });
            }
        }
        let realm = Realm {
            client: self.client.clone(),
            store,
            mirror: self.mirror.clone(),
            blocks: self.blocks.subscribe(),
            names: self.names.clone(),
            me: self.me.clone(),
            identity: self.identity.clone(),
        };
        let internal = self.internal.clone();
        self.batch_running = true;
        tokio::spawn(async move {
            let batch = realm::enter_batch(realm, entrants).await;
            fault::entered().await;
            let _ = internal.send(Internal::Entered(batch)).await;
        });
    }

    fn delete_entry(&mut self, key: String, rev: u64) {
        match (&self.store, self.connected) {
            (Some(store), true) => {
                let store = store.clone();
                self.deletes.spawn(async move {
                    let _ = store.delete_expect_revision(&key, Some(rev)).await;
                });
            }
            _ => self.stale.push((key, rev)),
        }
    }

    async fn internal(&mut self, event: Internal) {
        match event {
            Internal::Nats(event) => self.nats_event(event).await,
            Internal::Ready(ready) => {
                let (store, blocks_store, chosen) = *ready;
                let key = chosen.key;
                self.key_note = chosen.note;
                if let Some(mirror) = self.mirror_tx.take() {
                    self.mirror_expiry = Some(mirror.clone());
                    tokio::spawn(realm::watch_queue(store.clone(), mirror));
                    let (tx, mut rx) = mpsc::channel(1024);
                    tokio::spawn(blocks::watch(blocks_store.clone(), tx));
                    let internal = self.internal.clone();
                    tokio::spawn(async move {
                        while let Some(key) = rx.recv().await {
                            if internal.send(Internal::RealmBlock(key)).await.is_err() {
                                return;
                            }
                        }
                    });
                }
                self.store = Some(store);
                for key in std::mem::take(&mut self.unsaved_blocks) {
                    tokio::spawn(blocks::write(blocks_store.clone(), key));
                }
                self.blocks_store = Some(blocks_store);
                let _ = self.to_hub.send(FromLink::RealmKey(key)).await;
                tracing::info!(realm = %self.config.realm, "federation: realm ready");
                self.set_up().await;
            }
            Internal::Entered(batch) => {
                self.batch_running = false;
                for d in batch.dangling {
                    let mut room = self.open_room(d.room, d.partner, *d.keys);
                    // Nothing was said in it: nothing to report.
                    room.send(rooms::end(
                        DisconnectReason::Disconnected,
                        Some(wire::EndReport::default()),
                    ));
                    room.close(true);
                }
                for (session, key, outcome) in batch.outcomes {
                    self.entered(session, key, outcome).await;
                }
                for (first, second) in batch.pairs {
                    self.paired(first, second).await;
                }
                self.run_batch();
            }
            Internal::Confirmed {
                session,
                key,
                room,
                claimer_kx,
                answer,
                reply,
            } => {
                let matched = answer == Answer::Taken;
                if let Some(encoded) = self.answer(room, claimer_kx, matched)
                    && let Err(e) = self.client.publish(reply, encoded).await
                {
                    tracing::warn!(error = %e, "federation: could not answer a claim");
                }
                if !matched && let Some(r) = self.take_room(room) {
                    r.close(false);
                }
                self.confirmed(session, &key, room, answer);
            }
            Internal::RealmBlock(key) => {
                self.blocks
                    .send_modify(|set| blocks::remember(set, key.clone()));
                let _ = self.to_hub.send(FromLink::RealmBlock(key)).await;
            }
            Internal::BlockSaved(reply) => {
                if let Some((session, id)) = reply {
                    let _ = self.to_hub.send(FromLink::BlockSaved { session, id }).await;
                }
            }
            Internal::Consumer(stream) => self.deliveries = Some(*stream),
            Internal::Problem(e) => self.last_error = Some(e),
            Internal::Retry(session) => {
                if self.waiters.contains_key(&session) && self.connected {
                    self.enter_again(session);
                }
            }
            Internal::Explained { bare, why } => {
                let shown = self.last_error.as_ref() == Some(&bare);
                if let Some(why) = self.explainer.explained(bare, why)
                    && shown
                {
                    self.last_error = Some(why);
                }
            }
        }
    }

    async fn nats_event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                tracing::info!("federation: connected to NATS");
                self.explainer.reset();
                self.connected = true;
                self.since = unix_now();
                self.down_at = None;
                // Silence while we were away says nothing about a partner.
                let now = Instant::now();
                for (at, _) in self.seen.values_mut() {
                    *at = now;
                }
                for (key, rev) in std::mem::take(&mut self.stale) {
                    self.delete_entry(key, rev);
                }
                self.set_up().await;
            }
            Event::Disconnected => {
                tracing::warn!(
                    "federation: lost NATS; local matching goes on, remote rooms are held"
                );
                self.connected = false;
                self.since = unix_now();
                self.down_at = Some(Instant::now());
                // The hub takes our waiters back into its local queue.
                self.pending.clear();
                for (_, w) in std::mem::take(&mut self.waiters) {
                    if let Some(rev) = w.rev {
                        self.stale.push((w.key, rev));
                    }
                }
                self.keys.clear();
                self.set_up().await;
            }
            Event::ServerError(e) => {
                tracing::warn!(error = %e, "federation: NATS server error");
                self.last_error = Some(e.to_string());
            }
            Event::ClientError(e) => {
                tracing::debug!(error = %e, "federation: NATS client error");
                let (shown, explain) = self.explainer.shown(e.to_string());
                self.last_error = Some(shown);
                if explain {
                    let (config, internal) = (self.config.clone(), self.internal.clone());
                    let bare = e.to_string();
                    tokio::spawn(async move {
                        let why = diagnose::explain(config).await;
                        let _ = internal.send(Internal::Explained { bare, why }).await;
                    });
                }
            }
            other => tracing::debug!(event = %other, "federation: NATS event"),
        }
    }

    /// Tells the hub whether waiting sessions go through the realm.
    async fn set_up(&mut self) {
        let up = self.connected && self.store.is_some();
        if up != self.up {
            self.up = up;
            let _ = self
                .to_hub
                .send(if up { FromLink::Up } else { FromLink::Down })
                .await;
        }
        self.report().await;
    }

    /// Two of our entrants were paired with each other; one that left
    /// meanwhile leaves the other to enter again.
    async fn paired(&mut self, first: SessionId, second: SessionId) {
        let here = |link: &Self, s: SessionId| link.waiters.contains_key(&s);
        match (here(self, first), here(self, second)) {
            (true, true) => {
                for s in [first, second] {
                    if let Some(w) = self.waiters.remove(&s) {
                        self.keys.remove(&w.key);
                    }
                }
                let _ = self
                    .to_hub
                    .send(FromLink::PairedLocally { first, second })
                    .await;
            }
            (true, false) => {
                self.pending.push(first);
                self.run_batch();
            }
            (false, true) => {
                self.pending.push(second);
                self.run_batch();
            }
            (false, false) => {}
        }
    }

    async fn entered(
        &mut self,
        session: SessionId,
        key: String,
        outcome: Result<Outcome, realm::EnterError>,
    ) {
        let current = self.waiters.get(&session).is_some_and(|w| w.key == key);
        match outcome {
            Ok(Outcome::Waiting { rev, position }) => {
                if current {
                    let mut reopen = false;
                    if let Some(w) = self.waiters.get_mut(&session) {
                        w.rev = Some(rev);
                        w.arrival.get_or_insert(rev);
                        reopen = std::mem::take(&mut w.reopen);
                    }
                    let _ = self
                        .to_hub
                        .send(FromLink::Waiting { session, position })
                        .await;
                    if reopen && let Some(w) = self.waiters.get_mut(&session) {
                        // Its interest wait ended while it entered.
                        w.withdraw = w.rev.take();
                        self.pending.push(session);
                        self.run_batch();
                    }
                } else {
                    // It left while entering.
                    self.delete_entry(key, rev);
                }
            }
            // The claimer's request decides (and finds us gone if we left).
            Ok(Outcome::Taken) => {
                if current && let Some(w) = self.waiters.get_mut(&session) {
                    w.taken = true;
                }
            }
            Ok(Outcome::Matched {
                room,
                partner,
                keys,
                beat,
                profile,
            }) => {
                if current {
                    self.waiters.remove(&session);
                    self.keys.remove(&key);
                }
                let local = partner == self.me;
                let outbox = (!local).then(|| {
                    let r = self.open_room(room, partner, *keys);
                    let outbox = r.outbox();
                    self.insert_room(room, r, beat);
                    outbox
                });
                // Even for a session that left meanwhile: the hub ends the
                // room, which tells the waiter we took.
                let _ = self
                    .to_hub
                    .send(FromLink::Matched {
                        session,
                        room,
                        local,
                        confirm: None,
                        partner: profile,
                        partner_session: None,
                        outbox,
                    })
                    .await;
            }
            Err(e) => {
                tracing::warn!(session, error = %e, "federation: entering the realm failed");
                self.last_error = Some(e.to_string());
                if current {
                    // Again shortly, with a fresh entry; the old one may
                    // exist, and goes.
                    self.keys.remove(&key);
                    if let Some(store) = self.store.clone() {
                        tokio::spawn(async move {
                            let _ = store.delete(&key).await;
                        });
                    }
                    let internal = self.internal.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = internal.send(Internal::Retry(session)).await;
                    });
                }
            }
        }
    }

    fn open_room(&self, room: RoomId, partner: String, keys: RoomKeys) -> RemoteRoom {
        let to = rooms::Publishing {
            js: &self.js,
            names: &self.names,
            me: &self.me,
            to_hub: &self.to_hub,
            tasks: &self.publishers,
        };
        RemoteRoom::open(&to, room, partner, keys, self.limits)
    }

    /// Removes a room, remembering for a while that it ended.
    fn take_room(&mut self, room: RoomId) -> Option<RemoteRoom> {
        let taken = self.rooms.remove(&room);
        if taken.is_some() {
            self.ended.insert(room, Instant::now());
        }
        taken
    }

    /// A partner is counted as heard from when its room opens: its first
    /// heartbeat may not have reached us yet. Only brokers recorded here
    /// are tracked (see [`heard`]); `beat` is the partner's presence counter
    /// its signed claim or answer carried: older presences are refused.
    fn insert_room(&mut self, id: RoomId, room: RemoteRoom, beat: u64) {
        let now = Instant::now();
        let seen = self.seen.entry(room.partner.clone()).or_insert((now, beat));
        seen.1 = seen.1.max(beat);
        self.rooms.insert(id, room);
    }

    /// Our signed answer to the claim of `room` made with `claimer_kx`;
    /// `None` (logged) leaves the claimer as if the answer were lost.
    fn answer(&self, room: RoomId, claimer_kx: String, matched: bool) -> Option<bytes::Bytes> {
        let answer = ClaimAnswer {
            owner: self.me.clone(),
            room,
            claimer_kx,
            matched,
            beat: self.identity.beats(),
        };
        self.identity
            .sign(auth::ANSWER, &answer)
            .inspect_err(|e| tracing::error!(error = %e, "federation: a claim not answered"))
            .ok()
    }

    /// Whether a checked claim may take our waiter: it names one, with the
    /// key of its entries, not being asked about already, in a room that
    /// is new. Then its room's keys.
    fn take_claim(&mut self, c: &ClaimKeys) -> Taking {
        let claim = &c.claim;
        // A signed claim can be replayed, by anyone who saw it, with the
        // claimer's own reply inbox: taking one naming a room that exists
        // or ended lately would replace that room (or, refused, close it),
        // and a signed refusal of it would reach the genuine claimer before
        // our real answer. So it gets no answer at all.
        let again = self.rooms.contains_key(&claim.room)
            || self.ended.contains_key(&claim.room)
            || self
                .keys
                .get(&claim.key)
                .and_then(|s| self.waiters.get(s))
                .is_some_and(|w| w.confirming == Some(claim.room));
        if again {
            self.reject(
                Rejected::Replayed,
                "copy of a claim (its room is open, ended lately or being confirmed)",
            );
            return Taking::Again;
        }
        let Some(&session) = self.keys.get(&claim.key) else {
            return Taking::Refused;
        };
        let Some(w) = self.waiters.get_mut(&session) else {
            return Taking::Refused;
        };
        if w.confirming.is_some() {
            return Taking::Refused;
        }
        let pairing = Pairing {
            room: claim.room,
            owner: &self.me,
            claimer: &claim.claimer,
            owner_kx: &c.owner_kx,
            claimer_kx: &c.claimer_kx,
        };
        let keys = match owner_keys(&mut w.kx, pairing) {
            Ok(keys) => keys,
            Err(why) => {
                self.reject(Rejected::Malformed, why);
                return Taking::Refused;
            }
        };
        w.confirming = Some(claim.room);
        // Its entry is gone; until the hub answers it is claimed.
        w.rev = None;
        w.taken = true;
        Taking::Taken(session, Box::new(keys))
    }

    /// A claimer took one of our waiters out of the queue.
    async fn claim(&mut self, msg: async_nats::Message) {
        let Some(reply) = msg.reply.clone() else {
            self.reject(Rejected::Malformed, "claim without a reply subject");
            return;
        };
        // Junk, unsigned, forged or oversized claims get no answer: a
        // signed refusal each would be cheap work for their sender to ask
        // of us (a genuine broker's claims always parse).
        let parsed = match wire::parse_claim(&msg.payload) {
            Ok(c) => c,
            Err(why) => {
                self.reject(why, "claim");
                return;
            }
        };
        // A claim of a waiter that left, or a second claim while the hub
        // is asked about a first, is answered, so its sender does not
        // wait; not a replay.
        let c = &parsed;
        let (session, keys) = match self.take_claim(c) {
            Taking::Again => return,
            Taking::Taken(session, keys) => (session, keys),
            Taking::Refused => {
                if let Some(answer) = self.answer(c.claim.room, c.claim.claimer_kx.clone(), false) {
                    let _ = self.client.publish(reply, answer).await;
                }
                return;
            }
        };
        let claim = c.claim.clone();
        let key = claim.key.clone();
        let local = claim.claimer == self.me;
        let (partner_session, outbox) = if local {
            (self.keys.get(&claim.claimer_key).copied(), None)
        } else {
            let r = self.open_room(claim.room, claim.claimer.clone(), *keys);
            let outbox = r.outbox();
            self.insert_room(claim.room, r, claim.beat);
            (None, Some(outbox))
        };
        let (confirm, answer) = oneshot::channel();
        let _ = self
            .to_hub
            .send(FromLink::Matched {
                session,
                room: claim.room,
                local,
                confirm: Some(confirm),
                partner: claim.profile,
                partner_session,
                outbox,
            })
            .await;
        let internal = self.internal.clone();
        let room = claim.room;
        let claimer_kx = claim.claimer_kx;
        tokio::spawn(async move {
            let answer = match tokio::time::timeout(CONFIRM_WITHIN, answer).await {
                Ok(Ok(answer)) => answer,
                _ => Answer::Refused,
            };
            let _ = internal
                .send(Internal::Confirmed {
                    session,
                    key,
                    room,
                    claimer_kx,
                    answer,
                    reply,
                })
                .await;
        });
    }

    /// The hub answered a claim of our waiter `session`: taken, it leaves
    /// the realm; refused while it still waits here (a block the claimer
    /// did not know, or a pair the hub finds unfit), it enters again,
    /// keeping its arrival; quiet, it waits for the hub's `Resume`.
    fn confirmed(&mut self, session: SessionId, key: &str, room: RoomId, answer: Answer) {
        let Some(w) = self
            .waiters
            .get_mut(&session)
            .filter(|w| w.key == key && w.confirming == Some(room))
        else {
            return;
        };
        match answer {
            Answer::Taken => {
                self.waiters.remove(&session);
                self.keys.remove(key);
            }
            Answer::Quiet if !w.resume_early => {
                w.confirming = None;
                w.paused = true;
            }
            Answer::Quiet | Answer::Refused => self.enter_again(session),
        }
    }

    fn presence(&mut self, payload: &[u8]) {
        if let Err(why) = presence(&mut self.seen, payload, Instant::now()) {
            self.reject(why, "presence");
        }
    }

    async fn inbound(&mut self, payload: &[u8]) {
        if payload.len() > wire::MAX_WIRE_BYTES {
            self.reject(Rejected::Oversized, "room message");
            return;
        }
        let header = match auth::Header::read(payload) {
            Ok(h) => h,
            Err(why) => {
                self.reject(why, "room message");
                return;
            }
        };
        let room_id = header.room;
        let Some(room) = self.rooms.get_mut(&room_id) else {
            if self.ended.contains_key(&room_id) {
                // Both sides ended at once, or a message crossed our end.
                tracing::debug!(room = %room_id, "federation: a message for a room that just ended");
            } else {
                self.reject(Rejected::NotMember, "room message");
            }
            return;
        };
        // Opened before anything else is read of it.
        let accepted = match room
            .open_msg(&header, payload)
            .and_then(|msg| room.accept(msg, Instant::now()))
        {
            Ok(a) => a,
            Err(why) => {
                self.reject(why, "room message");
                return;
            }
        };
        if let Some(count) = accepted.delivered {
            let _ = self
                .to_hub
                .send(FromLink::Delivered {
                    room: room_id,
                    count,
                })
                .await;
        }
        for body in accepted.ready {
            match body {
                RoomBody::Text { text, sent_at } => {
                    let _ = self
                        .to_hub
                        .send(FromLink::Message {
                            room: room_id,
                            text,
                            sent_at,
                        })
                        .await;
                }
                RoomBody::Progress => {}
                RoomBody::End { reason, report } => {
                    if let Some(r) = self.take_room(room_id) {
                        r.close(false);
                    }
                    let _ = self
                        .to_hub
                        .send(FromLink::PartnerEnded {
                            room: room_id,
                            reason,
                            report,
                        })
                        .await;
                    return;
                }
            }
        }
    }

    /// Leaves the realm, within [`LEAVE_WITHIN`]. Our waiters' entries go
    /// first, all at once: they depend on nothing, and an entry left behind
    /// is claimed in vain by every other broker until the bucket's
    /// `max_age` drops it. One being made right now is deleted once made.
    /// Meanwhile the rooms' publishers store their last messages.
    async fn leave(mut self, mut internal_rx: mpsc::Receiver<Internal>) {
        let deadline = Instant::now() + LEAVE_WITHIN;
        self.pending.clear();
        self.keys.clear();
        for (_, w) in std::mem::take(&mut self.waiters) {
            if let Some(rev) = w.rev {
                self.delete_entry(w.key, rev);
            }
        }
        while self.batch_running {
            match tokio::time::timeout_at(deadline, internal_rx.recv()).await {
                // Its waiters are gone from `waiters`: entries are deleted,
                // and a room it made is opened, then ended below.
                Ok(Some(Internal::Entered(batch))) => self.internal(Internal::Entered(batch)).await,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        for (_, mut room) in self.rooms.drain() {
            // One the hub did not end (it was matched as the hub went, or
            // the hub's end was lost): its partner learns it ended, and
            // counts from what it knows.
            room.send(rooms::end(DisconnectReason::Shutdown, None));
            room.close(true);
        }
        self.publishers.close();
        self.deletes.close();
        let done = futures::future::join(self.deletes.wait(), self.publishers.wait());
        if tokio::time::timeout_at(deadline, done).await.is_err() {
            tracing::warn!(
                "federation: leaving the realm took too long; some entries or rooms' last messages may be left"
            );
        }
        let _ = tokio::time::timeout_at(deadline, self.client.flush()).await;
    }

    fn reject(&mut self, why: Rejected, what: &str) {
        self.rejected += 1;
        // Counted always; logged sparingly, so a flood cannot fill the log.
        if self.rejected <= 16 || self.rejected.is_power_of_two() {
            tracing::warn!(reason = %why, what, total = self.rejected, "federation: dropped an inbound message");
        }
    }

    fn end_room(&mut self, room: RoomId, reason: DisconnectReason) {
        if let Some(r) = self.take_room(room) {
            r.close(false);
            let hub = self.to_hub.clone();
            tokio::spawn(async move {
                // Vanished: the hub counts what it cannot know as
                // unconfirmed.
                let _ = hub
                    .send(FromLink::PartnerEnded {
                        room,
                        reason,
                        report: None,
                    })
                    .await;
            });
        }
    }

    async fn tick(&mut self) {
        let now = Instant::now();
        let grace = self.config.grace;
        // Connected or not, only open rooms' partners are kept.
        keep_partners(
            &mut self.seen,
            self.rooms.values().map(|r| r.partner.as_str()),
        );
        if let Some(mirror) = &self.mirror_expiry {
            mirror.send_if_modified(|m| m.expire(realm::now_ms()) > 0);
        }
        if let Some(down) = self.down_at {
            if now.duration_since(down) > grace && !self.rooms.is_empty() {
                tracing::warn!(
                    rooms = self.rooms.len(),
                    "federation: NATS away past the grace; ending remote rooms"
                );
                let ids: Vec<RoomId> = self.rooms.keys().copied().collect();
                for room in ids {
                    self.end_room(room, DisconnectReason::FederationLost);
                }
            }
        } else {
            let silent: Vec<RoomId> = self
                .rooms
                .iter()
                .filter(|(_, r)| {
                    self.seen
                        .get(&r.partner)
                        .is_none_or(|&(at, _)| now.duration_since(at) > grace)
                })
                .map(|(&id, _)| id)
                .collect();
            for room in silent {
                tracing::warn!(%room, "federation: a partner's broker went silent; ending the room");
                self.end_room(room, DisconnectReason::Disconnected);
            }
            self.ended
                .retain(|_, &mut at| now.duration_since(at) <= ENDED_KEPT);
            self.renew_old_entries(now);
            self.reenter_orphans(now);
        }
        self.report().await;
    }

    /// A waiter waiting for half the bucket's `max_age` gets a fresh entry
    /// (at the back, which costs nothing: a waiter that old is alone).
    fn renew_old_entries(&mut self, now: Instant) {
        let old: Vec<(SessionId, String, u64)> = self
            .waiters
            .iter()
            .filter(|(_, w)| now.duration_since(w.since) > fault::queue_max_age() / 2)
            .filter_map(|(&s, w)| w.rev.map(|rev| (s, w.key.clone(), rev)))
            .collect();
        for (session, key, rev) in old {
            self.delete_entry(key, rev);
            self.enter_again(session);
        }
    }

    /// Waiters whose entry left the queue with no claim request following
    /// (see [`Waiter::orphaned_since`]) enter again.
    fn reenter_orphans(&mut self, now: Instant) {
        let mut orphans = Vec::new();
        for (&session, w) in &mut self.waiters {
            // Borrowed per waiter, not the whole mirror copied each second.
            let queued = w.rev.is_some() && self.mirror.borrow().contains(&w.key);
            if (w.rev.is_some() || w.taken) && !queued && !w.paused {
                let since = *w.orphaned_since.get_or_insert(now);
                if now.duration_since(since) > ORPHAN_AFTER {
                    orphans.push(session);
                }
            } else {
                w.orphaned_since = None;
            }
        }
        for session in orphans {
            tracing::warn!(
                session,
                "federation: a claimed waiter heard no claim; entering it again"
            );
            self.enter_again(session);
        }
    }

    async fn report(&mut self) {
        let busiest = self.mirror.borrow().busiest(crate::state::BUSIEST_SHOWN);
        if busiest != self.busiest {
            self.busiest = busiest.clone();
            let _ = self.to_hub.send(FromLink::Busiest(busiest)).await;
        }
        let status = FederationStatus {
            server: self.config.urls.join(","),
            realm: self.config.realm.clone(),
            // In the realm: connected, with its queue and stream set up.
            connected: self.up,
            since: self.since,
            waiting_in_realm: self.mirror.borrow().len(),
            remote_rooms: self.rooms.len(),
            rejected: self.rejected + self.mirror.borrow().invalid,
            last_error: self.last_error.clone(),
            realm_key_note: self.key_note.clone(),
        };
        if self.last_status.as_ref() != Some(&status) {
            self.last_status = Some(status.clone());
            let _ = self.to_hub.send(FromLink::Status(status)).await;
        }
    }
}

/// Creates (or finds) the realm's rooms stream and queue bucket, both with
/// limits, so that a realm cannot grow the server's disk without bound.
async fn setup(
    js: &jetstream::Context,
    names: &Names,
    replicas: usize,
) -> Result<(kv::Store, kv::Store, Option<RealmKey>), String> {
    js.get_or_create_stream(stream::Config {
        name: names.stream(),
        subjects: vec![names.rooms_wildcard()],
        max_age: rooms::STREAM_MAX_AGE,
        max_bytes: rooms::STREAM_MAX_BYTES,
        max_message_size: i32::try_from(wire::MAX_WIRE_BYTES + 4096).unwrap_or(i32::MAX),
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("rooms stream: {e}"))?;
    let bucket = names.bucket();
    let queue = match js.get_key_value(&bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket,
                history: 1,
                max_age: fault::queue_max_age(),
                max_bytes: 64 * 1024 * 1024,
                // Values are entries (`wire::QueueEntry`); the server
                // counts headers in too.
                max_value_size: i32::try_from(wire::MAX_ENTRY_BYTES + 1024).unwrap_or(i32::MAX),
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("queue bucket: {e}"))?,
    };
    let (blocks, key) = blocks::setup(js, names, replicas).await?;
    Ok((queue, blocks, key))
}

/// Opens this broker's durable consumer of its room messages (retrying
/// until the server has it) and hands its message stream to the link, which
/// reads it. The consumer is made again if it was lost (after a long outage
/// it expires by its inactive threshold).
async fn open_consumer(
    js: jetstream::Context,
    names: Names,
    me: String,
    internal: mpsc::Sender<Internal>,
    stop: CancellationToken,
) {
    loop {
        let attempt = async {
            let stream = js
                .get_stream(names.stream())
                .await
                .map_err(|e| e.to_string())?;
            let consumer: consumer::PullConsumer = stream
                .get_or_create_consumer(
                    &format!("broker_{me}"),
                    consumer::pull::Config {
                        durable_name: Some(format!("broker_{me}")),
                        filter_subject: names.room(&me),
                        ack_policy: consumer::AckPolicy::Explicit,
                        deliver_policy: consumer::DeliverPolicy::All,
                        inactive_threshold: rooms::CONSUMER_INACTIVE,
                        max_ack_pending: 10_000,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            // A pull request held by a server that dies is noticed only
            // by its missing heartbeats; async-nats' default (15 s, so
            // about 30 s) would stall the room that long after a cluster
            // node fails, so the server beats more often.
            consumer
                .stream()
                .heartbeat(PULL_HEARTBEAT)
                .expires(PULL_EXPIRES)
                .messages()
                .await
                .map_err(|e| e.to_string())
        };
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = attempt => opened,
        };
        match opened {
            Ok(stream) => {
                let _ = internal.send(Internal::Consumer(Box::new(stream))).await;
                return;
            }
            Err(e) => tracing::debug!(error = %e, "federation: room consumer not ready"),
        }
        if internal.is_closed() {
            return;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A presence from `broker` (signature checked) counts only for a partner
/// of an open room (recorded when the room opens): any member may publish
/// presences under ids of its own making, which must not grow the map. It
/// counts only with a counter above the last one: an old presence replayed
/// is refused.
fn heard(
    seen: &mut HashMap<String, (Instant, u64)>,
    broker: &str,
    beat: u64,
    now: Instant,
) -> Result<(), Rejected> {
    if is_news(seen, broker, beat)?
        && let Some(last) = seen.get_mut(broker)
    {
        *last = (now, beat);
    }
    Ok(())
}

/// Whether a presence counter `beat` from `broker` says something new: only
/// of a tracked broker, and above its last counter. Below it is a replay;
/// the same counter is the presence a claim or answer named, still on its
/// way (not counted as hostile), or a replay: either way nothing new.
fn is_news(
    seen: &HashMap<String, (Instant, u64)>,
    broker: &str,
    beat: u64,
) -> Result<bool, Rejected> {
    match seen.get(broker) {
        None => Ok(false),
        Some(&(_, last)) if beat < last => Err(Rejected::Replayed),
        Some(&(_, last)) => Ok(beat > last),
    }
}

/// Reads a presence: verified, and kept, only if it is news of a broker
/// tracked (see [`heard`]). Every broker's presence reaches every broker:
/// the others, and their replays, cost a parse, not a verification.
fn presence(
    seen: &mut HashMap<String, (Instant, u64)>,
    payload: &[u8],
    now: Instant,
) -> Result<auth::Opened<wire::Presence>, Rejected> {
    let opened = wire::parse_presence_if(payload, |p| is_news(seen, &p.broker, p.beat))?;
    if let auth::Opened::Verified(p) = &opened {
        heard(seen, &p.broker, p.beat, now)?;
    }
    Ok(opened)
}

/// Forgets every broker that is no longer the partner of an open room.
fn keep_partners<'a>(
    seen: &mut HashMap<String, (Instant, u64)>,
    partners: impl Iterator<Item = &'a str>,
) {
    let partners: HashSet<&str> = partners.collect();
    seen.retain(|id, _| partners.contains(id.as_str()));
}

#[cfg(test)]
mod owner_key_tests {
    use super::*;

    /// A room's keys are agreed once per waiter secret: the same claim
    /// again (replayed after the room ended) gets nothing, so no room key
    /// and nonce are used twice.
    #[test]
    fn a_waiter_secret_makes_one_room_only() {
        let secret = auth::fresh_secret().unwrap();
        let owner_kx = auth::kx_public(&secret);
        let (_, claimer_kx) = auth::fresh_kx().unwrap();
        let (owner, claimer) = (wire::fresh_id(), wire::fresh_id());
        let pairing = Pairing {
            room: auth::room_id_for(&claimer, &claimer_kx),
            owner: &owner,
            claimer: &claimer,
            owner_kx: &owner_kx,
            claimer_kx: &claimer_kx,
        };
        let other_kx = auth::kx_public(&auth::fresh_secret().unwrap());
        let mut kx = Some(secret);
        let other = Pairing {
            owner_kx: &other_kx,
            ..pairing
        };
        assert_eq!(
            owner_keys(&mut kx, other).err(),
            Some("claim with another entry's key")
        );
        assert!(kx.is_some(), "a refused claim leaves the secret");
        assert!(owner_keys(&mut kx, pairing).is_ok());
        assert!(kx.is_none(), "taken by the claim");
        assert_eq!(
            owner_keys(&mut kx, pairing).err(),
            Some("claim of a waiter whose key was used")
        );
    }
}

#[cfg(test)]
mod presence_tests {
    use super::*;

    #[test]
    fn presences_are_kept_only_for_open_rooms_partners() {
        let start = Instant::now();
        let later = start + Duration::from_secs(1);
        let mut seen = HashMap::from([("partner".to_owned(), (start, 5))]);
        assert_eq!(heard(&mut seen, "forged", 9, later), Ok(()));
        assert!(
            !seen.contains_key("forged"),
            "an unknown id is not recorded"
        );
        assert_eq!(heard(&mut seen, "partner", 6, later), Ok(()));
        assert_eq!(seen.get("partner"), Some(&(later, 6)));
        seen.insert("gone".to_owned(), (later, 1));
        keep_partners(&mut seen, ["partner"].into_iter());
        assert_eq!(seen.len(), 1);
        keep_partners(&mut seen, std::iter::empty());
        assert!(seen.is_empty());
    }

    #[test]
    fn an_old_presence_replayed_or_a_bad_signature_is_refused() {
        let start = Instant::now();
        let later = start + Duration::from_secs(9);
        let mut seen = HashMap::from([("partner".to_owned(), (start, 5))]);
        assert_eq!(
            heard(&mut seen, "partner", 5, later),
            Ok(()),
            "the same again"
        );
        assert_eq!(
            heard(&mut seen, "partner", 2, later),
            Err(Rejected::Replayed)
        );
        assert_eq!(seen.get("partner"), Some(&(start, 5)), "not kept alive");
        // Signed: a good one parses, one signed by another key or changed
        // after signing does not.
        let partner = Identity::generate().unwrap();
        let other = Identity::generate().unwrap();
        let p = Presence {
            broker: partner.id().to_owned(),
            beat: partner.next_beat(),
        };
        assert_eq!(
            wire::parse_presence(&partner.sign(auth::PRESENCE, &p).unwrap()),
            Ok(p.clone())
        );
        assert_eq!(
            wire::parse_presence(&other.sign(auth::PRESENCE, &p).unwrap()),
            Err(Rejected::Forged)
        );
        assert_eq!(
            wire::parse_presence(&partner.sign(auth::CLAIM, &p).unwrap()),
            Err(Rejected::Forged),
            "a signature for another kind"
        );
        assert!(partner.next_beat() > p.beat, "counters only grow");
    }

    /// Presences of brokers not tracked, and repeats, are dropped before
    /// their signature is checked: a forged one of them is not found
    /// forged, since it was never verified.
    #[test]
    fn only_news_of_a_tracked_broker_is_verified() {
        let now = Instant::now();
        let partner = Identity::generate().unwrap();
        let stranger = Identity::generate().unwrap();
        let mut seen = HashMap::from([(partner.id().to_owned(), (now, 5))]);
        let forged = |who: &Identity, beat: u64| {
            let mut signed: auth::Signed = serde_json::from_slice(
                &who.sign(
                    auth::PRESENCE,
                    &Presence {
                        broker: who.id().to_owned(),
                        beat,
                    },
                )
                .unwrap(),
            )
            .unwrap();
            signed.sig = "0".repeat(128);
            wire::encode(&signed)
        };
        assert_eq!(
            presence(&mut seen, &forged(&stranger, 9), now),
            Ok(auth::Opened::Unwanted),
            "untracked: not verified"
        );
        assert_eq!(
            presence(&mut seen, &forged(&partner, 5), now),
            Ok(auth::Opened::Unwanted),
            "nothing new: not verified"
        );
        assert_eq!(
            presence(&mut seen, &forged(&partner, 4), now),
            Err(Rejected::Replayed)
        );
        assert_eq!(
            presence(&mut seen, &forged(&partner, 6), now),
            Err(Rejected::Forged),
            "news: verified"
        );
        assert_eq!(seen.get(partner.id()), Some(&(now, 5)));
        let good = partner
            .sign(
                auth::PRESENCE,
                &Presence {
                    broker: partner.id().to_owned(),
                    beat: 6,
                },
            )
            .unwrap();
        assert!(matches!(
            presence(&mut seen, &good, now),
            Ok(auth::Opened::Verified(_))
        ));
        assert_eq!(seen.get(partner.id()), Some(&(now, 6)));
    }
}
