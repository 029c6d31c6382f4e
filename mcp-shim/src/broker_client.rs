//! One connection to the broker: the handshake, then a task that owns the
//! socket, matches replies to requests by id, and feeds events and
//! reply-derived phase changes into the session's [`SessionFeed`] in the
//! order frames arrive.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::tokio::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName};
use mcp_chat_proto::socket_path::{check_private_dir, current_uid};
use mcp_chat_proto::{
    BrokerMsg, ClientCodec, ClientMsg, CodecError, ErrorCode, PROTOCOL_VERSION, Reply, Request,
    Resume, SocketDirError,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::phase::{PhaseChange, SessionFeed};

/// How long the broker may take to answer `Hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Events received between acknowledgements, so the broker's replay buffer
/// for this session stays small.
const ACK_EVERY: u64 = 32;
/// How soon a quiet connection acknowledges what it received: the broker
/// counts a partner's message as delivered once it is acknowledged, so a
/// session that ends right after reading does not leave its partner told
/// of messages "unconfirmed". Short enough for that, long enough that a
/// busy conversation acknowledges in batches.
const ACK_WITHIN: Duration = Duration::from_millis(50);

/// Requests queued for the connection task before callers wait.
const REQUEST_CAPACITY: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing is listening: no socket file, a stale one, or a broker that
    /// closed before welcoming us because it is on its way out.
    #[error("no broker is running at {path}")]
    NotRunning { path: PathBuf },
    #[error("the broker at {path} refused the connection ({code}): {}", crate::untrusted::reveal(.message))]
    Refused {
        path: PathBuf,
        code: ErrorCode,
        message: String,
    },
    #[error("could not connect to the broker at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the broker at {path} did not complete the handshake: {reason}")]
    Handshake { path: PathBuf, reason: String },
    /// The socket's directory could let another user plant a listener:
    /// refused before connecting, so not one byte reaches it.
    #[error("refusing to connect: {0}")]
    UnsafeDir(#[from] SocketDirError),
    /// Whatever listens on the socket runs as another user: not our broker.
    /// Refused before the first byte is sent.
    #[error(
        "refusing to talk to {path}: the process listening there runs as uid {listener}, not as you (uid {ours}); it is not your broker. Remove it or set MCP_CHAT_SOCKET to a path in a directory only you own (mcp-chat doctor)"
    )]
    WrongListener {
        path: PathBuf,
        listener: u32,
        ours: u32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the connection to the broker was lost")]
    ConnectionLost,
}

/// What the broker said in `Welcome`.
#[derive(Debug, Clone)]
pub struct Welcome {
    pub broker_version: String,
    pub session_id: u64,
    /// Presented on reconnect to resume this session.
    pub resume_token: String,
    /// Whether this connection picked up an earlier session.
    pub resumed: bool,
    /// Which broker process answered.
    pub instance: String,
}

type Transport = Framed<Stream, ClientCodec>;

/// Connects to `socket` and completes the `Hello`/`Welcome` handshake,
/// claiming an earlier session when `resume` is given.
pub async fn handshake(
    socket: &Path,
    client_name: &str,
    resume: Option<Resume>,
) -> Result<(Transport, Welcome), ConnectError> {
    let stream = connect_stream(socket).await?;
    let mut transport = Framed::new(stream, ClientCodec::new());
    let path = || socket.to_owned();
    let hello = ClientMsg::Hello {
        protocol: PROTOCOL_VERSION,
        client_name: client_name.to_owned(),
        client_version: crate::VERSION.to_owned(),
        pid: std::process::id(),
        resume,
    };
    let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        transport.send(hello).await?;
        transport.next().await.transpose()
    })
    .await
    .map_err(|_| ConnectError::Handshake {
        path: path(),
        reason: format!("no answer within {HANDSHAKE_TIMEOUT:?}"),
    })?;
    match answer {
        Ok(Some(BrokerMsg::Welcome {
            broker_version,
            session_id,
            resume_token,
            resumed,
            instance,
            ..
        })) => Ok((
            transport,
            Welcome {
                broker_version,
                session_id,
                resume_token,
                resumed,
                instance,
            },
        )),
        Ok(Some(BrokerMsg::Refused { code, message })) => Err(ConnectError::Refused {
            path: path(),
            code,
            message,
        }),
        // A broker that is exiting closes without a word; treat it as gone.
        Ok(None) | Err(CodecError::Io(_)) => Err(ConnectError::NotRunning { path: path() }),
        Ok(Some(other)) => Err(ConnectError::Handshake {
            path: path(),
            reason: format!("unexpected first frame {other:?}"),
        }),
        Err(e) => Err(ConnectError::Handshake {
            path: path(),
            reason: e.to_string(),
        }),
    }
}

/// Connects to our own broker only. Both checks come before a byte is
/// written: the directory must be ours and closed to others (else another
/// user could have put a socket there), and the process that accepted must
/// run as us. A missing directory means no broker yet.
async fn connect_stream(socket: &Path) -> Result<Stream, ConnectError> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        match check_private_dir(dir, current_uid()) {
            Ok(()) => {}
            Err(SocketDirError::Inspect { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(ConnectError::NotRunning {
                    path: socket.to_owned(),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    let stream = connect_unchecked(socket).await?;
    check_listener(&stream, socket)?;
    Ok(stream)
}

#[cfg(unix)]
fn check_listener(stream: &Stream, socket: &Path) -> Result<(), ConnectError> {
    use interprocess::local_socket::traits::StreamCommon;
    let ours = current_uid();
    let creds = stream.peer_creds().map_err(|source| ConnectError::Io {
        path: socket.to_owned(),
        source,
    })?;
    match creds.euid() {
        Some(listener) if listener == ours => Ok(()),
        Some(listener) => Err(ConnectError::WrongListener {
            path: socket.to_owned(),
            listener,
            ours,
        }),
        None => Err(ConnectError::Io {
            path: socket.to_owned(),
            source: std::io::Error::other("the OS did not say which user listens on the socket"),
        }),
    }
}

#[cfg(not(unix))]
fn check_listener(_stream: &Stream, _socket: &Path) -> Result<(), ConnectError> {
    // Named pipes are created per user; the pipe's default ACL is the fence.
    Ok(())
}

async fn connect_unchecked(socket: &Path) -> Result<Stream, ConnectError> {
    let io_err = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ConnectError::NotRunning {
                path: socket.to_owned(),
            }
        }
        _ => ConnectError::Io {
            path: socket.to_owned(),
            source,
        },
    };
    let name = socket.to_fs_name::<GenericFilePath>().map_err(io_err)?;
    Stream::connect(name).await.map_err(io_err)
}

struct Outgoing {
    request: Request,
    reply: oneshot::Sender<Reply>,
}

/// A live, welcomed connection. Cheap to clone; the socket itself belongs to
/// a background task that ends when the broker goes away.
#[derive(Clone, Debug)]
pub struct BrokerConnection {
    requests: mpsc::Sender<Outgoing>,
    closed: CancellationToken,
    last_seq: Arc<AtomicU64>,
    pub welcome: Welcome,
}

impl BrokerConnection {
    /// Starts the connection task; events and phase changes go to `feed`
    /// in order.
    /// `last_seq` is the last event `seq` already received in this session
    /// (0 for a new one): a resumed session continues from it.
    pub fn start(
        transport: Transport,
        welcome: Welcome,
        feed: Arc<SessionFeed>,
        last_seq: u64,
    ) -> Self {
        let (requests, rx) = mpsc::channel(REQUEST_CAPACITY);
        let closed = CancellationToken::new();
        let last_seq = Arc::new(AtomicU64::new(last_seq));
        tokio::spawn(run(
            transport,
            rx,
            feed,
            Arc::clone(&last_seq),
            closed.clone(),
        ));
        Self {
            requests,
            closed,
            last_seq,
            welcome,
        }
    }

    /// A way to notice this connection closing, and to claim its session
    /// afterwards, that does not itself keep the connection open.
    pub fn watch(&self) -> ConnectionWatch {
        ConnectionWatch {
            closed: self.closed.clone(),
            last_seq: Arc::clone(&self.last_seq),
            welcome: self.welcome.clone(),
        }
    }

    pub async fn request(&self, request: Request) -> Result<Reply, RequestError> {
        let answer = self.submit(request).await?;
        answer.await.map_err(|_| RequestError::ConnectionLost)
    }

    /// Queues `request` for the wire, in call order, and returns where its
    /// reply will arrive (closed without one if the connection is lost).
    pub async fn submit(&self, request: Request) -> Result<oneshot::Receiver<Reply>, RequestError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Outgoing { request, reply })
            .await
            .map_err(|_| RequestError::ConnectionLost)?;
        Ok(answer)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }
}

/// See [`BrokerConnection::watch`].
#[derive(Debug)]
pub struct ConnectionWatch {
    closed: CancellationToken,
    last_seq: Arc<AtomicU64>,
    pub welcome: Welcome,
}

impl ConnectionWatch {
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    /// What to present to resume the session on a new connection.
    pub fn resume_claim(&self) -> Resume {
        Resume {
            token: self.welcome.resume_token.clone(),
            last_seq: self.last_seq.load(Ordering::Acquire),
        }
    }
}

/// Why a connection task ended early.
enum Lost {
    Write(CodecError),
    Read(String),
}

/// How long a closed connection's last frames may take to read.
const DRAIN_WITHIN: Duration = Duration::from_secs(1);

/// Ingests the events still readable on a connection the broker has closed.
async fn drain(
    transport: &mut Transport,
    feed: &SessionFeed,
    mut last_seq: u64,
    received_seq: &AtomicU64,
) {
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(DRAIN_WITHIN, transport.next()).await {
        if let BrokerMsg::Event { seq, event } = frame {
            if seq != last_seq + 1 {
                tracing::error!(
                    expected = last_seq + 1,
                    got = seq,
                    "broker event sequence gap"
                );
            }
            last_seq = seq;
            feed.ingest(event);
            received_seq.store(seq, Ordering::Release);
        }
    }
}

async fn run(
    mut transport: Transport,
    mut requests: mpsc::Receiver<Outgoing>,
    feed: Arc<SessionFeed>,
    received_seq: Arc<AtomicU64>,
    closed: CancellationToken,
) {
    let mut waiting: HashMap<u64, (oneshot::Sender<Reply>, PhaseChange)> = HashMap::new();
    let mut next_id: u64 = 1;
    let mut last_seq = received_seq.load(Ordering::Acquire);
    let mut acked = last_seq;
    let ack_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(ack_timer);
    let reason = loop {
        tokio::select! {
            () = &mut ack_timer, if acked < last_seq => {
                if let Err(e) = transport.send(ClientMsg::Ack { seq: last_seq }).await {
                    break Some(Lost::Write(e));
                }
                acked = last_seq;
            }
            outgoing = requests.recv() => {
                // Every handle dropped: the session is over.
                let Some(Outgoing { request, reply }) = outgoing else { break None };
                let id = next_id;
                next_id += 1;
                let change = PhaseChange::of(&request);
                waiting.insert(id, (reply, change));
                if let Err(e) = transport.send(ClientMsg::Request { id, request }).await {
                    break Some(Lost::Write(e));
                }
            }
            incoming = transport.next() => match incoming {
                Some(Ok(BrokerMsg::Response { id, reply })) => {
                    if let Some((waiter, change)) = waiting.remove(&id) {
                        // In wire order, before any event read after it:
                        // a later chatroom.found or partner.disconnected
                        // then overrides what the reply said, as it must.
                        feed.apply_reply(change, &reply);
                        let _ = waiter.send(reply);
                    }
                }
                Some(Ok(BrokerMsg::Event { seq, event })) => {
                    if seq != last_seq + 1 {
                        tracing::error!(expected = last_seq + 1, got = seq, "broker event sequence gap");
                    }
                    let was_acked = acked == last_seq;
                    last_seq = seq;
                    // Never waits: a client that stops reading its stdout
                    // must not stop this task from reading and acknowledging.
                    feed.ingest(event);
                    received_seq.store(seq, Ordering::Release);
                    // Safely logged: the broker need not keep it for a resume.
                    if seq % ACK_EVERY == 0 {
                        if let Err(e) = transport.send(ClientMsg::Ack { seq }).await {
                            break Some(Lost::Write(e));
                        }
                        acked = seq;
                    } else if was_acked {
                        ack_timer.as_mut().reset(tokio::time::Instant::now() + ACK_WITHIN);
                    }
                }
                Some(Ok(BrokerMsg::Ping { nonce })) => {
                    let answered = async {
                        transport.feed(ClientMsg::Pong { nonce }).await?;
                        transport.send(ClientMsg::Ack { seq: last_seq }).await
                    };
                    if let Err(e) = answered.await {
                        break Some(Lost::Write(e));
                    }
                    acked = last_seq;
                }
                Some(Ok(BrokerMsg::Refused { code, message })) => {
                    break Some(Lost::Read(format!("broker closed the session ({code}): {message}")));
                }
                Some(Ok(_)) => tracing::debug!("ignoring a frame this version does not know"),
                Some(Err(e)) => break Some(Lost::Read(format!("read failed: {e}"))),
                None => break Some(Lost::Read("broker closed the connection".to_owned())),
            },
        }
    };
    match reason {
        Some(Lost::Write(e)) => {
            tracing::warn!(error = %e, "broker connection lost: write failed");
            // The broker closed its end; what it wrote before is still in our
            // socket, and it counted it as written: take it in.
            drain(&mut transport, &feed, last_seq, &received_seq).await;
        }
        Some(Lost::Read(reason)) => tracing::warn!(%reason, "broker connection lost"),
        None => tracing::debug!("session over; closing the broker connection"),
    }
    // Callers still waiting get ConnectionLost when their senders drop here.
    drop(waiting);
    closed.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal's words come from the other end of the socket: on a
    /// person's terminal (`join`, `status`) they are shown, never obeyed.
    #[test]
    fn a_refusal_is_shown_with_its_hidden_characters_revealed() {
        let refused = ConnectError::Refused {
            path: PathBuf::from("/run/mcp-chat/broker.sock"),
            code: ErrorCode::BrokerFull,
            message: "full\u{2028}\u{2029}\u{61c}\u{1b}[2J\u{202e}".to_owned(),
        };
        let shown = refused.to_string();
        assert!(!shown.chars().any(crate::untrusted::is_hidden), "{shown:?}");
        assert!(
            shown.ends_with(r"(broker_full): full\u{2028}\u{2029}\u{61c}\x1b[2J\u{202e}"),
            "{shown}"
        );
    }
}
