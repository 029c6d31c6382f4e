//! The tools' arguments and results, as models see them in the schemas.
//! Field doc comments become schema descriptions, so they are written for a
//! model deciding how to call the tool.

use mcp_chat_proto::matching::{MAX_INTEREST_WAIT_S, normalize_interests};
use mcp_chat_proto::{Entry, Kind, Meet, RoomId};
use rmcp::model::JsonObject;
use rmcp::schemars::{self, JsonSchema, Schema};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::events::ChatEvent;

/// Longest a tool call may block. Clients cut calls off at about 60 s; this
/// leaves room for the round trip.
pub const MAX_WAIT_S: u64 = 50;
/// `wait_for_events` waits this long unless told otherwise.
pub const DEFAULT_EVENT_WAIT_S: u64 = 25;
/// Bytes of events one tool result carries at most (as the model reads
/// them; at least one event always fits). A stranger who floods a session
/// reaches the model's context this much per call, never megabytes at once;
/// the rest follow on the next calls (`more_pending`).
pub const EVENTS_PER_RESULT_BYTES: usize = 64 * 1024;

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(transform = standard_formats)]
pub struct EnterQueueParams {
    /// Seconds to wait for a partner before answering `waiting` (0 to 50).
    /// 0, the default, answers at once.
    #[serde(default, deserialize_with = "wait_seconds")]
    #[schemars(range(min = 0, max = 50))]
    pub wait_s: u64,
    /// Up to 5 interests, such as ["chess", "rust"]: you meet someone who
    /// shares one first. Letters a-z, digits and `-`, at most 32 characters
    /// each (trimmed and lowercased for you).
    #[serde(default, deserialize_with = "interests")]
    #[schemars(length(max = 5))]
    pub interests: Vec<String>,
    /// Seconds to hold out for someone who shares an interest before
    /// meeting anyone (0 to 50, default 10). Only with `interests`.
    #[serde(default, deserialize_with = "interest_wait")]
    #[schemars(range(min = 0, max = 50))]
    pub interest_wait_s: Option<u64>,
    /// Whom to meet: `anyone` (the default), `agents` or `people`.
    #[serde(default)]
    pub meet: MeetArg,
    /// What you are: `agent` (the default) or `person` when a human types
    /// your messages. Partners see it.
    #[serde(default, rename = "as")]
    pub as_kind: KindArg,
}

/// Whom `enter_queue` may pair you with.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MeetArg {
    #[default]
    Anyone,
    Agents,
    People,
}

impl From<MeetArg> for Meet {
    fn from(meet: MeetArg) -> Self {
        match meet {
            MeetArg::Anyone => Self::Anyone,
            MeetArg::Agents => Self::Agents,
            MeetArg::People => Self::People,
        }
    }
}

/// What a session is.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KindArg {
    #[default]
    Agent,
    Person,
}

impl From<KindArg> for Kind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::Agent => Self::Agent,
            KindArg::Person => Self::Person,
        }
    }
}

impl EnterQueueParams {
    /// The broker request's options (the interests are already normalised).
    pub fn entry(&self) -> Entry {
        Entry {
            interests: self.interests.clone(),
            interest_wait_s: self.interest_wait_s,
            meet: self.meet.into(),
            kind: self.as_kind.into(),
            block_id: None,
        }
    }
}

fn interests<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let raw = Vec::<String>::deserialize(deserializer)?;
    normalize_interests(&raw).map_err(|refusal| serde::de::Error::custom(refusal.message))
}

fn interest_wait<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let seconds = u64::deserialize(deserializer)?;
    if seconds > MAX_INTEREST_WAIT_S {
        return Err(serde::de::Error::custom(format!(
            "interest_wait_s {seconds} is over the {MAX_INTEREST_WAIT_S}-second limit"
        )));
    }
    Ok(Some(seconds))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(transform = standard_formats)]
pub struct SendMessageParams {
    /// The room_id from `enter_queue` or the `chatroom.found` event.
    #[serde(deserialize_with = "room_id")]
    #[schemars(with = "String")]
    pub room_id: RoomId,
    /// Your message to the partner: plain text, at most 16384 bytes.
    pub message: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(transform = standard_formats)]
pub struct LeaveChatParams {
    /// The room to leave.
    #[serde(deserialize_with = "room_id")]
    #[schemars(with = "String")]
    pub room_id: RoomId,
    /// true to also never be matched with this partner again. They are
    /// told only that you left.
    #[serde(default)]
    pub block: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(transform = standard_formats)]
pub struct WaitForEventsParams {
    /// Seconds to wait when no event is pending (0 to 50, default 25).
    /// Returns as soon as one arrives.
    #[serde(default = "default_event_wait", deserialize_with = "wait_seconds")]
    #[schemars(range(min = 0, max = 50))]
    pub timeout_s: u64,
}

fn default_event_wait() -> u64 {
    DEFAULT_EVENT_WAIT_S
}

fn wait_seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let seconds = u64::deserialize(deserializer)?;
    if seconds > MAX_WAIT_S {
        return Err(serde::de::Error::custom(format!(
            "{seconds} seconds is over the {MAX_WAIT_S}-second limit"
        )));
    }
    Ok(seconds)
}

fn room_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<RoomId, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse()
        .map_err(|_| serde::de::Error::custom(format!("room_id {text:?} is not a UUID")))
}

/// Checks a tool call's arguments with the tool's own types before rmcp
/// parses them, so a mistake comes back as a tool error the model reads
/// (see `ChatServer::call_tool`). Tools without arguments, and names that
/// are no tool, pass: rmcp answers those.
pub fn check_arguments(tool: &str, arguments: Option<&JsonObject>) -> Result<(), String> {
    let Some(check) = argument_check(tool) else {
        return Ok(());
    };
    let value = serde_json::Value::Object(arguments.cloned().unwrap_or_default());
    check(value).map_err(|e| {
        format!("invalid arguments for {tool}: {e}. Call it again as its input schema says.")
    })
}

type ArgumentCheck = fn(serde_json::Value) -> Result<(), serde_json::Error>;

fn argument_check(tool: &str) -> Option<ArgumentCheck> {
    fn parses<T: DeserializeOwned>(value: serde_json::Value) -> Result<(), serde_json::Error> {
        serde_json::from_value::<T>(value).map(drop)
    }
    Some(match tool {
        "enter_queue" => parses::<EnterQueueParams>,
        "send_message" => parses::<SendMessageParams>,
        "leave_chat" => parses::<LeaveChatParams>,
        "wait_for_events" => parses::<WaitForEventsParams>,
        _ => return None,
    })
}

/// Drops `format` annotations JSON Schema does not define (schemars writes
/// `uint64`, `uint` for Rust integer types): validators such as the
/// TypeScript SDK's warn on every `tools/list` about them. The ranges stay.
pub fn standard_formats(schema: &mut Schema) {
    if schema
        .get("format")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|format| format.starts_with("uint") || format.starts_with("int"))
    {
        schema.remove("format");
    }
    schemars::transform::transform_subschemas(&mut standard_formats, schema);
}

/// A tool's own result plus any events that were waiting.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(transform = standard_formats)]
pub struct WithEvents<T> {
    #[serde(flatten)]
    pub result: T,
    /// Events that arrived since you last saw any, oldest first. Each is
    /// delivered in exactly one tool result.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<ChatEvent>,
    /// Older events let go because over 4096 waited unpulled (see `seq`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_dropped: Option<u64>,
    /// Events still waiting after these (a result carries at most 64 KiB of
    /// events): call wait_for_events to take them, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub more_pending: Option<usize>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueueStatus {
    Waiting,
    Matched,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(transform = standard_formats)]
pub struct EnterQueueResult {
    /// `matched`: you are in a room with a partner. `waiting`: nobody yet.
    pub status: QueueStatus,
    /// Place in the queue when waiting (1 = next to be matched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// The room to use with send_message when matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    /// When matched: the interests you and your partner share (possibly
    /// none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub common_interests: Option<Vec<String>>,
    /// When matched: what your partner is, `agent` or `person`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partner_kind: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(transform = standard_formats)]
pub struct StatusOnly {
    /// `sent` or `left`.
    pub status: &'static str,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(transform = standard_formats)]
pub struct EventsResult {
    /// Events oldest first; empty when the wait timed out.
    pub events: Vec<ChatEvent>,
    /// Older events let go because over 4096 waited unpulled (see `seq`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_dropped: Option<u64>,
    /// Events still waiting after these (a result carries at most 64 KiB of
    /// events): call wait_for_events again to take them, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub more_pending: Option<usize>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Idle,
    Waiting,
    InRoom,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(transform = standard_formats)]
pub struct ChatStatusResult {
    /// Where you stand: `idle`, `waiting` or `in_room`.
    pub state: SessionState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// Sessions connected to the broker, you included. This and the next
    /// two are left out while the connection to the broker is being
    /// re-made, or when the broker does not answer within 3 seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<usize>,
    /// Sessions waiting for a partner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<usize>,
    /// Rooms with two people chatting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms: Option<usize>,
    /// The ten busiest interests among those waiting, busiest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busiest_interests: Option<Vec<InterestWaiting>>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(transform = standard_formats)]
pub struct InterestWaiting {
    pub interest: String,
    /// Sessions waiting with this interest.
    pub waiting: usize,
}

/// A failed call as the model reads it: a code to branch on and a sentence
/// that says what to do next.
#[derive(Debug, Serialize)]
pub struct ToolFailure {
    pub error: String,
    pub message: String,
    /// For `rate_limited`: wait this long before sending again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<ChatEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_dropped: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub more_pending: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wait_is_bounded() {
        let ok: EnterQueueParams = serde_json::from_value(json!({"wait_s": 50})).unwrap();
        assert_eq!(ok.wait_s, 50);
        let err = serde_json::from_value::<EnterQueueParams>(json!({"wait_s": 51})).unwrap_err();
        assert!(err.to_string().contains("50-second limit"), "{err}");
        let default: WaitForEventsParams = serde_json::from_value(json!({})).unwrap();
        assert_eq!(default.timeout_s, DEFAULT_EVENT_WAIT_S);
    }

    #[test]
    fn enter_queue_options_are_checked_and_normalised() {
        let params: EnterQueueParams = serde_json::from_value(json!({
            "interests": [" Chess", "RUST-lang", "chess"],
            "interest_wait_s": 3,
            "meet": "people",
            "as": "person"
        }))
        .unwrap();
        let entry = params.entry();
        assert_eq!(entry.interests, vec!["chess", "rust-lang"]);
        assert_eq!(entry.interest_wait_s, Some(3));
        assert_eq!((entry.meet, entry.kind), (Meet::People, Kind::Person));
        let plain: EnterQueueParams = serde_json::from_value(json!({})).unwrap();
        assert_eq!(plain.entry(), Entry::default(), "no options: today's entry");
        for (bad, says) in [
            (
                json!({"interests": ["a", "b", "c", "d", "e", "f"]}),
                "at most 5",
            ),
            (json!({"interests": ["x".repeat(33)]}), "at most 32"),
            (json!({"interests": ["c++"]}), "'+'"),
            (json!({"interests": [""]}), "empty"),
            (json!({"interests": "chess"}), "sequence"),
            (json!({"interest_wait_s": 51}), "50-second"),
            (json!({"meet": "robots"}), "unknown variant `robots`"),
            (json!({"as": "cat"}), "unknown variant `cat`"),
        ] {
            let err = check_arguments("enter_queue", bad.as_object()).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn room_id_must_be_a_uuid() {
        let err =
            serde_json::from_value::<LeaveChatParams>(json!({"room_id": "lobby"})).unwrap_err();
        assert!(err.to_string().contains("not a UUID"), "{err}");
    }

    #[test]
    fn results_have_object_schemas() {
        // Clients before MCP 2026-07-28 drop structured content whose schema
        // root is not an object.
        for schema in [
            schemars::schema_for!(WithEvents<EnterQueueResult>),
            schemars::schema_for!(WithEvents<ChatStatusResult>),
            schemars::schema_for!(EventsResult),
        ] {
            assert_eq!(schema.get("type"), Some(&json!("object")), "{schema:?}");
        }
    }
}
