//! Whether the invalidation feed is alive, as a reader sees it: silence is a fault.
//!
//! The relay publishes a heartbeat at a fixed interval even when nothing changes
//! (`CATALOG_HEARTBEAT_MS`), so a reader that hears no entry at all for
//! `CATALOG_FEED_SILENCE_MS` cannot know what it missed (Redis frozen or gone, the
//! relay stuck, a network partition). [`Feed::watch`] then flushes L1, caps the life of
//! every entry L1 stores from then on at the silence limit, and marks the feed silent,
//! which makes fills skip Redis (whose documents the relay may no longer refresh) and
//! shows in `/readyz` and in `catalog_feed_silent`. Staleness is then bounded by the
//! silence limit plus one entry's capped life, not by `CATALOG_L1_TTL_SECS`. The first
//! entry heard ends the silence.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::L1;
use crate::metrics::Metrics;

/// The feed's liveness, shared by the consumer (which hears entries), the read path
/// (which asks) and the watchdog (which decides).
#[derive(Debug, Clone)]
pub struct Feed {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The reference point of `heard_micros`.
    started: Instant,
    /// When the last entry was heard, in microseconds since `started`.
    heard_micros: AtomicU64,
    silent: AtomicBool,
    limit: Duration,
}

impl Feed {
    /// A feed that counts as heard now and goes silent after `limit` without an entry.
    pub fn new(limit: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                started: Instant::now(),
                heard_micros: AtomicU64::new(0),
                silent: AtomicBool::new(false),
                limit,
            }),
        }
    }

    /// Records that an entry (a change or a heartbeat) arrived.
    pub fn heard(&self) {
        let micros = u64::try_from(self.inner.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.inner.heard_micros.store(micros, Ordering::Relaxed);
    }

    /// Whether the feed is silent: nothing heard for longer than the limit.
    pub fn is_silent(&self) -> bool {
        self.inner.silent.load(Ordering::Relaxed)
    }

    /// How long ago the last entry was heard.
    pub fn quiet_for(&self) -> Duration {
        let heard = Duration::from_micros(self.inner.heard_micros.load(Ordering::Relaxed));
        self.inner.started.elapsed().saturating_sub(heard)
    }

    /// The silence limit.
    pub fn limit(&self) -> Duration {
        self.inner.limit
    }

    /// Checks the feed every quarter of the limit until `stop` fires; on silence,
    /// flushes `l1` and caps its entries' life, and lifts the cap when the feed is back.
    pub async fn watch(self, l1: L1, metrics: Arc<Metrics>, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.inner.limit / 4);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => self.check(&l1, &metrics),
            }
        }
    }

    /// One look at the feed: enters or leaves silence.
    pub fn check(&self, l1: &L1, metrics: &Metrics) {
        let quiet = self.quiet_for();
        let silent = quiet > self.inner.limit;
        if silent == self.is_silent() {
            return;
        }
        if silent {
            l1.limit_ttl(Some(self.inner.limit));
            l1.flush();
            self.inner.silent.store(true, Ordering::Relaxed);
            metrics.feed_silences.inc();
            metrics.l1_flushes.inc();
            metrics.feed_silent.set(1);
            tracing::warn!(
                ?quiet,
                limit = ?self.inner.limit,
                "invalidation feed silent: L1 flushed, entries capped at the limit, Redis skipped"
            );
        } else {
            self.inner.silent.store(false, Ordering::Relaxed);
            l1.limit_ttl(None);
            metrics.feed_silent.set(0);
            tracing::info!("invalidation feed heard again: caching restored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::L1Config;
    use crate::document::Lookup;

    #[tokio::test(start_paused = true)]
    async fn silence_flushes_l1_and_the_next_entry_ends_it() {
        let feed = Feed::new(Duration::from_millis(100));
        let metrics = Metrics::new();
        let l1 = L1::new(L1Config {
            budget_bytes: 1 << 20,
            max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(2),
            stale_if_error: Duration::ZERO,
        });
        l1.insert_product(1, Lookup::Gone { version: 3 });
        feed.check(&l1, &metrics);
        assert!(!feed.is_silent(), "heard at start");
        tokio::time::advance(Duration::from_millis(150)).await;
        feed.check(&l1, &metrics);
        assert!(feed.is_silent());
        assert_eq!(l1.product(1), None, "flushed");
        assert!(metrics.render(None).contains("catalog_feed_silent 1"));
        feed.heard();
        feed.check(&l1, &metrics);
        assert!(!feed.is_silent());
        assert!(
            metrics
                .render(None)
                .contains("catalog_feed_silences_total 1")
        );
    }
}
