//! The wire between `mcp-chat` shims and the `mcp-chat-broker` daemon.
//!
//! - [`message`]: what travels: the handshake, requests and their replies, and
//!   the events the broker pushes, each enum named by its direction.
//! - [`codec`]: how it travels: a u32 big-endian length prefix and one JSON
//!   document per frame, capped at [`limits::MAX_FRAME_BYTES`] both ways.
//! - [`matching`]: the options of `enter_queue` (interests, kinds, whom
//!   to meet), how both ends check them, and which kinds may meet.
//! - [`limits`]: every size and version number both sides must agree on.
//! - [`socket_path`]: where the broker listens, and the checks that keep
//!   another user out of that directory.
//! - [`error`]: the typed failures of all of the above.
//! - `raw`: the one-pass reader behind `ClientMsg`'s `Deserialize`, which
//!   keeps the broker's hot path off serde's tagged-enum buffering.
//!
//! This crate does no I/O policy: it never connects, spawns or retries.
//!
//! Vocabulary, the same in every crate of the workspace, because "session"
//! alone has meant four things:
//! - **broker session**: what the broker keeps for one client: its place
//!   (idle, waiting, in a room), its event `seq` and replay buffer, its
//!   resume token. Named by `session_id` in [`BrokerMsg::Welcome`]; in the
//!   broker, `state::BrokerSession` keyed by `SessionId`.
//! - **connection**: one socket carrying a broker session. A broker session
//!   outlives a dropped connection for the resume grace.
//! - **chat session**: the shim's side of its broker session
//!   (`mcp_chat_shim::session::ChatSession`), which re-makes connections.
//! - **MCP session**: one MCP client talking to one shim: a stdio process's
//!   lifetime, or one `Mcp-Session-Id` over HTTP. Each has one chat session.
//!
//! A [`Refusal`] is the broker turning something down: an [`ErrorCode`]
//! plus the sentence a person or model reads.

pub mod codec;
pub mod error;
pub mod limits;
pub mod matching;
pub mod message;
mod raw;
pub mod socket_path;

pub use codec::{BrokerCodec, ClientCodec, JsonCodec};
pub use error::{CodecError, SocketDirError};
pub use limits::{MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, PROTOCOL_VERSION};
pub use matching::{Entry, InterestCount, Kind, Meet};
pub use message::{
    BrokerMsg, ClientMsg, DisconnectReason, ErrorCode, Event, FederationStatus, MatchInfo, Refusal,
    Reply, Request, Resume, RoomId, StatusInfo,
};
