//! Claude Desktop: `mcpServers["mcp-chat"]` in `claude_desktop_config.json`.
//!
//! Every other key and server stays as it was, in its place. The old content
//! is kept as `….json.bak` the first time (the user's own config, never
//! overwritten) and as `….json.bak.1`, `.bak.2`, … after that. The new file
//! is written to a temp file in the same directory and renamed over the old,
//! so the client never reads half a file; right before the rename the file is
//! read again, and if the client changed it meanwhile the merge is redone on
//! its new content, so that change is not lost. A file that is not valid
//! JSON is never touched.
//!
//! Key order survives the rewrite only because serde_json is built with its
//! `preserve_order` feature; without it `serde_json::Map` is a `BTreeMap` and
//! the file comes back sorted (`tests::merge_keeps_other_servers_and_keys_in_order`
//! checks the order).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::SERVER_NAME;
use super::config_file::{ConfigError, json_kind, parse_config, read_if_exists};

/// Claude Desktop's config file on this platform: `<config dir>/Claude/claude_desktop_config.json`
/// (`~/.config` on Linux, `~/Library/Application Support` on macOS,
/// `%APPDATA%` on Windows). `None` when there is no home directory.
pub fn claude_desktop_config_path() -> Option<PathBuf> {
    let dirs = directories::BaseDirs::new()?;
    Some(
        dirs.config_dir()
            .join("Claude")
            .join("claude_desktop_config.json"),
    )
}

/// What [`register_claude_desktop`] did to the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// There was no file; now there is one holding just our entry.
    Created,
    /// The file had no `mcp-chat` entry; now it has one.
    Added,
    /// The `mcp-chat` entry ran another command (`previous`); it runs ours now.
    Updated { previous: Option<String> },
    /// The entry already runs this command; the file was not written.
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesktopOutcome {
    /// The file that was (or would have been) written: the config path with
    /// a symlink resolved, so a symlinked config stays a symlink.
    pub config: PathBuf,
    pub change: Change,
    /// Where the previous content was saved, if the file was rewritten.
    pub backup: Option<PathBuf>,
}

/// Sets `mcpServers["mcp-chat"].command` in a Claude Desktop config file,
/// creating the file (and its directory) if needed. See the module docs for
/// what is kept and how the file is written.
pub fn register_claude_desktop(
    config: &Path,
    command: &str,
) -> Result<DesktopOutcome, ConfigError> {
    register_with_hook(config, command, &mut |_| {})
}

/// How many times the file may change under us before we give up: each
/// change means redoing the merge on the new content.
const MAX_ATTEMPTS: usize = 5;

/// [`register_claude_desktop`], calling `before_check` just before the file
/// is read again for the last time, where a test plays the client editing it.
fn register_with_hook(
    config: &Path,
    command: &str,
    before_check: &mut dyn FnMut(&Path),
) -> Result<DesktopOutcome, ConfigError> {
    let path = real_path(config)?;
    if path.file_name().is_none() {
        return Err(ConfigError::NotAFile { path });
    }
    for _ in 0..MAX_ATTEMPTS {
        let original = read_if_exists(&path)?;
        let (bom, mut root) = match &original {
            Some(bytes) => parse_config(&path, bytes)?,
            None => (false, Map::new()),
        };
        let change = set_command(&path, &mut root, command)?;
        if change == Change::Unchanged {
            return Ok(DesktopOutcome {
                config: path,
                change,
                backup: None,
            });
        }
        let mut text = String::new();
        if bom {
            text.push('\u{feff}');
        }
        text.push_str(
            &serde_json::to_string_pretty(&Value::Object(root))
                .expect("a serde_json::Value always serializes"),
        );
        text.push('\n');

        let temp = write_temp(&path, text.as_bytes())?;
        let backup = match &original {
            Some(bytes) => match write_backup(&path, bytes) {
                Ok(backup) => Some(backup),
                Err(error) => {
                    let _ = fs::remove_file(&temp);
                    return Err(error);
                }
            },
            None => None,
        };
        // The client may have saved the file since we read it (it rewrites
        // its config on its own): then merge again into what it wrote, or its
        // change would be lost.
        before_check(&path);
        if read_if_exists(&path)? != original {
            let _ = fs::remove_file(&temp);
            if let Some(backup) = &backup {
                let _ = fs::remove_file(backup);
            }
            continue;
        }
        rename_into_place(&temp, &path)?;
        return Ok(DesktopOutcome {
            config: path,
            change: if backup.is_some() {
                change
            } else {
                Change::Created
            },
            backup,
        });
    }
    Err(ConfigError::KeptChanging {
        path,
        attempts: MAX_ATTEMPTS,
    })
}

/// A symlinked config is written through to its target, so a config kept in
/// a dotfiles repository stays linked.
fn real_path(config: &Path) -> Result<PathBuf, ConfigError> {
    match fs::symlink_metadata(config) {
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::canonicalize(config).map_err(|source| ConfigError::Read {
                path: config.to_path_buf(),
                source,
            })
        }
        _ => Ok(config.to_path_buf()),
    }
}

/// Points `mcpServers["mcp-chat"]` at `command`, leaving everything else
/// (other servers, other fields of our entry such as `env`) where it is.
fn set_command(
    path: &Path,
    root: &mut Map<String, Value>,
    command: &str,
) -> Result<Change, ConfigError> {
    let servers = root
        .entry("mcpServers")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(servers) = servers else {
        return Err(ConfigError::NotAnObject {
            path: path.to_path_buf(),
            what: "\"mcpServers\"",
            found: json_kind(servers),
        });
    };
    match servers.get_mut(SERVER_NAME) {
        None => {
            servers.insert(SERVER_NAME.to_owned(), json!({ "command": command }));
            Ok(Change::Added)
        }
        Some(Value::Object(entry)) => {
            let previous = entry
                .get("command")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if previous.as_deref() == Some(command) {
                return Ok(Change::Unchanged);
            }
            // Replacing an existing key keeps its position in the entry.
            entry.insert("command".to_owned(), Value::String(command.to_owned()));
            Ok(Change::Updated { previous })
        }
        Some(other) => {
            *other = json!({ "command": command });
            Ok(Change::Updated { previous: None })
        }
    }
}

/// `<name>.bak`, then `<name>.bak.1`, `<name>.bak.2`, …: the first backup is
/// the user's config as it was before mcp-chat ever touched it, and it is
/// never overwritten.
fn backup_path(path: &Path, number: u32) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".bak");
    if number > 0 {
        name.push(format!(".{number}"));
    }
    path.with_file_name(name)
}

/// Saves `bytes` (the content about to be replaced) as the first free
/// [`backup_path`], with the config's permissions. Never replaces a file.
fn write_backup(path: &Path, bytes: &[u8]) -> Result<PathBuf, ConfigError> {
    let mut number = 0;
    loop {
        let backup = backup_path(path, number);
        let error = |source| ConfigError::Backup {
            path: path.to_path_buf(),
            backup: backup.clone(),
            source,
        };
        let mut file = match create_private(&backup) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && number < u32::MAX => {
                number += 1;
                continue;
            }
            Err(e) => return Err(error(e)),
        };
        let written = file.write_all(bytes).and_then(|()| {
            if let Ok(meta) = fs::metadata(path) {
                file.set_permissions(meta.permissions())?;
            }
            file.sync_all()
        });
        return match written {
            Ok(()) => Ok(backup),
            Err(e) => {
                drop(file);
                let _ = fs::remove_file(&backup);
                Err(error(e))
            }
        };
    }
}

/// Writes `bytes` to a temp file next to `path` and flushes it to disk; the
/// new file gets the old one's permissions (0600 if new, as the config may
/// hold secrets in `env`). [`rename_into_place`] then swaps it in.
fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf, ConfigError> {
    let dir = parent_dir(path);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> io::Result<()> {
        fs::create_dir_all(dir)?;
        // A leftover from a crashed run that had our pid.
        match fs::remove_file(&temp) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let mut file = create_private(&temp)?;
        file.write_all(bytes)?;
        if let Ok(meta) = fs::metadata(path) {
            file.set_permissions(meta.permissions())?;
        }
        file.sync_all()
    };
    write().map(|()| temp.clone()).map_err(|source| {
        let _ = fs::remove_file(&temp);
        ConfigError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Renames the temp file over `path`: readers see the old file or the new
/// one, never a mix.
fn rename_into_place(temp: &Path, path: &Path) -> Result<(), ConfigError> {
    match fs::rename(temp, path) {
        Ok(()) => {
            sync_dir(parent_dir(path));
            Ok(())
        }
        Err(source) => {
            let _ = fs::remove_file(temp);
            Err(ConfigError::Write {
                path: path.to_path_buf(),
                source,
            })
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn create_private(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Makes the rename itself durable. Best effort: some filesystems refuse to
/// sync a directory, and the rename has happened either way.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests;
