//! The hub: the one task that owns [`State`]. Connection tasks talk to it
//! through a bounded channel; channel order is what makes matching FIFO.

use std::time::Duration;

use mcp_chat_proto::{ErrorCode, Refusal, Request, Resume};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::block_file::{BlockFile, Loaded};
use crate::config::{Limits, Liveness};
use crate::federation::{FromLink, LinkPort};
use crate::state::{Admitted, ConnectionId, SessionHandle, SessionId, State};

/// Commands buffered before connection tasks wait their turn. A full channel
/// slows readers down; it never drops a command.
const COMMAND_CAPACITY: usize = 4096;

pub(crate) enum Command {
    Register {
        handle: SessionHandle,
        resume: Option<Resume>,
        reply: oneshot::Sender<Result<Admitted, Refusal>>,
    },
    Request {
        session: SessionId,
        id: u64,
        request: Request,
    },
    /// The client answered a ping.
    Alive {
        session: SessionId,
        connection: ConnectionId,
    },
    /// The client holds every event up to `seq`.
    Ack {
        session: SessionId,
        connection: ConnectionId,
        seq: u64,
    },
    /// The connection closed: the client is gone.
    Disconnected {
        session: SessionId,
        connection: ConnectionId,
    },
    /// The connection stopped answering pings and was dropped.
    Unresponsive {
        session: SessionId,
        connection: ConnectionId,
    },
    Shutdown,
}

/// What the hub reads and writes besides its connections: the block file
/// (with the blocks loaded from it), and the link to a realm of brokers.
#[derive(Default)]
pub(crate) struct HubIo {
    pub(crate) blocks: Option<(BlockFile, Loaded)>,
    pub(crate) federation: Option<LinkPort>,
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
        liveness: Liveness,
        limits: Limits,
        idle_exit: Option<Duration>,
        idle: CancellationToken,
        log_path: Option<&std::path::Path>,
        io: HubIo,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let HubIo { blocks, federation } = io;
        let (commands, rx) = mpsc::channel(COMMAND_CAPACITY);
        let (to_link, from_link) = federation.map(|p| (p.to_link, p.from_link)).unzip();
        let mut state = State::new(max_sessions, liveness, limits)
            .with_log_path(log_path)
            .with_federation(to_link);
        let block_file = match blocks {
            Some((file, loaded)) => {
                state = state.with_blocks(loaded);
                Some(file)
            }
            None => None,
        };
        // Armed here, before the caller announces it is listening, so a test
        // cannot signal before the hook is in place.
        let fault = fault::Trigger::arm();
        let task = tokio::spawn(run(
            state, rx, from_link, idle_exit, idle, fault, block_file,
        ));
        (Self { commands }, task)
    }

    pub(crate) async fn register(
        &self,
        handle: SessionHandle,
        resume: Option<Resume>,
    ) -> Result<Admitted, Refusal> {
        let (reply, answer) = oneshot::channel();
        let gone = || {
            Refusal::new(
                ErrorCode::ShuttingDown,
                "the broker is shutting down".to_owned(),
            )
        };
        self.commands
            .send(Command::Register {
                handle,
                resume,
                reply,
            })
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
    mut from_link: Option<mpsc::Receiver<FromLink>>,
    idle_exit: Option<Duration>,
    idle: CancellationToken,
    mut fault: fault::Trigger,
    mut block_file: Option<BlockFile>,
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
                handle(&mut state, command);
                // A block is rare and one short line: written here, in
                // order, before the next command.
                if let Some(file) = &mut block_file {
                    for pair in state.take_new_blocks() {
                        file.append(pair);
                    }
                }
                idle_since = match (state.session_count(), idle_since) {
                    (0, None) => Some(Instant::now()),
                    (0, since) => since,
                    _ => None,
                };
            }
            Some(msg) = recv_link(&mut from_link) => state.link_report(msg),
            () = sleep_until(state.next_deadline()) => state.expire(Instant::now()),
            () = fault.fired(), if fault::ENABLED => panic!("injected fault (SIGUSR1, fault-injection build)"),
            () = sleep_until(idle_deadline) => {
                tracing::info!(after = ?idle_exit, "no sessions for the idle timeout; exiting");
                idle.cancel();
            }
        }
    }
}

fn handle(state: &mut State, command: Command) {
    match command {
        Command::Register {
            handle,
            resume,
            reply,
        } => {
            let result = state.register(handle, resume);
            let admitted = result.as_ref().ok().cloned();
            if reply.send(result).is_err()
                && let Some(admitted) = admitted
            {
                // The connection gave up while waiting for us.
                state.disconnect(admitted.session, admitted.connection);
            }
        }
        Command::Request {
            session,
            id,
            request,
        } => state.handle_request(session, id, request),
        Command::Alive {
            session,
            connection,
        } => state.alive(session, connection),
        Command::Ack {
            session,
            connection,
            seq,
        } => state.ack(session, connection, seq),
        Command::Disconnected {
            session,
            connection,
        } => state.disconnect(session, connection),
        Command::Unresponsive {
            session,
            connection,
        } => state.unresponsive(session, connection),
        Command::Shutdown => state.shutdown(),
    }
}

/// Test-only fault injection: with the `fault-injection` feature, which
/// only the test script enables, SIGUSR1 makes the hub panic, so tests can
/// check that a broker whose hub dies exits and is replaced. Without it the
/// hook is compiled out and the branch above is never polled.
#[cfg(all(unix, feature = "fault-injection"))]
mod fault {
    use tokio::signal::unix::{Signal, SignalKind, signal};

    pub(super) const ENABLED: bool = true;

    pub(super) struct Trigger(Signal);

    impl Trigger {
        pub(super) fn arm() -> Self {
            Self(signal(SignalKind::user_defined1()).expect("a test build can watch SIGUSR1"))
        }

        pub(super) async fn fired(&mut self) {
            self.0.recv().await;
        }
    }
}

#[cfg(not(all(unix, feature = "fault-injection")))]
mod fault {
    pub(super) const ENABLED: bool = false;

    pub(super) struct Trigger;

    impl Trigger {
        pub(super) fn arm() -> Self {
            Self
        }

        pub(super) async fn fired(&mut self) {
            std::future::pending().await
        }
    }
}

/// The link's next report; never, without federation (or once it is gone).
async fn recv_link(link: &mut Option<mpsc::Receiver<FromLink>>) -> Option<FromLink> {
    match link {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
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

    fn handle() -> (SessionHandle, mpsc::Receiver<mcp_chat_proto::BrokerMsg>) {
        let (outbox, rx) = mpsc::channel(4);
        (
            SessionHandle {
                outbox,
                kick: CancellationToken::new(),
            },
            rx,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn idle_exit_fires_only_with_no_sessions() {
        let idle = CancellationToken::new();
        let (hub, _task) = Hub::spawn(
            10,
            Liveness::default(),
            Limits::default(),
            Some(Duration::from_secs(60)),
            idle.clone(),
            None,
            HubIo::default(),
        );
        let (h, _rx) = handle();
        let admitted = hub.register(h, None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(
            !idle.is_cancelled(),
            "a connected session keeps the broker up"
        );
        hub.send(Command::Disconnected {
            session: admitted.session,
            connection: admitted.connection,
        })
        .await;
        tokio::time::timeout(Duration::from_secs(61), idle.cancelled())
            .await
            .expect("idle exit after the timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn no_idle_exit_when_disabled() {
        let idle = CancellationToken::new();
        let (_hub, _task) = Hub::spawn(
            10,
            Liveness::default(),
            Limits::default(),
            None,
            idle.clone(),
            None,
            HubIo::default(),
        );
        tokio::time::sleep(Duration::from_secs(86_400)).await;
        assert!(!idle.is_cancelled());
    }
}
