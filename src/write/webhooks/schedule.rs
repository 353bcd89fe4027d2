//! When a failed delivery is tried again: exponential backoff with jitter.
//!
//! After the n-th failed attempt the pause is `first × 2^(n-1)`, capped at `max`, then
//! drawn uniformly from its upper half ("equal jitter"): never shorter than half the
//! nominal pause, so a receiver that is down is not hammered, and spread out, so the
//! deliveries that failed together (a receiver that was down for all of them) do not all
//! come back at the same instant. The whole retry period is bounded separately
//! (`CATALOG_WEBHOOK_RETRY_SECS`): the last attempt is made when it ends, and a delivery
//! that fails then becomes a dead letter.

use std::time::Duration;

use rand::RngExt;

/// The pauses between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The pause after the first failure (`CATALOG_WEBHOOK_BACKOFF_MS`).
    pub first: Duration,
    /// The longest pause (`CATALOG_WEBHOOK_BACKOFF_MAX_MS`).
    pub max: Duration,
}

impl Schedule {
    /// The nominal pause after `failures` failed attempts (1 for the first), before
    /// jitter.
    pub fn nominal(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.first
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max)
    }

    /// The pause after `failures` failed attempts: uniform in the upper half of
    /// [`Schedule::nominal`].
    pub fn pause(&self, failures: u32, rng: &mut impl RngExt) -> Duration {
        let nominal = self.nominal(failures);
        let half = nominal / 2;
        let spread = u64::try_from((nominal - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(rng.random_range(0..=spread))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    const SCHEDULE: Schedule = Schedule {
        first: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };

    #[test]
    fn pauses_double_up_to_the_maximum() {
        let nominal: Vec<u128> = (1..=10).map(|n| SCHEDULE.nominal(n).as_millis()).collect();
        assert_eq!(
            nominal,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        assert_eq!(SCHEDULE.nominal(0), SCHEDULE.first);
        assert_eq!(SCHEDULE.nominal(u32::MAX), SCHEDULE.max);
    }

    #[test]
    fn jitter_stays_in_the_upper_half_and_spreads() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for failures in 1..=12 {
            let nominal = SCHEDULE.nominal(failures);
            let pauses: Vec<Duration> = (0..200)
                .map(|_| SCHEDULE.pause(failures, &mut rng))
                .collect();
            assert!(
                pauses.iter().all(|p| *p >= nominal / 2 && *p <= nominal),
                "{failures}"
            );
            let distinct: std::collections::BTreeSet<_> = pauses.iter().collect();
            assert!(distinct.len() > 100, "not spread: {}", distinct.len());
        }
    }
}
