//! `mcp-chat web`: the chat page in your browser. Runs the `serve --http`
//! server on a free loopback port (so it needs no token where the OS names
//! each connection's owner), prints the page's address, and opens it with
//! the platform's opener unless told not to.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
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
    http::run_then(&serve, addr, socket.to_owned(), |url| {
        // Whoever started us may have stopped reading (a closed pipe):
        // the server goes on serving the page all the same.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "mcp-chat: the chat page is at {url}");
        let _ = writeln!(out, "mcp-chat: press Ctrl-C to stop");
        let _ = out.flush();
        drop(out);
        if open {
            open_in_browser(url);
        }
    })
}

/// Hands `url` to the platform's opener, without waiting for it; if there
/// is none, the printed address is the way in.
fn open_in_browser(url: &str) {
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
        .arg(url)
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
