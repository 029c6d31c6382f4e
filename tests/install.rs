//! `install.sh` end to end: installs both binaries into a temporary prefix
//! and runs them.
//!
//! Self-contained:
//! - `--prefix <tempdir>` keeps `~/.cargo/bin` untouched, and
//!   `--no-register` keeps every client config untouched.
//! - The script ends with `mcp-chat doctor`, which starts a broker if none
//!   runs. It gets `MCP_CHAT_SOCKET` inside a fresh temp dir, so it can
//!   neither see nor disturb the user's real broker, and [`StopBroker`] ends
//!   the one it started (the pid is in `broker.lock` next to the socket)
//!   rather than leaving it to its idle timeout.
//! - `cargo install --path` builds in the workspace's target dir, and the
//!   `cargo test`/`nextest` run that started this test may still hold that
//!   dir's lock. `CARGO_TARGET_DIR` points the release build at
//!   `target/install-e2e` instead: it does not block on that lock or touch the
//!   debug artifacts, and it is kept between runs, so only the first run pays
//!   for a full release build (a few minutes; later runs take seconds).
//!
//! Unix only: the script is bash.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

use mcp_chat_tests::repo_root;

/// `target/install-e2e` of the target dir this test binary was built in
/// (`target/<profile>/deps/<test>-<hash>`).
fn install_target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test binary lives in target/<profile>/deps");
    target.join("install-e2e")
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

/// On drop, sends SIGTERM to the broker that holds the lock next to
/// `socket`, if one does: only a broker this test started can be there.
struct StopBroker {
    socket: PathBuf,
}

impl Drop for StopBroker {
    fn drop(&mut self) {
        let lock = self.socket.with_file_name("broker.lock");
        let Some(pid) = std::fs::read_to_string(lock)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
        else {
            return;
        };
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
}

fn describe(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn install_script_installs_both_binaries_into_the_prefix() {
    let prefix = temp_dir("mcp-chat-install");
    let runtime = temp_dir("mcp-chat-install-sock");
    let socket = runtime.path().join("sock").join("broker.sock");
    let _stop = StopBroker {
        socket: socket.clone(),
    };

    let output = Command::new("bash")
        .arg("./install.sh")
        .arg("--prefix")
        .arg(prefix.path())
        .arg("--no-register")
        .current_dir(repo_root())
        .env("MCP_CHAT_SOCKET", &socket)
        .env("CARGO_TARGET_DIR", install_target_dir())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "install.sh failed\n{}",
        describe(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let bin = prefix.path().join("bin");
    assert!(
        stdout.contains(&bin.display().to_string()),
        "install.sh should say where the binaries went\n{}",
        describe(&output)
    );

    for name in ["mcp-chat", "mcp-chat-broker"] {
        let path = bin.join(name);
        assert!(
            path.is_file(),
            "{} is missing\n{}",
            path.display(),
            describe(&output)
        );
        let version = Command::new(&path)
            .arg("--version")
            .env("MCP_CHAT_SOCKET", &socket)
            .output()
            .unwrap();
        assert!(
            version.status.success(),
            "{name} --version\n{}",
            describe(&version)
        );
        let text = String::from_utf8_lossy(&version.stdout);
        assert!(
            text.contains(env!("CARGO_PKG_VERSION")),
            "{name} --version should print the workspace version\n{}",
            describe(&version)
        );
    }
}

#[test]
fn install_script_without_cargo_points_at_rustup() {
    // A PATH with the tools the script needs before its cargo check, and no
    // cargo; HOME and CARGO_HOME empty so ~/.cargo/bin/cargo is not found either.
    let tools = temp_dir("mcp-chat-install-tools");
    let home = temp_dir("mcp-chat-install-home");
    for tool in ["bash", "dirname", "uname", "cat"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
            .unwrap_or_else(|| panic!("{tool} not on PATH"));
        std::os::unix::fs::symlink(found, tools.path().join(tool)).unwrap();
    }

    let output = Command::new(tools.path().join("bash"))
        .arg(repo_root().join("install.sh"))
        .arg("--no-register")
        .current_dir(home.path())
        .env("PATH", tools.path())
        .env("HOME", home.path())
        .env("CARGO_HOME", home.path().join(".cargo"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("https://rustup.rs"),
        "{}",
        describe(&output)
    );
}

#[test]
fn install_script_help_and_bad_options() {
    let help = Command::new("bash")
        .arg(repo_root().join("install.sh"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success(), "{}", describe(&help));
    let text = String::from_utf8_lossy(&help.stdout);
    for word in ["--prefix", "--no-register", "Usage"] {
        assert!(text.contains(word), "{}", describe(&help));
    }

    let bad = Command::new("bash")
        .arg(repo_root().join("install.sh"))
        .arg("--frobnicate")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
}
