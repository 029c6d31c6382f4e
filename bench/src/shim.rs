//! Driving a real `mcp-chat` over stdio the way an MCP client does:
//! newline-delimited JSON-RPC, written and read by hand so nothing but the
//! shim sits between the bench and the pipe.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, anyhow, bail};
use mcp_chat_proto::RoomId;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::WAIT;
use crate::broker::EXIT_GRACE;

/// The MCP revision the shim speaks.
pub const MCP_PROTOCOL_VERSION: &str = "2025-11-25";
/// Lines of the shim's stderr kept to explain a failure.
const STDERR_TAIL: usize = 40;

pub struct Shim {
    name: &'static str,
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    next_id: u64,
}

/// How to start a shim: its binary, and the broker it should start when it
/// finds none running (the broker under test, not whatever is on `PATH`).
#[derive(Debug, Clone)]
pub struct ShimCommand {
    pub shim: PathBuf,
    pub broker: PathBuf,
}

impl ShimCommand {
    /// Starts `mcp-chat` with its broker socket at `socket`. `name` labels
    /// it in errors.
    pub fn spawn(&self, socket: &Path, name: &'static str) -> anyhow::Result<Shim> {
        Shim::spawn(self, socket, name)
    }
}

impl Shim {
    fn spawn(command: &ShimCommand, socket: &Path, name: &'static str) -> anyhow::Result<Self> {
        let mut child = Command::new(&command.shim)
            .env("MCP_CHAT_SOCKET", socket)
            .env("MCP_CHAT_BROKER", &command.broker)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", command.shim.display()))?;
        let pid = child.id().context("mcp-chat exited at once")?;
        let stdin = child.stdin.take().context("stdin was not piped")?;
        let stdout = child.stdout.take().context("stdout was not piped")?;
        let stderr = child.stderr.take().context("stderr was not piped")?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let sink = tail.clone();
        // Drained continuously so a chatty shim never blocks on its log.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut tail = sink.lock().unwrap_or_else(PoisonError::into_inner);
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        Ok(Self {
            name,
            child,
            pid,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            stderr: tail,
            next_id: 1,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The JSON-RPC handshake's first half; returns the `InitializeResult`.
    pub async fn initialize(&mut self) -> anyhow::Result<Value> {
        let id = self
            .request(
                "initialize",
                json!({
                    "protocolVersion": MCP_PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "mcp-chat-bench", "version": env!("CARGO_PKG_VERSION")},
                }),
            )
            .await?;
        self.response(id).await
    }

    /// The handshake's second half.
    pub async fn initialized(&mut self) -> anyhow::Result<()> {
        self.write(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await
    }

    /// Calls a tool and returns its result; a tool error fails the run.
    pub async fn tool(&mut self, name: &str, arguments: Value) -> anyhow::Result<Value> {
        let id = self.call_tool(name, arguments).await?;
        self.tool_result(id).await
    }

    /// Sends a `tools/call` without waiting for its result.
    pub async fn call_tool(&mut self, name: &str, arguments: Value) -> anyhow::Result<u64> {
        self.request("tools/call", json!({"name": name, "arguments": arguments}))
            .await
    }

    /// The next id [`Self::call_tool`] would use, for callers that build and
    /// serialize the request ahead of time to keep it out of a timing.
    pub fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Waits for the result of tool call `id`; `isError` fails the run.
    pub async fn tool_result(&mut self, id: u64) -> anyhow::Result<Value> {
        let result = self.response(id).await?;
        if result.get("isError").and_then(Value::as_bool) == Some(true) {
            bail!("{}: tool call {id} failed: {result}", self.name);
        }
        Ok(result)
    }

    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<u64> {
        let id = self.take_id();
        self.write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        Ok(id)
    }

    /// Reads until the response to `id`; notifications on the way are
    /// dropped (callers that want one wait for it with [`Self::notification`]).
    pub async fn response(&mut self, id: u64) -> anyhow::Result<Value> {
        loop {
            let mut msg = self.next_message().await?;
            if msg.get("method").is_some() {
                continue;
            }
            if msg.get("id").and_then(Value::as_u64) != Some(id) {
                bail!("{}: a response to an unknown request: {msg}", self.name);
            }
            if let Some(error) = msg.get("error") {
                bail!("{}: request {id} failed: {error}", self.name);
            }
            return msg
                .get_mut("result")
                .map(Value::take)
                .ok_or_else(|| anyhow!("{}: response {id} has no result: {msg}", self.name));
        }
    }

    /// Reads until a notification `method` whose params satisfy `wanted`;
    /// anything else on the way is dropped.
    pub async fn notification(
        &mut self,
        method: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        loop {
            let mut msg = self.next_message().await?;
            if msg.get("id").is_none() && msg.get("method").and_then(Value::as_str) == Some(method)
            {
                let params = msg.get_mut("params").map(Value::take).unwrap_or_default();
                if wanted(&params) {
                    return Ok(params);
                }
            }
        }
    }

    /// The next message from the shim that is meant for us. A request from
    /// the server (a `ping`) is answered here, so no caller has to.
    async fn next_message(&mut self) -> anyhow::Result<Value> {
        loop {
            let line = match tokio::time::timeout(WAIT, self.stdout.next_line()).await {
                Err(_) => return Err(self.failure(&format!("no output within {WAIT:?}"))),
                Ok(Ok(None)) => return Err(self.failure("closed its stdout (exited?)")),
                Ok(Err(e)) => return Err(self.failure(&format!("reading its stdout: {e}"))),
                Ok(Ok(Some(line))) => line,
            };
            let msg: Value = serde_json::from_str(&line).map_err(|e| {
                self.failure(&format!("printed a line that is not JSON ({e}): {line}"))
            })?;
            match (msg.get("id"), msg.get("method").and_then(Value::as_str)) {
                (Some(id), Some(method)) => {
                    let reply = if method == "ping" {
                        json!({"jsonrpc": "2.0", "id": id, "result": {}})
                    } else {
                        json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "the bench client supports no requests"}})
                    };
                    self.write(&reply).await?;
                }
                _ => return Ok(msg),
            }
        }
    }

    /// Writes one JSON-RPC message as one line.
    pub async fn write(&mut self, msg: &Value) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(msg)?;
        line.push(b'\n');
        self.write_line(&line).await
    }

    /// Writes a line that already ends in `\n`, in one write.
    pub async fn write_line(&mut self, line: &[u8]) -> anyhow::Result<()> {
        match tokio::time::timeout(WAIT, self.stdin.write_all(line)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.failure(&format!("writing to its stdin: {e}"))),
            Err(_) => Err(self.failure(&format!("has not read its stdin for {WAIT:?}"))),
        }
    }

    /// Closes stdin, which is how an MCP client says goodbye, and waits for
    /// the shim to exit; kills it if it does not.
    pub async fn close(self) -> anyhow::Result<()> {
        let Self {
            name,
            mut child,
            stdin,
            stdout,
            ..
        } = self;
        drop(stdin);
        // Its remaining output is of no interest, but a full pipe would stop
        // it from exiting.
        drop(stdout);
        match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
            Ok(status) => {
                status.with_context(|| format!("{name}: waiting for exit"))?;
                Ok(())
            }
            Err(_) => {
                let _ = child.kill().await;
                bail!("{name}: did not exit within {EXIT_GRACE:?} of its stdin closing")
            }
        }
    }

    /// An error naming this shim, with the end of its stderr.
    fn failure(&self, what: &str) -> anyhow::Error {
        let tail = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        let log: Vec<&str> = tail.iter().map(String::as_str).collect();
        anyhow!(
            "mcp-chat {} (pid {}) {what}; its stderr ends:\n{}",
            self.name,
            self.pid,
            log.join("\n")
        )
    }
}

/// A room id anywhere in a tool result: a `room_id` field in structured
/// content, or inside text content (JSON or prose).
pub fn find_room_id(value: &Value) -> Option<RoomId> {
    match value {
        Value::Object(map) => {
            if let Some(id) = map
                .get("room_id")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
            {
                return Some(id);
            }
            map.values().find_map(find_room_id)
        }
        Value::Array(items) => items.iter().find_map(find_room_id),
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(inner @ (Value::Object(_) | Value::Array(_))) => find_room_id(&inner),
            _ => text
                .split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
                .find_map(|word| (word.len() == 36).then(|| word.parse().ok()).flatten()),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_room_ids_in_any_shape() {
        let id = "6f1c2a52-8b44-4c8e-9d57-0c1f9d3f5a10";
        let room: RoomId = id.parse().unwrap();
        let structured = json!({"structuredContent": {"status": "matched", "room_id": id}});
        assert_eq!(find_room_id(&structured), Some(room));
        let text_json =
            json!({"content": [{"type": "text", "text": format!("{{\"room_id\":\"{id}\"}}")}]});
        assert_eq!(find_room_id(&text_json), Some(room));
        let prose = json!({"content": [{"type": "text", "text": format!("Matched! Room {id}.")}]});
        assert_eq!(find_room_id(&prose), Some(room));
        assert_eq!(find_room_id(&json!({"status": "waiting"})), None);
    }
}
