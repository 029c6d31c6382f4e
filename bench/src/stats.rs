//! Percentiles of latency samples. The sample counts here are small enough
//! to keep and sort, so no histogram crate: exact nearest-rank percentiles.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub p50: Duration,
    pub p99: Duration,
}

impl Summary {
    /// Summarizes `samples`; `None` for an empty set.
    pub fn of(mut samples: Vec<Duration>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        Some(Self {
            p50: nearest_rank(&samples, 0.50),
            p99: nearest_rank(&samples, 0.99),
        })
    }
}

/// The smallest sample with at least `q` of all samples at or below it.
fn nearest_rank(sorted: &[Duration], q: f64) -> Duration {
    // Sample counts stay far below 2^52, so the casts are exact.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// CPU time per event, or zero for no events.
pub fn per_event(cpu: Duration, count: usize) -> Duration {
    u32::try_from(count)
        .ok()
        .filter(|&n| n > 0)
        .map_or(Duration::ZERO, |n| cpu / n)
}

/// Events per second, or zero for a zero-length interval.
pub fn rate(count: usize, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let count = count as f64;
    if secs > 0.0 { count / secs } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let s = Summary::of(samples).unwrap();
        assert_eq!(s.p50, Duration::from_micros(50));
        assert_eq!(s.p99, Duration::from_micros(99));
        let one = Summary::of(vec![Duration::from_micros(7)]).unwrap();
        assert_eq!(
            (one.p50, one.p99),
            (Duration::from_micros(7), Duration::from_micros(7))
        );
        assert!(Summary::of(Vec::new()).is_none());
    }
}
