//! `mcp-chat web`: the chat page in your browser. Runs the `serve --http`
//! server on a free loopback port (so it needs no token where the OS names
//! each connection's owner), prints the page's address, and opens it with
//! the platform's opener unless told not to.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use mcp_chat_proto::socket_path::prepare_socket_dir;
use std::process::{Command, Stdio};

use crate::http::{self, DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_TIMEOUT_S, ServeArgs};

/// `mcp-chat web` options.
#[derive(Debug, Clone, clap::Args)]
pub struct WebArgs {
    /// Print the address only; do not open a browser.
    #[arg(long)]
    pub no_open: bool,
    /// The loopback port to serve on (default: a free one).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub port: u16,
}

pub fn run(args: &WebArgs, socket: &Path) -> anyhow::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let serve = ServeArgs {
        http: Some(addr),
        token: None,
        token_file: None,
        session_timeout: DEFAULT_SESSION_TIMEOUT_S,
        max_sessions: DEFAULT_MAX_SESSIONS,
    };
    let open = !args.no_open;
    let socket = socket.to_owned();
    http::run_then(&serve, addr, socket.clone(), |url| {
        // Whoever started us may have stopped reading (a closed pipe):
        // the server goes on serving the page all the same.
        let mut out = std::io::stdout().lock(); // stdout-ok: `mcp-chat web`, a human subcommand
        let _ = writeln!(out, "mcp-chat: the chat page is at {url}");
        let _ = writeln!(out, "mcp-chat: press Ctrl-C to stop");
        let _ = out.flush();
        drop(out);
        if open {
            match open_target(url, &socket) {
                Ok(target) => open_in_browser(&target),
                Err(e) => eprintln!(
                    "mcp-chat: could not write the page's redirect file ({e}); open the address above yourself"
                ),
            }
        }
    })
}

/// The file a page address with a token is opened through, beside the
/// broker socket (a directory only this user can enter).
const REDIRECT_FILE: &str = "page-open.html";

/// What the opener is given: the address itself, or, when the address
/// carries the token, a private file that sends the browser on to it. A
/// command line is visible to every user of the machine (`ps`), and the
/// token is what keeps them out; Jupyter opens its pages the same way.
fn open_target(url: &str, socket: &Path) -> std::io::Result<OsString> {
    if !url.contains("#token=") {
        return Ok(url.into());
    }
    prepare_socket_dir(socket).map_err(std::io::Error::other)?;
    let path = socket.with_file_name(REDIRECT_FILE);
    // A file left by an earlier run holds an old address; never write
    // through whatever may have been put in its place.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path)?;
    let href = html_attribute(url);
    writeln!(
        file,
        "<!doctype html><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
         <meta http-equiv=\"refresh\" content=\"0;url={href}\"><title>mcp-chat</title>\
         <p><a href=\"{href}\">Open the mcp-chat page</a></p>"
    )?;
    Ok(path.into_os_string())
}

/// `text` safe inside a double-quoted HTML attribute.
fn html_attribute(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Hands `target` to the platform's opener, without waiting for it; if
/// there is none, the printed address is the way in.
fn open_in_browser(target: &OsStr) {
    // The desktop's own "open this" command on each platform.
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(windows) {
        "explorer"
    } else {
        "xdg-open"
    };
    let mut command = Command::new(opener);
    let spawned = command
        .arg(target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        // Reaped in the background so it leaves no zombie behind.
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
        }
        Err(e) => eprintln!(
            "mcp-chat: could not start {opener} to open a browser ({e}); open the address above yourself"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_address_is_opened_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sock").join("broker.sock");
        let url = "http://127.0.0.1:8931/";
        assert_eq!(open_target(url, &socket).unwrap(), OsString::from(url));
        assert!(!socket.with_file_name(REDIRECT_FILE).exists());
    }

    #[test]
    fn an_address_with_a_token_is_opened_through_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sock").join("broker.sock");
        let url = "http://127.0.0.1:8931/#token=a%22b%3Cc";
        for _ in 0..2 {
            let target = open_target(url, &socket).unwrap();
            assert!(!target.to_string_lossy().contains("token"), "{target:?}");
            let html = std::fs::read_to_string(&target).unwrap();
            assert!(
                html.contains("url=http://127.0.0.1:8931/#token=a%22b%3Cc\""),
                "{html}"
            );
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&target).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
        assert_eq!(html_attribute("a\"<&>"), "a&quot;&lt;&amp;&gt;");
    }
}
