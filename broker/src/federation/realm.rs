//! The realm's one FIFO queue, kept in a JetStream KV bucket, and the claim
//! protocol that pairs its waiters.
//!
//! Each waiting session is one entry: key = a random waiter token, value =
//! the owning broker's id. The entry's revision (the bucket stream's
//! sequence) is the realm-wide order of entering. Every broker mirrors the
//! bucket through a watch ([`Mirror`]); the watch delivers changes in
//! revision order, so a mirror that has seen revision `r` holds exactly the
//! entries alive at `r` (of those older than `r`).
//!
//! Entering ([`enter`]):
//! 1. Claim the oldest entry in the mirror with `delete_expect_revision(key,
//!    rev)`: a compare-and-set on the entry's revision, so of all brokers
//!    trying, exactly one deletes it. A loser skips that entry and tries the
//!    next; one that wins asks the owner to confirm (step 4).
//! 2. With nothing to claim, `create` our own entry (revision `r`), then wait
//!    until the mirror has reached `r`.
//! 3. "The newer claims the older": if the mirror then holds any entry older
//!    than `r`, withdraw ours with `delete_expect_revision(ours, r)` and go
//!    back to step 1. If that delete fails, someone claimed us: their claim
//!    request is on its way, and we stop. Otherwise we wait, at position
//!    1 + the entries older than ours.
//! 4. The owner's hub is the arbiter: it matches its waiter only if the
//!    session is still waiting (it may have left), and answers; a refusal or
//!    no answer (dead broker) sends the claimer back to step 1.
//!
//! Why no waiter is matched twice: an entry is deleted by exactly one
//! compare-and-set, so at most one claim request exists per entry (after a
//! timed-out delete, whose outcome is unknown, a second claimer may also
//! ask; the owner's hub matches a session once and refuses the other).
//!
//! Why two waiters never both stay waiting: let X (revision `x`) and Y
//! (`y > x`) both be left waiting. Y, after creating its entry, read a
//! mirror that had reached `y`; X's entry was alive then (X never withdrew,
//! since withdrawing leads to claiming or being claimed), so Y saw an older
//! entry and withdrew instead of waiting: a contradiction. So once a burst
//! settles, at most one waiter is left in the realm.
//!
//! Bursts: a broker runs one attempt at a time, over every session that
//! entered since the last one began ([`enter_batch`]), oldest first. Its
//! entrants first claim the realm's existing waiters, oldest first, one
//! each (step 1 and 4 as above); those left are paired with each other in
//! arrival order, since they entered at the same moment and any older
//! waiter has been claimed already; one left over runs the protocol above.
//! So each broker adds at most one waiter per attempt, and the argument
//! above holds between those; and a burst of a thousand entrants costs a
//! broker a handful of KV operations instead of a thousand racing ones.
//!
//! A claimer that dies between its delete and its claim request leaves a
//! waiter without an entry: its broker notices (the entry is gone from the
//! mirror and no claim came within a few claim timeouts) and enters it
//! again (`link`).
//!
//! Dead brokers' entries are cleaned by the claims themselves (a claim to an
//! owner that is gone gets no responders, and the entry is already deleted)
//! and, as a backstop, by the bucket's `max_age`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use mcp_chat_proto::RoomId;
use tokio::sync::watch;

use super::wire::{self, Claim, ClaimAnswer, Names};

/// Entries older than this expire from the bucket (a backstop for brokers
/// that die with waiters in it); the owner re-enters a waiter at half of it.
pub const QUEUE_MAX_AGE: Duration = Duration::from_secs(3600);
/// How long the owner of a claimed waiter has to answer.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// This broker's view of the realm's queue.
#[derive(Debug, Default, Clone)]
pub struct Mirror {
    /// Revision → (key, owner), oldest first.
    pub entries: BTreeMap<u64, (String, String)>,
    by_key: HashMap<String, u64>,
    /// The newest revision seen.
    pub seen: u64,
}

impl Mirror {
    fn apply(&mut self, entry: &kv::Entry) {
        self.seen = self.seen.max(entry.revision);
        if let Some(old) = self.by_key.remove(&entry.key) {
            self.entries.remove(&old);
        }
        if entry.operation == kv::Operation::Put {
            let owner = String::from_utf8_lossy(&entry.value).into_owned();
            self.entries
                .insert(entry.revision, (entry.key.clone(), owner));
            self.by_key.insert(entry.key.clone(), entry.revision);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }
}

/// Keeps `mirror` in step with the bucket until the watch ends (it resumes
/// by itself across reconnects; it ends only when the client is closed).
pub async fn watch_queue(store: kv::Store, mirror: watch::Sender<Mirror>) {
    loop {
        match store.watch_with_history(">").await {
            Ok(mut changes) => {
                while let Some(change) = changes.next().await {
                    match change {
                        Ok(entry) => mirror.send_modify(|m| m.apply(&entry)),
                        Err(e) => tracing::debug!(error = %e, "realm queue watch hiccup"),
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot watch the realm queue yet"),
        }
        if mirror.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How one attempt at entering ended.
#[derive(Debug)]
pub enum Outcome {
    /// Our entry waits at revision `rev`, `position` in the realm.
    Waiting { rev: u64, position: usize },
    /// Our entry was claimed while we tried to withdraw it: the claimer's
    /// request decides.
    Taken,
    /// We claimed a waiter and its owner put it in `room` with us.
    Matched {
        room: RoomId,
        partner: String,
        secret: String,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EnterError(String);

fn err(what: &str, e: impl std::fmt::Display) -> EnterError {
    EnterError(format!("{what}: {e}"))
}

/// What [`enter`] needs; cheap to clone per attempt.
#[derive(Clone)]
pub struct Realm {
    pub client: async_nats::Client,
    pub store: kv::Store,
    pub mirror: watch::Receiver<Mirror>,
    pub names: Names,
    pub me: String,
}

/// What one batch came to: per entrant, in order, and the local pairs.
#[derive(Debug, Default)]
pub struct Batch {
    pub outcomes: Vec<(u64, String, Result<Outcome, EnterError>)>,
    /// Entrants paired with each other (sessions of this broker).
    pub pairs: Vec<(u64, u64)>,
    pub dangling: Vec<Dangling>,
}

/// Runs one attempt for `entrants` (session, waiter key), oldest first: see
/// the module docs.
pub async fn enter_batch(realm: Realm, entrants: Vec<(u64, String)>) -> Batch {
    let mut batch = Batch::default();
    let mut rest: std::collections::VecDeque<(u64, String)> = entrants.into();
    let mut lost: HashSet<u64> = HashSet::new();
    // Step 1, while more than one is left: the last one runs the full
    // protocol below, which claims as well.
    while rest.len() > 1 {
        let oldest = realm
            .mirror
            .borrow()
            .entries
            .iter()
            .find(|(rev, _)| !lost.contains(rev))
            .map(|(&rev, (k, owner))| (rev, k.clone(), owner.clone()));
        let Some((rev, theirs, owner)) = oldest else {
            break;
        };
        lost.insert(rev);
        match realm.store.delete_expect_revision(&theirs, Some(rev)).await {
            Ok(()) => super::fault::claimed(),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => tracing::warn!(error = %e, "claiming a waiter failed"),
        }
        match confirm(&realm, theirs, &owner).await {
            Confirmed::Yes(matched) => {
                if let Some((session, key)) = rest.pop_front() {
                    batch.outcomes.push((session, key, Ok(matched)));
                }
            }
            Confirmed::Gone => {}
            Confirmed::Unanswered(d) => batch.dangling.push(d),
        }
    }
    while rest.len() > 1 {
        if let (Some((a, _)), Some((b, _))) = (rest.pop_front(), rest.pop_front()) {
            batch.pairs.push((a, b));
        }
    }
    if let Some((session, key)) = rest.pop_front() {
        let (outcome, dangling) = enter(realm, key.clone()).await;
        batch.outcomes.push((session, key, outcome));
        batch.dangling.extend(dangling);
    }
    batch
}

/// A claim whose owner never answered: it may have matched its waiter
/// into `room` and lost the answer, so the room is ended towards it.
#[derive(Debug)]
pub struct Dangling {
    pub room: RoomId,
    pub partner: String,
    pub secret: String,
}

/// Runs the claim protocol (see the module docs) for our waiter `key`.
/// Also hands back the claims left unanswered on the way.
pub async fn enter(realm: Realm, key: String) -> (Result<Outcome, EnterError>, Vec<Dangling>) {
    let mut dangling = Vec::new();
    let outcome = claim_or_wait(&realm, &key, &mut dangling).await;
    (outcome, dangling)
}

async fn claim_or_wait(
    realm: &Realm,
    key: &str,
    dangling: &mut Vec<Dangling>,
) -> Result<Outcome, EnterError> {
    // Entries we failed to claim: someone else got them first.
    let mut lost: HashSet<u64> = HashSet::new();
    let mut own: Option<u64> = None;
    loop {
        let oldest = realm
            .mirror
            .borrow()
            .entries
            .iter()
            .find_map(|(&rev, (k, owner))| {
                (Some(rev) != own && k != key && !lost.contains(&rev))
                    .then(|| (rev, k.clone(), owner.clone()))
            });
        let (rev, theirs, owner) = match (oldest, own) {
            // Only newer entries than ours, or none: we are the oldest.
            (Some((rev, ..)), Some(mine)) if mine < rev => return Ok(waiting(realm, mine)),
            (None, Some(mine)) => return Ok(waiting(realm, mine)),
            (None, None) => {
                let rev = realm
                    .store
                    .create(key, realm.me.clone().into())
                    .await
                    .map_err(|e| err("entering the realm queue", e))?;
                own = Some(rev);
                let mut mirror = realm.mirror.clone();
                mirror
                    .wait_for(|m| m.seen >= rev)
                    .await
                    .map_err(|e| err("watching the realm queue", e))?;
                continue;
            }
            (Some(older), _) => older,
        };
        if let Some(mine) = own.take() {
            // Step 3: an older waiter exists; withdraw ours first.
            match realm.store.delete_expect_revision(key, Some(mine)).await {
                Ok(()) => {}
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    return Ok(Outcome::Taken);
                }
                // Unknown outcome: carry on as withdrawn. If we were in fact
                // claimed, our hub refuses the second match.
                Err(e) => tracing::warn!(error = %e, "withdrawing a waiter failed"),
            }
        }
        lost.insert(rev);
        match realm.store.delete_expect_revision(&theirs, Some(rev)).await {
            Ok(()) => super::fault::claimed(),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            // Unknown outcome: ask the owner anyway; it matches once.
            Err(e) => tracing::warn!(error = %e, "claiming a waiter failed"),
        }
        match confirm(realm, theirs, &owner).await {
            Confirmed::Yes(matched) => return Ok(matched),
            Confirmed::Gone => {}
            Confirmed::Unanswered(d) => dangling.push(d),
        }
    }
}

fn waiting(realm: &Realm, rev: u64) -> Outcome {
    let position = realm.mirror.borrow().entries.range(..rev).count() + 1;
    Outcome::Waiting { rev, position }
}

enum Confirmed {
    Yes(Outcome),
    Gone,
    Unanswered(Dangling),
}

/// Asks `owner` to put its waiter `key` in a new room with us.
async fn confirm(realm: &Realm, key: String, owner: &str) -> Confirmed {
    if !wire::is_id(owner) {
        return Confirmed::Gone;
    }
    let room = RoomId::new_random();
    let secret = wire::fresh_id();
    let claim = Claim {
        key,
        room,
        claimer: realm.me.clone(),
        secret: secret.clone(),
    };
    let request = async_nats::Request::new()
        .payload(wire::encode(&claim))
        .timeout(Some(CLAIM_TIMEOUT));
    match realm
        .client
        .send_request(realm.names.claim(owner), request)
        .await
    {
        Ok(answer) => match wire::parse::<ClaimAnswer>(&answer.payload) {
            Ok(ClaimAnswer { matched: true }) => Confirmed::Yes(Outcome::Matched {
                room,
                partner: owner.to_owned(),
                secret,
            }),
            _ => Confirmed::Gone,
        },
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Confirmed::Gone,
        Err(e) => {
            tracing::warn!(owner, error = %e, "a claimed waiter's broker did not answer");
            Confirmed::Unanswered(Dangling {
                room,
                partner: owner.to_owned(),
                secret,
            })
        }
    }
}
