//! The reads a storefront request makes of the databases, each under the database
//! deadline: a query on a healthy replica (or the primary), retried once elsewhere when
//! a replica fails or does not answer in time ([`DbReads::query`]); one on a replica
//! that has replayed a token's position, else the primary ([`DbReads::covering`]); a
//! product read from the primary when a floor refused the copy found
//! ([`DbReads::product_on_primary`]); and the rows of single-product fills, which concurrent
//! misses share ([`DbReads::product`]): with coalescing on, the ids of fills that
//! arrive while earlier ones are in flight go out together in one
//! `where p.id = any($1)` query ([`Coalescer`]), so a burst of cold reads costs the
//! reader and the replica a few queries instead of one each.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use super::error::ReadError;
use crate::document::{Lookup, ProductRow};
use crate::metrics::Metrics;
use crate::store::catalog;
use crate::store::coalesce::Coalescer;
use crate::store::postgres::within;
use crate::store::replicas::{Databases, Target};

/// A boxed query future, so one retry loop can run any query on any pool.
pub(super) type Query<'p, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'p>>;

/// Batches of coalesced row reads in flight at once: a few, so one slow query does not
/// hold every fill back, and a burst shares a handful of connections.
const BATCHES_IN_FLIGHT: usize = 4;

/// The read path's access to the databases, shared by every request.
#[derive(Debug, Clone)]
pub(super) struct DbReads {
    db: Arc<Databases>,
    metrics: Arc<Metrics>,
    /// Deadline of each database call.
    timeout: Duration,
    /// Where single-product reads are batched, when they are coalesced.
    batches: Option<Coalescer<i64, Lookup, ReadError>>,
}

impl DbReads {
    /// Reads of `db` under the deadline `timeout`, one query per fill.
    pub(super) fn new(db: Arc<Databases>, metrics: Arc<Metrics>, timeout: Duration) -> Self {
        Self {
            db,
            metrics,
            timeout,
            batches: None,
        }
    }

    /// These reads with single-product fills coalesced into queries of at most
    /// `max_batch` ids; 0 leaves one query per fill. Spawns the batch task, which ends
    /// when the last clone of the returned value is gone.
    pub(super) fn coalescing(self, max_batch: usize) -> Self {
        if max_batch == 0 {
            return self;
        }
        let plain = self.clone();
        let batches = Coalescer::start(
            move |ids: Vec<i64>| {
                let reads = plain.clone();
                // Boxed where it is made: the batch task moves it twice more.
                Box::pin(async move { reads.products_in_order(ids).await })
            },
            max_batch,
            BATCHES_IN_FLIGHT,
        );
        Self {
            batches: Some(batches),
            ..self
        }
    }

    /// The state of product `id` as a healthy replica (or the primary) has it, no
    /// freshness promised (the caller checks floors). Coalesced with concurrent fills
    /// when these reads coalesce; a fill waits for its batch at most as long as a
    /// query's two tries may take, and reads alone when the batch queue is full.
    pub(super) async fn product(&self, id: i64) -> Result<Lookup, ReadError> {
        if let Some(batches) = &self.batches {
            match tokio::time::timeout(2 * self.timeout, batches.get(id)).await {
                Ok(Ok(answer)) => return answer,
                Ok(Err(_)) => {}
                Err(_) => {
                    return Err(ReadError::from(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "a coalesced product read was not answered in time",
                    ))));
                }
            }
        }
        let mut loaded = self.products(vec![id]).await?;
        Ok(take(&mut loaded, id))
    }

    /// The state of each of `ids`, in order (an id twice gets its state twice).
    async fn products_in_order(&self, ids: Vec<i64>) -> Result<Vec<Lookup>, ReadError> {
        let loaded: HashMap<i64, Lookup> = self.products(ids.clone()).await?.into_iter().collect();
        Ok(ids
            .iter()
            .map(|id| loaded.get(id).cloned().unwrap_or(Lookup::Unknown))
            .collect())
    }

    /// Reads and renders the rows of `ids` that exist, from a healthy replica or the
    /// primary, in one query (no freshness promise: the caller checks floors).
    pub(super) async fn products(&self, ids: Vec<i64>) -> Result<Vec<(i64, Lookup)>, ReadError> {
        rendered(self.query(rows_of(ids)).await?)
    }

    /// Runs a query on a healthy replica (or the primary), under the database deadline;
    /// a replica that fails or does not answer in time is taken out of the healthy set
    /// and the query is retried once elsewhere.
    pub(super) async fn query<T, F>(&self, run: F) -> Result<T, ReadError>
    where
        F: for<'p> Fn(&'p PgPool) -> Query<'p, T>,
    {
        let mut last_error = ReadError::NoDatabase;
        for _ in 0..2 {
            let target = self.db.pick().ok_or(ReadError::NoDatabase)?;
            match within(self.timeout, run(target.pool())).await {
                Ok(value) => {
                    self.count(target);
                    return Ok(value);
                }
                Err(err) => {
                    self.metrics.db_errors.inc();
                    match target {
                        Target::Replica(index, _) => {
                            tracing::warn!(error = %err, replica = index, "replica query failed");
                            self.db.mark_failed(index, &self.metrics);
                            last_error = ReadError::from(err);
                        }
                        Target::Primary(_) => return Err(err.into()),
                    }
                }
            }
        }
        Err(last_error)
    }

    /// Runs a query, under the database deadline, on a healthy replica that has
    /// replayed `lsn`, else on the primary; a replica that fails is taken out of the
    /// healthy set and the query is run on the primary.
    pub(super) async fn covering<T, F>(&self, lsn: u64, run: F) -> Result<T, ReadError>
    where
        F: for<'p> Fn(&'p PgPool) -> Query<'p, T>,
    {
        let target = self.db.pick_covering(lsn);
        match within(self.timeout, run(target.pool())).await {
            Ok(value) => {
                self.count(target);
                Ok(value)
            }
            Err(err) => {
                self.metrics.db_errors.inc();
                let Target::Replica(index, _) = target else {
                    return Err(err.into());
                };
                self.db.mark_failed(index, &self.metrics);
                let value = within(self.timeout, run(self.db.primary())).await?;
                self.metrics.db_reads_primary.inc();
                Ok(value)
            }
        }
    }

    /// The state of product `id` as the primary has it, under the database deadline.
    pub(super) async fn product_on_primary(&self, id: i64) -> Result<Lookup, ReadError> {
        let rows = within(
            self.timeout,
            catalog::products_by_ids(self.db.primary(), &[id]),
        )
        .await?;
        self.metrics.db_reads_primary.inc();
        match rows.into_iter().next() {
            Some(row) => Ok(row.into_lookup()?),
            None => Ok(Lookup::Unknown),
        }
    }

    /// Counts one read on the tier it ran on.
    pub(super) fn count(&self, target: Target<'_>) {
        let counter = match target {
            Target::Replica(..) => &self.metrics.db_reads_replica,
            Target::Primary(_) => &self.metrics.db_reads_primary,
        };
        counter.inc();
    }
}

/// The query reading the rows of `ids`, on any pool.
pub(super) fn rows_of(ids: Vec<i64>) -> impl for<'p> Fn(&'p PgPool) -> Query<'p, Vec<ProductRow>> {
    let ids = Arc::new(ids);
    move |pool| {
        let ids = Arc::clone(&ids);
        Box::pin(async move { catalog::products_by_ids(pool, &ids).await })
    }
}

/// Rows rendered into what the caches hold, by id.
pub(super) fn rendered(rows: Vec<ProductRow>) -> Result<Vec<(i64, Lookup)>, ReadError> {
    rows.into_iter()
        .map(|row| Ok((row.id, row.into_lookup()?)))
        .collect()
}

/// Removes and returns `id`'s state from rows just loaded; `Unknown` if no row had it.
pub(super) fn take(loaded: &mut Vec<(i64, Lookup)>, id: i64) -> Lookup {
    match loaded.iter().position(|(found, _)| *found == id) {
        Some(at) => loaded.swap_remove(at).1,
        None => Lookup::Unknown,
    }
}
