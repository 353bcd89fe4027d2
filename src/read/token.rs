//! Reads that carry `Min-Catalog-Token: T` (the `Catalog-Token` of a write): served
//! only from state that includes that commit.
//!
//! From the caches when this reader's watermark (published by the invalidation
//! consumer) has passed T, after waiting up to [`TOKEN_WAIT`] for it; otherwise around
//! the caches, from a replica that has replayed T, or the primary. What was read there
//! is kept in L1 if the product's floor allows. A token ahead of the primary's position
//! is refused, and reads around the caches are bounded (`CATALOG_TOKEN_BYPASS_MAX`), so
//! tokens cannot be used to pile reads onto the primary.

use hyper::header::HeaderValue;
use tokio::sync::SemaphorePermit;

use super::Reader;
use super::db::{rendered, rows_of, take};
use super::error::ReadError;
use super::limits::TOKEN_WAIT;
use crate::document::Lookup;
use crate::store::replicas::parse_lsn;

/// What a read must include.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Whatever the caches hold: eventual, within the invalidation window.
    Cached,
    /// Every write committed at or before this WAL position (read-your-writes).
    AtLeast(u64),
}

impl Reader {
    /// What a read with `Min-Catalog-Token` needs: [`Consistency::Cached`] when the
    /// caches include the token's commit (now or after a short wait), else the position
    /// to read at, around them, with one of the bounded permits for such reads.
    ///
    /// A token is refused (400) when it is ahead of every position the primary has
    /// reached: no write answered it, and it could never be covered, so it would
    /// otherwise turn a public read into a primary read.
    pub(super) async fn consistency_for(
        &self,
        token: &HeaderValue,
    ) -> Result<(Consistency, Option<SemaphorePermit<'_>>), ReadError> {
        let lsn = token
            .to_str()
            .ok()
            .and_then(parse_lsn)
            .ok_or(ReadError::InvalidToken)?;
        // Strictly past: a watermark equal to the token may predate the commit's visibility.
        if *self.applied.borrow() > lsn {
            return Ok((Consistency::Cached, None));
        }
        match self.db.reached(lsn).await {
            Some(true) => {}
            Some(false) => return Err(ReadError::TokenAhead),
            None => return Err(ReadError::NoDatabase),
        }
        let mut applied = self.applied.clone();
        match tokio::time::timeout(TOKEN_WAIT, applied.wait_for(|w| *w > lsn)).await {
            Ok(Ok(_)) => Ok((Consistency::Cached, None)),
            Ok(Err(_)) | Err(_) => {
                let permit = self
                    .bypasses
                    .try_acquire()
                    .map_err(|_| ReadError::TokenBypassesBusy)?;
                self.metrics.token_bypasses.inc();
                Ok((Consistency::AtLeast(lsn), Some(permit)))
            }
        }
    }

    /// The state of one product with the given consistency.
    pub(super) async fn product_at(&self, id: i64, at: Consistency) -> Result<Lookup, ReadError> {
        match at {
            Consistency::Cached => self.l1_or_fill(id).await,
            Consistency::AtLeast(_) => {
                let mut lookups = self.products_at(&[id], at).await?;
                Ok(lookups.pop().unwrap_or(Lookup::Unknown))
            }
        }
    }

    /// The state of each of `ids`, in order, with the given consistency.
    pub(super) async fn products_at(
        &self,
        ids: &[i64],
        at: Consistency,
    ) -> Result<Vec<Lookup>, ReadError> {
        let Consistency::AtLeast(lsn) = at else {
            return self.l1_or_fill_many(ids).await;
        };
        let mut loaded = self.read_covering(ids.to_vec(), lsn).await?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let lookup = take(&mut loaded, id);
            self.l1
                .insert_fresh(id, lookup.clone(), || self.floors.get(id));
            out.push(lookup);
        }
        Ok(out)
    }

    /// Reads `ids` from a replica that has replayed `lsn`, or the primary.
    async fn read_covering(
        &self,
        ids: Vec<i64>,
        lsn: u64,
    ) -> Result<Vec<(i64, Lookup)>, ReadError> {
        rendered(self.reads.covering(lsn, rows_of(ids)).await?)
    }
}
