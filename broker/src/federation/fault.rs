//! Test-only hooks of the `fault-injection` feature (see `hub::fault`) for
//! the federation tests. Compiled out without the feature; with it, inert
//! unless the broker's environment asks:
//!
//! - `MCP_CHAT_FAULT_EXIT_AFTER_CLAIM`: the broker exits (code
//!   [`EXIT_AFTER_CLAIM`]) right after it has won a waiter's entry and
//!   before it asks the owner, the claimer death that `realm` and
//!   `link::Waiter::orphaned_since` recover from.
//! - `MCP_CHAT_FAULT_QUEUE_MAX_AGE_MS`: the realm bucket's `max_age` (and so
//!   the age at which waiters renew their entries), instead of an hour.
//! - `MCP_CHAT_FAULT_ENTERED_DELAY_MS`: the link hears this much later that
//!   its entrants' entries were made, so that a test can stop the broker
//!   while an entry exists that the link does not know of yet.

use std::time::Duration;

use super::realm::QUEUE_MAX_AGE;

/// The exit code of [`claimed`], for the test to tell it from a crash.
#[cfg(feature = "fault-injection")]
pub const EXIT_AFTER_CLAIM: i32 = 86;

/// Called right after a claim's compare-and-set delete succeeded.
#[cfg(feature = "fault-injection")]
pub fn claimed() {
    if std::env::var_os("MCP_CHAT_FAULT_EXIT_AFTER_CLAIM").is_some() {
        tracing::error!("injected fault: exiting between a claim's delete and its request");
        std::process::exit(EXIT_AFTER_CLAIM);
    }
}

#[cfg(not(feature = "fault-injection"))]
pub fn claimed() {}

/// The realm bucket's `max_age`.
#[cfg(feature = "fault-injection")]
pub fn queue_max_age() -> Duration {
    std::env::var("MCP_CHAT_FAULT_QUEUE_MAX_AGE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(QUEUE_MAX_AGE, Duration::from_millis)
}

#[cfg(not(feature = "fault-injection"))]
pub fn queue_max_age() -> Duration {
    QUEUE_MAX_AGE
}

/// Awaited between making a batch's entries and telling the link.
#[cfg(feature = "fault-injection")]
pub async fn entered() {
    let delay = std::env::var("MCP_CHAT_FAULT_ENTERED_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
}

#[cfg(not(feature = "fault-injection"))]
pub async fn entered() {}
