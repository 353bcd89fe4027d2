//! L1: the in-process cache of pre-serialized documents (moka).
//!
//! Bounded by bytes, not entries: the weigher charges each entry its body, its key and a
//! fixed overhead, against `CATALOG_L1_BYTES`. Every entry also has a maximum age
//! (`CATALOG_L1_TTL_SECS`), the backstop that bounds staleness under any fault nobody
//! detected; unknown ids are remembered for a much shorter time
//! (`CATALOG_NEGATIVE_TTL_MS`).
//!
//! Writes are atomic per key and version-aware: [`L1::insert_fresh`] stores a fill only
//! if it is not older than what L1 holds nor than the product's freshness floor, and
//! [`L1::evict_older`] removes an entry older than an invalidation. Both run under
//! moka's per-key compute lock, so a fill racing an invalidation can never leave the
//! older document behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::fast::RandomState;
use moka::sync::Cache;

use crate::document::Lookup;

/// What L1 is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A product by id.
    Product(i64),
    /// The id of the live product with this SKU.
    Sku(Arc<str>),
    /// The `GET /categories` document.
    Categories,
}

/// What L1 holds.
#[derive(Debug, Clone)]
pub enum Cached {
    /// Under [`Key::Product`]: the product, its tombstone, or the fact it is unknown.
    Product(Lookup),
    /// Under [`Key::Sku`]: the id of the live product with that SKU, if any.
    Sku(Option<i64>),
    /// Under [`Key::Categories`]: a whole response body.
    Body(Bytes),
}

impl Cached {
    /// Whether this entry records an absence, which is kept only briefly.
    fn is_negative(&self) -> bool {
        matches!(self, Self::Product(Lookup::Unknown) | Self::Sku(None))
    }
}

/// Bytes charged per entry beyond its body, `ETag`, SKU and key: what an entry was
/// measured to cost in resident memory beyond those (`bench/memory.sh`: 1,000,000
/// documents cached, RSS growth per entry minus the payload). Most of it is moka's own
/// (its entry, entry info, key, deque and timer-wheel nodes, hash-table bucket); the
/// rest is the document's header and `bytes`' shared header. With it, the budget bounds
/// the memory L1 really takes.
const ENTRY_OVERHEAD: u32 = 620;

/// Tuning of L1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L1Config {
    /// Budget in bytes.
    pub budget_bytes: u64,
    /// Maximum age of any entry.
    pub max_ttl: Duration,
    /// Age of negative entries.
    pub negative_ttl: Duration,
    /// How long past `max_ttl` a live document is kept, to be served (marked stale)
    /// only when no database can answer (`CATALOG_STALE_IF_ERROR_SECS`).
    pub stale_if_error: Duration,
}

/// The in-process cache.
#[derive(Debug, Clone)]
pub struct L1 {
    cache: Cache<Key, Cached, RandomState>,
    /// A cap on the life of entries stored from now on, in milliseconds (0: none);
    /// set while the invalidation feed is silent.
    cap_millis: Arc<AtomicU64>,
    /// Bumped by every invalidation of a cached body, before the body is dropped: a
    /// fill that began before it must not store what it read.
    generation: Arc<AtomicU64>,
}

/// Expiry policy: negative entries live `negative_ttl`, live documents `max_ttl` plus
/// `stale_if_error` (past `max_ttl` the read path refills them, keeping the old copy
/// only for when no database answers), everything else `max_ttl`, counted from the last
/// write of the entry, and never longer than the cap in force when it was written.
struct Ttl {
    config: L1Config,
    cap_millis: Arc<AtomicU64>,
}

impl Ttl {
    fn ttl(&self, value: &Cached) -> Duration {
        let ttl = match value {
            _ if value.is_negative() => self.config.negative_ttl.min(self.config.max_ttl),
            Cached::Product(Lookup::Found(_)) => self.config.max_ttl + self.config.stale_if_error,
            _ => self.config.max_ttl,
        };
        match self.cap_millis.load(Ordering::Relaxed) {
            0 => ttl,
            cap => ttl.min(Duration::from_millis(cap)),
        }
    }
}

impl moka::Expiry<Key, Cached> for Ttl {
    fn expire_after_create(&self, _: &Key, value: &Cached, _: Instant) -> Option<Duration> {
        Some(self.ttl(value))
    }

    fn expire_after_update(
        &self,
        _: &Key,
        value: &Cached,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.ttl(value))
    }
}

fn weigh(key: &Key, value: &Cached) -> u32 {
    let key_bytes = match key {
        Key::Product(_) | Key::Categories => 0,
        Key::Sku(sku) => sku.len(),
    };
    let value_bytes = match value {
        Cached::Product(Lookup::Found(doc)) => doc.body.len() + doc.etag.len() + doc.sku().len(),
        Cached::Product(_) | Cached::Sku(_) => 0,
        Cached::Body(body) => body.len(),
    };
    u32::try_from(key_bytes + value_bytes)
        .unwrap_or(u32::MAX)
        .saturating_add(ENTRY_OVERHEAD)
}

impl L1 {
    /// An empty cache.
    pub fn new(config: L1Config) -> Self {
        let cap_millis = Arc::new(AtomicU64::new(0));
        let cache = Cache::builder()
            .max_capacity(config.budget_bytes)
            .weigher(weigh)
            .expire_after(Ttl {
                config,
                cap_millis: Arc::clone(&cap_millis),
            })
            .build_with_hasher(RandomState::default());
        Self {
            cache,
            cap_millis,
            generation: Arc::default(),
        }
    }

    /// Caps the life of entries stored from now on (`None`: no cap). Entries already
    /// stored keep theirs.
    pub fn limit_ttl(&self, cap: Option<Duration>) {
        let millis = cap.map_or(0, |cap| {
            u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.cap_millis.store(millis, Ordering::Relaxed);
    }

    /// The cached state of a product, if L1 has it.
    pub fn product(&self, id: i64) -> Option<Lookup> {
        match self.cache.get(&Key::Product(id)) {
            Some(Cached::Product(lookup)) => Some(lookup),
            _ => None,
        }
    }

    /// Stores a product's state unless L1 already holds a newer version or the
    /// product's floor (read under the key's lock) is newer. Returns whether it stored.
    pub fn insert_fresh(&self, id: i64, lookup: Lookup, floor: impl FnOnce() -> i64) -> bool {
        let result = self
            .cache
            .entry(Key::Product(id))
            .and_compute_with(|current| {
                let newer_cached = matches!(
                    current.as_ref().map(|e| e.value()),
                    Some(Cached::Product(cached)) if cached.version() > lookup.version()
                );
                if newer_cached || lookup.version() < floor() {
                    moka::ops::compute::Op::Nop
                } else {
                    moka::ops::compute::Op::Put(Cached::Product(lookup))
                }
            });
        matches!(
            result,
            moka::ops::compute::CompResult::Inserted(_)
                | moka::ops::compute::CompResult::ReplacedWith(_)
        )
    }

    /// Removes `id`'s entry if it is older than `version`. Returns whether it did.
    pub fn evict_older(&self, id: i64, version: i64) -> bool {
        let result = self
            .cache
            .entry(Key::Product(id))
            .and_compute_with(|current| match current.as_ref().map(|e| e.value()) {
                Some(Cached::Product(cached)) if cached.version() < version => {
                    moka::ops::compute::Op::Remove
                }
                _ => moka::ops::compute::Op::Nop,
            });
        matches!(result, moka::ops::compute::CompResult::Removed(_))
    }

    /// Drops a product's entry whatever its version (an operator's purge).
    pub fn remove_product(&self, id: i64) {
        self.cache.invalidate(&Key::Product(id));
    }

    /// Drops a cached response body; fills of bodies that began before this call will
    /// not store theirs.
    pub fn invalidate(&self, key: &Key) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate(key);
    }

    /// The generation of cached bodies: read it before reading a body's source.
    pub fn body_generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Drops everything (after a gap or a reset of the invalidation stream).
    pub fn flush(&self) {
        self.cache.invalidate_all();
    }

    /// Stores a product's state unconditionally (tests and benchmarks warm L1 with it).
    pub fn insert_product(&self, id: i64, lookup: Lookup) {
        self.cache.insert(Key::Product(id), Cached::Product(lookup));
    }

    /// The id of the live product with `sku`, if L1 knows it.
    pub fn sku(&self, sku: &Arc<str>) -> Option<Option<i64>> {
        match self.cache.get(&Key::Sku(sku.clone())) {
            Some(Cached::Sku(id)) => Some(id),
            _ => None,
        }
    }

    /// Remembers which product has `sku`.
    pub fn insert_sku(&self, sku: Arc<str>, id: Option<i64>) {
        self.cache.insert(Key::Sku(sku), Cached::Sku(id));
    }

    /// A cached response body.
    pub fn body(&self, key: &Key) -> Option<Bytes> {
        match self.cache.get(key) {
            Some(Cached::Body(body)) => Some(body),
            _ => None,
        }
    }

    /// Caches a response body read when the generation was `generation`, unless an
    /// invalidation came since (checked under the key's lock, which the invalidation's
    /// removal also takes). Returns whether it stored.
    pub fn insert_body(&self, key: Key, body: Bytes, generation: u64) -> bool {
        let result = self.cache.entry(key).and_compute_with(|_| {
            if self.generation.load(Ordering::SeqCst) == generation {
                moka::ops::compute::Op::Put(Cached::Body(body))
            } else {
                moka::ops::compute::Op::Nop
            }
        });
        matches!(
            result,
            moka::ops::compute::CompResult::Inserted(_)
                | moka::ops::compute::CompResult::ReplacedWith(_)
        )
    }

    /// Up to `n` cached product states, picked at random (reservoir sampling over one
    /// walk of the cache), for the consistency auditor.
    pub fn sample_products(&self, n: usize, rng: &mut impl rand::RngExt) -> Vec<(i64, i64)> {
        let mut picked: Vec<(i64, i64)> = Vec::with_capacity(n);
        let mut seen = 0usize;
        for (key, value) in self.cache.iter() {
            let (Key::Product(id), Cached::Product(lookup)) = (&*key, &value) else {
                continue;
            };
            if *lookup == Lookup::Unknown {
                continue;
            }
            seen += 1;
            if picked.len() < n {
                picked.push((*id, lookup.version()));
            } else {
                let slot = rng.random_range(0..seen);
                if slot < n {
                    picked[slot] = (*id, lookup.version());
                }
            }
        }
        picked
    }

    /// Entries and weighted bytes, as of the last [`L1::sync`] (moka applies writes lazily).
    pub fn usage(&self) -> (u64, u64) {
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// Applies pending housekeeping now, so [`L1::usage`] is exact (before a scrape).
    pub fn sync(&self) {
        self.cache.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::Document;

    fn config() -> L1Config {
        L1Config {
            budget_bytes: 1 << 20,
            max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_millis(50),
            stale_if_error: Duration::ZERO,
        }
    }

    fn found(id: i64, len: usize) -> Lookup {
        Lookup::Found(Arc::new(Document::new(id, 1, "SKU", &vec![b'x'; len])))
    }

    fn version(id: i64, version: i64) -> Lookup {
        Lookup::Found(Arc::new(Document::new(id, version, "SKU", b"{}")))
    }

    #[test]
    fn fills_never_replace_newer_versions_or_pass_the_floor() {
        let l1 = L1::new(config());
        assert!(l1.insert_fresh(1, version(1, 3), || 0));
        assert!(
            !l1.insert_fresh(1, version(1, 2), || 0),
            "older than cached"
        );
        assert_eq!(l1.product(1).unwrap().version(), 3);
        assert!(
            !l1.insert_fresh(2, version(2, 4), || 5),
            "older than the floor"
        );
        assert_eq!(l1.product(2), None);
        assert!(!l1.insert_fresh(2, Lookup::Unknown, || 1));
        assert!(l1.insert_fresh(2, version(2, 5), || 5));
    }

    #[test]
    fn invalidations_evict_only_older_entries() {
        let l1 = L1::new(config());
        l1.insert_product(1, version(1, 3));
        assert!(!l1.evict_older(1, 3));
        assert!(l1.product(1).is_some());
        assert!(l1.evict_older(1, 4));
        assert_eq!(l1.product(1), None);
        l1.insert_product(2, Lookup::Unknown);
        assert!(
            l1.evict_older(2, 1),
            "a negative entry is older than any write"
        );
        l1.insert_product(3, version(3, 1));
        l1.flush();
        assert_eq!(l1.product(3), None);
    }

    #[test]
    fn the_budget_bounds_the_bytes_held() {
        let l1 = L1::new(L1Config {
            budget_bytes: 100_000,
            ..config()
        });
        for id in 0..1000 {
            l1.insert_product(id, found(id, 1000));
        }
        l1.sync();
        let (entries, bytes) = l1.usage();
        assert!(bytes <= 100_000, "{bytes} bytes held");
        assert!(entries < 100, "{entries} entries held");
    }

    #[test]
    fn negative_entries_expire_first_and_a_fill_replaces_them() {
        let l1 = L1::new(config());
        l1.insert_product(1, Lookup::Unknown);
        l1.insert_product(2, found(2, 10));
        assert_eq!(l1.product(1), Some(Lookup::Unknown));
        let deadline = Instant::now() + Duration::from_secs(5);
        while l1.product(1).is_some() {
            assert!(Instant::now() < deadline, "negative entry never expired");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(l1.product(2).is_some());
        // An update from negative to found takes the long TTL.
        l1.insert_product(3, Lookup::Unknown);
        l1.insert_product(3, found(3, 10));
        std::thread::sleep(Duration::from_millis(120));
        assert!(matches!(l1.product(3), Some(Lookup::Found(_))));
    }
}
