//! A client's own pacing under a broker's send limit: a burst, then a steady
//! rate. The broker's bucket lives in the broker crate, which tests and the
//! bench never link (they see binaries only); this is the one client-side
//! copy, so a load test can stay just under the limit it sets.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens that refills at `per_second`.
    pub fn full(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.duration_since(self.at).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.at = now;
    }

    /// Takes a token if one is there.
    pub fn take(&mut self) -> bool {
        self.refill(Instant::now());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there.
    pub fn ready_at(&self) -> Instant {
        self.at + Duration::from_secs_f64(((1.0 - self.tokens) / self.per_second).max(0.0))
    }

    /// The other side refused a send and said to retry after `retry_after`:
    /// empty the bucket so that the next token comes no sooner.
    pub fn refused(&mut self, retry_after: Duration) {
        self.refill(Instant::now());
        self.tokens = self
            .tokens
            .min(1.0 - retry_after.as_secs_f64() * self.per_second);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(got: Duration, want: Duration) -> bool {
        got.abs_diff(want) < Duration::from_millis(50)
    }

    #[test]
    fn a_burst_then_the_rate_and_a_refusal_pushes_back() {
        let mut bucket = TokenBucket::full(10.0, 3.0);
        assert!(bucket.take() && bucket.take() && bucket.take());
        assert!(!bucket.take());
        let wait = bucket.ready_at().saturating_duration_since(Instant::now());
        assert!(near(wait, Duration::from_millis(100)), "{wait:?}");
        bucket.refused(Duration::from_millis(500));
        let wait = bucket.ready_at().saturating_duration_since(Instant::now());
        assert!(near(wait, Duration::from_millis(500)), "{wait:?}");
    }
}
