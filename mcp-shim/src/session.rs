//! A chat session as the MCP server sees it: the session's event log, and a
//! broker connection that is made on demand and mended when it breaks.
//!
//! When the connection breaks, a background task reconnects at once,
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

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use mcp_chat_proto::{DisconnectReason, Reply, Request, Resume};
use tokio::sync::Mutex;

use crate::autostart::{StartError, connect_or_start};
use crate::broker_client::{BrokerConnection, ConnectError, ConnectionWatch, RequestError};
use crate::end_reason::EndReason;
use crate::events::{EventLog, Place};

/// How long the background reconnect keeps trying.
const RECONNECT_FOR: Duration = Duration::from_secs(10);

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

#[derive(Debug)]
pub struct ChatSession {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    socket: PathBuf,
    client_name: String,
    connection: Mutex<Option<BrokerConnection>>,
    events: Arc<EventLog>,
}

impl ChatSession {
    pub fn new(socket: PathBuf, client_name: impl Into<String>, events: Arc<EventLog>) -> Self {
        Self {
            inner: Arc::new(Inner {
                socket,
                client_name: client_name.into(),
                connection: Mutex::new(None),
                events,
            }),
        }
    }

    pub fn events(&self) -> &Arc<EventLog> {
        &self.inner.events
    }

    /// Sends one request, connecting (and starting a broker) first if there
    /// is no live connection.
    pub async fn request(&self, request: Request) -> Result<Reply, SessionError> {
        let connection = self.connection().await?;
        Ok(connection.request(request).await?)
    }

    /// The live connection, made if needed. Waits while a reconnect is in
    /// progress, so a call never races the session it is about to use; if
    /// the last connection broke and nobody has mended it yet, this call
    /// mends it, with the same report the background task would make.
    pub async fn connection(&self) -> Result<BrokerConnection, SessionError> {
        let mut slot = self.inner.connection.lock().await;
        if let Some(live) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(live.clone());
        }
        let live = match slot.take() {
            Some(broken) => self.inner.recover(&broken.watch()).await?,
            None => self.inner.connect(None).await?,
        };
        *slot = Some(live.clone());
        tokio::spawn(mend(Arc::downgrade(&self.inner), live.watch()));
        Ok(live)
    }
}

impl Inner {
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
            Arc::clone(&self.events),
            last_seq,
        ))
    }

    /// Replaces a broken connection, claiming its session, and reports what
    /// the break cost (see the module docs). Called with the slot locked, so
    /// the report is in the event log before any tool call proceeds.
    async fn recover(&self, broken: &ConnectionWatch) -> Result<BrokerConnection, StartError> {
        let fresh = match reconnect(self, broken.resume_claim()).await {
            Ok(fresh) => fresh,
            Err(e) => {
                self.events.session_lost(EndReason::BrokerLost).await;
                return Err(e);
            }
        };
        if !fresh.welcome.resumed {
            let reason = if fresh.welcome.instance == broken.welcome.instance {
                EndReason::Broker(DisconnectReason::Disconnected)
            } else {
                EndReason::BrokerRestart
            };
            let before = self.events.session_lost(reason).await;
            if matches!(before, Place::Waiting { .. }) {
                requeue(&fresh).await;
            }
        }
        Ok(fresh)
    }
}

/// Waits for `connection` to break; if the session still lives and nobody
/// has mended it yet, mends it. Holds the session weakly: a session that
/// ends closes its connection, and this ends with it.
async fn mend(session: Weak<Inner>, mut connection: ConnectionWatch) {
    loop {
        connection.closed().await;
        let Some(inner) = session.upgrade() else {
            return;
        };
        let mut slot = inner.connection.lock().await;
        if !slot.as_ref().is_some_and(BrokerConnection::is_closed) {
            // Mended already, or given up on and reported.
            return;
        }
        *slot = None;
        match inner.recover(&connection).await {
            Ok(fresh) => {
                connection = fresh.watch();
                *slot = Some(fresh);
            }
            Err(_) => return,
        }
    }
}

/// Connects with `claim`, retrying while a broker may yet appear.
async fn reconnect(inner: &Inner, claim: Resume) -> Result<BrokerConnection, StartError> {
    let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
    let mut pause = Duration::from_millis(20);
    loop {
        match inner.connect(Some(claim.clone())).await {
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

/// The session was waiting when the broker went away; it still wants a
/// partner, so it takes a place in the new broker's queue.
async fn requeue(connection: &BrokerConnection) {
    // The connection applies the reply to the place, in wire order.
    match connection.request(Request::EnterQueue).await {
        Ok(Reply::Waiting { .. } | Reply::Matched { .. }) => {}
        other => tracing::warn!(
            ?other,
            "could not re-enter the queue after a broker restart"
        ),
    }
}
