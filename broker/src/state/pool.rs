//! Who is waiting, indexed so that finding a session's best partner under
//! [`super::rule`] looks at a few queue heads, never the whole queue.
//!
//! Waiters are split into six *classes* by what they are and whom they
//! meet ([`Kind`] × [`Meet`]); a seeker only looks in the classes
//! compatible with it, and everyone in such a class accepts the seeker's
//! kind. Each class has one FIFO line per interest and one *open* line (the
//! waiters whose interest wait is over, or who named none), ordered by
//! arrival. A seeker with `t` interests therefore looks at the fronts of at
//! most `6 × (t + 1)` lines, each a `BTreeMap` (O(log n) to update).
//!
//! A line's front may hold a waiter the seeker cannot take (blocked, or
//! quiet and being pinged first): the caller skips at most [`SCAN_LIMIT`]
//! of them per line. That is the bound on work per seek; a session whose
//! every compatible partner sits behind more than that many blocked ones in
//! every line waits until the next arrival, departure or timer looks again.
//!
//! A detached waiter (connection lost, may resume) is taken off every line
//! and put back at its old place when it resumes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mcp_chat_proto::{InterestCount, Kind, Meet};

use super::SessionId;
use super::rule::Profile;

/// Waiters a seek may pass over at the front of one line (see the module
/// docs): with at most 36 lines per seek, a few hundred steps at worst.
pub(super) const SCAN_LIMIT: usize = 16;

/// How many of the busiest interests `status` reports.
pub(crate) const BUSIEST_SHOWN: usize = 10;

const KINDS: [Kind; 2] = [Kind::Agent, Kind::Person];
const MEETS: [Meet; 3] = [Meet::Anyone, Meet::Agents, Meet::People];
const CLASSES: usize = KINDS.len() * MEETS.len();

fn class_of(kind: Kind, meet: Meet) -> usize {
    let k = KINDS.iter().position(|&x| x == kind).unwrap_or(0);
    let m = MEETS.iter().position(|&x| x == meet).unwrap_or(0);
    k * MEETS.len() + m
}

fn class_kinds(class: usize) -> (Kind, Meet) {
    (KINDS[class / MEETS.len()], MEETS[class % MEETS.len()])
}

/// Waiters in arrival order.
type Line = BTreeMap<u64, SessionId>;

#[derive(Debug)]
struct Waiter {
    arrival: u64,
    profile: Profile,
    open: bool,
    /// On the lines: attached, so it can be matched.
    listed: bool,
}

#[derive(Debug, Default)]
pub(super) struct Pool {
    waiters: HashMap<SessionId, Waiter>,
    open: [Line; CLASSES],
    tagged: HashMap<Arc<str>, [Line; CLASSES]>,
    /// Waiters (listed or not) per interest, and the same ordered by count
    /// so `status` reads the busiest without a scan.
    counts: HashMap<Arc<str>, usize>,
    by_count: BTreeSet<(usize, Arc<str>)>,
    next_arrival: u64,
}

impl Pool {
    /// Adds a waiter at the back of its lines.
    pub(super) fn insert(&mut self, session: SessionId, profile: Profile, open: bool) {
        if self.waiters.contains_key(&session) {
            return;
        }
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        for tag in &profile.interests {
            self.count(tag, 1);
        }
        self.waiters.insert(
            session,
            Waiter {
                arrival,
                profile,
                open,
                listed: false,
            },
        );
        self.relist(session);
    }

    pub(super) fn remove(&mut self, session: SessionId) {
        self.unlist(session);
        if let Some(waiter) = self.waiters.remove(&session) {
            for tag in &waiter.profile.interests {
                self.count(tag, -1);
            }
        }
    }

    /// Takes a waiter off every line, keeping its place for [`Self::relist`].
    pub(super) fn unlist(&mut self, session: SessionId) {
        let Some(waiter) = self.waiters.get_mut(&session) else {
            return;
        };
        if !std::mem::replace(&mut waiter.listed, false) {
            return;
        }
        let class = class_of(waiter.profile.kind, waiter.profile.meet);
        self.open[class].remove(&waiter.arrival);
        for tag in &waiter.profile.interests {
            if let Some(lines) = self.tagged.get_mut(tag) {
                lines[class].remove(&waiter.arrival);
                if lines.iter().all(BTreeMap::is_empty) {
                    self.tagged.remove(tag);
                }
            }
        }
    }

    /// Puts a waiter back on its lines at its old place.
    pub(super) fn relist(&mut self, session: SessionId) {
        let Some(waiter) = self.waiters.get_mut(&session) else {
            return;
        };
        if std::mem::replace(&mut waiter.listed, true) {
            return;
        }
        let class = class_of(waiter.profile.kind, waiter.profile.meet);
        if waiter.open {
            self.open[class].insert(waiter.arrival, session);
        }
        for tag in &waiter.profile.interests {
            self.tagged.entry(Arc::clone(tag)).or_default()[class].insert(waiter.arrival, session);
        }
    }

    /// The waiter's interest wait is over: it now accepts anyone compatible.
    pub(super) fn open(&mut self, session: SessionId) {
        let Some(waiter) = self.waiters.get_mut(&session) else {
            return;
        };
        if std::mem::replace(&mut waiter.open, true) {
            return;
        }
        if waiter.listed {
            let class = class_of(waiter.profile.kind, waiter.profile.meet);
            self.open[class].insert(waiter.arrival, session);
        }
    }

    pub(super) fn profile(&self, session: SessionId) -> Option<(&Profile, bool)> {
        self.waiters.get(&session).map(|w| (&w.profile, w.open))
    }

    pub(super) fn is_listed(&self, session: SessionId) -> bool {
        self.waiters.get(&session).is_some_and(|w| w.listed)
    }

    /// The lines a seeker looks along, best fit first: for each of its
    /// interests, the line of that interest in each compatible class; then,
    /// if it is open, the open line of each compatible class. Each comes
    /// with whether it is a shared-interest line. Lines are listed, not
    /// scanned: the caller walks at most [`SCAN_LIMIT`] of each.
    pub(super) fn lines_for(&self, session: SessionId) -> Vec<(bool, &Line)> {
        let Some(waiter) = self.waiters.get(&session) else {
            return Vec::new();
        };
        let me = waiter.profile.kinds();
        let classes: Vec<usize> = (0..CLASSES)
            .filter(|&c| mcp_chat_proto::matching::kinds_compatible(me, class_kinds(c)))
            .collect();
        let mut lines = Vec::new();
        for tag in &waiter.profile.interests {
            if let Some(tagged) = self.tagged.get(tag) {
                lines.extend(classes.iter().map(|&c| (true, &tagged[c])));
            }
        }
        if waiter.open {
            lines.extend(classes.iter().map(|&c| (false, &self.open[c])));
        }
        lines.retain(|(_, line)| !line.is_empty());
        lines
    }

    /// The arrival of a waiter, for ordering candidates.
    pub(super) fn arrival(&self, session: SessionId) -> Option<u64> {
        self.waiters.get(&session).map(|w| w.arrival)
    }

    /// The busiest interests, busiest first (ties by name). It runs on every
    /// `status`, so it reads at most [`BUSIEST_SHOWN`] entries and makes one
    /// range lookup per count taken, however many interests tie: each
    /// count's names are a contiguous run of the set, read from its start.
    pub(super) fn busiest(&self) -> Vec<InterestCount> {
        let mut top: Vec<InterestCount> = Vec::with_capacity(BUSIEST_SHOWN);
        // Sorts before every name of a count.
        let first_name: Arc<str> = Arc::from("");
        let mut taken: Option<usize> = None;
        while top.len() < BUSIEST_SHOWN {
            let next = match taken {
                None => self.by_count.last(),
                Some(count) => self
                    .by_count
                    .range(..(count, Arc::clone(&first_name)))
                    .next_back(),
            };
            let Some(&(count, _)) = next else {
                break;
            };
            let room = BUSIEST_SHOWN - top.len();
            top.extend(
                self.by_count
                    .range((count, Arc::clone(&first_name))..)
                    .take_while(|(waiting, _)| *waiting == count)
                    .take(room)
                    .map(|(waiting, interest)| InterestCount {
                        interest: interest.to_string(),
                        waiting: *waiting,
                    }),
            );
            taken = Some(count);
        }
        top
    }

    /// Every waiter, first arrived first: for moving them elsewhere at
    /// once (the realm, when its link comes up).
    pub(super) fn in_arrival_order(&self) -> Vec<SessionId> {
        let mut waiters: Vec<(u64, SessionId)> =
            self.waiters.iter().map(|(&s, w)| (w.arrival, s)).collect();
        waiters.sort_unstable();
        waiters.into_iter().map(|(_, s)| s).collect()
    }

    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    /// Every waiter, listed or not, for tests that check the index
    /// against the rule applied by brute force.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> Vec<SessionId> {
        self.waiters.keys().copied().collect()
    }

    fn count(&mut self, tag: &Arc<str>, delta: isize) {
        let entry = self.counts.entry(Arc::clone(tag)).or_insert(0);
        let before = *entry;
        *entry = before.saturating_add_signed(delta);
        let after = *entry;
        if before > 0 {
            self.by_count.remove(&(before, Arc::clone(tag)));
        }
        if after > 0 {
            self.by_count.insert((after, Arc::clone(tag)));
        } else {
            self.counts.remove(tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(tags: &[&str]) -> Profile {
        Profile {
            kind: Kind::Agent,
            meet: Meet::Anyone,
            interests: tags.iter().map(|t| Arc::from(*t)).collect(),
        }
    }

    /// Thousands of interests tied at the cut-off: the first names of the
    /// tie are shown, in order, after the busier ones.
    #[test]
    fn a_large_tie_yields_its_first_names_in_order() {
        let mut pool = Pool::default();
        for i in 0..5_000 {
            pool.insert(i, profile(&[&format!("i{i:05}")]), false);
        }
        pool.insert(5_000, profile(&["i04999"]), false);
        pool.insert(5_001, profile(&["zz"]), false);
        pool.insert(5_002, profile(&["zz"]), false);
        let top: Vec<(String, usize)> = pool
            .busiest()
            .into_iter()
            .map(|c| (c.interest, c.waiting))
            .collect();
        let mut expected = vec![("i04999".to_owned(), 2), ("zz".to_owned(), 2)];
        expected.extend((0..8).map(|i| (format!("i{i:05}"), 1)));
        assert_eq!(top, expected);
    }

    #[test]
    fn busiest_interests_are_counted_without_a_scan() {
        let mut pool = Pool::default();
        let mut session = 0;
        for (tag, n) in (0..15).map(|i| (format!("t{i:02}"), i + 1)) {
            for _ in 0..n {
                session += 1;
                pool.insert(session, profile(&[&tag]), false);
            }
        }
        pool.insert(1000, profile(&["t13"]), false);
        let top = pool.busiest();
        assert_eq!(top.len(), BUSIEST_SHOWN);
        assert_eq!(
            (top[0].interest.as_str(), top[0].waiting),
            ("t13", 15),
            "t13 ties t14 and comes first by name"
        );
        assert_eq!((top[1].interest.as_str(), top[1].waiting), ("t14", 15));
        assert_eq!(top[9].interest, "t05");
        pool.remove(1000);
        pool.unlist(1);
        assert_eq!(pool.busiest()[0].interest, "t14");
        assert_eq!(
            pool.busiest()
                .iter()
                .find(|c| c.interest == "t00")
                .map(|c| c.waiting),
            None,
            "only the ten busiest"
        );
        for s in 1..=session {
            pool.remove(s);
        }
        assert!(pool.busiest().is_empty());
        assert!(pool.tagged.is_empty() && pool.counts.is_empty());
    }

    #[test]
    fn a_detached_waiter_keeps_its_place() {
        let mut pool = Pool::default();
        pool.insert(1, profile(&["go"]), true);
        pool.insert(2, profile(&["go"]), true);
        pool.unlist(1);
        pool.insert(3, profile(&["go"]), true);
        let front =
            |pool: &Pool| -> Vec<SessionId> { pool.lines_for(3)[0].1.values().copied().collect() };
        assert_eq!(front(&pool), vec![2, 3]);
        pool.relist(1);
        assert_eq!(front(&pool), vec![1, 2, 3]);
    }
}
