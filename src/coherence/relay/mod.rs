//! The outbox relay (in the writer): committed outbox rows → the invalidation stream,
//! and the new documents → L2. With several writers, the one that holds the relay
//! leadership publishes ([`super::leader`]). Without Redis, `catalogd all` publishes to an in-process
//! bus instead ([`Sink::Local`]), with the same entries and the same protocol.
//!
//! Every write's transaction inserts an outbox row and `NOTIFY catalog_outbox`; the
//! relay `LISTEN`s, so it runs within milliseconds of a commit (and every second anyway,
//! in case a notification was lost while its connection was down). One round, in one
//! transaction on the primary: lock `relay_state` (one relay at a time, so the sequence
//! stays dense), take the oldest unpublished rows (single writes before a bulk import's:
//! see [`crate::write::tx::outbox::bulk_lane`]), `XADD` each to
//! `<prefix>{invalidations}` (`MAXLEN ~`) with the next sequence number and the stream's
//! epoch, write each product's current document (or tombstone) to L2 by version, then
//! mark the rows published and advance the sequence. When the round took every
//! unpublished row, its last entry carries the WAL position read before the rows were
//! taken: the readers' watermark for read-your-writes tokens; a round stopped at its
//! batch limit carries none, since older rows still wait. If anything fails the transaction
//! rolls back and the rows are published again later: delivery is at least once, and
//! applying an invalidation twice is harmless. Rows left by a writer that stopped
//! between commit and publish are published by the next relay round, on restart. Once a
//! round committed, its rows' surrogate keys go to the edge purger, if there is one
//! ([`super::purger`]).
//!
//! The round's outbox queries are in `outbox.rs`; what it does with its [`Sink`] (the
//! stream's state, the epoch, the append) in `sink.rs`.

mod outbox;
mod sink;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::leader::{self, Leadership};
use super::purger::{EdgePurger, Keys};
use super::stream::Invalidation;
use crate::document::Lookup;
use crate::metrics::Metrics;
use crate::store::catalog;
use crate::store::redis::L2;
use outbox::{
    OutboxRow, advance_sequence, begin_republishing, end_republishing, mark_published,
    to_republish, unpublished, visible_position,
};
use sink::StreamState;

/// The channel writes notify on commit.
pub const CHANNEL: &str = "catalog_outbox";
/// Most outbox rows published per round.
const BATCH: i64 = 256;
/// Relay rounds run at least this often, notification or not.
const POLL: Duration = Duration::from_secs(1);
/// Pause after a round of changes before the heartbeat that follows it: that
/// heartbeat's watermark is read after the round committed, so it covers the round's
/// writes, and token reads of them are answered from the caches within a few
/// milliseconds instead of waiting for the next change or the next regular heartbeat.
const FOLLOW_UP: Duration = Duration::from_millis(5);
/// Deadline of one round: long enough for [`BATCH`] `XADD`s and L2 writes, each bounded
/// by the Redis command timeout, and its statements, each bounded by
/// `statement_timeout`; past it the round is dropped (its transaction rolls back and its
/// rows are published again), so a silent primary or Redis cannot stall the relay.
const ROUND_DEADLINE: Duration = Duration::from_secs(30);
/// While rounds come full, the backlog gauge (`catalog_outbox_backlog`) is counted at
/// most this often: counting reads every unpublished row, which at a backlog of a
/// million rows costs more than the round itself.
const BACKLOG_COUNT_EVERY: Duration = Duration::from_secs(5);

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
    /// The stream lost entries after the round read its state (the round appended
    /// nothing; the next one finds the rollback).
    #[error("the invalidation stream lost entries while the round ran")]
    StreamLost,
    /// The round did not finish within its deadline.
    #[error("the round did not finish within {ROUND_DEADLINE:?}")]
    Timeout,
}

/// The stream's key, `<prefix>{invalidations}`. The braces are a Redis Cluster hash tag:
/// only `invalidations` is hashed, so the stream and its epoch ([`epoch_key`]) live in
/// one slot, on one node, and a node restarted empty loses both together (a reset every
/// reader sees). One server ignores the braces.
pub fn stream_key(prefix: &str) -> String {
    format!("{prefix}{{invalidations}}")
}

/// The key holding the stream's epoch, `<prefix>{invalidations}:epoch`: the stream's
/// slot ([`stream_key`]).
pub fn epoch_key(prefix: &str) -> String {
    format!("{prefix}{{invalidations}}:epoch")
}

/// Where the relay publishes.
#[derive(Debug)]
pub enum Sink {
    /// The Redis stream (and L2 write-through): every reader of the deployment.
    Redis {
        /// L2, whose client also carries the stream commands.
        l2: L2,
        /// `<prefix>{invalidations}`.
        stream_key: String,
        /// `<prefix>{invalidations}:epoch`.
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
    /// Longest time without a published entry; then a heartbeat goes out.
    heartbeat: Duration,
    /// When the last entry (change or heartbeat) was published, and whether it was a
    /// round of changes whose watermark a follow-up heartbeat should cover.
    last: std::sync::Mutex<(Instant, bool)>,
    /// When a full round last counted the backlog ([`BACKLOG_COUNT_EVERY`]).
    backlog_counted: std::sync::Mutex<Option<Instant>>,
    /// Purges what each round published from the edge caches, if there are any.
    purger: Option<Arc<EdgePurger>>,
}

impl Relay {
    /// A relay publishing committed outbox rows to `sink`, and a heartbeat whenever
    /// `heartbeat` passes without one.
    pub fn new(primary: PgPool, sink: Sink, metrics: Arc<Metrics>, heartbeat: Duration) -> Self {
        Self {
            primary,
            sink,
            metrics,
            heartbeat,
            last: std::sync::Mutex::new((Instant::now(), false)),
            backlog_counted: std::sync::Mutex::new(None),
            purger: None,
        }
    }

    /// Hands what each round publishes to `purger` once the round committed.
    pub fn with_purger(mut self, purger: Arc<EdgePurger>) -> Self {
        self.purger = Some(purger);
        self
    }

    /// Publishes until `stop` fires, while this writer leads ([`Leadership`]); a
    /// follower tries to take the lead every [`leader::TRY_EVERY`].
    pub async fn run(self, stop: CancellationToken) {
        let mut listener = None;
        let mut backoff = Backoff::default();
        let mut leadership = Leadership::new(self.primary.clone());
        loop {
            let leads = leadership.lead().await;
            self.metrics.relay_leader.set(i64::from(leads));
            if !leads {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(leader::TRY_EVERY) => continue,
                }
            }
            if listener.is_none() {
                listener = self.listen().await;
            }
            let round = tokio::time::timeout(ROUND_DEADLINE, self.round());
            match round.await.unwrap_or(Err(RelayError::Timeout)) {
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
            let pause = match self.last() {
                (_, true) => FOLLOW_UP,
                (at, false) => self.heartbeat.saturating_sub(at.elapsed()).min(POLL),
            };
            tokio::select! {
                () = stop.cancelled() => return self.flush().await,
                result = notified => if result.is_err() { listener = None },
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// On shutdown: publishes what the outbox still holds, round after round, within
    /// one round's deadline in all; what is left (or committed later by requests still
    /// draining) the next relay to run publishes.
    async fn flush(&self) {
        let flushed = tokio::time::timeout(ROUND_DEADLINE, async {
            while let Ok(published) = self.round().await {
                if published == 0 {
                    break;
                }
            }
        });
        if flushed.await.is_err() {
            tracing::warn!(
                "outbox not flushed within the deadline; the next relay publishes the rest"
            );
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.primary).await.ok()?;
        listener.listen(CHANNEL).await.ok()?;
        Some(listener)
    }

    fn last(&self) -> (Instant, bool) {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the backlog gauge is due for a count after a full round.
    fn backlog_count_due(&self) -> bool {
        let mut counted = self
            .backlog_counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counted.is_some_and(|at| at.elapsed() < BACKLOG_COUNT_EVERY) {
            return false;
        }
        *counted = Some(Instant::now());
        true
    }

    fn published(&self, changes: bool) {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (Instant::now(), changes);
    }

    /// One round: publishes up to [`BATCH`] rows and returns how many; with none to
    /// publish, a heartbeat when one is due (returning 0).
    pub async fn round(&self) -> Result<usize, RelayError> {
        let mut tx = self.primary.begin().await?;
        // The lock and the WAL position in one statement: the position is read before the
        // rows are selected (by the next statement), as the watermark needs.
        let (next_seq, watermark, mut republishing): (i64, String, bool) = sqlx::query_as(
            "select next_seq, pg_current_wal_lsn()::text, republish_after is not null \
             from relay_state where id = 1 for update",
        )
        .fetch_one(&mut *tx)
        .await?;
        let watermark = crate::store::replicas::parse_lsn(&watermark);
        // The rows and the stream's state travel at once (one round trip each way, side by
        // side): the state is read under the relay_state lock, so no other relay appends
        // meanwhile.
        let (rows, stream) = tokio::join!(unpublished(&mut tx), self.stream_state(next_seq));
        let (mut rows, stream) = (rows?, stream?);
        let recovering = matches!(stream, StreamState::RolledBack);
        let epoch = match (&self.sink, stream) {
            (Sink::Redis { l2, epoch_key, .. }, StreamState::RolledBack) => {
                republishing = true;
                self.recover_from_rollback(&mut tx, l2, epoch_key).await?
            }
            (_, StreamState::Intact(Some(epoch))) => epoch,
            (_, _) => self.epoch().await?,
        };
        // Unpublished rows first; room left in the round goes to rows a recovery from a
        // rollback publishes again. The position read before the select covers every row
        // committed before it only if the select took them all, and the caches include
        // those writes only once nothing is left to publish again: until then no
        // watermark.
        let mut drained = rows.len() < BATCH as usize;
        if republishing && drained {
            let room = BATCH as usize - rows.len();
            let again = to_republish(&mut tx, room).await?;
            if again.len() < room {
                end_republishing(&mut tx).await?;
                republishing = false;
            }
            rows.extend(again);
        }
        drained &= !republishing;
        // Where the round's changes to categories are visible: read after the select, so
        // past every commit it saw (readers fill `GET /categories` from there on).
        let visible_at = if rows.iter().any(OutboxRow::names_categories_only) {
            Some(visible_position(&mut tx).await?)
        } else {
            None
        };
        if rows.is_empty() {
            let (at, follow_up) = self.last();
            if !follow_up && at.elapsed() < self.heartbeat {
                tx.commit().await?;
                self.metrics.outbox_backlog.set(0);
                return Ok(0);
            }
            let beat = Invalidation {
                product_id: None,
                version: 0,
                purge: false,
                deleted: false,
                categories: Vec::new(),
                committed_at_micros: super::stream::now_micros(),
                seq: next_seq,
                epoch,
                watermark,
                visible_at: None,
                heartbeat: true,
            };
            self.append(std::slice::from_ref(&beat), recovering).await?;
            advance_sequence(&mut tx, next_seq + 1).await?;
            tx.commit().await?;
            self.published(false);
            self.metrics.relay_heartbeats.inc();
            self.metrics.outbox_backlog.set(0);
            return Ok(0);
        }
        let entries: Vec<Invalidation> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| Invalidation {
                product_id: row.product_id,
                version: row.version,
                purge: row.purge,
                deleted: row.deleted,
                categories: row.categories.clone(),
                committed_at_micros: row.created_micros,
                seq: next_seq + i as i64,
                epoch: epoch.clone(),
                watermark: watermark.filter(|_| drained && i + 1 == rows.len()),
                visible_at: visible_at.filter(|_| row.names_categories_only()),
                heartbeat: false,
            })
            .collect();
        // One step at a time: overlapping the documents' read with the append, and L2's
        // write with the marking, made rounds shorter and cost single writes about a
        // tenth of their throughput, for no measurable gain in propagation time
        // (docs/coherence.md).
        let (purged, written): (Vec<&OutboxRow>, Vec<&OutboxRow>) =
            rows.iter().partition(|r| r.purge);
        self.append(&entries, recovering).await?;
        let documents = self.documents(&mut tx, &written).await?;
        self.write_through(&documents, &purged).await?;
        mark_published(&mut tx, &rows, next_seq).await?;
        tx.commit().await?;
        self.published(true);
        if let Some(purger) = &self.purger {
            let mut keys = Keys::default();
            for row in &rows {
                keys.add_change(row.product_id, &row.categories, row.purge);
            }
            purger.purge(keys);
        }
        self.metrics.relay_published.inc_by(rows.len() as u64);
        let now = super::stream::now_micros();
        for row in &rows {
            let lag = u64::try_from(now.saturating_sub(row.created_micros)).unwrap_or(0);
            self.metrics.relay_lag.observe(Duration::from_micros(lag));
        }
        // A round that took every unpublished row leaves none behind as of its select;
        // counting the backlog reads all of it, so while rounds come full (a large
        // backlog drains) it is counted at most every BACKLOG_COUNT_EVERY.
        if drained {
            self.metrics.outbox_backlog.set(0);
        } else if self.backlog_count_due() {
            let backlog: i64 =
                sqlx::query_scalar("select count(*) from outbox where published_at is null")
                    .fetch_one(&self.primary)
                    .await?;
            self.metrics.outbox_backlog.set(backlog);
        }
        Ok(rows.len())
    }

    /// The current documents (or tombstones) of the products `rows` changed, for L2;
    /// none without Redis.
    async fn documents(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        rows: &[&OutboxRow],
    ) -> Result<Vec<(i64, Lookup)>, RelayError> {
        let ids: Vec<i64> = rows.iter().filter_map(|r| r.product_id).collect();
        if ids.is_empty() || !matches!(self.sink, Sink::Redis { .. }) {
            return Ok(Vec::new());
        }
        Ok(catalog::products_by_ids(&mut **tx, &ids)
            .await?
            .into_iter()
            .map(|row| Ok((row.id, row.into_lookup()?)))
            .collect::<Result<Vec<(i64, Lookup)>, serde_json::Error>>()?)
    }

    /// Writes `documents` to L2 by version and drops what L2 holds of the products
    /// `purged` names (an operator's purge); nothing without Redis.
    async fn write_through(
        &self,
        documents: &[(i64, Lookup)],
        purged: &[&OutboxRow],
    ) -> Result<(), RelayError> {
        if let Sink::Redis { l2, .. } = &self.sink {
            l2.put_many(documents).await?;
            for id in purged.iter().filter_map(|r| r.product_id) {
                l2.remove(id).await?;
            }
        }
        Ok(())
    }

    /// After Redis lost published entries: a new epoch (every reader flushes L1) and,
    /// inside the round's transaction, the window of every change published within L2's
    /// lifetime recorded in `relay_state`, so this round and the next publish those
    /// changes anew, a batch at a time beside new writes: their documents go back to L2
    /// by version (over whatever older copy Redis came back with) and every reader, new
    /// ones included, gets their floors again. Recording the window is one cheap update
    /// however many changes it holds (marking them all unpublished at once outlasted
    /// the database deadline after a large import, and the relay never published
    /// again).
    async fn recover_from_rollback(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        l2: &L2,
        epoch_key: &str,
    ) -> Result<String, RelayError> {
        let epoch = super::stream::new_epoch(l2.client(), epoch_key).await?;
        begin_republishing(tx, l2.ttl().as_secs_f64()).await?;
        self.metrics.stream_rollbacks.inc();
        tracing::warn!(
            %epoch,
            lifetime_secs = l2.ttl().as_secs(),
            "the invalidation stream lost entries it had (Redis failed over or was restored): \
             new epoch, the changes of L2's lifetime published again"
        );
        Ok(epoch)
    }
}
