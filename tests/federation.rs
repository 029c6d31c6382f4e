//! Brokers federated over NATS JetStream (issue 12): separate broker
//! processes, each on its own socket (three machines in all but name), on
//! one real `nats-server` with JetStream, all on loopback. Every wait is on
//! an event (a reply, a frame, a status round trip, a process exit).
//!
//! The server binary comes from `./test.sh` (see `mcp_chat_testkit::nats`).

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use futures::future::join_all;
use mcp_chat_proto::{DisconnectReason, Event, Reply, RoomId};
use mcp_chat_testkit::nats::NatsServer;
use mcp_chat_testkit::proto_client::wait_for_status;
use mcp_chat_tests::federation::{
    Realm, connected, ended, found, found_with_partner, leave, met, pair, received, synced,
};
use mcp_chat_tests::frozen_receiver::{assert_delivered_or_reported, send_until_partner_gone};
use mcp_chat_tests::{BrokerProcess, ProtoClient, TestSocket, within};

#[tokio::test]
async fn three_brokers_match_fifo_chat_and_leave() {
    let realm = Realm::start().await;
    let sockets = [TestSocket::new(), TestSocket::new(), TestSocket::new()];
    let _brokers = join_all(sockets.iter().map(|s| realm.broker(s, 20_000))).await;
    let [sa, sb, sc] = &sockets;

    // The first waiter, on A, is the one B's session meets.
    let mut a1 = ProtoClient::connect(&sa.path).await;
    let mut b1 = ProtoClient::connect(&sb.path).await;
    let room = pair(&mut a1, &mut b1).await;
    let status = wait_for_status(&sa.path, "A to count its remote room", |s| {
        s.federation.as_ref().is_some_and(|f| f.remote_rooms == 1)
    })
    .await;
    assert_eq!(status.rooms, 0, "a remote room is not a local room");

    // Chat both ways, in order.
    for i in 0..20 {
        assert_eq!(a1.say(room, &format!("a{i}")).await, Reply::Sent);
        assert_eq!(b1.say(room, &format!("b{i}")).await, Reply::Sent);
    }
    for i in 0..20 {
        assert_eq!(received(&mut b1).await, format!("a{i}"));
        assert_eq!(received(&mut a1).await, format!("b{i}"));
    }

    // FIFO across brokers: C's waiter came first, so A's newcomer meets it,
    // not the B waiter that follows.
    let mut c1 = ProtoClient::connect(&sc.path).await;
    assert_eq!(c1.enter().await, Reply::Waiting { position: 1 });
    wait_for_status(&sb.path, "B to see C's waiter", |s| {
        s.federation
            .as_ref()
            .is_some_and(|f| f.waiting_in_realm == 1)
    })
    .await;
    let mut a2 = ProtoClient::connect(&sa.path).await;
    let reply = a2.enter().await;
    let room2 = found(&mut c1).await;
    assert!(met(&reply, room2), "{reply:?}");
    assert_eq!(found(&mut a2).await, room2);
    let mut b2 = ProtoClient::connect(&sb.path).await;
    assert_eq!(b2.enter().await, Reply::Waiting { position: 1 });

    // Two sessions of the same broker also meet through the realm.
    let mut b3 = ProtoClient::connect(&sb.path).await;
    let reply = b3.enter().await;
    let room3 = found(&mut b2).await;
    assert!(met(&reply, room3), "{reply:?}");
    assert_eq!(b2.say(room3, "local").await, Reply::Sent);
    found(&mut b3).await;
    assert_eq!(received(&mut b3).await, "local");

    // Leaving tells the remote partner.
    leave(&mut a1, room, &mut b1).await;
    match b1.say(room, "anyone?").await {
        Reply::Error { code, .. } => assert_eq!(code, mcp_chat_proto::ErrorCode::PartnerGone),
        other => panic!("{other:?}"),
    }
    // And a disconnect, too.
    drop(c1);
    assert_eq!(ended(&mut a2).await, DisconnectReason::Disconnected);
}

#[tokio::test]
async fn a_killed_broker_is_reported_to_its_remote_partners() {
    let realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = realm.broker(&sa, 3_000).await;
    let b = realm.broker(&sb, 3_000).await;
    let mut a1 = ProtoClient::connect(&sa.path).await;
    let mut b1 = ProtoClient::connect(&sb.path).await;
    let room = pair(&mut a1, &mut b1).await;
    assert_eq!(b1.say(room, "before").await, Reply::Sent);
    assert_eq!(received(&mut a1).await, "before");
    b.signal(rustix::process::Signal::KILL);
    assert_eq!(ended(&mut a1).await, DisconnectReason::Disconnected);
    // A serves on: its next session waits (the killed broker's waiters, if
    // any, are claimed in vain and dropped).
    let mut a2 = ProtoClient::connect(&sa.path).await;
    assert_eq!(a2.enter().await, Reply::Waiting { position: 1 });
}

#[tokio::test]
async fn restarting_nats_mid_chat_loses_nothing() {
    let mut realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = realm.broker(&sa, 60_000).await;
    let _b = realm.broker(&sb, 60_000).await;
    let mut a1 = ProtoClient::connect(&sa.path).await;
    let mut b1 = ProtoClient::connect(&sb.path).await;
    let room = pair(&mut a1, &mut b1).await;
    for i in 0..10 {
        assert_eq!(a1.say(room, &format!("m{i}")).await, Reply::Sent);
    }
    realm.nats.restart().await.unwrap();
    // Sent while the brokers are still reconnecting: held, then delivered.
    for i in 10..20 {
        assert_eq!(a1.say(room, &format!("m{i}")).await, Reply::Sent);
    }
    for i in 0..20 {
        assert_eq!(received(&mut b1).await, format!("m{i}"));
    }
    connected(&sa.path).await;
    connected(&sb.path).await;
    assert_eq!(b1.say(room, "back").await, Reply::Sent);
    assert_eq!(received(&mut a1).await, "back");
    // Matching through the realm works again.
    let mut a2 = ProtoClient::connect(&sa.path).await;
    let mut b2 = ProtoClient::connect(&sb.path).await;
    pair(&mut a2, &mut b2).await;
}

#[tokio::test]
async fn a_burst_of_entrants_on_three_brokers_is_matched_exactly_once() {
    const PER_BROKER: usize = 100;
    let realm = Realm::start().await;
    let sockets = [TestSocket::new(), TestSocket::new(), TestSocket::new()];
    let _brokers = join_all(sockets.iter().map(|s| realm.broker(s, 20_000))).await;
    let mut clients = Vec::new();
    for socket in &sockets {
        for _ in 0..PER_BROKER {
            clients.push(ProtoClient::connect(&socket.path).await);
        }
    }
    // All at once: every session enters concurrently, then waits for its
    // room (an even number of sessions: after the burst, none may be left).
    let rooms = join_all(clients.into_iter().map(|mut c| async move {
        let reply = c.enter().await;
        let room = found(&mut c).await;
        match reply {
            Reply::Matched { room_id, .. } => assert_eq!(room_id, room),
            Reply::Waiting { .. } => {}
            other => panic!("{other:?}"),
        }
        (room, c)
    }))
    .await;
    let mut count = std::collections::HashMap::<RoomId, usize>::new();
    for (room, _) in &rooms {
        *count.entry(*room).or_default() += 1;
    }
    assert_eq!(count.len(), PER_BROKER * 3 / 2, "every session in one room");
    assert!(count.values().all(|&n| n == 2), "each room has exactly two");
    for socket in &sockets {
        wait_for_status(&socket.path, "the realm queue to be empty", |s| {
            s.federation
                .as_ref()
                .is_some_and(|f| f.waiting_in_realm == 0)
        })
        .await;
    }
    within("the clients to close", async { drop(rooms) }).await;
}

#[tokio::test]
async fn losing_nats_keeps_local_chat_and_ends_remote_rooms_after_the_grace() {
    let mut realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = realm.broker(&sa, 2_000).await;
    let _b = realm.broker(&sb, 2_000).await;
    let mut a1 = ProtoClient::connect(&sa.path).await;
    let mut b1 = ProtoClient::connect(&sb.path).await;
    pair(&mut a1, &mut b1).await;
    realm.nats.kill().await.unwrap();
    assert_eq!(ended(&mut a1).await, DisconnectReason::FederationLost);
    assert_eq!(ended(&mut b1).await, DisconnectReason::FederationLost);
    // Local matching and local rooms go on without NATS.
    let status = wait_for_status(&sa.path, "A to notice", |s| {
        s.federation.as_ref().is_some_and(|f| !f.connected)
    })
    .await;
    assert_eq!(status.federation.unwrap().remote_rooms, 0);
    let mut a2 = ProtoClient::connect(&sa.path).await;
    let mut a3 = ProtoClient::connect(&sa.path).await;
    let room = pair(&mut a2, &mut a3).await;
    assert_eq!(a2.say(room, "still here").await, Reply::Sent);
    assert_eq!(received(&mut a3).await, "still here");
    // NATS back: both brokers re-join the realm by themselves.
    realm.nats.start_again().await.unwrap();
    connected(&sa.path).await;
    connected(&sb.path).await;
    let mut a4 = ProtoClient::connect(&sa.path).await;
    let mut b2 = ProtoClient::connect(&sb.path).await;
    let room = pair(&mut a4, &mut b2).await;
    assert_eq!(b2.say(room, "across again").await, Reply::Sent);
    assert_eq!(received(&mut a4).await, "across again");
}

/// A raw NATS client on the realm's subjects: it can read the subjects (so
/// it learns room ids and broker ids), and publishes oversized, malformed,
/// wrong-room, wrong-secret, replayed and flood messages, bad claims and
/// bad presence. The brokers drop and count all of it, and the clients see
/// only what their partners sent.
#[tokio::test]
async fn a_hostile_nats_publisher_cannot_reach_the_clients() {
    let realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = realm.broker(&sa, 20_000).await;
    let _b = realm.broker(&sb, 20_000).await;
    let mut a1 = ProtoClient::connect(&sa.path).await;
    let mut b1 = ProtoClient::connect(&sb.path).await;
    let room = pair(&mut a1, &mut b1).await;

    let nats = async_nats::connect(realm.nats.url()).await.unwrap();
    let mut spy = nats.subscribe("mcpchat.test.room.*").await.unwrap();
    synced(&nats).await;
    assert_eq!(a1.say(room, "legit 1").await, Reply::Sent);
    assert_eq!(received(&mut b1).await, "legit 1");
    let captured = within(
        "the spy to see a room message",
        futures::StreamExt::next(&mut spy),
    )
    .await
    .unwrap();
    let subject = captured.subject.clone();
    // Sealed (see `a_hostile_realm_member_can_neither_read_nor_inject`):
    // the sender's id is bytes 20..36 of the clear header.
    let from: String = captured.payload[20..36]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    // Messages in the old clear format, with ids and text of every sort.
    let forged = |room: &str, secret: &str, seq: u64, text: &str| {
        serde_json::to_vec(&serde_json::json!({
            "room": room, "secret": secret, "from": from, "seq": seq,
            "body": {"kind": "text", "text": text, "sent_at": 0},
        }))
        .unwrap()
    };
    let wrong_secret = "0123456789abcdef0123456789abcdef";
    let mut hostile: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        br#"{"room": 7, "seq": "x"}"#.to_vec(),
        // Just over the broker's own bound, under the server's.
        vec![b'x'; 16 * 1024 * 6 + 2048],
        forged(
            &RoomId::new_random().to_string(),
            wrong_secret,
            2,
            "wrong room",
        ),
        forged(&room.to_string(), wrong_secret, 2, "wrong secret"),
        forged(&room.to_string(), wrong_secret, 2, "   "),
        forged(
            &room.to_string(),
            wrong_secret,
            2,
            &"y".repeat(16 * 1024 + 1),
        ),
        // Replayed: the captured message again, verbatim.
        captured.payload.to_vec(),
    ];
    for i in 0..2_000 {
        hostile.push(forged(&room.to_string(), wrong_secret, 2 + i, "flood"));
    }
    let sent = hostile.len() as u64;
    for payload in hostile {
        nats.publish(subject.clone(), payload.into()).await.unwrap();
    }
    // Claims and presence are untrusted too. Junk claims are dropped
    // without an answer (a signed refusal each would be work for nothing).
    let claim_subject = format!("mcpchat.test.claim.{from}");
    let inbox = nats.new_inbox();
    let mut answers = nats.subscribe(inbox.clone()).await.unwrap();
    for payload in [
        b"junk".to_vec(),
        serde_json::to_vec(&serde_json::json!({
            "key": "nobody", "room": RoomId::new_random(), "claimer": wrong_secret, "secret": wrong_secret,
        }))
        .unwrap(),
    ] {
        nats.publish_with_reply(claim_subject.clone(), inbox.clone(), payload.into())
            .await
            .unwrap();
    }
    nats.publish("mcpchat.test.presence", "garbage".into())
        .await
        .unwrap();
    synced(&nats).await;

    // The next thing b1 sees is a1's next message: nothing hostile came
    // through (ProtoClient also checks that event seqs stay contiguous).
    assert_eq!(a1.say(room, "legit 2").await, Reply::Sent);
    assert_eq!(received(&mut b1).await, "legit 2");
    assert_eq!(b1.say(room, "reply").await, Reply::Sent);
    assert_eq!(received(&mut a1).await, "reply");
    // Every hostile room message that the stream stored was counted.
    wait_for_status(&sb.path, "B to count the rejected messages", |s| {
        s.federation.as_ref().is_some_and(|f| f.rejected >= sent)
    })
    .await;
    synced(&nats).await;
    assert!(
        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut answers)).is_none(),
        "a junk claim was answered"
    );
}

/// What a hostile realm member sees of the realm: every payload on every
/// subject, in order.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<async_nats::Message>>>;

/// A realm member that reads every subject of the server (the realm's, the
/// queue bucket's, the reply inboxes) and answers every claim request at
/// once with forged answers, `matched: false` then `true`: unsigned, and
/// signed with a made-up key. Returns what it saw, and how many claims it answered.
async fn hostile_member(
    nats: &async_nats::Client,
) -> (Seen, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let seen: Seen = Default::default();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut all = nats.subscribe(">").await.unwrap();
    synced(nats).await;
    let (nats, record, count) = (nats.clone(), seen.clone(), answered.clone());
    tokio::spawn(async move {
        while let Some(msg) = futures::StreamExt::next(&mut all).await {
            let claim = msg.subject.starts_with("mcpchat.test.claim.");
            if let (true, Some(reply)) = (claim, msg.reply.clone()) {
                let owner = msg.subject.as_str().rsplit('.').next().unwrap().to_owned();
                let signed: serde_json::Value =
                    serde_json::from_slice(&msg.payload).unwrap_or_default();
                let body: serde_json::Value =
                    serde_json::from_str(signed["body"].as_str().unwrap_or("{}"))
                        .unwrap_or_default();
                // A refusal first: believed, it would leave the owner's
                // waiter in a room whose claimer walked away (half-open).
                for matched in [false, true] {
                    let answer = serde_json::json!({
                        "owner": owner, "room": body["room"], "claimer_kx": body["claimer_kx"],
                        "matched": matched, "beat": 1,
                    });
                    let forged = serde_json::json!({
                        "body": answer.to_string(), "key": "ab".repeat(32), "sig": "cd".repeat(64),
                    });
                    for payload in [
                        serde_json::to_vec(&serde_json::json!({ "matched": matched })).unwrap(),
                        serde_json::to_vec(&forged).unwrap(),
                    ] {
                        let _ = nats.publish(reply.clone(), payload.into()).await;
                    }
                }
                // And the genuine claim again, to its owner, with the
                // claimer's own inbox: a signed refusal of the copy would
                // reach the claimer before the owner's real answer.
                let _ = nats
                    .publish_with_reply(msg.subject.clone(), reply.clone(), msg.payload.clone())
                    .await;
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            record.lock().unwrap().push(msg);
        }
    });
    (seen, answered)
}

/// Issue 12's "a remote broker is untrusted", against a member of the realm
/// (one that can read and publish everything the brokers can), not only an
/// outsider: (a) it never sees a chat text, nor any 8-byte run of one, in
/// any payload; (b) replaying every room message it saw, and altered copies
/// (a byte flipped, another room, another seq, spliced, sent the other way),
/// gets nothing to the clients, who receive exactly their partners' texts,
/// once, in order, while the brokers count every copy as rejected; (c) its
/// forged answers to every claim (a refusal first) change nothing: both matches (one
/// claimed each way) are made as they should be, with no half-open room,
/// and so do its copies of each genuine claim sent at once to the owner with
/// the claimer's own reply inbox.
#[tokio::test]
async fn a_hostile_realm_member_can_neither_read_nor_inject() {
    let realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = realm.broker(&sa, 20_000).await;
    let _b = realm.broker(&sb, 20_000).await;
    let nats = async_nats::connect(realm.nats.url()).await.unwrap();
    let (seen, answered) = hostile_member(&nats).await;

    // (c) B claims A's waiter, then A claims B's: both matches hold.
    let mut a1 = ProtoClient::connect(&sa.path).await;
    let mut b1 = ProtoClient::connect(&sb.path).await;
    let room = pair(&mut a1, &mut b1).await;
    let mut b2 = ProtoClient::connect(&sb.path).await;
    let mut a2 = ProtoClient::connect(&sa.path).await;
    let room2 = pair(&mut b2, &mut a2).await;
    assert!(
        answered.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the hostile member answered both claims"
    );

    let texts = |who: &str| -> Vec<String> {
        (0..3)
            .map(|i| format!("zebra-quartz {who} {i} mauve plinth oxbow {who}{i}"))
            .collect()
    };
    let (from_a, from_b) = (texts("alpha"), texts("bravo"));
    let from_a2 = texts("charlie");
    for (a, b) in from_a.iter().zip(&from_b) {
        assert_eq!(a1.say(room, a).await, Reply::Sent);
        assert_eq!(received(&mut b1).await, *a);
        assert_eq!(b1.say(room, b).await, Reply::Sent);
        assert_eq!(received(&mut a1).await, *b);
    }
    for t in &from_a2 {
        assert_eq!(a2.say(room2, t).await, Reply::Sent);
        assert_eq!(received(&mut b2).await, *t);
    }
    synced(&nats).await;
    let captured: Vec<async_nats::Message> = seen.lock().unwrap().clone();

    // (a) No text, nor any 8 bytes of one, in any payload it saw.
    let runs: std::collections::HashSet<&[u8]> = from_a
        .iter()
        .chain(&from_b)
        .chain(&from_a2)
        .flat_map(|t| t.as_bytes().windows(8))
        .collect();
    let rooms: Vec<&async_nats::Message> = captured
        .iter()
        .filter(|m| m.subject.starts_with("mcpchat.test.room."))
        .collect();
    assert!(
        rooms.len() >= 9,
        "it saw the room messages: {}",
        rooms.len()
    );
    for m in &captured {
        assert!(
            !m.payload.windows(8).any(|w| runs.contains(w)),
            "chat text in clear on {}",
            m.subject
        );
    }

    // (b) Everything it can make of what it saw.
    let mut hostile: Vec<(async_nats::Subject, Vec<u8>)> = Vec::new();
    let subjects: Vec<async_nats::Subject> = {
        let mut s: Vec<_> = rooms.iter().map(|m| m.subject.clone()).collect();
        s.sort_unstable_by(|x, y| x.as_str().cmp(y.as_str()));
        s.dedup();
        s
    };
    assert_eq!(subjects.len(), 2, "one subject per broker");
    for (i, m) in rooms.iter().enumerate() {
        let p = m.payload.to_vec();
        let to = m.subject.clone();
        let other = subjects.iter().find(|s| **s != to).unwrap().clone();
        // Replayed verbatim, and sent to the other broker.
        hostile.push((to.clone(), p.clone()));
        hostile.push((other, p.clone()));
        // One byte flipped: magic, room, sender, seq, nonce, body, tag.
        for at in [0, 10, 25, 40, 48, 60, p.len() - 1] {
            let mut bad = p.clone();
            bad[at.min(p.len() - 1)] ^= 0x20;
            hostile.push((to.clone(), bad));
        }
        // Another room; another seq.
        let mut bad = p.clone();
        bad[4..20].copy_from_slice(RoomId::new_random().0.as_bytes());
        hostile.push((to.clone(), bad));
        let mut bad = p.clone();
        bad[36..44].copy_from_slice(&(1_000 + i as u64).to_be_bytes());
        hostile.push((to.clone(), bad));
        // This header with another message's sealed body and tag.
        if let Some(n) = rooms
            .iter()
            .find(|n| n.subject == to && n.payload != m.payload)
        {
            let mut spliced = p[..52].to_vec();
            spliced.extend_from_slice(&n.payload[52..]);
            hostile.push((to.clone(), spliced));
        }
    }
    // What each broker rejected before (forged answers and claim copies,
    // counted too): the copies below must add to it.
    let rejected = |s: &mcp_chat_proto::StatusInfo| s.federation.as_ref().map_or(0, |f| f.rejected);
    let before_a = rejected(&wait_for_status(&sa.path, "A's status", |_| true).await);
    let before_b = rejected(&wait_for_status(&sb.path, "B's status", |_| true).await);
    let mut sent: std::collections::HashMap<String, u64> = Default::default();
    for (subject, payload) in hostile {
        *sent.entry(subject.to_string()).or_default() += 1;
        nats.publish(subject, payload.into()).await.unwrap();
    }
    synced(&nats).await;
    // B's subject is where a1's first text went; A's the other. Every copy
    // is counted by the broker it was sent to.
    let first_text_to = rooms[0].subject.to_string();
    for (socket, to_b, before) in [(&sb.path, true, before_b), (&sa.path, false, before_a)] {
        let want: u64 = sent
            .iter()
            .filter(|(s, _)| (**s == first_text_to) == to_b)
            .map(|(_, n)| *n)
            .sum();
        wait_for_status(socket, "the broker to count every forged copy", |s| {
            rejected(s) >= before + want
        })
        .await;
    }
    // (d) The stream keeps message ids for its de-duplication window: junk
    // stored first under the id of a room's next messages would have the
    // genuine ones dropped as duplicates (and acked as stored). It can
    // read sender, room and seq in the headers; the ids it can make from
    // them (the old `from.room.seq`) are taken for the next 64 seqs of
    // every direction it saw.
    let mut next: std::collections::HashMap<(String, String), u64> = Default::default();
    for m in &rooms {
        let p = &m.payload;
        let seq = u64::from_be_bytes(p[36..44].try_into().unwrap());
        let key = format!("{}.{}", hex(&p[20..36]), uuid_text(&p[4..20]));
        let at = next.entry((m.subject.to_string(), key)).or_default();
        *at = (*at).max(seq + 1);
    }
    assert!(next.len() >= 3, "it saw both directions of a room");
    for ((subject, key), from) in &next {
        for seq in *from..*from + 64 {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{key}.{seq}").as_str());
            nats.publish_with_headers(subject.clone(), headers, "x".into())
                .await
                .unwrap();
        }
    }
    synced(&nats).await;
    // Nothing reached a client, and nothing was lost: the next thing each
    // sees is its partner's next text (ProtoClient also checks event seqs
    // stay contiguous).
    assert_eq!(a1.say(room, "after the storm").await, Reply::Sent);
    assert_eq!(received(&mut b1).await, "after the storm");
    assert_eq!(b1.say(room, "still here").await, Reply::Sent);
    assert_eq!(received(&mut a1).await, "still here");
    assert_eq!(b2.say(room2, "and here").await, Reply::Sent);
    assert_eq!(received(&mut a2).await, "and here");
}

/// A genuine claim replayed after its room ended, with a reply inbox of the
/// replayer's choosing, gets no answer and takes nothing: the owner
/// remembers the rooms it ended lately, counts the copy as rejected, and
/// goes on matching. (Answered, its signed refusal would tell anyone who
/// saw the claim that the room is over, and sent with the claimer's own
/// inbox it would reach the claimer.)
#[tokio::test]
async fn a_claim_replayed_after_its_room_ended_gets_no_answer() {
    let realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = realm.broker(&sa, 20_000).await;
    let _b = realm.broker(&sb, 20_000).await;
    let nats = async_nats::connect(realm.nats.url()).await.unwrap();
    let mut claims = nats
        .subscribe(format!("mcpchat.{}.claim.*", realm.name))
        .await
        .unwrap();
    synced(&nats).await;
    // a1 waits on A; B claims it for b1.
    let mut a1 = ProtoClient::connect(&sa.path).await;
    let mut b1 = ProtoClient::connect(&sb.path).await;
    let room = pair(&mut a1, &mut b1).await;
    let claim = within("the claim", futures::StreamExt::next(&mut claims))
        .await
        .unwrap();
    // A ends the room (and remembers it) before its end reaches b1.
    leave(&mut a1, room, &mut b1).await;

    let rejected = |s: &mcp_chat_proto::StatusInfo| s.federation.as_ref().map_or(0, |f| f.rejected);
    let before = rejected(&wait_for_status(&sa.path, "A's status", |_| true).await);
    let inbox = nats.new_inbox();
    let mut answers = nats.subscribe(inbox.clone()).await.unwrap();
    synced(&nats).await;
    nats.publish_with_reply(claim.subject.clone(), inbox, claim.payload.clone())
        .await
        .unwrap();
    synced(&nats).await;
    wait_for_status(&sa.path, "A to count the replayed claim", |s| {
        rejected(s) > before
    })
    .await;
    // The copy was dealt with (counted) without an answer; a later one
    // would have come from that same handling.
    synced(&nats).await;
    assert!(
        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut answers)).is_none(),
        "the replayed claim was answered"
    );
    // Both brokers match on.
    let mut a2 = ProtoClient::connect(&sa.path).await;
    let mut b2 = ProtoClient::connect(&sb.path).await;
    pair(&mut a2, &mut b2).await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A room id as the broker writes it (a hyphenated UUID) from its bytes.
fn uuid_text(bytes: &[u8]) -> String {
    let h = hex(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The README's private realm: `examples/nats/private-realm.conf` gives the
/// team's brokers their own NATS account. Brokers configured by file (the
/// default `<config dir>/mcp-chat/config.toml`, or `--config`) with their
/// password in the environment meet; an outsider's account cannot reach
/// the realm; a wrong password shows in `status`, and `mcp-chat status` and
/// `doctor` show the realm.
#[tokio::test]
async fn a_private_realm_with_nats_accounts_configured_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let conf = mcp_chat_tests::repo_root().join("examples/nats/private-realm.conf");
    let conf = conf.to_str().unwrap();
    let nats = NatsServer::start_with(dir.path(), &["-c", conf])
        .await
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let config_dir = home.path().join(".config/mcp-chat");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.toml"),
        format!("[federation]\nurl = \"{}\"\nrealm = \"team\"\n", nats.url()),
    )
    .unwrap();
    let start = |socket: &TestSocket, user: &str, password: &str| {
        let mut command = mcp_chat_testkit::BrokerChild::command(
            &mcp_chat_tests::bin_path("mcp-chat-broker"),
            &socket.path,
        );
        command
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("MCP_CHAT_NATS_USER", user)
            .env("MCP_CHAT_NATS_PASSWORD", password);
        let path = socket.path.clone();
        async move {
            mcp_chat_testkit::BrokerChild::start(command, &path)
                .await
                .unwrap()
        }
    };
    let (sa, sb, sc) = (TestSocket::new(), TestSocket::new(), TestSocket::new());
    let _a = start(&sa, "alice", "alice-change-me").await;
    let _b = start(&sb, "bob", "bob-change-me").await;
    let _c = start(&sc, "bob", "not-the-password").await;
    connected(&sa.path).await;
    connected(&sb.path).await;
    let mut a1 = ProtoClient::connect(&sa.path).await;
    let mut b1 = ProtoClient::connect(&sb.path).await;
    let room = pair(&mut a1, &mut b1).await;
    assert_eq!(a1.say(room, "just us").await, Reply::Sent);
    assert_eq!(received(&mut b1).await, "just us");

    // Another account on the same server: the realm's subjects are not
    // there (nobody answers a claim), and its JetStream is its own.
    let outsider = async_nats::ConnectOptions::with_user_and_password(
        "outsider".into(),
        "outsider-change-me".into(),
    )
    .connect(nats.url())
    .await
    .unwrap();
    let status = wait_for_status(&sa.path, "A's broker id", |s| s.federation.is_some()).await;
    assert_eq!(status.federation.unwrap().realm, "team");
    let answer = outsider
        .request(
            "mcpchat.team.claim.0123456789abcdef0123456789abcdef",
            "x".into(),
        )
        .await;
    assert_eq!(
        answer.unwrap_err().kind(),
        async_nats::RequestErrorKind::NoResponders
    );
    let js = async_nats::jetstream::new(outsider);
    assert!(js.get_stream("MCPCHAT_ROOMS_team").await.is_err());

    // A wrong password: the broker serves locally and says why.
    let status = wait_for_status(&sc.path, "C to report its login failure", |s| {
        s.federation
            .as_ref()
            .is_some_and(|f| f.last_error.is_some())
    })
    .await;
    let f = status.federation.unwrap();
    assert!(!f.connected);

    // The human subcommands show the realm.
    let run = |args: &'static [&'static str]| {
        tokio::process::Command::new(mcp_chat_tests::bin_path("mcp-chat"))
            .args(args)
            .env("MCP_CHAT_SOCKET", &sa.path)
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .stdin(std::process::Stdio::null())
            .output()
    };
    let out = within("mcp-chat status", run(&["status"])).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("realm:    team on nats://127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("connected since"), "{text}");
    let out = within("mcp-chat status --json", run(&["status", "--json"]))
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["federation"]["realm"], "team");
    assert_eq!(json["federation"]["remote_rooms"], 1);
    let out = within("mcp-chat doctor", run(&["doctor"])).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok    federation: realm team"), "{text}");
}

/// The official Python MCP SDK drives two stdio sessions, each through its
/// own `mcp-chat` on its own broker, through the seed flow (enter, match,
/// chat both ways, leave): a shim cannot tell a remote partner from a local
/// one.
#[tokio::test]
async fn python_sdk_seed_flow_across_two_brokers() {
    let realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = realm.broker(&sa, 20_000).await;
    let _b = realm.broker(&sb, 20_000).await;
    let script = mcp_chat_tests::repo_root().join("tests/interop/python/seed_flow.py");
    let mut command = tokio::process::Command::new(mcp_chat_tests::interop_python());
    command
        .arg(&script)
        .env("MCP_CHAT_BIN", mcp_chat_tests::bin_path("mcp-chat"))
        .env(
            "MCP_CHAT_BROKER",
            mcp_chat_tests::bin_path("mcp-chat-broker"),
        )
        .env("MCP_CHAT_SOCKET", &sa.path)
        .env("MCP_CHAT_SOCKET_B", &sb.path);
    let stdout = mcp_chat_tests::run_script(
        command,
        "seed_flow.py across brokers",
        std::time::Duration::from_secs(120),
    )
    .await;
    assert!(stdout.contains("seed flow: all checks passed"), "{stdout}");
}

/// A free loopback port (bound, read, released: another process could take
/// it in between, which would fail the test loudly, not wrongly).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The realm's rooms stream and its queue bucket's stream.
const REPLICATED: [&str; 2] = ["MCPCHAT_ROOMS_test", "KV_mcpchat_queue_test"];

/// The server (`n0`, `n1`, `n2`) leading `stream`, as JetStream's stream
/// info says (asked again while an election is under way).
async fn stream_leader(js: &async_nats::jetstream::Context, stream: &str) -> String {
    loop {
        // Without a leader the stream does not answer at all.
        if let Ok(mut stream) = js.get_stream(stream).await
            && let Ok(info) = stream.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            return leader;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The index in `nodes` of the node leading the realm's rooms stream, once
/// the queue bucket's stream is led by the same node (asked of the leader
/// with a preferred stepdown, until it is).
async fn leader_of_both(nodes: &[NatsServer]) -> usize {
    let [rooms, queue] = REPLICATED;
    let client = async_nats::connect(nodes[0].url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    within("the streams to have one leader", async {
        loop {
            let target = stream_leader(&js, rooms).await;
            if stream_leader(&js, queue).await == target {
                return target.trim_start_matches('n').parse().unwrap();
            }
            let answer = client
                .request(
                    format!("$JS.API.STREAM.LEADER.STEPDOWN.{queue}"),
                    serde_json::to_vec(&serde_json::json!({"placement": {"preferred": target}}))
                        .unwrap()
                        .into(),
                )
                .await
                .unwrap();
            let answer: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
            assert!(answer.get("error").is_none(), "stepdown: {answer}");
        }
    })
    .await
}

/// A 3-node NATS cluster with the realm's stream and bucket replicated 3
/// times; the node leading both is killed while 100 cross-broker pairs
/// exchange 100 messages each: nothing is lost, duplicated or reordered.
#[tokio::test]
async fn a_cluster_node_dies_mid_chat_and_nothing_is_lost() {
    const PAIRS: usize = 100;
    const MESSAGES: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let route_list = routes
        .iter()
        .map(|p| format!("nats-route://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut nodes = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let node_dir = dir.path().join(format!("n{i}"));
        std::fs::create_dir_all(&node_dir).unwrap();
        let conf = node_dir.join("node.conf");
        std::fs::write(
            &conf,
            format!(
                "server_name: n{i}\ncluster {{ name: test, listen: 127.0.0.1:{route}, routes: [{route_list}] }}\n"
            ),
        )
        .unwrap();
        let conf = conf.to_str().unwrap().to_owned();
        nodes.push(
            NatsServer::start_with(&node_dir, &["-c", &conf])
                .await
                .unwrap(),
        );
    }
    let urls = nodes
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",");
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let mut args = vec![
        "--federation",
        &urls,
        "--realm",
        "test",
        "--federation-replicas",
        "3",
    ];
    args.extend_from_slice(mcp_chat_tests::UNTHROTTLED);
    let _a = BrokerProcess::start(&sa.path, &args).await;
    let _b = BrokerProcess::start(&sb.path, &args).await;
    connected(&sa.path).await;
    connected(&sb.path).await;

    let mut pairs = Vec::new();
    for _ in 0..PAIRS {
        let mut a = ProtoClient::connect(&sa.path).await;
        let mut b = ProtoClient::connect(&sb.path).await;
        let room = pair(&mut a, &mut b).await;
        pairs.push((a, b, room));
    }
    // The node to kill: the leader of the rooms stream (the messages' Raft
    // group), with the queue bucket's leadership moved to it as well.
    let leader = leader_of_both(&nodes).await;
    let (halfway_tx, mut halfway) = tokio::sync::mpsc::channel(PAIRS);
    let (killed_tx, killed) = tokio::sync::watch::channel(false);
    let chats = pairs
        .into_iter()
        .enumerate()
        .map(|(i, (mut a, mut b, room))| {
            let halfway_tx = halfway_tx.clone();
            let mut killed = killed.clone();
            async move {
                let send = async {
                    for k in 0..MESSAGES {
                        if k == MESSAGES / 2 {
                            halfway_tx.send(()).await.unwrap();
                            killed.wait_for(|k| *k).await.unwrap();
                        }
                        assert_eq!(a.say(room, &format!("{i}:{k}")).await, Reply::Sent);
                    }
                    // A last marker: a duplicate anywhere before it would
                    // show up instead of it.
                    assert_eq!(a.say(room, "end").await, Reply::Sent);
                };
                let receive = async {
                    for k in 0..MESSAGES {
                        assert_eq!(received(&mut b).await, format!("{i}:{k}"));
                    }
                    assert_eq!(received(&mut b).await, "end");
                };
                tokio::join!(send, receive);
            }
        });
    let run = async {
        let kill = async {
            for _ in 0..PAIRS {
                halfway.recv().await.unwrap();
            }
            eprintln!("killing n{leader}, the leader of both streams");
            nodes[leader].kill().await.unwrap();
            killed_tx.send(true).unwrap();
        };
        tokio::join!(join_all(chats), kill);
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("the chats finish within 2 minutes");
    // The node killed did lead both: the survivors elected new leaders.
    let survivor = nodes
        .iter()
        .enumerate()
        .find(|(i, _)| *i != leader)
        .unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(survivor.1.url()).await.unwrap());
    for stream in REPLICATED {
        let now = within("a new leader", stream_leader(&js, stream)).await;
        assert_ne!(now, format!("n{leader}"), "{stream}");
    }
}

/// The race across brokers through the full claim protocol: on each of 3
/// brokers, 51 sessions enter one after another (each batch one entrant, so
/// every entrant creates, withdraws and claims KV entries), the three
/// brokers at once. Every session ends in exactly one room of two, except
/// at most one still waiting.
#[tokio::test]
async fn entrants_racing_one_by_one_on_three_brokers_are_matched_exactly_once() {
    const PER_BROKER: usize = 51;
    let realm = Realm::start().await;
    let sockets = [TestSocket::new(), TestSocket::new(), TestSocket::new()];
    let _brokers = join_all(sockets.iter().map(|s| realm.broker(s, 20_000))).await;
    let per_broker = join_all(sockets.iter().map(|socket| async move {
        let mut clients = Vec::new();
        for _ in 0..PER_BROKER {
            let mut c = ProtoClient::connect(&socket.path).await;
            let reply = c.enter().await;
            assert!(
                matches!(reply, Reply::Matched { .. } | Reply::Waiting { .. }),
                "{reply:?}"
            );
            clients.push(c);
        }
        clients
    }))
    .await;
    let mut clients: Vec<ProtoClient> = per_broker.into_iter().flatten().collect();
    // Settled when all but one session are in rooms, as the brokers count
    // them (a local room holds two, a room across brokers one per side).
    let mut observers = Vec::new();
    for socket in &sockets {
        observers.push(ProtoClient::connect(&socket.path).await);
    }
    within("all but one session to be in rooms", async {
        loop {
            let mut in_rooms = 0;
            for o in &mut observers {
                let s = o.status().await;
                in_rooms += 2 * s.rooms + s.federation.map_or(0, |f| f.remote_rooms);
            }
            if in_rooms == PER_BROKER * 3 - 1 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    })
    .await;
    let mut rooms = std::collections::HashMap::<RoomId, usize>::new();
    let mut waiting = 0;
    for c in &mut clients {
        // A session matched has its chatroom.found (pending from its reply
        // or still to come); the one left waiting has none, and asking
        // again tells it so.
        match c.enter().await {
            Reply::Error { code, .. } => {
                assert_eq!(code, mcp_chat_proto::ErrorCode::AlreadyInRoom);
                *rooms.entry(found(c).await).or_default() += 1;
            }
            Reply::Waiting { .. } => waiting += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(waiting, 1, "one of an odd number of sessions waits");
    assert_eq!(rooms.len(), (PER_BROKER * 3 - 1) / 2);
    assert!(rooms.values().all(|&n| n == 2), "each room has exactly two");
}

/// Matching choices under federation: the realm carries each waiter's
/// profile, so a session with a `meet` choice is never matched with a
/// remote session that does not fit; a blocked pair on one broker is never
/// matched again through the realm; and blocking a partner on another
/// machine works (more in `tests/federation_choices.rs`).
#[tokio::test]
async fn matching_choices_and_blocks_hold_across_the_realm() {
    use mcp_chat_proto::{Entry, Kind, Meet, Request};

    let realm = Realm::start().await;
    let sockets = [TestSocket::new(), TestSocket::new()];
    let _brokers = join_all(sockets.iter().map(|s| realm.broker(s, 20_000))).await;
    let [sa, sb] = &sockets;
    let enter = |entry: Entry| Request::EnterQueue(entry);

    // A person on A who meets only people waits; a remote agent entering
    // plainly on B does not get them.
    let mut person = ProtoClient::connect(&sa.path).await;
    let people_only = Entry {
        kind: Kind::Person,
        meet: Meet::People,
        ..Entry::default()
    };
    assert!(matches!(
        person.request(enter(people_only.clone())).await,
        Reply::Waiting { .. }
    ));
    let mut remote_agent = ProtoClient::connect(&sb.path).await;
    let mut local_agent = ProtoClient::connect(&sa.path).await;
    // The remote agent waits in the realm, behind the person; a plain local
    // agent meets it there: the person, older, was never a candidate.
    assert_eq!(remote_agent.enter().await, Reply::Waiting { position: 2 });
    let reply = local_agent.enter().await;
    let room = found(&mut remote_agent).await;
    assert!(met(&reply, room), "{reply:?}");
    let (found_room, partner) = found_with_partner(&mut local_agent).await;
    assert_eq!(found_room, room);
    assert_eq!(partner.partner_kind, Some(Kind::Agent));
    // A second person on A, with an interest, meets the first one.
    let mut other_person = ProtoClient::connect(&sa.path).await;
    let reply = other_person
        .request(enter(Entry {
            kind: Kind::Person,
            interests: vec!["chess".into()],
            interest_wait_s: Some(0),
            ..Entry::default()
        }))
        .await;
    let people_room = found(&mut person).await;
    assert!(met(&reply, people_room), "{reply:?}");
    let (found_room, partner) = found_with_partner(&mut other_person).await;
    assert_eq!(found_room, people_room);
    assert_eq!(partner.partner_kind, Some(Kind::Person));

    // Blocking the remote partner works, and tells the partner.
    assert_eq!(
        local_agent
            .request(Request::LeaveChat {
                room_id: room,
                block: true,
            })
            .await,
        Reply::Blocked
    );
    assert!(matches!(
        remote_agent.next_event().await,
        Event::PartnerDisconnected { .. }
    ));

    // Two plain sessions on A that blocked each other enter again, the
    // only two waiting: the realm keeps them apart.
    let (mut x, mut y, xy) = mcp_chat_tests::proto_client::matched_pair(&sa.path).await;
    assert_eq!(
        x.request(Request::LeaveChat {
            room_id: xy,
            block: true
        })
        .await,
        Reply::Blocked
    );
    assert!(matches!(
        y.next_event().await,
        Event::PartnerDisconnected { .. }
    ));
    assert!(matches!(x.enter().await, Reply::Waiting { .. }));
    assert!(matches!(y.enter().await, Reply::Waiting { .. }));
    wait_for_status(&sa.path, "both to wait, unmatched", |s| s.waiting == 2).await;
    // Whoever comes next on A, plainly, meets the first of them.
    let mut third = ProtoClient::connect(&sa.path).await;
    let reply = third.request(enter(Entry::default())).await;
    let room_x = found(&mut x).await;
    assert!(met(&reply, room_x), "{reply:?}");
}

/// A broker joined to `realm` with `grace_ms` and more flags (`extra`).
async fn broker_with(
    realm: &Realm,
    socket: &TestSocket,
    grace_ms: u64,
    extra: &[&str],
) -> BrokerProcess {
    let grace = grace_ms.to_string();
    let url = realm.nats.url();
    let mut args = vec![
        "--federation",
        &url,
        "--realm",
        &realm.name,
        "--federation-grace-ms",
        &grace,
    ];
    args.extend_from_slice(extra);
    let broker = BrokerProcess::start(&socket.path, &args).await;
    connected(&socket.path).await;
    broker
}

fn send_signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Issue 11 §4 across brokers: a receiving shim on broker B is SIGSTOPped
/// while its partner on broker A sends 16 KiB messages until B gives up on
/// it. A's `partner.disconnected` carries the exact count of messages that
/// never reached the receiver: B reports what it took in and what of that
/// its client never got, and A adds what crossed the end on the way.
#[tokio::test]
async fn a_frozen_receiver_on_another_broker_costs_the_sender_an_exact_undelivered_count() {
    use mcp_chat_tests::McpClient;
    use serde_json::json;

    let realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = broker_with(&realm, &sa, 20_000, mcp_chat_tests::UNTHROTTLED).await;
    let mut quick = mcp_chat_tests::UNTHROTTLED.to_vec();
    quick.extend(["--heartbeat-ms", "500", "--resume-grace-ms", "300"]);
    let _b = broker_with(&realm, &sb, 20_000, &quick).await;
    let mut a = McpClient::spawn(&sa.path).await;
    let mut b = McpClient::spawn(&sb.path).await;
    a.ok("enter_queue", json!({})).await;
    b.ok("enter_queue", json!({})).await;
    let room = a.expect_notification("chatroom.found").await["room_id"].clone();
    assert_eq!(
        b.expect_notification("chatroom.found").await["room_id"],
        room
    );
    let room = room.as_str().unwrap().to_owned();
    b.channel_event().await;
    send_signal(b.child.id().unwrap(), rustix::process::Signal::STOP);

    let counts = send_until_partner_gone(&mut a, &room, 20_000).await;

    send_signal(b.child.id().unwrap(), rustix::process::Signal::CONT);
    assert_delivered_or_reported(&mut b, counts).await;
}

/// A receiving broker killed with SIGKILL mid-stream reports nothing, so its
/// partner's broker counts from what it knows: the receiver's client
/// acknowledged the first messages (its broker said so on the receiver's
/// next message), and every other message answered `sent` is reported
/// `undelivered` (never stored in JetStream) or `unconfirmed` (stored, never
/// confirmed): acknowledged + undelivered + unconfirmed = sent.
#[tokio::test]
async fn a_killed_receiving_broker_leaves_counts_that_add_up() {
    const ACKNOWLEDGED: u64 = 5;
    const READ_ONLY: u64 = 7;
    let realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = broker_with(&realm, &sa, 3_000, mcp_chat_tests::UNTHROTTLED).await;
    let b_broker = broker_with(&realm, &sb, 3_000, mcp_chat_tests::UNTHROTTLED).await;
    let mut a = ProtoClient::connect(&sa.path).await;
    let mut b = ProtoClient::connect(&sb.path).await;
    let room = pair(&mut a, &mut b).await;
    let mut sent = 0u64;
    for i in 0..ACKNOWLEDGED {
        assert_eq!(a.say(room, &format!("m{i}")).await, Reply::Sent);
        sent += 1;
        assert_eq!(received(&mut b).await, format!("m{i}"));
    }
    // b acknowledges them, then speaks: its broker's message carries the
    // confirmation, so once a reads it, A knows.
    b.ack_read().await;
    assert_eq!(b.say(room, "got them").await, Reply::Sent);
    assert_eq!(received(&mut a).await, "got them");
    // Read by b but never acknowledged.
    for i in 0..READ_ONLY {
        assert_eq!(a.say(room, &format!("n{i}")).await, Reply::Sent);
        sent += 1;
        assert_eq!(received(&mut b).await, format!("n{i}"));
    }
    b_broker.signal(rustix::process::Signal::KILL);
    // a goes on sending until A gives the room up.
    let mut i = 0;
    loop {
        match a.say(room, &format!("late{i}")).await {
            Reply::Sent => sent += 1,
            Reply::Error { code, .. } => {
                assert_eq!(code, mcp_chat_proto::ErrorCode::PartnerGone);
                break;
            }
            other => panic!("{other:?}"),
        }
        i += 1;
    }
    let Event::PartnerDisconnected {
        reason,
        undelivered,
        unconfirmed,
        ..
    } = a.next_event().await
    else {
        panic!("expected partner.disconnected");
    };
    assert_eq!(reason, DisconnectReason::Disconnected);
    assert!(
        unconfirmed + undelivered >= READ_ONLY,
        "{unconfirmed} {undelivered}"
    );
    assert_eq!(
        ACKNOWLEDGED + undelivered + unconfirmed,
        sent,
        "every message answered sent is confirmed or reported ({undelivered} undelivered, {unconfirmed} unconfirmed)"
    );
}

/// A link that cannot get its messages stored (the NATS server is stopped
/// with SIGSTOP) holds the sender back with `rate_limited` and a retry
/// hint, as a local partner's full backlog does, instead of ending the room
/// with `federation_lost`; once the server runs again every message arrives,
/// in order, and the room goes on.
#[tokio::test]
async fn a_stalled_link_holds_the_sender_back_and_loses_nothing() {
    const TOTAL: u64 = 800;
    let realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = broker_with(&realm, &sa, 60_000, mcp_chat_tests::UNTHROTTLED).await;
    let _b = broker_with(&realm, &sb, 60_000, mcp_chat_tests::UNTHROTTLED).await;
    let mut a = ProtoClient::connect(&sa.path).await;
    let mut b = ProtoClient::connect(&sb.path).await;
    let room = pair(&mut a, &mut b).await;

    send_signal(realm.nats.pid(), rustix::process::Signal::STOP);
    let mut sent = 0u64;
    loop {
        match a.say(room, &format!("m{sent}")).await {
            Reply::Sent => sent += 1,
            Reply::Error {
                code,
                retry_after_ms,
                ..
            } => {
                assert_eq!(code, mcp_chat_proto::ErrorCode::RateLimited);
                assert!(retry_after_ms.is_some_and(|ms| ms > 0));
                break;
            }
            other => panic!("{other:?}"),
        }
        assert!(sent < TOTAL, "the sender was never held back");
    }
    send_signal(realm.nats.pid(), rustix::process::Signal::CONT);
    while sent < TOTAL {
        match a.say(room, &format!("m{sent}")).await {
            Reply::Sent => sent += 1,
            Reply::Error {
                code: mcp_chat_proto::ErrorCode::RateLimited,
                retry_after_ms,
                ..
            } => {
                // The broker's own back-off hint, as a client honours it.
                let wait = retry_after_ms.unwrap_or(100);
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    for i in 0..TOTAL {
        assert_eq!(received(&mut b).await, format!("m{i}"));
    }
    // The room is whole: b's reply is a's very next event (no
    // partner.disconnected came before it).
    assert_eq!(b.say(room, "all here").await, Reply::Sent);
    assert_eq!(received(&mut a).await, "all here");
}

/// A broker stopped with SIGTERM tells its remote partners
/// `partner.disconnected {shutdown}` before it leaves the realm, instead of
/// falling silent (which they would hear as `disconnected` after the
/// grace, here longer than the test waits).
#[tokio::test]
async fn a_broker_shutdown_reaches_remote_partners_as_shutdown() {
    let realm = Realm::start().await;
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let _a = realm.broker(&sa, 60_000).await;
    let mut b_broker = realm.broker(&sb, 60_000).await;
    let mut a = ProtoClient::connect(&sa.path).await;
    let mut b = ProtoClient::connect(&sb.path).await;
    let room = pair(&mut a, &mut b).await;
    assert_eq!(a.say(room, "before").await, Reply::Sent);
    assert_eq!(received(&mut b).await, "before");
    b_broker.terminate();
    assert_eq!(
        a.next_event().await,
        Event::PartnerDisconnected {
            room_id: room,
            reason: DisconnectReason::Shutdown,
            undelivered: 0,
            unconfirmed: 0,
        }
    );
    assert!(b_broker.wait_exit().await.success());
    // A serves on.
    let mut a2 = ProtoClient::connect(&sa.path).await;
    assert_eq!(a2.enter().await, Reply::Waiting { position: 1 });
}
