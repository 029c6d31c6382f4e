//! What a session asks of the match it is waiting for: interests it would
//! like to share, what it is (an agent or a person) and what it is willing
//! to meet. Both ends check these with the same function, the shim early
//! (a precise tool error) and the broker again (it trusts no client).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::message::{ErrorCode, Refusal};

/// Interests one session may name: enough to say what it likes, few enough
/// that every lookup on entering stays a handful of queue heads.
pub const MAX_INTERESTS: usize = 5;
/// Longest interest, in characters (all ASCII once valid).
pub const MAX_INTEREST_LEN: usize = 32;
/// How long a session with interests waits for someone who shares one
/// before it accepts anyone compatible, unless it says otherwise.
pub const DEFAULT_INTEREST_WAIT_S: u64 = 10;
/// The longest interest wait a session may ask for: the same bound as a
/// blocking tool call, so one `enter_queue` call can see it through.
pub const MAX_INTEREST_WAIT_S: u64 = 50;

/// What a session is. An MCP session is an agent unless its client says a
/// person drives it; `join` and the browser page are people.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    #[default]
    Agent,
    Person,
    /// From a newer peer; the broker refuses to queue it (it cannot tell
    /// who would accept it).
    #[serde(other)]
    Unknown,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Person => "person",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whom a session is willing to meet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Meet {
    #[default]
    Anyone,
    Agents,
    People,
    /// From a newer peer; refused like an unknown [`Kind`].
    #[serde(other)]
    Unknown,
}

impl Meet {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anyone => "anyone",
            Self::Agents => "agents",
            Self::People => "people",
            Self::Unknown => "unknown",
        }
    }

    /// Whether a session that asked for `self` accepts a partner of `kind`.
    pub fn accepts(self, kind: Kind) -> bool {
        matches!(
            (self, kind),
            (Self::Anyone, Kind::Agent | Kind::Person)
                | (Self::Agents, Kind::Agent)
                | (Self::People, Kind::Person)
        )
    }
}

impl fmt::Display for Meet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Two sessions may meet only if each accepts what the other is.
pub fn kinds_compatible(a: (Kind, Meet), b: (Kind, Meet)) -> bool {
    a.1.accepts(b.0) && b.1.accepts(a.0)
}

/// The options of an `enter_queue` request. Every field is optional on the
/// wire and its absence means what the broker did before it had options:
/// no interests, an agent that meets anyone, no block identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Interests, as sent; the broker normalises them with
    /// [`normalize_interests`] and refuses invalid ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interests: Vec<String>,
    /// Seconds to wait for a shared interest before accepting anyone
    /// compatible; [`DEFAULT_INTEREST_WAIT_S`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interest_wait_s: Option<u64>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub meet: Meet,
    #[serde(default, skip_serializing_if = "is_default")]
    pub kind: Kind,
    /// The installation's pseudonymous id, for blocking. The broker keeps
    /// only a keyed hash of it and never shows it to anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_id: Option<String>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Longest `block_id` the broker takes: a random id is 32 hex digits; this
/// leaves room for other encodings without letting a client park a
/// megabyte in the broker's memory.
pub const MAX_BLOCK_ID_LEN: usize = 128;

impl Entry {
    /// Checks every option and normalises the interests (see
    /// [`normalize_interests`]). The wait is returned in seconds.
    pub fn checked(&self) -> Result<CheckedEntry, Refusal> {
        let interests = normalize_interests(&self.interests)?;
        let interest_wait_s = match self.interest_wait_s {
            None => DEFAULT_INTEREST_WAIT_S,
            Some(s) if s <= MAX_INTEREST_WAIT_S => s,
            Some(s) => {
                return Err(invalid(format!(
                    "interest_wait_s {s} is over the {MAX_INTEREST_WAIT_S}-second limit"
                )));
            }
        };
        if self.meet == Meet::Unknown {
            return Err(invalid(
                "unknown meet value; use anyone, agents or people".to_owned(),
            ));
        }
        if self.kind == Kind::Unknown {
            return Err(invalid(
                "unknown kind; a session is an agent or a person".to_owned(),
            ));
        }
        if let Some(id) = &self.block_id
            && (id.is_empty() || id.len() > MAX_BLOCK_ID_LEN)
        {
            return Err(invalid(format!(
                "block_id must be 1 to {MAX_BLOCK_ID_LEN} bytes"
            )));
        }
        Ok(CheckedEntry {
            interests,
            interest_wait_s,
            meet: self.meet,
            kind: self.kind,
        })
    }
}

/// An [`Entry`] that passed [`Entry::checked`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedEntry {
    /// Normalised, without duplicates, in the order first given.
    pub interests: Vec<String>,
    pub interest_wait_s: u64,
    pub meet: Meet,
    pub kind: Kind,
}

fn invalid(message: String) -> Refusal {
    Refusal::new(ErrorCode::InvalidArguments, message)
}

/// Trims and lowercases each interest, drops repeats, and refuses (never
/// truncates) more than [`MAX_INTERESTS`], an empty one, one longer than
/// [`MAX_INTEREST_LEN`], or one with a character other than `a`-`z`,
/// `0`-`9` and `-`.
pub fn normalize_interests(raw: &[String]) -> Result<Vec<String>, Refusal> {
    if raw.len() > MAX_INTERESTS {
        return Err(invalid(format!(
            "{} interests given; at most {MAX_INTERESTS} are allowed",
            raw.len()
        )));
    }
    let mut tags: Vec<String> = Vec::with_capacity(raw.len());
    for given in raw {
        let tag = given.trim().to_ascii_lowercase();
        if tag.is_empty() {
            return Err(invalid(
                "an interest is empty; give a short word such as \"chess\"".to_owned(),
            ));
        }
        let chars = tag.chars().count();
        if chars > MAX_INTEREST_LEN {
            return Err(invalid(format!(
                "interest {:?} is {chars} characters; at most {MAX_INTEREST_LEN} are allowed",
                excerpt(&tag)
            )));
        }
        if let Some(bad) = tag
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(invalid(format!(
                "interest {:?} has the character {bad:?}; use letters a-z, digits and -",
                excerpt(&tag)
            )));
        }
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    Ok(tags)
}

/// The start of a refused value, so an error never echoes a flood back.
fn excerpt(text: &str) -> String {
    const SHOWN: usize = 40;
    if text.chars().count() <= SHOWN {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(SHOWN).collect();
    cut.push('…');
    cut
}

/// How many sessions wait with one interest, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterestCount {
    pub interest: String,
    pub waiting: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(raw: &[&str]) -> Result<Vec<String>, Refusal> {
        normalize_interests(&raw.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn interests_are_trimmed_lowercased_and_deduplicated() {
        assert_eq!(
            tags(&["  Chess ", "RUST-lang", "chess", "go2"]).unwrap(),
            vec!["chess", "rust-lang", "go2"]
        );
        assert_eq!(tags(&[]).unwrap(), Vec::<String>::new());
        let longest = "a".repeat(MAX_INTEREST_LEN);
        assert_eq!(tags(&[&longest]).unwrap(), vec![longest.clone()]);
    }

    #[test]
    fn every_bad_interest_is_refused_with_a_reason() {
        let refused = |raw: &[&str], says: &str| {
            let err = tags(raw).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArguments);
            assert!(err.message.contains(says), "{raw:?}: {}", err.message);
        };
        refused(&["a", "b", "c", "d", "e", "f"], "at most 5");
        refused(&["  "], "empty");
        refused(&[&"a".repeat(MAX_INTEREST_LEN + 1)], "at most 32");
        refused(&["c++"], "'+'");
        refused(&["two words"], "' '");
        refused(&["café"], "'é'");
        refused(&["under_score"], "'_'");
        // A flood is not echoed back whole.
        let flood = "x".repeat(10_000);
        assert!(tags(&[&flood]).unwrap_err().message.len() < 200);
    }

    #[test]
    fn entry_defaults_and_limits() {
        let plain = Entry::default().checked().unwrap();
        assert_eq!(plain.interest_wait_s, DEFAULT_INTEREST_WAIT_S);
        assert_eq!((plain.kind, plain.meet), (Kind::Agent, Meet::Anyone));
        let over = Entry {
            interest_wait_s: Some(MAX_INTEREST_WAIT_S + 1),
            ..Entry::default()
        };
        assert!(over.checked().unwrap_err().message.contains("50-second"));
        let unknown = Entry {
            meet: Meet::Unknown,
            ..Entry::default()
        };
        assert!(unknown.checked().unwrap_err().message.contains("meet"));
        let long_id = Entry {
            block_id: Some("x".repeat(MAX_BLOCK_ID_LEN + 1)),
            ..Entry::default()
        };
        assert!(long_id.checked().is_err());
    }

    #[test]
    fn compatibility_in_all_nine_combinations() {
        use Kind::{Agent, Person};
        use Meet::{Agents, Anyone, People};
        // (a's meet, b's meet) for an agent a and a person b, and for two
        // agents and two people: each must accept what the other is.
        for (a, b, agent_person, agents, people) in [
            (Anyone, Anyone, true, true, true),
            (Anyone, Agents, true, true, false),
            (Anyone, People, false, false, true),
            (Agents, Anyone, false, true, false),
            (Agents, Agents, false, true, false),
            (Agents, People, false, false, false),
            (People, Anyone, true, false, true),
            (People, Agents, true, false, false),
            (People, People, false, false, true),
        ] {
            assert_eq!(
                kinds_compatible((Agent, a), (Person, b)),
                agent_person,
                "agent {a} / person {b}"
            );
            assert_eq!(kinds_compatible((Agent, a), (Agent, b)), agents);
            assert_eq!(kinds_compatible((Person, a), (Person, b)), people);
            assert_eq!(
                kinds_compatible((Agent, a), (Person, b)),
                kinds_compatible((Person, b), (Agent, a)),
                "symmetric"
            );
        }
    }
}
