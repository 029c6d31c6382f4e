//! A raw protocol client, as a shim would be minus MCP: framed reader and
//! writer halves, so throughput runs can read and write from separate tasks.
//! Every failure is an `anyhow` error, so a caller decides whether it ends
//! a run (the bench) or a test.

use std::path::Path;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use mcp_chat_proto::{
    BrokerMsg, ClientCodec, ClientMsg, Event, PROTOCOL_VERSION, Reply, Request, RoomId,
};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::{WAIT, within};

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
}

impl Client {
    /// Connects and completes the `Hello` → `Welcome` handshake.
    pub async fn connect(socket: &Path) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(WAIT, UnixStream::connect(socket))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connecting to the broker at {}", socket.display()))?;
        let (read, write) = stream.into_split();
        let mut client = Self {
            reader: FramedRead::new(read, ClientCodec::new()),
            writer: FramedWrite::new(write, ClientCodec::new()),
            next_id: 1,
        };
        within("sending hello", client.writer.send(hello(PROTOCOL_VERSION)))
            .await?
            .context("sending hello")?;
        match recv(&mut client.reader).await? {
            BrokerMsg::Welcome { .. } => Ok(client),
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

    /// Sends a request now.
    pub async fn send(&mut self, request: Request) -> anyhow::Result<u64> {
        let id = self.feed(request).await?;
        within("flushing a request", self.writer.flush())
            .await?
            .context("flushing a request")?;
        Ok(id)
    }

    /// The next frame; a heartbeat ping is answered on the way, as a live
    /// client does, so a quiet session is never dropped or skipped by the
    /// matcher as frozen.
    pub async fn recv(&mut self) -> anyhow::Result<BrokerMsg> {
        loop {
            match recv_any(&mut self.reader).await? {
                BrokerMsg::Ping { nonce } => {
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

    /// Sends a request and waits for its reply; events on the way are
    /// dropped, so use this only where none are expected to matter.
    pub async fn request(&mut self, request: Request) -> anyhow::Result<Reply> {
        let id = self.send(request).await?;
        loop {
            match self.recv().await? {
                BrokerMsg::Response { id: got, reply } if got == id => return Ok(reply),
                BrokerMsg::Response { .. } | BrokerMsg::Event { .. } => {}
                other => bail!("unexpected {other:?} while waiting for reply {id}"),
            }
        }
    }

    /// Waits for `ChatroomFound`, skipping replies that are not errors.
    pub async fn chatroom_found(&mut self) -> anyhow::Result<RoomId> {
        loop {
            match self.recv().await? {
                BrokerMsg::Event {
                    event: Event::ChatroomFound { room_id, .. },
                    ..
                } => return Ok(room_id),
                BrokerMsg::Response {
                    reply: Reply::Error { code, message, .. },
                    ..
                } => bail!("broker error while waiting for a match: {code}: {message}"),
                BrokerMsg::Response { .. } => {}
                other => bail!("unexpected {other:?} while waiting for a match"),
            }
        }
    }

    /// Waits for the next chat message, skipping `Sent` replies.
    pub async fn next_message(&mut self) -> anyhow::Result<String> {
        loop {
            if let Some(message) = message_in(self.recv().await?)? {
                return Ok(message);
            }
        }
    }

    /// The halves, and the next unused request id, for tasks that read and
    /// write separately.
    pub fn into_parts(self) -> (Reader, Writer, u64) {
        (self.reader, self.writer, self.next_id)
    }

    /// Reassembles what [`Self::into_parts`] took apart.
    pub fn from_parts(reader: Reader, writer: Writer, next_id: u64) -> Self {
        Self {
            reader,
            writer,
            next_id,
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
        match a.request(Request::EnterQueue(Default::default())).await? {
            Reply::Waiting { .. } => {}
            other => bail!("the first of two sessions should wait, got {other:?}"),
        }
        // Usually b is matched at once, and its `ChatroomFound` comes before
        // this reply and is dropped with it. On a loaded machine the broker
        // may ping a first (it never matches a waiter it has not heard from
        // lately): then b is told `waiting`, and the match follows a's
        // answer, announced to both by `ChatroomFound`.
        let reply = b.request(Request::EnterQueue(Default::default())).await?;
        let room_a = a.chatroom_found().await?;
        let room_id = match reply {
            Reply::Matched { room_id, .. } => room_id,
            Reply::Waiting { .. } => b.chatroom_found().await?,
            other => bail!("the second of two sessions was not matched: {other:?}"),
        };
        if room_a != room_id {
            bail!("one match, two rooms: {room_a} and {room_id}");
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
    match tokio::time::timeout(WAIT, reader.next()).await {
        Err(_) => bail!("no frame from the broker within {WAIT:?}"),
        Ok(None) => bail!("the broker closed the connection"),
        Ok(Some(frame)) => frame.context("reading a frame from the broker"),
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
