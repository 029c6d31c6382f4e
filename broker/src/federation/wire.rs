//! What brokers of a realm say to each other over NATS, and the subjects
//! they say it on. Everything read from NATS comes from an untrusted peer
//! (any client with access to the realm's subjects can publish): it is
//! size-checked before it is parsed, parsed into these types only, and its
//! text checked with the same rule as a local client's.
//!
//! Only the message text, the fact of waiting and what a waiter asks of its
//! match ([`RealmProfile`]: its kind, whom it meets, its interests, whether
//! its interest wait is over, and a keyed hash for blocks) cross the wire:
//! no client name, pid, socket path, user or host name, nor the installation
//! id. Brokers are named by a random id that changes with every start.

use mcp_chat_proto::matching::normalize_interests;
use mcp_chat_proto::message::check_message;
use mcp_chat_proto::{DisconnectReason, Kind, MAX_MESSAGE_BYTES, Meet, RoomId};
use serde::{Deserialize, Serialize};

use super::blocks::RealmName;

/// Largest federation message read: a full chat message after JSON escaping
/// of its worst characters, plus the envelope. Bigger ones are dropped
/// unparsed.
pub const MAX_WIRE_BYTES: usize = MAX_MESSAGE_BYTES * 6 + 1024;

/// Subjects, stream and bucket names of one realm.
#[derive(Debug, Clone)]
pub struct Names {
    pub realm: String,
}

impl Names {
    pub fn presence(&self) -> String {
        format!("mcpchat.{}.presence", self.realm)
    }

    /// Claims of waiters owned by `broker` (request/reply).
    pub fn claim(&self, broker: &str) -> String {
        format!("mcpchat.{}.claim.{broker}", self.realm)
    }

    /// Room messages for `broker` (JetStream).
    pub fn room(&self, broker: &str) -> String {
        format!("mcpchat.{}.room.{broker}", self.realm)
    }

    pub fn rooms_wildcard(&self) -> String {
        format!("mcpchat.{}.room.*", self.realm)
    }

    pub fn stream(&self) -> String {
        format!("MCPCHAT_ROOMS_{}", self.realm)
    }

    pub fn bucket(&self) -> String {
        format!("mcpchat_queue_{}", self.realm)
    }

    /// The realm key and the blocks (see `blocks`).
    pub fn blocks_bucket(&self) -> String {
        format!("mcpchat_blocks_{}", self.realm)
    }
}

/// A broker's random id: 32 hex digits, new on every start.
pub fn fresh_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Broker ids and room secrets are 32 lowercase hex digits; anything else
/// is refused before it is used in a subject or compared.
pub fn is_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub broker: String,
}

/// What a waiter asks of its match, as the realm sees it: what the matching
/// rule (`state::rule`) needs, and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealmProfile {
    pub kind: Kind,
    pub meet: Meet,
    /// Normalised, no repeats, at most five (the tag rule of `enter_queue`).
    #[serde(default)]
    pub interests: Vec<String>,
    /// Its interest wait is over (or it named no interests). Fixed for the
    /// life of an entry: when the wait ends, the owner withdraws the entry
    /// and enters the waiter again, open (see `realm`). So no broker ever
    /// reads another's clock.
    pub open: bool,
    /// Keyed hash for blocks (see `blocks`), 16 lowercase hex digits.
    pub who: String,
    /// The session's own random name for blocks, likewise.
    pub sid: String,
}

impl RealmProfile {
    pub fn name(&self) -> RealmName {
        let hex = |s: &str| u64::from_str_radix(s, 16).unwrap_or_default();
        RealmName {
            who: hex(&self.who),
            sid: hex(&self.sid),
        }
    }
}

/// Formats a `who` for [`RealmProfile::who`].
pub fn who_hex(who: u64) -> String {
    format!("{who:016x}")
}

/// Checks what parsing cannot: a kind and a `meet` this broker knows,
/// interests that are already normalised, and a well-formed `who`.
pub fn check_profile(p: &RealmProfile) -> Result<(), Rejected> {
    let hex16 = |s: &str| {
        s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let who_ok = hex16(&p.who) && hex16(&p.sid);
    let tags_ok = normalize_interests(&p.interests).is_ok_and(|tags| tags == p.interests);
    if p.kind == Kind::Unknown || p.meet == Meet::Unknown || !who_ok || !tags_ok {
        return Err(Rejected::Malformed);
    }
    Ok(())
}

/// Largest queue entry read; bigger ones are skipped unparsed.
pub const MAX_ENTRY_BYTES: usize = 1024;

/// The value of a waiter's entry in the realm's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The owning broker's id.
    pub owner: String,
    pub profile: RealmProfile,
    /// The revision of the waiter's first entry, when this one is a later
    /// one (its interest wait ended, or it was renewed): it keeps its place
    /// in the realm's arrival order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival: Option<u64>,
}

/// Parses and checks a queue entry found at `rev`.
pub fn parse_entry(payload: &[u8], rev: u64) -> Result<QueueEntry, Rejected> {
    if payload.len() > MAX_ENTRY_BYTES {
        return Err(Rejected::Oversized);
    }
    let entry: QueueEntry = parse(payload)?;
    check_profile(&entry.profile)?;
    // An arrival can only be an earlier revision.
    if !is_id(&entry.owner) || entry.arrival.is_some_and(|a| a > rev) {
        return Err(Rejected::Malformed);
    }
    Ok(entry)
}

/// "I took your waiter `key` out of the queue; put it in `room` with me."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub key: String,
    pub room: RoomId,
    pub claimer: String,
    pub secret: String,
    /// The claiming session's profile: the owner checks the pair again.
    pub profile: RealmProfile,
    /// The claiming session's waiter key, for the owner to tell which of its
    /// own sessions claimed, when the claimer is itself.
    pub claimer_key: String,
}

/// Checks a parsed claim's fields.
pub fn check_claim(c: &Claim) -> Result<(), Rejected> {
    if !is_id(&c.claimer) || !is_id(&c.secret) || !is_id(&c.claimer_key) {
        return Err(Rejected::Malformed);
    }
    check_profile(&c.profile)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimAnswer {
    /// The waiter was still there and is now in the room.
    pub matched: bool,
}

/// One message of a room, from one broker to the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMsg {
    pub room: RoomId,
    /// The room's random secret, chosen by the claimer: a client that
    /// merely guesses a room id cannot inject into it. It is not private to
    /// the two brokers: it travels in clear in the claim and in every room
    /// message, so any realm member that can read the realm's subjects
    /// learns it and can inject into the room. Brokers do not authenticate
    /// each other (a known open gap); a realm is as private as its NATS
    /// account.
    pub secret: String,
    pub from: String,
    /// 1, 2, 3… per room and direction: the receiver delivers in this
    /// order, once each.
    pub seq: u64,
    /// How many of the *receiver's* texts in this room the sender's client
    /// has acknowledged so far (piggybacked on every message, or sent alone
    /// as [`RoomBody::Progress`]). Untrusted: the receiver keeps the
    /// highest, never above what it sent.
    #[serde(default)]
    pub delivered: u64,
    pub body: RoomBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RoomBody {
    Text {
        text: String,
        /// Milliseconds since the Unix epoch, when the sender's broker took it.
        sent_at: u64,
    },
    /// Only `delivered` moved on: the client acknowledged more while its
    /// side had nothing to say.
    Progress,
    /// The sender's session left the room (or is gone), with what became
    /// of the receiver's texts on the sender's side: `None` when there was
    /// nothing to report.
    End {
        reason: DisconnectReason,
        #[serde(default)]
        report: Option<EndReport>,
    },
}

/// What became of one direction's texts when the room ended on the side
/// that received them. Untrusted: the other side clamps it to what it sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndReport {
    /// Texts taken in for the client, all told.
    pub received: u64,
    /// Of those, never written to the client.
    pub undelivered: u64,
    /// Of those, written to the client but never acknowledged.
    pub unconfirmed: u64,
}

impl RoomMsg {
    /// The JetStream message id: the same on every retry, so a publish
    /// repeated after a lost ack is stored once.
    pub fn msg_id(&self) -> String {
        format!("{}.{}.{}", self.from, self.room, self.seq)
    }
}

/// Why an inbound message was dropped; counted and logged, never relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("oversized")]
    Oversized,
    #[error("malformed")]
    Malformed,
    #[error("not a room of this broker with that partner and secret")]
    NotMember,
    #[error("a sequence number already delivered (replay)")]
    Replayed,
    #[error("text the broker would refuse from a local client")]
    BadText,
    #[error("over the room's message or byte rate")]
    TooFast,
    #[error("too far ahead of the room's sequence")]
    TooFarAhead,
}

/// Parses an untrusted payload as `T`, size first.
pub fn parse<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, Rejected> {
    if payload.len() > MAX_WIRE_BYTES {
        return Err(Rejected::Oversized);
    }
    serde_json::from_slice(payload).map_err(|_| Rejected::Malformed)
}

/// Checks what `parse` cannot: ids are ids, text is text a local client
/// could have sent, and a reason is one this broker knows.
pub fn check_room_msg(msg: &RoomMsg) -> Result<(), Rejected> {
    if !is_id(&msg.from) || !is_id(&msg.secret) || msg.seq == 0 {
        return Err(Rejected::Malformed);
    }
    match &msg.body {
        RoomBody::Text { text, .. } => check_message(text).map_err(|_| Rejected::BadText),
        RoomBody::Progress => Ok(()),
        RoomBody::End { reason, .. } => match reason {
            DisconnectReason::Unknown => Err(Rejected::Malformed),
            _ => Ok(()),
        },
    }
}

pub fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> RoomMsg {
        RoomMsg {
            room: RoomId::new_random(),
            secret: fresh_id(),
            from: fresh_id(),
            seq: 1,
            delivered: 0,
            body: RoomBody::Text {
                text: text.into(),
                sent_at: 0,
            },
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let m = msg("hi");
        let back: RoomMsg = parse(&encode(&m)).unwrap();
        assert_eq!(back, m);
        assert_eq!(check_room_msg(&back), Ok(()));
        assert_eq!(check_room_msg(&msg("  ")), Err(Rejected::BadText));
        let long = "x".repeat(MAX_MESSAGE_BYTES + 1);
        assert_eq!(check_room_msg(&msg(&long)), Err(Rejected::BadText));
        let mut bad = msg("hi");
        bad.from = "../../etc".into();
        assert_eq!(check_room_msg(&bad), Err(Rejected::Malformed));
        assert_eq!(
            parse::<RoomMsg>(&vec![b' '; MAX_WIRE_BYTES + 1]),
            Err(Rejected::Oversized)
        );
        assert_eq!(parse::<RoomMsg>(b"{\"room\":1}"), Err(Rejected::Malformed));
    }

    fn profile() -> RealmProfile {
        RealmProfile {
            kind: Kind::Person,
            meet: Meet::Agents,
            interests: vec!["chess".into(), "go".into()],
            open: false,
            who: who_hex(0xabc),
            sid: who_hex(0xdef),
        }
    }

    #[test]
    fn queue_entries_are_checked_like_client_input() {
        let entry = QueueEntry {
            owner: fresh_id(),
            profile: profile(),
            arrival: Some(3),
        };
        assert_eq!(parse_entry(&encode(&entry), 5), Ok(entry.clone()));
        assert_eq!(
            entry.profile.name(),
            RealmName {
                who: 0xabc,
                sid: 0xdef
            }
        );
        assert_eq!(
            parse_entry(&encode(&entry), 2),
            Err(Rejected::Malformed),
            "an arrival after its own revision"
        );
        let mut bad = entry.clone();
        bad.profile.interests = vec!["Chess".into()];
        assert_eq!(parse_entry(&encode(&bad), 5), Err(Rejected::Malformed));
        let mut bad = entry.clone();
        bad.profile.interests = (0..6).map(|i| format!("t{i}")).collect();
        assert_eq!(parse_entry(&encode(&bad), 5), Err(Rejected::Malformed));
        let mut bad = entry.clone();
        bad.profile.who = "../x".into();
        assert_eq!(parse_entry(&encode(&bad), 5), Err(Rejected::Malformed));
        let unknown = br#"{"owner":"00000000000000000000000000000000","profile":{"kind":"robot","meet":"anyone","open":true,"who":"0000000000000001","sid":"0000000000000002"}}"#;
        assert_eq!(parse_entry(unknown, 5), Err(Rejected::Malformed));
        assert_eq!(
            parse_entry(&vec![b' '; MAX_ENTRY_BYTES + 1], 5),
            Err(Rejected::Oversized)
        );
    }

    #[test]
    fn counts_are_optional_on_the_wire() {
        // Without `delivered` or a report (a broker from before the
        // counts): read as nothing confirmed, nothing reported.
        let mut m = serde_json::to_value(msg("hi")).unwrap();
        m.as_object_mut().unwrap().remove("delivered");
        m["body"] = serde_json::json!({"kind": "end", "reason": "left"});
        let back: RoomMsg = parse(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(back.delivered, 0);
        assert_eq!(
            back.body,
            RoomBody::End {
                reason: DisconnectReason::Left,
                report: None
            }
        );
        let mut progress = msg("hi");
        progress.body = RoomBody::Progress;
        progress.delivered = 7;
        assert_eq!(check_room_msg(&progress), Ok(()));
        assert_eq!(parse::<RoomMsg>(&encode(&progress)), Ok(progress));
    }

    #[test]
    fn ids_are_lowercase_hex_of_32() {
        assert!(is_id(&fresh_id()));
        assert!(!is_id("ABCDEF0123456789ABCDEF0123456789"));
        assert!(!is_id("*"));
    }
}
