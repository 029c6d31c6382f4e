//! The one raw protocol client, as a shim would be minus MCP: framed reader
//! and writer halves, so throughput runs can read and write from separate
//! tasks and tests can write raw bytes. Every failure is an `anyhow` error,
//! so a caller decides whether it ends a run (the bench) or a test (the
//! panicking [`crate::ProtoClient`] facade). Events that arrive while a reply
//! is awaited are kept, in order, and every event's `seq` is checked to be
//! contiguous, so no caller can miss a lost event.

use std::collections::VecDeque;
use std::path::Path;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use mcp_chat_proto::{
    BrokerMsg, ClientCodec, ClientMsg, CodecError, Event, PROTOCOL_VERSION, Reply, Request, RoomId,
    StatusInfo,
};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::within;

/// The `client_name` this kit's clients give in `Hello`.
pub const CLIENT_NAME: &str = "mcp-chat-testkit";

/// The `Hello` this kit's clients send, speaking `protocol` (tests try
/// others), with no resume claim.
pub fn hello(protocol: u32) -> ClientMsg {
    ClientMsg::Hello {
        protocol,
        client_name: CLIENT_NAME.into(),
        client_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        resume: None,
    }
}

pub type Reader = FramedRead<OwnedReadHalf, ClientCodec>;
pub type Writer = FramedWrite<OwnedWriteHalf, ClientCodec>;

pub struct Client {
    pub reader: Reader,
    pub writer: Writer,
    next_id: u64,
    /// `None` until the first event after [`Self::from_parts`], whose
    /// halves may have read events nobody counted.
    last_seq: Option<u64>,
    /// Events that arrived while a reply was awaited, for [`Self::next_event`].
    pending: VecDeque<Event>,
    /// The broker session this connection carries, from `Welcome`.
    pub session_id: u64,
}

/// A bare connection to the broker, before any `Hello`: for tests that
/// speak the protocol wrongly on purpose.
pub async fn connect_raw(socket: &Path) -> anyhow::Result<UnixStream> {
    within("connecting", UnixStream::connect(socket))
        .await?
        .with_context(|| format!("connecting to the broker at {}", socket.display()))
}

impl Client {
    /// Connects and completes the `Hello` → `Welcome` handshake.
    pub async fn connect(socket: &Path) -> anyhow::Result<Self> {
        let (read, write) = connect_raw(socket).await?.into_split();
        let mut reader = FramedRead::new(read, ClientCodec::new());
        let mut writer = FramedWrite::new(write, ClientCodec::new());
        within("sending hello", writer.send(hello(PROTOCOL_VERSION)))
            .await?
            .context("sending hello")?;
        match recv(&mut reader).await? {
            BrokerMsg::Welcome { session_id, .. } => Ok(Self {
                last_seq: Some(0),
                ..Self::from_parts(reader, writer, 1, session_id)
            }),
            other => bail!("expected welcome, got {other:?}"),
        }
    }

    /// Queues a request without flushing: for pipelining.
    pub async fn feed(&mut self, request: Request) -> anyhow::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        within(
            "writing a request",
            self.writer.feed(ClientMsg::Request { id, request }),
        )
        .await?
        .context("writing a request")?;
        Ok(id)
    }

    /// Acknowledges every event read so far (kept or taken), as a shim
    /// does, so the broker counts them delivered; returns how many that is.
    pub async fn ack_read(&mut self) -> anyhow::Result<u64> {
        let seq = self.last_seq.unwrap_or(0);
        within(
            "acknowledging events",
            self.writer.send(ClientMsg::Ack { seq }),
        )
        .await?
        .context("acknowledging events")?;
        Ok(seq)
    }

    /// Sends a request now.
    pub async fn send(&mut self, request: Request) -> anyhow::Result<u64> {
        let id = self.feed(request).await?;
        within("flushing a request", self.writer.flush())
            .await?
            .context("flushing a request")?;
        Ok(id)
    }

    /// The next frame other than a heartbeat ping, which is answered on the
    /// way as a live client does, so a quiet session is never dropped or
    /// skipped by the matcher as frozen; `None` at a clean close.
    pub async fn next_frame(&mut self) -> anyhow::Result<Option<Result<BrokerMsg, CodecError>>> {
        loop {
            match within("waiting for a frame", self.reader.next()).await? {
                Some(Ok(BrokerMsg::Ping { nonce })) => {
                    within(
                        "answering a heartbeat",
                        self.writer.send(ClientMsg::Pong { nonce }),
                    )
                    .await?
                    .context("answering a heartbeat")?;
                }
                other => return Ok(other),
            }
        }
    }

    /// The next frame other than a ping; a close or a bad frame is an error.
    pub async fn recv(&mut self) -> anyhow::Result<BrokerMsg> {
        match self.next_frame().await? {
            Some(frame) => frame.context("reading a frame from the broker"),
            None => bail!("the broker closed the connection"),
        }
    }

    /// Sends a request and waits for its reply; events that arrive first
    /// are kept for [`Self::next_event`].
    pub async fn request(&mut self, request: Request) -> anyhow::Result<Reply> {
        let id = self.send(request).await?;
        loop {
            match self.recv().await? {
                BrokerMsg::Response { id: got, reply } if got == id => return Ok(reply),
                BrokerMsg::Event { seq, event } => {
                    self.check_seq(seq)?;
                    self.pending.push_back(event);
                }
                other => bail!("unexpected {other:?} while waiting for reply {id}"),
            }
        }
    }

    /// The next event, kept or new; replies to pipelined requests on the
    /// way are skipped.
    pub async fn next_event(&mut self) -> anyhow::Result<Event> {
        if let Some(event) = self.pending.pop_front() {
            return Ok(event);
        }
        loop {
            match self.recv().await? {
                BrokerMsg::Event { seq, event } => {
                    self.check_seq(seq)?;
                    return Ok(event);
                }
                BrokerMsg::Response { .. } => {}
                other => bail!("unexpected {other:?} while waiting for an event"),
            }
        }
    }

    fn check_seq(&mut self, seq: u64) -> anyhow::Result<()> {
        if let Some(last) = self.last_seq
            && seq != last + 1
        {
            bail!("event seq {seq} after {last}: not contiguous");
        }
        self.last_seq = Some(seq);
        Ok(())
    }

    /// Waits for `ChatroomFound`; any other event is an error.
    pub async fn chatroom_found(&mut self) -> anyhow::Result<RoomId> {
        match self.next_event().await? {
            Event::ChatroomFound { room_id, .. } => Ok(room_id),
            other => bail!("expected chatroom.found, got {other:?}"),
        }
    }

    /// Waits for the next chat message; any other event is an error.
    pub async fn next_message(&mut self) -> anyhow::Result<String> {
        match self.next_event().await? {
            Event::MessageReceived { message, .. } => Ok(message),
            other => bail!("expected a message, got {other:?}"),
        }
    }

    pub async fn enter(&mut self) -> anyhow::Result<Reply> {
        self.request(Request::EnterQueue(Default::default())).await
    }

    pub async fn say(&mut self, room_id: RoomId, message: &str) -> anyhow::Result<Reply> {
        self.request(Request::SendMessage {
            room_id,
            message: message.into(),
        })
        .await
    }

    pub async fn status(&mut self) -> anyhow::Result<StatusInfo> {
        match self.request(Request::Status).await? {
            Reply::Status(info) => Ok(*info),
            other => bail!("status answered {other:?}"),
        }
    }

    /// The halves, and the next unused request id, for tasks that read and
    /// write separately or write raw bytes. Kept events are dropped.
    pub fn into_parts(self) -> (Reader, Writer, u64) {
        (self.reader, self.writer, self.next_id)
    }

    /// Reassembles what [`Self::into_parts`] took apart, for the session
    /// `session_id`. Event `seq` checks resume from the next event.
    pub fn from_parts(reader: Reader, writer: Writer, next_id: u64, session_id: u64) -> Self {
        Self {
            reader,
            writer,
            next_id,
            last_seq: None,
            pending: VecDeque::new(),
            session_id,
        }
    }

    /// Leaves `room_id`, so that closing afterwards tells nobody anything.
    pub async fn leave(&mut self, room_id: RoomId) -> anyhow::Result<()> {
        match self
            .request(Request::LeaveChat {
                room_id,
                block: false,
            })
            .await?
        {
            Reply::Left => Ok(()),
            other => bail!("leave_chat answered {other:?}"),
        }
    }

    /// Two fresh sessions matched into one room.
    pub async fn pair(socket: &Path) -> anyhow::Result<(Self, Self, RoomId)> {
        let mut a = Self::connect(socket).await?;
        let mut b = Self::connect(socket).await?;
        match a.enter().await? {
            Reply::Waiting { .. } => {}
            other => bail!("the first of two sessions should wait, got {other:?}"),
        }
        // Usually b is matched at once. On a loaded machine the broker may
        // ping a first (it never matches a waiter it has not heard from
        // lately): then b is told `waiting`, and the match follows a's
        // answer. Either way both are told by `chatroom.found`.
        let reply = b.enter().await?;
        let room_id = a.chatroom_found().await?;
        match reply {
            Reply::Matched { room_id: r, .. } if r == room_id => {}
            Reply::Waiting { .. } => {}
            other => bail!("the second of two sessions was not matched into {room_id}: {other:?}"),
        }
        let room_b = b.chatroom_found().await?;
        if room_b != room_id {
            bail!("one match, two rooms: {room_id} and {room_b}");
        }
        Ok((a, b, room_id))
    }
}

/// The next frame other than a heartbeat ping; a timeout or a closed
/// connection is an error. A lone reader half cannot answer a ping; the runs
/// that split a client are far shorter than the broker's patience with an
/// unanswered one (several heartbeat intervals of ten seconds).
pub async fn recv(reader: &mut Reader) -> anyhow::Result<BrokerMsg> {
    loop {
        match recv_any(reader).await? {
            BrokerMsg::Ping { .. } => {}
            other => return Ok(other),
        }
    }
}

async fn recv_any(reader: &mut Reader) -> anyhow::Result<BrokerMsg> {
    match within("waiting for a frame", reader.next()).await? {
        None => bail!("the broker closed the connection"),
        Some(frame) => frame.context("reading a frame from the broker"),
    }
}

/// Ends a pair without a broken pipe in the broker's log: A leaves, B reads
/// the notice, then both close, with nothing left for the broker to send.
pub async fn part(mut a: Client, mut b_reader: Reader, room_id: RoomId) -> anyhow::Result<()> {
    a.leave(room_id).await?;
    loop {
        match recv(&mut b_reader).await? {
            BrokerMsg::Event {
                event: Event::PartnerDisconnected { .. },
                ..
            } => return Ok(()),
            BrokerMsg::Response { .. } | BrokerMsg::Event { .. } => {}
            other => bail!("unexpected {other:?} while waiting for the partner to leave"),
        }
    }
}

/// The next `MessageReceived`, skipping `Sent` replies; any error reply, a
/// partner leaving or anything unexpected ends the run.
pub async fn next_message(reader: &mut Reader) -> anyhow::Result<String> {
    loop {
        if let Some(message) = message_in(recv(reader).await?)? {
            return Ok(message);
        }
    }
}

/// The text of a `MessageReceived`; `None` for a `Sent` reply, which the
/// caller skips; an error for anything else.
fn message_in(msg: BrokerMsg) -> anyhow::Result<Option<String>> {
    match msg {
        BrokerMsg::Event {
            event: Event::MessageReceived { message, .. },
            ..
        } => Ok(Some(message)),
        BrokerMsg::Response {
            reply: Reply::Sent, ..
        } => Ok(None),
        other => bail!("unexpected {other:?} while waiting for a message"),
    }
}
