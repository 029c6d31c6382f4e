//! The hub: the one task that owns [`State`]. Connection tasks talk to it
//! through a bounded channel; channel order is what makes matching FIFO.

use std::time::Duration;

use mcp_chat_proto::{ErrorCode, Request};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::state::{SessionHandle, SessionId, State};

/// Commands buffered before connection tasks wait their turn. A full channel
/// slows readers down; it never drops a command.
const COMMAND_CAPACITY: usize = 4096;

pub(crate) enum Command {
    Register {
        handle: SessionHandle,
        reply: oneshot::Sender<Result<SessionId, (ErrorCode, String)>>,
    },
    Request {
        session: SessionId,
        id: u64,
        request: Request,
    },
    Disconnected {
        session: SessionId,
    },
    Shutdown,
}

/// A cheap handle connection tasks use to reach the hub.
#[derive(Clone, Debug)]
pub(crate) struct Hub {
    commands: mpsc::Sender<Command>,
}

impl Hub {
    /// Starts the hub task. It cancels `idle` after `idle_exit` with no
    /// sessions, and returns when every `Hub` handle is gone.
    pub(crate) fn spawn(
        max_sessions: usize,
        idle_exit: Option<Duration>,
        idle: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (commands, rx) = mpsc::channel(COMMAND_CAPACITY);
        let task = tokio::spawn(run(State::new(max_sessions), rx, idle_exit, idle));
        (Self { commands }, task)
    }

    pub(crate) async fn register(
        &self,
        handle: SessionHandle,
    ) -> Result<SessionId, (ErrorCode, String)> {
        let (reply, answer) = oneshot::channel();
        let gone = || {
            (
                ErrorCode::ShuttingDown,
                "the broker is shutting down".to_owned(),
            )
        };
        self.commands
            .send(Command::Register { handle, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Returns false once the hub has stopped.
    pub(crate) async fn send(&self, command: Command) -> bool {
        self.commands.send(command).await.is_ok()
    }
}

async fn run(
    mut state: State,
    mut commands: mpsc::Receiver<Command>,
    idle_exit: Option<Duration>,
    idle: CancellationToken,
) {
    let mut idle_since = Some(Instant::now());
    loop {
        let idle_deadline = match (idle_since, idle_exit) {
            (Some(since), Some(after)) if !idle.is_cancelled() => Some(since + after),
            _ => None,
        };
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                match command {
                    Command::Register { handle, reply } => {
                        let result = state.register(handle);
                        let admitted = result.as_ref().ok().copied();
                        if reply.send(result).is_err()
                            && let Some(session) = admitted
                        {
                            // The connection gave up while waiting for us.
                            state.disconnect(session);
                        }
                    }
                    Command::Request { session, id, request } => {
                        state.handle_request(session, id, request);
                    }
                    Command::Disconnected { session } => state.disconnect(session),
                    Command::Shutdown => state.shutdown(),
                }
                idle_since = match (state.session_count(), idle_since) {
                    (0, None) => Some(Instant::now()),
                    (0, since) => since,
                    _ => None,
                };
            }
            () = sleep_until(idle_deadline) => {
                tracing::info!(after = ?idle_exit, "no sessions for the idle timeout; exiting");
                idle.cancel();
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_exit_fires_only_with_no_sessions() {
        let idle = CancellationToken::new();
        let (hub, _task) = Hub::spawn(10, Some(Duration::from_secs(60)), idle.clone());
        let (outbox, _rx) = mpsc::channel(4);
        let session = hub
            .register(SessionHandle {
                outbox,
                kick: CancellationToken::new(),
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(
            !idle.is_cancelled(),
            "a connected session keeps the broker up"
        );
        hub.send(Command::Disconnected { session }).await;
        tokio::time::timeout(Duration::from_secs(61), idle.cancelled())
            .await
            .expect("idle exit after the timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn no_idle_exit_when_disabled() {
        let idle = CancellationToken::new();
        let (_hub, _task) = Hub::spawn(10, None, idle.clone());
        tokio::time::sleep(Duration::from_secs(86_400)).await;
        assert!(!idle.is_cancelled());
    }
}
