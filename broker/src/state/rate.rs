//! Token buckets per session for `send_message`, one counting messages and
//! one counting bytes of text: a burst, then a steady rate (see
//! [`SendLimit`]).

use std::time::Duration;

use mcp_chat_proto::{ErrorCode, Reply};

use tokio::time::Instant;

use crate::config::SendLimit;

/// The `rate_limited` reply every limit gives: why, how long to wait
/// (at least 1 ms), and what to do then.
pub(super) fn rate_limited(wait: Duration, why: &str, then: &str) -> Reply {
    let retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    Reply::Error {
        code: ErrorCode::RateLimited,
        message: format!("{why}; wait {retry_after_ms} ms and {then}"),
        retry_after_ms: Some(retry_after_ms),
    }
}

#[derive(Debug)]
pub(crate) struct TokenBucket {
    limit: Option<SendLimit>,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket; `None` never runs dry.
    pub(crate) fn full(limit: Option<SendLimit>) -> Self {
        Self {
            limit,
            tokens: limit.map_or(0.0, |l| l.burst),
            refilled: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is there.
    #[cfg(test)]
    pub(super) fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.wait_for(now, 1.0)?;
        self.spend(1.0);
        Ok(())
    }

    /// Whether `cost` tokens are there now (after refilling), or how long
    /// until they are. A cost above the burst is held to the burst, so one
    /// large item waits for a full bucket rather than forever.
    pub(crate) fn wait_for(&mut self, now: Instant, cost: f64) -> Result<(), Duration> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let earned = now.duration_since(self.refilled).as_secs_f64() * limit.per_second;
        self.tokens = (self.tokens + earned).min(limit.burst);
        self.refilled = now;
        let cost = cost.min(limit.burst);
        if self.tokens >= cost {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (cost - self.tokens) / limit.per_second,
            ))
        }
    }

    /// Spends what [`Self::wait_for`] found there.
    pub(crate) fn spend(&mut self, cost: f64) {
        if let Some(limit) = self.limit {
            self.tokens -= cost.min(limit.burst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let mut bucket = TokenBucket::full(Some(SendLimit::default()));
        let now = Instant::now();
        for _ in 0..40 {
            assert!(bucket.take(now).is_ok());
        }
        let wait = bucket.take(now).unwrap_err();
        assert_eq!(wait, Duration::from_millis(50));
        assert!(bucket.take(now + Duration::from_millis(50)).is_ok());
        assert!(bucket.take(now + Duration::from_millis(50)).is_err());
        // A long pause refills to the burst, not beyond.
        let later = now + Duration::from_secs(60);
        for _ in 0..40 {
            assert!(bucket.take(later).is_ok());
        }
        assert!(bucket.take(later).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_are_counted_and_a_large_item_waits_for_a_full_bucket() {
        let limit = SendLimit {
            per_second: 64.0 * 1024.0,
            burst: 256.0 * 1024.0,
        };
        let mut bucket = TokenBucket::full(Some(limit));
        let now = Instant::now();
        for _ in 0..16 {
            bucket.wait_for(now, 16_384.0).unwrap();
            bucket.spend(16_384.0);
        }
        let wait = bucket.wait_for(now, 16_384.0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(250));
        // Refused checks spend nothing.
        assert_eq!(bucket.wait_for(now, 16_384.0).unwrap_err(), wait);
        assert!(bucket.wait_for(now + wait, 16_384.0).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn no_limit_never_refuses() {
        let mut bucket = TokenBucket::full(None);
        for _ in 0..100_000 {
            assert!(bucket.take(Instant::now()).is_ok());
        }
    }
}
