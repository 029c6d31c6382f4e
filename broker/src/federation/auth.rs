//! Who says what between brokers, and the keys of their rooms.
//!
//! Any member of a realm can read and publish on its subjects, so nothing a
//! broker reads from NATS is believed for where it seems to come from:
//!
//! - **Identity**: every broker makes an Ed25519 key pair when it starts.
//!   Its broker id is the first 32 hex digits of SHA-256 of the public key
//!   ([`id_of`]), so an id names one key and nobody else can speak for it.
//! - **Signed messages** ([`Signed`]): what names a broker as its author (a
//!   queue entry, a claim, a claim's answer, a presence) travels as the JSON
//!   of its body *as a string*, with the author's public key and a signature
//!   over a per-kind context and exactly those bytes. The receiver checks
//!   size, signature, and that the key hashes to the author named inside
//!   the body, and only then parses the body: what is checked is byte for
//!   byte what is used.
//!
//!   Signatures do not name the realm, and need not: a copy carried into
//!   another realm can do nothing there that a member of that realm cannot
//!   do with its own key. A broker is in one realm, so a copied entry
//!   names an owner that never hears a claim there: the claim deletes it
//!   and gets no responders, as one to a dead broker's entry does; claims,
//!   answers and presences are acted on only from the brokers a broker is
//!   matching or chatting with, which are in its own realm.
//! - **Room keys** ([`RoomKeys`]): an entry carries its owner's X25519
//!   public key for that waiter, a claim the claimer's fresh one for that
//!   claim. Both sides compute X25519 and derive with HKDF-SHA256 (salt and
//!   info binding the room, both broker ids and both X25519 keys) one
//!   ChaCha20-Poly1305 key per direction. Nobody else (not a member reading
//!   every subject, not the NATS server) learns them.
//! - **Room ids** are derived from the claimer's id and fresh key
//!   ([`room_id_for`]), so no one can name a room another broker is about
//!   to open.
//! - **Sealed room messages** ([`Sealer`], [`Opener`]): everything but what
//!   routing and de-duplication need (room, sender, `seq`) is sealed; the
//!   header is the AEAD's associated data, with the direction. The nonce is
//!   a counter per room and direction, never reused: a message is sealed
//!   once, and a publish retry resends the stored bytes (`rooms`).
//!
//! Cost: a signature per entry, claim, answer and presence (tens of
//! microseconds each, a few per match and one a second); none per chat
//! message, which is sealed and opened with a symmetric key (a couple of
//! microseconds for a short text).

use std::sync::atomic::{AtomicU64, Ordering};

use mcp_chat_proto::RoomId;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use ring::{digest, hkdf};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use super::wire::Rejected;

/// Contexts of signed bodies: a signature for one kind never passes as
/// another.
pub const ENTRY: &str = "mcp-chat/entry/1";
pub const CLAIM: &str = "mcp-chat/claim/1";
pub const ANSWER: &str = "mcp-chat/answer/1";
pub const PRESENCE: &str = "mcp-chat/presence/1";

/// The id a public key speaks for: 32 lowercase hex digits, like every
/// broker id before (so subjects and checks are unchanged).
pub fn id_of(public_key: &[u8]) -> String {
    let hash = digest::digest(&digest::SHA256, public_key);
    hex(&hash.as_ref()[..16])
}

/// This broker's identity for one run.
pub struct Identity {
    pair: Ed25519KeyPair,
    key: String,
    id: String,
    /// Presences sent so far: each carries the next, so an old one
    /// replayed is refused.
    beats: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("no randomness for the broker's identity")]
pub struct NoRandomness;

#[derive(Debug, thiserror::Error)]
#[error("cannot encode a body to sign: {0}")]
pub struct SignError(#[from] serde_json::Error);

impl Identity {
    pub fn generate() -> Result<Self, NoRandomness> {
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| NoRandomness)?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| NoRandomness)?;
        let public = pair.public_key().as_ref();
        Ok(Self {
            key: hex(public),
            id: id_of(public),
            pair,
            beats: AtomicU64::new(0),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Signs `body` (as its JSON) for `context`. The bodies are plain
    /// structs, which serde cannot fail to encode; were one to fail, the
    /// caller is told and sends nothing, rather than a signed empty body.
    pub fn sign<T: Serialize>(&self, context: &str, body: &T) -> Result<bytes::Bytes, SignError> {
        let body = serde_json::to_string(body)?;
        let sig = self.pair.sign(&signed_bytes(context, &body));
        Ok(super::wire::encode(&Signed {
            body,
            key: self.key.clone(),
            sig: hex(sig.as_ref()),
        }))
    }

    /// The next presence counter.
    pub fn next_beat(&self) -> u64 {
        self.beats.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The last presence counter sent (a partner starts from it: older
    /// presences replayed later are refused).
    pub fn beats(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }
}

/// A body and its author's signature (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Signed {
    /// The body's JSON, exactly as signed.
    pub body: String,
    /// The author's Ed25519 public key, 64 hex digits.
    pub key: String,
    /// 128 hex digits.
    pub sig: String,
}

/// A signed body names its author.
pub trait Authored {
    fn author(&self) -> &str;
}

fn signed_bytes(context: &str, body: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(context.len() + 1 + body.len());
    bytes.extend_from_slice(context.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// Checks and parses a signed `T` of `context` from at most `max` bytes:
/// size, envelope, body, that the key is its author's (a hash), and only
/// then the signature, the costly check: junk and bodies signed by a key
/// not their author's cost a parse, not a verification.
pub fn open_signed<T: DeserializeOwned + Authored>(
    payload: &[u8],
    context: &str,
    max: usize,
) -> Result<T, Rejected> {
    match open_signed_if(payload, context, max, |_| Ok(true))? {
        Opened::Verified(body) => Ok(body),
        Opened::Unwanted => Err(Rejected::Malformed),
    }
}

/// What [`open_signed_if`] made of a payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<T> {
    /// Wanted, and its signature checks out.
    Verified(T),
    /// Well formed but not wanted: dropped before its signature is checked.
    Unwanted,
}

/// [`open_signed`], with `wanted` asked about the (not yet verified) body
/// before the signature is checked: false drops it unverified, an error
/// refuses it.
pub fn open_signed_if<T: DeserializeOwned + Authored>(
    payload: &[u8],
    context: &str,
    max: usize,
    wanted: impl FnOnce(&T) -> Result<bool, Rejected>,
) -> Result<Opened<T>, Rejected> {
    if payload.len() > max {
        return Err(Rejected::Oversized);
    }
    let signed: Signed = serde_json::from_slice(payload).map_err(|_| Rejected::Malformed)?;
    let key = unhex::<32>(&signed.key).ok_or(Rejected::Malformed)?;
    let sig = unhex::<64>(&signed.sig).ok_or(Rejected::Malformed)?;
    let body: T = serde_json::from_str(&signed.body).map_err(|_| Rejected::Malformed)?;
    if body.author() != id_of(&key) {
        return Err(Rejected::Forged);
    }
    if !wanted(&body)? {
        return Ok(Opened::Unwanted);
    }
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&signed_bytes(context, &signed.body), &sig)
        .map_err(|_| Rejected::Forged)?;
    Ok(Opened::Verified(body))
}

/// A fresh X25519 secret: 32 random bytes, cheap. Its public key (a scalar
/// multiplication, tens of microseconds) is worked out only where it is
/// needed ([`kx_public`]): a waiter gets a secret when it enters, but most
/// waiters of a burst are paired without ever making an entry.
pub fn fresh_secret() -> Result<StaticSecret, NoRandomness> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| NoRandomness)?;
    Ok(StaticSecret::from(bytes))
}

pub fn kx_public(secret: &StaticSecret) -> [u8; 32] {
    PublicKey::from(secret).to_bytes()
}

/// A fresh X25519 key pair: the secret kept, the public key for the wire.
pub fn fresh_kx() -> Result<(StaticSecret, [u8; 32]), NoRandomness> {
    let secret = fresh_secret()?;
    let public = kx_public(&secret);
    Ok((secret, public))
}

/// The room a claimer with `claimer` id and fresh key `claimer_kx` opens:
/// bound to both, so a claim naming another broker's room cannot verify.
pub fn room_id_for(claimer: &str, claimer_kx: &[u8; 32]) -> RoomId {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"mcp-chat/room-id/1\0");
    ctx.update(claimer.as_bytes());
    ctx.update(claimer_kx);
    let hash = ctx.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_ref()[..16]);
    // Still a well-formed (version 4) UUID, as every room id is.
    RoomId(uuid::Builder::from_random_bytes(bytes).into_uuid())
}

/// Which side of a room a broker is on: part of every room message's
/// associated data, and of the key it is sealed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The broker whose waiter was claimed.
    Owner,
    Claimer,
}

impl Side {
    fn other(self) -> Self {
        match self {
            Self::Owner => Self::Claimer,
            Self::Claimer => Self::Owner,
        }
    }

    fn byte(self) -> u8 {
        match self {
            Self::Owner => 1,
            Self::Claimer => 2,
        }
    }
}

/// What both brokers of a room agree on: who is who, and both X25519 keys.
#[derive(Debug, Clone, Copy)]
pub struct Pairing<'a> {
    pub room: RoomId,
    pub owner: &'a str,
    pub claimer: &'a str,
    pub owner_kx: &'a [u8; 32],
    pub claimer_kx: &'a [u8; 32],
}

/// The two keys of one room, as one side holds them.
pub struct RoomKeys {
    pub sealer: Sealer,
    pub opener: Opener,
}

/// Keys never go to the log.
macro_rules! opaque_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), "(..)"))
            }
        }
    )*};
}

opaque_debug!(RoomKeys, Sealer, Opener);

/// Derives the room's keys on `side`, with our `secret` and the other
/// side's public key (in `pairing`). None: the other key is a low-order
/// point (the shared secret would be known to everyone).
pub fn room_keys(secret: &StaticSecret, side: Side, pairing: Pairing<'_>) -> Option<RoomKeys> {
    let theirs = match side {
        Side::Owner => pairing.claimer_kx,
        Side::Claimer => pairing.owner_kx,
    };
    let shared = secret.diffie_hellman(&PublicKey::from(*theirs));
    if !shared.was_contributory() {
        return None;
    }
    let prk =
        hkdf::Salt::new(hkdf::HKDF_SHA256, b"mcp-chat/room-keys/1").extract(shared.as_bytes());
    let room = pairing.room.0.as_bytes();
    let key_for = |from: Side| -> Option<LessSafeKey> {
        let info: [&[u8]; 6] = [
            &[from.byte()],
            room,
            pairing.owner.as_bytes(),
            pairing.claimer.as_bytes(),
            pairing.owner_kx,
            pairing.claimer_kx,
        ];
        let okm = prk.expand(&info, &CHACHA20_POLY1305).ok()?;
        Some(LessSafeKey::new(UnboundKey::from(okm)))
    };
    Some(RoomKeys {
        sealer: Sealer {
            key: key_for(side)?,
            side,
            nonces: 0,
        },
        opener: Opener {
            key: key_for(side.other())?,
            side: side.other(),
        },
    })
}

/// Room message layout: a fixed header (also the associated data, with
/// the direction), then the sealed body and its tag.
const MAGIC: &[u8; 4] = b"MCR1";
/// Magic, room (16), sender id (16), seq (8), nonce counter (8).
pub const HEADER_LEN: usize = 4 + 16 + 16 + 8 + 8;
pub const TAG_LEN: usize = 16;

/// What routing and de-duplication read of a room message, unsealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub room: RoomId,
    pub from: [u8; 16],
    pub seq: u64,
    nonce: u64,
}

impl Header {
    /// Reads the header of a room message (size checked by the caller).
    pub fn read(payload: &[u8]) -> Result<Self, Rejected> {
        if payload.len() < HEADER_LEN + TAG_LEN || &payload[..4] != MAGIC {
            return Err(Rejected::Malformed);
        }
        let field = |at: usize| -> [u8; 8] {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[at..at + 8]);
            b
        };
        let mut room = [0u8; 16];
        room.copy_from_slice(&payload[4..20]);
        let mut from = [0u8; 16];
        from.copy_from_slice(&payload[20..36]);
        Ok(Self {
            room: RoomId(uuid::Uuid::from_bytes(room)),
            from,
            seq: u64::from_be_bytes(field(36)),
            nonce: u64::from_be_bytes(field(44)),
        })
    }

    pub fn sender(&self) -> String {
        hex(&self.from)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(self.room.0.as_bytes());
        out.extend_from_slice(&self.from);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.nonce.to_be_bytes());
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aad(header: &[u8], side: Side) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 1);
    aad.extend_from_slice(header);
    aad.push(side.byte());
    aad
}

/// Seals one direction of a room. Owned by that room's publisher: the
/// nonce counter goes up on every seal, so no nonce is used twice with
/// this key.
pub struct Sealer {
    key: LessSafeKey,
    side: Side,
    nonces: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("a room's nonces are used up")]
pub struct SealError;

impl Sealer {
    /// The message `seq` of `room` from `from` (our id), with `plain`
    /// sealed in it.
    pub fn seal(
        &mut self,
        room: RoomId,
        from: &str,
        seq: u64,
        plain: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let from = unhex::<16>(from).ok_or(SealError)?;
        self.nonces = self.nonces.checked_add(1).ok_or(SealError)?;
        let header = Header {
            room,
            from,
            seq,
            nonce: self.nonces,
        };
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        header.write(&mut out);
        let aad = aad(&out, self.side);
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(nonce(header.nonce), Aad::from(&aad), &mut sealed)
            .map_err(|_| SealError)?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }
}

/// Opens the other direction of a room.
pub struct Opener {
    key: LessSafeKey,
    side: Side,
}

impl Opener {
    /// The plain body of `payload`, if it was sealed with the partner's key
    /// for exactly this header; `Forged` otherwise.
    pub fn open(&self, payload: &[u8]) -> Result<Vec<u8>, Rejected> {
        let header = Header::read(payload)?;
        let aad = aad(&payload[..HEADER_LEN], self.side);
        let mut body = payload[HEADER_LEN..].to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce(header.nonce), Aad::from(&aad), &mut body)
            .map_err(|_| Rejected::Forged)?
            .len();
        body.truncate(plain_len);
        Ok(body)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Lowercase hex of exactly `N` bytes.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let s = s.as_bytes();
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// Both sides' keys of a fresh room between `owner` and `claimer` (the
/// owner's first), and its id: for tests.
#[cfg(test)]
pub(crate) fn keys_of_a_room(owner: &str, claimer: &str) -> (RoomKeys, RoomKeys, RoomId) {
    let (owner_secret, owner_kx) = fresh_kx().unwrap();
    let (claimer_secret, claimer_kx) = fresh_kx().unwrap();
    let room = room_id_for(claimer, &claimer_kx);
    let pairing = Pairing {
        room,
        owner,
        claimer,
        owner_kx: &owner_kx,
        claimer_kx: &claimer_kx,
    };
    let o = room_keys(&owner_secret, Side::Owner, pairing).unwrap();
    let c = room_keys(&claimer_secret, Side::Claimer, pairing).unwrap();
    (o, c, room)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body naming a broker whose id is not its key's hash is refused
    /// before anything else is asked of it, the signature last of all.
    #[test]
    fn the_key_is_checked_against_the_author_before_anything_costly() {
        let owner = Identity::generate().unwrap();
        let other = Identity::generate().unwrap();
        let p = super::super::wire::Presence {
            broker: owner.id().to_owned(),
            beat: 1,
        };
        let mut asked = 0;
        let mut s: Signed = serde_json::from_slice(&owner.sign(PRESENCE, &p).unwrap()).unwrap();
        let theirs: Signed = serde_json::from_slice(&other.sign(PRESENCE, &p).unwrap()).unwrap();
        s.key = theirs.key;
        let opened = open_signed_if(
            &super::super::wire::encode(&s),
            PRESENCE,
            4096,
            |_: &super::super::wire::Presence| {
                asked += 1;
                Ok(true)
            },
        );
        assert_eq!(opened, Err(Rejected::Forged));
        assert_eq!(asked, 0, "refused by the key's hash, not asked about");
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Note {
        author: String,
        text: String,
    }

    impl Authored for Note {
        fn author(&self) -> &str {
            &self.author
        }
    }

    fn note(by: &Identity, text: &str) -> Note {
        Note {
            author: by.id().to_owned(),
            text: text.into(),
        }
    }

    #[test]
    fn ids_are_hashes_of_keys_and_signatures_bind_author_and_kind() {
        let me = Identity::generate().unwrap();
        let other = Identity::generate().unwrap();
        assert!(super::super::wire::is_id(me.id()));
        assert_ne!(me.id(), other.id());
        let signed = me.sign(CLAIM, &note(&me, "hi")).unwrap();
        assert_eq!(
            open_signed::<Note>(&signed, CLAIM, 4096),
            Ok(note(&me, "hi"))
        );
        assert_eq!(
            open_signed::<Note>(&signed, ENTRY, 4096),
            Err(Rejected::Forged),
            "another kind"
        );
        assert_eq!(
            open_signed::<Note>(&signed, CLAIM, 10),
            Err(Rejected::Oversized)
        );
        // Signed by `other`, naming `me`: the key is not the author's.
        let impostor = other.sign(CLAIM, &note(&me, "hi")).unwrap();
        assert_eq!(
            open_signed::<Note>(&impostor, CLAIM, 4096),
            Err(Rejected::Forged)
        );
        // A body changed after signing.
        let mut s: Signed = serde_json::from_slice(&signed).unwrap();
        s.body = s.body.replace("hi", "ho");
        let changed = serde_json::to_vec(&s).unwrap();
        assert_eq!(
            open_signed::<Note>(&changed, CLAIM, 4096),
            Err(Rejected::Forged)
        );
        // Another key put in: its signature does not verify.
        let mut s: Signed = serde_json::from_slice(&signed).unwrap();
        s.key = other.key.clone();
        let swapped = serde_json::to_vec(&s).unwrap();
        assert_eq!(
            open_signed::<Note>(&swapped, CLAIM, 4096),
            Err(Rejected::Forged)
        );
        assert_eq!(
            open_signed::<Note>(b"{}", CLAIM, 4096),
            Err(Rejected::Malformed)
        );
    }

    fn pair_of_rooms() -> (RoomKeys, RoomKeys, RoomId) {
        keys_of_a_room(&"0".repeat(32), &"1".repeat(32))
    }

    /// Each direction has its own key, and the keys depend on every part
    /// of the pairing. The same header and text sealed from both sides use
    /// the same nonce (both counters start at 1): with one key for both,
    /// the ciphertexts (the tag aside) would be equal.
    #[test]
    fn each_direction_and_pairing_has_its_own_key() {
        let (owner_secret, owner_kx) = fresh_kx().unwrap();
        let (claimer_secret, claimer_kx) = fresh_kx().unwrap();
        let (owner, claimer) = ("0".repeat(32), "1".repeat(32));
        let room = room_id_for(&claimer, &claimer_kx);
        let pairing = Pairing {
            room,
            owner: &owner,
            claimer: &claimer,
            owner_kx: &owner_kx,
            claimer_kx: &claimer_kx,
        };
        let mut o = room_keys(&owner_secret, Side::Owner, pairing).unwrap();
        let mut c = room_keys(&claimer_secret, Side::Claimer, pairing).unwrap();
        let from = "2".repeat(32);
        let a = o.sealer.seal(room, &from, 1, b"same text").unwrap();
        let b = c.sealer.seal(room, &from, 1, b"same text").unwrap();
        assert_eq!(a[..HEADER_LEN], b[..HEADER_LEN], "same header, same nonce");
        let body = |m: &[u8]| m[HEADER_LEN..m.len() - TAG_LEN].to_vec();
        assert_ne!(body(&a), body(&b), "one key per direction");
        assert_eq!(c.opener.open(&a).unwrap(), b"same text");
        // The claimer's keys for a pairing that differs in one part: the
        // owner's message does not open.
        let other_id = "3".repeat(32);
        let other_room = RoomId::new_random();
        for changed in [
            Pairing {
                owner: &other_id,
                ..pairing
            },
            Pairing {
                claimer: &other_id,
                ..pairing
            },
            Pairing {
                room: other_room,
                ..pairing
            },
        ] {
            let c = room_keys(&claimer_secret, Side::Claimer, changed).unwrap();
            assert_eq!(c.opener.open(&a), Err(Rejected::Forged));
        }
    }

    #[test]
    fn sealed_messages_open_only_as_sent() {
        let (mut owner, mut claimer, room) = pair_of_rooms();
        let from = "0".repeat(32);
        let sealed = owner.sealer.seal(room, &from, 1, b"secret text").unwrap();
        assert!(
            !sealed
                .windows(b"secret".len())
                .any(|w| w == b"secret".as_slice()),
            "no text in clear"
        );
        assert_eq!(claimer.opener.open(&sealed).unwrap(), b"secret text");
        assert_eq!(
            owner.opener.open(&sealed),
            Err(Rejected::Forged),
            "the other direction's key"
        );
        // Any one byte flipped, header or body.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(claimer.opener.open(&bad).is_err(), "byte {i}");
        }
        // Other room, other seq, other sender: the header is the AAD.
        let mut other_room = sealed.clone();
        other_room[4..20].copy_from_slice(RoomId::new_random().0.as_bytes());
        let mut other_seq = sealed.clone();
        other_seq[36..44].copy_from_slice(&2u64.to_be_bytes());
        let mut other_sender = sealed.clone();
        other_sender[20..36].copy_from_slice(&[0x11; 16]);
        for bad in [other_room, other_seq, other_sender] {
            assert_eq!(claimer.opener.open(&bad), Err(Rejected::Forged));
        }
        // The claimer's own direction, and another room's keys.
        let back = claimer
            .sealer
            .seal(room, &"1".repeat(32), 1, b"re")
            .unwrap();
        assert_eq!(owner.opener.open(&back).unwrap(), b"re");
        assert_eq!(claimer.opener.open(&back), Err(Rejected::Forged));
        let (_, stranger, _) = pair_of_rooms();
        assert_eq!(stranger.opener.open(&sealed), Err(Rejected::Forged));
        assert_eq!(
            claimer.opener.open(&sealed[..HEADER_LEN]),
            Err(Rejected::Malformed)
        );
    }

    #[test]
    fn every_seal_takes_a_new_nonce() {
        let (mut owner, _, room) = pair_of_rooms();
        let from = "0".repeat(32);
        let mut seen = std::collections::HashSet::new();
        for seq in 1..=100 {
            // The same seq and text twice (as a careless retry would):
            // still two nonces.
            for _ in 0..2 {
                let sealed = owner.sealer.seal(room, &from, seq, b"same").unwrap();
                let h = Header::read(&sealed).unwrap();
                assert!(seen.insert(h.nonce), "nonce {} again", h.nonce);
            }
        }
    }

    #[test]
    fn low_order_keys_and_foreign_room_ids_are_refused() {
        let (secret, kx) = fresh_kx().unwrap();
        let zero = [0u8; 32];
        let (a, b) = ("0".repeat(32), "1".repeat(32));
        let pairing = Pairing {
            room: room_id_for(&b, &zero),
            owner: &a,
            claimer: &b,
            owner_kx: &kx,
            claimer_kx: &zero,
        };
        assert!(room_keys(&secret, Side::Owner, pairing).is_none());
        assert_ne!(room_id_for(&a, &kx), room_id_for(&b, &kx));
        assert_eq!(room_id_for(&a, &kx), room_id_for(&a, &kx));
        assert_eq!(unhex::<2>("0aff"), Some([10, 255]));
        assert_eq!(unhex::<2>("0AFF"), None);
        assert_eq!(hex(&[10, 255]), "0aff");
    }

    /// Not a test of speed (none are timed): prints what sealing and
    /// opening a short chat message costs, for the report. Run with
    /// `cargo test --release -p mcp-chat-broker seal_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn seal_cost() {
        let (mut owner, claimer, room) = pair_of_rooms();
        let from = "0".repeat(32);
        let short = br#"{"delivered":3,"body":{"kind":"text","text":"hello there, how are you doing today?","sent_at":1700000000000}}"#.to_vec();
        let full = vec![b'x'; mcp_chat_proto::MAX_MESSAGE_BYTES];
        let mut seq = 0;
        for (plain, n) in [(short, 200_000u32), (full, 20_000)] {
            let start = std::time::Instant::now();
            for _ in 0..n {
                seq += 1;
                let sealed = owner.sealer.seal(room, &from, seq, &plain).unwrap();
                let opened = claimer.opener.open(&sealed).unwrap();
                assert_eq!(opened.len(), plain.len());
            }
            let each = start.elapsed() / n;
            println!("seal+open of {} bytes: {each:?}", plain.len());
        }
    }
}
