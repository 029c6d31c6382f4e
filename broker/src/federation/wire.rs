//! What brokers of a realm say to each other over NATS, and the subjects
//! they say it on. Everything read from NATS comes from an untrusted peer
//! (any client with access to the realm's subjects can publish): it is
//! size-checked before it is parsed, parsed into these types only, and its
//! text checked with the same rule as a local client's.
//!
//! Only the fact of waiting, what a waiter asks of its match
//! ([`RealmProfile`]: its kind, whom it meets, its interests, whether its
//! interest wait is over, and a keyed hash for blocks), public keys,
//! signatures, and room messages *sealed* for the partner broker cross the
//! wire: no client name, pid, socket path, user or host name, nor the
//! installation id, and no chat text in clear. Brokers are named by the
//! hash of a key pair made at every start (`auth`); entries, claims, their
//! answers and presences are signed by their author, and checked before
//! anything else is read of them.

use mcp_chat_proto::matching::normalize_interests;
use mcp_chat_proto::message::check_message;
use mcp_chat_proto::{DisconnectReason, Kind, MAX_MESSAGE_BYTES, Meet, RoomId};
use serde::{Deserialize, Serialize};

use super::auth::{self, Authored};
use super::blocks::RealmName;

/// Largest federation message read: a full chat message after JSON escaping
/// of its worst characters, plus the envelope (a room message's sealed
/// header and tag are 68 bytes; a signed claim's key and signature about
/// 250). Bigger ones are dropped unparsed.
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

/// A random id of 32 hex digits (waiter keys; a broker's own id is the hash
/// of its key, see `auth`).
pub fn fresh_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Broker ids and waiter keys are 32 lowercase hex digits; anything else
/// is refused before it is used in a subject or compared.
pub fn is_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// "I am alive", signed; `beat` only grows within a broker's run, so an old
/// presence replayed cannot keep a dead broker alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub broker: String,
    pub beat: u64,
}

impl Authored for Presence {
    fn author(&self) -> &str {
        &self.broker
    }
}

/// Parses and checks a signed presence.
#[cfg(test)]
pub fn parse_presence(payload: &[u8]) -> Result<Presence, Rejected> {
    match parse_presence_if(payload, |_| Ok(true))? {
        auth::Opened::Verified(p) => Ok(p),
        auth::Opened::Unwanted => Err(Rejected::Malformed),
    }
}

/// Parses a signed presence, checked only if `wanted` (asked first, as
/// every broker's presence reaches every broker, see `auth::open_signed_if`).
pub fn parse_presence_if(
    payload: &[u8],
    wanted: impl FnOnce(&Presence) -> Result<bool, Rejected>,
) -> Result<auth::Opened<Presence>, Rejected> {
    auth::open_signed_if(payload, auth::PRESENCE, MAX_ENTRY_BYTES, |p: &Presence| {
        if !is_id(&p.broker) {
            return Err(Rejected::Malformed);
        }
        wanted(p)
    })
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

/// Largest queue entry read; bigger ones are skipped unparsed. A signed
/// entry is its body's JSON as an escaped string (five interests of 32
/// characters, about 600 bytes at worst) plus a key and a signature (about
/// 220 bytes): 2048 leaves room.
pub const MAX_ENTRY_BYTES: usize = 2048;

/// The value of a waiter's entry in the realm's queue (signed by its
/// owner, see `auth`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The owning broker's id.
    pub owner: String,
    /// The entry's key in the bucket: signed, so the entry's bytes copied
    /// under another key are refused.
    pub key: String,
    pub profile: RealmProfile,
    /// The revision of the waiter's first entry, when this one is a later
    /// one (its interest wait ended, or it was renewed): it keeps its place
    /// in the realm's arrival order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival: Option<u64>,
    /// The owner's X25519 public key for this waiter (64 hex digits): a
    /// claimer agrees the room's keys with it.
    pub kx: String,
}

impl Authored for QueueEntry {
    fn author(&self) -> &str {
        &self.owner
    }
}

/// Parses and checks a signed queue entry found at `rev` under `key`; also
/// returns its X25519 key.
pub fn parse_entry(
    payload: &[u8],
    rev: u64,
    key: &str,
) -> Result<(QueueEntry, [u8; 32]), Rejected> {
    let entry: QueueEntry = auth::open_signed(payload, auth::ENTRY, MAX_ENTRY_BYTES)?;
    if entry.key != key {
        return Err(Rejected::Forged);
    }
    check_profile(&entry.profile)?;
    let kx = auth::unhex::<32>(&entry.kx).ok_or(Rejected::Malformed)?;
    // An arrival can only be an earlier revision.
    if !is_id(&entry.owner) || entry.arrival.is_some_and(|a| a > rev) {
        return Err(Rejected::Malformed);
    }
    Ok((entry, kx))
}

/// "I took your waiter `key` out of the queue; put it in `room` with me."
/// Signed by the claimer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub key: String,
    /// Derived from the claimer and `claimer_kx` (`auth::room_id_for`).
    pub room: RoomId,
    pub claimer: String,
    /// The claimer's fresh X25519 key for this claim (64 hex digits).
    pub claimer_kx: String,
    /// The entry's X25519 key, as the claimer read it: the owner agrees
    /// with its waiter's current key only.
    pub owner_kx: String,
    /// The claiming session's profile: the owner checks the pair again.
    pub profile: RealmProfile,
    /// The claiming session's waiter key, for the owner to tell which of its
    /// own sessions claimed, when the claimer is itself.
    pub claimer_key: String,
    /// The claimer's latest presence counter: older ones are refused from
    /// now on.
    pub beat: u64,
}

impl Authored for Claim {
    fn author(&self) -> &str {
        &self.claimer
    }
}

/// The largest claim: an entry's profile and a few ids and keys more (a
/// bound checked before anything is parsed).
pub const MAX_CLAIM_BYTES: usize = 2 * MAX_ENTRY_BYTES;

/// A checked claim with its two X25519 keys.
#[derive(Debug, Clone)]
pub struct ClaimKeys {
    pub claim: Claim,
    pub claimer_kx: [u8; 32],
    pub owner_kx: [u8; 32],
}

/// Parses a signed claim and checks its fields: well-formed ids and keys,
/// and a room that is the claimer's to name.
pub fn parse_claim(payload: &[u8]) -> Result<ClaimKeys, Rejected> {
    let c: Claim = auth::open_signed(payload, auth::CLAIM, MAX_CLAIM_BYTES)?;
    let keys = auth::unhex::<32>(&c.claimer_kx).zip(auth::unhex::<32>(&c.owner_kx));
    let Some((claimer_kx, owner_kx)) = keys else {
        return Err(Rejected::Malformed);
    };
    if !is_id(&c.claimer) || !is_id(&c.key) || !is_id(&c.claimer_key) {
        return Err(Rejected::Malformed);
    }
    if c.room != auth::room_id_for(&c.claimer, &claimer_kx) {
        return Err(Rejected::Forged);
    }
    check_profile(&c.profile)?;
    Ok(ClaimKeys {
        claim: c,
        claimer_kx,
        owner_kx,
    })
}

/// The owner's answer to a claim, signed by the owner, naming the claim it
/// answers (its room and the claimer's key): a claimer reads answers until
/// one verifies, so another member answering first changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimAnswer {
    pub owner: String,
    pub room: RoomId,
    pub claimer_kx: String,
    /// The waiter was still there and is now in the room.
    pub matched: bool,
    /// The owner's latest presence counter.
    pub beat: u64,
}

impl Authored for ClaimAnswer {
    fn author(&self) -> &str {
        &self.owner
    }
}

/// One message of a room, from one broker to the other, once opened. On
/// the wire (`auth`): room, sender and `seq` in a clear header, bound to
/// the rest ([`Sealed`]) by the room's key for that direction, which only
/// the two brokers have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMsg {
    pub room: RoomId,
    pub from: String,
    /// 1, 2, 3… per room and direction: the receiver delivers in this
    /// order, once each.
    pub seq: u64,
    pub delivered: u64,
    pub body: RoomBody,
}

/// The sealed part of a room message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
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

/// The JetStream message id of message `seq` of `room` from `from`, whose
/// sealed bytes are `sealed`: the same on every retry (a retry resends the
/// same bytes), so a publish repeated after a lost ack is stored once. It
/// ends with the message's AEAD tag, which only the sealer knows before the
/// message is published: a realm member who can publish to the stream
/// cannot store a message under that id first and so make the stream drop
/// ours as a duplicate (the stream keeps ids for its de-duplication window).
pub fn msg_id(from: &str, room: RoomId, seq: u64, sealed: &[u8]) -> String {
    let tag = &sealed[sealed.len().saturating_sub(auth::TAG_LEN)..];
    format!("{from}.{room}.{seq}.{}", auth::hex(tag))
}

/// Reads the sealed part of a room message opened with the room's key.
pub fn parse_sealed(
    header: &auth::Header,
    from: String,
    plain: &[u8],
) -> Result<RoomMsg, Rejected> {
    let sealed: Sealed = parse(plain)?;
    let msg = RoomMsg {
        room: header.room,
        from,
        seq: header.seq,
        delivered: sealed.delivered,
        body: sealed.body,
    };
    check_room_msg(&msg)?;
    Ok(msg)
}

/// Why an inbound message was dropped; counted and logged, never relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("oversized")]
    Oversized,
    #[error("malformed")]
    Malformed,
    #[error("not a room of this broker with that partner")]
    NotMember,
    #[error("a bad signature or seal (not from whom it names)")]
    Forged,
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
    if !is_id(&msg.from) || msg.seq == 0 {
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
    use crate::federation::auth::{Identity, Signed, fresh_kx, hex, room_id_for};

    fn msg(text: &str) -> RoomMsg {
        RoomMsg {
            room: RoomId::new_random(),
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
    fn room_message_checks() {
        assert_eq!(check_room_msg(&msg("hi")), Ok(()));
        assert_eq!(check_room_msg(&msg("  ")), Err(Rejected::BadText));
        let long = "x".repeat(MAX_MESSAGE_BYTES + 1);
        assert_eq!(check_room_msg(&msg(&long)), Err(Rejected::BadText));
        let mut bad = msg("hi");
        bad.from = "../../etc".into();
        assert_eq!(check_room_msg(&bad), Err(Rejected::Malformed));
        let mut bad = msg("hi");
        bad.seq = 0;
        assert_eq!(check_room_msg(&bad), Err(Rejected::Malformed));
        assert_eq!(
            parse::<Sealed>(&vec![b' '; MAX_WIRE_BYTES + 1]),
            Err(Rejected::Oversized)
        );
        assert_eq!(parse::<Sealed>(b"{\"body\":1}"), Err(Rejected::Malformed));
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

    /// The bucket key of the test entries.
    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn entry(owner: &Identity) -> QueueEntry {
        QueueEntry {
            owner: owner.id().to_owned(),
            key: KEY.to_owned(),
            profile: profile(),
            arrival: Some(3),
            kx: hex(&fresh_kx().unwrap().1),
        }
    }

    #[test]
    fn queue_entries_are_checked_like_client_input() {
        let owner = Identity::generate().unwrap();
        let entry = entry(&owner);
        let signed = |e: &QueueEntry| owner.sign(auth::ENTRY, e).unwrap();
        let (back, kx) = parse_entry(&signed(&entry), 5, KEY).unwrap();
        assert_eq!(back, entry);
        assert_eq!(hex(&kx), entry.kx);
        assert_eq!(
            entry.profile.name(),
            RealmName {
                who: 0xabc,
                sid: 0xdef
            }
        );
        assert_eq!(
            parse_entry(&signed(&entry), 2, KEY),
            Err(Rejected::Malformed),
            "an arrival after its own revision"
        );
        let mut bad = entry.clone();
        bad.profile.interests = vec!["Chess".into()];
        assert_eq!(parse_entry(&signed(&bad), 5, KEY), Err(Rejected::Malformed));
        let mut bad = entry.clone();
        bad.profile.interests = (0..6).map(|i| format!("t{i}")).collect();
        assert_eq!(parse_entry(&signed(&bad), 5, KEY), Err(Rejected::Malformed));
        let mut bad = entry.clone();
        bad.profile.who = "../x".into();
        assert_eq!(parse_entry(&signed(&bad), 5, KEY), Err(Rejected::Malformed));
        let mut bad = entry.clone();
        bad.kx = "00".into();
        assert_eq!(parse_entry(&signed(&bad), 5, KEY), Err(Rejected::Malformed));
        assert_eq!(
            parse_entry(&vec![b' '; MAX_ENTRY_BYTES + 1], 5, KEY),
            Err(Rejected::Oversized)
        );
        // An entry of an older broker: no signature at all.
        let unsigned = br#"{"owner":"00000000000000000000000000000000","profile":{"kind":"agent","meet":"anyone","open":true,"who":"0000000000000001","sid":"0000000000000002"}}"#;
        assert_eq!(parse_entry(unsigned, 5, KEY), Err(Rejected::Malformed));
    }

    #[test]
    fn entries_not_signed_by_their_owner_are_refused() {
        let owner = Identity::generate().unwrap();
        let other = Identity::generate().unwrap();
        let entry = entry(&owner);
        // Signed by another key, naming the owner.
        assert_eq!(
            parse_entry(&other.sign(auth::ENTRY, &entry).unwrap(), 5, KEY),
            Err(Rejected::Forged)
        );
        // Its X25519 key swapped after signing (to read the room).
        let mut s: Signed =
            serde_json::from_slice(&owner.sign(auth::ENTRY, &entry).unwrap()).unwrap();
        let theirs = hex(&fresh_kx().unwrap().1);
        s.body = s.body.replace(&entry.kx, &theirs);
        assert_eq!(
            parse_entry(&encode(&s), 5, KEY),
            Err(Rejected::Forged),
            "a swapped X25519 key"
        );
        // A wrong signature.
        let mut s: Signed =
            serde_json::from_slice(&owner.sign(auth::ENTRY, &entry).unwrap()).unwrap();
        s.sig = s.sig.chars().rev().collect();
        assert_eq!(parse_entry(&encode(&s), 5, KEY), Err(Rejected::Forged));
        // Another owner's key put in the envelope: it signs nothing here.
        let mut s: Signed =
            serde_json::from_slice(&owner.sign(auth::ENTRY, &entry).unwrap()).unwrap();
        let other_key: Signed =
            serde_json::from_slice(&other.sign(auth::ENTRY, &entry).unwrap()).unwrap();
        s.key = other_key.key;
        assert_eq!(parse_entry(&encode(&s), 5, KEY), Err(Rejected::Forged));
        // Genuine bytes copied under another key: refused.
        let genuine = owner.sign(auth::ENTRY, &entry).unwrap();
        assert!(parse_entry(&genuine, 5, KEY).is_ok());
        assert_eq!(
            parse_entry(&genuine, 5, &fresh_id()),
            Err(Rejected::Forged),
            "another key"
        );
        // The largest entry the checks allow fits the bound.
        let mut big = entry.clone();
        big.profile.interests = (0..5).map(|i| format!("{i}{}", "x".repeat(31))).collect();
        big.profile.interests.sort();
        // It fits a realm bucket made by an older broker too, whose values
        // (headers included) were limited to 2048 bytes.
        let size = owner.sign(auth::ENTRY, &big).unwrap().len();
        assert!(size + 256 <= 2048 && size < MAX_ENTRY_BYTES, "{size}");
        // So does the largest claim, and one over the bound is refused
        // unparsed.
        let mut c = claim(&owner, owner.id());
        c.profile = big.profile;
        let signed = owner.sign(auth::CLAIM, &c).unwrap();
        assert!(signed.len() < MAX_CLAIM_BYTES, "{}", signed.len());
        assert!(parse_claim(&signed).is_ok());
        assert_eq!(
            parse_claim(&vec![b' '; MAX_CLAIM_BYTES + 1]).err(),
            Some(Rejected::Oversized)
        );
    }

    fn claim(by: &Identity, claimer: &str) -> Claim {
        let kx = fresh_kx().unwrap().1;
        Claim {
            key: fresh_id(),
            room: room_id_for(claimer, &kx),
            claimer: claimer.to_owned(),
            claimer_kx: hex(&kx),
            owner_kx: hex(&fresh_kx().unwrap().1),
            profile: profile(),
            claimer_key: fresh_id(),
            beat: by.beats(),
        }
    }

    #[test]
    fn claims_are_made_only_by_their_claimer_for_its_own_rooms() {
        let claimer = Identity::generate().unwrap();
        let third = Identity::generate().unwrap();
        let good = claim(&claimer, claimer.id());
        let parsed = parse_claim(&claimer.sign(auth::CLAIM, &good).unwrap()).unwrap();
        assert_eq!(parsed.claim, good);
        assert_eq!(hex(&parsed.claimer_kx), good.claimer_kx);
        // Naming another broker (the victim) as claimer, signed by a third.
        let victim = Identity::generate().unwrap();
        let forged = claim(&third, victim.id());
        assert_eq!(
            parse_claim(&third.sign(auth::CLAIM, &forged).unwrap()).map(|c| c.claim),
            Err(Rejected::Forged)
        );
        // Its own claim, but a room id it did not derive (one copied from
        // another claim, say).
        let mut stolen = claim(&third, third.id());
        stolen.room = good.room;
        assert_eq!(
            parse_claim(&third.sign(auth::CLAIM, &stolen).unwrap()).map(|c| c.claim),
            Err(Rejected::Forged)
        );
        let mut bad = claim(&claimer, claimer.id());
        bad.claimer_key = "*".into();
        assert_eq!(
            parse_claim(&claimer.sign(auth::CLAIM, &bad).unwrap()).map(|c| c.claim),
            Err(Rejected::Malformed)
        );
        assert_eq!(
            parse_claim(b"junk").map(|c| c.claim),
            Err(Rejected::Malformed)
        );
    }

    #[test]
    fn counts_are_optional_in_a_sealed_body() {
        // Without `delivered` or a report: read as nothing confirmed,
        // nothing reported.
        let back: Sealed = parse(br#"{"body":{"kind":"end","reason":"left"}}"#).unwrap();
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
    }

    #[test]
    fn ids_are_lowercase_hex_of_32() {
        assert!(is_id(&fresh_id()));
        assert!(!is_id("ABCDEF0123456789ABCDEF0123456789"));
        assert!(!is_id("*"));
    }
}
