//! The realm key, pinned on first use. Every member of a realm may write
//! its blocks bucket, so the key there (see `blocks`) can be replaced or
//! garbled by any of them: a garbled key would keep restarting brokers out
//! of the realm, and a new one would silently unbind every realm block
//! (blocks are keyed hashes under it). So the first key a broker sees for a
//! realm (its server URLs and name) is kept in the broker's private state,
//! beside its blocks (`log_path::realm_keys_path`), and later joins use the
//! pinned key whatever the bucket says; a bucket key that differs is shown
//! in `status` and `doctor` (see [`choose`]). To accept a realm's new key,
//! delete the file (or its line) and restart the broker.
//!
//! Mode 0600 in a 0700 directory, written whole to a temporary file and
//! renamed over, so a crash leaves the old file or the new. A damaged file
//! is set aside (`.bad` appended to its name), logged, and started afresh.
//!
//! ```text
//! mcp-chat realm keys v1
//! <64 hex digits> <realm> <server URLs, comma-separated>
//! ```

use std::io::Write;
use std::path::PathBuf;

use super::auth::hex;
use super::blocks::{RealmKey, unhex};
use crate::block_file::{suffixed, write_private};

const HEADER: &str = "mcp-chat realm keys v1";

/// Which realm a key belongs to: its server URLs and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RealmId {
    pub(crate) realm: String,
    pub(crate) server: String,
}

/// The key this broker uses for a realm, and what `status` says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chosen {
    pub(crate) key: RealmKey,
    /// Pin it: the first key seen for this realm.
    pub(crate) pin: bool,
    /// Why the bucket's key is not the one used, when it is not.
    pub(crate) note: Option<String>,
}

/// The key to use, from the pinned one (if any) and the bucket's (`None`
/// when it is not a key at all). With neither, a key of this broker's own:
/// its realm blocks then bind its own sessions only.
pub(crate) fn choose(pinned: Option<RealmKey>, bucket: Option<RealmKey>) -> Chosen {
    match (pinned, bucket) {
        (Some(pinned), Some(bucket)) if pinned == bucket => Chosen {
            key: pinned,
            pin: false,
            note: None,
        },
        (Some(pinned), Some(_)) => Chosen {
            key: pinned,
            pin: false,
            note: Some(
                "the realm's bucket holds another key than the one pinned here; keeping the pinned key (a realm member replaced it, or the realm was made anew: to accept the new key, delete this broker's realm-keys file)".to_owned(),
            ),
        },
        (Some(pinned), None) => Chosen {
            key: pinned,
            pin: false,
            note: Some(
                "the realm's bucket holds no valid key; keeping the key pinned here".to_owned(),
            ),
        },
        (None, Some(bucket)) => Chosen {
            key: bucket,
            pin: true,
            note: None,
        },
        (None, None) => Chosen {
            key: crate::block_file::random_key(),
            pin: false,
            note: Some(
                "the realm's bucket holds no valid key and none is pinned here; realm blocks made here bind this broker's sessions only".to_owned(),
            ),
        },
    }
}

/// The key to use for `realm`, given the bucket's: [`choose`], with the
/// pins read and written (a failure is logged: the key chosen holds for
/// this process), and a key not used from the bucket logged.
pub(crate) fn settle(pins: Option<&KeyPins>, realm: &RealmId, bucket: Option<RealmKey>) -> Chosen {
    let pinned = pins.and_then(|p| {
        p.get(realm)
            .inspect_err(|e| tracing::warn!(path = %p.path.display(), error = %e, "cannot read the realm key pins"))
            .ok()
            .flatten()
    });
    let chosen = choose(pinned, bucket);
    if chosen.pin
        && let Some(p) = pins
        && let Err(e) = p.pin(realm, chosen.key)
    {
        tracing::warn!(path = %p.path.display(), error = %e, "cannot pin the realm key; it is used, unpinned");
    }
    if let Some(note) = &chosen.note {
        tracing::warn!(realm = %realm.realm, note, "federation: not using the realm key in the bucket");
    }
    chosen
}

/// The pinned keys of one broker.
#[derive(Debug)]
pub(crate) struct KeyPins {
    path: PathBuf,
}

impl KeyPins {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The key pinned for `realm`, if any. A damaged file is set aside.
    pub(crate) fn get(&self, realm: &RealmId) -> std::io::Result<Option<RealmKey>> {
        Ok(self
            .read()?
            .into_iter()
            .find(|(id, _)| id == realm)
            .map(|(_, key)| key))
    }

    /// Pins `key` for `realm` (replacing a pin of it, which only a deleted
    /// line or file allows: see [`choose`]).
    pub(crate) fn pin(&self, realm: &RealmId, key: RealmKey) -> std::io::Result<()> {
        let mut pins = self.read()?;
        pins.retain(|(id, _)| id != realm);
        pins.push((realm.clone(), key));
        self.write(&pins)
    }

    fn read(&self) -> std::io::Result<Vec<(RealmId, RealmKey)>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return self.set_aside("not text");
            }
            Err(e) => return Err(e),
        };
        match parse(&text) {
            Some(pins) => Ok(pins),
            None => self.set_aside("malformed"),
        }
    }

    fn set_aside(&self, why: &str) -> std::io::Result<Vec<(RealmId, RealmKey)>> {
        let aside = suffixed(&self.path, ".bad");
        tracing::warn!(path = %self.path.display(), why, aside = %aside.display(), "realm key pins damaged; setting them aside, the next keys seen are pinned afresh");
        std::fs::rename(&self.path, &aside)?;
        Ok(Vec::new())
    }

    fn write(&self, pins: &[(RealmId, RealmKey)]) -> std::io::Result<()> {
        write_private(&self.path, |file| {
            writeln!(file, "{HEADER}")?;
            for (id, key) in pins {
                writeln!(file, "{} {} {}", hex(key), id.realm, id.server)?;
            }
            Ok(())
        })
    }
}

/// The pins in `text`; `None` if anything is malformed (a realm name never
/// holds a space: see `config`; the URLs come last).
fn parse(text: &str) -> Option<Vec<(RealmId, RealmKey)>> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return None;
    }
    lines
        .map(|line| {
            let mut fields = line.splitn(3, ' ');
            let key = unhex(fields.next()?.as_bytes())?;
            let realm = fields.next()?.to_owned();
            let server = fields.next()?.to_owned();
            if realm.is_empty() || server.is_empty() {
                return None;
            }
            Some((RealmId { realm, server }, key))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realm(name: &str) -> RealmId {
        RealmId {
            realm: name.into(),
            server: "nats://one:4222,nats://two:4222".into(),
        }
    }

    #[test]
    fn pins_survive_a_reopen_privately_one_per_realm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("broker.realm-keys");
        let pins = KeyPins::new(path.clone());
        assert_eq!(pins.get(&realm("a")).unwrap(), None);
        pins.pin(&realm("a"), [1; 32]).unwrap();
        pins.pin(&realm("b"), [2; 32]).unwrap();
        let again = KeyPins::new(path.clone());
        assert_eq!(again.get(&realm("a")).unwrap(), Some([1; 32]));
        assert_eq!(again.get(&realm("b")).unwrap(), Some([2; 32]));
        let elsewhere = RealmId {
            server: "nats://other:4222".into(),
            ..realm("a")
        };
        assert_eq!(again.get(&elsewhere).unwrap(), None, "another server");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
        assert!(
            !suffixed(&path, ".new").exists(),
            "written through a rename"
        );
    }

    #[test]
    fn a_damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.realm-keys");
        let pins = KeyPins::new(path.clone());
        pins.pin(&realm("a"), [1; 32]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace(&hex(&[1; 32])[..4], "zzzz")).unwrap();
        assert_eq!(pins.get(&realm("a")).unwrap(), None);
        assert!(dir.path().join("broker.realm-keys.bad").exists());
        pins.pin(&realm("a"), [3; 32]).unwrap();
        assert_eq!(pins.get(&realm("a")).unwrap(), Some([3; 32]));
    }

    #[test]
    fn the_pinned_key_wins_and_a_first_key_is_pinned() {
        let (pinned, other) = ([1; 32], [2; 32]);
        assert_eq!(
            choose(Some(pinned), Some(pinned)),
            Chosen {
                key: pinned,
                pin: false,
                note: None
            }
        );
        for bucket in [Some(other), None] {
            let chosen = choose(Some(pinned), bucket);
            assert_eq!((chosen.key, chosen.pin), (pinned, false));
            assert!(chosen.note.is_some());
        }
        assert_eq!(
            choose(None, Some(other)),
            Chosen {
                key: other,
                pin: true,
                note: None
            }
        );
        let own = choose(None, None);
        assert!(!own.pin && own.note.unwrap().contains("this broker's sessions only"));
        assert_ne!(own.key, choose(None, None).key, "a key of its own");
    }
}
