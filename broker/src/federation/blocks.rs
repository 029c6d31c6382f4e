//! Blocks across the realm, with nothing but keyed hashes on the wire.
//!
//! A realm has one random key, made once in its blocks bucket with a
//! create-only write (so every broker of the realm reads the same one), and
//! pinned by each broker the first time it reads it (`key_pin`), since any
//! realm member could overwrite it later.
//! A session is named to other brokers by `who`: the first 8 bytes of
//! HMAC-SHA-256(realm key, installation id), or of a random id of its own
//! when its client sent none (the page, old clients), which then binds that
//! session only. Neither the installation id nor the broker's own keyed
//! hash (`block_file`) ever leaves the broker; and without the realm key a
//! `who` says nothing about the id behind it.
//!
//! Each session also has a random `sid` of its own. A block between two
//! installations binds their `who`s; one between two sessions of one
//! installation (one user's agent and terminal, which share a `who`) binds
//! their `sid`s, those two sessions only, as on one broker
//! ([`RealmName`]).
//!
//! A block is one entry of the same bucket, keyed by a hash of the
//! unordered pair of names ([`pair_key`]): whoever reads the bucket can
//! test a pair it already knows, but cannot list who blocked whom. Blocks
//! never expire (the bucket's byte limit bounds them). The blocking broker
//! writes the entry before it answers `blocked`; every broker mirrors the
//! bucket, claimers never pair a blocked pair, and the owner's hub checks
//! again before it confirms a claim (see `realm` and `state::federated`).

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::auth::hex;
use super::wire::Names;

/// The realm's key for hashing installation ids.
pub(crate) type RealmKey = [u8; 32];

/// Bucket key of the realm key.
const KEY_ENTRY: &str = "realmkey";
/// Prefix of block entries.
const BLOCK_PREFIX: &str = "p.";
/// Blocks a broker mirrors, at most; past that new ones are logged and
/// dropped from the mirror (the bucket keeps them), so a flood of writes
/// cannot grow a broker without bound.
pub(crate) const MAX_REALM_BLOCKS: usize = 1_000_000;

/// How a session is named to the realm, for blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RealmName {
    /// Keyed hash of its installation id, or random without one.
    pub(crate) who: u64,
    /// Random, for this session only.
    pub(crate) sid: u64,
}

impl RealmName {
    pub(crate) fn random() -> Self {
        Self {
            who: random_who(),
            sid: random_who(),
        }
    }
}

/// The key a block between `a` and `b` is written under: their
/// installations when they differ, else the two sessions.
pub(crate) fn block_key(a: RealmName, b: RealmName) -> String {
    if a.who != b.who {
        pair_key(a.who, b.who)
    } else {
        pair_key(a.sid, b.sid)
    }
}

/// Whether a block in `set` binds `a` and `b`, by installation or by
/// session (both are checked, as on one broker).
pub(crate) fn is_blocked(set: &HashSet<String>, a: RealmName, b: RealmName) -> bool {
    !set.is_empty()
        && (set.contains(&pair_key(a.who, b.who)) || set.contains(&pair_key(a.sid, b.sid)))
}

/// `who` for an installation id (see the module docs).
pub(crate) fn who(key: &RealmKey, installation_id: &str) -> u64 {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, installation_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&tag.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// A `who` for a session without an installation id.
pub(crate) fn random_who() -> u64 {
    let id = uuid::Uuid::new_v4();
    let mut first = [0u8; 8];
    first.copy_from_slice(&id.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// The bucket key of a block between `a` and `b`, in either order.
pub(crate) fn pair_key(a: u64, b: u64) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let digest = Sha256::new()
        .chain_update(b"mcp-chat realm block v1")
        .chain_update(lo.to_be_bytes())
        .chain_update(hi.to_be_bytes())
        .finalize();
    let mut key = String::with_capacity(BLOCK_PREFIX.len() + 32);
    key.push_str(BLOCK_PREFIX);
    for byte in &digest[..16] {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

/// Whether `key` is a block entry's key as [`pair_key`] makes them.
pub(crate) fn is_pair_key(key: &str) -> bool {
    key.strip_prefix(BLOCK_PREFIX).is_some_and(|rest| {
        rest.len() == 32
            && rest
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// The blocks bucket and the realm key it holds, made if they are not
/// there yet; `None` for a key that is not one (any realm member can write
/// the bucket: `key_pin` decides what to use).
pub(super) async fn setup(
    js: &jetstream::Context,
    names: &Names,
    replicas: usize,
) -> Result<(kv::Store, Option<RealmKey>), String> {
    let bucket = names.blocks_bucket();
    let store = match js.get_key_value(&bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket,
                history: 1,
                max_bytes: 64 * 1024 * 1024,
                max_value_size: 1024,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("blocks bucket: {e}"))?,
    };
    let fresh = hex(&crate::block_file::random_key());
    // Create-only: the first broker's key stands; the others read it.
    let _ = store.create(KEY_ENTRY, fresh.into()).await;
    let stored = store
        .get(KEY_ENTRY)
        .await
        .map_err(|e| format!("realm key: {e}"))?;
    Ok((store, stored.and_then(|k| unhex(&k))))
}

/// Reports every block entry of the bucket (old ones first, then new ones
/// as they are written) until `to` closes.
pub(super) async fn watch(store: kv::Store, to: mpsc::Sender<String>) {
    loop {
        match store.watch_with_history(format!("{BLOCK_PREFIX}>")).await {
            Ok(mut changes) => {
                while let Some(change) = changes.next().await {
                    match change {
                        Ok(entry)
                            if entry.operation == kv::Operation::Put && is_pair_key(&entry.key) =>
                        {
                            if to.send(entry.key).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "realm blocks watch hiccup"),
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot watch the realm blocks yet"),
        }
        if to.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes a block entry, a few times if the server does not answer.
pub(super) async fn write(store: kv::Store, key: String) -> bool {
    for _ in 0..3 {
        match store.put(&key, "1".into()).await {
            Ok(_) => return true,
            Err(e) => tracing::warn!(error = %e, "federation: writing a block failed"),
        }
    }
    false
}

/// Adds `key` to a mirrored block set, within [`MAX_REALM_BLOCKS`].
pub(crate) fn remember(set: &mut HashSet<String>, key: String) {
    if set.len() >= MAX_REALM_BLOCKS && !set.contains(&key) {
        tracing::warn!(
            limit = MAX_REALM_BLOCKS,
            "realm block mirror full; not mirroring a block"
        );
        return;
    }
    set.insert(key);
}

pub(super) fn unhex(text: &[u8]) -> Option<RealmKey> {
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        key[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_is_keyed_and_pairs_are_unordered() {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        assert_eq!(who(&k1, "abc"), who(&k1, "abc"));
        assert_ne!(
            who(&k1, "abc"),
            who(&k2, "abc"),
            "another realm, another who"
        );
        assert_ne!(who(&k1, "abc"), who(&k1, "abd"));
        assert_eq!(pair_key(1, 2), pair_key(2, 1));
        assert_ne!(pair_key(1, 2), pair_key(1, 3));
        assert!(is_pair_key(&pair_key(7, 9)));
        assert!(!is_pair_key("p.zz"));
        assert!(!is_pair_key(KEY_ENTRY));
        assert_eq!(unhex(hex(&k2).as_bytes()), Some(k2));
        assert_eq!(unhex(b"xy"), None);
    }
}
