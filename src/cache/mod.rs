//! L1: the in-process cache of pre-serialized documents (moka).
//!
//! Bounded by bytes, not entries: the weigher charges each entry its body, its key and a
//! fixed overhead, against `CATALOG_L1_BYTES`. Every entry also has a maximum age
//! (`CATALOG_L1_TTL_SECS`), the backstop that bounds staleness under any fault nobody
//! detected; unknown ids are remembered for a much shorter time
//! (`CATALOG_NEGATIVE_TTL_MS`). Concurrent misses for one key share one fill
//! ([`L1::product_or_fill`]): moka runs the first caller's future and hands its result
//! to the others.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;

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

/// Bytes charged per entry beyond its body and key: an estimate of moka's node and
/// deque entries, the `Arc`ed document header and the `ETag` (resident memory per
/// entry is to be measured with 1,000,000 documents in the performance work).
const ENTRY_OVERHEAD: u32 = 160;

/// Tuning of L1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L1Config {
    /// Budget in bytes.
    pub budget_bytes: u64,
    /// Maximum age of any entry.
    pub max_ttl: Duration,
    /// Age of negative entries.
    pub negative_ttl: Duration,
}

/// The in-process cache.
#[derive(Debug, Clone)]
pub struct L1 {
    cache: Cache<Key, Cached>,
}

/// Expiry policy: negative entries live `negative_ttl`, everything else `max_ttl`,
/// counted from the last write of the entry.
struct Ttl(L1Config);

impl Ttl {
    fn ttl(&self, value: &Cached) -> Duration {
        if value.is_negative() {
            self.0.negative_ttl.min(self.0.max_ttl)
        } else {
            self.0.max_ttl
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
        Cached::Product(Lookup::Found(doc)) => doc.body.len() + doc.sku.len(),
        Cached::Product(_) | Cached::Sku(_) => 0,
        Cached::Body(body) => body.len(),
    };
    u32::try_from(key_bytes + value_bytes)
        .unwrap_or(u32::MAX)
        .saturating_add(ENTRY_OVERHEAD)
}

/// How a lookup that went through [`L1::product_or_fill`] was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    /// This caller ran the fill.
    Filled,
    /// Another caller's fill answered this one too.
    Coalesced,
}

impl L1 {
    /// An empty cache.
    pub fn new(config: L1Config) -> Self {
        let cache = Cache::builder()
            .max_capacity(config.budget_bytes)
            .weigher(weigh)
            .expire_after(Ttl(config))
            .build();
        Self { cache }
    }

    /// The cached state of a product, if L1 has it.
    pub async fn product(&self, id: i64) -> Option<Lookup> {
        match self.cache.get(&Key::Product(id)).await {
            Some(Cached::Product(lookup)) => Some(lookup),
            _ => None,
        }
    }

    /// The product's state from L1, or from `fill` run once for all concurrent callers.
    pub async fn product_or_fill<E, F>(
        &self,
        id: i64,
        fill: F,
    ) -> Result<(Lookup, FillOutcome), Arc<E>>
    where
        E: Send + Sync + 'static,
        F: Future<Output = Result<Lookup, E>>,
    {
        let mut outcome = FillOutcome::Coalesced;
        let cached = self
            .cache
            .try_get_with(Key::Product(id), async {
                outcome = FillOutcome::Filled;
                fill.await.map(Cached::Product)
            })
            .await?;
        match cached {
            Cached::Product(lookup) => Ok((lookup, outcome)),
            // Only `Product` values are stored under `Key::Product`.
            Cached::Sku(_) | Cached::Body(_) => Ok((Lookup::Unknown, outcome)),
        }
    }

    /// Stores a product's state (after a batch fill).
    pub async fn insert_product(&self, id: i64, lookup: Lookup) {
        self.cache
            .insert(Key::Product(id), Cached::Product(lookup))
            .await;
    }

    /// The id of the live product with `sku`, if L1 knows it.
    pub async fn sku(&self, sku: &Arc<str>) -> Option<Option<i64>> {
        match self.cache.get(&Key::Sku(sku.clone())).await {
            Some(Cached::Sku(id)) => Some(id),
            _ => None,
        }
    }

    /// Remembers which product has `sku`.
    pub async fn insert_sku(&self, sku: Arc<str>, id: Option<i64>) {
        self.cache.insert(Key::Sku(sku), Cached::Sku(id)).await;
    }

    /// A cached response body.
    pub async fn body(&self, key: &Key) -> Option<Bytes> {
        match self.cache.get(key).await {
            Some(Cached::Body(body)) => Some(body),
            _ => None,
        }
    }

    /// Caches a response body.
    pub async fn insert_body(&self, key: Key, body: Bytes) {
        self.cache.insert(key, Cached::Body(body)).await;
    }

    /// Entries and weighted bytes, as of the last [`L1::sync`] (moka applies writes lazily).
    pub fn usage(&self) -> (u64, u64) {
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// Applies pending housekeeping now, so [`L1::usage`] is exact (before a scrape).
    pub async fn sync(&self) {
        self.cache.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::Document;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn config() -> L1Config {
        L1Config {
            budget_bytes: 1 << 20,
            max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_millis(50),
        }
    }

    fn found(id: i64, len: usize) -> Lookup {
        Lookup::Found(Arc::new(Document::new(
            id,
            1,
            "SKU",
            Bytes::from(vec![b'x'; len]),
        )))
    }

    #[tokio::test]
    async fn concurrent_misses_run_one_fill() {
        let l1 = L1::new(config());
        let fills = AtomicUsize::new(0);
        let lookups = (0..50).map(|_| {
            l1.product_or_fill(9, async {
                fills.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                Ok::<_, ()>(found(9, 10))
            })
        });
        let results = futures_util::future::join_all(lookups).await;
        assert_eq!(fills.load(Ordering::SeqCst), 1);
        let filled = results
            .iter()
            .filter(|r| r.as_ref().unwrap().1 == FillOutcome::Filled)
            .count();
        assert_eq!(filled, 1);
        assert!(results.iter().all(|r| r.as_ref().unwrap().0.version() == 1));
    }

    #[tokio::test]
    async fn the_budget_bounds_the_bytes_held() {
        let l1 = L1::new(L1Config {
            budget_bytes: 100_000,
            ..config()
        });
        for id in 0..1000 {
            l1.insert_product(id, found(id, 1000)).await;
        }
        l1.sync().await;
        let (entries, bytes) = l1.usage();
        assert!(bytes <= 100_000, "{bytes} bytes held");
        assert!(entries < 100, "{entries} entries held");
    }

    #[tokio::test]
    async fn negative_entries_expire_first_and_a_fill_replaces_them() {
        let l1 = L1::new(config());
        l1.insert_product(1, Lookup::Unknown).await;
        l1.insert_product(2, found(2, 10)).await;
        assert_eq!(l1.product(1).await, Some(Lookup::Unknown));
        let deadline = Instant::now() + Duration::from_secs(5);
        while l1.product(1).await.is_some() {
            assert!(Instant::now() < deadline, "negative entry never expired");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(l1.product(2).await.is_some());
        // An update from negative to found takes the long TTL.
        l1.insert_product(3, Lookup::Unknown).await;
        l1.insert_product(3, found(3, 10)).await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(matches!(l1.product(3).await, Some(Lookup::Found(_))));
    }
}
