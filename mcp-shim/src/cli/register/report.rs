//! What `register` tells the user about each client.

use std::fmt::Display;
use std::path::Path;

use serde_json::json;

use super::SERVER_NAME;
use super::claude_code::{CLAUDE_CHANNELS_COMMAND, ClaudeCode, CodeOutcome, register_claude_code};
use super::desktop::{Change, register_claude_desktop};

/// Every line of human output goes through here. `register` never runs as the
/// MCP server, so stdout is free.
pub(super) fn say(text: impl Display) {
    println!("{text}"); // stdout-ok
}

pub(super) fn snippet(command: &str) -> String {
    let value = json!({ "mcpServers": { SERVER_NAME: { "command": command } } });
    serde_json::to_string_pretty(&value).expect("a serde_json::Value always serializes")
}

pub(super) fn register_desktop_and_report(config: &Path, command: &str) -> anyhow::Result<()> {
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

pub(super) fn register_code_and_report(code: &ClaudeCode, command: &str) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::cli::register::test_support::CMD;

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
}
