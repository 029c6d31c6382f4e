//! Arbitrary bytes into both sides' decoders, as a hostile peer would send
//! them: the broker's (`BrokerCodec`, reading `ClientMsg`) and the shim's
//! (`ClientCodec`, reading `BrokerMsg`).
//!
//! The first input byte picks a chunk size, so the same bytes also arrive
//! split across reads (the partial-header and partial-body paths). Each
//! decoder is drained until it needs more input or fails; a panic, a hang or
//! a buffer grown past the frame cap is a finding.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mcp_chat_proto::{BrokerCodec, ClientCodec, MAX_FRAME_BYTES};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    // 0 means "everything at once".
    let chunk = if chunk == 0 {
        bytes.len().max(1)
    } else {
        usize::from(chunk)
    };
    drain(BrokerCodec::new(), bytes, chunk);
    drain(ClientCodec::new(), bytes, chunk);
});

fn drain<D: Decoder>(mut codec: D, bytes: &[u8], chunk: usize) {
    let mut buf = BytesMut::new();
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                // Every decoded frame consumed at least its 4-byte header,
                // so this loop ends.
                Ok(Some(_)) => {}
                Ok(None) => break,
                // The connection would be closed here: stop feeding it.
                Err(_) => return,
            }
            check_bounded(&buf, bytes.len());
        }
        check_bounded(&buf, bytes.len());
    }
    // End of stream, as when the peer hangs up mid-frame.
    while let Ok(Some(_)) = codec.decode_eof(&mut buf) {}
}

/// The decoder reserves at most one capped frame ahead of what it was given:
/// a 4 GiB length prefix must not turn into a 4 GiB buffer.
fn check_bounded(buf: &BytesMut, input_len: usize) {
    let limit = 2 * (input_len + MAX_FRAME_BYTES + 4);
    assert!(
        buf.capacity() <= limit,
        "decoder buffer grew to {} bytes for {} bytes of input",
        buf.capacity(),
        input_len
    );
}
