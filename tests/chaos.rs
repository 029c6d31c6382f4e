//! Chaos: `mcp-chat` shims chatting in pairs while the broker and some of
//! the shims are killed with SIGKILL. Afterwards every surviving client can
//! enter the queue and chat again, and no message vanished silently.
//!
//! The shims start their own broker (as they do for real users). While all
//! pairs chat, one shim is killed, then the broker, then, while the shims
//! are reconnecting, a second shim; the survivors' shims start a new broker
//! by themselves and the load goes on. Which shims die is chosen by a fixed
//! seed (`MCP_CHAT_CHAOS_SEED`). Each driver reads its events by pull
//! (`events` of every tool result and `wait_for_events`), which delivers
//! every event exactly once, numbered by `seq`, so the record is complete.
//!
//! The rule checked at the end, for every message `m` that sender `S` sent
//! in room `R`, whose other member is `P`:
//! - if `send_message` returned `sent`, `P` received `m` exactly once, in
//!   `R`, after `S`'s earlier messages in `R`. Two exceptions, each reported
//!   to someone: `P` was killed (whatever it had received died with it, and
//!   `S` was told `partner.disconnected`), or `R` ended with the broker,
//!   which a member of `R` was told as `partner.disconnected` with reason
//!   `broker_restart` (or `broker_lost`): a message the dead broker had
//!   accepted but not yet handed to `P`'s shim is gone, and both ends know
//!   the room is.
//! - if it returned an error, `m` may still have arrived only when the
//!   error was `broker_lost` (the broker relayed it and died before it
//!   answered); after any other error it must not arrive.
//! - nothing arrives that was not sent, and no `seq` is skipped.
//!
//! Also: every survivor whose partner was killed is told
//! `partner.disconnected` for that room, and at least one survivor is told
//! `broker_restart`.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mcp_chat_tests::{AutoStartedBroker, McpClient, TestSocket, within};
use rmcp::model::CallToolResult;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

/// Shims in the test; two are killed, so the survivors pair up evenly.
const SHIMS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Run,
    Stop,
    Kill,
}

/// How many messages each driver has received; wakes the test on change.
struct Progress {
    received: Vec<AtomicUsize>,
    changed: Notify,
}

impl Progress {
    fn received(&self) -> Vec<usize> {
        self.received
            .iter()
            .map(|r| r.load(Ordering::SeqCst))
            .collect()
    }

    /// Waits until `done` holds for the received counts.
    async fn until(&self, what: &str, done: impl Fn(&[usize]) -> bool) {
        within(what, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(&self.received()) {
                    return;
                }
                changed.await;
            }
        })
        .await;
    }
}

/// One `send_message` and what it returned.
#[derive(Debug)]
struct Sent {
    n: u64,
    room: String,
    /// `None` for `sent`, else the error code.
    error: Option<String>,
}

/// One shim, its driver's view and its complete record.
struct Shim {
    id: usize,
    client: McpClient,
    /// The room this client believes it is in.
    room: Option<String>,
    next_n: u64,
    last_seq: u64,
    sends: Vec<Sent>,
    /// `(sender, n, room)` in arrival order.
    received: Vec<(usize, u64, String)>,
    /// `partner.disconnected` events: `(room, reason)`.
    gone: Vec<(String, String)>,
    rooms: HashSet<String>,
    /// Set when killed: the room it was in at that moment.
    killed_in: Option<Option<String>>,
    /// The last calls and events, for failure messages.
    trail: VecDeque<String>,
}

impl Shim {
    fn new(id: usize, client: McpClient) -> Self {
        Self {
            id,
            client,
            room: None,
            next_n: 0,
            last_seq: 0,
            sends: Vec::new(),
            received: Vec::new(),
            gone: Vec::new(),
            rooms: HashSet::new(),
            killed_in: None,
            trail: VecDeque::new(),
        }
    }

    /// Calls a tool; returns its JSON (the failure JSON for an error
    /// result) after taking the events it carries.
    async fn call(&mut self, tool: &str, arguments: Value) -> Result<Value, Value> {
        let call = format!("{tool} {arguments}");
        let result = self.client.call(tool, arguments).await;
        let (body, failed) = body(&result);
        self.note(format!("{call} -> {body}"));
        self.absorb(&body);
        if failed { Err(body) } else { Ok(body) }
    }

    fn absorb(&mut self, body: &Value) {
        let Some(events) = body.get("events").and_then(Value::as_array) else {
            return;
        };
        for event in events {
            let seq = event["seq"].as_u64().unwrap();
            assert_eq!(
                seq,
                self.last_seq + 1,
                "shim {}: event seq must be contiguous: {event}",
                self.id
            );
            self.last_seq = seq;
            let room = event["room_id"].as_str().unwrap_or_default().to_owned();
            match event["type"].as_str().unwrap() {
                "chatroom.found" => {
                    assert!(
                        self.room.is_none() || self.room.as_ref() == Some(&room),
                        "shim {}: chatroom.found for {room} while in {:?}, whose end was never reported; lately: {:#?}",
                        self.id,
                        self.room,
                        self.trail
                    );
                    self.join(room);
                }
                "message.received" => {
                    let (sender, n) = parse(event["message"].as_str().unwrap());
                    self.received.push((sender, n, room));
                }
                "partner.disconnected" => {
                    if self.room.as_ref() == Some(&room) {
                        self.room = None;
                    }
                    let reason = event["reason"].as_str().unwrap().to_owned();
                    self.gone.push((room, reason));
                }
                other => panic!("shim {}: unexpected event {other}: {event}", self.id),
            }
        }
    }

    fn note(&mut self, what: String) {
        if self.trail.len() == 12 {
            self.trail.pop_front();
        }
        self.trail.push_back(what);
    }

    fn join(&mut self, room: String) {
        self.rooms.insert(room.clone());
        self.room = Some(room);
    }

    async fn enter(&mut self, wait_s: u64) -> Result<Value, Value> {
        let result = self.call("enter_queue", json!({"wait_s": wait_s})).await;
        if let Ok(body) = &result
            && body["status"] == "matched"
        {
            self.join(body["room_id"].as_str().unwrap().to_owned());
        }
        result
    }

    async fn send(&mut self, room: &str) -> Result<Value, Value> {
        let n = self.next_n;
        self.next_n += 1;
        let message = format!("s{}:{n}", self.id);
        let result = self
            .call("send_message", json!({"room_id": room, "message": message}))
            .await;
        let error = result
            .as_ref()
            .err()
            .map(|e| e["error"].as_str().unwrap().to_owned());
        self.sends.push(Sent {
            n,
            room: room.to_owned(),
            error,
        });
        result
    }

    /// Chats until told to stop or die: enters the queue when not in a
    /// room, else sends a message and waits briefly for events.
    async fn drive(mut self, mut orders: watch::Receiver<Order>, progress: Arc<Progress>) -> Self {
        loop {
            let order = *orders.borrow_and_update();
            match order {
                Order::Run => {}
                Order::Stop => return self,
                Order::Kill => {
                    self.killed_in = Some(self.room.clone());
                    self.client.child.start_kill().unwrap();
                    within("killed shim to exit", self.client.child.wait())
                        .await
                        .unwrap();
                    return self;
                }
            }
            let before = self.received.len();
            match self.room.clone() {
                None => {
                    // Waiting or broker trouble: either way, try again.
                    let _ = self.enter(2).await;
                }
                Some(room) => {
                    match self.send(&room).await {
                        Ok(_) => {}
                        Err(failure) => match failure["error"].as_str().unwrap() {
                            "rate_limited" => {
                                // The broker's pace, not a synchronisation.
                                let ms = failure["retry_after_ms"].as_u64().unwrap_or(50);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            // The room is over; its notice may still be on
                            // its way, the next round trip brings it.
                            "partner_gone" | "unknown_room" => {
                                if self.room.as_ref() == Some(&room) {
                                    self.room = None;
                                }
                            }
                            "broker_lost" | "broker_unreachable" => {}
                            other => panic!("shim {}: send failed with {other}", self.id),
                        },
                    }
                    let _ = self.call("wait_for_events", json!({"timeout_s": 1})).await;
                }
            }
            if self.received.len() != before {
                progress.received[self.id].store(self.received.len(), Ordering::SeqCst);
                progress.changed.notify_waiters();
            }
        }
    }
}

/// A tool result as JSON, and whether it was an error result.
fn body(result: &CallToolResult) -> (Value, bool) {
    if result.is_error == Some(true) {
        let text = result
            .content
            .first()
            .and_then(|c| c.as_text())
            .map(|t| t.text.clone())
            .unwrap();
        (serde_json::from_str(&text).unwrap(), true)
    } else {
        (result.structured_content.clone().unwrap(), false)
    }
}

/// `s<sender>:<n>`.
fn parse(message: &str) -> (usize, u64) {
    let (sender, n) = message.strip_prefix('s').unwrap().split_once(':').unwrap();
    (sender.parse().unwrap(), n.parse().unwrap())
}

struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        usize::try_from(x % u64::try_from(n).unwrap()).unwrap()
    }
}

/// Waits of `enter_queue` (15 s each) a live shim gets to be matched once
/// the chaos stops.
const MATCH_WAITS: usize = 4;

async fn broker_gone(broker: &AutoStartedBroker) {
    within("the killed broker to be gone", async {
        // Not our child: there is no exit to wait on, so look.
        while broker.is_alive() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_broker_and_shims_loses_nothing_silently() {
    let seed = std::env::var("MCP_CHAT_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xc4a0_5eed_u64);
    let mut rng = XorShift(seed);
    let socket = TestSocket::new();

    let clients =
        futures::future::join_all((0..SHIMS).map(|_| McpClient::spawn(&socket.path))).await;
    let progress = Arc::new(Progress {
        received: (0..SHIMS).map(|_| AtomicUsize::new(0)).collect(),
        changed: Notify::new(),
    });
    let mut orders = Vec::new();
    let mut drivers = Vec::new();
    for (id, client) in clients.into_iter().enumerate() {
        let (tx, rx) = watch::channel(Order::Run);
        orders.push(tx);
        drivers.push(Some(tokio::spawn(
            Shim::new(id, client).drive(rx, Arc::clone(&progress)),
        )));
    }
    let mut finished: BTreeMap<usize, Shim> = BTreeMap::new();

    // 1. Every pair is chatting.
    progress
        .until("every shim to receive 5 messages", |r| {
            r.iter().all(|&n| n >= 5)
        })
        .await;
    let first_victim = rng.below(SHIMS);
    let second_victim = (first_victim + 1 + rng.below(SHIMS - 1)) % SHIMS;
    let survivors: Vec<usize> = (0..SHIMS)
        .filter(|&i| i != first_victim && i != second_victim)
        .collect();

    // 2. A shim dies mid-chat; the rest keep going.
    orders[first_victim].send(Order::Kill).unwrap();
    let killed = drivers[first_victim].take().unwrap().await.unwrap();
    finished.insert(first_victim, killed);
    let base: usize = progress.received().iter().sum();
    progress
        .until("the others to chat on", |r| {
            r.iter().sum::<usize>() >= base + 20
        })
        .await;

    // 3. The broker dies; at once, while the shims reconnect, a second shim.
    let old_broker = AutoStartedBroker::find(&socket.path).expect("a broker the shims started");
    old_broker.kill("KILL");
    broker_gone(&old_broker).await;
    orders[second_victim].send(Order::Kill).unwrap();
    let killed = drivers[second_victim].take().unwrap().await.unwrap();
    finished.insert(second_victim, killed);

    // 4. The survivors' shims brought a new broker up by themselves, and
    //    every survivor chats again.
    let at_restart = progress.received();
    progress
        .until("every survivor to chat after the restart", |r| {
            survivors.iter().all(|&i| r[i] >= at_restart[i] + 10)
        })
        .await;
    let new_broker = AutoStartedBroker::find(&socket.path).expect("a new broker");
    assert_ne!(new_broker.pid, old_broker.pid, "the broker was restarted");
    assert!(new_broker.is_alive());
    let old_pid = old_broker.pid;
    drop(old_broker);

    // 5. Stop the load. Every send has its outcome.
    for &i in &survivors {
        orders[i].send(Order::Stop).unwrap();
    }
    for &i in &survivors {
        let shim = drivers[i].take().unwrap().await.unwrap();
        finished.insert(i, shim);
    }

    // 6. Every survivor can enter the queue and chat again.
    let mut alive: Vec<Shim> = survivors
        .iter()
        .map(|i| finished.remove(i).unwrap())
        .collect();
    chat_again(&mut alive).await;

    let mut shims: Vec<Shim> = alive;
    shims.extend(finished.into_values());
    shims.sort_by_key(|s| s.id);
    let report = audit(&shims);
    eprintln!(
        "chaos (seed {seed:#x}, killed shims {first_victim} and {second_victim}, broker pid {old_pid} restarted as {}): {report}",
        new_broker.pid,
    );
}

/// Each survivor leaves whatever room it is in, then all enter the queue
/// at once; they must pair up, and each pair trades one message each way.
async fn chat_again(alive: &mut [Shim]) {
    for shim in alive.iter_mut() {
        let _ = shim.call("wait_for_events", json!({"timeout_s": 0})).await;
        if let Some(room) = shim.room.take() {
            // `left`, or the room is already gone: either is fine here.
            match shim.call("leave_chat", json!({"room_id": room})).await {
                Ok(body) => assert_eq!(body["status"], "left"),
                Err(failure) => assert!(
                    ["partner_gone", "unknown_room"].contains(&failure["error"].as_str().unwrap()),
                    "shim {}: leave_chat: {failure}",
                    shim.id
                ),
            }
        }
    }
    let entered = futures::future::join_all(alive.iter_mut().map(|shim| async move {
        // Waiting for the match itself: on a loaded machine one wait may
        // run out first, and asking again keeps the place in the queue.
        for _ in 0..MATCH_WAITS {
            match shim.enter(15).await {
                Ok(body) if body["status"] == "matched" => return shim.room.clone().unwrap(),
                Ok(body) => assert_eq!(body["status"], "waiting", "shim {}: {body}", shim.id),
                // Matched just as the load stopped, with the news still on its
                // way: that room serves as well as a new one.
                Err(failure) if failure["error"] == "already_in_room" => {
                    return shim.room.clone().expect("the match came with the error");
                }
                Err(failure) => panic!("shim {}: enter_queue failed: {failure}", shim.id),
            }
        }
        panic!(
            "shim {}: not matched in {MATCH_WAITS} waits of 15 s",
            shim.id
        )
    }))
    .await;
    let mut rooms: HashMap<String, Vec<usize>> = HashMap::new();
    for (index, room) in entered.into_iter().enumerate() {
        rooms.entry(room).or_default().push(index);
    }
    for (room, members) in rooms {
        assert_eq!(members.len(), 2, "room {room} has {members:?}");
        for (from, to) in [(members[0], members[1]), (members[1], members[0])] {
            let sender = alive[from].id;
            let sent = alive[from].send(&room).await;
            assert!(sent.is_ok(), "shim {sender} cannot chat again: {sent:?}");
            let n = alive[from].next_n - 1;
            let receiver = &mut alive[to];
            within("the message after the chaos", async {
                while !receiver.received.contains(&(sender, n, room.clone())) {
                    let _ = receiver
                        .call("wait_for_events", json!({"timeout_s": 10}))
                        .await;
                }
            })
            .await;
        }
    }
}

/// Checks the rule in the module docs over every shim's record; returns
/// the figures.
fn audit(shims: &[Shim]) -> String {
    let killed: HashSet<usize> = shims
        .iter()
        .filter(|s| s.killed_in.is_some())
        .map(|s| s.id)
        .collect();
    let mut members: HashMap<&str, Vec<usize>> = HashMap::new();
    for shim in shims {
        for room in &shim.rooms {
            members.entry(room).or_default().push(shim.id);
        }
    }
    // Rooms some member was told had ended with the broker.
    let died_with_broker: HashSet<&str> = shims
        .iter()
        .flat_map(|s| &s.gone)
        .filter(|(_, reason)| reason == "broker_restart" || reason == "broker_lost")
        .map(|(room, _)| room.as_str())
        .collect();
    let mut received: HashMap<(usize, u64), (usize, &str)> = HashMap::new();
    for shim in shims {
        let mut last: HashMap<(usize, &str), u64> = HashMap::new();
        for (sender, n, room) in &shim.received {
            assert!(
                received
                    .insert((*sender, *n), (shim.id, room.as_str()))
                    .is_none(),
                "s{sender}:{n} was delivered twice"
            );
            if let Some(&before) = last.get(&(*sender, room.as_str())) {
                assert!(
                    *n > before,
                    "shim {} got s{sender}:{n} after s{sender}:{before}",
                    shim.id
                );
            }
            last.insert((*sender, room.as_str()), *n);
        }
    }

    let (mut sent_ok, mut delivered, mut receiver_killed, mut broker_died) = (0, 0, 0, 0);
    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    let mut delivered_despite_error = 0;
    for shim in shims {
        let sender = shim.id;
        for sent in &shim.sends {
            let partner = members
                .get(sent.room.as_str())
                .and_then(|m| m.iter().copied().find(|&p| p != sender));
            let arrived = received.get(&(sender, sent.n));
            if let Some((receiver, room)) = arrived {
                assert_eq!(
                    *room, sent.room,
                    "s{sender}:{} arrived in another room",
                    sent.n
                );
                assert_eq!(
                    Some(*receiver),
                    partner,
                    "s{sender}:{} reached a stranger",
                    sent.n
                );
            }
            match &sent.error {
                Some(code) => {
                    *errors.entry(code.as_str()).or_default() += 1;
                    if arrived.is_some() {
                        assert_eq!(
                            code, "broker_lost",
                            "s{sender}:{} arrived though its send failed with {code}",
                            sent.n
                        );
                        delivered_despite_error += 1;
                    }
                }
                None => {
                    sent_ok += 1;
                    if arrived.is_some() {
                        delivered += 1;
                    } else if partner.is_none_or(|p| killed.contains(&p)) {
                        receiver_killed += 1;
                    } else if died_with_broker.contains(sent.room.as_str()) {
                        broker_died += 1;
                    } else {
                        panic!(
                            "s{sender}:{} in room {} was answered `sent` but never reached shim {partner:?}, and nobody was told why",
                            sent.n, sent.room
                        );
                    }
                }
            }
        }
    }

    // A survivor whose partner was killed is told so.
    for victim in shims.iter().filter(|s| killed.contains(&s.id)) {
        let Some(Some(room)) = &victim.killed_in else {
            continue;
        };
        for partner in members[room.as_str()].iter().filter(|&&p| p != victim.id) {
            let partner = &shims[*partner];
            if partner.killed_in.is_none() {
                assert!(
                    partner.gone.iter().any(|(r, _)| r == room),
                    "shim {} was never told that its partner {} in {room} was killed",
                    partner.id,
                    victim.id
                );
            }
        }
    }
    let told_restart = shims
        .iter()
        .filter(|s| s.gone.iter().any(|(_, reason)| reason == "broker_restart"))
        .count();
    assert!(told_restart > 0, "nobody was told of the broker restart");

    format!(
        "{} sends: {sent_ok} `sent`, of which {delivered} arrived, {receiver_killed} were for a killed shim, {broker_died} died with the broker in a room reported ended by it; errors {errors:?} ({delivered_despite_error} of them arrived anyway); {} rooms; {told_restart} shims told `broker_restart`",
        shims.iter().map(|s| s.sends.len()).sum::<usize>(),
        members.len(),
    )
}
