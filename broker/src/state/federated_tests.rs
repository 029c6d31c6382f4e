//! The hub's side of a realm, with the link played by the test: a realm
//! waiter whose client has gone quiet is pinged before a claim of it is
//! taken, and one that never answers is never matched; a claim naming a
//! room in use is refused; a claim taken after the link gave up on it ends
//! its room towards the waiter; a remote partner's texts never grow a
//! member's replay buffer past its caps; a room whose outbox overflowed in
//! the link ends both ways, with exact counts.

use mcp_chat_proto::{BrokerMsg, DisconnectReason, Event, Kind, Meet, Request, RoomId};
use tokio::sync::{mpsc, oneshot};

use super::tests::{Client, events, join, new_state};
use super::{Liveness, State};
use crate::federation::{Answer, FromLink, RealmProfile, ToLink, who_hex};

/// A hub with a realm that is up, and `w` waiting in it.
fn waiting_in_realm() -> (State, mpsc::Receiver<ToLink>, Client) {
    let (tx, mut link) = mpsc::channel(64);
    let mut state = new_state(100).with_federation(Some(tx));
    state.link_report(FromLink::RealmKey([7; 32]));
    state.link_report(FromLink::Up);
    let w = enter_realm(&mut state, &mut link);
    (state, link, w)
}

/// One more session waiting in the realm.
fn enter_realm(state: &mut State, link: &mut mpsc::Receiver<ToLink>) -> Client {
    let mut w = join(state, 16);
    state.handle_request(w.id, 9, Request::EnterQueue(Default::default()));
    match link.try_recv() {
        Ok(ToLink::Enter { session, profile }) => {
            assert_eq!(session, w.id);
            assert!(profile.open && profile.interests.is_empty());
        }
        other => panic!("{other:?}"),
    }
    state.link_report(FromLink::Waiting {
        session: w.id,
        position: 1,
    });
    assert!(matches!(
        w.rx.try_recv(),
        Ok(BrokerMsg::Response { id: 9, .. })
    ));
    w
}

/// A remote broker's claim of `w`; the hub's answer.
fn claim(state: &mut State, w: &Client) -> Answer {
    claim_into(state, w, RoomId::new_random())
}

fn claim_into(state: &mut State, w: &Client, room: RoomId) -> Answer {
    let (confirm, mut answer) = oneshot::channel();
    report_claim(state, w, room, false, confirm);
    answer.try_recv().expect("answered at once")
}

fn report_claim(
    state: &mut State,
    w: &Client,
    room: RoomId,
    local: bool,
    confirm: oneshot::Sender<Answer>,
) {
    state.link_report(FromLink::Matched {
        session: w.id,
        room,
        local,
        confirm: Some(confirm),
        partner: profile(),
        partner_session: None,
        outbox: None,
    });
}

fn profile() -> RealmProfile {
    RealmProfile {
        kind: Kind::Person,
        meet: Meet::Anyone,
        interests: Vec::new(),
        open: true,
        who: who_hex(1),
        sid: who_hex(2),
    }
}

#[tokio::test(start_paused = true)]
async fn a_quiet_realm_waiter_is_pinged_before_a_claim_is_taken() {
    let (mut state, mut link, mut w) = waiting_in_realm();
    tokio::time::advance(Liveness::default().fresh * 2).await;
    assert_eq!(claim(&mut state, &w), Answer::Quiet);
    assert!(matches!(w.rx.try_recv(), Ok(BrokerMsg::Ping { .. })));
    state.alive(w.id, w.connection);
    assert!(matches!(link.try_recv(), Ok(ToLink::Resume { session }) if session == w.id));
    // Back in the realm, alive: the next claim is taken.
    assert_eq!(claim(&mut state, &w), Answer::Taken);
    match events(&mut w).as_slice() {
        [Event::ChatroomFound { partner, .. }] => {
            assert_eq!(partner.partner_kind, Some(Kind::Person));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_frozen_realm_waiter_is_never_matched() {
    let (mut state, mut link, mut w) = waiting_in_realm();
    tokio::time::advance(Liveness::default().fresh * 2).await;
    assert_eq!(claim(&mut state, &w), Answer::Quiet);
    assert!(matches!(w.rx.try_recv(), Ok(BrokerMsg::Ping { .. })));
    tokio::time::advance(Liveness::default().probe_timeout).await;
    state.expire(tokio::time::Instant::now());
    assert!(w.kick.is_cancelled(), "its connection is dropped");
    assert!(matches!(link.try_recv(), Ok(ToLink::Withdraw { session }) if session == w.id));
    // Held for a resume, not in the realm: a late claim is refused.
    assert_eq!(claim(&mut state, &w), Answer::Refused);
    assert!(events(&mut w).is_empty(), "no chatroom.found");
}

#[tokio::test(start_paused = true)]
async fn a_claim_naming_a_room_in_use_is_refused_and_leaves_it_alone() {
    let (mut state, mut link, mut w) = waiting_in_realm();
    let room = RoomId::new_random();
    assert_eq!(claim_into(&mut state, &w, room), Answer::Taken);
    assert!(matches!(
        events(&mut w).as_slice(),
        [Event::ChatroomFound { room_id, .. }] if *room_id == room
    ));
    let mut other = enter_realm(&mut state, &mut link);
    // A hostile claimer reusing the room id: refused, for both kinds.
    assert_eq!(claim_into(&mut state, &other, room), Answer::Refused);
    let (confirm, mut answer) = oneshot::channel();
    report_claim(&mut state, &other, room, true, confirm);
    assert_eq!(answer.try_recv(), Ok(Answer::Refused));
    // Nor does a second half of a local pair join a remote room.
    state.link_report(FromLink::Matched {
        session: other.id,
        room,
        local: true,
        confirm: None,
        partner: profile(),
        partner_session: None,
        outbox: None,
    });
    assert!(events(&mut other).is_empty(), "not put in the room");
    assert!(events(&mut w).is_empty(), "its room goes on untouched");
    assert!(link.try_recv().is_err(), "nothing ended");
    // The refused waiter still waits: a genuine claim takes it.
    assert_eq!(claim(&mut state, &other), Answer::Taken);
}

#[tokio::test(start_paused = true)]
async fn a_claim_taken_after_the_link_gave_up_ends_the_room_towards_the_waiter() {
    for local in [false, true] {
        let (mut state, mut link, mut w) = waiting_in_realm();
        let room = RoomId::new_random();
        // The link's wait for the answer timed out: its receiver is gone.
        let (confirm, answer) = oneshot::channel();
        drop(answer);
        report_claim(&mut state, &w, room, local, confirm);
        match events(&mut w).as_slice() {
            [
                Event::ChatroomFound { room_id: found, .. },
                Event::PartnerDisconnected {
                    room_id,
                    reason: DisconnectReason::Disconnected,
                    ..
                },
            ] => assert!(*found == room && *room_id == room),
            other => panic!("{other:?}"),
        }
        // The link, which entered it again, drops it.
        assert!(matches!(link.try_recv(), Ok(ToLink::Withdraw { session }) if session == w.id));
    }
}

#[tokio::test(start_paused = true)]
async fn remote_texts_past_the_replay_caps_end_the_room_instead_of_growing_it() {
    let (mut state, mut link, mut w) = waiting_in_realm();
    assert_eq!(claim(&mut state, &w), Answer::Taken);
    let room = match events(&mut w).as_slice() {
        [Event::ChatroomFound { room_id, .. }] => *room_id,
        other => panic!("{other:?}"),
    };
    while link.try_recv().is_ok() {}
    // The member's client takes in nothing (nothing is written to it).
    let text = "x".repeat(60_000);
    let mut taken = 0u64;
    let report = loop {
        state.link_report(FromLink::Message {
            room,
            text: text.clone(),
            sent_at: 1,
        });
        let got = events(&mut w);
        if let Ok(ToLink::End {
            room: r,
            reason,
            report,
        }) = link.try_recv()
        {
            assert_eq!((r, reason), (room, DisconnectReason::Disconnected));
            assert!(
                matches!(
                    got.as_slice(),
                    [Event::PartnerDisconnected {
                        reason: DisconnectReason::Disconnected,
                        ..
                    }]
                ),
                "{got:?}"
            );
            break report;
        }
        assert!(matches!(got.as_slice(), [Event::MessageReceived { .. }]));
        taken += 1;
        assert!(taken <= crate::state::REPLAY_EVENTS as u64, "never ended");
    };
    assert!(taken > 0);
    // The text that did not fit is not received: the partner's broker
    // counts it undelivered. Those taken in wait for the client, which
    // lives on: unconfirmed.
    assert_eq!(report.received, taken);
    assert_eq!(report.undelivered, 0);
    assert_eq!(report.unconfirmed, taken);
    // Later texts are not taken in.
    state.link_report(FromLink::Message {
        room,
        text,
        sent_at: 1,
    });
    assert!(events(&mut w).is_empty());
}

/// The link's outbox for a room overflowed (the hub's credit normally
/// keeps it from happening): the hub ends the room both ways. The partner's
/// broker is sent an end with our report (it fits behind the texts
/// queued), and our member hears `federation_lost` with what became of its
/// texts: those the link refused never left (undelivered), those queued go
/// out ahead of the end (unconfirmed, unless confirmed already).
#[tokio::test(start_paused = true)]
async fn a_room_whose_outbox_overflowed_ends_both_ways_with_exact_counts() {
    use mcp_chat_proto::Reply;

    let (mut state, mut link, mut w) = waiting_in_realm();
    assert_eq!(claim(&mut state, &w), Answer::Taken);
    let room = match events(&mut w).as_slice() {
        [Event::ChatroomFound { room_id, .. }] => *room_id,
        other => panic!("{other:?}"),
    };
    while link.try_recv().is_ok() {}
    for i in 0..5 {
        let send = Request::SendMessage {
            room_id: room,
            message: format!("m{i}"),
        };
        assert_eq!(super::tests::ask(&mut state, &mut w, send).0, Reply::Sent);
        assert!(matches!(link.try_recv(), Ok(ToLink::Send { .. })));
    }
    // One of the partner's texts, taken in, not yet acknowledged.
    state.link_report(FromLink::Message {
        room,
        text: "hi".into(),
        sent_at: 1,
    });
    state.link_report(FromLink::Delivered { room, count: 1 });
    // The link queued 3; the 4th and 5th were refused.
    state.link_report(FromLink::Overflowed { room, queued: 3 });
    match link.try_recv() {
        Ok(ToLink::End {
            room: r,
            reason,
            report,
        }) => {
            assert_eq!((r, reason), (room, DisconnectReason::FederationLost));
            assert_eq!(report.received, 1);
            assert_eq!((report.undelivered, report.unconfirmed), (0, 1));
        }
        other => panic!("the partner's broker is told: {other:?}"),
    }
    assert_eq!(
        events(&mut w),
        vec![
            Event::MessageReceived {
                room_id: room,
                message: "hi".into(),
                sent_at: 1,
            },
            Event::PartnerDisconnected {
                room_id: room,
                reason: DisconnectReason::FederationLost,
                undelivered: 2,
                unconfirmed: 2,
            }
        ]
    );
    // The room is over for the member; the link hears nothing more of it.
    let send = Request::SendMessage {
        room_id: room,
        message: "late".into(),
    };
    assert!(matches!(
        super::tests::ask(&mut state, &mut w, send).0,
        Reply::Error { .. }
    ));
    assert!(link.try_recv().is_err());
    state.link_report(FromLink::Overflowed { room, queued: 3 });
    assert!(link.try_recv().is_err(), "ended once");
}

/// The member acknowledges the partner's text, then speaks: the count
/// reaches the room's publisher before the text does, so the text carries
/// it (a confirmation that went only through the link could come second,
/// and the partner's broker would learn of it only from a later message).
#[tokio::test(start_paused = true)]
async fn a_text_queued_after_an_acknowledgement_carries_it() {
    let (mut state, mut link, mut w) = waiting_in_realm();
    let room = RoomId::new_random();
    let (outbox, mut publisher, confirmed) = crate::federation::Outbox::for_tests(8);
    let (confirm, _answer) = oneshot::channel();
    state.link_report(FromLink::Matched {
        session: w.id,
        room,
        local: false,
        confirm: Some(confirm),
        partner: profile(),
        partner_session: None,
        outbox: Some(outbox),
    });
    assert!(matches!(
        events(&mut w).as_slice(),
        [Event::ChatroomFound { room_id, .. }] if *room_id == room
    ));
    state.link_report(FromLink::Message {
        room,
        text: "hello".into(),
        sent_at: 1,
    });
    let seq = match w.rx.try_recv() {
        Ok(BrokerMsg::Event {
            seq,
            event: Event::MessageReceived { .. },
        }) => seq,
        other => panic!("{other:?}"),
    };
    while link.try_recv().is_ok() {}
    state.ack(w.id, w.connection, seq);
    state.handle_request(
        w.id,
        10,
        Request::SendMessage {
            room_id: room,
            message: "thanks".into(),
        },
    );
    assert!(publisher.try_recv().is_ok(), "the text is queued straight");
    assert_eq!(
        *confirmed.borrow(),
        1,
        "the publisher stamps the text with it"
    );
}
