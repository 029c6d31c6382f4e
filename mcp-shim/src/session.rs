//! A chat session as one actor. One task owns the broker connection and its
//! reconnects; the session's phase and events live in its [`SessionFeed`],
//! written only by that connection (in wire order) and by this task when a
//! connection is lost. Everyone else (the tools, `join`, `doctor`, the HTTP
//! server) holds a [`ChatSession`] and calls typed methods: request in,
//! typed answer out, events published. Nobody else builds a broker request
//! or patches the phase, and no lock is held across a reconnect:
//! - `chat_status` reads the phase at once; the broker's figures come with
//!   it when the broker answers within [`FIGURES_WITHIN`], and are left out
//!   (never stale) while the session is reconnecting or the broker is slow;
//! - `wait_for_events` reads the pull buffer and never touches the broker;
//! - calls that need the broker (`enter_queue`, `send_message`,
//!   `leave_chat`) are served in order by the session task; one made while
//!   a reconnect is in progress goes out on the mended connection, or fails
//!   `broker_unreachable` when the reconnect is given up (after trying for
//!   [`RECONNECT_FOR`]). It cannot succeed sooner: there
//!   is no broker to take it.
//!
//! When the connection breaks, the session task reconnects at once,
//! starting a broker if none answers, and claims the old session with its
//! resume token:
//! - resumed (the broker still had it): nothing was lost, nothing to say;
//! - a fresh session from a new broker process: a room that was open is
//!   reported `partner.disconnected` with `broker_restart`, and a place in
//!   the queue is taken again;
//! - a fresh session from the same broker (this client was unresponsive
//!   past the resume grace, so the broker ended the session): the same, with
//!   reason `disconnected`;
//! - no broker for [`RECONNECT_FOR`], or none can be started: the room is
//!   reported `broker_lost`, and the next tool call tries again.
//!
//! A session that was waiting in the queue when its broker session was lost
//! still wants a partner, so it takes a place in the new broker's queue.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mcp_chat_proto::{
    DisconnectReason, Entry, ErrorCode, MatchInfo, Reply, Request, Resume, RoomId, StatusInfo,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::autostart::{StartError, connect_or_start};
use crate::broker_client::{BrokerConnection, ConnectError, ConnectionWatch, RequestError};
use crate::end_reason::EndReason;
use crate::events::{ChatEvent, EventBuffer, Pulled};
use crate::phase::{Phase, SessionFeed};

/// How long the background reconnect keeps trying.
const RECONNECT_FOR: Duration = Duration::from_secs(10);
/// How long `status` waits for the broker's figures before answering with
/// the phase alone: a frozen broker keeps its connection open, so only a
/// bound tells "slow" from "answering".
pub const FIGURES_WITHIN: Duration = Duration::from_secs(3);
/// Calls queued for the session task before callers wait.
const COMMAND_CAPACITY: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("could not reach the mcp-chat broker: {0}")]
    Unreachable(#[from] StartError),
    #[error("the connection to the mcp-chat broker was lost during the call")]
    Lost(#[from] RequestError),
}

impl SessionError {
    /// The code a tool result reports.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreachable(StartError::Connect(ConnectError::Refused { code, .. })) => {
                code.as_str()
            }
            Self::Unreachable(_) => "broker_unreachable",
            Self::Lost(_) => "broker_lost",
        }
    }
}

/// Why a typed call did not get the answer it wanted.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The broker said no (`unknown_room`, `rate_limited`, ...).
    #[error("{code}: {message}")]
    Broker {
        code: ErrorCode,
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// The session left the queue without a match: its broker was lost.
    #[error("the connection to the broker was lost while waiting")]
    LostWhileWaiting,
    #[error("the broker answered {0}")]
    Unexpected(String),
}

/// What `enter_queue` came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entered {
    /// In the queue; a later match arrives as `chatroom.found`.
    Queued {
        position: usize,
    },
    Matched {
        room: RoomId,
    },
}

/// Where the session stands, and the broker's figures when it answered.
#[derive(Debug, Clone)]
pub struct Status {
    pub phase: Phase,
    /// `None` while reconnecting, or when the broker did not answer within
    /// [`FIGURES_WITHIN`].
    pub broker: Option<StatusInfo>,
}

/// The state of the session's broker connection, as the session task
/// publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// None yet, or the last one was given up on: the next call connects.
    Unconnected,
    Up,
    /// The connection broke and the session task is mending it.
    Reconnecting,
}

/// A request for the session task: it answers at once with where the
/// broker's reply will arrive, so it never waits on the broker itself.
struct Command {
    request: Request,
    reply: oneshot::Sender<Result<oneshot::Receiver<Reply>, SessionError>>,
}

/// A handle on one session. Dropping it ends the session task, which
/// closes the broker connection (the broker then ends the session).
#[derive(Debug)]
pub struct ChatSession {
    commands: mpsc::Sender<Command>,
    feed: Arc<SessionFeed>,
    link: watch::Receiver<Link>,
}

impl ChatSession {
    /// Starts the session task (on the current tokio runtime). It connects
    /// on the first call that needs the broker. `push`, when given, is
    /// offered every event (see [`crate::phase`]).
    pub fn new(
        socket: PathBuf,
        client_name: impl Into<String>,
        push: Option<mpsc::Sender<ChatEvent>>,
    ) -> Self {
        let feed = Arc::new(SessionFeed::new(push));
        let (link_tx, link) = watch::channel(Link::Unconnected);
        let (commands, rx) = mpsc::channel(COMMAND_CAPACITY);
        let task = SessionTask {
            socket,
            client_name: client_name.into(),
            feed: Arc::clone(&feed),
            link: link_tx,
            connection: None,
            entry: Entry::default(),
        };
        tokio::spawn(task.run(rx));
        Self {
            commands,
            feed,
            link,
        }
    }

    /// Where the session stands now.
    pub fn phase(&self) -> Phase {
        self.feed.phase()
    }

    /// Every change of [`Self::phase`], as it happens.
    pub fn watch_phase(&self) -> tokio::sync::watch::Receiver<Phase> {
        self.feed.watch_phase()
    }

    /// The pull buffer, for callers that read events their own way
    /// (`join` shows them all, `doctor` waits for one).
    pub fn events(&self) -> &EventBuffer {
        self.feed.events()
    }

    /// Takes the oldest pending events that fit `budget` bytes.
    pub fn take_events(&self, budget: usize) -> Pulled {
        self.feed.events().take_batch(budget)
    }

    /// As [`Self::take_events`], waiting up to `timeout` for the first one.
    pub async fn wait_events(&self, timeout: Duration, budget: usize) -> Pulled {
        self.feed.events().wait_batch(timeout, budget).await
    }

    /// Events let go unpulled since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.feed.events().take_dropped()
    }

    /// Enters the queue as an agent meeting anyone, with no interests,
    /// waiting up to `wait` for a partner (see [`Self::enter_queue_with`]).
    pub async fn enter_queue(&self, wait: Duration) -> Result<Entered, CallError> {
        self.enter_queue_with(wait, Entry::default()).await
    }

    /// Enters the queue with `entry`'s interests, kind, whom to meet and
    /// block id (see [`crate::identity`]), waiting up to `wait` for a
    /// partner. A match read right behind a `waiting` reply counts as a
    /// match.
    pub async fn enter_queue_with(
        &self,
        wait: Duration,
        entry: Entry,
    ) -> Result<Entered, CallError> {
        let mut phase = self.feed.watch_phase();
        let position = match self.call(Request::EnterQueue(entry)).await? {
            Reply::Matched { room_id, .. } => return Ok(Entered::Matched { room: room_id }),
            Reply::Waiting { position } => position,
            other => return Err(CallError::Unexpected(format!("{other:?}"))),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // The connection applied the reply before handing it over, so
            // the phase is at least as new as the reply.
            match *phase.borrow_and_update() {
                Phase::InRoom { room } => return Ok(Entered::Matched { room }),
                Phase::Idle if !wait.is_zero() => return Err(CallError::LostWhileWaiting),
                Phase::Idle | Phase::Waiting { .. } => {}
            }
            match tokio::time::timeout_at(deadline, phase.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(CallError::LostWhileWaiting),
                Err(_) => return Ok(Entered::Queued { position }),
            }
        }
    }

    /// Sends one message to the partner in `room`.
    pub async fn send(&self, room: RoomId, message: String) -> Result<(), CallError> {
        match self
            .call(Request::SendMessage {
                room_id: room,
                message,
            })
            .await?
        {
            Reply::Sent => Ok(()),
            other => Err(CallError::Unexpected(format!("{other:?}"))),
        }
    }

    /// What `chatroom.found` said of the match in `room`: the interests
    /// shared and the partner's kind.
    pub fn match_info(&self, room: RoomId) -> MatchInfo {
        self.feed.match_info(room)
    }

    /// Leaves `room`; the partner is told.
    pub async fn leave(&self, room: RoomId) -> Result<(), CallError> {
        self.leave_with(room, false).await
    }

    /// Leaves `room`, and with `block` is never matched with this partner
    /// again; the partner is told only that you left.
    pub async fn leave_with(&self, room: RoomId, block: bool) -> Result<(), CallError> {
        match self
            .call(Request::LeaveChat {
                room_id: room,
                block,
            })
            .await?
        {
            Reply::Left if !block => Ok(()),
            Reply::Blocked if block => Ok(()),
            // A broker from before blocking ignores the flag: the session
            // left, but nothing stops the two meeting again, so say so.
            Reply::Left => Err(CallError::Broker {
                code: ErrorCode::UnknownRequest,
                message: "you left the chat, but the running broker is too old to block: the block was not recorded. Run `mcp-chat doctor` to compare versions".to_owned(),
                retry_after_ms: None,
            }),
            other => Err(CallError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The phase, with the broker's figures when it answers in time (see
    /// the module docs). A session that has no connection yet connects
    /// first, as any call would.
    pub async fn status(&self) -> Result<Status, CallError> {
        let link = *self.link.borrow();
        let figures = match link {
            Link::Reconnecting => None,
            Link::Up => tokio::time::timeout(FIGURES_WITHIN, self.call(Request::Status))
                .await
                .ok()
                .and_then(Result::ok),
            Link::Unconnected => Some(self.call(Request::Status).await?),
        };
        let broker = match figures {
            Some(Reply::Status(info)) => Some(*info),
            Some(other) => return Err(CallError::Unexpected(format!("{other:?}"))),
            None => None,
        };
        Ok(Status {
            phase: self.phase(),
            broker,
        })
    }

    /// One request through the session task; a broker `error` reply is a
    /// [`CallError::Broker`].
    async fn call(&self, request: Request) -> Result<Reply, CallError> {
        let lost = || SessionError::Lost(RequestError::ConnectionLost);
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command { request, reply })
            .await
            .map_err(|_| lost())?;
        let pending = answer.await.map_err(|_| lost())??;
        match pending.await.map_err(|_| lost())? {
            Reply::Error {
                code,
                message,
                retry_after_ms,
            } => Err(CallError::Broker {
                code,
                message,
                retry_after_ms,
            }),
            reply => Ok(reply),
        }
    }
}

/// The session task: owns the connection, serves calls in order, mends
/// the connection when it breaks.
struct SessionTask {
    socket: PathBuf,
    client_name: String,
    feed: Arc<SessionFeed>,
    link: watch::Sender<Link>,
    connection: Option<BrokerConnection>,
    /// The options of the last `enter_queue`, to take a place in a new
    /// broker's queue with the same ones.
    entry: Entry,
}

enum Next {
    Call(Command),
    Broke,
    Ended,
}

impl SessionTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let watch = self.connection.as_ref().map(BrokerConnection::watch);
            let broke = async {
                match &watch {
                    Some(watch) => watch.closed().await,
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                command = commands.recv() => command.map_or(Next::Ended, Next::Call),
                () = broke => Next::Broke,
            };
            match next {
                Next::Call(command) => {
                    if let Request::EnterQueue(entry) = &command.request {
                        self.entry = entry.clone();
                    }
                    let answer = match self.live().await {
                        Ok(connection) => {
                            connection.submit(command.request).await.map_err(Into::into)
                        }
                        Err(e) => Err(e),
                    };
                    // The caller may have given up (a cancelled tool call).
                    let _ = command.reply.send(answer);
                }
                Next::Broke => {
                    if let Some(broken) = self.connection.take() {
                        // Given up on and reported if this fails; the next
                        // call connects afresh.
                        if let Ok(fresh) = self.recover(&broken.watch()).await {
                            self.connection = Some(fresh);
                            self.link.send_replace(Link::Up);
                        }
                    }
                }
                // Every handle dropped: the session is over, and dropping
                // the connection ends it at the broker.
                Next::Ended => return,
            }
        }
    }

    /// The live connection, made if needed. A connection that broke before
    /// this task noticed is mended first, with the same report.
    async fn live(&mut self) -> Result<BrokerConnection, SessionError> {
        if let Some(live) = self.connection.as_ref().filter(|c| !c.is_closed()) {
            return Ok(live.clone());
        }
        let fresh = match self.connection.take() {
            Some(broken) => self.recover(&broken.watch()).await?,
            None => self.connect(None).await?,
        };
        self.connection = Some(fresh.clone());
        self.link.send_replace(Link::Up);
        Ok(fresh)
    }

    async fn connect(&self, resume: Option<Resume>) -> Result<BrokerConnection, StartError> {
        let last_seq = resume.as_ref().map_or(0, |r| r.last_seq);
        let (transport, welcome) =
            connect_or_start(&self.socket, &self.client_name, resume).await?;
        tracing::info!(session = welcome.session_id, resumed = welcome.resumed, broker = %welcome.broker_version, "connected to broker");
        // A fresh session numbers its events from 1 again.
        let last_seq = if welcome.resumed { last_seq } else { 0 };
        Ok(BrokerConnection::start(
            transport,
            welcome,
            Arc::clone(&self.feed),
            last_seq,
        ))
    }

    /// Replaces a broken connection, claiming its session, and reports what
    /// the break cost (see the module docs) before any call proceeds.
    async fn recover(&self, broken: &ConnectionWatch) -> Result<BrokerConnection, StartError> {
        self.link.send_replace(Link::Reconnecting);
        let fresh = match self.reconnect(broken.resume_claim()).await {
            Ok(fresh) => fresh,
            Err(e) => {
                self.feed.session_lost(EndReason::BrokerLost);
                self.link.send_replace(Link::Unconnected);
                return Err(e);
            }
        };
        if !fresh.welcome.resumed {
            let reason = if fresh.welcome.instance == broken.welcome.instance {
                EndReason::Broker(DisconnectReason::Disconnected)
            } else {
                EndReason::BrokerRestart
            };
            if matches!(self.feed.session_lost(reason), Phase::Waiting { .. }) {
                requeue(&fresh, self.entry.clone()).await;
            }
        }
        Ok(fresh)
    }

    /// Connects with `claim`, retrying while a broker may yet appear.
    async fn reconnect(&self, claim: Resume) -> Result<BrokerConnection, StartError> {
        let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
        let mut pause = Duration::from_millis(20);
        loop {
            match self.connect(Some(claim.clone())).await {
                Ok(connection) => return Ok(connection),
                // No broker binary to start: waiting will not produce one.
                Err(e @ StartError::Spawn { .. }) => {
                    tracing::warn!(error = %e, "cannot start a broker; giving up until the next call");
                    return Err(e);
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(error = %e, "broker unreachable; giving up until the next call");
                    return Err(e);
                }
                Err(e) => tracing::debug!(error = %e, "reconnecting to the broker"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

/// The session was waiting when its broker session was lost; it still
/// wants a partner, so it takes a place in the new queue. The connection
/// applies the reply to the phase, in wire order; this task does not wait
/// for it, so calls queued behind the reconnect go out right after.
async fn requeue(connection: &BrokerConnection, entry: Entry) {
    match connection.submit(Request::EnterQueue(entry)).await {
        Ok(answer) => {
            tokio::spawn(async move {
                match answer.await {
                    Ok(Reply::Waiting { .. } | Reply::Matched { .. }) => {}
                    other => tracing::warn!(
                        ?other,
                        "could not re-enter the queue after losing the broker session"
                    ),
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not re-enter the queue after losing the broker session")
        }
    }
}
