//! Whether the invalidation feed is alive, as a reader sees it: silence is a fault.
//!
//! The relay publishes a heartbeat at a fixed interval even when nothing changes
//! (`CATALOG_HEARTBEAT_MS`), so a reader that hears no entry at all for
//! `CATALOG_FEED_SILENCE_MS` cannot know what it missed (Redis frozen or gone, the
//! relay stuck, a network partition). [`Feed::watch`] then flushes L1, caps the life of
//! every entry L1 stores from then on at the silence limit, and marks the feed silent,
//! which makes fills skip Redis (whose documents the relay may no longer refresh) and
//! shows in `/readyz` and in `catalog_feed_silent`. Staleness is then bounded by the
//! silence limit plus one entry's capped life, not by `CATALOG_L1_TTL_SECS`.
//!
//! Hearing the feed again does not end the silence by itself: the entries that come
//! first may be old ones (commands a frozen Redis held in its socket) or a relay still
//! working through its backlog, and every write acknowledged meanwhile is still
//! unannounced. The watchdog reads the primary's WAL position once the feed is heard,
//! and lifts the silence only when the applied watermark reaches it, so every write
//! acknowledged before that moment has had its invalidation applied here. While the
//! primary cannot be asked, the silence lasts.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::L1;
use crate::metrics::Metrics;
use crate::store::replicas::Databases;

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
    /// While silent and heard again: the primary's position the watermark must reach
    /// before the silence ends; 0 when not yet read.
    catch_up_to: AtomicU64,
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
                catch_up_to: AtomicU64::new(0),
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

    /// While silent and heard again: the primary's WAL position the applied watermark
    /// must reach before the silence ends.
    pub fn catching_up_to(&self) -> Option<u64> {
        Some(self.inner.catch_up_to.load(Ordering::Relaxed)).filter(|&lsn| lsn > 0)
    }

    /// One look at the feed: enters silence, or leaves it once the feed is heard and
    /// `watermark` (the highest one applied) covers the primary's position, which
    /// `primary` reads (once per return of the feed; `None` when it cannot).
    pub async fn check<F, P>(&self, l1: &L1, metrics: &Metrics, watermark: u64, primary: F)
    where
        F: FnOnce() -> P,
        P: Future<Output = Option<u64>>,
    {
        let quiet = self.quiet_for();
        let heard = quiet <= self.inner.limit;
        if !self.is_silent() {
            if !heard {
                self.enter_silence(l1, metrics, quiet);
            }
            return;
        }
        if !heard {
            self.inner.catch_up_to.store(0, Ordering::Relaxed);
            return;
        }
        let target = match self.catching_up_to() {
            Some(target) => target,
            None => {
                let Some(position) = primary().await else {
                    return;
                };
                self.inner
                    .catch_up_to
                    .store(position.max(1), Ordering::Relaxed);
                position
            }
        };
        if watermark < target {
            return;
        }
        self.inner.catch_up_to.store(0, Ordering::Relaxed);
        self.inner.silent.store(false, Ordering::Relaxed);
        l1.limit_ttl(None);
        metrics.feed_silent.set(0);
        tracing::info!(
            watermark,
            "invalidation feed heard again and caught up with the primary: caching restored"
        );
    }

    fn enter_silence(&self, l1: &L1, metrics: &Metrics, quiet: Duration) {
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
    }
}

/// The feed's watchdog: what it checks and what it acts on.
#[derive(Debug)]
pub struct Watchdog {
    pub feed: Feed,
    /// Flushed, and its entries' life capped, while the feed is silent.
    pub l1: L1,
    /// The highest watermark the consumer has applied.
    pub applied: tokio::sync::watch::Receiver<u64>,
    /// Where the primary's position is read when the feed returns.
    pub databases: Arc<Databases>,
    pub metrics: Arc<Metrics>,
}

impl Watchdog {
    /// Checks the feed every quarter of the limit until `stop` fires; on silence,
    /// flushes L1 and caps its entries' life, and lifts the cap once the feed is back
    /// and the applied watermark has reached the primary's position.
    pub async fn run(self, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.feed.limit() / 4);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {
                    let watermark = *self.applied.borrow();
                    let primary = || self.databases.primary_position();
                    self.feed.check(&self.l1, &self.metrics, watermark, primary).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::L1Config;
    use crate::document::Lookup;

    fn l1() -> L1 {
        L1::new(L1Config {
            budget_bytes: 1 << 20,
            max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(2),
            stale_if_error: Duration::ZERO,
        })
    }

    /// The primary's position, counting that it was asked.
    async fn at(position: Option<u64>, asked: &std::cell::Cell<u32>) -> Option<u64> {
        asked.set(asked.get() + 1);
        position
    }

    #[tokio::test(start_paused = true)]
    async fn silence_flushes_l1_and_ends_once_the_watermark_reaches_the_primary() {
        let feed = Feed::new(Duration::from_millis(100));
        let metrics = Metrics::new();
        let l1 = l1();
        let asked = std::cell::Cell::new(0);
        l1.insert_product(1, Lookup::Gone { version: 3 });
        feed.check(&l1, &metrics, 0, || at(Some(500), &asked)).await;
        assert!(!feed.is_silent(), "heard at start");
        tokio::time::advance(Duration::from_millis(150)).await;
        feed.check(&l1, &metrics, 0, || at(Some(500), &asked)).await;
        assert!(feed.is_silent());
        assert_eq!(l1.product(1), None, "flushed");
        assert!(metrics.render(None).contains("catalog_feed_silent 1"));

        // Heard again, but the primary cannot be asked: still silent.
        feed.heard();
        feed.check(&l1, &metrics, 400, || at(None, &asked)).await;
        assert!(feed.is_silent(), "no position, no trust");
        // Heard, the primary at 500, the watermark at 400: old entries, still silent.
        feed.check(&l1, &metrics, 400, || at(Some(500), &asked))
            .await;
        assert!(feed.is_silent(), "the watermark is behind the primary");
        assert_eq!(feed.catching_up_to(), Some(500));
        // The position is read once per return; the watermark reaching it ends it.
        feed.check(&l1, &metrics, 499, || at(Some(900), &asked))
            .await;
        assert!(feed.is_silent());
        feed.check(&l1, &metrics, 500, || at(Some(900), &asked))
            .await;
        assert!(!feed.is_silent());
        assert_eq!(
            asked.get(),
            2,
            "asked when heard without a position, once more"
        );
        assert_eq!(feed.catching_up_to(), None);
        assert!(metrics.render(None).contains("catalog_feed_silent 0"));
        assert!(
            metrics
                .render(None)
                .contains("catalog_feed_silences_total 1")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_feed_that_falls_silent_again_while_catching_up_reads_the_position_afresh() {
        let feed = Feed::new(Duration::from_millis(100));
        let metrics = Metrics::new();
        let l1 = l1();
        let asked = std::cell::Cell::new(0);
        tokio::time::advance(Duration::from_millis(150)).await;
        feed.check(&l1, &metrics, 0, || at(Some(500), &asked)).await;
        feed.heard();
        feed.check(&l1, &metrics, 0, || at(Some(500), &asked)).await;
        assert_eq!(feed.catching_up_to(), Some(500));
        tokio::time::advance(Duration::from_millis(150)).await;
        feed.check(&l1, &metrics, 0, || at(Some(500), &asked)).await;
        assert_eq!(
            feed.catching_up_to(),
            None,
            "silent again: the target is dropped"
        );
        feed.heard();
        feed.check(&l1, &metrics, 600, || at(Some(700), &asked))
            .await;
        assert!(feed.is_silent(), "measured against the new position, 700");
        assert_eq!(asked.get(), 2);
    }
}
