//! `mcp-chat register <target>`: tells an MCP client how to launch mcp-chat.
//!
//! - `claude-desktop` merges `mcpServers["mcp-chat"] = {"command": "<absolute
//!   path>"}` into `claude_desktop_config.json`, leaving every other key and
//!   server as it was (`desktop` says how the file is kept safe).
//! - `claude-code` runs `claude mcp add --scope user mcp-chat -- <path>` when
//!   `claude` is on `PATH`, and prints that command otherwise.
//! - `print` prints the JSON snippet for any other client.
//! - `all` does the first two for whichever clients are installed here.
//!
//! [`registered_clients`] reads the same files back for `mcp-chat doctor`.
//!
//! `command_path` checks the binary being registered, `config_file` reads
//! either client's JSON, and `report` tells the user what happened.

mod claude_code;
mod command_path;
mod config_file;
mod desktop;
mod report;
#[cfg(test)]
mod test_support;

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

pub use claude_code::{CLAUDE_CHANNELS_COMMAND, claude_code_config_path};
pub use config_file::ConfigError;
pub use desktop::{Change, DesktopOutcome, claude_desktop_config_path, register_claude_desktop};

use claude_code::{ClaudeCode, add_command_line, find_program};
use command_path::resolve_command;
use config_file::read_server_entry;
use report::{register_code_and_report, register_desktop_and_report, say, snippet};

/// The name under which mcp-chat appears in every client's server list.
pub const SERVER_NAME: &str = "mcp-chat";

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

/// A client that does not seem to be installed is skipped rather than set up,
/// so `all` never leaves a config behind for an app this machine lacks. One
/// client failing does not stop the other; the errors are returned together.
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::test_support::{CMD, temp};
    use super::*;

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

    /// Clients as `register all` sees them with Claude Code absent.
    fn desktop_only(config: &std::path::Path, explicit: bool) -> Clients {
        Clients {
            desktop_config: Some(config.to_owned()),
            desktop_explicit: explicit,
            code: ClaudeCode {
                program: None,
                config: None,
            },
        }
    }

    #[test]
    fn all_with_no_client_found_changes_nothing() {
        let dir = temp();
        let config = dir.path().join("Claude").join("claude_desktop_config.json");
        let clients = desktop_only(&config, false);
        register_all(&clients, CMD).unwrap();
        assert!(!config.exists());
        assert!(!config.parent().unwrap().exists());
    }

    #[test]
    fn all_registers_desktop_when_its_directory_exists() {
        let dir = temp();
        let config = dir.path().join("Claude").join("claude_desktop_config.json");
        fs::create_dir(config.parent().unwrap()).unwrap();
        let clients = desktop_only(&config, false);
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
        let clients = desktop_only(&config, true);
        let error = register_all(&clients, CMD).unwrap_err().to_string();
        assert!(error.starts_with("Claude Desktop: "), "{error}");
        assert!(error.contains("line 1"), "{error}");
        assert_eq!(fs::read_to_string(&config).unwrap(), "{oops");
    }
}
