//! A real `mcp-chat` process driven by rmcp's client over its stdio, the way
//! an MCP client application runs it.

use std::path::Path;
use std::process::Stdio;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, CustomNotification, ProgressNotificationParam,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::Value;
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::{bin_path, within};

/// Records every custom notification, in arrival order.
#[derive(Clone)]
pub struct Recorder {
    seed: mpsc::Sender<(String, Value)>,
    channel: mpsc::Sender<Value>,
    progress: mpsc::Sender<ProgressNotificationParam>,
}

impl ClientHandler for Recorder {
    async fn on_custom_notification(
        &self,
        notification: CustomNotification,
        _context: NotificationContext<RoleClient>,
    ) {
        let params = notification.params.unwrap_or(Value::Null);
        let sent = if notification.method == "notifications/claude/channel" {
            self.channel.try_send(params).is_ok()
        } else {
            self.seed.try_send((notification.method, params)).is_ok()
        };
        assert!(sent, "test notification buffer overflowed");
    }

    async fn on_progress(
        &self,
        progress: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.progress.try_send(progress);
    }
}

pub struct McpClient {
    pub service: RunningService<RoleClient, Recorder>,
    pub child: Child,
    seed: mpsc::Receiver<(String, Value)>,
    channel: mpsc::Receiver<Value>,
    progress: mpsc::Receiver<ProgressNotificationParam>,
}

impl McpClient {
    /// Starts `mcp-chat` against `socket` and completes `initialize`.
    pub async fn spawn(socket: &Path) -> Self {
        Self::spawn_with_broker(socket, &bin_path("mcp-chat-broker")).await
    }

    /// As [`Self::spawn`], with `broker` as the binary it auto-starts.
    pub async fn spawn_with_broker(socket: &Path, broker: &Path) -> Self {
        Self::spawn_with_env(socket, broker, &[]).await
    }

    /// As [`Self::spawn_with_broker`], with more environment (a state
    /// directory of its own makes it another installation).
    pub async fn spawn_with_env(socket: &Path, broker: &Path, env: &[(&str, &Path)]) -> Self {
        let mut child = tokio::process::Command::new(bin_path("mcp-chat"))
            .envs(env.iter().copied())
            .env("MCP_CHAT_SOCKET", socket)
            .env("MCP_CHAT_BROKER", broker)
            .env("MCP_CHAT_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mcp-chat");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take().expect("piped stdin");
        let (seed_tx, seed) = mpsc::channel(10_000);
        let (channel_tx, channel) = mpsc::channel(10_000);
        let (progress_tx, progress) = mpsc::channel(10_000);
        let recorder = Recorder {
            seed: seed_tx,
            channel: channel_tx,
            progress: progress_tx,
        };
        let service = within("initialize", recorder.serve((stdout, stdin)))
            .await
            .expect("MCP initialize");
        Self {
            service,
            child,
            seed,
            channel,
            progress,
        }
    }

    pub async fn progress(&mut self) -> ProgressNotificationParam {
        within("a progress notification", self.progress.recv())
            .await
            .expect("client alive")
    }

    pub async fn call(&self, tool: &str, arguments: Value) -> CallToolResult {
        let mut params = CallToolRequestParams::new(tool.to_owned());
        if let Value::Object(arguments) = arguments {
            params = params.with_arguments(arguments);
        }
        within(&format!("{tool} result"), self.service.call_tool(params))
            .await
            .unwrap_or_else(|e| panic!("{tool} failed at the protocol level: {e}"))
    }

    /// Calls a tool that must succeed; returns its structured content.
    pub async fn ok(&self, tool: &str, arguments: Value) -> Value {
        let result = self.call(tool, arguments).await;
        assert_ne!(result.is_error, Some(true), "{tool} failed: {result:?}");
        let structured = result
            .structured_content
            .clone()
            .unwrap_or_else(|| panic!("{tool} has no structured content: {result:?}"));
        let text = result
            .content
            .first()
            .and_then(|c| c.as_text())
            .map(|t| t.text.clone())
            .unwrap_or_default();
        let from_text: Value = serde_json::from_str(&text).expect("text content is the same JSON");
        assert_eq!(from_text, structured, "text and structured content agree");
        structured
    }

    /// Calls a tool that must fail as a tool result; returns the failure JSON.
    pub async fn fails(&self, tool: &str, arguments: Value) -> Value {
        let result = self.call(tool, arguments).await;
        assert_eq!(
            result.is_error,
            Some(true),
            "{tool} should fail: {result:?}"
        );
        let text = result
            .content
            .first()
            .and_then(|c| c.as_text())
            .map(|t| t.text.clone())
            .expect("an error text");
        serde_json::from_str(&text).expect("error text is JSON")
    }

    /// The next seed notification (`chatroom.found`, `message.received`,
    /// `partner.disconnected`).
    pub async fn notification(&mut self) -> (String, Value) {
        within("a notification", self.seed.recv())
            .await
            .expect("client alive")
    }

    /// Waits for the next notification, which must have this method.
    pub async fn expect_notification(&mut self, method: &str) -> Value {
        let (got, params) = self.notification().await;
        assert_eq!(got, method, "params: {params}");
        params
    }

    pub async fn channel_event(&mut self) -> Value {
        within("a channel notification", self.channel.recv())
            .await
            .expect("client alive")
    }

    /// Closes stdin the way a client does on exit; returns the exit status.
    pub async fn close(mut self) -> std::process::ExitStatus {
        let _ = self.service.cancel().await;
        within("mcp-chat exit", self.child.wait())
            .await
            .expect("wait for mcp-chat")
    }
}

/// `room_id` of a `{"status":"matched"}` result.
pub fn matched_room(result: &Value) -> String {
    assert_eq!(result["status"], "matched", "{result}");
    result["room_id"].as_str().expect("room_id").to_owned()
}

/// The room `client` was put in by its `enter_queue` `reply`, taken from its
/// own `chatroom.found` notification (consumed here). Entering beside a
/// waiter is answered `matched` at once, or, when the broker first pings a
/// waiter it has not heard from lately (two seconds on a loaded machine),
/// `waiting`, and the match follows: the notification is what counts, the
/// reply only has to agree with it.
pub async fn found_room(client: &mut McpClient, reply: &Value) -> String {
    let found = client.expect_notification("chatroom.found").await;
    let room = found["room_id"].as_str().expect("room_id").to_owned();
    match reply["status"].as_str() {
        Some("matched") => assert_eq!(reply["room_id"], room, "{reply}"),
        _ => assert_eq!(reply["status"], "waiting", "{reply}"),
    }
    room
}

/// `first` enters and waits, then `second` enters: the room they meet in,
/// once both have their `chatroom.found` (no shared interests, an agent).
pub async fn meet(first: &mut McpClient, second: &mut McpClient) -> String {
    let waiting = first.ok("enter_queue", serde_json::json!({})).await;
    assert_eq!(waiting["status"], "waiting", "{waiting}");
    let reply = second.ok("enter_queue", serde_json::json!({})).await;
    let room = found_room(second, &reply).await;
    let expected =
        serde_json::json!({"room_id": room, "common_interests": [], "partner_kind": "agent"});
    assert_eq!(first.expect_notification("chatroom.found").await, expected);
    room
}
