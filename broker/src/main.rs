//! `mcp-chat-broker`: the daemon binary. Everything testable is in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mcp_chat_broker::config::{Liveness, SendLimit};
use mcp_chat_broker::log_file::{self, LogFile, prepare_state_dir};
use mcp_chat_broker::log_path;
use mcp_chat_broker::{BoundListener, Config};
use mcp_chat_proto::socket_path::{SocketEnv, prepare_socket_dir};
use tracing_subscriber::EnvFilter;

/// The mcp-chat broker: holds the waiting queue and the chat rooms for every
/// `mcp-chat` process of this user, on a private local socket.
///
/// You rarely start it yourself: `mcp-chat` starts it on demand and it exits
/// when idle. Run `mcp-chat-broker --foreground -v` to watch it work.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Stay attached to the terminal, log to stderr, run until Ctrl-C.
    #[arg(long)]
    foreground: bool,
    /// Socket to listen on [default: $MCP_CHAT_SOCKET, else
    /// $XDG_RUNTIME_DIR/mcp-chat/broker.sock, else /tmp/mcp-chat-UID/broker.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Exit after this many seconds with no sessions (0 = never) [default: 600,
    /// or never with --foreground].
    #[arg(long, value_name = "SECS")]
    idle_exit: Option<u64>,
    /// Refuse connections beyond this many sessions. Lowered at start to what
    /// the file-descriptor limit allows, after raising the soft limit as far
    /// as the hard one.
    /// [default: 50000]
    #[arg(long, value_name = "N")]
    max_sessions: Option<usize>,
    /// Messages one session may send per second; 0 removes the limit.
    #[arg(long, value_name = "N", default_value_t = SendLimit::default().per_second)]
    message_rate: f64,
    /// Messages one session may send in a burst before the rate applies.
    #[arg(long, value_name = "N", default_value_t = SendLimit::default().burst)]
    message_burst: f64,
    /// Requests of any kind one session may make per second; 0 removes the
    /// limit.
    #[arg(long, value_name = "N", default_value_t = SendLimit::requests().per_second)]
    request_rate: f64,
    /// Requests one session may make in a burst before the rate applies.
    #[arg(long, value_name = "N", default_value_t = SendLimit::requests().burst)]
    request_burst: f64,
    /// Bytes of message text one session may send per second; 0 removes the
    /// limit.
    #[arg(long, value_name = "BYTES", default_value_t = SendLimit::bytes().per_second)]
    byte_rate: f64,
    /// Bytes of message text one session may send in a burst before the rate
    /// applies.
    #[arg(long, value_name = "BYTES", default_value_t = SendLimit::bytes().burst)]
    byte_burst: f64,
    /// Heartbeat interval in milliseconds; the resume grace and the other
    /// liveness timers scale with it. For tests and diagnosis.
    #[arg(long, value_name = "MS", hide = true)]
    heartbeat_ms: Option<u64>,
    /// How long a dropped session may be resumed, in milliseconds [default:
    /// 15000, scaled with --heartbeat-ms]. For tests and diagnosis.
    #[arg(long, value_name = "MS", hide = true)]
    resume_grace_ms: Option<u64>,
    /// Rotate the log file to `<name>.1` once it holds this many bytes.
    #[arg(long, value_name = "BYTES", hide = true, env = "MCP_CHAT_LOG_MAX_BYTES",
          default_value_t = log_file::DEFAULT_MAX_BYTES,
          value_parser = clap::value_parser!(u64).range(1..))]
    log_max_bytes: u64,
    /// Once listening, print one JSON line on stdout,
    /// `{"ready":true,"socket":"…","pid":N}`, for supervisors and tests that
    /// must know when to connect without reading the log.
    #[arg(long)]
    print_ready: bool,
    /// Join a realm of brokers on other machines through this NATS server
    /// (`nats://host:4222`; several comma-separated), overriding the
    /// `[federation] url` of the config file. Credentials never go here: use
    /// the config's `credentials` file, or MCP_CHAT_NATS_USER and
    /// MCP_CHAT_NATS_PASSWORD.
    #[arg(long, value_name = "URL")]
    federation: Option<String>,
    /// The realm to join, overriding the config file's `[federation] realm`.
    #[arg(long, value_name = "NAME")]
    realm: Option<String>,
    /// The config file [default: <config dir>/mcp-chat/config.toml].
    #[arg(long, value_name = "PATH", env = "MCP_CHAT_CONFIG")]
    config: Option<PathBuf>,
    /// How long remote rooms survive a lost NATS link or a silent partner
    /// broker, in milliseconds. For tests and diagnosis.
    #[arg(long, value_name = "MS", hide = true)]
    federation_grace_ms: Option<u64>,
    /// Replicas of the realm's stream and bucket (3 on a 3-node cluster).
    #[arg(long, value_name = "N", hide = true)]
    federation_replicas: Option<usize>,
    /// Log more: -v for per-session events, -vv for everything.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A person starting it by hand reads this, and a shim that
            // started it reports it.
            eprintln!("mcp-chat-broker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| SocketEnv::from_process().socket_path());
    init_logging(&args, &socket)?;
    #[cfg(unix)]
    if !args.foreground {
        // Started on demand by a shim: leave its session, so closing the
        // terminal or client that started us does not take the broker (and
        // everyone else's chats) down with it. Done before the runtime starts.
        if let Err(e) = rustix::process::setsid() {
            tracing::debug!(error = %e, "setsid failed; already a session leader");
        }
    }

    // Before the runtime starts: the limit is process-wide, and the session
    // cap must fit the descriptors we actually have.
    let max_sessions = mcp_chat_broker::fd_limit::fit_sessions(
        args.max_sessions.unwrap_or(Config::default().max_sessions),
        args.max_sessions.is_some(),
    )?;
    let idle_secs = args
        .idle_exit
        .unwrap_or(if args.foreground { 0 } else { 600 });
    let config = Config {
        idle_exit: (idle_secs > 0).then(|| Duration::from_secs(idle_secs)),
        max_sessions,
        liveness: liveness(&args),
        send_limit: (args.message_rate > 0.0).then_some(SendLimit {
            per_second: args.message_rate,
            burst: args.message_burst.max(1.0),
        }),
        request_limit: (args.request_rate > 0.0).then_some(SendLimit {
            per_second: args.request_rate,
            burst: args.request_burst.max(1.0),
        }),
        byte_limit: (args.byte_rate > 0.0).then_some(SendLimit {
            per_second: args.byte_rate,
            // One message of the largest size must always fit.
            burst: args
                .byte_burst
                .max(mcp_chat_proto::MAX_MESSAGE_BYTES as f64),
        }),
        // Reported in `Status`, so `mcp-chat doctor` can show it.
        log_path: (!args.foreground).then(|| log_path::log_path(&socket)),
        blocks_path: Some(log_path::blocks_path(&socket)),
        ..Config::default()
    };

    let federation =
        federation_settings(&args)?.map(|f| mcp_chat_broker::federation::FederationConfig {
            key_pins: Some(log_path::realm_keys_path(&socket)),
            ..f
        });
    let config = Config {
        federation,
        ..config
    };

    // One thread: the hub owns every room and session, so a second worker
    // adds no parallelism where it counts, only a cross-thread wake-up
    // (a futex or eventfd write, and a vCPU to wake on a VM) whenever one
    // task hands work to another. On the cross-broker path that cost the
    // bench 1.52× against 1.44× JetStream's own latency; the local relay's
    // latency and throughput did not move, and a burst of 10,000 sessions
    // matches 10–40% slower, far above its target (BENCHMARKS.md).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = BoundListener::bind(&socket)?;
        let print = args.print_ready;
        mcp_chat_broker::run(listener, shutdown_signal(), config, |listener| {
            if print {
                print_ready(listener);
            }
        })
        .await?;
        anyhow::Ok(())
    })
}

/// The `[federation]` settings: the config file (`--config`, else the
/// default path), then the flags. A default path this user may not read
/// (a broker run as another user, with `HOME` still pointing at the
/// caller's) counts as no file, with a warning; a named one must be read.
fn federation_settings(
    args: &Args,
) -> anyhow::Result<Option<mcp_chat_broker::federation::FederationConfig>> {
    use mcp_chat_broker::federation::config::{self, ConfigError, Overrides};
    let overrides = Overrides {
        url: args.federation.clone(),
        realm: args.realm.clone(),
        grace: args.federation_grace_ms.map(Duration::from_millis),
        replicas: args.federation_replicas,
    };
    let path = args.config.clone().or_else(config::default_path);
    match config::load(path.as_deref(), &overrides) {
        Err(ConfigError::Read { path, source })
            if args.config.is_none() && source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            tracing::warn!(path = %path.display(), "cannot read the config file; going on without it");
            config::load(None, &overrides).context("federation settings")
        }
        loaded => loaded.context("federation settings"),
    }
}

fn init_logging(args: &Args, socket: &Path) -> anyhow::Result<()> {
    let default = match args.verbose {
        0 => "info",
        1 => "info,mcp_chat_broker=debug",
        _ => "debug",
    };
    let filter =
        EnvFilter::try_from_env("MCP_CHAT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if args.foreground {
        builder.with_writer(std::io::stderr).init();
    } else {
        let path = match log_path::state_dir_log(socket) {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    prepare_state_dir(dir)?;
                }
                path
            }
            None => {
                // Beside the socket: the directory the socket needs anyway,
                // created 0700 and checked, never chmod-ed (it may be one the
                // user named with MCP_CHAT_SOCKET).
                prepare_socket_dir(socket)?;
                log_path::beside_socket(socket)
            }
        };
        let file = LogFile::open(&path, args.log_max_bytes)
            .with_context(|| format!("opening log file {}", path.display()))?;
        builder
            .with_writer(Mutex::new(file))
            .with_ansi(false)
            .init();
    }
    Ok(())
}

/// The `--print-ready` line, printed once the hub runs and the socket is
/// bound (connections queue in the kernel's backlog until accepted). If
/// stdout is gone, whoever asked for the line is too: the broker serves on.
fn print_ready(listener: &BoundListener) {
    use std::io::Write;
    let line = serde_json::json!({
        "ready": true,
        "socket": listener.path(),
        "pid": std::process::id(),
    });
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        tracing::warn!(error = %e, "could not print the ready line");
    }
}

fn liveness(args: &Args) -> Liveness {
    let mut liveness = args
        .heartbeat_ms
        .map(|ms| Liveness::scaled(Duration::from_millis(ms.max(1))))
        .unwrap_or_default();
    if let Some(ms) = args.resume_grace_ms {
        liveness.resume_grace = Duration::from_millis(ms);
    }
    liveness
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
