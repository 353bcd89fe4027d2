//! The sweeper (in the writer): housekeeping of the two tables every write adds to. It
//! lives beside the writes because the rows it deletes are the writer's own.
//!
//! Every `CATALOG_SWEEP_INTERVAL_SECS` a round deletes:
//! - **idempotency keys** that expired (`CATALOG_IDEMPOTENCY_TTL_SECS`) and that no
//!   request holds (their lease expired too);
//! - **outbox rows** published more than `CATALOG_OUTBOX_RETENTION_SECS` ago. An
//!   unpublished row has no `published_at`, so no round can delete it.
//!
//! Rows go in batches of [`BATCH`], each one statement (its own short transaction)
//! under the database deadline, at most [`MAX_BATCHES`] per table per round. A batch
//! picks its rows with `for update skip locked`, so it never waits for a row a write, a
//! claim or the relay holds, and never holds many locks for long. The statements are
//! idempotent: every writer runs a sweeper, and two running at once only share the work.
//! A failed batch is logged and counted, and the next round tries again; the sweeper
//! never stops the process.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use sqlx::PgPool;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::postgres::within;

/// Rows one batch deletes at most: small enough that a batch's locks and its WAL are
/// brief, large enough that a day of writes clears in a few rounds.
pub const BATCH: i64 = 1000;

/// Batches per table per round at most, so one round is bounded; what is left waits
/// for the next round.
pub const MAX_BATCHES: usize = 100;

/// How the sweeper runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepSettings {
    /// Time between rounds (`CATALOG_SWEEP_INTERVAL_SECS`); the first runs at start.
    pub interval: Duration,
    /// How long a published outbox row is kept (`CATALOG_OUTBOX_RETENTION_SECS`).
    pub outbox_retention: Duration,
    /// Deadline of each statement (`CATALOG_DB_TIMEOUT_MS`).
    pub deadline: Duration,
}

/// What one round deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Expired idempotency keys.
    pub keys: u64,
    /// Published outbox rows past the retention period.
    pub outbox: u64,
}

/// Deletes expired idempotency keys and old published outbox rows, round after round.
#[derive(Debug)]
pub struct Sweeper {
    primary: PgPool,
    settings: SweepSettings,
    metrics: Arc<Metrics>,
}

/// One batch of expired keys that no request holds.
const KEYS: &str = "delete from idempotency_keys where key in ( \
                    select key from idempotency_keys \
                    where expires_at < now() and locked_until < now() \
                    limit $1 for update skip locked)";

/// One batch of the oldest outbox rows published before the retention period.
const OUTBOX: &str = "delete from outbox where id in ( \
                      select id from outbox \
                      where published_at < now() - make_interval(secs => $2) \
                      order by published_at limit $1 for update skip locked)";

impl Sweeper {
    /// A sweeper of `primary`'s tables.
    pub fn new(primary: PgPool, settings: SweepSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            primary,
            settings,
            metrics,
        }
    }

    /// Runs a round now and then every interval, until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.settings.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            tokio::select! {
                () = stop.cancelled() => return,
                swept = self.round() => match swept {
                    Ok(swept) if swept != Swept::default() => {
                        tracing::info!(keys = swept.keys, outbox = swept.outbox, "swept");
                    }
                    Ok(_) => tracing::debug!("nothing to sweep"),
                    Err(err) => {
                        self.metrics.sweeper_errors.inc();
                        tracing::warn!(error = %err, "sweep failed; retrying next round");
                    }
                },
            }
        }
    }

    /// One round: both tables, batch by batch.
    pub async fn round(&self) -> Result<Swept, sqlx::Error> {
        self.metrics.sweeper_rounds.inc();
        let retention = self.settings.outbox_retention.as_secs_f64();
        let keys = self
            .batches(KEYS, None, &self.metrics.sweeper_keys_deleted)
            .await?;
        let outbox = self
            .batches(
                OUTBOX,
                Some(retention),
                &self.metrics.sweeper_outbox_deleted,
            )
            .await?;
        Ok(Swept { keys, outbox })
    }

    /// Runs `statement` (with the batch size, and the retention in seconds if it takes
    /// one) until a batch comes back short, or [`MAX_BATCHES`] ran.
    async fn batches(
        &self,
        statement: &'static str,
        retention_secs: Option<f64>,
        deleted: &Counter,
    ) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        for _ in 0..MAX_BATCHES {
            let mut batch = sqlx::query(statement).bind(BATCH);
            if let Some(secs) = retention_secs {
                batch = batch.bind(secs);
            }
            let batch = batch.execute(&self.primary);
            let rows = within(self.settings.deadline, batch).await?.rows_affected();
            deleted.inc_by(rows);
            total += rows;
            if rows < BATCH.unsigned_abs() {
                break;
            }
        }
        Ok(total)
    }
}
