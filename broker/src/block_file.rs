//! Blocks outlive the broker process: an auto-started broker exits when
//! idle, and "never matched again" must survive that. The file holds the
//! random key the broker hashes installation ids with, and one line per
//! block between two installations (their keyed hashes, never the ids).
//! Blocks between sessions of one installation end with those sessions,
//! so they are not kept.
//!
//! Where it lives follows the log (see [`crate::log_path`]): the user's
//! state directory for the default socket, beside an overridden socket
//! otherwise. Mode 0600. A damaged file is set aside (`.bad` appended to
//! its name) and a fresh one started, logged.
//!
//! ```text
//! mcp-chat blocks v1
//! key <64 hex digits>
//! <16 hex digits> <16 hex digits>
//! ```

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const HEADER: &str = "mcp-chat blocks v1";

/// The key installation ids are hashed with.
pub(crate) type BlockKey = [u8; 32];

/// The keyed hash a block is kept under: the first 8 bytes of
/// SHA-256(key ‖ id). Collisions among one user's partners are negligible
/// at 64 bits, and without the key the hash says nothing about the id.
pub(crate) fn installation_hash(key: &BlockKey, id: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(key)
        .chain_update(id.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A fresh random key (two v4 UUIDs: 244 random bits).
pub(crate) fn random_key() -> BlockKey {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key
}

/// The open block file, appended to as blocks are made.
#[derive(Debug)]
pub(crate) struct BlockFile {
    path: PathBuf,
    file: std::fs::File,
}

/// What a broker starts with.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) key: BlockKey,
    pub(crate) pairs: Vec<(u64, u64)>,
}

impl BlockFile {
    /// Opens (or makes) the file at `path` and reads what it holds.
    pub(crate) fn open(path: &Path) -> std::io::Result<(Self, Loaded)> {
        match read(path) {
            Ok(Some((loaded, true))) => Ok((Self::append_to(path)?, loaded)),
            // Written again whole, so the next block starts a line of its own.
            Ok(Some((loaded, false))) => Self::write(path, loaded),
            Ok(None) => Self::write(
                path,
                Loaded {
                    key: random_key(),
                    pairs: Vec::new(),
                },
            ),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let aside = suffixed(path, ".bad");
                tracing::warn!(path = %path.display(), error = %e, aside = %aside.display(), "block file damaged; setting it aside and starting afresh");
                std::fs::rename(path, &aside)?;
                Self::write(
                    path,
                    Loaded {
                        key: random_key(),
                        pairs: Vec::new(),
                    },
                )
            }
            Err(e) => Err(e),
        }
    }

    /// Records one block between two installations. A failed write is
    /// logged: the block still holds for this process.
    pub(crate) fn append(&mut self, (a, b): (u64, u64)) {
        let written = writeln!(self.file, "{a:016x} {b:016x}").and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            tracing::warn!(path = %self.path.display(), error = %e, "could not record a block; it holds until the broker exits");
        }
    }

    /// Writes `loaded` as the whole file: to a private temporary file
    /// first, then renamed over, so a crash leaves the old file or the new.
    fn write(path: &Path, loaded: Loaded) -> std::io::Result<(Self, Loaded)> {
        let hex: String = loaded.key.iter().map(|b| format!("{b:02x}")).collect();
        write_private(path, |file| {
            writeln!(file, "{HEADER}\nkey {hex}")?;
            for (a, b) in &loaded.pairs {
                writeln!(file, "{a:016x} {b:016x}")?;
            }
            Ok(())
        })?;
        Ok((Self::append_to(path)?, loaded))
    }

    fn append_to(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }
}

/// Writes a whole private file: its directory made 0700 if missing, the
/// text written by `body` to a 0600 temporary file first, then renamed over
/// `path`, so a crash leaves the old file or the new.
pub(crate) fn write_private(
    path: &Path,
    body: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    let temp = suffixed(path, ".new");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temp)?;
    body(&mut file)?;
    file.sync_data()?;
    std::fs::rename(&temp, path)
}

/// `path` with `suffix` added to its name (`broker.blocks.new`).
pub(crate) fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The file's key and blocks, and whether it was whole; `None` when there
/// is no file. A last line cut short by a crash mid-write is skipped (not
/// whole); anything else malformed is `InvalidData`.
fn read(path: &Path) -> std::io::Result<Option<(Loaded, bool)>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let lines: Vec<String> = BufReader::new(file).lines().collect::<Result<_, _>>()?;
    if lines.first().map(String::as_str) != Some(HEADER) {
        return Err(bad("not a block file"));
    }
    let key_hex = lines
        .get(1)
        .and_then(|l| l.strip_prefix("key "))
        .ok_or_else(|| bad("no key"))?;
    let key = parse_key(key_hex).ok_or_else(|| bad("a malformed key"))?;
    let mut pairs = Vec::new();
    let mut whole = true;
    let last = lines.len().saturating_sub(1);
    for (n, line) in lines.iter().enumerate().skip(2) {
        match parse_pair(line) {
            Some(pair) => pairs.push(pair),
            None if n == last => {
                tracing::warn!(path = %path.display(), "skipping a block line cut short");
                whole = false;
            }
            None => return Err(bad("a malformed block line")),
        }
    }
    Ok(Some((Loaded { key, pairs }, whole)))
}

fn parse_key(hex: &str) -> Option<BlockKey> {
    if hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

fn parse_pair(line: &str) -> Option<(u64, u64)> {
    let (a, b) = line.split_once(' ')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_the_key_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("broker.blocks");
        let (mut file, loaded) = BlockFile::open(&path).unwrap();
        assert!(loaded.pairs.is_empty());
        file.append((1, u64::MAX));
        file.append((7, 9));
        drop(file);
        let (_, again) = BlockFile::open(&path).unwrap();
        assert_eq!(again.key, loaded.key);
        assert_eq!(again.pairs, vec![(1, u64::MAX), (7, 9)]);
        assert_eq!(
            installation_hash(&again.key, "id"),
            installation_hash(&loaded.key, "id")
        );
        assert_ne!(
            installation_hash(&random_key(), "id"),
            installation_hash(&loaded.key, "id"),
            "another key, another hash"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_line_cut_short_is_skipped_and_a_damaged_file_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.blocks");
        let (mut file, loaded) = BlockFile::open(&path).unwrap();
        file.append((1, 2));
        drop(file);
        let mut raw = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        write!(raw, "00000000000000").unwrap();
        drop(raw);
        let (mut file, again) = BlockFile::open(&path).unwrap();
        assert_eq!((again.key, again.pairs), (loaded.key, vec![(1, 2)]));
        file.append((3, 4));
        drop(file);
        let (_, mended) = BlockFile::open(&path).unwrap();
        assert_eq!(mended.pairs, vec![(1, 2), (3, 4)], "the cut line is gone");

        std::fs::write(&path, "something else\n").unwrap();
        let (_, fresh) = BlockFile::open(&path).unwrap();
        assert!(fresh.pairs.is_empty());
        assert_ne!(fresh.key, loaded.key);
        assert!(dir.path().join("broker.blocks.bad").exists());
    }
}
