//! MCP over Streamable HTTP against MCP over stdio, in the same run, on the
//! same broker: the round trip of a `chat_status` tool call.
//!
//! The HTTP client keeps one connection open for every call, as real MCP
//! clients do. A new connection per request would hide the stall this
//! section exists to catch: with Nagle's algorithm on the server's socket,
//! the second small write of each response waited for the client's delayed
//! ACK, about 40 ms per call, and only on a connection that had already
//! carried a request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::report::{MICROS, Report, Row, Target, micros};
use crate::shim::{MCP_PROTOCOL_VERSION, ShimCommand};
use crate::stats::Summary;
use crate::{Plan, WAIT, within};

const SECTION: &str = "http";
/// The bound: an HTTP round trip at most this many times the stdio
/// one measured in the same run.
const TARGET_RATIO: f64 = 6.0;

pub async fn run(
    plan: &Plan,
    shim: &ShimCommand,
    socket: PathBuf,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (stdio, http) =
        crate::on_own_thread(measure(plan.http_round_trips, shim.clone(), socket)).await?;
    let ratio = http.p50.as_secs_f64() / stdio.p50.as_secs_f64().max(f64::MIN_POSITIVE);
    report.add(Row::new(
        SECTION,
        "chat_status round trip over stdio p50",
        micros(stdio.p50),
        MICROS,
    ));
    report.add(
        Row::new(
            SECTION,
            "chat_status round trip over HTTP, keep-alive, p50",
            micros(http.p50),
            MICROS,
        )
        .target(Target::at_most(
            ratio,
            TARGET_RATIO,
            format!("≤ {TARGET_RATIO}× stdio"),
        )),
    );
    report.add(Row::new(
        SECTION,
        "chat_status round trip over stdio p99",
        micros(stdio.p99),
        MICROS,
    ));
    report.add(Row::new(
        SECTION,
        "chat_status round trip over HTTP, keep-alive, p99",
        micros(http.p99),
        MICROS,
    ));
    report.note(format!(
        "http: HTTP p50 is {ratio:.2}× the stdio p50 in this run (target ≤ {TARGET_RATIO}×)"
    ));
    Ok(())
}

/// Round trips over stdio, then over HTTP.
async fn measure(
    rounds: usize,
    shim: ShimCommand,
    socket: PathBuf,
) -> anyhow::Result<(Summary, Summary)> {
    let warmup = rounds / 10;

    let mut stdio = shim.spawn(&socket, "stdio")?;
    stdio.initialize().await?;
    stdio.initialized().await?;
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..warmup + rounds {
        let id = stdio.take_id();
        let mut call = serde_json::to_vec(&status_call(id))?;
        call.push(b'\n');
        let start = Instant::now();
        stdio.write_line(&call).await?;
        stdio
            .tool_result(id)
            .await
            .context("chat_status over stdio")?;
        if i >= warmup {
            samples.push(start.elapsed());
        }
    }
    stdio.close().await?;
    let stdio = Summary::of(samples).context("no stdio samples")?;

    let server = HttpServer::start(&shim, &socket).await?;
    let mut client = KeepAlive::connect(server.addr).await?;
    client.initialize().await?;
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..warmup + rounds {
        let id = u64::try_from(i)? + 1;
        let body = Bytes::from(serde_json::to_vec(&status_call(id))?);
        let start = Instant::now();
        let elapsed = client.call(id, body, start).await?;
        if i >= warmup {
            samples.push(elapsed);
        }
    }
    drop(client);
    server.stop().await;
    let http = Summary::of(samples).context("no HTTP samples")?;
    Ok((stdio, http))
}

fn status_call(id: u64) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": "chat_status", "arguments": {}},
    })
}

/// `mcp-chat serve --http 127.0.0.1:0` on the bench's broker.
struct HttpServer {
    child: Child,
    addr: SocketAddr,
}

impl HttpServer {
    async fn start(shim: &ShimCommand, socket: &std::path::Path) -> anyhow::Result<Self> {
        let mut child = Command::new(&shim.shim)
            .args(["serve", "--http", "127.0.0.1:0"])
            .env("MCP_CHAT_SOCKET", socket)
            .env("MCP_CHAT_BROKER", &shim.broker)
            .env_remove("MCP_CHAT_TOKEN")
            .env_remove("MCP_CHAT_HTTP_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} serve --http", shim.shim.display()))?;
        let stderr = child.stderr.take().context("stderr was not piped")?;
        let mut lines = BufReader::new(stderr).lines();
        let url = within("for mcp-chat serve --http to print its address", async {
            let mut seen = Vec::new();
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("mcp-chat: serving MCP over HTTP at ") {
                    return Ok(url.trim().to_owned());
                }
                seen.push(line);
            }
            bail!(
                "mcp-chat serve --http exited before printing its address: {}",
                seen.join("\n")
            )
        })
        .await??;
        // Drained from now on, so a chatty server never blocks on its log.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = url
            .strip_prefix("http://")
            .and_then(|rest| rest.strip_suffix("/mcp"))
            .and_then(|authority| authority.parse().ok())
            .with_context(|| format!("unexpected endpoint {url}"))?;
        Ok(Self { child, addr })
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}

/// One MCP session over one kept-alive HTTP/1.1 connection.
struct KeepAlive {
    sender: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    session: Option<String>,
}

impl KeepAlive {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = within("connecting", tokio::net::TcpStream::connect(addr)).await??;
        // As MCP clients do (Node's HTTP client sets it by default): what is
        // measured is the server's side.
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            addr,
            session: None,
        })
    }

    async fn initialize(&mut self) -> anyhow::Result<()> {
        let init = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": MCP_PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "mcp-chat-bench", "version": env!("CARGO_PKG_VERSION")},
            },
        });
        let (status, headers, _) = self
            .post(Bytes::from(serde_json::to_vec(&init)?), None)
            .await?;
        if status != StatusCode::OK {
            bail!("initialize over HTTP: {status}");
        }
        self.session = Some(
            headers
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .context("initialize over HTTP: no mcp-session-id")?
                .to_owned(),
        );
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let (status, _, _) = self
            .post(Bytes::from(serde_json::to_vec(&initialized)?), None)
            .await?;
        if status != StatusCode::ACCEPTED {
            bail!("notifications/initialized over HTTP: {status}");
        }
        Ok(())
    }

    /// Sends tool call `id` and returns the time from `start` to its result;
    /// the rest of the response is read off the clock.
    async fn call(&mut self, id: u64, body: Bytes, start: Instant) -> anyhow::Result<Duration> {
        let (status, _, elapsed) = self.post(body, Some((id, start))).await?;
        if status != StatusCode::OK {
            bail!("tools/call over HTTP: {status}");
        }
        elapsed.context("the response carried no result")
    }

    /// POSTs `body`; with `wait`, reads the SSE body until the response to
    /// that id and notes when it came, then drains the body so the
    /// connection is ready for the next request.
    async fn post(
        &mut self,
        body: Bytes,
        wait: Option<(u64, Instant)>,
    ) -> anyhow::Result<(StatusCode, hyper::HeaderMap, Option<Duration>)> {
        let mut request = Request::post("/mcp")
            .header("host", self.addr.to_string())
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json");
        if let Some(session) = &self.session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", MCP_PROTOCOL_VERSION);
        }
        let request = request.body(Full::new(body))?;
        within("an HTTP response", async {
            self.sender.ready().await.context("the connection closed")?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let mut body = response.into_body();
            let mut text = String::new();
            let mut elapsed = None;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
                if let Some((id, start)) = wait
                    && elapsed.is_none()
                    && has_response(&text, id)?
                {
                    elapsed = Some(start.elapsed());
                }
            }
            anyhow::Ok((status, headers, elapsed))
        })
        .await?
    }
}

/// Whether the SSE text so far holds a complete event answering `id`; an
/// error answer fails the run.
fn has_response(text: &str, id: u64) -> anyhow::Result<bool> {
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|data| data.strip_prefix(' ').unwrap_or(data))
            .collect();
        let Ok(message) = serde_json::from_str::<Value>(&data.join("\n")) else {
            continue;
        };
        if message.get("id").and_then(Value::as_u64) == Some(id) {
            if message.get("error").is_some()
                || message.pointer("/result/isError") == Some(&Value::Bool(true))
            {
                return Err(anyhow!("call {id} failed: {message}"));
            }
            return Ok(true);
        }
    }
    Ok(false)
}
