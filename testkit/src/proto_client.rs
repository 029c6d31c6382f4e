//! The tests' protocol client, as a shim would be, minus MCP: one duplex
//! transport (tests also write raw bytes on it), and a panic for anything
//! unexpected, which is how a test fails. It checks on every event that
//! `seq` is contiguous, so no test can miss a lost event.

use std::collections::VecDeque;
use std::path::Path;

use futures::{SinkExt, StreamExt};
use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::tokio::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName};
use mcp_chat_proto::{
    BrokerMsg, ClientCodec, ClientMsg, CodecError, Event, PROTOCOL_VERSION, Reply, Request, RoomId,
    StatusInfo,
};
use tokio_util::codec::Framed;

pub use crate::client::hello;
use crate::within_or_panic as within;

pub struct ProtoClient {
    transport: Framed<Stream, ClientCodec>,
    next_id: u64,
    last_seq: u64,
    pending: VecDeque<Event>,
    pub session_id: u64,
}

/// A bare connection to the broker, before any `Hello`: for tests that
/// speak the protocol wrongly on purpose.
pub async fn connect_raw(socket: &Path) -> std::io::Result<Stream> {
    let name = socket.to_fs_name::<GenericFilePath>()?;
    Stream::connect(name).await
}

impl ProtoClient {
    pub async fn connect(socket: &Path) -> Self {
        let stream = connect_raw(socket).await.expect("connect to broker");
        let mut transport = Framed::new(stream, ClientCodec::new());
        transport
            .send(hello(PROTOCOL_VERSION))
            .await
            .expect("send hello");
        let welcome = within("welcome", transport.next()).await;
        let Some(Ok(BrokerMsg::Welcome { session_id, .. })) = welcome else {
            panic!("expected welcome, got {welcome:?}");
        };
        Self {
            transport,
            next_id: 1,
            last_seq: 0,
            pending: VecDeque::new(),
            session_id,
        }
    }

    /// Sends a request and returns its reply; events that arrive first are
    /// kept for [`Self::next_event`].
    pub async fn request(&mut self, request: Request) -> Reply {
        let id = self.send_request(request).await;
        loop {
            match self.recv().await {
                BrokerMsg::Response { id: got, reply } if got == id => return reply,
                BrokerMsg::Event { seq, event } => self.note_event(seq, event),
                other => panic!("unexpected {other:?} while waiting for reply {id}"),
            }
        }
    }

    /// Sends without waiting: for pipelining.
    pub async fn send_request(&mut self, request: Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.transport
            .send(ClientMsg::Request { id, request })
            .await
            .expect("send a request");
        id
    }

    pub async fn next_event(&mut self) -> Event {
        if let Some(event) = self.pending.pop_front() {
            return event;
        }
        loop {
            match self.recv().await {
                BrokerMsg::Event { seq, event } => {
                    self.check_seq(seq);
                    return event;
                }
                BrokerMsg::Response { .. } => {}
                other => panic!("unexpected {other:?} while waiting for an event"),
            }
        }
    }

    /// The next frame other than a heartbeat ping (which is answered, as
    /// a live client does), or `None` at a clean close.
    pub async fn next_frame(&mut self) -> Option<Result<BrokerMsg, CodecError>> {
        loop {
            match within("a frame", self.transport.next()).await {
                Some(Ok(BrokerMsg::Ping { nonce })) => {
                    self.transport.send(ClientMsg::Pong { nonce }).await.ok()?;
                }
                other => return other,
            }
        }
    }

    pub async fn enter(&mut self) -> Reply {
        self.request(Request::EnterQueue(Default::default())).await
    }

    pub async fn say(&mut self, room_id: RoomId, message: &str) -> Reply {
        self.request(Request::SendMessage {
            room_id,
            message: message.into(),
        })
        .await
    }

    pub async fn status(&mut self) -> StatusInfo {
        match self.request(Request::Status).await {
            Reply::Status(info) => *info,
            other => panic!("{other:?}"),
        }
    }

    async fn recv(&mut self) -> BrokerMsg {
        match self.next_frame().await {
            Some(Ok(msg)) => msg,
            other => panic!("connection ended: {other:?}"),
        }
    }

    fn note_event(&mut self, seq: u64, event: Event) {
        self.check_seq(seq);
        self.pending.push_back(event);
    }

    fn check_seq(&mut self, seq: u64) {
        assert_eq!(seq, self.last_seq + 1, "event seq must be contiguous");
        self.last_seq = seq;
    }

    pub fn into_transport(self) -> Framed<Stream, ClientCodec> {
        self.transport
    }
}

/// Two clients matched into one room.
pub async fn matched_pair(socket: &Path) -> (ProtoClient, ProtoClient, RoomId) {
    let mut a = ProtoClient::connect(socket).await;
    let mut b = ProtoClient::connect(socket).await;
    assert!(matches!(a.enter().await, Reply::Waiting { position: 1 }));
    // Usually b is matched at once. On a loaded machine a may have been
    // quiet long enough that the broker pings it first (it never matches a
    // waiter it has not heard from lately): then b is told `waiting`, and
    // the match follows a's answer, announced by chatroom.found.
    let reply = b.enter().await;
    let Event::ChatroomFound { room_id, .. } = a.next_event().await else {
        panic!("a is matched")
    };
    assert!(
        matches!(reply, Reply::Matched { room_id: r, .. } if r == room_id)
            || matches!(reply, Reply::Waiting { .. }),
        "{reply:?}"
    );
    assert!(
        matches!(b.next_event().await, Event::ChatroomFound { room_id: r, .. } if r == room_id)
    );
    (a, b, room_id)
}

/// How often [`wait_for_status`] asks: well inside the broker's default
/// request budget (50 a second), so polling is never refused.
const STATUS_POLL: std::time::Duration = std::time::Duration::from_millis(25);

/// Asks the broker on `socket` for its status until `until` holds, from a
/// session of its own, and returns that status. For states a test cannot
/// otherwise observe, such as a session held for a resume
/// (`StatusInfo::detached`): each answer is a real round trip, and the
/// broker pushes no event for these, so asking again is the only way.
pub async fn wait_for_status(
    socket: &Path,
    what: &str,
    until: impl Fn(&StatusInfo) -> bool,
) -> StatusInfo {
    let mut observer = ProtoClient::connect(socket).await;
    within(what, async {
        loop {
            let status = observer.status().await;
            if until(&status) {
                return status;
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
    })
    .await
}
