//! Claude Code: registered through its own `claude` CLI.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use super::SERVER_NAME;
use super::command_path::is_executable;
use super::config_file::read_server_entry;

/// How to start Claude Code so that it shows mcp-chat's pushed events
/// (channel notifications) to the model as they arrive.
pub const CLAUDE_CHANNELS_COMMAND: &str =
    "claude --dangerously-load-development-channels server:mcp-chat";

/// `claude mcp …` only edits a JSON file; if it takes longer than this it is
/// waiting for something (a prompt, a lock) and we stop waiting with it.
const CLAUDE_TIMEOUT: Duration = Duration::from_secs(60);

/// The file holding Claude Code's user-scope servers (top-level
/// `mcpServers`): `$CLAUDE_CONFIG_DIR/.claude.json`, else `~/.claude.json`.
pub fn claude_code_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CLAUDE_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join(".claude.json"));
    }
    let dirs = directories::BaseDirs::new()?;
    Some(dirs.home_dir().join(".claude.json"))
}

#[derive(Debug)]
pub(super) struct ClaudeCode {
    /// The `claude` executable, if it is on `PATH`.
    pub(super) program: Option<PathBuf>,
    /// The file with its user-scope servers, read to skip needless work.
    pub(super) config: Option<PathBuf>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum CodeOutcome {
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

pub(super) fn add_command_line(command: &str) -> String {
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
pub(super) fn register_claude_code(
    code: &ClaudeCode,
    command: &str,
) -> anyhow::Result<CodeOutcome> {
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
        replace(program, command, entry)?;
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
    // Registered after we looked (Claude Code rewrites its file all the
    // time): look again, so the entry can be put back if the add fails.
    let entry = code
        .config
        .as_deref()
        .and_then(|config| read_server_entry(config).ok().flatten());
    let Some(entry) = entry else {
        // Not in the file we read (or it cannot be read): removing it could
        // lose settings we could not put back.
        bail!(
            "`claude` says {SERVER_NAME} is already registered, but its entry is not in {}, \
             so it was left as it is. To replace it, run:\n  {}\n  {}",
            code.config.as_deref().map_or_else(
                || "Claude Code's config".to_owned(),
                |c| c.display().to_string()
            ),
            remove_command_line(),
            add_command_line(command)
        );
    };
    let previous = entry
        .get("command")
        .and_then(Value::as_str)
        .map(str::to_owned);
    replace(program, command, &entry)?;
    Ok(CodeOutcome::Replaced {
        previous,
        dropped: dropped_settings(&entry),
    })
}

/// `claude mcp` has no way to replace an entry in one step, so this removes
/// the old one and adds ours. If the add fails, the old entry (exactly as
/// it was in the config, `env` and all) is put back with `claude mcp
/// add-json`, so a failed replace never leaves mcp-chat unregistered.
fn replace(program: &Path, command: &str, old_entry: &Value) -> anyhow::Result<()> {
    let removed = run_claude(program, &REMOVE_ARGS)?;
    let added = run_claude(program, &add_args(command))?;
    if added.success {
        return Ok(());
    }
    let mut message = claude_failed(command, &added, Some(&removed));
    if !removed.success {
        // Nothing was removed, so nothing needs putting back.
        bail!(message);
    }
    let old_json = old_entry.to_string();
    let restore_args = ["mcp", "add-json", "--scope", "user", SERVER_NAME, &old_json];
    match run_claude(program, &restore_args) {
        Ok(restored) if restored.success => {
            message.push_str("\nThe previous registration was put back as it was.");
        }
        outcome => {
            let why = match outcome {
                Ok(run) => run.output,
                Err(error) => format!("{error:#}"),
            };
            message.push_str(&format!(
                "\nPutting the previous registration back failed too ({why}); \
                 to restore it, run: claude mcp add-json --scope user {SERVER_NAME} {}",
                shell_quote(&old_json)
            ));
        }
    }
    bail!(message)
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
pub(super) fn find_program(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
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
mod tests;
