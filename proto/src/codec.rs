//! Framing: a u32 big-endian length, then one JSON document.
//!
//! [`LengthDelimitedCodec`] checks the length prefix against the cap before it
//! reserves any memory, so a hostile prefix of 4 GiB costs nothing. The cap is
//! applied on write as well, so this side never sends what the other refuses.

use std::marker::PhantomData;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::error::CodecError;
use crate::limits::MAX_FRAME_BYTES;
use crate::message::{BrokerMsg, ClientMsg};

/// Decodes `In` and encodes `Out`, one JSON document per frame.
#[derive(Debug)]
pub struct JsonCodec<In, Out> {
    frames: LengthDelimitedCodec,
    _types: PhantomData<fn(Out) -> In>,
}

/// The broker's side of the socket: reads [`ClientMsg`], writes [`BrokerMsg`].
pub type BrokerCodec = JsonCodec<ClientMsg, BrokerMsg>;
/// The shim's side of the socket: reads [`BrokerMsg`], writes [`ClientMsg`].
pub type ClientCodec = JsonCodec<BrokerMsg, ClientMsg>;

impl<In, Out> JsonCodec<In, Out> {
    pub fn new() -> Self {
        Self {
            frames: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .big_endian()
                .max_frame_length(MAX_FRAME_BYTES)
                .new_codec(),
            _types: PhantomData,
        }
    }
}

impl<In, Out> Default for JsonCodec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In: DeserializeOwned, Out> Decoder for JsonCodec<In, Out> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        // The length codec fails only on an over-long length prefix.
        let frame = self
            .frames
            .decode(src)
            .map_err(|_| CodecError::FrameTooLarge {
                max: MAX_FRAME_BYTES,
            })?;
        match frame {
            Some(frame) => Ok(Some(serde_json::from_slice(&frame)?)),
            None => Ok(None),
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for JsonCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        let json = serde_json::to_vec(&item)?;
        if json.len() > MAX_FRAME_BYTES {
            return Err(CodecError::FrameTooLarge {
                max: MAX_FRAME_BYTES,
            });
        }
        self.frames
            .encode(Bytes::from(json), dst)
            .map_err(CodecError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Event, Request, RoomId};
    use proptest::prelude::*;

    fn encode(msg: ClientMsg) -> BytesMut {
        let mut buf = BytesMut::new();
        ClientCodec::new().encode(msg, &mut buf).unwrap();
        buf
    }

    fn frame(payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        buf.extend_from_slice(payload);
        buf
    }

    fn sample() -> ClientMsg {
        ClientMsg::Request {
            id: 42,
            request: Request::SendMessage {
                room_id: RoomId::new_random(),
                message: "hello, stranger ✨".into(),
            },
        }
    }

    #[test]
    fn round_trip() {
        let msg = sample();
        let mut buf = encode(msg.clone());
        assert_eq!(BrokerCodec::new().decode(&mut buf).unwrap(), Some(msg));
        assert!(buf.is_empty());
    }

    #[test]
    fn split_at_every_byte() {
        let msg = sample();
        let whole = encode(msg.clone());
        for cut in 0..whole.len() {
            let mut codec = BrokerCodec::new();
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(codec.decode(&mut buf).unwrap(), None, "cut at {cut}");
            buf.extend_from_slice(&whole[cut..]);
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(msg.clone()));
        }
    }

    #[test]
    fn frame_at_cap_is_read_and_one_over_is_refused() {
        // A JSON string padded with spaces is still one valid document.
        let at_cap = {
            let mut p = b"\"x\"".to_vec();
            p.resize(MAX_FRAME_BYTES, b' ');
            p
        };
        let mut buf = frame(&at_cap);
        let mut codec: JsonCodec<serde_json::Value, ()> = JsonCodec::new();
        assert!(codec.decode(&mut buf).unwrap().is_some());

        let mut over = at_cap.clone();
        over.push(b' ');
        let mut buf = frame(&over);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn hostile_length_prefix_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let mut codec = BrokerCodec::new();
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::FrameTooLarge { .. })
        ));
        assert!(buf.capacity() < 1024, "no allocation of the claimed size");
    }

    #[test]
    fn oversized_write_is_refused() {
        let mut codec: JsonCodec<(), String> = JsonCodec::new();
        let mut buf = BytesMut::new();
        // The JSON form adds two quotes, so this string is exactly one byte over.
        assert!(matches!(
            codec.encode("a".repeat(MAX_FRAME_BYTES - 1), &mut buf),
            Err(CodecError::FrameTooLarge { .. })
        ));
        assert!(
            codec
                .encode("a".repeat(MAX_FRAME_BYTES - 2), &mut buf)
                .is_ok()
        );
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let mut buf = frame(b"{not json");
        assert!(matches!(
            BrokerCodec::new().decode(&mut buf),
            Err(CodecError::Json(_))
        ));
        let mut buf = frame(&[0xff, 0xfe, 0x00]);
        assert!(matches!(
            BrokerCodec::new().decode(&mut buf),
            Err(CodecError::Json(_))
        ));
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let mut buf = frame(nested.as_bytes());
        assert!(matches!(
            BrokerCodec::new().decode(&mut buf),
            Err(CodecError::Json(_))
        ));
    }

    #[test]
    fn unknown_event_is_tolerated() {
        let mut buf = frame(br#"{"type":"event","seq":1,"event":{"event":"typing"}}"#);
        assert_eq!(
            ClientCodec::new().decode(&mut buf).unwrap(),
            Some(BrokerMsg::Event {
                seq: 1,
                event: Event::Unknown
            })
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut codec = BrokerCodec::new();
            let mut buf = BytesMut::from(&bytes[..]);
            // Drain until it needs more input or fails; either is fine, a panic is not.
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }

        #[test]
        fn any_message_text_round_trips(text in ".{0,200}") {
            let msg = ClientMsg::Request { id: 1, request: Request::SendMessage { room_id: RoomId::new_random(), message: text } };
            let mut buf = encode(msg.clone());
            prop_assert_eq!(BrokerCodec::new().decode(&mut buf).unwrap(), Some(msg));
        }
    }
}
