use super::*;
use crate::cli::register::test_support::{CMD, temp};

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
             add-json) if [ -e '{d}/registered' ]; then\n\
               echo 'MCP server mcp-chat already exists in user config' >&2; exit 1; fi\n\
               echo \"$6\" > '{d}/registered'; echo 'Added stdio MCP server mcp-chat';;\n\
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
fn claude_code_entry_we_cannot_see_is_left_alone() {
    let claude = FakeClaude::new("");
    fs::write(claude.dir.path().join("registered"), "/somewhere/else").unwrap();
    let error = register_claude_code(&claude.code(), CMD)
        .unwrap_err()
        .to_string();
    assert!(error.contains("left as it is"), "{error}");
    assert!(error.contains(&remove_command_line()), "{error}");
    assert!(error.contains(&add_command_line(CMD)), "{error}");
    // Never removed: we could not have put it back.
    assert_eq!(claude.calls(), [ADD_CALL]);
    assert_eq!(claude.registered().as_deref(), Some("/somewhere/else"));
}

#[cfg(unix)]
#[test]
fn claude_code_entry_that_appears_meanwhile_is_replaced() {
    // Claude Code writes the entry into its config after we looked.
    let claude = FakeClaude::new(
        "[ -e \"$(dirname \"$0\")/.claude.json\" ] || \
         printf '%s' '{\"mcpServers\": {\"mcp-chat\": {\"command\": \"/else\"}}}' \
         > \"$(dirname \"$0\")/.claude.json\"",
    );
    fs::write(claude.dir.path().join("registered"), "/else").unwrap();
    assert_eq!(
        register_claude_code(&claude.code(), CMD).unwrap(),
        CodeOutcome::Replaced {
            previous: Some("/else".to_owned()),
            dropped: Vec::new()
        }
    );
    assert_eq!(claude.calls(), [ADD_CALL, REMOVE_CALL, ADD_CALL]);
    assert_eq!(claude.registered().as_deref(), Some(CMD));
}

/// An entry whose replacement `claude mcp add` refuses, in a config file.
#[cfg(unix)]
fn entry_whose_add_fails(extra: &str) -> (FakeClaude, &'static str) {
    const OLD: &str = r#"{"type":"stdio","command":"/old","args":["-x"],"env":{"K":"v"}}"#;
    let claude = FakeClaude::new(extra);
    fs::write(claude.dir.path().join("registered"), OLD).unwrap();
    fs::write(
        claude.dir.path().join(".claude.json"),
        format!(r#"{{"numStartups": 3, "mcpServers": {{"mcp-chat": {OLD}}}}}"#),
    )
    .unwrap();
    (claude, OLD)
}

#[cfg(unix)]
#[test]
fn a_failed_replace_puts_the_old_entry_back() {
    let (claude, old) =
        entry_whose_add_fails("[ \"$2\" = add ] && { echo 'Error: disk full' >&2; exit 1; }");
    let error = register_claude_code(&claude.code(), CMD)
        .unwrap_err()
        .to_string();
    assert!(error.contains("disk full"), "{error}");
    assert!(error.contains("put back as it was"), "{error}");
    assert_eq!(
        claude.calls(),
        [
            REMOVE_CALL.to_owned(),
            ADD_CALL.to_owned(),
            format!("mcp add-json --scope user mcp-chat {old}")
        ]
    );
    // Exactly the old entry, env and all.
    let restored: Value = serde_json::from_str(&claude.registered().unwrap()).unwrap();
    assert_eq!(restored, serde_json::from_str::<Value>(old).unwrap());
}

#[cfg(unix)]
#[test]
fn a_failed_restore_says_how_to_restore_by_hand() {
    let (claude, old) = entry_whose_add_fails(
        "case \"$2\" in add|add-json) echo 'Error: disk full' >&2; exit 1;; esac",
    );
    let error = register_claude_code(&claude.code(), CMD)
        .unwrap_err()
        .to_string();
    assert!(error.contains("failed too"), "{error}");
    assert!(
        error.contains(&format!(
            "claude mcp add-json --scope user mcp-chat '{old}'"
        )),
        "{error}"
    );
    assert!(error.contains(&add_command_line(CMD)), "{error}");
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
