//! Matching choices across a realm of brokers (issue 16 with issue 12):
//! interests, interest waits, whom one meets and what one is, and blocks,
//! with sessions on different broker processes over one real `nats-server`
//! with JetStream, on loopback. Every wait is on an event (a reply, a
//! frame, a status round trip).

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::collections::HashMap;
use std::path::Path;

use futures::future::join_all;
use mcp_chat_proto::matching::kinds_compatible;
use mcp_chat_proto::{
    Entry, ErrorCode, Event, Kind, MatchInfo, Meet, Reply, Request, RoomId, StatusInfo,
};
use mcp_chat_testkit::proto_client::wait_for_status;
use mcp_chat_tests::federation::{Realm, found_with_partner, met};
use mcp_chat_tests::{ProtoClient, TestSocket, within};

fn entry(kind: Kind, meet: Meet, interests: &[&str], wait: u64) -> Entry {
    Entry {
        kind,
        meet,
        interests: interests.iter().map(|t| (*t).to_owned()).collect(),
        interest_wait_s: Some(wait),
        ..Entry::default()
    }
}

async fn enter(client: &mut ProtoClient, e: &Entry) -> Reply {
    client.request(Request::EnterQueue(e.clone())).await
}

async fn waits(client: &mut ProtoClient, e: &Entry) {
    let reply = enter(client, e).await;
    assert!(matches!(reply, Reply::Waiting { .. }), "{reply:?}");
}

/// `client` enters and is matched (at once, or claimed by its quiet partner
/// a moment later: see `met`); its room and what it is told.
async fn matched(client: &mut ProtoClient, e: &Entry) -> (RoomId, MatchInfo) {
    let reply = enter(client, e).await;
    let (room, info) = found_with_partner(client).await;
    assert!(met(&reply, room), "{reply:?}");
    if let Reply::Matched { partner, .. } = &reply {
        assert_eq!(*partner, info, "the reply and chatroom.found disagree");
    }
    (room, info)
}

/// Waiting sessions as `socket`'s broker counts them (its own and the
/// realm's), once that count is `n`.
async fn waiting_is(socket: &Path, n: usize) -> StatusInfo {
    wait_for_status(socket, "the realm's waiting count", |s| s.waiting == n).await
}

#[tokio::test]
async fn a_shared_interest_meets_across_brokers_before_an_older_non_sharer() {
    let realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = realm.broker(&sa, 20_000).await;
    let _b = realm.broker(&sb, 20_000).await;
    let plain = Entry::default();
    let mut old = ProtoClient::connect(&sa.path).await;
    waits(&mut old, &plain).await;
    let mut sharer = ProtoClient::connect(&sa.path).await;
    waits(
        &mut sharer,
        &entry(Kind::Agent, Meet::Anyone, &["chess"], 50),
    )
    .await;
    waiting_is(&sb.path, 2).await;
    // Open to anyone, with an interest: the sharer comes first, though the
    // plain waiter has waited longer.
    let mut newcomer = ProtoClient::connect(&sb.path).await;
    let (room, info) = matched(
        &mut newcomer,
        &entry(Kind::Person, Meet::Anyone, &["go", "Chess"], 0),
    )
    .await;
    assert_eq!(info.common_interests, vec!["chess".to_owned()]);
    assert_eq!(info.partner_kind, Some(Kind::Agent));
    let (theirs, info) = found_with_partner(&mut sharer).await;
    assert_eq!(theirs, room);
    assert_eq!(info.common_interests, vec!["chess".to_owned()]);
    assert_eq!(info.partner_kind, Some(Kind::Person));
    // The plain waiter still waits, first in line for the next one.
    let mut next = ProtoClient::connect(&sb.path).await;
    let (room, info) = matched(&mut next, &plain).await;
    assert!(info.common_interests.is_empty());
    assert_eq!(found_with_partner(&mut old).await.0, room);
}

#[tokio::test]
async fn an_interest_wait_falls_back_to_anyone_across_brokers() {
    let realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = realm.broker(&sa, 20_000).await;
    let _b = realm.broker(&sb, 20_000).await;
    let mut picky = ProtoClient::connect(&sa.path).await;
    waits(&mut picky, &entry(Kind::Agent, Meet::Anyone, &["go"], 1)).await;
    // A plain session on B does not share the interest: both wait, until
    // the picky one's wait is over and it enters again, open.
    let mut plain = ProtoClient::connect(&sb.path).await;
    waits(&mut plain, &Entry::default()).await;
    let (room, info) = found_with_partner(&mut plain).await;
    assert!(info.common_interests.is_empty());
    assert_eq!(info.partner_kind, Some(Kind::Agent));
    assert_eq!(found_with_partner(&mut picky).await.0, room);
    assert_eq!(picky.say(room, "hello from A").await, Reply::Sent);
    match plain.next_event().await {
        Event::MessageReceived { message, .. } => assert_eq!(message, "hello from A"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn whom_one_meets_holds_across_brokers() {
    let realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = realm.broker(&sa, 20_000).await;
    let _b = realm.broker(&sb, 20_000).await;
    let mut agents_only = ProtoClient::connect(&sa.path).await;
    waits(&mut agents_only, &entry(Kind::Agent, Meet::Agents, &[], 0)).await;
    // A person on B: the agents-only agent on A is not for them.
    let mut person = ProtoClient::connect(&sb.path).await;
    waits(&mut person, &entry(Kind::Person, Meet::Anyone, &[], 0)).await;
    waiting_is(&sa.path, 2).await;
    // A plain agent on B takes the one who waited longest and fits it.
    let mut agent = ProtoClient::connect(&sb.path).await;
    let (room, info) = matched(&mut agent, &Entry::default()).await;
    assert_eq!(info.partner_kind, Some(Kind::Agent));
    let (theirs, info) = found_with_partner(&mut agents_only).await;
    assert_eq!((theirs, info.partner_kind), (room, Some(Kind::Agent)));
    // A person on A who meets people only gets the person on B.
    let mut people_only = ProtoClient::connect(&sa.path).await;
    let (room, info) = matched(&mut people_only, &entry(Kind::Person, Meet::People, &[], 0)).await;
    assert_eq!(info.partner_kind, Some(Kind::Person));
    let (theirs, info) = found_with_partner(&mut person).await;
    assert_eq!((theirs, info.partner_kind), (room, Some(Kind::Person)));
}

#[tokio::test]
async fn a_blocked_pair_on_two_brokers_is_never_matched_again() {
    let realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = realm.broker(&sa, 20_000).await;
    let _b = realm.broker(&sb, 20_000).await;
    let x_entry = Entry {
        block_id: Some("installation-x".into()),
        ..Entry::default()
    };
    let y_entry = Entry {
        block_id: Some("installation-y".into()),
        ..Entry::default()
    };
    let mut x = ProtoClient::connect(&sa.path).await;
    waits(&mut x, &x_entry).await;
    let mut y = ProtoClient::connect(&sb.path).await;
    let (room, _) = matched(&mut y, &y_entry).await;
    assert_eq!(found_with_partner(&mut x).await.0, room);
    // X blocks its partner on the other broker.
    let reply = x
        .request(Request::LeaveChat {
            room_id: room,
            block: true,
        })
        .await;
    assert_eq!(reply, Reply::Blocked);
    assert!(matches!(
        y.next_event().await,
        Event::PartnerDisconnected { .. }
    ));
    // Both enter again, the only two waiting: kept apart.
    waits(&mut x, &x_entry).await;
    waits(&mut y, &y_entry).await;
    waiting_is(&sa.path, 2).await;
    waiting_is(&sb.path, 2).await;
    // Y leaves and comes back in a new session of the same installation,
    // on the same broker: still kept apart from X.
    drop(y);
    waiting_is(&sb.path, 1).await;
    let mut y = ProtoClient::connect(&sb.path).await;
    waits(&mut y, &y_entry).await;
    waiting_is(&sa.path, 2).await;
    // A third session meets X, the first in line; then a fourth meets Y.
    let mut third = ProtoClient::connect(&sb.path).await;
    let (room, _) = matched(&mut third, &Entry::default()).await;
    assert_eq!(found_with_partner(&mut x).await.0, room);
    let mut fourth = ProtoClient::connect(&sa.path).await;
    let (room, _) = matched(&mut fourth, &Entry::default()).await;
    assert_eq!(found_with_partner(&mut y).await.0, room);
}

/// Two sessions of one installation (an agent and its user's terminal)
/// share the realm's installation hash: a block between them binds those
/// two sessions, and each still meets anyone else, on any broker.
#[tokio::test]
async fn a_block_within_one_installation_binds_those_two_sessions_in_the_realm() {
    let realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = realm.broker(&sa, 20_000).await;
    let _b = realm.broker(&sb, 20_000).await;
    let same = Entry {
        block_id: Some("one-installation".into()),
        ..Entry::default()
    };
    let mut first = ProtoClient::connect(&sa.path).await;
    waits(&mut first, &same).await;
    let mut second = ProtoClient::connect(&sa.path).await;
    let (room, _) = matched(&mut second, &same).await;
    assert_eq!(found_with_partner(&mut first).await.0, room);
    let reply = first
        .request(Request::LeaveChat {
            room_id: room,
            block: true,
        })
        .await;
    assert_eq!(reply, Reply::Blocked);
    assert!(matches!(
        second.next_event().await,
        Event::PartnerDisconnected { .. }
    ));
    waits(&mut first, &same).await;
    waits(&mut second, &same).await;
    waiting_is(&sb.path, 2).await;
    let mut other = ProtoClient::connect(&sb.path).await;
    let (room, _) = matched(&mut other, &Entry::default()).await;
    assert_eq!(found_with_partner(&mut first).await.0, room);
    let mut another = ProtoClient::connect(&sb.path).await;
    let (room, _) = matched(&mut another, &Entry::default()).await;
    assert_eq!(found_with_partner(&mut second).await.0, room);
}

#[tokio::test]
async fn status_counts_waiters_and_busiest_interests_realm_wide() {
    let realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = realm.broker(&sa, 20_000).await;
    let _b = realm.broker(&sb, 20_000).await;
    // Three who cannot meet: kinds apart, and interests unshared during
    // their (long) interest waits.
    let mut p = ProtoClient::connect(&sa.path).await;
    waits(&mut p, &entry(Kind::Person, Meet::People, &["chess"], 50)).await;
    let mut a1 = ProtoClient::connect(&sb.path).await;
    waits(
        &mut a1,
        &entry(Kind::Agent, Meet::Agents, &["chess", "go"], 50),
    )
    .await;
    let mut a2 = ProtoClient::connect(&sb.path).await;
    waits(&mut a2, &entry(Kind::Agent, Meet::Agents, &["rust"], 50)).await;
    let status = wait_for_status(&sa.path, "A to count the realm's interests", |s| {
        s.waiting == 3 && s.interests.first().is_some_and(|c| c.waiting == 2)
    })
    .await;
    let shown: Vec<(String, usize)> = status
        .interests
        .iter()
        .map(|c| (c.interest.clone(), c.waiting))
        .collect();
    assert_eq!(
        shown,
        vec![
            ("chess".to_owned(), 2),
            ("go".to_owned(), 1),
            ("rust".to_owned(), 1)
        ]
    );
    drop((p, a1, a2));
}

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn random_entry(rng: &mut Lcg) -> Entry {
    const TAGS: [&str; 4] = ["chess", "go", "rust", "jazz"];
    let kind = [Kind::Agent, Kind::Person][rng.below(2) as usize];
    let meet = [Meet::Anyone, Meet::Agents, Meet::People][rng.below(3) as usize];
    let tags: Vec<&str> = TAGS.iter().copied().filter(|_| rng.below(3) == 0).collect();
    entry(kind, meet, &tags, rng.below(2))
}

/// Whether two waiters whose interest waits are over may meet.
fn compatible(a: &Entry, b: &Entry) -> bool {
    kinds_compatible((a.kind, a.meet), (b.kind, b.meet))
}

#[tokio::test]
async fn random_profiles_on_three_brokers_match_once_and_leave_no_fitting_pair() {
    const PER_BROKER: usize = 60;
    let realm = Realm::start().await;
    let sockets = [TestSocket::new(), TestSocket::new(), TestSocket::new()];
    let _brokers = join_all(sockets.iter().map(|s| realm.broker(s, 20_000))).await;
    let mut rng = Lcg(16);
    let mut clients = Vec::new();
    for socket in &sockets {
        for _ in 0..PER_BROKER {
            let e = random_entry(&mut rng);
            clients.push((ProtoClient::connect(&socket.path).await, e));
        }
    }
    let total = clients.len();
    // All at once.
    let mut clients = join_all(clients.into_iter().map(|(mut c, e)| async move {
        let reply = enter(&mut c, &e).await;
        assert!(
            matches!(reply, Reply::Matched { .. } | Reply::Waiting { .. }),
            "{reply:?}"
        );
        (c, e)
    }))
    .await;
    let mut observers = Vec::new();
    for socket in &sockets {
        observers.push(ProtoClient::connect(&socket.path).await);
    }
    // Settled: every session is in a room or in the realm's queue, as
    // every broker counts them, and no two who fit each other wait (once
    // the interest waits are over, they enter again and meet).
    let mut rooms: HashMap<usize, (RoomId, MatchInfo)> = HashMap::new();
    within("the burst to settle with no fitting pair waiting", async {
        loop {
            let mut in_rooms = 0;
            let mut in_queue = Vec::new();
            for o in &mut observers {
                let s = o.status().await;
                let f = s.federation.unwrap();
                in_rooms += 2 * s.rooms + f.remote_rooms;
                in_queue.push(f.waiting_in_realm);
            }
            let counted = in_queue.iter().all(|&w| in_rooms + w == total);
            let mut waiting = Vec::new();
            if counted {
                for (i, (c, e)) in clients.iter_mut().enumerate() {
                    if rooms.contains_key(&i) {
                        continue;
                    }
                    match enter(c, e).await {
                        Reply::Error { code, .. } => {
                            assert_eq!(code, ErrorCode::AlreadyInRoom);
                            rooms.insert(i, found_with_partner(c).await);
                        }
                        Reply::Waiting { .. } => waiting.push(i),
                        other => panic!("{other:?}"),
                    }
                }
            }
            let fitting = waiting.iter().enumerate().any(|(n, &i)| {
                waiting[n + 1..]
                    .iter()
                    .any(|&j| compatible(&clients[i].1, &clients[j].1))
            });
            if counted && !fitting && waiting.len() + rooms.len() == total {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    // Each room has exactly two, who fit each other and were told right.
    let mut members: HashMap<RoomId, Vec<usize>> = HashMap::new();
    for (&i, (room, _)) in &rooms {
        members.entry(*room).or_default().push(i);
    }
    for (room, pair) in &members {
        assert_eq!(pair.len(), 2, "room {room} has {pair:?}");
        let (a, b) = (&clients[pair[0]].1, &clients[pair[1]].1);
        assert!(compatible(a, b), "{a:?} met {b:?}");
        assert_eq!(rooms[&pair[0]].1.partner_kind, Some(b.kind));
        assert_eq!(rooms[&pair[1]].1.partner_kind, Some(a.kind));
        let mut common: Vec<String> = a
            .interests
            .iter()
            .filter(|t| b.interests.contains(t))
            .cloned()
            .collect();
        common.sort();
        assert_eq!(rooms[&pair[0]].1.common_interests, common);
    }
}
