use super::*;
use crate::cli::register::read_registration;
use crate::cli::register::test_support::{CMD, temp};

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
    let backup = backup_path(&config, 0);
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
    assert!(!backup_path(&config, 0).exists());
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
fn the_first_backup_is_kept_and_later_ones_are_numbered() {
    let dir = temp();
    let config = dir.path().join("c.json");
    fs::write(&config, EXISTING).unwrap();
    let outcome = register_claude_desktop(&config, "/first/mcp-chat").unwrap();
    assert_eq!(outcome.backup, Some(backup_path(&config, 0)));
    let after_first = fs::read(&config).unwrap();

    let outcome = register_claude_desktop(&config, "/second/mcp-chat").unwrap();
    let first_numbered = dir.path().join("c.json.bak.1");
    assert_eq!(backup_path(&config, 1), first_numbered);
    assert_eq!(outcome.backup.as_deref(), Some(first_numbered.as_path()));
    assert_eq!(fs::read(&first_numbered).unwrap(), after_first);
    let after_second = fs::read(&config).unwrap();

    // Nothing to change: no new backup.
    register_claude_desktop(&config, "/second/mcp-chat").unwrap();
    register_claude_desktop(&config, CMD).unwrap();
    assert_eq!(fs::read(backup_path(&config, 2)).unwrap(), after_second);
    // The user's own config is still the first backup.
    assert_eq!(
        fs::read_to_string(backup_path(&config, 0)).unwrap(),
        EXISTING
    );
    assert!(!backup_path(&config, 3).exists());
}

#[test]
fn a_change_made_while_registering_is_merged_not_lost() {
    let dir = temp();
    let config = dir.path().join("c.json");
    fs::write(&config, EXISTING).unwrap();
    let edited = EXISTING.replace(
        "\"globalShortcut\"",
        "\"newSetting\": true,\n  \"globalShortcut\"",
    );
    let mut edits = 0;
    let outcome = register_with_hook(&config, CMD, &mut |path| {
        // The client saves its config once, between our read and our write.
        if edits == 0 {
            fs::write(path, &edited).unwrap();
        }
        edits += 1;
    })
    .unwrap();
    assert_eq!(
        edits, 2,
        "merged twice: before and after the client's change"
    );
    assert_eq!(outcome.change, Change::Added);
    let root: Value = serde_json::from_slice(&fs::read(&config).unwrap()).unwrap();
    assert_eq!(root["newSetting"], true, "the client's change is kept");
    assert_eq!(root["mcpServers"]["mcp-chat"]["command"], CMD);
    // The backup holds what was replaced: the client's version.
    assert_eq!(fs::read_to_string(backup_path(&config, 0)).unwrap(), edited);
    assert!(!backup_path(&config, 1).exists());
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        2,
        "no temp file left"
    );
}

#[test]
fn a_file_that_never_stops_changing_is_left_alone() {
    let dir = temp();
    let config = dir.path().join("c.json");
    fs::write(&config, "{}").unwrap();
    let mut edits = 0;
    let error = register_with_hook(&config, CMD, &mut |path| {
        edits += 1;
        fs::write(path, format!("{{\"edit\": {edits}}}")).unwrap();
    })
    .unwrap_err();
    assert!(
        matches!(error, ConfigError::KeptChanging { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("run this again"), "{error}");
    assert_eq!(edits, MAX_ATTEMPTS);
    // The client's last version, untouched; no backup or temp file left.
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        format!("{{\"edit\": {edits}}}")
    );
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
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
    assert!(!backup_path(&config, 0).exists());
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
    assert_eq!(fs::read_to_string(backup_path(&config, 0)).unwrap(), old);
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
