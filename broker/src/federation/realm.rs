//! The realm's one queue, kept in a JetStream KV bucket, and the claim
//! protocol that pairs its waiters under the same matching rule as one
//! broker's pool (`crate::state::rule`).
//!
//! Each waiting session is one entry: key = a random waiter token, value =
//! the owning broker's id, the waiter's profile ([`wire::QueueEntry`]:
//! kind, whom it meets, interests, whether it is *open*, and its keyed hash
//! for blocks) and the owner's X25519 key for that waiter, signed by the
//! owner (`auth`): an entry whose signature or key does not match its owner
//! id is left out like any malformed one. The entry's revision (the bucket stream's sequence) is the
//! realm-wide order of entering. Every broker mirrors the bucket through a
//! watch ([`Mirror`]); the watch delivers changes in revision order, so a
//! mirror that has seen revision `r` holds exactly the entries alive at `r`
//! (of those older than `r`). Entries whose value fails the checks of
//! `wire` (untrusted input) are left out of the mirror, and counted.
//!
//! *Compatible*: two entries may be paired when the rule's `fit` accepts
//! their profiles (each accepts what the other is; during its interest wait
//! a waiter accepts only someone sharing an interest) and the realm's block
//! mirror holds no block between their `who`s (`blocks`). This is a fixed
//! function of the two entries: openness is part of an entry and never
//! changes during its life (no broker reads another's clock), and blocks
//! only ever make fewer pairs compatible. Among compatible entries the best
//! is the best fit (a shared interest first), then the earliest arrival.
//!
//! Entering ([`enter`]), "the newer claims the oldest compatible":
//! 1. Claim the best compatible entry in the mirror with
//!    `delete_expect_revision(key, rev)`: a compare-and-set on the entry's
//!    revision, so of all brokers trying, exactly one deletes it. A loser
//!    skips that entry and tries the next; one that wins asks the owner to
//!    confirm (step 4).
//! 2. With nothing compatible to claim, `create` our own entry (revision
//!    `r`), then wait until the mirror has reached `r`.
//! 3. If the mirror then holds any entry older than `r` compatible with
//!    ours, withdraw ours with `delete_expect_revision(ours, r)` and go back
//!    to step 1. If that delete fails, someone claimed us: their claim
//!    request is on its way, and we stop. Otherwise we wait.
//! 4. The owner's hub is the arbiter: it matches its waiter only if the
//!    session is still waiting (it may have left) and the pair is still
//!    compatible in its eyes (a block it knows and the claimer's mirror did
//!    not yet hold), and its client is fresh, and answers; a refusal or no
//!    answer (dead broker) sends the claimer back to step 1. A waiter
//!    refused for a block enters again; one whose client was quiet is
//!    pinged and enters again (keeping its arrival) once it answers, so a
//!    frozen client is never matched. Either way its new entry runs the
//!    protocol as any entrant does, so the argument below still holds.
//!
//! The claim is signed by the claimer and carries its fresh X25519 key; the
//! room's id is derived from both, and the room's keys from the claimer's
//! key and the entry's (`auth`). The owner's answer is signed by the owner
//! and names the claim; the claimer reads replies on an inbox of its own
//! until one verifies (or the timeout), so another member answering first
//! changes nothing. No verified answer is treated as "no answer": the room
//! is ended towards the owner (sealed, so only the owner can read it), in
//! case the owner did match.
//!
//! Why no waiter is matched twice: an entry is deleted by exactly one
//! compare-and-set, so at most one claim request exists per entry (after a
//! timed-out delete, whose outcome is unknown, a second claimer may also
//! ask; the owner's hub matches a session once and refuses the other). A
//! member that sends a claim of its own without the delete is one more such
//! claim, refused likewise once the session is matched; no claim can name
//! another broker as its claimer (it would need that broker's key).
//!
//! Why two compatible waiters never both stay waiting: let X (revision `x`)
//! and Y (`y > x`) be compatible and both left waiting. Y, after creating
//! its entry, read a mirror that had reached `y`; X's entry was alive then
//! (entries are never changed, only created and deleted), and compatibility
//! is a fixed function of the two entries (blocks only remove pairs), so Y
//! saw an older compatible entry and withdrew instead of waiting: a
//! contradiction. So once a burst settles, no two compatible waiters are
//! left in the realm.
//!
//! Interest waits: a waiter with interests enters *closed* (it accepts only
//! sharers). When its wait ends, on its owner's own monotonic clock, the
//! owner re-runs the protocol for it: withdraw the closed entry with
//! `delete_expect_revision` (if that fails, a claimer took it: its request
//! decides, as in step 3), then enter again, open, keeping its first
//! revision as its arrival so it keeps its place among older waiters. Two
//! waiters that were incompatible only because one was closed thus become
//! compatible exactly when one of them makes a new entry, and the newer
//! entry runs step 3 against the older: the argument above applies to the
//! new entry unchanged. The choice of re-entering over rewriting the entry
//! in place (`update` with its revision) is what keeps the argument whole:
//! an update would change an entry's compatibility during its life, and the
//! older of the pair would have to run step 3 against newer entries, which
//! the protocol never does. The cost is one delete and one create per
//! waiter whose interest wait runs out.
//!
//! Bursts: a broker runs one attempt at a time, over every session that
//! entered since the last one began ([`enter_batch`]), oldest first. Its
//! entrants first claim the realm's existing compatible waiters (steps 1
//! and 4); those left are paired with each other under the same rule, the
//! newer with the oldest compatible one, since they entered at the same
//! moment and every compatible older waiter has been claimed already; each
//! one left over runs the protocol above, one after the other. So the
//! argument above holds between them too; and a burst of a thousand plain
//! entrants costs a broker a handful of KV operations instead of a thousand
//! racing ones.
//!
//! A claimer that dies between its delete and its claim request leaves a
//! waiter without an entry: its broker notices (the entry is gone from the
//! mirror and no claim came within a few claim timeouts) and enters it
//! again (`link`).
//!
//! Dead brokers' entries are cleaned by the claims themselves (a claim to an
//! owner that is gone gets no responders, and the entry is already deleted;
//! no responders is unsigned, so the claimer also ends the room towards the
//! owner, which costs a gone owner nothing) and, as a backstop, by the
//! bucket's `max_age`.
//!
//! Cost: the mirror keeps, beside the entries, one line per interest and
//! one line of open entries per kind × `meet` class, each in arrival order
//! (as `crate::state::pool` does for one broker's queue). The best entry is
//! the earliest fitting front of the seeker's interest lines, else of the
//! open lines of the (at most six) compatible classes: O(log n) per line
//! looked at, never a walk of the queue. A line is walked past its front
//! only over entries this seeker cannot take (blocked with it, expired, or
//! already tried in this attempt). A model test checks the indexes against
//! a walk of the whole queue.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use mcp_chat_proto::matching::kinds_compatible;
use mcp_chat_proto::{InterestCount, Kind, Meet, RoomId};
use tokio::sync::watch;

use super::auth::{self, Identity, Pairing, RoomKeys, Side};
use super::blocks::{RealmName, is_blocked};
use super::fault;
use super::wire::{self, Claim, ClaimAnswer, Names, QueueEntry, RealmProfile};
use crate::state::rule::{self, Profile};

/// Entries older than this expire from the bucket (a backstop for brokers
/// that die with waiters in it); the owner re-enters a waiter at half of it.
pub const QUEUE_MAX_AGE: Duration = Duration::from_secs(3600);
/// How long the owner of a claimed waiter has to answer.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// One entry of the realm's queue, as mirrored.
#[derive(Debug, Clone)]
pub struct Queued {
    pub key: String,
    pub owner: String,
    /// The owner's X25519 key for this waiter (signed with the entry).
    pub owner_kx: [u8; 32],
    pub profile: RealmProfile,
    /// The profile as the rule reads it.
    rule: Profile,
    pub arrival: u64,
    /// When the server stored it (ms since the Unix epoch): the bucket's
    /// `max_age` expires it silently, with no change for watchers, so the
    /// mirror drops it by this (see [`Mirror::expire`]).
    created_ms: u64,
}

/// This broker's view of the realm's queue.
#[derive(Debug, Default, Clone)]
pub struct Mirror {
    /// Revision → entry, oldest first.
    pub entries: BTreeMap<u64, Queued>,
    by_key: HashMap<String, u64>,
    /// (arrival, revision) of the entries naming each interest, in the
    /// order claims prefer: the earliest sharer of any of a seeker's
    /// interests is at the front of one of these lines.
    by_interest: HashMap<String, BTreeSet<(u64, u64)>>,
    /// (arrival, revision) of the *open* entries of each kind × `meet`
    /// class: only an open entry can fit a seeker that shares nothing with
    /// it, so the earliest open fit is at the front of one of the (at most
    /// six) classes compatible with the seeker.
    open_by_class: HashMap<(Kind, Meet), BTreeSet<(u64, u64)>>,
    /// Waiters per interest, realm-wide.
    interests: HashMap<String, usize>,
    /// The newest revision seen.
    pub seen: u64,
    /// Entries left out because their value failed the checks.
    pub invalid: u64,
}

impl Mirror {
    fn apply(&mut self, entry: &kv::Entry) {
        self.seen = self.seen.max(entry.revision);
        if let Some(old) = self.by_key.remove(&entry.key) {
            self.remove(old);
        }
        if entry.operation != kv::Operation::Put {
            return;
        }
        let Ok((value, owner_kx)) = wire::parse_entry(&entry.value, entry.revision, &entry.key)
        else {
            self.invalid += 1;
            return;
        };
        let arrival = value.arrival.unwrap_or(entry.revision);
        let created_ms =
            u64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).unwrap_or_default();
        self.insert(
            entry.revision,
            Queued {
                key: entry.key.clone(),
                owner: value.owner,
                owner_kx,
                rule: rule_profile(&value.profile),
                profile: value.profile,
                arrival,
                created_ms,
            },
        );
    }

    /// Adds `q`, stored at revision `rev`, to the entries and their indexes.
    fn insert(&mut self, rev: u64, q: Queued) {
        let place = (q.arrival, rev);
        for tag in &q.profile.interests {
            *self.interests.entry(tag.clone()).or_default() += 1;
            self.by_interest
                .entry(tag.clone())
                .or_default()
                .insert(place);
        }
        if q.profile.open {
            self.open_by_class
                .entry((q.profile.kind, q.profile.meet))
                .or_default()
                .insert(place);
        }
        self.by_key.insert(q.key.clone(), rev);
        self.entries.insert(rev, q);
    }

    fn remove(&mut self, rev: u64) {
        let Some(old) = self.entries.remove(&rev) else {
            return;
        };
        let place = (old.arrival, rev);
        for tag in &old.profile.interests {
            if let Some(n) = self.interests.get_mut(tag) {
                *n -= 1;
                if *n == 0 {
                    self.interests.remove(tag);
                }
            }
            if let Some(line) = self.by_interest.get_mut(tag) {
                line.remove(&place);
                if line.is_empty() {
                    self.by_interest.remove(tag);
                }
            }
        }
        if old.profile.open {
            let class = (old.profile.kind, old.profile.meet);
            if let Some(line) = self.open_by_class.get_mut(&class) {
                line.remove(&place);
                if line.is_empty() {
                    self.open_by_class.remove(&class);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drops the entries the bucket has expired by now (`now_ms`, ms since
    /// the Unix epoch): watchers hear nothing of an expiry, so without this
    /// a ghost would stay in every mirror (counted as waiting, and costing
    /// each entrant a failed claim). Returns how many went.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let cutoff = expiry_cutoff(now_ms);
        let gone: Vec<(u64, String)> = self
            .entries
            .iter()
            .filter(|(_, q)| q.created_ms < cutoff)
            .map(|(&rev, q)| (rev, q.key.clone()))
            .collect();
        for (rev, key) in &gone {
            self.by_key.remove(key);
            self.remove(*rev);
        }
        gone.len()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    /// The realm's busiest interests, busiest first (ties by name).
    pub fn busiest(&self, shown: usize) -> Vec<InterestCount> {
        let mut all: Vec<(&String, &usize)> = self.interests.iter().collect();
        all.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        all.into_iter()
            .take(shown)
            .map(|(interest, &waiting)| InterestCount {
                interest: interest.clone(),
                waiting,
            })
            .collect()
    }

    /// The best entry for `me` under the rule (see the module docs), of
    /// those older than `before` if given, that `skip` does not rule out:
    /// the earliest entry sharing one of `me`'s interests, else the earliest
    /// open one that fits. Found from the fronts of the lines that can hold
    /// it (one per interest of `me`, and the open lines of the compatible
    /// classes), never by walking the queue: a line is walked past its front
    /// only over entries this seeker cannot take (blocked with it, newer
    /// than `before`, expired, or ruled out by `skip`: already tried in this
    /// attempt).
    fn best(
        &self,
        me: &Profile,
        me_open: bool,
        my_name: RealmName,
        blocks: &HashSet<String>,
        before: Option<u64>,
        skip: impl Fn(u64, &Queued) -> bool,
    ) -> Option<(u64, Queued)> {
        // Expired by the bucket but not yet dropped here: not claimable.
        let cutoff = expiry_cutoff(now_ms());
        let first_in = |line: &BTreeSet<(u64, u64)>| -> Option<(u64, u64)> {
            line.iter().copied().find(|&(_, rev)| {
                if before.is_some_and(|b| rev >= b) {
                    return false;
                }
                let Some(q) = self.entries.get(&rev) else {
                    return false;
                };
                q.created_ms >= cutoff
                    && !skip(rev, q)
                    && rule::fit(me, me_open, &q.rule, q.profile.open).is_some()
                    && !is_blocked(blocks, my_name, q.profile.name())
            })
        };
        // The earliest sharer beats everyone.
        let shared = me
            .interests
            .iter()
            .filter_map(|tag| self.by_interest.get(&**tag))
            .filter_map(&first_in)
            .min();
        let place = shared.or_else(|| {
            if !me_open {
                return None;
            }
            self.open_by_class
                .iter()
                .filter(|(class, _)| kinds_compatible(me.kinds(), **class))
                .filter_map(|(_, line)| first_in(line))
                .min()
        })?;
        self.entries.get(&place.1).map(|q| (place.1, q.clone()))
    }
}

/// Entries stored before this (ms since the Unix epoch) have expired from
/// the bucket. The server's clock stamps them and ours reads them: owners
/// renew their waiters' entries at half the age, so only a skew of half
/// `max_age` between the two could drop a live entry from a mirror.
fn expiry_cutoff(now_ms: u64) -> u64 {
    let max_age = u64::try_from(fault::queue_max_age().as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_sub(max_age)
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A realm profile as the rule reads it.
pub fn rule_profile(p: &RealmProfile) -> Profile {
    Profile {
        kind: p.kind,
        meet: p.meet,
        interests: p.interests.iter().map(|t| Arc::from(t.as_str())).collect(),
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
        /// Boxed: two AEAD keys dwarf the other outcomes.
        keys: Box<RoomKeys>,
        /// The owner's latest presence counter (see `link`).
        beat: u64,
        /// The waiter's profile.
        profile: RealmProfile,
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
    /// Pair keys of the realm's blocks (see `blocks`).
    pub blocks: watch::Receiver<HashSet<String>>,
    pub names: Names,
    pub me: String,
    /// Signs our entries and claims.
    pub identity: Arc<Identity>,
}

/// One session of this broker entering.
#[derive(Clone)]
pub struct Entrant {
    pub session: u64,
    pub key: String,
    pub profile: RealmProfile,
    /// Its first entry's revision, when it entered before.
    pub arrival: Option<u64>,
    /// Its current entry, to withdraw first (its interest wait ended).
    pub withdraw: Option<u64>,
    /// Its X25519 secret (the link keeps it too, to answer a claim); its
    /// public key goes in the waiter's entries.
    pub kx: x25519_dalek::StaticSecret,
}

impl Entrant {
    fn rule(&self) -> Profile {
        rule_profile(&self.profile)
    }
}

/// What one batch came to: per entrant, in order, and the local pairs.
#[derive(Debug, Default)]
pub struct Batch {
    pub outcomes: Vec<(u64, String, Result<Outcome, EnterError>)>,
    /// Entrants paired with each other (sessions of this broker), with
    /// their profiles.
    pub pairs: Vec<(u64, u64)>,
    pub dangling: Vec<Dangling>,
}

/// Runs one attempt for `entrants`, oldest first: see the module docs.
pub async fn enter_batch(realm: Realm, entrants: Vec<Entrant>) -> Batch {
    let mut batch = Batch::default();
    let mut rest: Vec<Entrant> = Vec::with_capacity(entrants.len());
    // Entrants re-entering open first withdraw their closed entry.
    for e in entrants {
        let Some(rev) = e.withdraw else {
            rest.push(e);
            continue;
        };
        match realm.store.delete_expect_revision(&e.key, Some(rev)).await {
            Ok(()) => rest.push(e),
            Err(x) if x.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                batch.outcomes.push((e.session, e.key, Ok(Outcome::Taken)));
            }
            // Unknown outcome: carry on as withdrawn. If we were in fact
            // claimed, our hub refuses the second match.
            Err(x) => {
                tracing::warn!(error = %x, "withdrawing a waiter failed");
                rest.push(e);
            }
        }
    }
    let ours: HashSet<String> = rest.iter().map(|e| e.key.clone()).collect();
    // Step 1 for each: the realm's existing waiters first.
    let mut lost: HashSet<u64> = HashSet::new();
    let mut left: VecDeque<Entrant> = VecDeque::new();
    for e in rest {
        let me = e.rule();
        let my_name = e.profile.name();
        let mut matched = None;
        loop {
            // Borrowed, not copied (a claim loop runs per entry tried);
            // both borrows end with this statement, before any await.
            let best = realm.mirror.borrow().best(
                &me,
                e.profile.open,
                my_name,
                &realm.blocks.borrow(),
                None,
                |rev, q| lost.contains(&rev) || ours.contains(&q.key),
            );
            let Some((rev, theirs)) = best else { break };
            lost.insert(rev);
            match realm
                .store
                .delete_expect_revision(&theirs.key, Some(rev))
                .await
            {
                Ok(()) => super::fault::claimed(),
                Err(x) if x.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(x) => tracing::warn!(error = %x, "claiming a waiter failed"),
            }
            match confirm(&realm, &e, theirs).await {
                Confirmed::Yes(outcome) => {
                    matched = Some(outcome);
                    break;
                }
                Confirmed::Gone => {}
                Confirmed::Unanswered(d) => batch.dangling.push(d),
            }
        }
        match matched {
            Some(outcome) => batch.outcomes.push((e.session, e.key, Ok(outcome))),
            None => left.push_back(e),
        }
    }
    // Those left pair with each other: the newer takes the oldest
    // compatible one (best fit first) among those before it.
    let mut unpaired: Vec<(Entrant, Profile)> = Vec::new();
    {
        // No await in here: the borrow ends before the protocol runs below.
        let blocks = realm.blocks.borrow();
        for e in left {
            let me = e.rule();
            let mut best: Option<(u8, usize)> = None;
            for (i, (other, theirs)) in unpaired.iter().enumerate() {
                let Some(how) = rule::fit(&me, e.profile.open, theirs, other.profile.open) else {
                    continue;
                };
                if is_blocked(&blocks, e.profile.name(), other.profile.name()) {
                    continue;
                }
                if best.is_none_or(|(rank, _)| how.rank() < rank) {
                    best = Some((how.rank(), i));
                }
            }
            match best {
                Some((_, i)) => {
                    let (other, _) = unpaired.remove(i);
                    batch.pairs.push((other.session, e.session));
                }
                None => unpaired.push((e, me)),
            }
        }
    }
    // Each one left over runs the whole protocol.
    for (e, _) in unpaired {
        let (outcome, dangling) = enter(realm.clone(), e.clone()).await;
        batch.outcomes.push((e.session, e.key, outcome));
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
    pub keys: Box<RoomKeys>,
}

/// Runs the claim protocol (see the module docs) for our entrant. Also
/// hands back the claims left unanswered on the way.
pub async fn enter(realm: Realm, entrant: Entrant) -> (Result<Outcome, EnterError>, Vec<Dangling>) {
    let mut dangling = Vec::new();
    let outcome = claim_or_wait(&realm, &entrant, &mut dangling).await;
    (outcome, dangling)
}

async fn claim_or_wait(
    realm: &Realm,
    entrant: &Entrant,
    dangling: &mut Vec<Dangling>,
) -> Result<Outcome, EnterError> {
    let key = entrant.key.as_str();
    let me = entrant.rule();
    let my_name = entrant.profile.name();
    // Entries we failed to claim: someone else got them first.
    let mut lost: HashSet<u64> = HashSet::new();
    let mut own: Option<u64> = None;
    loop {
        // With an entry of our own, only older ones (step 3). Borrowed,
        // not copied; both borrows end with this statement.
        let best = realm.mirror.borrow().best(
            &me,
            entrant.profile.open,
            my_name,
            &realm.blocks.borrow(),
            own,
            |rev, q| lost.contains(&rev) || q.key == key,
        );
        let (rev, theirs) = match (best, own) {
            (None, Some(mine)) => return Ok(waiting(realm, mine)),
            (None, None) => {
                let value = QueueEntry {
                    owner: realm.me.clone(),
                    key: key.to_owned(),
                    profile: entrant.profile.clone(),
                    arrival: entrant.arrival,
                    kx: auth::hex(&auth::kx_public(&entrant.kx)),
                };
                let signed = realm
                    .identity
                    .sign(auth::ENTRY, &value)
                    .map_err(|e| err("signing the realm entry", e))?;
                let rev = realm
                    .store
                    .create(key, signed)
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
            // Step 3: an older compatible waiter exists; withdraw ours first.
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
        match realm
            .store
            .delete_expect_revision(&theirs.key, Some(rev))
            .await
        {
            Ok(()) => super::fault::claimed(),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            // Unknown outcome: ask the owner anyway; it matches once.
            Err(e) => tracing::warn!(error = %e, "claiming a waiter failed"),
        }
        match confirm(realm, entrant, theirs).await {
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

/// Asks the owner of `theirs` to put its waiter in a new room with us.
async fn confirm(realm: &Realm, entrant: &Entrant, theirs: Queued) -> Confirmed {
    let owner = theirs.owner;
    if !wire::is_id(&owner) {
        return Confirmed::Gone;
    }
    let (secret, kx) = match auth::fresh_kx() {
        Ok(fresh) => fresh,
        Err(e) => {
            // The entry is deleted: an owner that hears nothing re-enters
            // its waiter (`link`).
            tracing::error!(error = %e, "federation: cannot claim a waiter");
            return Confirmed::Gone;
        }
    };
    let room = auth::room_id_for(&realm.me, &kx);
    let pairing = Pairing {
        room,
        owner: &owner,
        claimer: &realm.me,
        owner_kx: &theirs.owner_kx,
        claimer_kx: &kx,
    };
    let Some(keys) = auth::room_keys(&secret, Side::Claimer, pairing) else {
        // A key nobody could keep private: signed by its owner, so its
        // owner's fault; it hears no claim and re-enters its waiter.
        return Confirmed::Gone;
    };
    let claim = Claim {
        key: theirs.key,
        room,
        claimer: realm.me.clone(),
        claimer_kx: auth::hex(&kx),
        owner_kx: auth::hex(&theirs.owner_kx),
        profile: entrant.profile.clone(),
        claimer_key: entrant.key.clone(),
        beat: realm.identity.beats(),
    };
    let payload = match realm.identity.sign(auth::CLAIM, &claim) {
        Ok(payload) => payload,
        Err(e) => {
            // As above: the owner hears nothing and re-enters its waiter.
            tracing::error!(error = %e, "federation: cannot claim a waiter");
            return Confirmed::Gone;
        }
    };
    let heard = ask(realm, &owner, payload, &claim).await;
    match heard {
        Heard::Answer(answer) if answer.matched => Confirmed::Yes(Outcome::Matched {
            room,
            partner: owner,
            keys: Box::new(keys),
            beat: answer.beat,
            profile: theirs.profile,
        }),
        Heard::Answer(_) => Confirmed::Gone,
        Heard::Nothing(why) => {
            tracing::warn!(owner, why, "a claimed waiter's broker did not answer");
            Confirmed::Unanswered(Dangling {
                room,
                partner: owner,
                keys: Box::new(keys),
            })
        }
    }
}

enum Heard {
    /// The owner's answer, verified.
    Answer(ClaimAnswer),
    /// No verified answer: the owner is gone, or its answer lost.
    Nothing(&'static str),
}

/// Sends `claim` (signed: `payload`) to its owner and reads the replies on
/// an inbox of our own until one is the owner's signed answer to this very
/// claim, or the timeout: any member can answer on our inbox (it is in the
/// request, which members see), so the first reply proves nothing, and a
/// forged one is dropped while the genuine one still counts.
async fn ask(realm: &Realm, owner: &str, payload: bytes::Bytes, claim: &Claim) -> Heard {
    let inbox = realm.client.new_inbox();
    let Ok(mut replies) = realm.client.subscribe(inbox.clone()).await else {
        return Heard::Nothing("cannot subscribe to an inbox");
    };
    // Published after the subscription on the same connection: the server
    // has it in place before the owner can answer.
    if realm
        .client
        .publish_with_reply(realm.names.claim(owner), inbox, payload)
        .await
        .is_err()
    {
        return Heard::Nothing("cannot publish the claim");
    }
    read_answer(&mut replies, owner, claim, owner == realm.me, CLAIM_TIMEOUT).await
}

/// After a no-responders status, how long the inbox is still read for a
/// signed answer: the status is unsigned, and a member can send one first.
const NO_RESPONDERS_GRACE: Duration = Duration::from_secs(1);

/// Reads `replies` until one is `owner`'s signed answer to `claim`, for at
/// most `timeout`. A no-responders status is unsigned, so forgeable: it
/// only shortens the wait to [`NO_RESPONDERS_GRACE`] (the genuine answer
/// still counts if it comes), and is ignored when the owner is ourselves
/// (`own`), who surely listen.
async fn read_answer(
    replies: &mut (impl futures::Stream<Item = async_nats::Message> + Unpin),
    owner: &str,
    claim: &Claim,
    own: bool,
    timeout: Duration,
) -> Heard {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut why = "timed out";
    let mut forged = 0u32;
    loop {
        let reply = tokio::select! {
            () = &mut deadline => return Heard::Nothing(why),
            reply = replies.next() => match reply {
                Some(reply) => reply,
                None => return Heard::Nothing("the inbox closed"),
            },
        };
        if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            if !own && why != "no responders" {
                why = "no responders";
                let sooner = tokio::time::Instant::now() + NO_RESPONDERS_GRACE;
                if sooner < deadline.deadline() {
                    deadline.as_mut().reset(sooner);
                }
            }
            continue;
        }
        match answer_to(&reply.payload, owner, claim) {
            Some(a) => return Heard::Answer(a),
            None => {
                forged += 1;
                if forged.is_power_of_two() {
                    tracing::warn!(owner, forged, "federation: dropped a forged claim answer");
                }
            }
        }
    }
}

/// `payload` if it is `owner`'s signed answer to exactly `claim`.
fn answer_to(payload: &[u8], owner: &str, claim: &Claim) -> Option<ClaimAnswer> {
    // An answer for another owner or claim is dropped before its signature
    // is checked: a flood of them costs the claimer no verification.
    let this_claim = |a: &ClaimAnswer| {
        Ok(a.owner == owner && a.room == claim.room && a.claimer_kx == claim.claimer_kx)
    };
    match auth::open_signed_if(payload, auth::ANSWER, wire::MAX_ENTRY_BYTES, this_claim) {
        Ok(auth::Opened::Verified(answer)) => Some(answer),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::rule::Fit;

    fn queued(mirror: &mut Mirror, rev: u64, arrival: u64, p: RealmProfile) {
        queued_at(mirror, rev, arrival, p, now_ms());
    }

    fn queued_at(mirror: &mut Mirror, rev: u64, arrival: u64, p: RealmProfile, created_ms: u64) {
        let q = Queued {
            key: format!("k{rev}"),
            owner: wire::fresh_id(),
            owner_kx: [9; 32],
            rule: rule_profile(&p),
            profile: p,
            arrival,
            created_ms,
        };
        mirror.insert(rev, q);
    }

    fn profile(kind: Kind, meet: Meet, tags: &[&str], open: bool, who: u64) -> RealmProfile {
        RealmProfile {
            kind,
            meet,
            interests: tags.iter().map(|t| (*t).to_owned()).collect(),
            open,
            who: wire::who_hex(who),
            sid: wire::who_hex(who + 1000),
        }
    }

    /// A claim of some waiter, by a fresh claimer key.
    fn a_claim() -> Claim {
        let kx = auth::fresh_kx().unwrap().1;
        let claimer = wire::fresh_id();
        Claim {
            key: wire::fresh_id(),
            room: auth::room_id_for(&claimer, &kx),
            claimer,
            claimer_kx: auth::hex(&kx),
            owner_kx: auth::hex(&[9; 32]),
            profile: profile(Kind::Agent, Meet::Anyone, &[], true, 1),
            claimer_key: wire::fresh_id(),
            beat: 0,
        }
    }

    #[test]
    fn only_the_owners_signed_answer_to_this_very_claim_counts() {
        let owner = Identity::generate().unwrap();
        let hostile = Identity::generate().unwrap();
        let claim = a_claim();
        let answer = |by: &Identity, owner: &str, room: RoomId, matched: bool| {
            by.sign(
                auth::ANSWER,
                &ClaimAnswer {
                    owner: owner.to_owned(),
                    room,
                    claimer_kx: claim.claimer_kx.clone(),
                    matched,
                    beat: 7,
                },
            )
            .unwrap()
        };
        let id = owner.id();
        // What a hostile member answers first: all dropped.
        for forged in [
            answer(&hostile, id, claim.room, true),
            answer(&hostile, hostile.id(), claim.room, true),
            answer(&owner, id, RoomId::new_random(), true),
            wire::encode(&serde_json::json!({"matched": true})),
        ] {
            assert_eq!(answer_to(&forged, id, &claim), None);
        }
        // The genuine one, after them, counts.
        let genuine = answer_to(&answer(&owner, id, claim.room, true), id, &claim).unwrap();
        assert!(genuine.matched);
        assert_eq!(genuine.beat, 7);
    }

    /// A forged no-responders status (unsigned) first does not end the
    /// wait: the owner's signed answer after it still counts; with nothing
    /// after it, the wait ends short of the claim timeout, as "no
    /// responders".
    #[tokio::test(start_paused = true)]
    async fn a_no_responders_status_does_not_hide_the_signed_answer() {
        let owner = Identity::generate().unwrap();
        let claim = a_claim();
        let message = |payload: bytes::Bytes, status| async_nats::Message {
            subject: "inbox".into(),
            reply: None,
            payload,
            headers: None,
            status,
            description: None,
            length: 0,
        };
        let no_responders = || {
            message(
                bytes::Bytes::new(),
                Some(async_nats::StatusCode::NO_RESPONDERS),
            )
        };
        let signed = owner
            .sign(
                auth::ANSWER,
                &ClaimAnswer {
                    owner: owner.id().to_owned(),
                    room: claim.room,
                    claimer_kx: claim.claimer_kx.clone(),
                    matched: true,
                    beat: 7,
                },
            )
            .unwrap();
        let (tx, mut rx) = futures::channel::mpsc::unbounded();
        tx.unbounded_send(no_responders()).unwrap();
        tx.unbounded_send(message(signed, None)).unwrap();
        let heard = read_answer(&mut rx, owner.id(), &claim, false, CLAIM_TIMEOUT).await;
        assert!(matches!(heard, Heard::Answer(a) if a.matched));
        // Nothing after it: "no responders", once the grace is over (the
        // inbox stays open, as a subscription does).
        let (tx, mut rx) = futures::channel::mpsc::unbounded();
        tx.unbounded_send(no_responders()).unwrap();
        let heard = read_answer(&mut rx, owner.id(), &claim, false, CLAIM_TIMEOUT).await;
        assert!(matches!(heard, Heard::Nothing("no responders")));
        drop(tx);
    }

    /// The rule applied by walking the whole queue in arrival order: what
    /// `Mirror::best` finds from its indexes must be exactly this.
    fn best_by_walk(
        m: &Mirror,
        me: &RealmProfile,
        blocks: &HashSet<String>,
        before: Option<u64>,
        skip: &dyn Fn(u64) -> bool,
    ) -> Option<u64> {
        let mut order: Vec<(u64, u64)> = m.entries.iter().map(|(&r, q)| (q.arrival, r)).collect();
        order.sort_unstable();
        let rule = rule_profile(me);
        let mut open_fit = None;
        for (_, rev) in order {
            if before.is_some_and(|b| rev >= b) || skip(rev) {
                continue;
            }
            let q = &m.entries[&rev];
            let Some(how) = rule::fit(&rule, me.open, &q.rule, q.profile.open) else {
                continue;
            };
            if is_blocked(blocks, me.name(), q.profile.name()) {
                continue;
            }
            match how {
                Fit::Shared(_) => return Some(rev),
                Fit::Open => {
                    open_fit.get_or_insert(rev);
                }
            }
        }
        open_fit
    }

    #[test]
    fn the_indexes_find_what_walking_the_whole_queue_finds() {
        // A small deterministic generator: the same cases on every run.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let kinds = [Kind::Agent, Kind::Person];
        let meets = [Meet::Anyone, Meet::Agents, Meet::People];
        let tags = ["go", "chess", "rust", "jazz", "tea"];
        let pick_profile = |next: &mut dyn FnMut(u64) -> u64, who: u64| {
            let n = next(3) as usize;
            let chosen: Vec<&str> = (0..n).map(|_| tags[next(5) as usize]).collect();
            let mut unique = chosen.clone();
            unique.sort_unstable();
            unique.dedup();
            let open = unique.is_empty() || next(2) == 0;
            profile(
                kinds[next(2) as usize],
                meets[next(3) as usize],
                &unique,
                open,
                who,
            )
        };
        let mut found_some = 0;
        for round in 0..300 {
            let mut m = Mirror::default();
            let mut rev = 0;
            for i in 0..(1 + next(40)) {
                rev += 1 + next(3);
                // Mostly arrival = revision; some re-entered with an older one.
                let arrival = if next(5) == 0 { next(rev) } else { rev };
                let p = pick_profile(&mut next, 100 * round + i);
                queued(&mut m, rev, arrival, p);
            }
            // Some entries leave again, through the same path as a delete.
            for _ in 0..next(5) {
                let gone = next(rev + 1);
                m.remove(gone);
            }
            let revs: Vec<u64> = m.entries.keys().copied().collect();
            let mut blocks = HashSet::new();
            let me = pick_profile(&mut next, 1_000_000 + round);
            for &r in &revs {
                if next(6) == 0 {
                    blocks.insert(super::super::blocks::block_key(
                        me.name(),
                        m.entries[&r].profile.name(),
                    ));
                }
            }
            let before = (next(3) == 0).then(|| 1 + next(rev + 1));
            let tried = next(rev + 1);
            let skip = |r: u64| r == tried;
            let expected = best_by_walk(&m, &me, &blocks, before, &skip);
            let found = m
                .best(
                    &rule_profile(&me),
                    me.open,
                    me.name(),
                    &blocks,
                    before,
                    |r, _| skip(r),
                )
                .map(|(r, _)| r);
            assert_eq!(found, expected, "round {round}: {me:?}");
            found_some += usize::from(found.is_some());
        }
        assert!(found_some > 100, "the cases find partners: {found_some}");
    }

    #[test]
    fn the_best_entry_is_a_sharer_then_the_earliest_compatible() {
        let mut m = Mirror::default();
        queued(
            &mut m,
            1,
            1,
            profile(Kind::Person, Meet::Anyone, &[], true, 1),
        );
        queued(
            &mut m,
            2,
            2,
            profile(Kind::Agent, Meet::People, &[], true, 2),
        );
        queued(
            &mut m,
            3,
            3,
            profile(Kind::Agent, Meet::Anyone, &["go"], false, 3),
        );
        // Re-entered open: it keeps its first arrival, before entry 1.
        queued(
            &mut m,
            9,
            0,
            profile(Kind::Agent, Meet::Anyone, &[], true, 9),
        );
        let none = HashSet::new();
        let pick = |p: &RealmProfile, blocks: &HashSet<String>, before| {
            m.best(
                &rule_profile(p),
                p.open,
                p.name(),
                blocks,
                before,
                |_, _| false,
            )
            .map(|(rev, _)| rev)
        };
        let agent = profile(Kind::Agent, Meet::Anyone, &[], true, 50);
        assert_eq!(pick(&agent, &none, None), Some(9), "earliest arrival");
        assert_eq!(pick(&agent, &none, Some(9)), Some(1), "only older entries");
        let sharer = profile(Kind::Agent, Meet::Anyone, &["go"], true, 51);
        assert_eq!(
            pick(&sharer, &none, None),
            Some(3),
            "a shared interest first"
        );
        let closed = profile(Kind::Agent, Meet::Anyone, &["chess"], false, 52);
        assert_eq!(
            pick(&closed, &none, None),
            None,
            "only sharers while closed"
        );
        let agents_only = profile(Kind::Agent, Meet::Agents, &[], true, 53);
        let blocked: HashSet<String> = [super::super::blocks::pair_key(53, 9)].into();
        assert_eq!(pick(&agents_only, &blocked, Some(2)), None);
        assert_eq!(
            pick(&agents_only, &blocked, None),
            None,
            "2 meets people only; 3 is closed; 9 blocked"
        );
        let person = profile(Kind::Person, Meet::People, &[], true, 54);
        assert_eq!(pick(&person, &none, None), Some(1));
    }

    #[test]
    fn the_mirror_counts_interests_realm_wide() {
        let mut m = Mirror::default();
        queued(
            &mut m,
            1,
            1,
            profile(Kind::Agent, Meet::Anyone, &["go", "chess"], true, 1),
        );
        queued(
            &mut m,
            2,
            2,
            profile(Kind::Agent, Meet::Anyone, &["go"], true, 2),
        );
        let top = m.busiest(10);
        assert_eq!(top[0].interest, "go");
        assert_eq!(top[0].waiting, 2);
        m.remove(1);
        assert_eq!(m.busiest(10).len(), 1);
    }

    #[test]
    fn entries_the_bucket_expired_leave_the_mirror_and_are_never_claimed() {
        let mut m = Mirror::default();
        let now = now_ms();
        let max_age = u64::try_from(fault::queue_max_age().as_millis()).unwrap();
        let stale = now - max_age - 1;
        queued_at(
            &mut m,
            1,
            1,
            profile(Kind::Agent, Meet::Anyone, &["go"], true, 1),
            stale,
        );
        queued(
            &mut m,
            2,
            2,
            profile(Kind::Agent, Meet::Anyone, &["go"], true, 2),
        );
        let me = profile(Kind::Agent, Meet::Anyone, &["go"], true, 50);
        let none = HashSet::new();
        let best = |m: &Mirror| {
            m.best(&rule_profile(&me), true, me.name(), &none, None, |_, _| {
                false
            })
            .map(|(rev, _)| rev)
        };
        assert_eq!(best(&m), Some(2), "the expired one is skipped");
        assert_eq!(m.expire(now), 1);
        assert_eq!(m.len(), 1);
        assert!(!m.contains("k1"));
        assert_eq!(m.busiest(10)[0].waiting, 1);
        assert_eq!(m.expire(now), 0, "a live entry stays");
    }
}
