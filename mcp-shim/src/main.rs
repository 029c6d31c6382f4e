//! `mcp-chat`: with no arguments, the stdio MCP server; otherwise one of the
//! human subcommands.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mcp_chat_proto::socket_path::default_socket_path;
use mcp_chat_shim::ChatServer;
use mcp_chat_shim::cli::{self, register};
use rmcp::ServiceExt;
use tracing_subscriber::EnvFilter;

/// Chat roulette for AI agents and people.
///
/// Run with no arguments, `mcp-chat` is a stdio MCP server: register it with
/// your MCP client (`mcp-chat register claude-desktop`, `claude-code` or
/// `print`) and the client starts it. All sessions on this machine meet
/// through one background broker, started on demand.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve MCP over stdio (the default; what MCP clients run), or over
    /// Streamable HTTP with `--http ADDR`.
    Serve(mcp_chat_shim::http::ServeArgs),
    /// Chat yourself: join the roulette from this terminal (or a script).
    Join(cli::join::JoinArgs),
    /// Chat yourself in your browser: serve the chat page on a free
    /// loopback port, print its address and open it.
    Web(cli::web::WebArgs),
    /// Show the running broker: pid, version, uptime, sessions, rooms.
    /// Never starts a broker.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check the installation end to end and say how to fix what is wrong.
    Doctor,
    /// Register mcp-chat with an MCP client.
    Register(register::RegisterArgs),
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A person reads this: the chain of causes, no backtrace.
            eprintln!("mcp-chat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    // Logs never touch stdout: in MCP mode it is the protocol channel.
    init_stderr_logging();
    let Some(command) = args.command else {
        return serve_stdio();
    };
    let socket = default_socket_path();
    match command {
        Command::Serve(serve) => match serve.http {
            Some(addr) => mcp_chat_shim::http::run(&serve, addr, socket),
            None => serve_stdio(),
        },
        Command::Register(register_args) => register::run(&register_args),
        Command::Join(join_args) => block_on(cli::join::run(&socket, join_args)),
        Command::Web(web) => cli::web::run(&web, &socket),
        Command::Status { json } => block_on(cli::status::run(&socket, json)),
        Command::Doctor => block_on(cli::doctor::run(&socket)),
    }
}

fn block_on(job: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(job)
}

/// Logs to stderr only, warnings by default (`MCP_CHAT_LOG` overrides).
fn init_stderr_logging() {
    let filter = EnvFilter::try_from_env("MCP_CHAT_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn serve_stdio() -> anyhow::Result<()> {
    if std::io::stdin().is_terminal() {
        eprintln!(
            "mcp-chat {}: an MCP server speaking JSON-RPC on stdin/stdout. It is meant to be started by an MCP client:\n  mcp-chat register claude-desktop | claude-code | print\nTo chat yourself, run `mcp-chat join`. Serving on this terminal anyway; press Ctrl-D to quit.",
            mcp_chat_shim::VERSION
        );
    }
    // One thread: a shim serves one client, and every extra thread hop shows
    // up in the end-to-end latency (BENCHMARKS.md).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let server = ChatServer::new(default_socket_path())
            .with_block_id(mcp_chat_shim::identity::installation_id());
        let running = match server.serve(rmcp::transport::stdio_pipes()).await {
            Ok(running) => running,
            // Input ended before any client spoke (Ctrl-D in a terminal):
            // nothing went wrong.
            Err(rmcp::service::ServerInitializeError::ConnectionClosed(_)) => return Ok(()),
            Err(e) => return Err(e).context("MCP handshake with the client"),
        };
        let reason = running.waiting().await.context("serving MCP")?;
        tracing::debug!(?reason, "client closed the session");
        anyhow::Ok(())
    });
    // Do not linger on tasks still blocked on the broker: the client is gone,
    // and exiting closes our broker connection so the partner is told.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}
