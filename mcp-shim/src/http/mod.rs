//! `mcp-chat serve --http ADDR`: MCP over Streamable HTTP.
//!
//! rmcp's Streamable HTTP server is mounted in axum at [`MCP_PATH`]. Each MCP
//! session (from `initialize` to `DELETE` or expiry) gets its own
//! [`ChatServer`], which connects to the same local broker as every stdio
//! `mcp-chat`, so HTTP and stdio users meet in one queue. Tool results come
//! back on the `POST` that asked; notifications (`chatroom.found`, …, and
//! the Claude Code channel events) go out on the session's `GET` event
//! stream.
//!
//! - [`guard`]: who may connect: loopback, `Origin`, `Host`, bearer token.
//! - [`peer`]: which user owns a loopback connection (Linux), and the
//!   listener that sets `TCP_NODELAY` on every connection.
//! - [`token`]: where the bearer token comes from (flag, file, environment,
//!   or generated where loopback owners cannot be checked).
//! - `sessions`: when a session is over (closed, expired, shut down), so its
//!   chat user leaves the room at once; and how many there may be.
//! - `handler`: the per-session handler around [`ChatServer`].
//! - `chats`, `modern_http`: MCP 2026-07-28 clients, which have no session:
//!   each chat is named by a `chat_id` the server mints, and its events are
//!   a resource with a `subscriptions/listen` subscription.
//! - [`web`]: the chat page for people at `/`, with its own gate.

mod chats;
mod fd_budget;
pub mod guard;
mod handler;
mod modern_http;
pub mod peer;
mod sessions;
pub mod token;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, ORIGIN, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, SessionConfig};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::ChatServer;
use chats::Chats;
use guard::{Exposure, LoopbackCheck};
use handler::HttpChatServer;
use peer::{NoDelayListener, Owner, Peer};
use sessions::{Full, SessionEnd, Sessions, StreamGuard};
use token::{Source, Token};

/// The MCP endpoint's path.
pub const MCP_PATH: &str = "/mcp";
/// Where `--http` without an address serves.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8931";
/// Default `--session-timeout`.
pub const DEFAULT_SESSION_TIMEOUT_S: u64 = 300;
/// Default `--max-sessions`. A client stuck in a reconnect loop hits this
/// cap, with a clear 503, before the process runs out of descriptors or
/// memory: each session may hold three descriptors, so at start the server
/// raises its soft limit (often 1,024) and lowers the cap to what the
/// limit allows (`fd_budget`).
pub const DEFAULT_MAX_SESSIONS: usize = 1_000;
/// Largest request body accepted. Chat messages are at most 16 KiB.
const MAX_REQUEST_BODY: usize = 1 << 20;
/// How long a shutdown waits for open connections before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
const SESSION_HEADER: &str = "mcp-session-id";
const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";

/// `mcp-chat serve` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Serve MCP over Streamable HTTP at http://ADDR/mcp instead of stdio
    /// (ADDR defaults to 127.0.0.1:8931; port 0 picks a free port, and the
    /// address is printed on stderr).
    #[arg(
        long,
        value_name = "ADDR",
        num_args = 0..=1,
        default_missing_value = DEFAULT_ADDR,
        value_parser = parse_addr
    )]
    pub http: Option<SocketAddr>,
    /// With --http: every request must carry `Authorization: Bearer TOKEN`.
    /// Required for an address other than loopback. At least 16 characters.
    /// Every user of this machine can read it in `ps`: prefer --token-file
    /// or the MCP_CHAT_TOKEN environment variable.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// With --http: like --token, with the token read from FILE (surrounding
    /// whitespace ignored).
    #[arg(long, value_name = "FILE", conflicts_with = "token", requires = "http")]
    pub token_file: Option<PathBuf>,
    /// With --http: end a session (leaving its chat, so the partner is told)
    /// after SECS with no request and no open event stream.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = DEFAULT_SESSION_TIMEOUT_S,
        requires = "http",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub session_timeout: u64,
    /// With --http: at most N sessions at once; a client asking for one more
    /// gets 503 until a session ends (closed or expired).
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_MAX_SESSIONS,
        requires = "http",
        value_parser = parse_max_sessions
    )]
    pub max_sessions: usize,
}

fn parse_max_sessions(text: &str) -> Result<usize, String> {
    match text.parse() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("expected a number of sessions, not {text:?}")),
    }
}

/// `IP:PORT`, or `localhost:PORT` for `127.0.0.1:PORT`.
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let localhost = text
        .strip_prefix("localhost:")
        .map(|port| format!("127.0.0.1:{port}"));
    localhost
        .as_deref()
        .unwrap_or(text)
        .parse()
        .map_err(|_| format!("expected IP:PORT, e.g. 127.0.0.1:8931, not {text:?}"))
}

/// Serves MCP over HTTP at `addr` until SIGINT or SIGTERM; sessions use the
/// broker at `socket`.
pub fn run(args: &ServeArgs, addr: SocketAddr, socket: PathBuf) -> anyhow::Result<()> {
    run_then(args, addr, socket, |_| {})
}

/// As [`run`], calling `ready` with the chat page's address once the
/// server listens (`mcp-chat web` prints and opens it).
pub fn run_then(
    args: &ServeArgs,
    addr: SocketAddr,
    socket: PathBuf,
    ready: impl FnOnce(&str),
) -> anyhow::Result<()> {
    let configured =
        token::configured(args.token.as_deref(), args.token_file.as_deref(), |name| {
            std::env::var(name).ok()
        })?;
    warn_about_token(configured.as_ref());
    let exposure = guard::check_bind(addr, configured.as_ref().map(|t| t.secret.as_str()))?;
    let check = guard::loopback_check(&exposure, peer::owners_listed());
    let token = match (configured, check) {
        (None, Some(LoopbackCheck::Token)) => Some(token::generated(&socket)?),
        (token, _) => token,
    };
    let access = Access {
        exposure,
        same_user: check == Some(LoopbackCheck::SocketOwner),
        token,
    };
    let args = &ServeArgs {
        max_sessions: fd_budget::fit_sessions(args.max_sessions),
        ..args.clone()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(args, addr, access, socket, ready));
    // Sessions still winding down hold only broker connections; exiting
    // closes them, and the broker tells their partners.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Warns about a token others may read: on the command line, or in a file
/// open to group or others.
fn warn_about_token(token: Option<&Token>) {
    match token.map(|t| &t.source) {
        Some(Source::Flag) => eprintln!(
            "mcp-chat: WARNING: --token puts the secret on the command line, where every user of this machine can read it (ps, /proc/PID/cmdline).\n\
             mcp-chat: WARNING: use --token-file FILE or the MCP_CHAT_TOKEN environment variable instead."
        ),
        Some(Source::File(path)) => {
            if let Some(mode) = token::readable_by_others(path) {
                eprintln!(
                    "mcp-chat: WARNING: the token file {} has mode {mode:o}: other users may read it; run `chmod 600 {}`",
                    path.display(),
                    path.display()
                );
            }
        }
        _ => {}
    }
}

/// Who may use the server, decided before it binds.
struct Access {
    exposure: Exposure,
    /// Loopback on Linux: only connections owned by our uid are served.
    same_user: bool,
    token: Option<Token>,
}

async fn serve(
    args: &ServeArgs,
    addr: SocketAddr,
    access: Access,
    socket: PathBuf,
    ready: impl FnOnce(&str),
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} for MCP over HTTP"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let uid = mcp_chat_proto::socket_path::current_uid();
    let exposure = access.exposure;
    if access.same_user {
        eprintln!(
            "mcp-chat: serving processes of uid {uid} only (the owner of each connection is read from /proc/net/tcp); others get 403"
        );
    }
    if let Some(Token {
        secret,
        source: Source::Generated(path),
    }) = &access.token
    {
        eprintln!(
            "mcp-chat: this OS does not say which user a loopback connection belongs to, so every request must carry `Authorization: Bearer {secret}` (kept in {})",
            path.display()
        );
    }
    if exposure == Exposure::Network {
        eprintln!(
            "mcp-chat: WARNING: serving MCP on {local}, an address other machines may reach.\n\
             mcp-chat: WARNING: every request must carry `Authorization: Bearer <token>`; anyone with the token can chat as you.\n\
             mcp-chat: WARNING: this is plain HTTP: the token and the chat cross the network unencrypted unless you put TLS in front."
        );
    }
    eprintln!("mcp-chat: serving MCP over HTTP at http://{local}{MCP_PATH}");
    let page = Arc::new(web::Web::new(
        socket.clone(),
        local,
        (exposure == Exposure::Loopback).then(|| guard::loopback_hosts(local.ip())),
        access.same_user.then_some(uid),
        access.token.as_ref().map(|t| t.secret.clone()),
        args.max_sessions,
    ));
    eprintln!(
        "mcp-chat: chat page for people at http://{local}/{}",
        if page.token.is_some() {
            "#token=<the token>"
        } else {
            ""
        }
    );

    let shutdown = CancellationToken::new();
    // Expiry is ours (see `sessions`): rmcp's idle timeout would drop a
    // client that is only listening on its event stream.
    let mut session_config = SessionConfig::default();
    session_config.keep_alive = None;
    let mut manager = LocalSessionManager::default();
    manager.session_config = session_config;
    let manager = Arc::new(manager);
    let sessions = Sessions::new(
        Duration::from_secs(args.session_timeout),
        args.max_sessions,
        Arc::clone(&manager),
    );

    let config = StreamableHttpServerConfig::default()
        .with_cancellation_token(shutdown.child_token())
        .with_max_request_body_bytes(MAX_REQUEST_BODY)
        // No SSE priming event before each response: it exists so a client
        // can resume a stream that broke mid-response (Last-Event-ID), which
        // a loopback chat needs little (every event also waits in the pull
        // buffer), and it cost the official TypeScript SDK about 1 ms per
        // call: HTTP/stdio 4.8-6.9x with it, 3.4-3.8x without
        // (BENCHMARKS.md, finding 6).
        .with_sse_retry(None);
    let config = match exposure {
        // DNS rebinding: a foreign name resolving to 127.0.0.1 gets 403.
        Exposure::Loopback => config.with_allowed_hosts(guard::loopback_hosts(local.ip())),
        // Reached by whatever name or address the network uses; the bearer
        // token, which a rebinding page cannot know, is the protection.
        Exposure::Network => config.disable_allowed_hosts(),
    };
    let chats = Chats::new(socket.clone(), Arc::clone(&sessions));
    let service = StreamableHttpService::new(
        move || {
            Ok(HttpChatServer::new(
                ChatServer::new(socket.clone()),
                Arc::clone(&chats),
            ))
        },
        manager,
        config,
    );
    let gate = Arc::new(Gate {
        token: access.token.map(|t| t.secret),
        same_user: access.same_user.then_some(uid),
        sessions: Arc::clone(&sessions),
    });
    let app = Router::new()
        .route_service(MCP_PATH, service)
        .route_layer(middleware::from_fn_with_state(gate, gatekeeper))
        .merge(web::router(Arc::clone(&page)));
    ready(&page.page_url());

    tokio::spawn(Arc::clone(&sessions).reap(shutdown.clone()));
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            stop_signal().await;
            eprintln!("mcp-chat: stopping; open chat sessions end now");
            sessions.end_all();
            shutdown.cancel();
        }
    });

    let server = axum::serve(
        NoDelayListener(listener),
        app.into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        served = server => served.context("serving MCP over HTTP")?,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them"),
    }
    Ok(())
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

struct Gate {
    token: Option<String>,
    /// Our uid, when only connections it owns are served.
    same_user: Option<u32>,
    sessions: Arc<Sessions>,
}

/// Runs before rmcp on every request: refuses foreign origins (403),
/// another user's connections (403), missing or wrong bearer tokens (401)
/// and sessions past the cap (503), and tracks session liveness. rmcp
/// itself then checks `Host` against the allowed hosts (403).
async fn gatekeeper(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    if let Some(origin) = request.headers().get(ORIGIN)
        && !guard::origin_allowed(origin)
    {
        tracing::warn!(?origin, "refused a cross-origin request");
        return (
            StatusCode::FORBIDDEN,
            "Forbidden: cross-origin requests are refused; an Origin must be http(s)://localhost, 127.0.0.1 or [::1]\n",
        )
            .into_response();
    }
    if let Some(uid) = gate.same_user
        && let Some(refusal) = other_user(request.extensions().get().cloned(), uid).await
    {
        return refusal;
    }
    if let Some(token) = &gate.token
        && !guard::bearer_matches(request.headers().get(AUTHORIZATION), token)
    {
        tracing::warn!("refused a request without the right bearer token");
        let mut response = (
            StatusCode::UNAUTHORIZED,
            "Unauthorized: send `Authorization: Bearer <token>` with the token `mcp-chat serve` was given\n",
        )
            .into_response();
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"mcp-chat\""),
        );
        return response;
    }

    if is_modern(request.headers()) {
        // MCP 2026-07-28: no session begins here. A chat that
        // `enter_queue` starts takes its own place (see `chats`).
        return next.run(request).await;
    }
    let Some(id) = session_id(request.headers()) else {
        // `initialize` (or a stateless probe such as `server/discover`):
        // a session may begin here, if there is room for one. Its handler
        // finds its end signal in the request's extensions.
        let admission = match gate.sessions.admit() {
            Ok(admission) => admission,
            Err(Full { max }) => {
                tracing::warn!(max, "refused a new HTTP session: the server is full");
                let mut response = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "Service Unavailable: this server already has {max} MCP sessions (--max-sessions); try again when one ends\n"
                    ),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("5"));
                return response;
            }
        };
        let end = SessionEnd::default();
        request.extensions_mut().insert(end.clone());
        let response = next.run(request).await;
        return match session_id(response.headers()) {
            Some(id) => {
                let guard = gate.sessions.register(admission, &id, end);
                with_guard(response, guard)
            }
            None => response,
        };
    };
    let is_delete = request.method() == Method::DELETE;
    let guard = gate.sessions.open(&id);
    let response = next.run(request).await;
    if is_delete && response.status().is_success() {
        gate.sessions.closed_by_client(&id);
    }
    match guard {
        Some(guard) => with_guard(response, guard),
        None => response,
    }
}

/// A 403 for a connection not owned by `uid`, looked up once per connection.
async fn other_user(peer: Option<ConnectInfo<Peer>>, uid: u32) -> Option<Response> {
    let owner = match peer {
        Some(ConnectInfo(peer)) => {
            peer.owner(|remote, local| async move {
                Owner::of(peer::lookup_owner(remote, local).await, uid)
            })
            .await
        }
        None => Owner::Unknown,
    };
    let why = match owner {
        Owner::SameUser => return None,
        Owner::Other(theirs) => format!("this connection belongs to uid {theirs}"),
        Owner::Unknown => "its owner could not be found in /proc/net/tcp".to_owned(),
    };
    tracing::warn!(?owner, "refused a connection of another user");
    Some(
        (
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden: this MCP server serves only processes of uid {uid}, the user who started it; {why}\n"
            ),
        )
            .into_response(),
    )
}

/// A request of MCP 2026-07-28 or later, which names its version in the
/// `MCP-Protocol-Version` header (dates compare as strings).
fn is_modern(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(PROTOCOL_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|version| version >= "2026-07-28")
}

fn session_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn with_guard(response: Response, guard: StreamGuard) -> Response {
    response.map(|body| sessions::guarded(body, guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_a_clear_error() {
        assert_eq!(
            parse_addr("127.0.0.1:8931"),
            Ok("127.0.0.1:8931".parse().unwrap())
        );
        assert_eq!(
            parse_addr("localhost:0"),
            Ok("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(parse_addr("[::1]:80"), Ok("[::1]:80".parse().unwrap()));
        let error = parse_addr("8931").unwrap_err();
        assert!(error.contains("127.0.0.1:8931"), "{error}");
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|c| c.serve)
    }

    #[test]
    fn http_alone_means_loopback() {
        let args = parse(&["--http"]).unwrap();
        assert_eq!(args.http, Some(DEFAULT_ADDR.parse().unwrap()));
        assert_eq!(args.session_timeout, DEFAULT_SESSION_TIMEOUT_S);
        assert_eq!(args.max_sessions, DEFAULT_MAX_SESSIONS);
        let args = parse(&["--http", "--session-timeout", "7"]).unwrap();
        assert_eq!(args.http, Some(DEFAULT_ADDR.parse().unwrap()));
        assert_eq!(args.session_timeout, 7);
        assert_eq!(parse(&[]).unwrap().http, None, "no --http: stdio");
        assert!(parse(&["--http", "--session-timeout", "0"]).is_err());
    }

    #[test]
    fn token_and_session_options_parse() {
        let args = parse(&["--http", "--max-sessions", "3", "--token-file", "/t"]).unwrap();
        assert_eq!(args.max_sessions, 3);
        assert_eq!(args.token_file, Some(PathBuf::from("/t")));
        assert!(parse(&["--http", "--max-sessions", "0"]).is_err());
        assert!(parse(&["--http", "--max-sessions", "many"]).is_err());
        assert!(parse(&["--max-sessions", "3"]).is_err(), "needs --http");
        assert!(parse(&["--token-file", "/t"]).is_err(), "needs --http");
        assert!(
            parse(&["--http", "--token", "x", "--token-file", "/t"]).is_err(),
            "one token source on the command line"
        );
    }
}
