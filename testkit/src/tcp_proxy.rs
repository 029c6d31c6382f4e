//! A TCP proxy on loopback that a test can cut and restore: a network
//! partition between one process and a server that both stay up.
//!
//! Cutting black-holes the link, as a real partition does: open
//! connections stay open but nothing crosses them (no reset, no FIN, so
//! the client finds out only by its own pings), and new connections are
//! accepted and then left silent. Restoring closes everything from before
//! the cut and forwards new connections again.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy)]
struct State {
    open: bool,
    /// Bumped by every restore: connections of older epochs are closed.
    epoch: u64,
}

pub struct TcpProxy {
    pub port: u16,
    state: watch::Sender<State>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (state, _) = watch::channel(State {
            open: true,
            epoch: 0,
        });
        let accept = tokio::spawn(accept_loop(listener, target, state.subscribe()));
        Ok(Self {
            port,
            state,
            accept,
        })
    }

    /// `nats://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Partitions: nothing crosses any more.
    pub fn cut(&self) {
        self.state.send_modify(|s| s.open = false);
    }

    /// Heals: connections from before are closed, new ones forwarded.
    pub fn restore(&self) {
        self.state.send_modify(|s| {
            s.open = true;
            s.epoch += 1;
        });
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Every connection task ends when the sender goes.
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, state: watch::Receiver<State>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(relay(inbound, target, state.clone()));
    }
}

async fn relay(mut inbound: TcpStream, target: SocketAddr, mut state: watch::Receiver<State>) {
    let State { open, epoch } = *state.borrow_and_update();
    if open {
        // A server that is down closes the client's connection, as it would.
        let Ok(mut outbound) = TcpStream::connect(target).await else {
            return;
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
            _ = state.wait_for(|s| !s.open || s.epoch != epoch) => {}
        }
    }
    // Cut: silent until the restore, then closed.
    let _ = state.wait_for(|s| s.epoch != epoch).await;
}
