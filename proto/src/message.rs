//! Messages on the shim ↔ broker socket, one enum per direction.
//!
//! Every enum is internally tagged and ends in an `Unknown` catch-all, so a
//! peer one version ahead can add a variant without breaking this one: the
//! broker answers an unknown request with [`ErrorCode::UnknownRequest`] and a
//! shim ignores an unknown event. No type denies unknown fields, for the same
//! reason.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::matching::{Entry, InterestCount, Kind};

/// A chat room's id: a random UUID v4, so ids are unguessable and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoomId(pub Uuid);

impl RoomId {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for RoomId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim()).map(Self)
    }
}

/// Shim → broker. Read through `crate::raw`, which decodes each frame in
/// one pass; written by the derive below.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    try_from = "crate::raw::RawClientMsg"
)]
pub enum ClientMsg {
    /// Must be the first frame on a connection.
    Hello {
        protocol: u32,
        client_name: String,
        client_version: String,
        pid: u32,
        /// Set when reconnecting: pick the old session up where it was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
    },
    /// A request; the broker's [`BrokerMsg::Response`] echoes `id`.
    Request { id: u64, request: Request },
    /// Answers [`BrokerMsg::Ping`], proving the client is alive.
    Pong { nonce: u64 },
    /// Every event up to `seq` is safely in the client's hands, so the
    /// broker may stop keeping them for a resume.
    Ack { seq: u64 },
    #[serde(other)]
    Unknown,
}

/// A reconnecting client's claim on its previous session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The `resume_token` from the previous `Welcome`.
    pub token: String,
    /// The last event `seq` the client received; the broker replays the rest.
    pub last_seq: u64,
}

/// What a session can ask of the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Options travel beside `op`; an `enter_queue` without them is the
    /// plain FIFO entry of brokers before options existed.
    EnterQueue(Entry),
    SendMessage {
        room_id: RoomId,
        message: String,
    },
    LeaveChat {
        room_id: RoomId,
        /// Leave and never be matched with this partner again.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        block: bool,
    },
    Status,
    Ping,
    #[serde(other)]
    Unknown,
}

/// Broker → shim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BrokerMsg {
    /// The handshake succeeded; requests may follow.
    Welcome {
        protocol: u32,
        broker_version: String,
        /// The broker session's id: the same after a resume.
        session_id: u64,
        /// Secret that lets this client resume the session after losing the
        /// connection, within the broker's grace period.
        #[serde(default)]
        resume_token: String,
        /// True when a `Hello { resume }` picked up the old session; its
        /// missed events follow, in order, with their original `seq`.
        #[serde(default)]
        resumed: bool,
        /// Random per broker process: a client that finds a new value after
        /// reconnecting knows the broker restarted.
        #[serde(default)]
        instance: String,
    },
    /// The handshake failed; the broker closes the connection after this.
    Refused {
        code: ErrorCode,
        message: String,
    },
    Response {
        id: u64,
        reply: Reply,
    },
    /// Pushed unsolicited. `seq` starts at 1 and grows by exactly one per
    /// event of this session, so a gap proves a lost event.
    Event {
        seq: u64,
        event: Event,
    },
    /// Heartbeat: answer with [`ClientMsg::Pong`] or be dropped as frozen.
    Ping {
        nonce: u64,
    },
    #[serde(other)]
    Unknown,
}

/// The answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// In the queue; `position` is 1-based (1 = next to be matched).
    Waiting {
        position: usize,
    },
    Matched {
        room_id: RoomId,
        #[serde(flatten)]
        partner: MatchInfo,
    },
    Sent,
    Left,
    /// Left, and the two will never be matched again: the answer to
    /// `leave_chat` with `block`. A broker that answers `left` instead is
    /// too old to block, which the client must not take as a block.
    Blocked,
    /// Boxed: the largest reply by far, and every slot of every session's
    /// outbox is as large as the largest message.
    Status(Box<StatusInfo>),
    Pong,
    Error {
        code: ErrorCode,
        message: String,
        /// For `rate_limited`: how long to wait before trying again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    #[serde(other)]
    Unknown,
}

impl Reply {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// Broker-wide figures, for `mcp-chat status` and the `chat_status` tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub broker_version: String,
    pub pid: u32,
    pub uptime_s: u64,
    /// Broker sessions, whatever their state, including detached ones.
    pub sessions: usize,
    pub waiting: usize,
    pub rooms: usize,
    /// Broker sessions whose connection dropped and that are held for a
    /// resume until their grace runs out. 0 from brokers older than this.
    #[serde(default)]
    pub detached: usize,
    /// The file the broker logs to; `None` when it logs to stderr (run in
    /// the foreground) or is older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// The busiest interests among waiting sessions, busiest first, at most
    /// ten. Empty from brokers older than interests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interests: Vec<InterestCount>,
    /// The link to a realm of brokers over NATS; `None` when federation is
    /// off (or the broker is older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<FederationStatus>,
}

/// What a session learns about its match: the interests the two share
/// (possibly none) and what the partner is. Never who the partner is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchInfo {
    #[serde(default)]
    pub common_interests: Vec<String>,
    /// `None` from brokers older than kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_kind: Option<Kind>,
}

/// What `mcp-chat status` and `doctor` show of a broker's federation link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationStatus {
    /// The NATS server(s) configured, without credentials.
    pub server: String,
    pub realm: String,
    /// Connected to NATS with the realm's queue and stream set up: waiting
    /// sessions go through the realm.
    pub connected: bool,
    /// Since when the link has been in its current state (connected or
    /// not), in seconds since the Unix epoch.
    pub since: u64,
    /// Sessions waiting in the whole realm, as this broker last saw it.
    pub waiting_in_realm: usize,
    /// This broker's rooms whose partner is on another broker.
    pub remote_rooms: usize,
    /// Inbound federation messages dropped as malformed, oversized, too fast
    /// or not from the room's partner broker.
    #[serde(default)]
    pub rejected: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why this broker does not use the realm key its bucket holds (it
    /// keeps the key it pinned when it first joined, or, with none pinned
    /// and no valid key there, one of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm_key_note: Option<String>,
}

/// Something that happened to a session without it asking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    ChatroomFound {
        room_id: RoomId,
        #[serde(flatten)]
        partner: MatchInfo,
    },
    MessageReceived {
        room_id: RoomId,
        message: String,
        /// When the broker relayed it, in milliseconds since the Unix epoch.
        sent_at: u64,
    },
    PartnerDisconnected {
        room_id: RoomId,
        reason: DisconnectReason,
        /// Messages this session sent that never left the broker for the
        /// partner: each was answered `sent`, and this is the report that it
        /// was not delivered. 0 when all were.
        #[serde(default)]
        undelivered: u64,
        /// Messages written to the partner's socket that its client never
        /// acknowledged (it froze or exited right after): they may or may
        /// not have been read.
        #[serde(default)]
        unconfirmed: u64,
    },
    /// The broker is going away; the connection closes after this.
    Shutdown,
    #[serde(other)]
    Unknown,
}

/// Why a partner is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The partner called `leave_chat`.
    Left,
    /// The partner's connection closed, or the broker dropped it.
    Disconnected,
    /// The broker is shutting down.
    Shutdown,
    /// The partner was on another broker of the realm, and this broker lost
    /// its link to the realm for longer than the grace.
    FederationLost,
    #[serde(other)]
    Unknown,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Disconnected => "disconnected",
            Self::Shutdown => "shutdown",
            Self::FederationLost => "federation_lost",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every failure the broker reports, in replies and refusals alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No such room, or the session is not a member of it.
    UnknownRoom,
    /// The room exists but the partner has left it.
    PartnerGone,
    EmptyMessage,
    MessageTooLong,
    AlreadyInRoom,
    UnknownRequest,
    /// A frame that was not valid JSON for this protocol.
    BadFrame,
    ProtocolMismatch,
    /// The first frame was not a `Hello`.
    BadHandshake,
    /// The peer runs as another user.
    WrongUser,
    BrokerFull,
    ShuttingDown,
    /// Messages sent faster than the per-session limit.
    RateLimited,
    /// A request's options were invalid (too many interests, an unknown
    /// `meet`, ...); the message says which.
    InvalidArguments,
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownRoom => "unknown_room",
            Self::PartnerGone => "partner_gone",
            Self::EmptyMessage => "empty_message",
            Self::MessageTooLong => "message_too_long",
            Self::AlreadyInRoom => "already_in_room",
            Self::UnknownRequest => "unknown_request",
            Self::BadFrame => "bad_frame",
            Self::ProtocolMismatch => "protocol_mismatch",
            Self::BadHandshake => "bad_handshake",
            Self::WrongUser => "wrong_user",
            Self::BrokerFull => "broker_full",
            Self::ShuttingDown => "shutting_down",
            Self::RateLimited => "rate_limited",
            Self::InvalidArguments => "invalid_arguments",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the broker turned something down: the code a program acts on and
/// the sentence a person or model reads. Travels as `Reply::Error` or
/// `BrokerMsg::Refused`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: String) -> Self {
        Self { code, message }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Checks a chat message against the limits both ends enforce: the shim
/// early, so a model gets a precise tool error, and the broker again, because
/// it trusts no client.
pub fn check_message(message: &str) -> Result<(), Refusal> {
    if message.trim().is_empty() {
        return Err(Refusal::new(
            ErrorCode::EmptyMessage,
            "the message is empty; send some text".to_owned(),
        ));
    }
    if message.len() > crate::MAX_MESSAGE_BYTES {
        return Err(Refusal::new(
            ErrorCode::MessageTooLong,
            format!(
                "the message is {} bytes of UTF-8; the limit is {} bytes, so split it into shorter messages",
                message.len(),
                crate::MAX_MESSAGE_BYTES
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::Entry;
    use serde_json::json;

    #[test]
    fn wire_shapes_are_stable() {
        let room_id: RoomId = "6f1c2a52-8b44-4c8e-9d57-0c1f9d3f5a10".parse().unwrap();
        let msg = ClientMsg::Request {
            id: 7,
            request: Request::SendMessage {
                room_id,
                message: "hi".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&msg).unwrap(),
            json!({"type":"request","id":7,"request":{"op":"send_message","room_id":room_id.to_string(),"message":"hi"}})
        );
        let event = BrokerMsg::Event {
            seq: 3,
            event: Event::PartnerDisconnected {
                room_id,
                reason: DisconnectReason::Left,
                undelivered: 2,
                unconfirmed: 1,
            },
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            json!({"type":"event","seq":3,"event":{"event":"partner_disconnected","room_id":room_id.to_string(),"reason":"left","undelivered":2,"unconfirmed":1}})
        );
        // A broker of the previous release sends no counts: zero.
        let old: Event = serde_json::from_value(
            json!({"event":"partner_disconnected","room_id":room_id.to_string(),"reason":"left"}),
        )
        .unwrap();
        assert!(matches!(
            old,
            Event::PartnerDisconnected {
                undelivered: 0,
                unconfirmed: 0,
                ..
            }
        ));
        let status = Reply::Status(Box::new(StatusInfo {
            broker_version: "1".into(),
            pid: 1,
            uptime_s: 2,
            sessions: 3,
            waiting: 4,
            rooms: 5,
            detached: 6,
            log_path: Some("/tmp/broker.log".into()),
            interests: vec![crate::matching::InterestCount {
                interest: "chess".into(),
                waiting: 7,
            }],
            federation: Some(FederationStatus {
                server: "nats://127.0.0.1:4222".into(),
                realm: "team".into(),
                connected: true,
                ..FederationStatus::default()
            }),
        }));
        let back: Reply = serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn matching_options_are_additive() {
        // An old client's enter_queue and leave_chat read as the defaults,
        // and the defaults write exactly what old clients wrote.
        let old: ClientMsg =
            serde_json::from_value(json!({"type":"request","id":1,"request":{"op":"enter_queue"}}))
                .unwrap();
        let plain = ClientMsg::Request {
            id: 1,
            request: Request::EnterQueue(Entry::default()),
        };
        assert_eq!(old, plain);
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            json!({"type":"request","id":1,"request":{"op":"enter_queue"}})
        );
        let room_id = RoomId::new_random();
        let leave = Request::LeaveChat {
            room_id,
            block: false,
        };
        assert_eq!(
            serde_json::to_value(&leave).unwrap(),
            json!({"op":"leave_chat","room_id":room_id.to_string()})
        );
        // An old broker's chatroom_found and matched carry no match info.
        let found: Event =
            serde_json::from_value(json!({"event":"chatroom_found","room_id":room_id.to_string()}))
                .unwrap();
        assert_eq!(
            found,
            Event::ChatroomFound {
                room_id,
                partner: MatchInfo::default()
            }
        );
        let matched = Reply::Matched {
            room_id,
            partner: MatchInfo {
                common_interests: vec!["chess".into()],
                partner_kind: Some(Kind::Person),
            },
        };
        assert_eq!(
            serde_json::to_value(&matched).unwrap(),
            json!({"status":"matched","room_id":room_id.to_string(),"common_interests":["chess"],"partner_kind":"person"})
        );
        let back: Reply = serde_json::from_value(serde_json::to_value(&matched).unwrap()).unwrap();
        assert_eq!(back, matched);
    }

    #[test]
    fn unknown_variants_decode_to_unknown() {
        let msg: ClientMsg =
            serde_json::from_value(json!({"type":"teleport","to":"mars"})).unwrap();
        assert_eq!(msg, ClientMsg::Unknown);
        let msg: ClientMsg =
            serde_json::from_value(json!({"type":"request","id":1,"request":{"op":"dance"}}))
                .unwrap();
        assert_eq!(
            msg,
            ClientMsg::Request {
                id: 1,
                request: Request::Unknown
            }
        );
        let event: Event = serde_json::from_value(json!({"event":"typing","room_id":"x"})).unwrap();
        assert_eq!(event, Event::Unknown);
        let reason: DisconnectReason = serde_json::from_value(json!("eaten_by_grue")).unwrap();
        assert_eq!(reason, DisconnectReason::Unknown);
        let code: ErrorCode = serde_json::from_value(json!("new_code")).unwrap();
        assert_eq!(code, ErrorCode::Unknown);
    }

    #[test]
    fn extra_fields_are_ignored() {
        let msg: ClientMsg = serde_json::from_value(
            json!({"type":"hello","protocol":1,"client_name":"x","client_version":"1","pid":2,"future":true}),
        )
        .unwrap();
        assert!(matches!(msg, ClientMsg::Hello { protocol: 1, .. }));
    }

    #[test]
    fn as_str_matches_serde_name() {
        for code in [
            ErrorCode::UnknownRoom,
            ErrorCode::PartnerGone,
            ErrorCode::EmptyMessage,
            ErrorCode::MessageTooLong,
            ErrorCode::AlreadyInRoom,
            ErrorCode::UnknownRequest,
            ErrorCode::BadFrame,
            ErrorCode::ProtocolMismatch,
            ErrorCode::BadHandshake,
            ErrorCode::WrongUser,
            ErrorCode::BrokerFull,
            ErrorCode::ShuttingDown,
            ErrorCode::RateLimited,
            ErrorCode::InvalidArguments,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
        for reason in [
            DisconnectReason::Left,
            DisconnectReason::Disconnected,
            DisconnectReason::Shutdown,
            DisconnectReason::FederationLost,
        ] {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                json!(reason.as_str())
            );
        }
    }

    #[test]
    fn message_limits() {
        assert_eq!(
            check_message("  \n").unwrap_err().code,
            ErrorCode::EmptyMessage
        );
        assert!(check_message(&"a".repeat(crate::MAX_MESSAGE_BYTES)).is_ok());
        assert_eq!(
            check_message(&"a".repeat(crate::MAX_MESSAGE_BYTES + 1))
                .unwrap_err()
                .code,
            ErrorCode::MessageTooLong
        );
        // The cap counts bytes, not characters: 4-byte emoji hit it sooner.
        let emoji = "🦀".repeat(crate::MAX_MESSAGE_BYTES / 4 + 1);
        assert_eq!(
            check_message(&emoji).unwrap_err().code,
            ErrorCode::MessageTooLong
        );
    }
}
