//! The read through the tiers, for reads without a token: L1, else one coalesced fill
//! per key (single-flight) from L2 (Redis), else a healthy replica (or the primary).
//!
//! Consistency: eventual, bounded by the invalidation window. Every fill respects the
//! product's freshness floor (raised by the invalidation consumer): a Redis value or
//! replica row older than the floor is not used, the row is read from the primary
//! instead, and L1 keeps a fill only if the floor still allows it when it lands. A
//! database fill is written back to L2 by version. Unknown ids are cached briefly as
//! negative entries.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Reader;
use super::db::take;
use super::error::ReadError;
use crate::document::{Document, Lookup, Tick};
use crate::store::redis::L2;

/// What L1 holds for one product, as the read path sees it.
#[derive(Debug)]
pub(super) enum InL1 {
    /// Servable: fresh, or past the soft TTL (then queued for a refresh).
    Fresh(Lookup),
    /// A document past the hard TTL: refilled, kept for when no database answers.
    Expired(Arc<Document>),
    /// Nothing.
    Missing,
}

/// Write-backs to L2 in flight at once, per reader.
pub(super) const WRITE_BACKS: usize = 256;

impl Reader {
    /// The state of one product: L1, else one coalesced fill. A document past the
    /// hard TTL is refilled, and served (stale, with its age) only if no database can
    /// answer (`CATALOG_STALE_IF_ERROR_SECS`).
    pub(super) async fn l1_or_fill(&self, id: i64) -> Result<Lookup, ReadError> {
        let expired = match self.in_l1(id, Tick::now()) {
            InL1::Fresh(lookup) => return Ok(lookup),
            InL1::Expired(doc) => Some(doc),
            InL1::Missing => None,
        };
        self.metrics.l1_misses.inc();
        let (lookup, ran) = self
            .flight
            .run(id, Box::pin(self.fill_from_l2_or_db(id)))
            .await;
        if !ran {
            self.metrics.coalesced.inc();
        }
        match (lookup, expired) {
            (Err(error), Some(doc)) if error.is_unavailable() => {
                self.metrics.stale_served.inc();
                Ok(Lookup::Found(doc))
            }
            (lookup, _) => lookup,
        }
    }

    /// What L1 holds for `id` as of `now`, counted as a hit when it may be served: a
    /// document past the soft TTL is served and queued for a refresh, one past the
    /// hard TTL is not served (it is kept for when no database answers).
    pub(super) fn in_l1(&self, id: i64, now: Tick) -> InL1 {
        let Some(lookup) = self.l1.product_at(id, now) else {
            return InL1::Missing;
        };
        if let Lookup::Found(doc) = &lookup {
            let age = doc.age_at(now);
            if age >= self.ttl.hard {
                return InL1::Expired(Arc::clone(doc));
            }
            if age >= self.ttl.soft {
                self.refresh_ahead(id);
            }
        }
        self.metrics.l1_hits.inc();
        if lookup == Lookup::Unknown {
            self.metrics.negative_hits.inc();
        }
        InL1::Fresh(lookup)
    }

    /// Queues `id` for a background refresh; a full queue drops it (the next hit
    /// queues it again).
    fn refresh_ahead(&self, id: i64) {
        if self.refresh_queue.try_send(id).is_ok() {
            self.metrics.refreshes_ahead.inc();
        }
    }

    /// Refreshes the documents queued by hits past the soft TTL, until `stop` fires.
    pub async fn refresh_ahead_loop(self: Arc<Self>, stop: CancellationToken) {
        let queue = self
            .refresh_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut queue) = queue else {
            return;
        };
        loop {
            let id = tokio::select! {
                () = stop.cancelled() => return,
                id = queue.recv() => match id {
                    Some(id) => id,
                    None => return,
                },
            };
            // Queued many times by many hits: refresh only what is still old.
            if let Some(Lookup::Found(doc)) = self.l1.product(id)
                && doc.age_at(Tick::now()) >= self.ttl.soft
            {
                let refill = self.flight.run(id, Box::pin(self.fill_from_l2_or_db(id)));
                if let (Err(err), _) = refill.await {
                    tracing::debug!(id, error = %err, "refresh-ahead failed; the copy is served on");
                }
            }
        }
    }

    /// The state of each of `ids`, in order: L1, then L2 and the databases for the rest
    /// (one `MGET`, one query), caching what was loaded.
    pub(super) async fn l1_or_fill_many(&self, ids: &[i64]) -> Result<Vec<Lookup>, ReadError> {
        let mut out: Vec<Option<Lookup>> = Vec::with_capacity(ids.len());
        let mut misses: Vec<usize> = Vec::new();
        let now = Tick::now();
        for (i, &id) in ids.iter().enumerate() {
            let cached = match self.in_l1(id, now) {
                InL1::Fresh(lookup) => Some(lookup),
                InL1::Expired(_) | InL1::Missing => None,
            };
            if cached.is_none() {
                misses.push(i);
            }
            out.push(cached);
        }
        self.metrics.l1_misses.inc_by(misses.len() as u64);
        if !misses.is_empty() {
            let mut from_db: Vec<i64> = Vec::new();
            let l2_answers = match self.live_l2() {
                Some(l2) => {
                    let miss_ids: Vec<i64> = misses.iter().map(|&i| ids[i]).collect();
                    l2.get_many(&miss_ids).await.unwrap_or_else(|err| {
                        self.l2_failed(&err);
                        vec![None; miss_ids.len()]
                    })
                }
                None => vec![None; misses.len()],
            };
            for (&i, answer) in misses.iter().zip(l2_answers) {
                match answer {
                    Some(lookup) if lookup.version() >= self.floors.get(ids[i]) => {
                        self.metrics.l2_hits.inc();
                        out[i] = Some(self.keep_in_l1(ids[i], lookup).await?);
                    }
                    _ => from_db.push(ids[i]),
                }
            }
            if self.live_l2().is_some() {
                self.metrics.l2_misses.inc_by(from_db.len() as u64);
            }
            if !from_db.is_empty() {
                let mut loaded = self.reads.products(from_db.clone()).await?;
                for id in from_db {
                    let lookup = self.settle_db_fill(id, take(&mut loaded, id)).await?;
                    if let Some(i) = ids.iter().position(|&x| x == id) {
                        out[i] = Some(lookup);
                    }
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|l| l.unwrap_or(Lookup::Unknown))
            .collect())
    }

    /// Loads one product from L2, else the databases, never older than its floor;
    /// caches it in L1 and writes a database fill back to L2.
    async fn fill_from_l2_or_db(&self, id: i64) -> Result<Lookup, ReadError> {
        let floor = self.floors.get(id);
        if let Some(l2) = self.live_l2() {
            // Boxed: fred's command future is about 5 KB, and held inline it would make
            // this future (boxed whole by single-flight, which copies it) as large even
            // for fills that skip Redis.
            match Box::pin(l2.get(id)).await {
                Ok(Some(lookup)) if lookup.version() >= floor => {
                    self.metrics.l2_hits.inc();
                    return self.keep_in_l1(id, lookup).await;
                }
                Ok(_) => {
                    self.metrics.l2_misses.inc();
                }
                Err(err) => self.l2_failed(&err),
            }
        }
        let lookup = self.reads.product(id).await?;
        self.settle_db_fill(id, lookup).await
    }

    /// Finishes a database fill: a row older than the product's floor is read again
    /// from the primary; the result is written back to L2 and kept in L1.
    async fn settle_db_fill(&self, id: i64, lookup: Lookup) -> Result<Lookup, ReadError> {
        let lookup = if lookup.version() < self.floors.get(id) {
            self.read_primary(id).await?
        } else {
            lookup
        };
        self.write_back_l2(id, &lookup);
        self.keep_in_l1(id, lookup).await
    }

    /// Stores a fill in L1 if its floor allows; if the floor rose while it was being
    /// read (an invalidation arrived), the primary's row is used instead.
    async fn keep_in_l1(&self, id: i64, lookup: Lookup) -> Result<Lookup, ReadError> {
        if self
            .l1
            .insert_fresh(id, lookup.clone(), || self.floors.get(id))
            || lookup.version() >= self.floors.get(id)
        {
            return Ok(lookup);
        }
        let fresh = self.read_primary(id).await?;
        self.write_back_l2(id, &fresh);
        self.l1
            .insert_fresh(id, fresh.clone(), || self.floors.get(id));
        Ok(fresh)
    }

    /// Reads one product from the primary, after a replica or Redis was older than the
    /// product's floor.
    async fn read_primary(&self, id: i64) -> Result<Lookup, ReadError> {
        self.metrics.stale_fills.inc();
        self.reads.product_on_primary(id).await
    }

    /// L2, unless there is none or the invalidation feed is silent (the relay, which
    /// keeps L2 current, may be what stopped).
    fn live_l2(&self) -> Option<&L2> {
        self.l2.as_ref().filter(|_| !self.feed.is_silent())
    }

    /// Writes a database fill back to L2 in the background: the answer does not wait
    /// for Redis. At most [`WRITE_BACKS`] run at once; past that (Redis slow) a
    /// write-back is skipped and counted, since L2 is only a cache.
    fn write_back_l2(&self, id: i64, lookup: &Lookup) {
        let Some(l2) = self.live_l2() else {
            return;
        };
        let Ok(permit) = Arc::clone(&self.write_backs).try_acquire_owned() else {
            self.metrics.l2_write_backs_skipped.inc();
            return;
        };
        let (l2, lookup, metrics) = (l2.clone(), lookup.clone(), Arc::clone(&self.metrics));
        // Bounded by the permit and by the command timeout; nothing waits for it.
        tokio::spawn(async move {
            if let Err(err) = l2.put(id, &lookup).await {
                metrics.l2_errors.inc();
                tracing::debug!(error = %err, "write-back to Redis failed");
            }
            drop(permit);
        });
    }

    pub(super) fn l2_failed(&self, err: &fred::error::Error) {
        self.metrics.l2_errors.inc();
        tracing::debug!(error = %err, "Redis command failed; reading on without L2");
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    /// The size of the future `fill` returns, without calling it.
    fn future_size<F: Future>(_fill: impl Fn(&'static Reader) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_fill_future_is_small() {
        // Every miss moves a fill's future into a box (single-flight): a copy of its
        // whole size, 10 KB when fred's command future was held inline (twice).
        let size = future_size(|reader| reader.fill_from_l2_or_db(1));
        assert!(size <= 2048, "the fill's future takes {size} bytes");
    }
}
