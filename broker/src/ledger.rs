//! How far a connection has written: the broker's side of "`sent` means
//! delivered or reported".
//!
//! An event counts as written once every byte of its frame has been accepted
//! by the client's socket: from there the client reads it whenever it runs.
//! Frames are encoded into the transport's write buffer and reach the socket
//! in flushes that may stop part way (a client that stopped reading), so the
//! ledger remembers where each event's frame ends in the stream of encoded
//! bytes. After a complete flush everything fed is written; when the
//! connection ends, the bytes still in the write buffer say exactly which
//! frames never left.

use std::collections::VecDeque;

use bytes::BytesMut;
use mcp_chat_proto::{BrokerCodec, BrokerMsg, ClientMsg, CodecError};
use tokio_util::codec::{Decoder, Encoder};

use crate::state::Written;

/// The broker's codec, counting every byte it encodes.
#[derive(Debug, Default)]
pub(crate) struct CountingCodec {
    inner: BrokerCodec,
    encoded: u64,
}

impl CountingCodec {
    /// Bytes encoded so far on this connection.
    pub(crate) fn encoded(&self) -> u64 {
        self.encoded
    }
}

impl Decoder for CountingCodec {
    type Item = ClientMsg;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ClientMsg>, CodecError> {
        self.inner.decode(src)
    }
}

impl Encoder<BrokerMsg> for CountingCodec {
    type Error = CodecError;

    fn encode(&mut self, item: BrokerMsg, dst: &mut BytesMut) -> Result<(), CodecError> {
        let before = dst.len();
        self.inner.encode(item, dst)?;
        self.encoded += (dst.len() - before) as u64;
        Ok(())
    }
}

/// Event frames fed to the transport but not yet known to be written.
#[derive(Debug)]
pub(crate) struct Ledger {
    written: Written,
    /// `(end of the frame in encoded bytes, its seq)`, oldest first.
    unflushed: VecDeque<(u64, u64)>,
}

impl Ledger {
    pub(crate) fn new(written: Written) -> Self {
        Self {
            written,
            unflushed: VecDeque::new(),
        }
    }

    /// An event frame ending at `end` (in encoded bytes) was fed.
    pub(crate) fn fed(&mut self, end: u64, seq: u64) {
        self.unflushed.push_back((end, seq));
    }

    /// A flush completed: every frame fed so far is in the socket.
    pub(crate) fn flushed(&mut self) {
        if let Some(&(_, seq)) = self.unflushed.back() {
            self.written.advance_to(seq);
        }
        self.unflushed.clear();
    }

    /// The connection is ending with `buffered` bytes of the `encoded` ones
    /// never written: every frame that ends before them was.
    pub(crate) fn finish(&mut self, encoded: u64, buffered: usize) {
        let reached = encoded.saturating_sub(buffered as u64);
        let whole = self
            .unflushed
            .iter()
            .take_while(|(end, _)| *end <= reached)
            .last();
        if let Some(&(_, seq)) = whole {
            self.written.advance_to(seq);
        }
        self.unflushed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_frames_count_as_written() {
        let written = Written::default();
        let mut ledger = Ledger::new(written.clone());
        ledger.fed(100, 1);
        ledger.flushed();
        assert_eq!(written.get(), 1);
        ledger.fed(200, 2);
        ledger.fed(300, 3);
        ledger.fed(400, 4);
        // 350 of 400 bytes reached the socket: frames 2 and 3 whole, 4 not.
        ledger.finish(400, 50);
        assert_eq!(written.get(), 3);
    }

    #[test]
    fn nothing_new_written_keeps_the_old_mark() {
        let written = Written::default();
        written.advance_to(7);
        let mut ledger = Ledger::new(written.clone());
        ledger.fed(100, 8);
        ledger.finish(100, 100);
        assert_eq!(written.get(), 7);
    }

    #[test]
    fn the_codec_counts_what_it_encodes() {
        let mut codec = CountingCodec::default();
        let mut buffer = BytesMut::new();
        codec
            .encode(BrokerMsg::Ping { nonce: 1 }, &mut buffer)
            .unwrap();
        assert_eq!(codec.encoded(), buffer.len() as u64);
    }
}
