//! The accept loop and the orderly way out.
//!
//! Shutdown order: stop accepting, tell the hub (which sends `Shutdown` and
//! partner notices and releases every outbox), wait for connections to flush
//! up to `drain_timeout`, cut off the rest, then drop the listener, which
//! unlinks the socket before releasing the lock.

use std::future::Future;
use std::time::Duration;

use interprocess::local_socket::traits::tokio::Listener as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::connection::{self, ConnectionSettings};
use crate::hub::{Command, Hub};
use crate::listener::BoundListener;

/// Serves `listener` until `shutdown` completes or the broker has been idle
/// for `config.idle_exit`.
pub async fn run(listener: BoundListener, shutdown: impl Future<Output = ()>, config: Config) {
    let idle = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let (hub, hub_task) = Hub::spawn(
        config.max_sessions,
        config.liveness,
        crate::hub::Limits {
            messages: config.send_limit,
            bytes: config.byte_limit,
        },
        config.idle_exit,
        idle.clone(),
    );
    let connections = TaskTracker::new();
    let instance: std::sync::Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
    tracing::info!(path = %listener.path().display(), pid = std::process::id(), version = crate::VERSION, "broker listening");

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutdown requested");
                break;
            }
            () = idle.cancelled() => break,
            accepted = listener.listener().accept() => match accepted {
                Ok(stream) => {
                    let settings = ConnectionSettings {
                        handshake_timeout: config.handshake_timeout,
                        outbox_capacity: config.outbox_capacity,
                        liveness: config.liveness,
                        instance: instance.clone(),
                    };
                    connections.spawn(connection::serve(stream, hub.clone(), settings, hard_stop.clone()));
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning, and keep
                    // serving the connections already open.
                    tracing::warn!(error = %e, "accept failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
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
    let _ = hub_task.await;
    drop(listener);
    tracing::info!("broker stopped");
}
