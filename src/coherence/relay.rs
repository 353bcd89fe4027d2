//! The outbox relay (in the writer): committed outbox rows → the invalidation stream,
//! and the new documents → L2. Without Redis, `catalogd all` publishes to an in-process
//! bus instead ([`Sink::Local`]), with the same entries and the same protocol.
//!
//! Every write's transaction inserts an outbox row and `NOTIFY catalog_outbox`; the
//! relay `LISTEN`s, so it runs within milliseconds of a commit (and every second anyway,
//! in case a notification was lost while its connection was down). One round, in one
//! transaction on the primary: lock `relay_state` (one relay at a time, so the sequence
//! stays dense), take the oldest unpublished rows, `XADD` each to
//! `<prefix>invalidations` (`MAXLEN ~`) with the next sequence number and the stream's
//! epoch, write each product's current document (or tombstone) to L2 by version, then
//! mark the rows published and advance the sequence. When the round took every
//! unpublished row, its last entry carries the WAL position read before the rows were
//! taken: the readers' watermark for read-your-writes tokens; a round stopped at its
//! batch limit carries none, since older rows still wait. If anything fails the transaction
//! rolls back and the rows are published again later: delivery is at least once, and
//! applying an invalidation twice is harmless. Rows left by a writer that stopped
//! between commit and publish are published by the next relay round, on restart.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::stream::Invalidation;
use crate::document::Lookup;
use crate::metrics::Metrics;
use crate::store::catalog;
use crate::store::redis::L2;

/// The channel writes notify on commit.
pub const CHANNEL: &str = "catalog_outbox";
/// Most outbox rows published per round.
const BATCH: i64 = 256;
/// Relay rounds run at least this often, notification or not.
const POLL: Duration = Duration::from_secs(1);

/// Why a relay round failed; the round rolled back and its rows are published again.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The primary failed (reading, marking or committing the outbox).
    #[error("primary: {0}")]
    Database(#[from] sqlx::Error),
    /// Redis failed (the epoch, `XADD`, or the write-through to L2).
    #[error("Redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// A product row could not be rendered for L2.
    #[error("rendering a document: {0}")]
    Render(#[from] serde_json::Error),
}

/// The stream's key.
pub fn stream_key(prefix: &str) -> String {
    format!("{prefix}invalidations")
}

/// The key holding the stream's epoch.
pub fn epoch_key(prefix: &str) -> String {
    format!("{prefix}invalidations:epoch")
}

/// Where the relay publishes.
#[derive(Debug)]
pub enum Sink {
    /// The Redis stream (and L2 write-through): every reader of the deployment.
    Redis {
        /// L2, whose client also carries the stream commands.
        l2: L2,
        /// `<prefix>invalidations`.
        stream_key: String,
        /// `<prefix>invalidations:epoch`.
        epoch_key: String,
        /// Entries the stream keeps (`MAXLEN ~`).
        max_len: u64,
    },
    /// The in-process bus of `catalogd all` without Redis: the reader in this process.
    Local {
        /// The bus.
        bus: tokio::sync::broadcast::Sender<Invalidation>,
        /// This process's epoch: a restart is a reset.
        epoch: String,
    },
}

impl Sink {
    /// The Redis stream of the deployment with key `prefix`.
    pub fn redis(l2: L2, prefix: &str, max_len: u64) -> Self {
        Self::Redis {
            l2,
            stream_key: stream_key(prefix),
            epoch_key: epoch_key(prefix),
            max_len,
        }
    }

    /// The in-process bus.
    pub fn local(bus: tokio::sync::broadcast::Sender<Invalidation>) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self::Local {
            bus,
            epoch: format!("local-{nanos:x}"),
        }
    }
}

/// The relay task.
#[derive(Debug)]
pub struct Relay {
    primary: PgPool,
    sink: Sink,
    metrics: Arc<Metrics>,
}

/// One outbox row.
#[derive(Debug, sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    product_id: Option<i64>,
    purge: bool,
    version: i64,
    categories: Vec<String>,
    created_micros: i64,
}

impl Relay {
    /// A relay publishing committed outbox rows to `sink`.
    pub fn new(primary: PgPool, sink: Sink, metrics: Arc<Metrics>) -> Self {
        Self {
            primary,
            sink,
            metrics,
        }
    }

    /// Publishes until `stop` fires.
    pub async fn run(self, stop: CancellationToken) {
        let mut listener = None;
        let mut backoff = Backoff::default();
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            match self.round().await {
                Ok(published) => {
                    backoff.reset();
                    if published == BATCH as usize {
                        continue;
                    }
                }
                Err(err) => {
                    self.metrics.relay_errors.inc();
                    tracing::warn!(error = %err, retry_in = ?backoff.next(), "relay round failed");
                    if !backoff.wait(&stop).await {
                        return;
                    }
                    continue;
                }
            }
            let notified = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(drop),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                result = notified => if result.is_err() { listener = None },
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.primary).await.ok()?;
        listener.listen(CHANNEL).await.ok()?;
        Some(listener)
    }

    /// One round: publishes up to [`BATCH`] rows; returns how many.
    pub async fn round(&self) -> Result<usize, RelayError> {
        let mut tx = self.primary.begin().await?;
        let next_seq: i64 =
            sqlx::query_scalar("select next_seq from relay_state where id = 1 for update")
                .fetch_one(&mut *tx)
                .await?;
        let watermark: String = sqlx::query_scalar("select pg_current_wal_lsn()::text")
            .fetch_one(&mut *tx)
            .await?;
        let watermark = crate::store::replicas::parse_lsn(&watermark);
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "select id, product_id, purge, coalesce(version, 0) as version, categories, \
             (extract(epoch from created_at) * 1000000)::bigint as created_micros \
             from outbox where published_at is null order by id limit $1",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            self.metrics.outbox_backlog.set(0);
            return Ok(0);
        }
        // The position read before the select covers every row committed before it only
        // if the select took them all: a round stopped at its limit leaves older rows
        // unpublished, so it carries no watermark.
        let drained = rows.len() < BATCH as usize;
        let epoch = match &self.sink {
            Sink::Redis { l2, epoch_key, .. } => {
                super::stream::ensure_epoch(l2.client(), epoch_key).await?
            }
            Sink::Local { epoch, .. } => epoch.clone(),
        };
        let entries: Vec<Invalidation> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| Invalidation {
                product_id: row.product_id,
                version: row.version,
                purge: row.purge,
                categories: row.categories.clone(),
                committed_at_micros: row.created_micros,
                seq: next_seq + i as i64,
                epoch: epoch.clone(),
                watermark: watermark.filter(|_| drained && i + 1 == rows.len()),
            })
            .collect();
        match &self.sink {
            Sink::Redis {
                l2,
                stream_key,
                max_len,
                ..
            } => {
                for entry in &entries {
                    let _: String = l2
                        .client()
                        .xadd(
                            stream_key.as_str(),
                            false,
                            ("MAXLEN", "~", *max_len as i64, None),
                            "*",
                            entry.fields(),
                        )
                        .await?;
                }
                let (purged, written): (Vec<&OutboxRow>, Vec<&OutboxRow>) =
                    rows.iter().partition(|r| r.purge);
                let ids: Vec<i64> = written.iter().filter_map(|r| r.product_id).collect();
                for document in catalog::products_by_ids(&mut *tx, &ids).await? {
                    let id = document.id;
                    let lookup: Lookup = document.into_lookup()?;
                    l2.put(id, &lookup).await?;
                }
                for id in purged.iter().filter_map(|r| r.product_id) {
                    l2.remove(id).await?;
                }
            }
            Sink::Local { bus, .. } => {
                for entry in entries {
                    // No receiver (no reader in this process) is fine: nothing to invalidate.
                    let _ = bus.send(entry);
                }
            }
        }
        let outbox_ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let seqs: Vec<i64> = (0..rows.len() as i64).map(|i| next_seq + i).collect();
        sqlx::query(
            "update outbox set published_at = now(), seq = data.seq \
             from unnest($1::bigint[], $2::bigint[]) as data(id, seq) where outbox.id = data.id",
        )
        .bind(&outbox_ids)
        .bind(&seqs)
        .execute(&mut *tx)
        .await?;
        sqlx::query("update relay_state set next_seq = $1 where id = 1")
            .bind(next_seq + rows.len() as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.metrics.relay_published.inc_by(rows.len() as u64);
        let now = super::stream::now_micros();
        for row in &rows {
            let lag = u64::try_from(now.saturating_sub(row.created_micros)).unwrap_or(0);
            self.metrics.relay_lag.observe(Duration::from_micros(lag));
        }
        let backlog: i64 =
            sqlx::query_scalar("select count(*) from outbox where published_at is null")
                .fetch_one(&self.primary)
                .await?;
        self.metrics.outbox_backlog.set(backlog);
        Ok(rows.len())
    }
}
