//! The broker binary over real sockets: matching, relay, errors, framing
//! abuse, single instance, shutdown.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use bytes::BufMut;
use futures::{SinkExt, Stream, StreamExt};
use mcp_chat_proto::{
    BrokerMsg, ClientCodec, ClientMsg, CodecError, DisconnectReason, ErrorCode, Event, Kind,
    MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, MatchInfo, Reply, Request, RoomId,
};
use mcp_chat_tests::proto_client::{connect_raw, hello, matched_pair};
use mcp_chat_tests::{BrokerProcess, ProtoClient, TestSocket, UNTHROTTLED, within};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Framed;

fn error_code(reply: Reply) -> ErrorCode {
    match reply {
        Reply::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn fifo_matching_of_five_sessions() {
    let socket = TestSocket::new();
    // The broker pings a waiter quiet for a fifth of a heartbeat before
    // matching it, and these clients answer only when read: with the
    // default (2 s) a loaded machine could pair them out of order. A long
    // heartbeat keeps every waiter fresh while the test enters all five.
    let _broker = BrokerProcess::start(&socket.path, &["--heartbeat-ms", "600000"]).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(ProtoClient::connect(&socket.path).await);
    }
    let mut replies = Vec::new();
    for c in &mut clients {
        replies.push(c.enter().await);
    }
    assert_eq!(replies[0], Reply::Waiting { position: 1 });
    assert_eq!(replies[2], Reply::Waiting { position: 1 });
    assert_eq!(replies[4], Reply::Waiting { position: 1 });
    let room = |r: &Reply| match r {
        Reply::Matched { room_id, .. } => *room_id,
        other => panic!("{other:?}"),
    };
    let (r01, r23) = (room(&replies[1]), room(&replies[3]));
    assert_ne!(r01, r23);
    // The first waiter meets the second entrant, the third meets the fourth.
    for (i, expected) in [(0, r01), (1, r01), (2, r23), (3, r23)] {
        assert_eq!(
            clients[i].next_event().await,
            Event::ChatroomFound {
                room_id: expected,
                partner: MatchInfo {
                    common_interests: Vec::new(),
                    partner_kind: Some(Kind::Agent),
                },
            }
        );
    }
    let status = clients[4].status().await;
    assert_eq!((status.sessions, status.waiting, status.rooms), (5, 1, 2));
    // Room ids are random UUID v4.
    assert_eq!(r01.0.get_version_num(), 4);
}

#[tokio::test]
async fn messages_flow_both_ways_in_order() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let (mut a, mut b, room_id) = matched_pair(&socket.path).await;
    for i in 0..20 {
        assert_eq!(a.say(room_id, &format!("a{i}")).await, Reply::Sent);
        assert_eq!(b.say(room_id, &format!("b{i}")).await, Reply::Sent);
    }
    for i in 0..20 {
        for (client, from) in [(&mut b, "a"), (&mut a, "b")] {
            match client.next_event().await {
                Event::MessageReceived {
                    room_id: r,
                    message,
                    sent_at,
                } => {
                    assert_eq!(r, room_id);
                    assert_eq!(message, format!("{from}{i}"));
                    assert!(sent_at > 1_700_000_000_000, "sent_at is epoch millis");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn leave_notifies_partner_and_both_can_reenter() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let (mut a, mut b, room_id) = matched_pair(&socket.path).await;
    assert_eq!(
        a.request(Request::LeaveChat {
            room_id,
            block: false
        })
        .await,
        Reply::Left
    );
    assert_eq!(
        b.next_event().await,
        Event::PartnerDisconnected {
            room_id,
            reason: DisconnectReason::Left,
            undelivered: 0,
            unconfirmed: 0,
        }
    );
    assert_eq!(
        error_code(b.say(room_id, "still there?").await),
        ErrorCode::PartnerGone
    );
    assert_eq!(a.enter().await, Reply::Waiting { position: 1 });
    // b is matched at once, or told `waiting` while the broker first pings
    // a (quiet for two seconds on a loaded machine; reading a's events
    // answers it): a's chatroom.found is what counts.
    let reply = b.enter().await;
    let Event::ChatroomFound {
        room_id: again,
        partner,
    } = a.next_event().await
    else {
        panic!("re-entering pairs them again")
    };
    match reply {
        Reply::Matched { room_id, .. } => assert_eq!(room_id, again),
        Reply::Waiting { .. } => {}
        other => panic!("re-entering answered {other:?}"),
    }
    assert_ne!(again, room_id);
    assert_eq!(
        partner,
        MatchInfo {
            common_interests: Vec::new(),
            partner_kind: Some(Kind::Agent),
        }
    );
    assert_eq!(a.status().await.rooms, 1);
}

#[tokio::test]
async fn disconnect_notifies_partner_and_cleans_queue() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let (a, mut b, room_id) = matched_pair(&socket.path).await;
    drop(a);
    assert_eq!(
        b.next_event().await,
        Event::PartnerDisconnected {
            room_id,
            reason: DisconnectReason::Disconnected,
            undelivered: 0,
            unconfirmed: 0,
        }
    );
    let mut waiter = ProtoClient::connect(&socket.path).await;
    assert_eq!(waiter.enter().await, Reply::Waiting { position: 1 });
    drop(waiter);
    // The hub handles commands in order, so once b's status reflects one
    // session, the waiter's disconnect has been processed.
    let mut probe = ProtoClient::connect(&socket.path).await;
    let status = loop {
        let status = probe.status().await;
        if status.sessions == 2 {
            break status;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!((status.waiting, status.rooms), (0, 0));
    // b's dead room is closed when it moves on; nothing lingers.
    assert_eq!(b.enter().await, Reply::Waiting { position: 1 });
}

#[tokio::test]
async fn every_error_code() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let (mut a, _b, room_id) = matched_pair(&socket.path).await;
    let nowhere = RoomId::new_random();
    assert_eq!(
        error_code(a.say(nowhere, "hi").await),
        ErrorCode::UnknownRoom
    );
    assert_eq!(
        error_code(
            a.request(Request::LeaveChat {
                room_id: nowhere,
                block: false
            })
            .await
        ),
        ErrorCode::UnknownRoom
    );
    assert_eq!(
        error_code(a.say(room_id, "").await),
        ErrorCode::EmptyMessage
    );
    let long = "é".repeat(MAX_MESSAGE_BYTES / 2 + 1);
    let Reply::Error { code, message, .. } = a.say(room_id, &long).await else {
        panic!()
    };
    assert_eq!(code, ErrorCode::MessageTooLong);
    assert!(
        message.contains(&MAX_MESSAGE_BYTES.to_string()),
        "{message}"
    );
    assert_eq!(error_code(a.enter().await), ErrorCode::AlreadyInRoom);
    assert_eq!(
        error_code(a.request(Request::Unknown).await),
        ErrorCode::UnknownRequest
    );
    // After all that the connection still works.
    assert_eq!(a.say(room_id, "fine").await, Reply::Sent);
    assert_eq!(a.request(Request::Ping).await, Reply::Pong);
}

#[tokio::test]
async fn unknown_request_type_from_a_newer_client_keeps_the_connection() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let client = ProtoClient::connect(&socket.path).await;
    let (mut reader, mut writer) = client.into_parts();
    let raw = br#"{"type":"request","id":5,"request":{"op":"teleport","to":"mars"}}"#;
    send_raw_frame(writer.get_mut(), raw).await;
    let reply = within("reply", reader.next()).await;
    assert!(
        matches!(
            reply,
            Some(Ok(BrokerMsg::Response {
                id: 5,
                reply: Reply::Error {
                    code: ErrorCode::UnknownRequest,
                    ..
                }
            }))
        ),
        "{reply:?}"
    );
}

async fn send_raw_frame(stream: &mut (impl AsyncWrite + Unpin), payload: &[u8]) {
    let mut buf = Vec::new();
    buf.put_u32(u32::try_from(payload.len()).unwrap());
    buf.extend_from_slice(payload);
    stream.write_all(&buf).await.unwrap();
}

async fn expect_refused_then_closed(
    transport: &mut (impl Stream<Item = Result<BrokerMsg, CodecError>> + Unpin),
    code: ErrorCode,
) {
    match within("refusal", transport.next()).await {
        Some(Ok(BrokerMsg::Refused { code: got, .. })) => assert_eq!(got, code),
        other => panic!("expected refusal {code}, got {other:?}"),
    }
    assert!(
        within("close", transport.next()).await.is_none(),
        "closed after refusal"
    );
}

#[tokio::test]
async fn oversized_and_garbage_frames_end_only_their_connection() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let (mut a, mut b, room_id) = matched_pair(&socket.path).await;

    // A length prefix of 1 MiB + 1: refused from the header alone.
    let (mut big, mut big_writer) = ProtoClient::connect(&socket.path).await.into_parts();
    let header = u32::try_from(MAX_FRAME_BYTES + 1).unwrap().to_be_bytes();
    // The header alone is enough; the broker must not wait for the body.
    big_writer.get_mut().write_all(&header).await.unwrap();
    expect_refused_then_closed(&mut big, ErrorCode::BadFrame).await;

    let (mut garbage, mut garbage_writer) = ProtoClient::connect(&socket.path).await.into_parts();
    send_raw_frame(garbage_writer.get_mut(), b"\x00\xffnot json at all").await;
    expect_refused_then_closed(&mut garbage, ErrorCode::BadFrame).await;

    // Nested 100k deep: serde_json's recursion limit refuses it.
    let (mut nested, mut nested_writer) = ProtoClient::connect(&socket.path).await.into_parts();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    send_raw_frame(nested_writer.get_mut(), deep.as_bytes()).await;
    expect_refused_then_closed(&mut nested, ErrorCode::BadFrame).await;

    // The room next door never noticed.
    assert_eq!(a.say(room_id, "still here").await, Reply::Sent);
    assert!(matches!(
        b.next_event().await,
        Event::MessageReceived { .. }
    ));
}

#[tokio::test]
async fn handshake_is_checked() {
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;

    let stream = connect_raw(&socket.path).await.unwrap();
    let mut wrong_version = Framed::new(stream, ClientCodec::new());
    wrong_version.send(hello(99)).await.unwrap();
    match within("refusal", wrong_version.next()).await {
        Some(Ok(BrokerMsg::Refused { code, message })) => {
            assert_eq!(code, ErrorCode::ProtocolMismatch);
            assert!(message.contains("99") && message.contains('1'), "{message}");
        }
        other => panic!("{other:?}"),
    }

    let stream = connect_raw(&socket.path).await.unwrap();
    let mut no_hello = Framed::new(stream, ClientCodec::new());
    no_hello
        .send(ClientMsg::Request {
            id: 1,
            request: Request::EnterQueue(Default::default()),
        })
        .await
        .unwrap();
    expect_refused_then_closed(&mut no_hello, ErrorCode::BadHandshake).await;
}

#[tokio::test]
async fn second_broker_on_the_same_socket_refuses() {
    let socket = TestSocket::new();
    let first = BrokerProcess::start(&socket.path, &[]).await;
    let output = tokio::process::Command::new(mcp_chat_tests::bin_path("mcp-chat-broker"))
        .args(["--foreground", "--socket"])
        .arg(&socket.path)
        .output();
    let output = within("second broker exit", output).await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let pid = first.child.id().unwrap();
    assert!(
        stderr.contains(&format!(
            "a broker is already running on {} (pid {pid})",
            socket.path.display()
        )),
        "{stderr}"
    );
    // The first broker is unharmed.
    ProtoClient::connect(&socket.path).await;
}

#[cfg(unix)]
#[tokio::test]
async fn stale_socket_file_is_replaced() {
    let socket = TestSocket::new();
    mcp_chat_proto::socket_path::prepare_socket_dir(&socket.path).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket.path).unwrap());
    assert!(
        socket.path.exists(),
        "a dead socket file, as a crash leaves"
    );
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let (mut a, _b, room_id) = matched_pair(&socket.path).await;
    assert_eq!(a.say(room_id, "hello").await, Reply::Sent);
}

#[cfg(unix)]
#[tokio::test]
async fn socket_and_directory_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let socket = TestSocket::new();
    let _broker = BrokerProcess::start(&socket.path, &[]).await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket.path), 0o600);
    assert_eq!(mode(socket.path.parent().unwrap()), 0o700);
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_tells_everyone_and_removes_the_socket() {
    let socket = TestSocket::new();
    let mut broker = BrokerProcess::start(&socket.path, &[]).await;
    let (mut a, mut b, room_id) = matched_pair(&socket.path).await;
    let mut waiter = ProtoClient::connect(&socket.path).await;
    waiter.enter().await;
    broker.terminate();
    for client in [&mut a, &mut b] {
        assert_eq!(
            client.next_event().await,
            Event::PartnerDisconnected {
                room_id,
                reason: DisconnectReason::Shutdown,
                undelivered: 0,
                unconfirmed: 0,
            }
        );
        assert_eq!(client.next_event().await, Event::Shutdown);
    }
    assert_eq!(waiter.next_event().await, Event::Shutdown);
    assert!(
        a.next_frame().await.is_none(),
        "connection closed after shutdown"
    );
    assert!(broker.wait_exit().await.success());
    assert!(!socket.path.exists(), "socket removed on exit");
}

#[tokio::test]
async fn the_ready_line_names_the_socket_and_the_pid() {
    let socket = TestSocket::new();
    let broker = BrokerProcess::start(&socket.path, &[]).await;
    let ready = broker.ready().expect("started through its ready line");
    assert_eq!(ready.socket, socket.path);
    assert_eq!(Some(ready.pid), broker.child.id());
    let status = ProtoClient::connect(&socket.path).await.status().await;
    assert_eq!(status.pid, ready.pid);
    // Run in the foreground, it logs to stderr: no file to report.
    assert_eq!(status.log_path, None);
    assert_eq!(status.detached, 0);
}

#[tokio::test]
async fn idle_broker_exits_by_itself() {
    let socket = TestSocket::new();
    // Long enough that a loaded machine still connects before it runs out
    // (the idle clock starts with the broker).
    let mut broker = BrokerProcess::start(&socket.path, &["--idle-exit", "3"]).await;
    let client = ProtoClient::connect(&socket.path).await;
    drop(client);
    assert!(broker.wait_exit().await.success());
    assert!(!socket.path.exists());
}

#[tokio::test]
async fn two_hundred_pairs_fifty_messages_each_nothing_lost() {
    const PAIRS: usize = 200;
    const MESSAGES: usize = 50;
    let socket = TestSocket::new();
    // Unthrottled: this test is about load, not the per-session rate limit.
    let _broker = BrokerProcess::start(&socket.path, UNTHROTTLED).await;
    let mut pairs = Vec::new();
    for _ in 0..PAIRS {
        pairs.push(matched_pair(&socket.path).await);
    }
    let tasks: Vec<_> = pairs
        .into_iter()
        .map(|(a, b, room_id)| {
            tokio::spawn(async move {
                let (a, b) = tokio::join!(converse(a, room_id, "a"), converse(b, room_id, "b"));
                a + b
            })
        })
        .collect();
    let mut received = 0;
    for task in tasks {
        received += within("pair to finish", task).await.unwrap();
    }
    assert_eq!(received, PAIRS * MESSAGES * 2);

    /// Pipelines all its messages, then checks the partner's arrive exactly
    /// once and in order. Returns how many it received.
    async fn converse(mut me: ProtoClient, room_id: RoomId, name: &str) -> usize {
        let other = if name == "a" { "b" } else { "a" };
        for i in 0..MESSAGES {
            me.send_request(Request::SendMessage {
                room_id,
                message: format!("{name}:{i}"),
            })
            .await;
        }
        let (mut sent, mut got) = (0, 0);
        while sent < MESSAGES || got < MESSAGES {
            match me.next_frame().await {
                Some(Ok(BrokerMsg::Response { reply, .. })) => {
                    assert_eq!(reply, Reply::Sent);
                    sent += 1;
                }
                Some(Ok(BrokerMsg::Event {
                    event: Event::MessageReceived { message, .. },
                    ..
                })) => {
                    assert_eq!(
                        message,
                        format!("{other}:{got}"),
                        "in order, none lost or repeated"
                    );
                    got += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        got
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_its_partner_back_and_ends_with_an_exact_count() {
    let socket = TestSocket::new();
    // Unthrottled, so only b's backlog holds a back; quick heartbeats, so the
    // broker soon finds b (which answers nothing) unresponsive, and a short
    // grace, so it gives up on b soon after.
    let mut args = UNTHROTTLED.to_vec();
    args.extend(["--heartbeat-ms", "500", "--resume-grace-ms", "300"]);
    let _broker = BrokerProcess::start(&socket.path, &args).await;
    let (mut a, mut b, room_id) = matched_pair(&socket.path).await;
    // b never reads (or acknowledges) until the end. a sends large messages
    // until the broker has given up on b; when b's backlog is full, a is
    // asked to wait (rate_limited) and sends again.
    let filler = "x".repeat(MAX_MESSAGE_BYTES);
    let mut sent = 0u64;
    let mut gone = None;
    while gone.is_none() {
        let id = a
            .send_request(Request::SendMessage {
                room_id,
                message: filler.clone(),
            })
            .await;
        loop {
            match a.next_frame().await {
                Some(Ok(BrokerMsg::Response { id: got, reply })) if got == id => {
                    match reply {
                        Reply::Sent => sent += 1,
                        // b's backlog is full: a waits, nothing is lost.
                        Reply::Error {
                            code: ErrorCode::RateLimited,
                            ..
                        } => {}
                        other => assert_eq!(error_code(other), ErrorCode::PartnerGone),
                    }
                    break;
                }
                Some(Ok(BrokerMsg::Event { event, .. })) => gone = Some(event),
                other => panic!("{other:?}"),
            }
        }
    }
    let Some(Event::PartnerDisconnected {
        room_id: gone_room,
        reason: DisconnectReason::Disconnected,
        undelivered,
        unconfirmed,
    }) = gone
    else {
        panic!("{gone:?}");
    };
    assert_eq!(gone_room, room_id);
    // Now b reads what reached its socket before the broker closed it.
    let mut received = 0u64;
    loop {
        match b.next_frame().await {
            Some(Ok(BrokerMsg::Event {
                event: Event::MessageReceived { .. },
                ..
            })) => received += 1,
            Some(Ok(_)) => {}
            // The end of the stream, or a frame cut off part way.
            None | Some(Err(_)) => break,
        }
    }
    assert!(received > 0 && undelivered > 0, "{received} {undelivered}");
    assert_eq!(
        sent,
        received + undelivered,
        "every message answered sent was delivered or reported"
    );
    assert_eq!(
        unconfirmed, received,
        "written but never acknowledged: exactly what b read afterwards"
    );
    // a itself is fine, and nothing else was queued for it: the ping's
    // reply is the very next frame.
    let ping = a.send_request(Request::Ping).await;
    assert!(matches!(
        a.next_frame().await,
        Some(Ok(BrokerMsg::Response { id, reply: Reply::Pong })) if id == ping
    ));
}
