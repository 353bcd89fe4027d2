//! The per-entry expiry L1 asks of moka: negative entries live `CATALOG_NEGATIVE_TTL_MS`,
//! others `CATALOG_L1_TTL_SECS`, none longer than the cap in force when stored; live
//! documents get no timer unless a cap is in force (L1 drops them by their load time).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Cached, Key, L1Config};

/// Expiry policy: negative entries live `negative_ttl`, everything else `max_ttl`,
/// counted from the last write of the entry, and never longer than the cap in force when
/// it was written. Live documents have no per-entry timer unless a cap is in force: L1
/// expires them by their load time (`document_life`), at read time and by walking.
pub(super) struct Ttl {
    pub(super) config: L1Config,
    pub(super) cap_millis: Arc<AtomicU64>,
}

impl Ttl {
    fn ttl(&self, value: &Cached) -> Option<Duration> {
        let ttl = match value {
            Cached::Unknown | Cached::NoSku => {
                Some(self.config.negative_ttl.min(self.config.max_ttl))
            }
            Cached::Found(_) => None,
            Cached::Gone(_) | Cached::Sku(_) | Cached::Body(_) => Some(self.config.max_ttl),
        };
        match self.cap_millis.load(Ordering::Relaxed) {
            0 => ttl,
            cap => {
                let cap = Duration::from_millis(cap);
                Some(ttl.map_or(cap, |ttl| ttl.min(cap)))
            }
        }
    }
}

impl moka::Expiry<Key, Cached> for Ttl {
    fn expire_after_create(&self, _: &Key, value: &Cached, _: Instant) -> Option<Duration> {
        self.ttl(value)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        value: &Cached,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.ttl(value)
    }
}
