//! The matching rule, as pure functions of two waiters, so that any queue
//! (this broker's [`super::pool`], or a realm queue spanning brokers) applies
//! the same one:
//!
//! - two waiters may meet only if each accepts what the other is
//!   ([`kinds_compatible`]) and neither blocked the other ([`Blocks`]);
//! - waiters who share an interest always accept each other, and such a
//!   match comes first ([`Fit::Shared`]);
//! - a waiter still within its interest wait accepts nobody else; once the
//!   wait is over (or it named no interests) it is *open* and accepts anyone
//!   compatible who is open too ([`Fit::Open`]);
//! - among acceptable partners, the best [`Fit`] wins, then the earliest
//!   arrival: FIFO within a tag and within the open line.
//!
//! So a session never waits past its own interest wait while a compatible
//! open partner is waiting, and never meets someone it blocked.

use std::sync::Arc;

use mcp_chat_proto::matching::kinds_compatible;
use mcp_chat_proto::{Kind, Meet};

/// What the rule needs of one waiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Profile {
    pub(crate) kind: Kind,
    pub(crate) meet: Meet,
    /// Normalised, no repeats (see `mcp_chat_proto::matching`).
    pub(crate) interests: Vec<Arc<str>>,
}

impl Profile {
    pub(crate) fn kinds(&self) -> (Kind, Meet) {
        (self.kind, self.meet)
    }
}

/// Why two waiters may meet now; better fits order first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fit {
    /// They share these interests (sorted).
    Shared(Vec<String>),
    /// Both are open and compatible, with nothing in common.
    Open,
}

impl Fit {
    /// Lower is better: every shared-interest match beats every open one.
    pub(crate) fn rank(&self) -> u8 {
        match self {
            Self::Shared(_) => 0,
            Self::Open => 1,
        }
    }

    pub(crate) fn common_interests(self) -> Vec<String> {
        match self {
            Self::Shared(common) => common,
            Self::Open => Vec::new(),
        }
    }
}

/// Whether `a` and `b` may meet now, given whether each is open, and how
/// well. Blocks are the caller's to check (they are state, not profile).
pub(crate) fn fit(a: &Profile, a_open: bool, b: &Profile, b_open: bool) -> Option<Fit> {
    if !kinds_compatible(a.kinds(), b.kinds()) {
        return None;
    }
    let mut common: Vec<String> = a
        .interests
        .iter()
        .filter(|tag| b.interests.contains(tag))
        .map(|tag| tag.to_string())
        .collect();
    if !common.is_empty() {
        common.sort();
        return Some(Fit::Shared(common));
    }
    (a_open && b_open).then_some(Fit::Open)
}

/// Who a blocking session is, for remembering the block: its installation
/// (a keyed hash of its pseudonymous id) when both sides sent one and they
/// differ, else the broker session itself. Two sessions of one installation
/// (one user's agent and terminal) cannot be told apart by installation, so
/// a block between them binds those two sessions only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Party {
    Installation(u64),
    Session(u64),
}

/// A session's identities for blocking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) session: u64,
    /// Keyed hash of the installation id, when the client sent one.
    pub(crate) installation: Option<u64>,
}

/// The pair a block between `a` and `b` is kept under, in a fixed order.
pub(crate) fn block_key(a: Identity, b: Identity) -> (Party, Party) {
    let (x, y) = match (a.installation, b.installation) {
        (Some(x), Some(y)) if x != y => (Party::Installation(x), Party::Installation(y)),
        _ => (Party::Session(a.session), Party::Session(b.session)),
    };
    if x <= y { (x, y) } else { (y, x) }
}

/// Every block this broker holds, at most [`MAX_BLOCKS`]: past that the
/// oldest is forgotten (and logged), so a client that blocks in a loop
/// cannot grow the broker without bound.
#[derive(Debug, Default)]
pub(crate) struct Blocks {
    pairs: std::collections::HashSet<(Party, Party)>,
    order: std::collections::VecDeque<(Party, Party)>,
}

/// Blocks one broker remembers; far more than people block in a broker's
/// lifetime, and a few megabytes at most.
pub(crate) const MAX_BLOCKS: usize = 100_000;

impl Blocks {
    /// Records a block; returns the installation pair when it is a new
    /// block between two installations (the kind worth keeping on disk).
    pub(crate) fn block(&mut self, a: Identity, b: Identity) -> Option<(u64, u64)> {
        let key = block_key(a, b);
        self.insert(key).then_some(key).and_then(|key| match key {
            (Party::Installation(x), Party::Installation(y)) => Some((x, y)),
            _ => None,
        })
    }

    /// Restores a block between two installations kept from an earlier
    /// broker process.
    pub(crate) fn restore(&mut self, (x, y): (u64, u64)) {
        let (x, y) = (Party::Installation(x), Party::Installation(y));
        self.insert(if x <= y { (x, y) } else { (y, x) });
    }

    fn insert(&mut self, key: (Party, Party)) -> bool {
        if !self.pairs.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > MAX_BLOCKS
            && let Some(oldest) = self.order.pop_front()
        {
            tracing::warn!(
                limit = MAX_BLOCKS,
                "block list full; forgetting the oldest block"
            );
            self.pairs.remove(&oldest);
        }
        true
    }

    /// Whether `a` and `b` must never meet. Both keys are checked: a block
    /// made between sessions binds them even when their installations
    /// differ later (an old client that sent no id), and vice versa.
    pub(crate) fn blocked(&self, a: Identity, b: Identity) -> bool {
        if self.pairs.is_empty() {
            return false;
        }
        let by_session = {
            let (x, y) = (Party::Session(a.session), Party::Session(b.session));
            if x <= y { (x, y) } else { (y, x) }
        };
        self.pairs.contains(&by_session) || self.pairs.contains(&block_key(a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(kind: Kind, meet: Meet, tags: &[&str]) -> Profile {
        Profile {
            kind,
            meet,
            interests: tags.iter().map(|t| Arc::from(*t)).collect(),
        }
    }

    #[test]
    fn shared_interests_fit_first_and_open_waiters_fit_anyone() {
        let a = profile(Kind::Agent, Meet::Anyone, &["go", "chess"]);
        let b = profile(Kind::Person, Meet::Anyone, &["chess", "rust", "go"]);
        let c = profile(Kind::Agent, Meet::Anyone, &[]);
        assert_eq!(
            fit(&a, false, &b, false),
            Some(Fit::Shared(vec!["chess".into(), "go".into()]))
        );
        assert_eq!(fit(&a, false, &c, true), None, "a still waits for a tag");
        assert_eq!(fit(&a, true, &c, false), None, "c is not open yet");
        assert_eq!(fit(&a, true, &c, true), Some(Fit::Open));
        assert!(Fit::Shared(vec!["x".into()]).rank() < Fit::Open.rank());
        let picky = profile(Kind::Agent, Meet::People, &["chess"]);
        assert_eq!(
            fit(&picky, true, &a, true),
            None,
            "a shared tag does not override whom one meets"
        );
    }

    #[test]
    fn blocks_bind_installations_or_else_sessions() {
        let id = |session, installation| Identity {
            session,
            installation,
        };
        let mut blocks = Blocks::default();
        blocks.block(id(1, Some(10)), id(2, Some(20)));
        // The same installations in later sessions, either way round.
        assert!(blocks.blocked(id(3, Some(20)), id(4, Some(10))));
        assert!(!blocks.blocked(id(3, Some(20)), id(4, Some(30))));
        // One installation on both sides: only those two sessions.
        blocks.block(id(5, Some(10)), id(6, Some(10)));
        assert!(blocks.blocked(id(6, Some(10)), id(5, Some(10))));
        assert!(!blocks.blocked(id(7, Some(10)), id(5, Some(10))));
        // No id at all: the sessions.
        blocks.block(id(8, None), id(9, Some(10)));
        assert!(blocks.blocked(id(9, Some(10)), id(8, None)));
        assert!(!blocks.blocked(id(9, Some(10)), id(1, None)));
    }

    #[test]
    fn the_block_list_is_bounded() {
        let mut blocks = Blocks::default();
        let id = |session| Identity {
            session,
            installation: None,
        };
        for n in 0..(MAX_BLOCKS as u64 + 10) {
            blocks.block(id(2 * n), id(2 * n + 1));
        }
        assert_eq!(blocks.pairs.len(), MAX_BLOCKS);
        assert!(!blocks.blocked(id(0), id(1)), "the oldest went first");
        assert!(blocks.blocked(id(2 * MAX_BLOCKS as u64), id(2 * MAX_BLOCKS as u64 + 1)));
    }
}
