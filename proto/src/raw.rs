//! How [`ClientMsg`] is read. serde's derive for an internally tagged enum
//! must buffer every frame into an intermediate tree before it knows the
//! variant, then read it again; on the broker's hot path that was a
//! measurable share of CPU (BENCHMARKS.md). These flat structs read each
//! frame once, and the conversion checks that the variant's fields are
//! there. The wire format is unchanged: `ClientMsg` still serializes
//! through its derive, and unknown types, ops and fields are still accepted.

use serde::Deserialize;

use crate::matching::{Entry, Kind, Meet};
use crate::message::{ClientMsg, Request, Resume, RoomId};

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ClientKind {
    Hello,
    Request,
    Pong,
    Ack,
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RequestKind {
    EnterQueue,
    SendMessage,
    LeaveChat,
    Status,
    Ping,
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
pub(crate) struct RawClientMsg {
    #[serde(rename = "type")]
    kind: ClientKind,
    protocol: Option<u32>,
    client_name: Option<String>,
    client_version: Option<String>,
    pid: Option<u32>,
    resume: Option<Resume>,
    id: Option<u64>,
    request: Option<RawRequest>,
    nonce: Option<u64>,
    seq: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct RawRequest {
    op: RequestKind,
    room_id: Option<RoomId>,
    message: Option<String>,
    interests: Option<Vec<String>>,
    interest_wait_s: Option<u64>,
    meet: Option<Meet>,
    kind: Option<Kind>,
    block_id: Option<String>,
    block: Option<bool>,
}

fn required<T>(value: Option<T>, field: &'static str) -> Result<T, String> {
    value.ok_or_else(|| format!("missing field `{field}`"))
}

impl TryFrom<RawClientMsg> for ClientMsg {
    type Error = String;

    fn try_from(raw: RawClientMsg) -> Result<Self, String> {
        Ok(match raw.kind {
            ClientKind::Hello => Self::Hello {
                protocol: required(raw.protocol, "protocol")?,
                client_name: required(raw.client_name, "client_name")?,
                client_version: required(raw.client_version, "client_version")?,
                pid: required(raw.pid, "pid")?,
                resume: raw.resume,
            },
            ClientKind::Request => Self::Request {
                id: required(raw.id, "id")?,
                request: required(raw.request, "request")?.try_into()?,
            },
            ClientKind::Pong => Self::Pong {
                nonce: required(raw.nonce, "nonce")?,
            },
            ClientKind::Ack => Self::Ack {
                seq: required(raw.seq, "seq")?,
            },
            ClientKind::Unknown => Self::Unknown,
        })
    }
}

impl TryFrom<RawRequest> for Request {
    type Error = String;

    fn try_from(raw: RawRequest) -> Result<Self, String> {
        Ok(match raw.op {
            RequestKind::EnterQueue => Self::EnterQueue(Entry {
                interests: raw.interests.unwrap_or_default(),
                interest_wait_s: raw.interest_wait_s,
                meet: raw.meet.unwrap_or_default(),
                kind: raw.kind.unwrap_or_default(),
                block_id: raw.block_id,
            }),
            RequestKind::SendMessage => Self::SendMessage {
                room_id: required(raw.room_id, "room_id")?,
                message: required(raw.message, "message")?,
            },
            RequestKind::LeaveChat => Self::LeaveChat {
                room_id: required(raw.room_id, "room_id")?,
                block: raw.block.unwrap_or(false),
            },
            RequestKind::Status => Self::Status,
            RequestKind::Ping => Self::Ping,
            RequestKind::Unknown => Self::Unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::{ClientKind, RequestKind};
    use crate::matching::{Entry, Kind, Meet};
    use crate::message::{ClientMsg, Request, Resume, RoomId};

    /// One of every `ClientMsg` and every `Request`, as the derive writes
    /// them. [`variant_name`] has no wildcard arm, so a variant added to
    /// either enum stops this test compiling until it is named there: give
    /// it a sample here too. A kind the raw reader knows without a sample
    /// fails `the_samples_cover_every_variant_the_raw_reader_knows_and_no_more`.
    fn samples() -> Vec<ClientMsg> {
        let room_id = RoomId::new_random();
        let mut all = vec![
            ClientMsg::Hello {
                protocol: 1,
                client_name: "n".into(),
                client_version: "v".into(),
                pid: 7,
                resume: Some(Resume {
                    token: "t".into(),
                    last_seq: 3,
                }),
            },
            ClientMsg::Hello {
                protocol: 1,
                client_name: "n".into(),
                client_version: "v".into(),
                pid: 7,
                resume: None,
            },
            ClientMsg::Pong { nonce: 4 },
            ClientMsg::Ack { seq: 5 },
        ];
        for request in [
            Request::EnterQueue(Entry::default()),
            Request::EnterQueue(Entry {
                interests: vec!["chess".into(), "go".into()],
                interest_wait_s: Some(3),
                meet: Meet::People,
                kind: Kind::Person,
                block_id: Some("0123abcd".into()),
            }),
            Request::SendMessage {
                room_id,
                message: "hi \"there\"\n".into(),
            },
            Request::LeaveChat {
                room_id,
                block: false,
            },
            Request::LeaveChat {
                room_id,
                block: true,
            },
            Request::Status,
            Request::Ping,
        ] {
            all.push(ClientMsg::Request { id: 9, request });
        }
        all
    }

    /// The wire name of a sample's variant (and of its request's), checked
    /// exhaustively by the compiler.
    fn variant_name(msg: &ClientMsg) -> (&'static str, Option<&'static str>) {
        match msg {
            ClientMsg::Hello { .. } => ("hello", None),
            ClientMsg::Pong { .. } => ("pong", None),
            ClientMsg::Ack { .. } => ("ack", None),
            ClientMsg::Unknown => ("unknown", None),
            ClientMsg::Request { request, .. } => (
                "request",
                Some(match request {
                    Request::EnterQueue(_) => "enter_queue",
                    Request::SendMessage { .. } => "send_message",
                    Request::LeaveChat { .. } => "leave_chat",
                    Request::Status => "status",
                    Request::Ping => "ping",
                    Request::Unknown => "unknown",
                }),
            ),
        }
    }

    /// The variant names a derived `Deserialize` of an enum knows, as serde
    /// hands them to the deserializer.
    fn enum_variants<'de, T: serde::Deserialize<'de>>() -> &'static [&'static str] {
        struct Capture(Option<&'static [&'static str]>);
        impl<'de> serde::Deserializer<'de> for &mut Capture {
            type Error = serde::de::value::Error;
            fn deserialize_enum<V: serde::de::Visitor<'de>>(
                self,
                _name: &'static str,
                variants: &'static [&'static str],
                _visitor: V,
            ) -> Result<V::Value, Self::Error> {
                self.0 = Some(variants);
                Err(serde::de::Error::custom("captured"))
            }
            fn deserialize_any<V: serde::de::Visitor<'de>>(
                self,
                _visitor: V,
            ) -> Result<V::Value, Self::Error> {
                Err(serde::de::Error::custom("not an enum"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map struct identifier ignored_any
            }
        }
        let mut capture = Capture(None);
        let _ = T::deserialize(&mut capture);
        capture.0.unwrap()
    }

    #[test]
    fn every_variant_reads_back_what_the_derive_writes() {
        for msg in samples() {
            let json = serde_json::to_vec(&msg).unwrap();
            let back = serde_json::from_slice::<ClientMsg>(&json).unwrap();
            assert_eq!(back, msg, "{}", String::from_utf8_lossy(&json));
        }
    }

    #[test]
    fn the_samples_cover_every_variant_the_raw_reader_knows_and_no_more() {
        let names: Vec<_> = samples().iter().map(variant_name).collect();
        let messages: BTreeSet<&str> = names.iter().map(|(m, _)| *m).collect();
        let requests: BTreeSet<&str> = names.iter().filter_map(|(_, r)| *r).collect();
        let known = |variants: &[&'static str]| -> BTreeSet<&'static str> {
            variants
                .iter()
                .copied()
                .filter(|v| *v != "unknown")
                .collect()
        };
        assert_eq!(messages, known(enum_variants::<ClientKind>()));
        assert_eq!(requests, known(enum_variants::<RequestKind>()));
    }

    #[test]
    fn a_known_variant_missing_a_field_is_an_error() {
        let no_pid = json!({"type":"hello","protocol":1,"client_name":"n","client_version":"v"});
        let err = serde_json::from_value::<ClientMsg>(no_pid).unwrap_err();
        assert!(err.to_string().contains("`pid`"), "{err}");
        let no_text = json!({"type":"request","id":1,"request":{"op":"send_message","room_id":RoomId::new_random()}});
        let err = serde_json::from_value::<ClientMsg>(no_text).unwrap_err();
        assert!(err.to_string().contains("`message`"), "{err}");
    }

    #[test]
    fn fields_come_in_any_order() {
        let msg: ClientMsg = serde_json::from_value(
            json!({"request":{"message":"m","op":"send_message","room_id":"6f1c2a52-8b44-4c8e-9d57-0c1f9d3f5a10"},"id":2,"type":"request"}),
        )
        .unwrap();
        assert!(matches!(
            msg,
            ClientMsg::Request {
                id: 2,
                request: Request::SendMessage { .. }
            }
        ));
    }
}
