use mcp_chat_proto::{BrokerMsg, DisconnectReason, ErrorCode, Event, Reply, Request};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Admitted, SessionHandle, SessionId, State};
use crate::config::Liveness;

pub(super) struct Client {
    pub(super) id: SessionId,
    pub(super) connection: u64,
    token: String,
    pub(super) rx: mpsc::Receiver<BrokerMsg>,
    pub(super) kick: CancellationToken,
}

pub(super) fn new_state(max_sessions: usize) -> State {
    let config = crate::config::Config::default();
    State::new(max_sessions, Liveness::default(), config.limits())
}

pub(super) fn handle(
    capacity: usize,
) -> (SessionHandle, mpsc::Receiver<BrokerMsg>, CancellationToken) {
    let (outbox, rx) = mpsc::channel(capacity);
    let kick = CancellationToken::new();
    (
        SessionHandle {
            outbox,
            kick: kick.clone(),
        },
        rx,
        kick,
    )
}

pub(super) fn join(state: &mut State, capacity: usize) -> Client {
    let (handle, rx, kick) = handle(capacity);
    let Admitted {
        session,
        connection,
        resume_token,
        ..
    } = state.register(handle, None).unwrap();
    Client {
        id: session,
        connection,
        token: resume_token,
        rx,
        kick,
    }
}

pub(super) fn ask(
    state: &mut State,
    client: &mut Client,
    request: Request,
) -> (Reply, Vec<(u64, Event)>) {
    state.handle_request(client.id, 9, request);
    let mut reply = None;
    let mut events = Vec::new();
    while let Ok(msg) = client.rx.try_recv() {
        match msg {
            BrokerMsg::Response { id: 9, reply: r } => reply = Some(r),
            BrokerMsg::Event { seq, event } => events.push((seq, event)),
            other => panic!("unexpected {other:?}"),
        }
    }
    (reply.expect("a reply"), events)
}

pub(super) fn events(client: &mut Client) -> Vec<Event> {
    std::iter::from_fn(|| client.rx.try_recv().ok())
        .map(|m| match m {
            BrokerMsg::Event { event, .. } => event,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn pair(state: &mut State) -> (Client, Client, mcp_chat_proto::RoomId) {
    let mut a = join(state, 64);
    let mut b = join(state, 64);
    ask(state, &mut a, Request::EnterQueue(Default::default()));
    let (reply, _) = ask(state, &mut b, Request::EnterQueue(Default::default()));
    let Reply::Matched { room_id, .. } = reply else {
        panic!("{reply:?}")
    };
    events(&mut a);
    (a, b, room_id)
}

#[test]
fn fifo_pairs_the_two_longest_waiting() {
    let mut state = new_state(100);
    let mut clients: Vec<Client> = (0..5).map(|_| join(&mut state, 64)).collect();
    let mut replies = Vec::new();
    for c in clients.iter_mut() {
        replies.push(ask(&mut state, c, Request::EnterQueue(Default::default())).0);
    }
    assert_eq!(replies[0], Reply::Waiting { position: 1 });
    assert!(matches!(replies[1], Reply::Matched { .. }));
    assert_eq!(replies[2], Reply::Waiting { position: 1 });
    assert!(matches!(replies[3], Reply::Matched { .. }));
    assert_eq!(replies[4], Reply::Waiting { position: 1 });
    let found = |c: &mut Client| match events(c).as_slice() {
        [Event::ChatroomFound { room_id, .. }] => *room_id,
        other => panic!("{other:?}"),
    };
    let r0 = found(&mut clients[0]);
    assert!(matches!(replies[1], Reply::Matched { room_id, .. } if room_id == r0));
    let r2 = found(&mut clients[2]);
    assert!(matches!(replies[3], Reply::Matched { room_id, .. } if room_id == r2));
    assert_ne!(r0, r2);
    assert_eq!(r0.0.get_version_num(), 4);
    let status = state.status();
    assert_eq!((status.sessions, status.waiting, status.rooms), (5, 1, 2));
}

#[test]
fn entering_twice_is_idempotent_and_in_room_is_refused() {
    let mut state = new_state(100);
    let mut a = join(&mut state, 64);
    assert_eq!(
        ask(&mut state, &mut a, Request::EnterQueue(Default::default())).0,
        Reply::Waiting { position: 1 }
    );
    assert_eq!(
        ask(&mut state, &mut a, Request::EnterQueue(Default::default())).0,
        Reply::Waiting { position: 1 }
    );
    let mut state = new_state(100);
    let (mut x, _, room_id) = pair(&mut state);
    let (reply, _) = ask(&mut state, &mut x, Request::EnterQueue(Default::default()));
    let Reply::Error { code, message, .. } = reply else {
        panic!()
    };
    assert_eq!(code, ErrorCode::AlreadyInRoom);
    assert!(message.contains(&room_id.to_string()));
}

#[test]
fn messages_flow_with_contiguous_seq() {
    let mut state = new_state(100);
    let (mut a, mut b, room_id) = pair(&mut state);
    for i in 0..3 {
        let (reply, _) = ask(
            &mut state,
            &mut a,
            Request::SendMessage {
                room_id,
                message: format!("m{i}"),
            },
        );
        assert_eq!(reply, Reply::Sent);
    }
    let seqs: Vec<u64> = std::iter::from_fn(|| b.rx.try_recv().ok())
        .map(|m| match m {
            BrokerMsg::Event { seq, .. } => seq,
            other => panic!("{other:?}"),
        })
        .collect();
    // seq 1 was chatroom.found; the leftover replies were drained in pair().
    assert_eq!(seqs, vec![2, 3, 4]);
}

#[test]
fn error_codes() {
    let mut state = new_state(100);
    let (mut a, mut b, room_id) = pair(&mut state);
    let stranger_room = mcp_chat_proto::RoomId::new_random();
    let code = |r: Reply| match r {
        Reply::Error { code, .. } => code,
        other => panic!("{other:?}"),
    };
    let send = |room_id, message: &str| Request::SendMessage {
        room_id,
        message: message.into(),
    };
    assert_eq!(
        code(ask(&mut state, &mut a, send(stranger_room, "hi")).0),
        ErrorCode::UnknownRoom
    );
    assert_eq!(
        code(ask(&mut state, &mut a, send(room_id, " ")).0),
        ErrorCode::EmptyMessage
    );
    let long = "x".repeat(mcp_chat_proto::MAX_MESSAGE_BYTES + 1);
    assert_eq!(
        code(ask(&mut state, &mut a, send(room_id, &long)).0),
        ErrorCode::MessageTooLong
    );
    assert_eq!(
        code(
            ask(
                &mut state,
                &mut a,
                Request::LeaveChat {
                    room_id: stranger_room,
                    block: false,
                }
            )
            .0
        ),
        ErrorCode::UnknownRoom
    );
    assert_eq!(
        code(ask(&mut state, &mut a, Request::Unknown).0),
        ErrorCode::UnknownRequest
    );
    assert_eq!(
        ask(
            &mut state,
            &mut b,
            Request::LeaveChat {
                room_id,
                block: false
            }
        )
        .0,
        Reply::Left
    );
    assert_eq!(
        code(ask(&mut state, &mut a, send(room_id, "hi")).0),
        ErrorCode::PartnerGone
    );
    // The leaver is out of the room entirely.
    assert_eq!(
        code(ask(&mut state, &mut b, send(room_id, "hi")).0),
        ErrorCode::UnknownRoom
    );
}

#[test]
fn leave_notifies_partner_and_both_can_requeue() {
    let mut state = new_state(100);
    let (mut a, mut b, room_id) = pair(&mut state);
    assert_eq!(
        ask(
            &mut state,
            &mut a,
            Request::LeaveChat {
                room_id,
                block: false
            }
        )
        .0,
        Reply::Left
    );
    assert_eq!(
        events(&mut b),
        vec![Event::PartnerDisconnected {
            room_id,
            reason: DisconnectReason::Left,
            undelivered: 0,
            unconfirmed: 0,
        }]
    );
    assert_eq!(
        ask(&mut state, &mut a, Request::EnterQueue(Default::default())).0,
        Reply::Waiting { position: 1 }
    );
    // b's half-empty room is closed for it when it re-enters.
    assert!(matches!(
        ask(&mut state, &mut b, Request::EnterQueue(Default::default())).0,
        Reply::Matched { .. }
    ));
    assert_eq!(state.status().rooms, 1);
    assert_eq!(state.rooms.len(), 1, "the old room is gone");
}

#[test]
fn disconnect_cleans_queue_and_room() {
    let mut state = new_state(100);
    let mut w = join(&mut state, 64);
    ask(&mut state, &mut w, Request::EnterQueue(Default::default()));
    state.disconnect(w.id, w.connection);
    assert_eq!(state.status().waiting, 0);
    let (a, mut b, room_id) = pair(&mut state);
    state.disconnect(a.id, a.connection);
    assert_eq!(
        events(&mut b),
        vec![Event::PartnerDisconnected {
            room_id,
            reason: DisconnectReason::Disconnected,
            undelivered: 0,
            unconfirmed: 0,
        }]
    );
    state.disconnect(b.id, b.connection);
    assert!(state.sessions.is_empty() && state.rooms.is_empty() && state.queue.is_empty());
}

#[tokio::test(start_paused = true)]
async fn slow_consumer_is_detached_and_may_resume() {
    let mut state = new_state(100);
    let mut a = join(&mut state, 64);
    let b = join(&mut state, 2);
    ask(&mut state, &mut a, Request::EnterQueue(Default::default()));
    state.handle_request(b.id, 1, Request::EnterQueue(Default::default()));
    // b's outbox now holds its reply and chatroom.found: full. b never reads.
    let room_id = match events(&mut a).as_slice() {
        [Event::ChatroomFound { room_id, .. }] => *room_id,
        other => panic!("{other:?}"),
    };
    let (reply, events_seen) = ask(&mut state, &mut a, send(room_id, "hello?"));
    assert_eq!(reply, Reply::Sent);
    assert!(b.kick.is_cancelled(), "its connection is dropped");
    assert!(events_seen.is_empty(), "but its session waits for a resume");
    // The dropped connection's notice comes in, then the client resumes
    // having read only the reply: it gets chatroom.found and the message.
    state.disconnect(b.id, b.connection);
    let (h, mut rx, _kick) = handle(16);
    let claim = mcp_chat_proto::Resume {
        token: b.token.clone(),
        last_seq: 0,
    };
    assert!(state.register(h, Some(claim)).unwrap().resumed);
    assert!(matches!(rx.try_recv(), Ok(BrokerMsg::Event { seq: 1, .. })));
    assert!(matches!(
        rx.try_recv(),
        Ok(BrokerMsg::Event {
            seq: 2,
            event: Event::MessageReceived { .. }
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn the_partner_is_told_what_was_written_and_what_never_left() {
    let mut state = new_state(100);
    let (a, mut b, room_id) = pair(&mut state);
    for i in 0..5 {
        ask(&mut state, &mut b, send(room_id, &format!("{i}")));
    }
    // a's events: 1 chatroom.found, 2..=6 the messages. Its connection wrote
    // through seq 4 and the client acknowledged through seq 2.
    state.sessions[&a.id].written.advance_to(4);
    state.ack(a.id, a.connection, 2);
    state.disconnect(a.id, a.connection);
    assert_eq!(
        events(&mut b),
        vec![Event::PartnerDisconnected {
            room_id,
            reason: DisconnectReason::Disconnected,
            undelivered: 2,
            unconfirmed: 2,
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn a_receiver_that_takes_nothing_in_holds_its_sender_back_then_ends_with_an_exact_count() {
    let mut state = new_state(100);
    let (a, mut b, room_id) = pair(&mut state);
    state.unresponsive(a.id, a.connection);
    // a's buffer holds chatroom.found, then messages until it is full of
    // events never written to a: then b is asked to wait, and nothing is
    // lost or claimed sent.
    let mut sent = 0u64;
    let refusal = loop {
        if sent % 40 == 39 {
            tokio::time::advance(std::time::Duration::from_secs(2)).await;
        }
        match ask(&mut state, &mut b, send(room_id, &format!("{sent}"))).0 {
            Reply::Sent => sent += 1,
            other => break other,
        }
        assert!(sent < 2000, "never held back");
    };
    assert!(
        matches!(
            refusal,
            Reply::Error {
                code: ErrorCode::RateLimited,
                retry_after_ms: Some(100),
                ..
            }
        ),
        "{refusal:?}"
    );
    assert_eq!(sent, super::REPLAY_EVENTS as u64 - 1);
    // The grace runs out: b is told exactly what never reached a.
    tokio::time::advance(Liveness::default().resume_grace).await;
    state.expire(tokio::time::Instant::now());
    assert_eq!(
        events(&mut b),
        vec![Event::PartnerDisconnected {
            room_id,
            reason: DisconnectReason::Disconnected,
            undelivered: sent,
            unconfirmed: 0,
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn bytes_of_text_are_rate_limited_too() {
    let mut state = new_state(100);
    let (_a, mut b, room_id) = pair(&mut state);
    let big = "x".repeat(mcp_chat_proto::MAX_MESSAGE_BYTES);
    for _ in 0..16 {
        assert_eq!(ask(&mut state, &mut b, send(room_id, &big)).0, Reply::Sent);
    }
    match ask(&mut state, &mut b, send(room_id, &big)).0 {
        Reply::Error {
            code: ErrorCode::RateLimited,
            retry_after_ms: Some(250),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    // The refusal spent nothing: after the hinted wait it goes through.
    tokio::time::advance(std::time::Duration::from_millis(250)).await;
    assert_eq!(ask(&mut state, &mut b, send(room_id, &big)).0, Reply::Sent);
}

#[test]
fn full_broker_refuses() {
    let mut state = new_state(1);
    let _a = join(&mut state, 4);
    let (h, _rx, _kick) = handle(4);
    let err = state.register(h, None).unwrap_err();
    assert_eq!(err.code, ErrorCode::BrokerFull);
}

#[test]
fn shutdown_tells_everyone() {
    let mut state = new_state(100);
    let (mut a, _b, room_id) = pair(&mut state);
    let mut w = join(&mut state, 8);
    ask(&mut state, &mut w, Request::EnterQueue(Default::default()));
    state.shutdown();
    assert_eq!(
        events(&mut a),
        vec![
            Event::PartnerDisconnected {
                room_id,
                reason: DisconnectReason::Shutdown,
                undelivered: 0,
                unconfirmed: 0,
            },
            Event::Shutdown
        ]
    );
    assert_eq!(events(&mut w), vec![Event::Shutdown]);
    assert_eq!(state.session_count(), 0);
}

fn send(room_id: mcp_chat_proto::RoomId, message: &str) -> Request {
    Request::SendMessage {
        room_id,
        message: message.into(),
    }
}

#[test]
fn sending_is_rate_limited_with_a_retry_hint() {
    let mut state = new_state(100);
    let (mut a, _b, room_id) = pair(&mut state);
    for i in 0..40 {
        assert_eq!(
            ask(&mut state, &mut a, send(room_id, &format!("{i}"))).0,
            Reply::Sent
        );
    }
    match ask(&mut state, &mut a, send(room_id, "one too many")).0 {
        Reply::Error {
            code: ErrorCode::RateLimited,
            retry_after_ms: Some(ms),
            ..
        } => assert!((1..=50).contains(&ms), "{ms}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn unresponsive_client_resumes_with_everything_it_missed() {
    let mut state = new_state(100);
    let (mut a, mut b, room_id) = pair(&mut state);
    state.unresponsive(a.id, a.connection);
    assert!(a.kick.is_cancelled());
    ask(&mut state, &mut b, send(room_id, "are you there?"));
    assert!(
        events(&mut b).is_empty(),
        "the partner is not told during the grace"
    );

    let (h, mut rx, _kick) = handle(16);
    let claim = mcp_chat_proto::Resume {
        token: a.token.clone(),
        last_seq: 1,
    };
    let admitted = state.register(h, Some(claim)).unwrap();
    assert!(admitted.resumed);
    assert_eq!(admitted.session, a.id);
    match rx.try_recv().unwrap() {
        BrokerMsg::Event {
            seq: 2,
            event: Event::MessageReceived { message, .. },
        } => assert_eq!(message, "are you there?"),
        other => panic!("{other:?}"),
    }
    // The old connection's late goodbye does not end the resumed session.
    state.disconnect(a.id, a.connection);
    assert_eq!(state.session_count(), 2);
    a.rx = rx;
    a.connection = admitted.connection;
    assert_eq!(
        ask(&mut state, &mut a, send(room_id, "back")).0,
        Reply::Sent
    );
}

#[tokio::test(start_paused = true)]
async fn partner_is_told_when_the_grace_runs_out() {
    let mut state = new_state(100);
    let (a, mut b, room_id) = pair(&mut state);
    state.unresponsive(a.id, a.connection);
    let deadline = state.next_deadline().expect("grace deadline");
    assert_eq!(
        deadline - tokio::time::Instant::now(),
        Liveness::default().resume_grace
    );
    tokio::time::advance(Liveness::default().resume_grace).await;
    state.expire(tokio::time::Instant::now());
    assert_eq!(
        events(&mut b),
        vec![Event::PartnerDisconnected {
            room_id,
            reason: DisconnectReason::Disconnected,
            undelivered: 0,
            unconfirmed: 0,
        }]
    );
    assert_eq!(state.session_count(), 1);
    let (h, _rx, _kick) = handle(4);
    let late = mcp_chat_proto::Resume {
        token: a.token,
        last_seq: 1,
    };
    assert!(
        !state.register(h, Some(late)).unwrap().resumed,
        "too late: a fresh session"
    );
}

#[tokio::test(start_paused = true)]
async fn a_quiet_waiter_is_pinged_before_it_is_matched() {
    let mut state = new_state(100);
    let mut w = join(&mut state, 16);
    ask(&mut state, &mut w, Request::EnterQueue(Default::default()));
    tokio::time::advance(Liveness::default().fresh * 2).await;
    let mut n = join(&mut state, 16);
    assert_eq!(
        ask(&mut state, &mut n, Request::EnterQueue(Default::default())).0,
        Reply::Waiting { position: 2 }
    );
    assert!(matches!(w.rx.try_recv(), Ok(BrokerMsg::Ping { .. })));
    state.alive(w.id, w.connection);
    let found = |c: &mut Client| match events(c).as_slice() {
        [Event::ChatroomFound { room_id, .. }] => *room_id,
        other => panic!("{other:?}"),
    };
    assert_eq!(found(&mut w), found(&mut n));
}

#[tokio::test(start_paused = true)]
async fn a_frozen_waiter_is_never_matched() {
    let mut state = new_state(100);
    let mut frozen = join(&mut state, 16);
    ask(
        &mut state,
        &mut frozen,
        Request::EnterQueue(Default::default()),
    );
    tokio::time::advance(Liveness::default().fresh * 2).await;
    let mut n = join(&mut state, 16);
    ask(&mut state, &mut n, Request::EnterQueue(Default::default()));
    tokio::time::advance(Liveness::default().probe_timeout).await;
    state.expire(tokio::time::Instant::now());
    assert!(frozen.kick.is_cancelled(), "its connection is dropped");
    // n has now waited long enough to be pinged too; it answers, as a live
    // client does, and is matched with the next newcomer.
    let mut m = join(&mut state, 16);
    assert_eq!(
        ask(&mut state, &mut m, Request::EnterQueue(Default::default())).0,
        Reply::Waiting { position: 2 }
    );
    assert!(matches!(n.rx.try_recv(), Ok(BrokerMsg::Ping { .. })));
    state.alive(n.id, n.connection);
    let room = |c: &mut Client| match events(c).as_slice() {
        [Event::ChatroomFound { room_id, .. }] => *room_id,
        other => panic!("{other:?}"),
    };
    assert_eq!(room(&mut n), room(&mut m));
    assert!(matches!(frozen.rx.try_recv(), Ok(BrokerMsg::Ping { .. })));
    assert!(
        frozen.rx.try_recv().is_err(),
        "no chatroom.found for the frozen one"
    );
}

#[tokio::test(start_paused = true)]
async fn acknowledged_events_are_not_kept_for_a_resume() {
    let mut state = new_state(100);
    let (a, mut b, room_id) = pair(&mut state);
    for i in 0..10 {
        ask(&mut state, &mut b, send(room_id, &format!("{i}")));
    }
    // a holds everything up to seq 11 (chatroom.found + 10 messages).
    state.ack(a.id, a.connection, 11);
    assert!(state.sessions[&a.id].replay.is_empty());
    state.unresponsive(a.id, a.connection);
    ask(&mut state, &mut b, send(room_id, "later"));
    let (h, mut rx, _kick) = handle(16);
    let claim = mcp_chat_proto::Resume {
        token: a.token,
        last_seq: 11,
    };
    assert!(state.register(h, Some(claim)).unwrap().resumed);
    assert!(matches!(
        rx.try_recv(),
        Ok(BrokerMsg::Event { seq: 12, .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn every_request_counts_against_a_budget() {
    let mut state = new_state(100);
    let mut a = join(&mut state, 512);
    let burst = crate::config::REQUEST_BURST as usize;
    for _ in 0..burst {
        assert!(matches!(
            ask(&mut state, &mut a, Request::Status).0,
            Reply::Status(_)
        ));
    }
    match ask(&mut state, &mut a, Request::EnterQueue(Default::default())).0 {
        Reply::Error {
            code: ErrorCode::RateLimited,
            retry_after_ms: Some(20),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(state.queue.len(), 0, "the refused request did nothing");
    tokio::time::advance(std::time::Duration::from_millis(20)).await;
    assert_eq!(
        ask(&mut state, &mut a, Request::EnterQueue(Default::default())).0,
        Reply::Waiting { position: 1 }
    );
}

#[test]
fn waiting_positions_skip_detached_waiters() {
    let mut state = new_state(100);
    let mut a = join(&mut state, 16);
    let mut b = join(&mut state, 16);
    ask(&mut state, &mut a, Request::EnterQueue(Default::default()));
    state.unresponsive(a.id, a.connection);
    // a keeps its place for a resume but is not counted ahead of b.
    assert_eq!(
        ask(&mut state, &mut b, Request::EnterQueue(Default::default())).0,
        Reply::Waiting { position: 1 }
    );
    assert_eq!(state.status().waiting, 2);
    assert_eq!(state.status().detached, 1, "counted, not scanned");
    state.expire(tokio::time::Instant::now() + Liveness::default().resume_grace);
    assert_eq!(state.status().detached, 0);
    assert_eq!(state.status().waiting, 1);
}

#[tokio::test(start_paused = true)]
async fn impossible_seq_claims_are_refused_not_overflowed() {
    let mut state = new_state(100);
    let (a, _b, _room_id) = pair(&mut state);
    // An acknowledgement beyond what was sent is held to what was sent.
    state.ack(a.id, a.connection, u64::MAX);
    state.unresponsive(a.id, a.connection);
    let (h, _rx, _kick) = handle(4);
    let claim = mcp_chat_proto::Resume {
        token: a.token,
        last_seq: u64::MAX,
    };
    assert!(
        !state.register(h, Some(claim)).unwrap().resumed,
        "a claim past the end is refused"
    );
}
