//! How [`ClientMsg`] is read. serde's derive for an internally tagged enum
//! must buffer every frame into an intermediate tree before it knows the
//! variant, then read it again; on the broker's hot path that was a
//! measurable share of CPU (BENCHMARKS.md). These flat structs read each
//! frame once, and the conversion checks that the variant's fields are
//! there. The wire format is unchanged: `ClientMsg` still serializes
//! through its derive, and unknown types, ops and fields are still accepted.

use serde::Deserialize;

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
            RequestKind::EnterQueue => Self::EnterQueue,
            RequestKind::SendMessage => Self::SendMessage {
                room_id: required(raw.room_id, "room_id")?,
                message: required(raw.message, "message")?,
            },
            RequestKind::LeaveChat => Self::LeaveChat {
                room_id: required(raw.room_id, "room_id")?,
            },
            RequestKind::Status => Self::Status,
            RequestKind::Ping => Self::Ping,
            RequestKind::Unknown => Self::Unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::message::{ClientMsg, Request, Resume, RoomId};

    fn round_trip(msg: ClientMsg) {
        let json = serde_json::to_vec(&msg).unwrap();
        assert_eq!(serde_json::from_slice::<ClientMsg>(&json).unwrap(), msg);
    }

    #[test]
    fn every_variant_reads_back_what_the_derive_writes() {
        let room_id = RoomId::new_random();
        round_trip(ClientMsg::Hello {
            protocol: 1,
            client_name: "n".into(),
            client_version: "v".into(),
            pid: 7,
            resume: Some(Resume {
                token: "t".into(),
                last_seq: 3,
            }),
        });
        for request in [
            Request::EnterQueue,
            Request::SendMessage {
                room_id,
                message: "hi \"there\"\n".into(),
            },
            Request::LeaveChat { room_id },
            Request::Status,
            Request::Ping,
        ] {
            round_trip(ClientMsg::Request { id: 9, request });
        }
        round_trip(ClientMsg::Pong { nonce: 4 });
        round_trip(ClientMsg::Ack { seq: 5 });
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
