//! The waiting line: first come, first served, with every operation the hub
//! runs per request in O(log n), so a long queue cannot stall the one task
//! that serves everyone.
//!
//! Each waiter holds a ticket, increasing with arrival. A waiter's position
//! is one plus the number of *attached* waiters (detached ones are skipped by
//! matching, so they do not count) holding a smaller ticket: a Fenwick tree
//! over tickets answers that. Tickets are offsets into the tree; when the
//! newest would fall off its end, the live waiters are renumbered densely
//! into a tree twice their number, which costs O(n) once every n arrivals.

use std::collections::{BTreeMap, HashMap};

use super::SessionId;

/// Smallest tree, so a quiet broker never renumbers.
const MIN_SLOTS: usize = 1024;

#[derive(Debug)]
pub(super) struct Queue {
    /// Ticket → waiter, oldest first.
    order: BTreeMap<u64, SessionId>,
    /// Waiter → its ticket and whether it counts towards positions.
    waiters: HashMap<SessionId, (u64, bool)>,
    attached: Fenwick,
    next_ticket: u64,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            order: BTreeMap::new(),
            waiters: HashMap::new(),
            attached: Fenwick::new(MIN_SLOTS),
            next_ticket: 0,
        }
    }
}

impl Queue {
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Waiters, oldest first.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.order.values().copied()
    }

    /// Adds `session` at the back. A session already waiting keeps its place.
    pub(super) fn push(&mut self, session: SessionId, attached: bool) {
        if self.waiters.contains_key(&session) {
            return;
        }
        if self.next_ticket as usize >= self.attached.len() {
            self.renumber();
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.order.insert(ticket, session);
        self.waiters.insert(session, (ticket, attached));
        if attached {
            self.attached.add(ticket, 1);
        }
    }

    pub(super) fn remove(&mut self, session: SessionId) {
        if let Some((ticket, attached)) = self.waiters.remove(&session) {
            self.order.remove(&ticket);
            if attached {
                self.attached.add(ticket, -1);
            }
        }
    }

    /// A waiter's connection was dropped (it no longer counts) or resumed.
    pub(super) fn set_attached(&mut self, session: SessionId, attached: bool) {
        if let Some((ticket, was)) = self.waiters.get_mut(&session)
            && *was != attached
        {
            *was = attached;
            self.attached.add(*ticket, if attached { 1 } else { -1 });
        }
    }

    /// 1-based place among attached waiters (1 = next to be matched).
    pub(super) fn position(&self, session: SessionId) -> Option<usize> {
        let &(ticket, _) = self.waiters.get(&session)?;
        Some(self.attached.count_before(ticket) + 1)
    }

    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    /// Gives the waiters tickets 0, 1, 2… in order, in a tree with room for
    /// as many arrivals again.
    fn renumber(&mut self) {
        let slots = (self.order.len() * 2).max(MIN_SLOTS);
        let waiting: Vec<SessionId> = self.order.values().copied().collect();
        let mut attached = Fenwick::new(slots);
        self.order.clear();
        for (ticket, session) in (0u64..).zip(waiting) {
            self.order.insert(ticket, session);
            if let Some(entry) = self.waiters.get_mut(&session) {
                entry.0 = ticket;
                if entry.1 {
                    attached.add(ticket, 1);
                }
            }
        }
        self.next_ticket = self.order.len() as u64;
        self.attached = attached;
    }
}

/// Counts per slot, with prefix sums in O(log n).
#[derive(Debug)]
struct Fenwick {
    tree: Vec<i64>,
}

impl Fenwick {
    fn new(slots: usize) -> Self {
        Self {
            tree: vec![0; slots + 1],
        }
    }

    fn len(&self) -> usize {
        self.tree.len() - 1
    }

    fn add(&mut self, slot: u64, delta: i64) {
        let mut i = slot as usize + 1;
        while i < self.tree.len() {
            self.tree[i] += delta;
            i += i & i.wrapping_neg();
        }
    }

    /// The sum over slots before `slot`.
    fn count_before(&self, slot: u64) -> usize {
        let mut i = (slot as usize).min(self.len());
        let mut sum = 0;
        while i > 0 {
            sum += self.tree[i];
            i -= i & i.wrapping_neg();
        }
        usize::try_from(sum).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_only_attached_waiters_ahead() {
        let mut q = Queue::default();
        for s in 1..=5 {
            q.push(s, true);
        }
        assert_eq!(q.position(4), Some(4));
        q.set_attached(2, false);
        assert_eq!(q.position(4), Some(3));
        q.remove(1);
        assert_eq!(q.position(4), Some(2));
        q.set_attached(2, true);
        assert_eq!(q.position(4), Some(3));
        assert_eq!(q.iter().collect::<Vec<_>>(), vec![2, 3, 4, 5]);
        assert_eq!(q.position(9), None);
    }

    #[test]
    fn renumbering_keeps_order_and_positions() {
        let mut q = Queue::default();
        // Far more arrivals than the smallest tree, most leaving again, so
        // tickets run past the end many times.
        let mut model: Vec<(SessionId, bool)> = Vec::new();
        for s in 0..20_000u64 {
            q.push(s, s % 7 != 0);
            model.push((s, s % 7 != 0));
            if s % 3 != 0 {
                q.remove(s - s / 2);
                model.retain(|&(m, _)| m != s - s / 2);
            }
        }
        assert_eq!(
            q.iter().collect::<Vec<_>>(),
            model.iter().map(|&(s, _)| s).collect::<Vec<_>>()
        );
        let mut ahead = 0;
        for &(s, attached) in &model {
            assert_eq!(q.position(s), Some(ahead + 1), "session {s}");
            ahead += usize::from(attached);
        }
        assert_eq!(q.len(), model.len());
    }
}
