use mcp_chat_proto::{BrokerMsg, DisconnectReason, ErrorCode, Event, Reply, Request};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{SessionHandle, SessionId, State};

struct Client {
    id: SessionId,
    rx: mpsc::Receiver<BrokerMsg>,
    kick: CancellationToken,
}

fn join(state: &mut State, capacity: usize) -> Client {
    let (outbox, rx) = mpsc::channel(capacity);
    let kick = CancellationToken::new();
    let id = state
        .register(SessionHandle {
            outbox,
            kick: kick.clone(),
        })
        .unwrap();
    Client { id, rx, kick }
}

fn ask(state: &mut State, client: &mut Client, request: Request) -> (Reply, Vec<(u64, Event)>) {
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

fn events(client: &mut Client) -> Vec<Event> {
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
    ask(state, &mut a, Request::EnterQueue);
    let (reply, _) = ask(state, &mut b, Request::EnterQueue);
    let Reply::Matched { room_id } = reply else {
        panic!("{reply:?}")
    };
    events(&mut a);
    (a, b, room_id)
}

#[test]
fn fifo_pairs_the_two_longest_waiting() {
    let mut state = State::new(100);
    let mut clients: Vec<Client> = (0..5).map(|_| join(&mut state, 64)).collect();
    let mut replies = Vec::new();
    for c in clients.iter_mut() {
        replies.push(ask(&mut state, c, Request::EnterQueue).0);
    }
    assert_eq!(replies[0], Reply::Waiting { position: 1 });
    assert!(matches!(replies[1], Reply::Matched { .. }));
    assert_eq!(replies[2], Reply::Waiting { position: 1 });
    assert!(matches!(replies[3], Reply::Matched { .. }));
    assert_eq!(replies[4], Reply::Waiting { position: 1 });
    let found = |c: &mut Client| match events(c).as_slice() {
        [Event::ChatroomFound { room_id }] => *room_id,
        other => panic!("{other:?}"),
    };
    let r0 = found(&mut clients[0]);
    assert_eq!(Reply::Matched { room_id: r0 }, replies[1]);
    let r2 = found(&mut clients[2]);
    assert_eq!(Reply::Matched { room_id: r2 }, replies[3]);
    assert_ne!(r0, r2);
    assert_eq!(r0.0.get_version_num(), 4);
    let status = state.status();
    assert_eq!((status.sessions, status.waiting, status.rooms), (5, 1, 2));
}

#[test]
fn entering_twice_is_idempotent_and_in_room_is_refused() {
    let mut state = State::new(100);
    let mut a = join(&mut state, 64);
    assert_eq!(
        ask(&mut state, &mut a, Request::EnterQueue).0,
        Reply::Waiting { position: 1 }
    );
    assert_eq!(
        ask(&mut state, &mut a, Request::EnterQueue).0,
        Reply::Waiting { position: 1 }
    );
    let mut state = State::new(100);
    let (mut x, _, room_id) = pair(&mut state);
    let (reply, _) = ask(&mut state, &mut x, Request::EnterQueue);
    let Reply::Error { code, message } = reply else {
        panic!()
    };
    assert_eq!(code, ErrorCode::AlreadyInRoom);
    assert!(message.contains(&room_id.to_string()));
}

#[test]
fn messages_flow_with_contiguous_seq() {
    let mut state = State::new(100);
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
    let mut state = State::new(100);
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
                    room_id: stranger_room
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
        ask(&mut state, &mut b, Request::LeaveChat { room_id }).0,
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
    let mut state = State::new(100);
    let (mut a, mut b, room_id) = pair(&mut state);
    assert_eq!(
        ask(&mut state, &mut a, Request::LeaveChat { room_id }).0,
        Reply::Left
    );
    assert_eq!(
        events(&mut b),
        vec![Event::PartnerDisconnected {
            room_id,
            reason: DisconnectReason::Left
        }]
    );
    assert_eq!(
        ask(&mut state, &mut a, Request::EnterQueue).0,
        Reply::Waiting { position: 1 }
    );
    // b's half-empty room is closed for it when it re-enters.
    assert!(matches!(
        ask(&mut state, &mut b, Request::EnterQueue).0,
        Reply::Matched { .. }
    ));
    assert_eq!(state.status().rooms, 1);
    assert_eq!(state.rooms.len(), 1, "the old room is gone");
}

#[test]
fn disconnect_cleans_queue_and_room() {
    let mut state = State::new(100);
    let mut w = join(&mut state, 64);
    ask(&mut state, &mut w, Request::EnterQueue);
    state.disconnect(w.id);
    assert_eq!(state.status().waiting, 0);
    let (a, mut b, room_id) = pair(&mut state);
    state.disconnect(a.id);
    assert_eq!(
        events(&mut b),
        vec![Event::PartnerDisconnected {
            room_id,
            reason: DisconnectReason::Disconnected
        }]
    );
    state.disconnect(b.id);
    assert!(state.sessions.is_empty() && state.rooms.is_empty() && state.queue.is_empty());
}

#[test]
fn slow_consumer_is_dropped_and_partner_told() {
    let mut state = State::new(100);
    let mut a = join(&mut state, 64);
    let mut b = join(&mut state, 2);
    ask(&mut state, &mut a, Request::EnterQueue);
    state.handle_request(b.id, 1, Request::EnterQueue);
    // b's outbox now holds its reply and chatroom.found: full. b never reads.
    let room_id = match events(&mut a).as_slice() {
        [Event::ChatroomFound { room_id }] => *room_id,
        other => panic!("{other:?}"),
    };
    let (reply, events) = ask(
        &mut state,
        &mut a,
        Request::SendMessage {
            room_id,
            message: "hello?".into(),
        },
    );
    assert_eq!(reply, Reply::Sent);
    assert!(b.kick.is_cancelled());
    assert_eq!(
        events.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
        vec![Event::PartnerDisconnected {
            room_id,
            reason: DisconnectReason::Disconnected
        }]
    );
    assert_eq!(state.session_count(), 1);
    drop(b.rx.try_recv());
}

#[test]
fn full_broker_refuses() {
    let mut state = State::new(1);
    let _a = join(&mut state, 4);
    let (outbox, _rx) = mpsc::channel(4);
    let err = state
        .register(SessionHandle {
            outbox,
            kick: CancellationToken::new(),
        })
        .unwrap_err();
    assert_eq!(err.0, ErrorCode::BrokerFull);
}

#[test]
fn shutdown_tells_everyone() {
    let mut state = State::new(100);
    let (mut a, _b, room_id) = pair(&mut state);
    let mut w = join(&mut state, 8);
    ask(&mut state, &mut w, Request::EnterQueue);
    state.shutdown();
    assert_eq!(
        events(&mut a),
        vec![
            Event::PartnerDisconnected {
                room_id,
                reason: DisconnectReason::Shutdown
            },
            Event::Shutdown
        ]
    );
    assert_eq!(events(&mut w), vec![Event::Shutdown]);
    assert_eq!(state.session_count(), 0);
}
