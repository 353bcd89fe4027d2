//! The coherence promise checked from a client's side: given the writes a client saw
//! acknowledged and the reads it made, how many reads were stale (started more than
//! `window` after a write's acknowledgement, yet answered an older version), and how
//! long after each acknowledgement a read first saw the new version.
//!
//! Not used by the service: the integration tests and the goose consistency scenario
//! (`loadtest/`) both judge their runs with it, so they count the same way.

use std::fmt;
use std::time::{Duration, Instant};

/// One acknowledged write, or one read, of one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The product.
    pub id: i64,
    /// The version the write answered, or the read saw.
    pub version: i64,
    /// When the acknowledgement arrived, or the read started.
    pub at: Instant,
}

/// What a run came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Reads judged.
    pub reads: usize,
    /// Acknowledged writes.
    pub writes: usize,
    /// Reads started more than `window` after an acknowledgement that answered an
    /// older version than it.
    pub stale: usize,
    /// The invalidation window the promise allows.
    pub window: Duration,
    /// For each write some read saw: acknowledgement → first read of its version (or a
    /// newer one), sorted.
    pub propagation: Vec<Duration>,
}

impl Report {
    /// Judges `reads` against `acks`.
    pub fn check(acks: &[Event], reads: &[Event], window: Duration) -> Self {
        let stale = reads
            .iter()
            .filter(|read| {
                acks.iter().any(|ack| {
                    ack.id == read.id && read.at > ack.at + window && read.version < ack.version
                })
            })
            .count();
        let mut propagation: Vec<Duration> = acks
            .iter()
            .filter_map(|ack| {
                reads
                    .iter()
                    .filter(|r| r.id == ack.id && r.version >= ack.version && r.at >= ack.at)
                    .map(|r| r.at - ack.at)
                    .min()
            })
            .collect();
        propagation.sort_unstable();
        Self {
            reads: reads.len(),
            writes: acks.len(),
            stale,
            window,
            propagation,
        }
    }

    /// The `q` quantile (0 to 1) of propagation; zero when no write was seen.
    pub fn quantile(&self, q: f64) -> Duration {
        let last = self.propagation.len().saturating_sub(1);
        self.propagation
            .get((last as f64 * q.clamp(0.0, 1.0)) as usize)
            .copied()
            .unwrap_or_default()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} reads, {} acknowledged writes, {} stale (window {:?}); acknowledgement → \
             first read of the new version: p50 {:?}, p99 {:?}, max {:?}",
            self.reads,
            self.writes,
            self.stale,
            self.window,
            self.quantile(0.5),
            self.quantile(0.99),
            self.quantile(1.0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_after_the_window_that_misses_a_write_is_stale() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let event = |id, version, after| Event {
            id,
            version,
            at: t0 + ms(after),
        };
        let window = ms(100);
        let acks = [event(1, 2, 0)];
        let reads = [
            event(1, 1, 50),  // within the window: old is allowed
            event(1, 2, 80),  // sees the write 80 ms after its acknowledgement
            event(1, 1, 150), // past the window and old: stale
            event(2, 1, 150), // another product: not judged against this write
        ];
        let report = Report::check(&acks, &reads, window);
        assert_eq!(report.stale, 1);
        assert_eq!(report.propagation, vec![ms(80)]);
        assert_eq!(report.quantile(0.5), ms(80));
        assert_eq!((report.reads, report.writes), (4, 1));
        assert!(report.to_string().contains("1 stale"), "{report}");
    }

    #[test]
    fn no_writes_means_nothing_stale_and_zero_quantiles() {
        let report = Report::check(&[], &[], Duration::from_millis(1));
        assert_eq!(report.stale, 0);
        assert_eq!(report.quantile(0.99), Duration::ZERO);
    }
}
