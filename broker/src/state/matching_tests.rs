//! Interests, kinds and blocks, through the hub's own entry points.

use std::time::Duration;

use mcp_chat_proto::matching::Entry;
use mcp_chat_proto::{BrokerMsg, ErrorCode, Event, Kind, MatchInfo, Meet, Reply, Request, RoomId};

use super::rule::fit;
use super::tests::{Client, ask, events, join, new_state};
use super::{Liveness, Place, SessionId, State};

fn entry(tags: &[&str]) -> Entry {
    Entry {
        interests: tags.iter().map(|t| (*t).to_owned()).collect(),
        ..Entry::default()
    }
}

fn enter(state: &mut State, client: &mut Client, entry: Entry) -> Reply {
    ask(state, client, Request::EnterQueue(entry)).0
}

/// The room and match info of the one `chatroom_found` a client got.
fn found(client: &mut Client) -> (RoomId, MatchInfo) {
    match events(client).as_slice() {
        [Event::ChatroomFound { room_id, partner }] => (*room_id, partner.clone()),
        other => panic!("{other:?}"),
    }
}

/// What the newcomer whose `reply` this is learned of its match with
/// `other`; both sides are told the same interests.
fn matched_with(reply: &Reply, other: &mut Client) -> MatchInfo {
    let (room, theirs) = found(other);
    match reply {
        Reply::Matched { room_id, partner } if *room_id == room => {
            assert_eq!(partner.common_interests, theirs.common_interests);
            partner.clone()
        }
        other => panic!("{other:?}"),
    }
}

fn leave(state: &mut State, client: &mut Client, room_id: RoomId, block: bool) {
    assert_eq!(
        ask(state, client, Request::LeaveChat { room_id, block }).0,
        if block { Reply::Blocked } else { Reply::Left }
    );
}

#[test]
fn shared_interests_first_and_fifo_within_a_tag() {
    let mut state = new_state(100);
    let mut open = join(&mut state, 64);
    let mut a = join(&mut state, 64);
    let mut b = join(&mut state, 64);
    // An open waiter (no interests) is not taken by a session still
    // hoping for a shared interest.
    assert!(matches!(
        enter(&mut state, &mut open, Entry::default()),
        Reply::Waiting { .. }
    ));
    assert!(matches!(
        enter(&mut state, &mut a, entry(&["chess"])),
        Reply::Waiting { .. }
    ));
    let reply = enter(&mut state, &mut b, entry(&["go", "Chess "]));
    let info = matched_with(&reply, &mut a);
    assert_eq!(info.common_interests, vec!["chess"]);
    assert_eq!(info.partner_kind, Some(Kind::Agent));
    assert_eq!(state.sessions[&open.id].place, Place::Waiting);

    // Two agents who meet only people wait in the same line without
    // meeting each other; people then meet them in arrival order.
    let only_people = Entry {
        meet: Meet::People,
        ..entry(&["go"])
    };
    let person = Entry {
        kind: Kind::Person,
        ..entry(&["go"])
    };
    let mut first = join(&mut state, 64);
    let mut second = join(&mut state, 64);
    enter(&mut state, &mut first, only_people.clone());
    assert!(matches!(
        enter(&mut state, &mut second, only_people),
        Reply::Waiting { .. }
    ));
    let mut p1 = join(&mut state, 64);
    let mut p2 = join(&mut state, 64);
    let reply = enter(&mut state, &mut p1, person.clone());
    assert_eq!(
        matched_with(&reply, &mut first).common_interests,
        vec!["go"]
    );
    let reply = enter(&mut state, &mut p2, person);
    assert_eq!(
        matched_with(&reply, &mut second).partner_kind,
        Some(Kind::Agent)
    );
}

#[test]
fn the_older_of_two_sharers_wins_whatever_the_tag() {
    let mut state = new_state(100);
    let mut first = join(&mut state, 64);
    let mut second = join(&mut state, 64);
    let mut newcomer = join(&mut state, 64);
    enter(&mut state, &mut first, entry(&["rust"]));
    enter(&mut state, &mut second, entry(&["chess"]));
    // The newcomer lists chess first, but rust's waiter came earlier.
    let reply = enter(&mut state, &mut newcomer, entry(&["chess", "rust"]));
    assert_eq!(
        matched_with(&reply, &mut first).common_interests,
        vec!["rust"]
    );
    assert_eq!(state.sessions[&second.id].place, Place::Waiting);
}

#[tokio::test(start_paused = true)]
async fn after_the_interest_wait_anyone_compatible_will_do() {
    let mut state = new_state(100);
    let mut hopeful = join(&mut state, 64);
    let mut plain = join(&mut state, 64);
    let wait = Entry {
        interest_wait_s: Some(5),
        ..entry(&["chess"])
    };
    enter(&mut state, &mut hopeful, wait);
    assert!(matches!(
        enter(&mut state, &mut plain, Entry::default()),
        Reply::Waiting { .. }
    ));
    assert_eq!(
        state.next_deadline(),
        Some(tokio::time::Instant::now() + Duration::from_secs(5))
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    state.expire(tokio::time::Instant::now());
    // Both have been quiet past the freshness window: each is pinged, and
    // matched once it answers.
    assert!(matches!(hopeful.rx.try_recv(), Ok(BrokerMsg::Ping { .. })));
    state.alive(hopeful.id, hopeful.connection);
    assert!(matches!(plain.rx.try_recv(), Ok(BrokerMsg::Ping { .. })));
    state.alive(plain.id, plain.connection);
    let (room, info) = found(&mut hopeful);
    assert_eq!(found(&mut plain).0, room);
    assert!(info.common_interests.is_empty());
}

#[test]
fn a_zero_interest_wait_is_open_at_once() {
    let mut state = new_state(100);
    let mut plain = join(&mut state, 64);
    let mut eager = join(&mut state, 64);
    enter(&mut state, &mut plain, Entry::default());
    let reply = enter(
        &mut state,
        &mut eager,
        Entry {
            interest_wait_s: Some(0),
            ..entry(&["chess"])
        },
    );
    assert!(matched_with(&reply, &mut plain).common_interests.is_empty());
}

#[test]
fn meet_compatibility_in_all_nine_combinations() {
    use Meet::{Agents, Anyone, People};
    for (agent_meets, person_meets, meet) in [
        (Anyone, Anyone, true),
        (Anyone, Agents, true),
        (Anyone, People, false),
        (Agents, Anyone, false),
        (Agents, Agents, false),
        (Agents, People, false),
        (People, Anyone, true),
        (People, Agents, true),
        (People, People, false),
    ] {
        let mut state = new_state(100);
        let mut agent = join(&mut state, 64);
        let mut person = join(&mut state, 64);
        enter(
            &mut state,
            &mut agent,
            Entry {
                meet: agent_meets,
                ..Entry::default()
            },
        );
        let reply = enter(
            &mut state,
            &mut person,
            Entry {
                meet: person_meets,
                kind: Kind::Person,
                ..Entry::default()
            },
        );
        let case = format!("agent meets {agent_meets}, person meets {person_meets}");
        if meet {
            let info = matched_with(&reply, &mut agent);
            assert_eq!(info.partner_kind, Some(Kind::Agent), "{case}");
            let Reply::Matched { .. } = reply else {
                unreachable!()
            };
        } else {
            assert!(matches!(reply, Reply::Waiting { .. }), "{case}");
            assert!(events(&mut agent).is_empty(), "{case}");
        }
    }
}

#[test]
fn the_partner_kind_is_told_to_each_side() {
    let mut state = new_state(100);
    let mut agent = join(&mut state, 64);
    let mut person = join(&mut state, 64);
    enter(&mut state, &mut agent, Entry::default());
    let reply = enter(
        &mut state,
        &mut person,
        Entry {
            kind: Kind::Person,
            ..Entry::default()
        },
    );
    assert_eq!(
        matched_with(&reply, &mut agent).partner_kind,
        Some(Kind::Agent)
    );
    let Reply::Matched { room_id, .. } = reply else {
        unreachable!()
    };
    assert_eq!(
        state.match_info(agent.id, room_id).partner_kind,
        Some(Kind::Person)
    );
}

#[test]
fn blocked_sessions_never_meet_again_even_alone_in_the_queue() {
    let mut state = new_state(100);
    let mut a = join(&mut state, 64);
    let mut b = join(&mut state, 64);
    enter(&mut state, &mut a, Entry::default());
    let reply = enter(&mut state, &mut b, Entry::default());
    matched_with(&reply, &mut a);
    let Reply::Matched { room_id, .. } = reply else {
        unreachable!()
    };
    leave(&mut state, &mut a, room_id, true);
    events(&mut b);
    // b enters again (its room is closed for it), then a: both wait.
    assert!(matches!(
        enter(&mut state, &mut b, Entry::default()),
        Reply::Waiting { .. }
    ));
    assert!(matches!(
        enter(&mut state, &mut a, Entry::default()),
        Reply::Waiting { .. }
    ));
    assert_eq!(state.status().waiting, 2);
    // Anyone else meets the one waiting longest.
    let mut c = join(&mut state, 64);
    let reply = enter(&mut state, &mut c, Entry::default());
    matched_with(&reply, &mut b);
    assert_eq!(state.sessions[&a.id].place, Place::Waiting);
}

#[test]
fn a_block_binds_installations_across_sessions_and_after_the_partner_left() {
    let mut state = new_state(100);
    let with_id = |id: &str| Entry {
        block_id: Some(id.to_owned()),
        ..Entry::default()
    };
    let mut a = join(&mut state, 64);
    let mut b = join(&mut state, 64);
    enter(&mut state, &mut a, with_id("installation-a"));
    let reply = enter(&mut state, &mut b, with_id("installation-b"));
    matched_with(&reply, &mut a);
    let Reply::Matched { room_id, .. } = reply else {
        unreachable!()
    };
    // b leaves first; a blocks b afterwards, from the room b left.
    leave(&mut state, &mut b, room_id, false);
    events(&mut a);
    leave(&mut state, &mut a, room_id, true);
    // New sessions of the same two installations.
    let mut a2 = join(&mut state, 64);
    let mut b2 = join(&mut state, 64);
    enter(&mut state, &mut a2, with_id("installation-a"));
    assert!(matches!(
        enter(&mut state, &mut b2, with_id("installation-b")),
        Reply::Waiting { .. }
    ));
    let mut c = join(&mut state, 64);
    let reply = enter(&mut state, &mut c, with_id("installation-c"));
    matched_with(&reply, &mut a2);
}

#[test]
fn invalid_options_are_refused_and_nothing_is_queued() {
    let mut state = new_state(100);
    let mut a = join(&mut state, 64);
    for bad in [
        entry(&["a", "b", "c", "d", "e", "f"]),
        entry(&[&"x".repeat(33)]),
        entry(&["c++"]),
        entry(&[" "]),
        Entry {
            interest_wait_s: Some(51),
            ..Entry::default()
        },
        Entry {
            meet: Meet::Unknown,
            ..Entry::default()
        },
        Entry {
            kind: Kind::Unknown,
            ..Entry::default()
        },
    ] {
        match enter(&mut state, &mut a, bad.clone()) {
            Reply::Error {
                code: ErrorCode::InvalidArguments,
                ..
            } => {}
            other => panic!("{bad:?}: {other:?}"),
        }
        assert_eq!(state.status().waiting, 0);
    }
}

#[test]
fn status_shows_the_busiest_interests() {
    let mut state = new_state(100);
    let mut clients: Vec<Client> = (0..6).map(|_| join(&mut state, 64)).collect();
    let tags: [&[&str]; 6] = [
        &["go"],
        &["chess", "rust"],
        &["rust"],
        &["RUST"],
        &["jazz"],
        &[],
    ];
    // Nobody shares with anyone waiting except the rust ones, who pair up.
    for (client, tags) in clients.iter_mut().zip(tags) {
        enter(&mut state, client, entry(tags));
    }
    let status = state.status();
    assert_eq!(status.waiting, 4);
    let shown: Vec<(&str, usize)> = status
        .interests
        .iter()
        .map(|c| (c.interest.as_str(), c.waiting))
        .collect();
    assert_eq!(shown, vec![("go", 1), ("jazz", 1), ("rust", 1)]);
}

/// A tiny deterministic generator, so the model test needs no crate.
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

/// Against the rule applied by brute force: after every step no two
/// waiters who may meet are both left waiting, and every match a newcomer
/// gets is the best fit, earliest arrival first.
#[tokio::test(start_paused = true)]
async fn the_index_agrees_with_the_rule_by_brute_force() {
    let liveness = Liveness {
        fresh: Duration::from_secs(86_400),
        ..Liveness::default()
    };
    let config = crate::config::Config::default();
    let mut state = State::new(10_000, liveness, config.limits());
    let mut rng = Lcg(7);
    let tags: Vec<String> = (0..40).map(|t| format!("t{t}")).collect();
    let mut clients: Vec<Client> = Vec::new();
    let (mut matches, mut blocks, mut most_waiting) = (0, 0, 0);
    for step in 0..3000 {
        match rng.below(20) {
            0..=11 => {
                let mut client = join(&mut state, 4096);
                let n = rng.below(3) as usize;
                let chosen: Vec<&str> = (0..n)
                    .map(|_| tags[rng.below(40) as usize].as_str())
                    .collect();
                let e = Entry {
                    interests: chosen.iter().map(|t| (*t).to_owned()).collect(),
                    interest_wait_s: Some(rng.below(30)),
                    meet: [Meet::Anyone, Meet::Agents, Meet::People][rng.below(3) as usize],
                    kind: [Kind::Agent, Kind::Person][rng.below(2) as usize],
                    block_id: Some(format!("i{}", rng.below(1000))),
                };
                let expected = best_by_brute_force(&state, client.id, &e);
                let reply = enter(&mut state, &mut client, e);
                let got = match reply {
                    Reply::Matched { room_id, .. } => state.rooms[&room_id]
                        .members
                        .iter()
                        .copied()
                        .find(|&m| m != client.id),
                    _ => None,
                };
                assert_eq!(got, expected, "step {step}");
                matches += usize::from(got.is_some());
                clients.push(client);
            }
            12 => {
                tokio::time::advance(Duration::from_secs(rng.below(2) + 1)).await;
                state.expire(tokio::time::Instant::now());
            }
            _ => {
                // Someone in a room leaves, blocking half the time.
                let in_room: Vec<usize> = (0..clients.len())
                    .filter(|&i| {
                        matches!(
                            state.sessions.get(&clients[i].id).map(|s| s.place),
                            Some(Place::InRoom(_))
                        )
                    })
                    .collect();
                if in_room.is_empty() {
                    continue;
                }
                let i = in_room[rng.below(in_room.len() as u64) as usize];
                let Some(Place::InRoom(room_id)) =
                    state.sessions.get(&clients[i].id).map(|s| s.place)
                else {
                    continue;
                };
                let block = rng.below(2) == 0;
                blocks += usize::from(block);
                leave(&mut state, &mut clients[i], room_id, block);
            }
        }
        for client in &mut clients {
            while client.rx.try_recv().is_ok() {}
        }
        assert_stable(&state, step);
        most_waiting = most_waiting.max(state.status().waiting);
    }
    // The run was not vacuous.
    assert!(
        matches > 300 && blocks > 50,
        "{matches} matches, {blocks} blocks"
    );
    assert!(
        most_waiting > 30,
        "at most {most_waiting} waiting to compare against"
    );
}

/// Who `newcomer`, entering with `e`, should meet under the rule.
fn best_by_brute_force(state: &State, newcomer: SessionId, e: &Entry) -> Option<SessionId> {
    let checked = e.checked().ok()?;
    let me = super::rule::Profile {
        kind: checked.kind,
        meet: checked.meet,
        interests: checked
            .interests
            .iter()
            .map(|t| std::sync::Arc::from(t.as_str()))
            .collect(),
    };
    let me_open = checked.interests.is_empty() || checked.interest_wait_s == 0;
    let my_identity = super::rule::Identity {
        session: newcomer,
        installation: e
            .block_id
            .as_deref()
            .map(|id| crate::block_file::installation_hash(&state.block_key, id)),
    };
    state
        .pool
        .waiting()
        .into_iter()
        .filter(|&w| state.pool.is_listed(w))
        .filter_map(|w| {
            let (them, open) = state.pool.profile(w)?;
            let how = fit(&me, me_open, them, open)?;
            let arrival = state.pool.arrival(w)?;
            (!state.blocks.blocked(my_identity, state.identity(w))).then_some((
                how.rank(),
                arrival,
                w,
            ))
        })
        .min()
        .map(|(_, _, w)| w)
}

fn assert_stable(state: &State, step: usize) {
    let waiting: Vec<SessionId> = state
        .pool
        .waiting()
        .into_iter()
        .filter(|&w| state.pool.is_listed(w))
        .collect();
    for (i, &x) in waiting.iter().enumerate() {
        for &y in &waiting[i + 1..] {
            let (px, ox) = state.pool.profile(x).unwrap();
            let (py, oy) = state.pool.profile(y).unwrap();
            assert!(
                fit(px, ox, py, oy).is_none()
                    || state.blocks.blocked(state.identity(x), state.identity(y)),
                "step {step}: {x} and {y} could meet but both wait"
            );
        }
    }
}
