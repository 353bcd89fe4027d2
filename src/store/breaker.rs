//! A circuit breaker for calls to a store that keeps failing: after
//! [`TRIP_AFTER`] failures in a row it opens for [`COOL_DOWN`], and calls fail at once
//! instead of each waiting for its timeout. After the cool-down calls go through again;
//! one success closes it, one more failure opens it again at once.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

/// Failures in a row that open the breaker.
pub const TRIP_AFTER: u32 = 5;
/// How long an open breaker refuses calls: a few of the store's timeouts, so a store
/// that is back is noticed within about a second.
pub const COOL_DOWN: Duration = Duration::from_secs(1);

/// The breaker's state, shared by every clone of the store's handle.
#[derive(Debug)]
pub struct Breaker {
    /// The reference point of `open_until_micros`.
    started: Instant,
    failures: AtomicU32,
    /// Calls are refused until this many microseconds after `started`.
    open_until_micros: AtomicU64,
    /// Counts every opening.
    trips: Counter,
}

impl Breaker {
    /// A closed breaker counting its openings in `trips`.
    pub fn new(trips: Counter) -> Self {
        Self {
            started: Instant::now(),
            failures: AtomicU32::new(0),
            open_until_micros: AtomicU64::new(0),
            trips,
        }
    }

    fn now_micros(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go through now.
    pub fn allows(&self) -> bool {
        self.now_micros() >= self.open_until_micros.load(Ordering::Relaxed)
    }

    /// Records how a call that went through ended.
    pub fn record(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= TRIP_AFTER && self.allows() {
            let until = self.now_micros() + u64::try_from(COOL_DOWN.as_micros()).unwrap_or(0);
            self.open_until_micros.store(until, Ordering::Relaxed);
            self.trips.inc();
            tracing::warn!(failures, cool_down = ?COOL_DOWN, "Redis keeps failing: circuit open");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_and_closes_on_a_success() {
        let trips = Counter::default();
        let breaker = Breaker::new(trips.clone());
        for _ in 0..TRIP_AFTER - 1 {
            breaker.record(false);
        }
        breaker.record(true);
        breaker.record(false);
        assert!(breaker.allows(), "a success resets the count");
        for _ in 0..TRIP_AFTER {
            breaker.record(false);
        }
        assert!(!breaker.allows());
        assert_eq!(trips.get(), 1);
        tokio::time::advance(COOL_DOWN).await;
        assert!(breaker.allows(), "half open after the cool-down");
        breaker.record(false);
        assert!(!breaker.allows(), "one more failure opens it again");
        assert_eq!(trips.get(), 2);
        tokio::time::advance(COOL_DOWN).await;
        breaker.record(true);
        breaker.record(false);
        assert!(breaker.allows(), "closed by a success");
    }
}
