//! A token bucket per session for `send_message`: a burst, then a steady
//! rate (see [`SendLimit`]).

use std::time::Duration;

use tokio::time::Instant;

use crate::config::SendLimit;

#[derive(Debug)]
pub(super) struct TokenBucket {
    limit: Option<SendLimit>,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket; `None` never runs dry.
    pub(super) fn full(limit: Option<SendLimit>) -> Self {
        Self {
            limit,
            tokens: limit.map_or(0.0, |l| l.burst),
            refilled: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub(super) fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let earned = now.duration_since(self.refilled).as_secs_f64() * limit.per_second;
        self.tokens = (self.tokens + earned).min(limit.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / limit.per_second,
            ))
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
    async fn no_limit_never_refuses() {
        let mut bucket = TokenBucket::full(None);
        for _ in 0..100_000 {
            assert!(bucket.take(Instant::now()).is_ok());
        }
    }
}
