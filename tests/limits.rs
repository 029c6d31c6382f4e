//! The broker within its file-descriptor budget: however many sessions
//! arrive at once, each gets `welcome` or `broker_full` (none is left
//! hanging unanswered), the welcomed ones keep working, and connections that
//! never say `Hello` cannot use up the broker's descriptors.

#![cfg(unix)]
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use mcp_chat_proto::{
    BrokerMsg, ClientCodec, ClientMsg, ErrorCode, PROTOCOL_VERSION, Reply, Request,
};
use mcp_chat_tests::proto_client::{connect_raw, hello};
use mcp_chat_tests::{BrokerProcess, TestSocket, within};
use tokio::net::UnixStream as Stream;
use tokio_util::codec::Framed;

/// A connection not answered within this long counts as left in silence:
/// the tests' common deadline, not a measure of speed. Silence cannot pass
/// for an answer however long the wait: the welcomed sessions stay open
/// while the crowd waits, so a connection stuck unaccepted is never
/// accepted, and one accepted but never answered is closed by the broker's
/// handshake timeout, which reads as neither `welcome` nor `broker_full`.
const ANSWER_WITHIN: Duration = mcp_chat_tests::EVENT_TIMEOUT;

type Transport = Framed<Stream, ClientCodec>;

enum Answer {
    Welcome(Transport),
    Full,
}

/// Connects, says `Hello`, and returns the broker's answer.
async fn ask(socket: &Path) -> Answer {
    let answer = tokio::time::timeout(ANSWER_WITHIN, async {
        let stream = connect_raw(socket).await.expect("connect to the broker");
        let mut transport = Framed::new(stream, ClientCodec::new());
        // A broker that refused at accept may have closed already; its
        // refusal is still there to read.
        let _ = transport.send(hello(PROTOCOL_VERSION)).await;
        (transport.next().await, transport)
    })
    .await;
    match answer {
        Err(_) => {
            panic!("no answer within {ANSWER_WITHIN:?}: the broker left a session in silence")
        }
        Ok((Some(Ok(BrokerMsg::Welcome { .. })), transport)) => Answer::Welcome(transport),
        Ok((
            Some(Ok(BrokerMsg::Refused {
                code: ErrorCode::BrokerFull,
                ..
            })),
            _,
        )) => Answer::Full,
        Ok((other, _)) => panic!("expected welcome or broker_full, got {other:?}"),
    }
}

/// `n` sessions at once; returns the welcomed ones and how many were refused.
async fn crowd(socket: &Path, n: usize) -> (Vec<Transport>, usize) {
    let answers = futures::future::join_all((0..n).map(|_| ask(socket))).await;
    let mut welcomed = Vec::new();
    for answer in answers {
        if let Answer::Welcome(transport) = answer {
            welcomed.push(transport);
        }
    }
    let refused = n - welcomed.len();
    (welcomed, refused)
}

/// A status round trip: the session still works. Returns the session count.
async fn status(transport: &mut Transport) -> usize {
    transport
        .send(ClientMsg::Request {
            id: 1,
            request: Request::Status,
        })
        .await
        .unwrap();
    loop {
        match within("a status reply", transport.next()).await {
            Some(Ok(BrokerMsg::Response {
                id: 1,
                reply: Reply::Status(info),
            })) => return info.sessions,
            Some(Ok(BrokerMsg::Ping { nonce })) => {
                transport.send(ClientMsg::Pong { nonce }).await.unwrap();
            }
            other => panic!("expected a status reply, got {other:?}"),
        }
    }
}

/// Every welcomed session answers a status request, and the broker counts
/// exactly them.
async fn all_work(welcomed: &mut [Transport]) {
    let counts = futures::future::join_all(welcomed.iter_mut().map(status)).await;
    let last = status(welcomed.last_mut().expect("someone was welcomed")).await;
    assert_eq!(
        last,
        welcomed.len(),
        "the broker counts the welcomed sessions"
    );
    assert!(counts.iter().all(|&c| c <= welcomed.len()), "{counts:?}");
}

/// Raises this test process's own soft descriptor limit, which must allow
/// `needed`: the crowd's connections are ours too. Returns the hard limit.
fn raise_own_fd_limit(needed: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= needed,
        "this test needs {needed} file descriptors, but the hard limit is {hard}; raise it with `ulimit -Hn`"
    );
    if limit.current.is_some_and(|soft| soft < needed) {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(needed),
                maximum: limit.maximum,
            },
        )
        .unwrap();
    }
    hard
}

/// The case: 1,500 sessions at once against a broker started under
/// the usual desktop soft limit of 1,024. The broker raises its soft limit
/// to the hard one, so where that allows, all 1,500 are welcomed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_hundred_sessions_under_a_1024_soft_limit_all_get_an_answer() {
    const SESSIONS: usize = 1_500;
    let hard = raise_own_fd_limit(SESSIONS as u64 + 200);
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start_under_ulimit(&socket.path, "-Sn 1024", &[]).await;
    let (mut welcomed, refused) = crowd(&socket.path, SESSIONS).await;
    eprintln!("{} welcomed, {refused} told broker_full", welcomed.len());
    // The broker inherits our hard limit; with room for 1,500 connections
    // plus its reserve, nobody is turned away.
    if hard >= 2_000 {
        assert_eq!(refused, 0, "the broker raised its soft limit");
    }
    all_work(&mut welcomed).await;
}

/// With the hard limit low too, the broker cannot serve everyone: the
/// surplus is told `broker_full` at once, the rest are welcomed and work,
/// and a place freed is given to the next comer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_hard_limit_the_surplus_is_told_broker_full() {
    const SESSIONS: usize = 400;
    raise_own_fd_limit(SESSIONS as u64 + 200);
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start_under_ulimit(&socket.path, "-Sn 256;-Hn 256", &[]).await;
    let (mut welcomed, refused) = crowd(&socket.path, SESSIONS).await;
    eprintln!("{} welcomed, {refused} told broker_full", welcomed.len());
    assert!(
        refused > 0,
        "256 descriptors cannot serve {SESSIONS} sessions"
    );
    assert!(
        welcomed.len() >= 100,
        "most of the descriptors serve sessions: {} welcomed",
        welcomed.len()
    );
    all_work(&mut welcomed).await;

    // A session leaves; its place goes to the next comer once the broker
    // has seen it go (until then, the newcomer is told broker_full).
    drop(welcomed.pop());
    let mut newcomer = within("a place freed for a newcomer", async {
        loop {
            if let Answer::Welcome(transport) = ask(&socket.path).await {
                return transport;
            }
        }
    })
    .await;
    assert_eq!(status(&mut newcomer).await, welcomed.len() + 1);
}

/// Connections that never say `Hello` hold a slot each, up to a bound, and
/// the rest are refused at once: they cannot make the broker run out of
/// descriptors and leave later clients unanswered. When they close, their
/// slots are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_cannot_exhaust_the_broker() {
    const HALF_OPEN: usize = 600;
    raise_own_fd_limit(HALF_OPEN as u64 + 200);
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start_under_ulimit(&socket.path, "-Sn 256;-Hn 256", &[]).await;
    let mut silent = Vec::new();
    for _ in 0..HALF_OPEN {
        silent.push(connect_raw(&socket.path).await.expect("connect"));
    }
    // More silent connections than the broker has descriptors, yet a real
    // client is answered.
    assert!(matches!(ask(&socket.path).await, Answer::Full));
    drop(silent);
    let mut client = within("a slot freed by the silent connections", async {
        loop {
            if let Answer::Welcome(transport) = ask(&socket.path).await {
                return transport;
            }
        }
    })
    .await;
    assert_eq!(status(&mut client).await, 1);
}
