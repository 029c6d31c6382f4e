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
//! - `sessions`: when a session is over (closed, expired, shut down), so its
//!   chat user leaves the room at once.
//! - `handler`: the per-session handler around [`ChatServer`].

pub mod guard;
mod handler;
mod sessions;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, ORIGIN, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, SessionConfig};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::ChatServer;
use guard::Exposure;
use handler::HttpChatServer;
use sessions::{SessionEnd, Sessions, StreamGuard};

/// The MCP endpoint's path.
pub const MCP_PATH: &str = "/mcp";
/// Where `--http` without an address serves.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8931";
/// Default `--session-timeout`.
pub const DEFAULT_SESSION_TIMEOUT_S: u64 = 300;
/// Largest request body accepted. Chat messages are at most 16 KiB.
const MAX_REQUEST_BODY: usize = 1 << 20;
/// How long a shutdown waits for open connections before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
const SESSION_HEADER: &str = "mcp-session-id";

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
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MCP_CHAT_HTTP_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
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
    let exposure = guard::check_bind(addr, args.token.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(args, addr, exposure, socket));
    // Sessions still winding down hold only broker connections; exiting
    // closes them, and the broker tells their partners.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn serve(
    args: &ServeArgs,
    addr: SocketAddr,
    exposure: Exposure,
    socket: PathBuf,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} for MCP over HTTP"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    if exposure == Exposure::Network {
        eprintln!(
            "mcp-chat: WARNING: serving MCP on {local}, an address other machines may reach.\n\
             mcp-chat: WARNING: every request must carry `Authorization: Bearer <token>`; anyone with the token can chat as you.\n\
             mcp-chat: WARNING: this is plain HTTP: the token and the chat cross the network unencrypted unless you put TLS in front."
        );
    }
    eprintln!("mcp-chat: serving MCP over HTTP at http://{local}{MCP_PATH}");

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
        Arc::clone(&manager),
    );

    let config = StreamableHttpServerConfig::default()
        .with_cancellation_token(shutdown.child_token())
        .with_max_request_body_bytes(MAX_REQUEST_BODY);
    let config = match exposure {
        // DNS rebinding: a foreign name resolving to 127.0.0.1 gets 403.
        Exposure::Loopback => config.with_allowed_hosts(guard::loopback_hosts(local.ip())),
        // Reached by whatever name or address the network uses; the bearer
        // token, which a rebinding page cannot know, is the protection.
        Exposure::Network => config.disable_allowed_hosts(),
    };
    let service = StreamableHttpService::new(
        move || Ok(HttpChatServer::new(ChatServer::new(socket.clone()))),
        manager,
        config,
    );
    let gate = Arc::new(Gate {
        token: args.token.clone(),
        sessions: Arc::clone(&sessions),
    });
    let app = Router::new()
        .route_service(MCP_PATH, service)
        .route_layer(middleware::from_fn_with_state(gate, gatekeeper));

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

    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
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
    sessions: Arc<Sessions>,
}

/// Runs before rmcp on every request: refuses foreign origins (403) and
/// missing or wrong bearer tokens (401), and tracks session liveness. rmcp
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

    let Some(id) = session_id(request.headers()) else {
        // `initialize` (or a stateless probe such as `server/discover`):
        // a session may begin here. Its handler finds its end signal in
        // the request's extensions.
        let end = SessionEnd::default();
        request.extensions_mut().insert(end.clone());
        let response = next.run(request).await;
        return match session_id(response.headers()) {
            Some(id) => {
                let guard = gate.sessions.register(&id, end);
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
        let args = parse(&["--http", "--session-timeout", "7"]).unwrap();
        assert_eq!(args.http, Some(DEFAULT_ADDR.parse().unwrap()));
        assert_eq!(args.session_timeout, 7);
        assert_eq!(parse(&[]).unwrap().http, None, "no --http: stdio");
        assert!(parse(&["--http", "--session-timeout", "0"]).is_err());
    }
}
