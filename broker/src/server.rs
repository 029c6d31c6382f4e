//! The accept loop, connection limits and the orderly way out.
//!
//! Every connection costs a file descriptor, so at most
//! [`connection_slots`] connections are served at once: the sessions plus a
//! little headroom for handshakes under way, which bounds half-open
//! connections (accepted, no `Hello` yet) as well; the handshake timeout
//! bounds how long they hold a slot. A connection past that gets
//! `Refused { broker_full }` at once and is closed. At most
//! [`REFUSALS_IN_FLIGHT`] refusals are being written at a time, and the loop
//! accepts only while it can write one more, so the broker never runs out of
//! descriptors and never leaves a client unanswered: while it waits, new
//! connections queue in the kernel's backlog.
//!
//! Shutdown order: stop accepting, tell the hub (which sends `Shutdown` and
//! partner notices and releases every outbox), wait for connections to flush
//! up to `drain_timeout`, cut off the rest, let a federation link delete its
//! waiters' entries from the realm's queue and store its rooms' last
//! messages (`partner.disconnected {shutdown}` for remote partners), within
//! its own bound, then drop the listener, which unlinks the
//! socket before releasing the lock.
//!
//! If the hub ends while the broker is serving (it panicked: a bug), nobody
//! can be served any more, so the broker must not live on holding the socket
//! and the lock: it unlinks the socket and releases the lock at once, so the
//! next shim starts a fresh broker, ends every connection (their shims then
//! reconnect and report `broker_restart`), and `run` returns an error so the
//! process exits non-zero.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use interprocess::local_socket::traits::tokio::Listener as _;
use mcp_chat_proto::{ErrorCode, Refusal};
use tokio::sync::Semaphore;
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::connection::{self, ConnectionSettings};
use crate::hub::{Command, Hub};
use crate::listener::BoundListener;

/// Connections admitted beyond the session cap: handshakes under way, and a
/// resuming client whose old connection is not gone yet. With them, a full
/// broker still reads `Hello` and answers `broker_full` itself.
pub(crate) const HANDSHAKE_HEADROOM: usize = 32;
/// Connections past the cap being told `broker_full` at once, at most. Each
/// refusal is one small frame written with a 1 s bound.
pub(crate) const REFUSALS_IN_FLIGHT: usize = 16;

/// Connections served at once for `max_sessions` sessions.
pub(crate) fn connection_slots(max_sessions: usize) -> usize {
    max_sessions.saturating_add(HANDSHAKE_HEADROOM)
}

/// Why the broker stopped other than by request or idleness.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "the broker's hub {0}; the broker stopped and released its socket so that a fresh one can start"
    )]
    HubEnded(String),
}

enum Stop {
    Shutdown,
    HubEnded(String),
}

/// Serves `listener` until `shutdown` completes or the broker has been idle
/// for `config.idle_exit`. Fails if the hub, which owns all chat state, ends
/// on its own. `ready` is called once the hub runs and before the first
/// accept: from then on a client is served (`--print-ready` prints there).
pub async fn run(
    listener: BoundListener,
    shutdown: impl Future<Output = ()>,
    config: Config,
    ready: impl FnOnce(&BoundListener),
) -> Result<(), ServeError> {
    let idle = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let blocks = config.blocks_path.as_deref().and_then(|path| {
        crate::block_file::BlockFile::open(path)
            .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "cannot keep blocks on disk; they hold until this broker exits"))
            .ok()
    });
    let link_stop = CancellationToken::new();
    let (link, link_task) = config
        .federation
        .clone()
        .map(|f| crate::federation::spawn(f, config.limits(), link_stop.clone()))
        .unzip();
    let (hub, mut hub_task) = Hub::spawn(
        config.max_sessions,
        config.liveness,
        config.limits(),
        config.idle_exit,
        idle.clone(),
        config.log_path.as_deref(),
        crate::hub::HubIo {
            blocks,
            federation: link,
        },
    );
    // Cancelled on every way out, last: the link's helpers (presence, the
    // room consumer) stop. The link itself leaves the realm when the hub's
    // port closes, and is waited for (`leave_realm`).
    let _link_stop = link_stop.drop_guard();
    let connections = TaskTracker::new();
    let instance: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
    let slots = Arc::new(Semaphore::new(connection_slots(config.max_sessions)));
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    let full = format!(
        "the broker is full ({} sessions); try again later",
        config.max_sessions
    );
    // Taken before each accept, so that an accepted connection can always
    // be answered, even when it has to be refused.
    let mut refusal = None;
    // Logged once per spell of being full, not once per refused client.
    let mut full_logged = false;
    tracing::info!(path = %listener.path().display(), pid = std::process::id(), version = crate::VERSION, max_sessions = config.max_sessions, "broker listening");
    ready(&listener);

    tokio::pin!(shutdown);
    let stop = loop {
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutdown requested");
                break Stop::Shutdown;
            }
            () = idle.cancelled() => break Stop::Shutdown,
            ended = &mut hub_task => break Stop::HubEnded(describe(ended)),
            permit = refusals.clone().acquire_owned(), if refusal.is_none() => {
                refusal = permit.ok();
            }
            accepted = listener.listener().accept(), if refusal.is_some() => match accepted {
                Ok(stream) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        full_logged = false;
                        let settings = ConnectionSettings {
                            handshake_timeout: config.handshake_timeout,
                            outbox_capacity: config.outbox_capacity,
                            liveness: config.liveness,
                            instance: instance.clone(),
                        };
                        let serve = connection::serve(stream, hub.clone(), settings, hard_stop.clone());
                        connections.spawn(async move {
                            serve.await;
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        if !std::mem::replace(&mut full_logged, true) {
                            tracing::warn!(max_sessions = config.max_sessions, "broker full; refusing new connections");
                        }
                        let permit = refusal.take();
                        let reason = Refusal::new(ErrorCode::BrokerFull, full.clone());
                        connections.spawn(async move {
                            connection::turn_away(stream, reason).await;
                            drop(permit);
                        });
                    }
                },
                Err(e) => {
                    // Not EMFILE any more (descriptors are budgeted), but
                    // whatever it is: back off instead of spinning, and keep
                    // serving the connections already open.
                    tracing::warn!(error = %e, "accept failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    };

    if let Stop::HubEnded(why) = stop {
        tracing::error!(hub = %why, "the hub stopped; giving up the socket so that a fresh broker can start");
        // First the socket and the lock, so reconnecting shims find no
        // socket and start a fresh broker, which can take the lock.
        drop(listener);
        hard_stop.cancel();
        connections.close();
        let _ = tokio::time::timeout(config.drain_timeout, connections.wait()).await;
        // The hub's port is gone with it, so the link leaves the realm.
        leave_realm(link_task).await;
        return Err(ServeError::HubEnded(why));
    }

    hub.send(Command::Shutdown).await;
    drop(hub);
    connections.close();
    if tokio::time::timeout(config.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not flush in time; closing them");
        hard_stop.cancel();
        connections.wait().await;
    }
    let ended = hub_task.await;
    // The hub told the link how its remote rooms ended (`shutdown`) and
    // withdrew its waiters; with the hub gone the link sends that on,
    // leaves the realm and returns.
    leave_realm(link_task).await;
    drop(listener);
    if let Err(e) = ended {
        let why = describe(Err(e));
        tracing::error!(hub = %why, "the hub failed during shutdown");
        return Err(ServeError::HubEnded(why));
    }
    tracing::info!("broker stopped");
    Ok(())
}

/// Waits for the federation link to leave the realm: it bounds that itself
/// ([`crate::federation::LEAVE_WITHIN`]); a little more here, so the
/// process never exits (dropping the runtime, and with it the deletes of
/// our waiters' entries) while it is still leaving.
async fn leave_realm(link: Option<tokio::task::JoinHandle<()>>) {
    let Some(link) = link else {
        return;
    };
    let bound = crate::federation::LEAVE_WITHIN + Duration::from_secs(1);
    if tokio::time::timeout(bound, link).await.is_err() {
        tracing::warn!("the federation link did not finish leaving the realm in time");
    }
}

/// How the hub task ended, for the log and the exit message.
fn describe(ended: Result<(), JoinError>) -> String {
    match ended {
        Ok(()) => "stopped unexpectedly".to_owned(),
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("a non-text payload");
            format!("panicked: {message}")
        }
        Err(_) => "was cancelled".to_owned(),
    }
}
