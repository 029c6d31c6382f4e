//! Federation: this broker joins a *realm* of brokers on other machines
//! through NATS JetStream, so that waiting sessions everywhere form one FIFO
//! queue and rooms span machines. Off unless configured.
//!
//! The link is one more task beside the hub, talking to it through two
//! bounded channels of typed messages ([`ToLink`], [`FromLink`]); it shares
//! no state with it. The hub stays the arbiter of its sessions: the link
//! proposes a match, the hub accepts it only if the session is still
//! waiting. A shim never knows whether its partner is local or remote.
//!
//! - [`config`]: `config.toml` and the command-line overrides.
//! - `wire`: subjects and the messages brokers exchange, with validation:
//!   every inbound message is treated as coming from a hostile client.
//! - `auth`: brokers' per-start identities (ids are hashes of their keys),
//!   signatures on what names a broker as its author, and the sealed room
//!   messages only the room's two brokers can make or read.
//! - `realm`: the realm's queue (a KV bucket) and the race-free claim
//!   protocol under the matching rule; read its docs for why no waiter is
//!   matched twice and no two compatible waiters are left waiting.
//! - `blocks`: the realm key, the keyed hash (`who`) that names a session
//!   to other brokers, and the realm's blocks bucket; `key_pin`: the realm
//!   key pinned on first use.
//! - `rooms`: messages of rooms spanning two brokers, through a JetStream
//!   stream (message ids, explicit acks, per-room sequence numbers).
//! - `link`: the task: connection, presence, liveness, and routing;
//!   `diagnose` puts into words why NATS refuses it.
//!
//! How far it carries: every cross-broker match costs a few KV operations on
//! the realm's bucket (one stream, so one Raft group in a cluster; about
//! 2 ms for a lone match on loopback), and every message a publish and an
//! acked delivery on the rooms stream (about 30 µs of server CPU). So one
//! cluster serves thousands of matches and tens of thousands of messages a
//! second; past that, or across continents, a community splits into several
//! realms or puts a leaf node at each site. BENCHMARKS.md ("Federation")
//! has the figures and the estimate.

mod auth;
pub(crate) mod blocks;
pub mod config;
mod diagnose;
mod fault;
mod key_pin;
mod link;
mod realm;
mod rooms;
mod wire;

use mcp_chat_proto::{DisconnectReason, FederationStatus, InterestCount, RoomId};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use config::FederationConfig;
pub(crate) use link::LEAVE_WITHIN;
pub(crate) use rooms::Outbox;
pub(crate) use wire::{EndReport, RealmProfile, who_hex};

use crate::config::Limits;
use crate::state::SessionId;

/// Messages the hub may queue for the link before it counts as overloaded.
pub(crate) const TO_LINK_CAPACITY: usize = 16 * 1024;
/// Messages the link may queue for the hub; the link waits when full.
const FROM_LINK_CAPACITY: usize = 4096;

/// Hub → link.
#[derive(Debug)]
pub(crate) enum ToLink {
    /// Put `session` in the realm's queue (or match it with the oldest
    /// compatible waiter).
    Enter {
        session: SessionId,
        profile: RealmProfile,
    },
    /// `session`'s interest wait is over: it enters again, open.
    Open { session: SessionId },
    /// `session`, held out of the realm while it was pinged
    /// ([`Answer::Quiet`]), answered: it enters again, keeping its place.
    Resume { session: SessionId },
    /// Record the realm block `key` (see `blocks`); with `reply`, tell the
    /// hub once it is written ([`FromLink::BlockSaved`]).
    Block {
        key: String,
        reply: Option<(SessionId, u64)>,
    },
    /// `session` stopped waiting (left, detached or gone).
    Withdraw { session: SessionId },
    /// A message for the remote partner of `room`.
    Send {
        room: RoomId,
        text: String,
        sent_at: u64,
    },
    /// Our side of `room` ended, with what became of the partner's texts
    /// here.
    End {
        room: RoomId,
        reason: DisconnectReason,
        report: EndReport,
    },
    /// Our client has acknowledged `count` of the partner's texts in
    /// `room` (sent on, batched, for the partner's counts).
    Delivered { room: RoomId, count: u64 },
}

/// Link → hub.
#[derive(Debug)]
pub(crate) enum FromLink {
    /// Connected to the realm: waiting sessions go through it.
    Up,
    /// Lost NATS: local matching takes over; remote rooms are held.
    Down,
    /// `session`'s entry waits in the realm at `position`.
    Waiting {
        session: SessionId,
        position: usize,
    },
    /// `session` is matched with a remote (or local) waiter in `room`. With
    /// `confirm`, a claimer asks: answer whether the session took it.
    /// `local`: the partner is a session of this broker too (both halves
    /// of the match arrive here, and the room is an ordinary local one).
    /// `partner` is the partner's profile; `partner_session` the partner
    /// when it is a session of this broker and known.
    Matched {
        session: SessionId,
        room: RoomId,
        local: bool,
        confirm: Option<oneshot::Sender<Answer>>,
        partner: RealmProfile,
        partner_session: Option<SessionId>,
        /// The room's queue to its publisher, for a room with a partner on
        /// another broker: the hub's texts go straight in.
        outbox: Option<Outbox>,
    },
    /// Two sessions of this broker that entered at the same moment were
    /// paired with each other (see `realm`): a local room, if both still
    /// wait.
    PairedLocally {
        first: SessionId,
        second: SessionId,
    },
    /// Text from the remote partner of `room`, checked and in order.
    Message {
        room: RoomId,
        text: String,
        sent_at: u64,
    },
    /// The remote side of `room` ended: with its report when its broker
    /// said so, without when it vanished (silence, or NATS lost).
    PartnerEnded {
        room: RoomId,
        reason: DisconnectReason,
        report: Option<EndReport>,
    },
    /// `room`'s outbox overflowed: of the texts the link was handed, only
    /// the first `queued` will be sent (see `rooms::RemoteRoom::send`;
    /// those the hub queued straight come before them); the hub ends it.
    Overflowed {
        room: RoomId,
        queued: u64,
    },
    /// `count` of our texts in `room` are stored in JetStream, all told:
    /// the hub's credit for that room (see `state::remote`).
    Published {
        room: RoomId,
        count: u64,
    },
    /// The partner's client has acknowledged `count` of our texts in
    /// `room` (untrusted: the hub keeps it within what it sent).
    Delivered {
        room: RoomId,
        count: u64,
    },
    Status(FederationStatus),
    /// The realm's key, before `Up`.
    RealmKey(blocks::RealmKey),
    /// A block of the realm (a pair key), from any broker.
    RealmBlock(String),
    /// The block asked for with this reply is written (or could not be).
    BlockSaved {
        session: SessionId,
        id: u64,
    },
    /// The realm's busiest interests.
    Busiest(Vec<InterestCount>),
}

/// The hub's answer to a claim of one of its waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// It is in the room now.
    Taken,
    /// Not taken: it is gone, or the pair does not fit (a block the claimer
    /// did not know); one still waiting enters again.
    Refused,
    /// Not taken: its client has been quiet, and is pinged first (as before
    /// a local match). It stays out of the realm until it answers
    /// ([`ToLink::Resume`]) or is dropped ([`ToLink::Withdraw`]).
    Quiet,
}

/// The hub's end of the link.
#[derive(Debug)]
pub(crate) struct LinkPort {
    pub(crate) to_link: mpsc::Sender<ToLink>,
    pub(crate) from_link: mpsc::Receiver<FromLink>,
}

/// Starts the link task; it runs until `stop` or until the hub drops its
/// port.
pub(crate) fn spawn(
    config: FederationConfig,
    limits: Limits,
    stop: CancellationToken,
) -> (LinkPort, tokio::task::JoinHandle<()>) {
    let (to_link, link_rx) = mpsc::channel(TO_LINK_CAPACITY);
    let (link_tx, from_link) = mpsc::channel(FROM_LINK_CAPACITY);
    let task = tokio::spawn(link::run(config, limits, link_rx, link_tx, stop));
    (LinkPort { to_link, from_link }, task)
}
