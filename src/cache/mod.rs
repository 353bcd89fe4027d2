//! L1: the in-process cache of pre-serialized documents (moka).
//!
//! Bounded by bytes, not entries: the weigher charges each entry what it was measured to
//! cost in resident memory, against `CATALOG_L1_BYTES`. Every entry also has a maximum
//! age (`CATALOG_L1_TTL_SECS`), the backstop that bounds staleness under any fault nobody
//! detected; unknown ids are remembered for a much shorter time
//! (`CATALOG_NEGATIVE_TTL_MS`).
//!
//! Writes are atomic per key and version-aware: [`L1::insert_fresh`] stores a fill only
//! if it is not older than what L1 holds nor than the product's freshness floor, and
//! [`L1::evict_older`] removes an entry older than an invalidation. Both run under
//! moka's per-key compute lock, so a fill racing an invalidation can never leave the
//! older document behind.
//!
//! What an entry costs is most of what L1 weighs at a million documents, so L1 keeps
//! only the moka features whose cost the guarantees need (`bench/memory.sh`,
//! `docs/performance.md`): no eviction listener, no write-order queue (no global TTL),
//! and no per-entry timer for live documents, the bulk of the entries. A document
//! carries its load time already; L1 does not return one older than its life
//! (`CATALOG_L1_TTL_SECS` + `CATALOG_STALE_IF_ERROR_SECS`), drops such a document when
//! a read finds it, and a thread of its own walks the cache every half life to drop the
//! ones no read finds. Until then they hold memory the budget counts, and LRU eviction
//! takes them first.
//! Negative entries, tombstones, SKUs, bodies, and every entry stored while the feed is
//! silent keep moka's per-entry expiry.
//!
//! A document's gzip form is made after it was stored, on the first gzip response
//! ([`crate::document::Document::gzip`]); the reader asks L1 for it ([`L1::gzip`]),
//! which then weighs the entry again, so the budget counts it.
//!
//! What an entry weighs is in `weigh.rs`, when moka expires it in `expiry.rs`.

mod expiry;
mod weigh;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::fast::RandomState;
use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;

use crate::document::{Document, Gzipped, Lookup, Tick};
use expiry::Ttl;
use weigh::weigh;

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

/// A whole response body as L1 keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    /// The JSON.
    pub identity: Bytes,
    /// Its gzip member, when gzip is on and the body is worth it.
    pub gzip: Option<Bytes>,
}

/// What L1 holds, in 16 bytes (a tag and a word) inside moka's entry: a wider value
/// would take moka's entry into a larger allocation.
#[derive(Debug, Clone)]
enum Cached {
    /// Under [`Key::Product`]: a live product.
    Found(Arc<Document>),
    /// Under [`Key::Product`]: a tombstone of this version.
    Gone(i64),
    /// Under [`Key::Product`]: no such product.
    Unknown,
    /// Under [`Key::Sku`]: the id of the live product with that SKU.
    Sku(i64),
    /// Under [`Key::Sku`]: no live product has it.
    NoSku,
    /// Under [`Key::Categories`]: a whole response body.
    Body(Arc<Body>),
}

const _: () = assert!(std::mem::size_of::<Cached>() == 16);

impl Cached {
    fn product(lookup: Lookup) -> Self {
        match lookup {
            Lookup::Found(doc) => Self::Found(doc),
            Lookup::Gone { version } => Self::Gone(version),
            Lookup::Unknown => Self::Unknown,
        }
    }

    /// The version of a product state (`Unknown` is older than any write).
    fn version(&self) -> Option<i64> {
        match self {
            Self::Found(doc) => Some(doc.version),
            Self::Gone(version) => Some(*version),
            Self::Unknown => Some(0),
            Self::Sku(_) | Self::NoSku | Self::Body(_) => None,
        }
    }
}

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

/// Where a fill of a cached body starts ([`L1::body_fill`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyFill {
    /// The generation the body is stored under.
    pub generation: u64,
    /// The WAL position the body's source must have replayed.
    pub floor: u64,
}

/// The in-process cache.
#[derive(Debug, Clone)]
pub struct L1 {
    cache: Cache<Key, Cached, RandomState>,
    /// A cap on the life of entries stored from now on, in milliseconds (0: none);
    /// set while the invalidation feed is silent.
    cap_millis: Arc<AtomicU64>,
    /// Bumped by every invalidation of a cached body (and by a flush), before the body
    /// is dropped: a fill that began before it must not store what it read.
    generation: Arc<AtomicU64>,
    /// The WAL position a body's source must have replayed: raised, before the
    /// generation moves, by an invalidation that says where its change is visible.
    body_floor: Arc<AtomicU64>,
    /// How long a live document is kept after it was loaded: `max_ttl` plus
    /// `stale_if_error`.
    document_life: Duration,
    /// Held by every clone; the expiry walk stops when the last one is dropped.
    _alive: Arc<()>,
}

impl L1 {
    /// An empty cache, and the thread of its expiry walk (which ends with the last clone).
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
        let l1 = Self {
            cache,
            cap_millis,
            generation: Arc::default(),
            body_floor: Arc::default(),
            document_life: config.max_ttl.saturating_add(config.stale_if_error),
            _alive: Arc::new(()),
        };
        l1.spawn_sweeper();
        l1
    }

    /// Walks the cache for outlived documents every half life, checking every second
    /// whether L1 is still in use (the thread holds a clone of the cache, not of `_alive`).
    fn spawn_sweeper(&self) {
        let alive: Weak<()> = Arc::downgrade(&self._alive);
        let sweeper = Self {
            _alive: Arc::new(()),
            ..self.clone()
        };
        let period = (self.document_life / 2).max(Duration::from_millis(10));
        let spawned = std::thread::Builder::new()
            .name("l1-expiry".into())
            .spawn(move || {
                // None: a life too long to ever end (no sweep needed).
                let mut next = Instant::now().checked_add(period);
                while alive.strong_count() > 0 {
                    let now = Instant::now();
                    if next.is_some_and(|next| now >= next) {
                        sweeper.sweep(Tick::of(now));
                        next = now.checked_add(period);
                    }
                    let wait =
                        next.map_or(Duration::MAX, |next| next.saturating_duration_since(now));
                    std::thread::sleep(wait.min(Duration::from_secs(1)));
                }
            });
        if let Err(error) = spawned {
            // LRU eviction still takes outlived documents first; reads never return them.
            tracing::warn!(%error, "L1 expiry walk not started");
        }
    }

    /// Whether a live document has outlived its life in L1 as of `now`.
    fn outlived(&self, doc: &Document, now: Tick) -> bool {
        doc.age_at(now) >= self.document_life
    }

    /// Drops `id`'s document if it is still `doc` (compared by identity), outlived.
    fn drop_outlived(&self, id: i64, doc: &Arc<Document>) {
        self.cache
            .entry(Key::Product(id))
            .and_compute_with(|current| match current.as_ref().map(|e| e.value()) {
                Some(Cached::Found(cached)) if Arc::ptr_eq(cached, doc) => Op::Remove,
                _ => Op::Nop,
            });
    }

    /// Drops every document outlived as of `now`: one walk of the cache. Returns how
    /// many it dropped.
    fn sweep(&self, now: Tick) -> usize {
        let outlived: Vec<(i64, Arc<Document>)> = self
            .cache
            .iter()
            .filter_map(|(key, value)| match (&*key, value) {
                (Key::Product(id), Cached::Found(doc)) if self.outlived(&doc, now) => {
                    Some((*id, doc))
                }
                _ => None,
            })
            .collect();
        for (id, doc) in &outlived {
            self.drop_outlived(*id, doc);
        }
        outlived.len()
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
        self.product_at(id, Tick::now())
    }

    /// The cached state of a product as of `now` (the caller's clock reading): a
    /// document that outlived its life in L1 is not returned, and dropped.
    pub fn product_at(&self, id: i64, now: Tick) -> Option<Lookup> {
        match self.cache.get(&Key::Product(id))? {
            Cached::Found(doc) if self.outlived(&doc, now) => {
                self.drop_outlived(id, &doc);
                None
            }
            Cached::Found(doc) => Some(Lookup::Found(doc)),
            Cached::Gone(version) => Some(Lookup::Gone { version }),
            Cached::Unknown => Some(Lookup::Unknown),
            Cached::Sku(_) | Cached::NoSku | Cached::Body(_) => None,
        }
    }

    /// What a compute sees under `id`'s lock: its product state's version, with an
    /// outlived document counted as absent.
    fn held_version(&self, current: Option<&Cached>, now: Tick) -> Option<i64> {
        match current? {
            Cached::Found(doc) if self.outlived(doc, now) => None,
            cached => cached.version(),
        }
    }

    /// Stores a product's state unless L1 already holds a newer version or the
    /// product's floor (read under the key's lock) is newer. Returns whether it stored.
    pub fn insert_fresh(&self, id: i64, lookup: Lookup, floor: impl FnOnce() -> i64) -> bool {
        let now = Tick::now();
        let result = self
            .cache
            .entry(Key::Product(id))
            .and_compute_with(|current| {
                let held = self.held_version(current.as_ref().map(|e| e.value()), now);
                let newer_cached = held.is_some_and(|held| held > lookup.version());
                if newer_cached || lookup.version() < floor() {
                    Op::Nop
                } else {
                    Op::Put(Cached::product(lookup))
                }
            });
        matches!(
            result,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        )
    }

    /// `doc`'s gzip form ([`Document::gzip`]); when this call made it, what the document
    /// holds grew, so its entry is weighed again ([`L1::reweigh`]).
    pub fn gzip<'d>(&self, doc: &'d Document) -> Option<Gzipped<'d>> {
        let form = doc.gzip()?;
        if form.made {
            self.reweigh(doc);
        }
        Some(form)
    }

    /// Weighs `doc`'s entry again if L1 still holds it (compared by identity), after what
    /// it holds grew (its gzip form was made). It is stored again as it is, as a fill of
    /// it would store it now.
    fn reweigh(&self, doc: &Document) {
        self.cache
            .entry(Key::Product(doc.id))
            .and_compute_with(|current| match current.as_ref().map(|e| e.value()) {
                Some(Cached::Found(cached)) if std::ptr::eq(Arc::as_ptr(cached), doc) => {
                    Op::Put(Cached::Found(Arc::clone(cached)))
                }
                _ => Op::Nop,
            });
    }

    /// Removes `id`'s entry if it is older than `version`. Returns whether it did.
    pub fn evict_older(&self, id: i64, version: i64) -> bool {
        let result = self
            .cache
            .entry(Key::Product(id))
            .and_compute_with(
                |current| match current.as_ref().and_then(|e| e.value().version()) {
                    Some(cached) if cached < version => Op::Remove,
                    _ => Op::Nop,
                },
            );
        matches!(result, CompResult::Removed(_))
    }

    /// Drops a product's entry whatever its version (an operator's purge).
    pub fn remove_product(&self, id: i64) {
        self.cache.invalidate(&Key::Product(id));
    }

    /// Drops a cached response body; fills of bodies that began before this call will
    /// not store theirs, and fills that begin after it read a source that has replayed
    /// `visible_at` (where the change that invalidates it is visible), when known.
    pub fn invalidate(&self, key: &Key, visible_at: Option<u64>) {
        if let Some(position) = visible_at {
            self.body_floor.fetch_max(position, Ordering::SeqCst);
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate(key);
    }

    /// What a fill of a body starts from, read before reading its source: the
    /// generation to store under ([`L1::insert_body`]) and the WAL position its source
    /// must have replayed.
    pub fn body_fill(&self) -> BodyFill {
        // The generation first: an invalidation raises the floor before it moves the
        // generation, so a fill that sees the new generation sees the new floor too.
        let generation = self.generation.load(Ordering::SeqCst);
        BodyFill {
            generation,
            floor: self.body_floor.load(Ordering::SeqCst),
        }
    }

    /// Drops everything (after a gap or a reset of the invalidation stream); fills of
    /// bodies that began before will not store theirs.
    pub fn flush(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
    }

    /// Stores a product's state unconditionally (tests and benchmarks warm L1 with it).
    pub fn insert_product(&self, id: i64, lookup: Lookup) {
        self.cache.insert(Key::Product(id), Cached::product(lookup));
    }

    /// The id of the live product with `sku`, if L1 knows it.
    pub fn sku(&self, sku: &Arc<str>) -> Option<Option<i64>> {
        match self.cache.get(&Key::Sku(sku.clone()))? {
            Cached::Sku(id) => Some(Some(id)),
            Cached::NoSku => Some(None),
            _ => None,
        }
    }

    /// Remembers which product has `sku`.
    pub fn insert_sku(&self, sku: Arc<str>, id: Option<i64>) {
        self.cache
            .insert(Key::Sku(sku), id.map_or(Cached::NoSku, Cached::Sku));
    }

    /// A cached response body.
    pub fn body(&self, key: &Key) -> Option<Arc<Body>> {
        match self.cache.get(key)? {
            Cached::Body(body) => Some(body),
            _ => None,
        }
    }

    /// Caches a response body read when the generation was `generation`, unless an
    /// invalidation came since (checked under the key's lock, which the invalidation's
    /// removal also takes). Returns whether it stored.
    pub fn insert_body(&self, key: Key, body: Arc<Body>, generation: u64) -> bool {
        let result = self.cache.entry(key).and_compute_with(|_| {
            if self.generation.load(Ordering::SeqCst) == generation {
                Op::Put(Cached::Body(body))
            } else {
                Op::Nop
            }
        });
        matches!(
            result,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        )
    }

    /// Up to `n` cached product states, picked at random (reservoir sampling over one
    /// walk of the cache), for the consistency auditor; outlived documents, which L1
    /// no longer serves, are left out.
    pub fn sample_products(&self, n: usize, rng: &mut impl rand::RngExt) -> Vec<(i64, i64)> {
        let now = Tick::now();
        let mut picked: Vec<(i64, i64)> = Vec::with_capacity(n);
        let mut seen = 0usize;
        for (key, value) in self.cache.iter() {
            let Key::Product(id) = &*key else {
                continue;
            };
            let version = match &value {
                Cached::Found(doc) if self.outlived(doc, now) => continue,
                Cached::Found(doc) => doc.version,
                Cached::Gone(version) => *version,
                Cached::Unknown | Cached::Sku(_) | Cached::NoSku | Cached::Body(_) => continue,
            };
            seen += 1;
            if picked.len() < n {
                picked.push((*id, version));
            } else {
                let slot = rng.random_range(0..seen);
                if slot < n {
                    picked[slot] = (*id, version);
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
mod tests;
