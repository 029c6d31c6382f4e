//! Numbers both ends of the socket must agree on.

/// Version of the shim ↔ broker protocol. Bumped on any change an older peer
/// could misread; additive changes (a new variant) ride on `Unknown` instead.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side will read or write. A chat message is capped far
/// lower ([`MAX_MESSAGE_BYTES`]); the rest is headroom for JSON escaping (a
/// control character becomes six bytes) while still refusing a hostile length
/// prefix before a single byte of it is buffered.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Largest chat message, in bytes of UTF-8. Long enough for a page of text,
/// short enough that a model's context is not flooded by one stranger.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
