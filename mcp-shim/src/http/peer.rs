//! Whose process is on the other end of a loopback TCP connection.
//!
//! TCP carries no uid, so on a shared machine any account could reach a
//! loopback server and chat as its owner. Linux says who owns every local
//! socket in `/proc/net/tcp` and `/proc/net/tcp6`: the client's end of a
//! loopback connection is listed there with its owner's uid, under the
//! address and port the server sees as the peer. [`socket_owner`] is a pure
//! parser of that format; [`lookup_owner`] reads the files. Elsewhere the
//! server falls back to a bearer token (see `token`).
//!
//! The lookup runs once per TCP connection, on its first request, and its
//! verdict is kept with the connection ([`Peer`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OnceCell;

/// The kernel's state number for an established TCP connection
/// (`TCP_ESTABLISHED`). Only such entries count: a closed socket waiting
/// out `TIME_WAIT` is listed with uid 0, whoever owned it.
const TCP_ESTABLISHED: u8 = 0x01;

/// Finds the owner's uid of the socket whose local end is `local` and whose
/// remote end is `remote` in a `/proc/net/tcp` or `/proc/net/tcp6` table.
/// Lines that do not parse are skipped: the format is the kernel's, and a
/// line we cannot read is not the one we look for.
pub fn socket_owner(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let (local, remote) = (canonical(local), canonical(remote));
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let _slot = fields.next()?;
        let entry_local = parse_endpoint(fields.next()?)?;
        let entry_remote = parse_endpoint(fields.next()?)?;
        let state = u8::from_str_radix(fields.next()?, 16).ok()?;
        // tx:rx queues, timer, retransmits, then the uid.
        let uid = fields.nth(3)?.parse().ok()?;
        (state == TCP_ESTABLISHED && entry_local == local && entry_remote == remote).then_some(uid)
    })
}

/// `ADDR:PORT` as the kernel prints it: the address as the raw bytes of its
/// 32-bit words, each printed as a native-endian number (so 127.0.0.1 is
/// `0100007F` on a little-endian machine), the port as a plain number.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..(i + 1) * 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(canonical(SocketAddr::new(ip, port)))
}

/// `::ffff:127.0.0.1` and `127.0.0.1` are one address: a dual-stack socket
/// is listed in `tcp6` under the mapped form.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Whether this system lists each local socket's owner where
/// [`lookup_owner`] reads: Linux, with `/proc` mounted and readable (a
/// sandbox may hide it, and then the token fallback is the check).
pub fn owners_listed() -> bool {
    cfg!(target_os = "linux") && std::fs::File::open("/proc/net/tcp").is_ok()
}

/// Reads `/proc/net/tcp` and `/proc/net/tcp6` for the owner of the client's
/// end of a connection from `peer` to `local`. `None` when it is not listed
/// (or the files cannot be read): the caller refuses then.
pub async fn lookup_owner(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match tokio::fs::read_to_string(table).await {
            Ok(text) => {
                if let Some(uid) = socket_owner(&text, peer, local) {
                    return Some(uid);
                }
            }
            Err(e) => tracing::warn!(table, error = %e, "reading the socket table"),
        }
    }
    None
}

/// Who the other end of a connection is, as far as the server can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A process of the user running the server.
    SameUser,
    /// A process of another uid.
    Other(u32),
    /// The connection is not in the socket table (e.g. gone already).
    Unknown,
}

impl Owner {
    pub fn of(uid: Option<u32>, ours: u32) -> Self {
        match uid {
            Some(uid) if uid == ours => Self::SameUser,
            Some(uid) => Self::Other(uid),
            None => Self::Unknown,
        }
    }
}

/// One accepted connection: its addresses, and its owner once looked up.
/// Cloned into every request on the connection, so the lookup is done once.
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    owner: Arc<OnceCell<Owner>>,
}

impl Peer {
    /// The connection's owner, looked up by `lookup` on first use.
    pub async fn owner<F>(&self, lookup: impl FnOnce(SocketAddr, SocketAddr) -> F) -> Owner
    where
        F: Future<Output = Owner>,
    {
        *self
            .owner
            .get_or_init(|| lookup(self.remote, self.local))
            .await
    }
}

impl Connected<IncomingStream<'_, NoDelayListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, NoDelayListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TCP listener whose connections send small writes at once.
///
/// rmcp writes an SSE response in several small pieces. With Nagle's
/// algorithm on, the second piece waits until the client acknowledges the
/// first, and a client delays that ACK by up to 40 ms hoping to piggyback
/// it: every tool call over HTTP took ~42 ms. `TCP_NODELAY` ends the wait.
#[derive(Debug)]
pub struct NoDelayListener(pub TcpListener);

impl Listener for NoDelayListener {
    type Io = TcpStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (TcpStream, Peer) {
        loop {
            let (stream, remote) = Listener::accept(&mut self.0).await;
            if let Err(e) = stream.set_nodelay(true) {
                // The connection is already dead, or odd enough to refuse.
                tracing::debug!(error = %e, "setting TCP_NODELAY; dropping the connection");
                continue;
            }
            let local = match stream.local_addr() {
                Ok(local) => local,
                Err(e) => {
                    tracing::debug!(error = %e, "reading a connection's address; dropping it");
                    continue;
                }
            };
            let peer = Peer {
                remote,
                local,
                owner: Arc::default(),
            };
            return (stream, peer);
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        let local = self.0.local_addr()?;
        Ok(Peer {
            remote: local,
            local,
            owner: Arc::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One table line as the kernel prints it, on this machine's endianness.
    fn line(local: SocketAddr, remote: SocketAddr, state: u8, uid: u32) -> String {
        format!(
            "   1: {} {} {state:02X} 00000000:00000000 00:00000000 00000000 {uid:>5}        0 4242 1 0000000000000000 20 4 30 10 -1",
            endpoint(local),
            endpoint(remote)
        )
    }

    fn endpoint(addr: SocketAddr) -> String {
        let words = |bytes: &[u8]| -> String {
            bytes
                .chunks_exact(4)
                .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        };
        let ip = match addr.ip() {
            IpAddr::V4(ip) => words(&ip.octets()),
            IpAddr::V6(ip) => words(&ip.octets()),
        };
        format!("{ip}:{:04X}", addr.port())
    }

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn reads_the_kernels_own_text() {
        // Copied from /proc/net/tcp: a client on 127.0.0.1:41690 (uid 1000)
        // connected to a server on 127.0.0.1:8931, and the server's end.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:22E3 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 81234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A2DA 0100007F:22E3 01 00000000:00000000 00:00000000 00000000  1000        0 81301 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:22E3 0100007F:A2DA 01 00000000:00000000 00:00000000 00000000     0        0 81302 1 0000000000000000 20 4 29 10 -1
";
        let client = addr("127.0.0.1:41690");
        let server = addr("127.0.0.1:8931");
        assert_eq!(socket_owner(table, client, server), Some(1000));
        // The server's own end is the mirror image.
        assert_eq!(socket_owner(table, server, client), Some(0));
        assert_eq!(socket_owner(table, addr("127.0.0.1:41691"), server), None);
        // And an IPv6 table: ::1 port 8931 to ::1 port 50000, uid 65534.
        let table6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:C350 00000000000000000000000001000000:22E3 01 00000000:00000000 00:00000000 00000000 65534        0 9 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(
            socket_owner(table6, addr("[::1]:50000"), addr("[::1]:8931")),
            Some(65534)
        );
    }

    #[test]
    fn finds_the_clients_end_by_both_addresses() {
        let client = addr("127.0.0.1:50001");
        let server = addr("127.0.0.1:8931");
        let table = [
            HEADER.to_owned(),
            line(server, addr("0.0.0.0:0"), 0x0A, 0),
            // Same client port, another server: not ours to judge.
            line(client, addr("127.0.0.1:9999"), 0x01, 7),
            line(client, server, 0x01, 1000),
            line(server, client, 0x01, 0),
        ]
        .join("\n");
        assert_eq!(socket_owner(&table, client, server), Some(1000));
    }

    #[test]
    fn only_established_sockets_count() {
        let client = addr("127.0.0.1:50001");
        let server = addr("127.0.0.1:8931");
        // TIME_WAIT (06) lists uid 0 whoever owned the socket.
        let table = [HEADER.to_owned(), line(client, server, 0x06, 0)].join("\n");
        assert_eq!(socket_owner(&table, client, server), None);
    }

    #[test]
    fn mapped_v4_addresses_match_plain_ones() {
        let table = [
            HEADER.to_owned(),
            line(
                addr("[::ffff:127.0.0.1]:50002"),
                addr("[::ffff:127.0.0.1]:8931"),
                0x01,
                1000,
            ),
        ]
        .join("\n");
        assert_eq!(
            socket_owner(&table, addr("127.0.0.1:50002"), addr("127.0.0.1:8931")),
            Some(1000)
        );
    }

    #[test]
    fn garbage_lines_are_skipped_not_fatal() {
        let client = addr("127.0.0.1:50001");
        let server = addr("127.0.0.1:8931");
        let table = [
            HEADER.to_owned(),
            String::new(),
            "   0: zz:zz".to_owned(),
            "   1: 0100007F:GGGG 0100007F:22E3 01".to_owned(),
            "   2: 0100007F 0100007F:22E3 01 0:0 0:0 0 notanumber".to_owned(),
            "   3: 0100:C351 0100007F:22E3 01 0:0 0:0 0 1000".to_owned(),
            line(client, server, 0x01, 1000),
        ]
        .join("\n");
        assert_eq!(socket_owner(&table, client, server), Some(1000));
        assert_eq!(socket_owner("", client, server), None);
    }

    #[test]
    fn owners_compare_with_our_uid() {
        assert_eq!(Owner::of(Some(1000), 1000), Owner::SameUser);
        assert_eq!(Owner::of(Some(0), 1000), Owner::Other(0));
        assert_eq!(Owner::of(None, 1000), Owner::Unknown);
    }

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        let mut listener = NoDelayListener(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let server = listener.0.local_addr().unwrap();
        let client = TcpStream::connect(server).await.unwrap();
        let (accepted, peer) = Listener::accept(&mut listener).await;
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY is set");
        assert_eq!(peer.remote, client.local_addr().unwrap());
        assert_eq!(peer.local, server);
    }

    #[tokio::test]
    async fn the_owner_is_looked_up_once_per_connection() {
        let peer = Peer {
            remote: addr("127.0.0.1:50000"),
            local: addr("127.0.0.1:8931"),
            owner: Arc::default(),
        };
        let lookups = std::sync::atomic::AtomicUsize::new(0);
        let lookup = |_, _| async {
            lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Owner::Other(7)
        };
        assert_eq!(peer.owner(lookup).await, Owner::Other(7));
        // Every request on the connection carries a clone.
        assert_eq!(peer.clone().owner(lookup).await, Owner::Other(7));
        assert_eq!(lookups.into_inner(), 1);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_connection_of_our_own_is_ours() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let client = TcpStream::connect(server).await.unwrap();
        let (_accepted, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let ours = mcp_chat_proto::socket_path::current_uid();
        assert_eq!(lookup_owner(peer, server).await, Some(ours));
        // A port nobody uses is not found.
        let unused = SocketAddr::new(peer.ip(), 1);
        assert_eq!(lookup_owner(unused, server).await, None);
    }
}
