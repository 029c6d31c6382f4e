//! The wire between `mcp-chat` shims and the `mcp-chat-broker` daemon.
//!
//! - [`message`]: what travels: the handshake, requests and their replies, and
//!   the events the broker pushes, each enum named by its direction.
//! - [`codec`]: how it travels: a u32 big-endian length prefix and one JSON
//!   document per frame, capped at [`limits::MAX_FRAME_BYTES`] both ways.
//! - [`limits`]: every size and version number both sides must agree on.
//! - [`socket_path`]: where the broker listens, and the checks that keep
//!   another user out of that directory.
//! - [`error`]: the typed failures of all of the above.
//! - `raw`: the one-pass reader behind `ClientMsg`'s `Deserialize`, which
//!   keeps the broker's hot path off serde's tagged-enum buffering.
//!
//! This crate does no I/O policy: it never connects, spawns or retries.

pub mod codec;
pub mod error;
pub mod limits;
pub mod message;
mod raw;
pub mod socket_path;

pub use codec::{BrokerCodec, ClientCodec, JsonCodec};
pub use error::{CodecError, SocketDirError};
pub use limits::{MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, PROTOCOL_VERSION};
pub use message::{
    BrokerMsg, ClientMsg, DisconnectReason, ErrorCode, Event, Refusal, Reply, Request, Resume,
    RoomId, StatusInfo,
};
