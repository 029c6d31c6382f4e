//! Running a script of the interop suite (Python, Node) to its end.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Runs `command` to its end within `limit` and returns its stdout; a
/// failure, or a run past `limit`, fails the test with both outputs. The
/// script runs in a process group of its own, so a hung run takes what it
/// started (servers, a browser) down with it.
pub async fn run_script(mut command: Command, what: &str, limit: Duration) -> String {
    let child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {what}: {e}"));
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw);
    let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for {what}: {e}")),
        Err(_) => {
            if let Some(group) = group {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            panic!("{what} did not finish within {limit:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    eprintln!("{stdout}");
    stdout
}
