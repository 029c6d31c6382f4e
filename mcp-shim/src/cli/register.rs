//! `mcp-chat register <target>`: tells an MCP client how to launch mcp-chat.
//!
//! - `claude-desktop` merges `mcpServers["mcp-chat"] = {"command": "<absolute
//!   path>"}` into `claude_desktop_config.json`. Every other key and server
//!   stays as it was, in its place; the old file is kept as `….json.bak`; the
//!   new one is written to a temp file in the same directory and renamed over
//!   the old, so the client never reads half a file. A file that is not valid
//!   JSON is never touched.
//! - `claude-code` runs `claude mcp add --scope user mcp-chat -- <path>` when
//!   `claude` is on `PATH`, and prints that command otherwise.
//! - `print` prints the JSON snippet for any other client.
//! - `all` does the first two for whichever clients are installed here.
//!
//! [`registered_clients`] reads the same files back for `mcp-chat doctor`.
//!
//! Key order survives the rewrite only because serde_json is built with its
//! `preserve_order` feature; without it `serde_json::Map` is a `BTreeMap` and
//! the file comes back sorted (a unit test below checks the order).

use std::ffi::OsStr;
use std::fmt::Display;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Map, Value, json};

/// The name under which mcp-chat appears in every client's server list.
pub const SERVER_NAME: &str = "mcp-chat";

/// How to start Claude Code so that it shows mcp-chat's pushed events
/// (channel notifications) to the model as they arrive.
pub const CLAUDE_CHANNELS_COMMAND: &str =
    "claude --dangerously-load-development-channels server:mcp-chat";

/// `claude mcp …` only edits a JSON file; if it takes longer than this it is
/// waiting for something (a prompt, a lock) and we stop waiting with it.
const CLAUDE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// Which client to register with.
    #[arg(value_enum)]
    pub target: Target,
    /// Path of the mcp-chat binary to register [default: this executable].
    #[arg(long, value_name = "PATH")]
    pub command: Option<PathBuf>,
    /// Config file to edit, instead of the client's usual one (claude-desktop only).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Claude Desktop: add mcp-chat to claude_desktop_config.json.
    ClaudeDesktop,
    /// Claude Code: `claude mcp add --scope user` (or print that command).
    ClaudeCode,
    /// Print the JSON snippet to paste into any other client's config.
    Print,
    /// Claude Desktop and Claude Code, whichever are installed here.
    All,
}

/// A client config file that registers mcp-chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// `"claude-desktop"` or `"claude-code"`.
    pub client: &'static str,
    /// The file the entry is in.
    pub config: PathBuf,
    /// The entry's `command`; `None` if it has no string `command`.
    pub command: Option<PathBuf>,
}

/// Why a client config file could not be read or updated. Every variant names
/// the file; none of them leaves the file changed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is not valid JSON: {reason} at line {line}, column {column}. \
         It was left unchanged: fix it (or move it away) and run this again",
        path.display()
    )]
    Malformed {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error(
        "in {}, {what} is {found}, not a JSON object. \
         It was left unchanged: fix it (or move it away) and run this again",
        path.display()
    )]
    NotAnObject {
        path: PathBuf,
        what: &'static str,
        found: &'static str,
    },
    #[error("{} is not a file path", path.display())]
    NotAFile { path: PathBuf },
    #[error("cannot back up {} to {}; the file was left unchanged", path.display(), backup.display())]
    Backup {
        path: PathBuf,
        backup: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}; the old file is still in place", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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

/// Runs `mcp-chat register`.
pub fn run(args: &RegisterArgs) -> anyhow::Result<()> {
    if args.config.is_some() && matches!(args.target, Target::ClaudeCode | Target::Print) {
        bail!(
            "--config only applies to claude-desktop (and all); Claude Code's \
             configuration is changed through the `claude` command"
        );
    }
    let command = resolve_command(args.command.as_deref())?;
    let clients = Clients::from_process(args.config.clone());
    match args.target {
        Target::Print => {
            say(snippet(&command));
            Ok(())
        }
        Target::ClaudeDesktop => {
            let config = clients.desktop_config.context(
                "cannot tell where Claude Desktop keeps its config (no home directory); \
                 pass --config FILE",
            )?;
            register_desktop_and_report(&config, &command)
        }
        Target::ClaudeCode => register_code_and_report(&clients.code, &command),
        Target::All => register_all(&clients, &command),
    }
}

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

/// The file holding Claude Code's user-scope servers (top-level
/// `mcpServers`): `$CLAUDE_CONFIG_DIR/.claude.json`, else `~/.claude.json`.
pub fn claude_code_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CLAUDE_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join(".claude.json"));
    }
    let dirs = directories::BaseDirs::new()?;
    Some(dirs.home_dir().join(".claude.json"))
}

/// For `mcp-chat doctor`: every client config that registers mcp-chat, and
/// the command it points at. Files that are missing, unreadable or not JSON
/// are skipped; [`read_registration`] says why.
pub fn registered_clients() -> Vec<Registration> {
    [
        ("claude-desktop", claude_desktop_config_path()),
        ("claude-code", claude_code_config_path()),
    ]
    .into_iter()
    .filter_map(|(client, config)| read_registration(client, &config?).ok().flatten())
    .collect()
}

/// The `mcpServers["mcp-chat"]` entry of one config file, if it has one.
/// A missing file or a file without `mcpServers` is `Ok(None)`.
pub fn read_registration(
    client: &'static str,
    config: &Path,
) -> Result<Option<Registration>, ConfigError> {
    Ok(read_server_entry(config)?.map(|entry| Registration {
        client,
        config: config.to_path_buf(),
        command: entry
            .get("command")
            .and_then(Value::as_str)
            .map(PathBuf::from),
    }))
}

/// Sets `mcpServers["mcp-chat"].command` in a Claude Desktop config file,
/// creating the file (and its directory) if needed. See the module docs for
/// what is kept and how the file is written.
pub fn register_claude_desktop(
    config: &Path,
    command: &str,
) -> Result<DesktopOutcome, ConfigError> {
    let path = real_path(config)?;
    if path.file_name().is_none() {
        return Err(ConfigError::NotAFile { path });
    }
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

    let backup = match original {
        Some(_) => Some(write_backup(&path)?),
        None => None,
    };
    write_atomically(&path, text.as_bytes())?;
    Ok(DesktopOutcome {
        config: path,
        change: if backup.is_some() {
            change
        } else {
            Change::Created
        },
        backup,
    })
}

// ---------------------------------------------------------------------------
// Reporting

/// Every line of human output goes through here. `register` never runs as the
/// MCP server, so stdout is free.
#[allow(clippy::print_stdout)]
fn say(text: impl Display) {
    println!("{text}"); // stdout-ok
}

fn snippet(command: &str) -> String {
    let value = json!({ "mcpServers": { SERVER_NAME: { "command": command } } });
    serde_json::to_string_pretty(&value).expect("a serde_json::Value always serializes")
}

fn register_desktop_and_report(config: &Path, command: &str) -> anyhow::Result<()> {
    let outcome = register_claude_desktop(config, command)?;
    let file = outcome.config.display();
    match &outcome.change {
        Change::Unchanged => say(format!(
            "Claude Desktop: mcp-chat is already registered in {file} \
             (command {command}); nothing to change."
        )),
        Change::Created => say(format!(
            "Claude Desktop: created {file}, registering mcp-chat (command {command})."
        )),
        Change::Added => say(format!(
            "Claude Desktop: registered mcp-chat in {file} (command {command})."
        )),
        Change::Updated {
            previous: Some(previous),
        } => say(format!(
            "Claude Desktop: the mcp-chat entry in {file} ran {previous}; it now runs {command}."
        )),
        Change::Updated { previous: None } => say(format!(
            "Claude Desktop: the mcp-chat entry in {file} had no usable command; \
             it now runs {command}."
        )),
    }
    if let Some(backup) = &outcome.backup {
        say(format!(
            "  The previous file is saved as {}.",
            backup.display()
        ));
    }
    if outcome.change != Change::Unchanged {
        say("  Quit and reopen Claude Desktop to load it.");
    }
    Ok(())
}

fn register_code_and_report(code: &ClaudeCode, command: &str) -> anyhow::Result<()> {
    match register_claude_code(code, command)? {
        CodeOutcome::AlreadyRegistered { config } => say(format!(
            "Claude Code: mcp-chat is already registered (user scope, in {}) \
             with command {command}; nothing to change.",
            config.display()
        )),
        CodeOutcome::Added => say(format!(
            "Claude Code: registered mcp-chat (user scope, command {command})."
        )),
        CodeOutcome::Replaced { previous, dropped } => {
            match previous {
                Some(previous) => say(format!(
                    "Claude Code: mcp-chat was registered with command {previous}; \
                     replaced it (user scope, command {command})."
                )),
                None => say(format!(
                    "Claude Code: mcp-chat was already registered; replaced it \
                     (user scope, command {command})."
                )),
            }
            if !dropped.is_empty() {
                say(format!(
                    "  The old entry's {} did not carry over; add them again with \
                     `claude mcp add` options if you need them.",
                    dropped.join(", ")
                ));
            }
        }
        CodeOutcome::Manual { commands } => {
            say("Claude Code: `claude` is not on PATH. To register mcp-chat, run:");
            for line in commands {
                say(format!("    {line}"));
            }
        }
    }
    say(format!(
        "  To have chat events pushed to Claude Code as they arrive, start it with:\n    \
         {CLAUDE_CHANNELS_COMMAND}\n  \
         (channels research preview: Claude Code 2.1.80+ and a claude.ai login; \
         without it, events arrive with tool results)."
    ));
    Ok(())
}

fn register_all(clients: &Clients, command: &str) -> anyhow::Result<()> {
    let desktop = clients
        .desktop_config
        .as_deref()
        .filter(|config| clients.desktop_explicit || config.parent().is_some_and(Path::is_dir));
    let code = clients.code.program.is_some();
    let desktop_dir = clients
        .desktop_config
        .as_deref()
        .and_then(Path::parent)
        .map_or_else(
            || "its config directory".to_owned(),
            |d| d.display().to_string(),
        );

    if desktop.is_none() && !code {
        say(format!(
            "Found neither Claude Desktop ({desktop_dir} does not exist) nor Claude Code \
             (`claude` is not on PATH), so nothing was registered."
        ));
        say("Install one and run `mcp-chat register all` again, or register by hand:");
        say(format!("  Claude Code: {}", add_command_line(command)));
        say("  Any other MCP client: add this to its config file:");
        say(snippet(command));
        return Ok(());
    }

    let mut failures = Vec::new();
    match desktop {
        Some(config) => {
            if let Err(error) = register_desktop_and_report(config, command) {
                failures.push(format!("Claude Desktop: {error:#}"));
            }
        }
        None => say(format!(
            "Claude Desktop: not installed here ({desktop_dir} does not exist); skipped."
        )),
    }
    if code {
        if let Err(error) = register_code_and_report(&clients.code, command) {
            failures.push(format!("Claude Code: {error:#}"));
        }
    } else {
        say("Claude Code: `claude` is not on PATH; skipped \
             (`mcp-chat register claude-code` prints the command to run).");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(failures.join("\n")))
    }
}

// ---------------------------------------------------------------------------
// The command to register

/// The absolute path of the mcp-chat binary, as UTF-8 (a JSON config holds
/// nothing else). The directory is canonicalized but a symlink in the last
/// component is kept, so `/opt/homebrew/bin/mcp-chat` stays valid across
/// upgrades instead of pinning one versioned Cellar directory.
fn resolve_command(explicit: Option<&Path>) -> anyhow::Result<String> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot find the path of this executable; pass --command PATH")?,
    };
    let checked = absolute_path(&path).and_then(|absolute| {
        let meta = fs::metadata(&absolute)?;
        Ok((absolute, meta))
    });
    let (absolute, meta) = match checked {
        Ok(found) => found,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            bail!("{} does not exist", path.display())
        }
        Err(error) => {
            return Err(anyhow!(error).context(format!("cannot check {}", path.display())));
        }
    };
    if !meta.is_file() {
        bail!(
            "{} is not a file; --command takes the path of the mcp-chat binary",
            absolute.display()
        );
    }
    if !is_executable(&meta) {
        bail!("{} is not executable", absolute.display());
    }
    let text = absolute.to_str().with_context(|| {
        format!(
            "{} is not valid UTF-8, which a client config cannot hold",
            absolute.display()
        )
    })?;
    Ok(text.to_owned())
}

fn absolute_path(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let absolute = fs::canonicalize(dir)?.join(name);
    Ok(if cfg!(windows) {
        without_verbatim_prefix(&absolute).unwrap_or(absolute)
    } else {
        absolute
    })
}

/// `\\?\C:\dir\mcp-chat.exe` → `C:\dir\mcp-chat.exe`: Windows' canonical
/// form is a verbatim path, which some clients cannot launch. Paths too long
/// for the short form keep the prefix.
fn without_verbatim_prefix(path: &Path) -> Option<PathBuf> {
    let rest = path.to_str()?.strip_prefix(r"\\?\")?;
    let is_disk =
        matches!(rest.as_bytes(), [drive, b':', b'\\', ..] if drive.is_ascii_alphabetic());
    (is_disk && rest.len() < 260).then(|| PathBuf::from(rest))
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(meta: &fs::Metadata) -> bool {
    meta.is_file()
}

// ---------------------------------------------------------------------------
// Config files

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

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses a config whose top level must be an object. Returns whether it
/// started with a UTF-8 byte order mark (kept on rewrite). An empty file
/// counts as `{}`: there is nothing in it to lose.
fn parse_config(path: &Path, bytes: &[u8]) -> Result<(bool, Map<String, Value>), ConfigError> {
    let (bom, body) = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => (true, rest),
        None => (false, bytes),
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((bom, Map::new()));
    }
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        let (line, column) = (error.line(), error.column());
        let text = error.to_string();
        let suffix = format!(" at line {line} column {column}");
        ConfigError::Malformed {
            path: path.to_path_buf(),
            line,
            column,
            reason: text.strip_suffix(&suffix).unwrap_or(&text).to_owned(),
        }
    })?;
    match value {
        Value::Object(map) => Ok((bom, map)),
        other => Err(ConfigError::NotAnObject {
            path: path.to_path_buf(),
            what: "the top level",
            found: json_kind(&other),
        }),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `mcp-chat` entry of a config, without judging its shape.
fn read_server_entry(config: &Path) -> Result<Option<Value>, ConfigError> {
    let Some(bytes) = read_if_exists(config)? else {
        return Ok(None);
    };
    let (_, mut root) = parse_config(config, &bytes)?;
    Ok(match root.remove("mcpServers") {
        Some(Value::Object(mut servers)) => servers.remove(SERVER_NAME),
        _ => None,
    })
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

fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".bak");
    path.with_file_name(name)
}

/// Copies the current file to `<name>.bak` (with its permissions),
/// replacing an older backup.
fn write_backup(path: &Path) -> Result<PathBuf, ConfigError> {
    let backup = backup_path(path);
    match fs::copy(path, &backup) {
        Ok(_) => Ok(backup),
        Err(source) => Err(ConfigError::Backup {
            path: path.to_path_buf(),
            backup,
            source,
        }),
    }
}

/// Writes `bytes` to a temp file next to `path`, flushes it to disk and
/// renames it over `path`: readers see the old file or the new one, never a
/// mix. The new file keeps the old one's permissions (0600 if new, as the
/// config may hold secrets in `env`).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
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
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, path)?;
        sync_dir(dir);
        Ok(())
    };
    write().map_err(|source| {
        let _ = fs::remove_file(&temp);
        ConfigError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
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

// ---------------------------------------------------------------------------
// Claude Code

/// Where the clients live on this machine; tests build their own.
#[derive(Debug)]
struct Clients {
    desktop_config: Option<PathBuf>,
    /// The user named the Desktop config with `--config`: use it even if
    /// Claude Desktop does not seem to be installed.
    desktop_explicit: bool,
    code: ClaudeCode,
}

impl Clients {
    fn from_process(desktop_config: Option<PathBuf>) -> Self {
        Self {
            desktop_explicit: desktop_config.is_some(),
            desktop_config: desktop_config.or_else(claude_desktop_config_path),
            code: ClaudeCode {
                program: find_program("claude", std::env::var_os("PATH").as_deref()),
                config: claude_code_config_path(),
            },
        }
    }
}

#[derive(Debug)]
struct ClaudeCode {
    /// The `claude` executable, if it is on `PATH`.
    program: Option<PathBuf>,
    /// The file with its user-scope servers, read to skip needless work.
    config: Option<PathBuf>,
}

#[derive(Debug, PartialEq, Eq)]
enum CodeOutcome {
    AlreadyRegistered {
        config: PathBuf,
    },
    Added,
    /// An existing registration was removed and added again with our path.
    Replaced {
        previous: Option<String>,
        /// Settings of the old entry that `claude mcp add` does not recreate.
        dropped: Vec<String>,
    },
    /// No `claude` on PATH: the user should run these.
    Manual {
        commands: Vec<String>,
    },
}

const REMOVE_ARGS: [&str; 5] = ["mcp", "remove", "--scope", "user", SERVER_NAME];

fn add_args(command: &str) -> [&str; 7] {
    ["mcp", "add", "--scope", "user", SERVER_NAME, "--", command]
}

fn add_command_line(command: &str) -> String {
    format!(
        "claude mcp add --scope user {SERVER_NAME} -- {}",
        shell_quote(command)
    )
}

fn remove_command_line() -> String {
    format!("claude {}", REMOVE_ARGS.join(" "))
}

fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/\\._-+:@%=,".contains(c));
    if plain {
        text.to_owned()
    } else if cfg!(windows) {
        format!("\"{text}\"")
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Registers with Claude Code through its own CLI, which owns `~/.claude.json`
/// (a large file it rewrites constantly; we only read it).
fn register_claude_code(code: &ClaudeCode, command: &str) -> anyhow::Result<CodeOutcome> {
    let existing = code.config.as_deref().and_then(|config| {
        let entry = read_server_entry(config).ok().flatten()?;
        Some((config, entry))
    });
    let previous = existing
        .as_ref()
        .and_then(|(_, entry)| entry.get("command"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let (Some((config, _)), Some(previous)) = (&existing, &previous)
        && previous == command
    {
        return Ok(CodeOutcome::AlreadyRegistered {
            config: config.to_path_buf(),
        });
    }

    let Some(program) = &code.program else {
        let mut commands = Vec::new();
        if existing.is_some() {
            commands.push(remove_command_line());
        }
        commands.push(add_command_line(command));
        return Ok(CodeOutcome::Manual { commands });
    };

    if let Some((_, entry)) = &existing {
        let removed = run_claude(program, &REMOVE_ARGS)?;
        let added = run_claude(program, &add_args(command))?;
        if !added.success {
            bail!(claude_failed(command, &added, Some(&removed)));
        }
        return Ok(CodeOutcome::Replaced {
            previous,
            dropped: dropped_settings(entry),
        });
    }

    let added = run_claude(program, &add_args(command))?;
    if added.success {
        return Ok(CodeOutcome::Added);
    }
    if !added.output.to_lowercase().contains("already exists") {
        bail!(claude_failed(command, &added, None));
    }
    // Registered in a file we did not read (or could not parse): replace it,
    // so it surely runs this binary.
    let removed = run_claude(program, &REMOVE_ARGS)?;
    let added = run_claude(program, &add_args(command))?;
    if !added.success {
        bail!(claude_failed(command, &added, Some(&removed)));
    }
    Ok(CodeOutcome::Replaced {
        previous: None,
        dropped: Vec::new(),
    })
}

/// Fields of an old entry, besides its command, that carried settings.
fn dropped_settings(entry: &Value) -> Vec<String> {
    let Value::Object(entry) = entry else {
        return Vec::new();
    };
    entry
        .iter()
        .filter(|(key, value)| {
            let empty = match value {
                Value::Null => true,
                Value::Array(items) => items.is_empty(),
                Value::Object(fields) => fields.is_empty(),
                Value::String(text) => text.is_empty(),
                Value::Bool(_) | Value::Number(_) => false,
            };
            !empty && !matches!(key.as_str(), "command" | "type")
        })
        .map(|(key, _)| key.clone())
        .collect()
}

fn claude_failed(command: &str, failed: &ClaudeRun, removed: Option<&ClaudeRun>) -> String {
    let mut message = format!("`{}` failed", failed.command_line);
    if !failed.output.is_empty() {
        message.push_str(&format!(": {}", failed.output));
    }
    if let Some(removed) = removed.filter(|r| !r.success && !r.output.is_empty()) {
        message.push_str(&format!(
            "\n(before that, `{}` said: {})",
            removed.command_line, removed.output
        ));
    }
    message.push_str(&format!(
        "\nTo register by hand, run: {}",
        add_command_line(command)
    ));
    message
}

#[derive(Debug)]
struct ClaudeRun {
    command_line: String,
    success: bool,
    /// stdout and stderr, trimmed.
    output: String,
}

/// Runs `claude <args>` with no stdin, capturing its output, for at most
/// [`CLAUDE_TIMEOUT`].
fn run_claude(program: &Path, args: &[&str]) -> anyhow::Result<ClaudeRun> {
    let command_line = format!("claude {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?;
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let deadline = Instant::now() + CLAUDE_TIMEOUT;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{command_line}`"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{command_line}` did not finish within {} s; run it yourself to see what it waits for",
                CLAUDE_TIMEOUT.as_secs()
            );
        }
        // Polling another process: there is no portable way to wait with a timeout.
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = [stdout, stderr]
        .into_iter()
        .map(|reader| reader.join().unwrap_or_default())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    Ok(ClaudeRun {
        command_line,
        success: status.success(),
        output,
    })
}

fn read_in_background<R: Read + Send + 'static>(
    pipe: Option<R>,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The first executable `name` in the absolute directories of `path` (a
/// `PATH` value); on Windows, `name` plus one of the `PATHEXT` extensions
/// (npm puts an extensionless shell script next to `claude.cmd`).
fn find_program(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    let extensions: Vec<String> = if cfg!(windows) {
        let pathext = std::env::var("PATHEXT").unwrap_or_else(|_| ".EXE;.CMD;.BAT".to_owned());
        pathext
            .split(';')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect()
    } else {
        vec![String::new()]
    };
    std::env::split_paths(path?)
        .filter(|dir| dir.is_absolute())
        .flat_map(|dir| {
            extensions
                .iter()
                .map(move |ext| dir.join(format!("{name}{ext}")))
        })
        .find(|candidate| {
            fs::metadata(candidate).is_ok_and(|meta| meta.is_file() && is_executable(&meta))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CMD: &str = "/opt/mcp-chat/bin/mcp-chat";

    fn temp() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("mcp-chat-register")
            .tempdir()
            .unwrap()
    }

    const EXISTING: &str = r#"{
  "globalShortcut": "Ctrl+Space",
  "mcpServers": {
    "zeta": {
      "command": "/usr/bin/zeta",
      "args": ["--x"],
      "env": {"B": "2", "A": "1"}
    },
    "alpha": {"command": "npx", "args": ["-y", "alpha-mcp"]}
  },
  "appearance": {"theme": "dark", "accent": 3}
}
"#;

    #[test]
    fn merge_keeps_other_servers_and_keys_in_order() {
        let dir = temp();
        let config = dir.path().join("claude_desktop_config.json");
        fs::write(&config, EXISTING).unwrap();

        let outcome = register_claude_desktop(&config, CMD).unwrap();
        assert_eq!(outcome.change, Change::Added);

        let text = fs::read_to_string(&config).unwrap();
        let root: Value = serde_json::from_str(&text).unwrap();
        let old: Value = serde_json::from_str(EXISTING).unwrap();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        // Every key where it was (needs serde_json's preserve_order).
        assert_eq!(keys(&root), ["globalShortcut", "mcpServers", "appearance"]);
        assert_eq!(keys(&root["mcpServers"]), ["zeta", "alpha", "mcp-chat"]);
        assert_eq!(keys(&root["mcpServers"]["zeta"]["env"]), ["B", "A"]);
        assert_eq!(keys(&root["appearance"]), ["theme", "accent"]);
        // Everything else is unchanged.
        assert_eq!(root["globalShortcut"], old["globalShortcut"]);
        assert_eq!(root["appearance"], old["appearance"]);
        assert_eq!(root["mcpServers"]["zeta"], old["mcpServers"]["zeta"]);
        assert_eq!(root["mcpServers"]["alpha"], old["mcpServers"]["alpha"]);
        assert_eq!(root["mcpServers"]["mcp-chat"], json!({ "command": CMD }));
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn second_run_is_byte_identical_and_already_registered() {
        let dir = temp();
        let config = dir.path().join("claude_desktop_config.json");
        fs::write(&config, EXISTING).unwrap();
        register_claude_desktop(&config, CMD).unwrap();
        let first = fs::read(&config).unwrap();
        let backup = backup_path(&config);
        fs::remove_file(&backup).unwrap();

        let outcome = register_claude_desktop(&config, CMD).unwrap();
        assert_eq!(outcome.change, Change::Unchanged);
        assert_eq!(outcome.backup, None);
        assert_eq!(fs::read(&config).unwrap(), first);
        assert!(!backup.exists(), "no backup when nothing changes");
        // No temp file left behind either.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn malformed_json_is_refused_and_left_untouched() {
        let dir = temp();
        let config = dir.path().join("claude_desktop_config.json");
        let broken = "{\n  \"mcpServers\": {\n    \"a\": {\"command\": \"x\",}\n  }\n}\n";
        fs::write(&config, broken).unwrap();

        let error = register_claude_desktop(&config, CMD).unwrap_err();
        let ConfigError::Malformed { line, .. } = &error else {
            panic!("expected Malformed, got {error:?}");
        };
        assert_eq!(*line, 3);
        let message = error.to_string();
        assert!(message.contains(&config.display().to_string()), "{message}");
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("left unchanged"), "{message}");
        assert_eq!(fs::read_to_string(&config).unwrap(), broken);
        assert!(!backup_path(&config).exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn non_object_config_or_servers_is_refused() {
        let dir = temp();
        let config = dir.path().join("c.json");
        for (text, what) in [
            ("[1, 2]\n", "the top level is an array"),
            ("{\"mcpServers\": [\"x\"]}\n", "\"mcpServers\" is an array"),
            ("{\"mcpServers\": null}\n", "\"mcpServers\" is null"),
        ] {
            fs::write(&config, text).unwrap();
            let error = register_claude_desktop(&config, CMD).unwrap_err();
            assert!(
                matches!(error, ConfigError::NotAnObject { .. }),
                "{error:?}"
            );
            let message = error.to_string();
            assert!(message.contains(what), "{message}");
            assert!(message.contains(&config.display().to_string()), "{message}");
            assert_eq!(fs::read_to_string(&config).unwrap(), text);
        }
    }

    #[test]
    fn backup_holds_the_old_content() {
        let dir = temp();
        let config = dir.path().join("claude_desktop_config.json");
        fs::write(&config, EXISTING).unwrap();

        let outcome = register_claude_desktop(&config, CMD).unwrap();
        let backup = dir.path().join("claude_desktop_config.json.bak");
        assert_eq!(outcome.backup.as_deref(), Some(backup.as_path()));
        assert_eq!(fs::read_to_string(&backup).unwrap(), EXISTING);
    }

    #[test]
    fn missing_file_and_directory_are_created() {
        let dir = temp();
        let config = dir.path().join("Claude").join("claude_desktop_config.json");

        let outcome = register_claude_desktop(&config, CMD).unwrap();
        assert_eq!(outcome.change, Change::Created);
        assert_eq!(outcome.backup, None);
        let root: Value = serde_json::from_slice(&fs::read(&config).unwrap()).unwrap();
        assert_eq!(
            root,
            json!({ "mcpServers": { "mcp-chat": { "command": CMD } } })
        );
        assert!(!backup_path(&config).exists());
        assert_eq!(fs::read_dir(config.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn empty_file_counts_as_empty_object() {
        let dir = temp();
        let config = dir.path().join("c.json");
        fs::write(&config, "\n").unwrap();
        let outcome = register_claude_desktop(&config, CMD).unwrap();
        assert_eq!(outcome.change, Change::Added);
        let root: Value = serde_json::from_slice(&fs::read(&config).unwrap()).unwrap();
        assert_eq!(root["mcpServers"]["mcp-chat"]["command"], CMD);
    }

    #[test]
    fn byte_order_mark_is_accepted_and_kept() {
        let dir = temp();
        let config = dir.path().join("c.json");
        fs::write(&config, "\u{feff}{\"a\": 1}").unwrap();
        register_claude_desktop(&config, CMD).unwrap();
        let text = fs::read_to_string(&config).unwrap();
        let body = text.strip_prefix('\u{feff}').unwrap();
        let root: Value = serde_json::from_str(body).unwrap();
        assert_eq!(root["a"], 1);
        assert_eq!(root["mcpServers"]["mcp-chat"]["command"], CMD);
    }

    #[test]
    fn entry_pointing_elsewhere_is_updated_keeping_its_other_fields() {
        let dir = temp();
        let config = dir.path().join("c.json");
        let old = r#"{"mcpServers": {"mcp-chat": {"command": "/old/mcp-chat", "args": [], "env": {"MCP_CHAT_LOG": "debug"}}, "other": {"command": "o"}}}"#;
        fs::write(&config, old).unwrap();

        let outcome = register_claude_desktop(&config, CMD).unwrap();
        assert_eq!(
            outcome.change,
            Change::Updated {
                previous: Some("/old/mcp-chat".to_owned())
            }
        );
        let root: Value = serde_json::from_slice(&fs::read(&config).unwrap()).unwrap();
        let entry = &root["mcpServers"]["mcp-chat"];
        assert_eq!(
            entry,
            &json!({ "command": CMD, "args": [], "env": { "MCP_CHAT_LOG": "debug" } })
        );
        let keys: Vec<_> = entry.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["command", "args", "env"]);
        assert_eq!(root["mcpServers"]["other"], json!({ "command": "o" }));
        assert_eq!(fs::read_to_string(backup_path(&config)).unwrap(), old);
    }

    #[test]
    fn entry_that_is_not_an_object_is_replaced() {
        let dir = temp();
        let config = dir.path().join("c.json");
        fs::write(&config, r#"{"mcpServers": {"mcp-chat": "/old"}}"#).unwrap();
        let outcome = register_claude_desktop(&config, CMD).unwrap();
        assert_eq!(outcome.change, Change::Updated { previous: None });
        let root: Value = serde_json::from_slice(&fs::read(&config).unwrap()).unwrap();
        assert_eq!(root["mcpServers"]["mcp-chat"], json!({ "command": CMD }));
    }

    #[test]
    fn read_registration_reports_the_command() {
        let dir = temp();
        let config = dir.path().join("c.json");
        assert_eq!(read_registration("claude-desktop", &config).unwrap(), None);

        fs::write(&config, r#"{"other": 1}"#).unwrap();
        assert_eq!(read_registration("claude-desktop", &config).unwrap(), None);

        fs::write(&config, r#"{"mcpServers": {"x": {"command": "y"}}}"#).unwrap();
        assert_eq!(read_registration("claude-desktop", &config).unwrap(), None);

        register_claude_desktop(&config, CMD).unwrap();
        assert_eq!(
            read_registration("claude-desktop", &config).unwrap(),
            Some(Registration {
                client: "claude-desktop",
                config: config.clone(),
                command: Some(PathBuf::from(CMD)),
            })
        );

        fs::write(&config, r#"{"mcpServers": {"mcp-chat": {"args": []}}}"#).unwrap();
        let found = read_registration("claude-code", &config).unwrap().unwrap();
        assert_eq!(found.command, None);
        assert_eq!(found.client, "claude-code");

        fs::write(&config, "{").unwrap();
        assert!(matches!(
            read_registration("claude-desktop", &config),
            Err(ConfigError::Malformed { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_config_is_written_through_and_keeps_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp();
        let real = dir.path().join("dotfiles").join("claude.json");
        fs::create_dir_all(real.parent().unwrap()).unwrap();
        fs::write(&real, "{}").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("claude_desktop_config.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();

        let outcome = register_claude_desktop(&link, CMD).unwrap();
        assert_eq!(outcome.config, fs::canonicalize(&real).unwrap());
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let mode = fs::metadata(&real).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(
            read_registration("claude-desktop", &link)
                .unwrap()
                .unwrap()
                .command,
            Some(PathBuf::from(CMD))
        );
    }

    #[cfg(unix)]
    #[test]
    fn new_config_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp();
        let config = dir.path().join("c.json");
        register_claude_desktop(&config, CMD).unwrap();
        let mode = fs::metadata(&config).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn command_is_made_absolute_and_must_exist() {
        let dir = temp();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let exe = bin.join("mcp-chat");
        fs::write(&exe, "").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let canonical_bin = fs::canonicalize(&bin).unwrap();
        let canonical_bin = without_verbatim_prefix(&canonical_bin).unwrap_or(canonical_bin);

        // `..` and symlinked directories are resolved.
        let roundabout = bin.join("..").join("bin").join("mcp-chat");
        let resolved = resolve_command(Some(&roundabout)).unwrap();
        assert_eq!(Path::new(&resolved), canonical_bin.join("mcp-chat"));
        assert!(Path::new(&resolved).is_absolute());

        let missing = bin.join("nope");
        let error = resolve_command(Some(&missing)).unwrap_err().to_string();
        assert!(error.contains("does not exist"), "{error}");
        assert!(error.contains(&missing.display().to_string()), "{error}");
        let error = resolve_command(Some(&dir.path().join("no/such/dir/mcp-chat")))
            .unwrap_err()
            .to_string();
        assert!(error.contains("does not exist"), "{error}");

        let error = resolve_command(Some(&bin)).unwrap_err().to_string();
        assert!(error.contains("not a file"), "{error}");

        // The default is this executable.
        let own = resolve_command(None).unwrap();
        assert!(Path::new(&own).is_absolute());
    }

    #[cfg(unix)]
    #[test]
    fn command_symlink_in_last_component_is_kept() {
        let dir = temp();
        let target = dir.path().join("mcp-chat-0.1.0");
        fs::write(&target, "").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let link = dir.path().join("mcp-chat");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let resolved = resolve_command(Some(&link)).unwrap();
        assert_eq!(
            Path::new(&resolved),
            fs::canonicalize(dir.path()).unwrap().join("mcp-chat")
        );

        let plain = dir.path().join("not-executable");
        fs::write(&plain, "").unwrap();
        let error = resolve_command(Some(&plain)).unwrap_err().to_string();
        assert!(error.contains("not executable"), "{error}");
    }

    #[test]
    fn verbatim_prefix_is_removed_from_disk_paths_only() {
        assert_eq!(
            without_verbatim_prefix(Path::new(r"\\?\C:\Users\me\mcp-chat.exe")),
            Some(PathBuf::from(r"C:\Users\me\mcp-chat.exe"))
        );
        assert_eq!(
            without_verbatim_prefix(Path::new(r"\\?\UNC\server\share\x.exe")),
            None
        );
        assert_eq!(without_verbatim_prefix(Path::new("/usr/bin/x")), None);
    }

    #[test]
    fn snippet_is_the_mcp_servers_object() {
        let text = snippet(CMD);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({ "mcpServers": { "mcp-chat": { "command": CMD } } })
        );
        assert!(text.contains('\n'), "pretty-printed: {text}");
    }

    #[test]
    fn command_lines_quote_odd_paths() {
        assert_eq!(
            add_command_line(CMD),
            "claude mcp add --scope user mcp-chat -- /opt/mcp-chat/bin/mcp-chat"
        );
        if cfg!(unix) {
            assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
        }
        assert_eq!(
            remove_command_line(),
            "claude mcp remove --scope user mcp-chat"
        );
    }

    #[test]
    fn cli_parses_targets_and_options() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            args: RegisterArgs,
        }
        <Cli as clap::CommandFactory>::command().debug_assert();
        for (word, target) in [
            ("claude-desktop", Target::ClaudeDesktop),
            ("claude-code", Target::ClaudeCode),
            ("print", Target::Print),
            ("all", Target::All),
        ] {
            let cli = Cli::try_parse_from(["register", word]).unwrap();
            assert_eq!(cli.args.target, target);
        }
        let cli = Cli::try_parse_from([
            "register",
            "claude-desktop",
            "--command",
            "/x/mcp-chat",
            "--config",
            "/y/c.json",
        ])
        .unwrap();
        assert_eq!(cli.args.command, Some(PathBuf::from("/x/mcp-chat")));
        assert_eq!(cli.args.config, Some(PathBuf::from("/y/c.json")));
        assert!(Cli::try_parse_from(["register", "cursor"]).is_err());
    }

    #[test]
    fn config_option_is_refused_for_claude_code_and_print() {
        for target in [Target::ClaudeCode, Target::Print] {
            let args = RegisterArgs {
                target,
                command: None,
                config: Some(PathBuf::from("/nonexistent/c.json")),
            };
            let error = run(&args).unwrap_err().to_string();
            assert!(error.contains("--config"), "{error}");
        }
    }

    #[test]
    fn all_with_no_client_found_changes_nothing() {
        let dir = temp();
        let config = dir.path().join("Claude").join("claude_desktop_config.json");
        let clients = Clients {
            desktop_config: Some(config.clone()),
            desktop_explicit: false,
            code: ClaudeCode {
                program: None,
                config: None,
            },
        };
        register_all(&clients, CMD).unwrap();
        assert!(!config.exists());
        assert!(!config.parent().unwrap().exists());
    }

    #[test]
    fn all_registers_desktop_when_its_directory_exists() {
        let dir = temp();
        let config = dir.path().join("Claude").join("claude_desktop_config.json");
        fs::create_dir(config.parent().unwrap()).unwrap();
        let clients = Clients {
            desktop_config: Some(config.clone()),
            desktop_explicit: false,
            code: ClaudeCode {
                program: None,
                config: None,
            },
        };
        register_all(&clients, CMD).unwrap();
        let found = read_registration("claude-desktop", &config)
            .unwrap()
            .unwrap();
        assert_eq!(found.command, Some(PathBuf::from(CMD)));
    }

    #[test]
    fn all_reports_a_malformed_desktop_config_as_an_error() {
        let dir = temp();
        let config = dir.path().join("c.json");
        fs::write(&config, "{oops").unwrap();
        let clients = Clients {
            desktop_config: Some(config.clone()),
            desktop_explicit: true,
            code: ClaudeCode {
                program: None,
                config: None,
            },
        };
        let error = register_all(&clients, CMD).unwrap_err().to_string();
        assert!(error.starts_with("Claude Desktop: "), "{error}");
        assert!(error.contains("line 1"), "{error}");
        assert_eq!(fs::read_to_string(&config).unwrap(), "{oops");
    }

    #[test]
    fn claude_code_without_cli_prints_the_commands() {
        let dir = temp();
        let code = ClaudeCode {
            program: None,
            config: Some(dir.path().join(".claude.json")),
        };
        assert_eq!(
            register_claude_code(&code, CMD).unwrap(),
            CodeOutcome::Manual {
                commands: vec![add_command_line(CMD)]
            }
        );

        fs::write(
            dir.path().join(".claude.json"),
            r#"{"mcpServers": {"mcp-chat": {"command": "/old"}}}"#,
        )
        .unwrap();
        assert_eq!(
            register_claude_code(&code, CMD).unwrap(),
            CodeOutcome::Manual {
                commands: vec![remove_command_line(), add_command_line(CMD)]
            }
        );
    }

    /// A stand-in `claude` that logs its arguments and keeps the registered
    /// state in a file; `mcp add` fails like the real one when it exists.
    #[cfg(unix)]
    struct FakeClaude {
        dir: tempfile::TempDir,
        program: PathBuf,
    }

    #[cfg(unix)]
    impl FakeClaude {
        fn new(extra: &str) -> Self {
            let dir = temp();
            let program = dir.path().join("claude");
            let d = dir.path().display();
            let script = format!(
                "#!/bin/sh\n\
                 printf '%s\\n' \"$*\" >> '{d}/calls'\n\
                 {extra}\n\
                 case \"$2\" in\n\
                 add) if [ -e '{d}/registered' ]; then\n\
                   echo 'MCP server mcp-chat already exists in user config' >&2; exit 1; fi\n\
                   echo \"$7\" > '{d}/registered'; echo 'Added stdio MCP server mcp-chat';;\n\
                 remove) rm -f '{d}/registered'; echo 'Removed MCP server mcp-chat';;\n\
                 esac\n"
            );
            // Written by a child process: an executable we held open for
            // writing while another test thread forks could fail to exec
            // with ETXTBSY.
            let status = Command::new("sh")
                .args(["-c", "printf '%s' \"$1\" > \"$2\" && chmod 755 \"$2\""])
                .args(["sh", &script])
                .arg(&program)
                .status()
                .unwrap();
            assert!(status.success());
            Self { dir, program }
        }

        fn code(&self) -> ClaudeCode {
            ClaudeCode {
                program: Some(self.program.clone()),
                config: Some(self.dir.path().join(".claude.json")),
            }
        }

        fn calls(&self) -> Vec<String> {
            fs::read_to_string(self.dir.path().join("calls"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        }

        fn registered(&self) -> Option<String> {
            fs::read_to_string(self.dir.path().join("registered"))
                .ok()
                .map(|s| s.trim().to_owned())
        }
    }

    #[cfg(unix)]
    const ADD_CALL: &str = "mcp add --scope user mcp-chat -- /opt/mcp-chat/bin/mcp-chat";
    #[cfg(unix)]
    const REMOVE_CALL: &str = "mcp remove --scope user mcp-chat";

    #[cfg(unix)]
    #[test]
    fn claude_code_is_registered_through_the_cli() {
        let claude = FakeClaude::new("");
        assert_eq!(
            register_claude_code(&claude.code(), CMD).unwrap(),
            CodeOutcome::Added
        );
        assert_eq!(claude.calls(), [ADD_CALL]);
        assert_eq!(claude.registered().as_deref(), Some(CMD));
    }

    #[cfg(unix)]
    #[test]
    fn claude_code_already_exists_is_replaced() {
        let claude = FakeClaude::new("");
        fs::write(claude.dir.path().join("registered"), "/somewhere/else").unwrap();
        assert_eq!(
            register_claude_code(&claude.code(), CMD).unwrap(),
            CodeOutcome::Replaced {
                previous: None,
                dropped: Vec::new()
            }
        );
        assert_eq!(claude.calls(), [ADD_CALL, REMOVE_CALL, ADD_CALL]);
        assert_eq!(claude.registered().as_deref(), Some(CMD));
    }

    #[cfg(unix)]
    #[test]
    fn claude_code_entry_pointing_elsewhere_is_replaced() {
        let claude = FakeClaude::new("");
        fs::write(claude.dir.path().join("registered"), "/old").unwrap();
        fs::write(
            claude.dir.path().join(".claude.json"),
            r#"{"numStartups": 3, "mcpServers": {"mcp-chat": {"type": "stdio", "command": "/old", "args": [], "env": {"K": "v"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            register_claude_code(&claude.code(), CMD).unwrap(),
            CodeOutcome::Replaced {
                previous: Some("/old".to_owned()),
                dropped: vec!["env".to_owned()]
            }
        );
        assert_eq!(claude.calls(), [REMOVE_CALL, ADD_CALL]);
        assert_eq!(claude.registered().as_deref(), Some(CMD));
    }

    #[cfg(unix)]
    #[test]
    fn claude_code_already_registered_does_not_run_claude() {
        let claude = FakeClaude::new("");
        let config = claude.dir.path().join(".claude.json");
        fs::write(
            &config,
            format!(r#"{{"mcpServers": {{"mcp-chat": {{"type": "stdio", "command": "{CMD}"}}}}}}"#),
        )
        .unwrap();
        assert_eq!(
            register_claude_code(&claude.code(), CMD).unwrap(),
            CodeOutcome::AlreadyRegistered { config }
        );
        assert!(claude.calls().is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn claude_code_failure_is_reported_with_its_output() {
        let claude = FakeClaude::new("echo 'Error: config is locked' >&2; exit 3");
        let error = register_claude_code(&claude.code(), CMD)
            .unwrap_err()
            .to_string();
        assert!(error.contains("config is locked"), "{error}");
        assert!(error.contains(&add_command_line(CMD)), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn find_program_needs_an_executable_file_in_an_absolute_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp();
        let exe = dir.path().join("claude");
        fs::write(&exe, "").unwrap();
        let path = std::env::join_paths([Path::new("relative"), dir.path()]).unwrap();
        assert_eq!(find_program("claude", Some(&path)), None, "not executable");
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_program("claude", Some(&path)), Some(exe));
        assert_eq!(find_program("claude", None), None);
        assert_eq!(find_program("nope", Some(&path)), None);
    }
}
