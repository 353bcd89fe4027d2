//! The reader's invalidation consumer: stream → floors → L1 evictions.
//!
//! It reads `<prefix>{invalidations}` with a blocking `XREAD` on a Redis client of its
//! own (a blocking read holds its connection). On a Redis Cluster the stream and its
//! epoch share one slot (the `{invalidations}` hash tag), so both are on the node this
//! client's read waits on, and they are lost together when that node is. On start it
//! replays the whole retained stream: L1 is empty then, but the floors it rebuilds keep
//! a lagging replica from serving a version older than a write acknowledged before this
//! reader started.
//!
//! Each entry carries a dense sequence number and the stream's epoch. The consumer
//! cannot trust stream ids to reveal what it missed (`XREAD` from a trimmed id silently
//! returns the survivors), so a break in the sequence is a gap, and a new epoch (or the
//! epoch key vanishing: Redis restarted or was flushed) is a reset; either way it
//! flushes L1, counts it and logs it. Entries that end a relay round carry a WAL
//! position: once applied, every write with a lower token has been applied here, and the
//! consumer publishes it as the reader's watermark. Connection errors are retried with backoff and
//! the read resumes from the last id seen. Without Redis, `catalogd all` feeds the
//! consumer from an in-process bus ([`Source::Local`]) with the same entries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::feed::Feed;
use super::floors::Floors;
use super::stream::Invalidation;
use crate::cache::{Key, L1};
use crate::metrics::Metrics;
use crate::read::changes::ChangeFeed;

/// How long one `XREAD` blocks; after an empty read the epoch key is checked.
const BLOCK_MS: u64 = 1_000;
/// Most entries taken per read.
const BATCH: u64 = 512;
/// Deadline of each command of the consumer's client, the blocking read included: a
/// frozen Redis fails the read (and the connection is replaced) instead of holding it.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(BLOCK_MS + 2_000);

/// Where the consumer is in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    /// Last stream id read (`0` before the first).
    pub last_id: String,
    /// Sequence number of the last entry applied.
    pub last_seq: Option<i64>,
    /// Epoch of the stream the sequence belongs to.
    pub epoch: Option<String>,
}

/// The Redis side of a consumer.
struct RedisSource {
    client: Client,
    stream_key: String,
    epoch_key: String,
}

/// What an entry means for the position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The next entry in sequence (or the first one seen).
    InOrder,
    /// Already applied (the relay publishes at least once).
    Duplicate,
    /// Entries between the last one applied and this one were lost.
    Gap,
    /// The stream was replaced (new epoch).
    Reset,
}

impl Position {
    /// Classifies `entry` and advances past it.
    pub fn advance(&mut self, entry: &Invalidation) -> Step {
        let step = match (&self.epoch, self.last_seq) {
            (Some(epoch), _) if *epoch != entry.epoch => Step::Reset,
            (Some(_), Some(last)) if entry.seq <= last => Step::Duplicate,
            (Some(_), Some(last)) if entry.seq != last + 1 => Step::Gap,
            _ => Step::InOrder,
        };
        if step != Step::Duplicate {
            self.last_seq = Some(entry.seq);
        }
        self.epoch = Some(entry.epoch.clone());
        step
    }
}

/// Where the consumer reads invalidations.
#[derive(Debug)]
pub enum Source {
    /// The Redis stream, on a client of the consumer's own.
    Redis {
        /// The consumer's client (a blocking read holds its connection).
        client: Client,
        /// `<prefix>{invalidations}`.
        stream_key: String,
        /// `<prefix>{invalidations}:epoch`.
        epoch_key: String,
    },
    /// The in-process bus of `catalogd all` without Redis. A receiver that falls more
    /// than the bus's capacity behind has lost entries: a gap.
    Local(tokio::sync::broadcast::Receiver<Invalidation>),
}

impl Source {
    /// The Redis stream of the deployment with key `prefix`, on its own connection (a
    /// connection to each master, on a cluster), opened when the consumer starts, on
    /// the runtime that runs it. `url` is any form
    /// [`crate::store::redis::redis_config`] takes.
    pub fn redis(url: &str, prefix: &str) -> Result<Self, fred::error::Error> {
        let client = Builder::from_config(crate::store::redis::redis_config(url)?)
            .with_performance_config(|perf| perf.default_command_timeout = COMMAND_TIMEOUT)
            .with_connection_config(|conn| {
                conn.connection_timeout = Duration::from_secs(2);
                conn.max_command_attempts = 1;
                conn.unresponsive = fred::types::config::UnresponsiveConfig {
                    max_timeout: Some(COMMAND_TIMEOUT),
                    interval: Duration::from_millis(500),
                };
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .build()?;
        Ok(Self::Redis {
            client,
            stream_key: super::relay::stream_key(prefix),
            epoch_key: super::relay::epoch_key(prefix),
        })
    }
}

/// What the consumer updates.
#[derive(Debug)]
pub struct Targets {
    /// L1, whose older entries it evicts.
    pub l1: L1,
    /// The floors it raises.
    pub floors: Floors,
    /// Where it publishes its watermark.
    pub watermark: tokio::sync::watch::Sender<u64>,
    /// Where it records that the feed is alive.
    pub feed: Feed,
    /// Its counters.
    pub metrics: Arc<Metrics>,
    /// The live change feed it hands each applied change to, if the reader serves one.
    pub changes: Option<Arc<ChangeFeed>>,
}

/// The consumer task.
#[derive(Debug)]
pub struct Consumer {
    l1: L1,
    floors: Floors,
    metrics: Arc<Metrics>,
    position: Position,
    watermark: tokio::sync::watch::Sender<u64>,
    feed: Feed,
    changes: Option<Arc<ChangeFeed>>,
    /// When this consumer started (µs since the epoch): entries committed before are its
    /// start-up replay, not propagation, and stay out of the histogram.
    started_micros: i64,
}

impl Consumer {
    /// A consumer updating `targets`.
    pub fn new(targets: Targets) -> Self {
        Self {
            l1: targets.l1,
            floors: targets.floors,
            metrics: targets.metrics,
            position: Position {
                last_id: "0".to_owned(),
                ..Position::default()
            },
            watermark: targets.watermark,
            feed: targets.feed,
            changes: targets.changes,
            started_micros: super::stream::now_micros(),
        }
    }

    /// Reads and applies invalidations from `source` until `stop` fires.
    pub async fn run(self, source: Source, stop: CancellationToken) {
        match source {
            Source::Redis {
                client,
                stream_key,
                epoch_key,
            } => {
                self.run_redis(
                    RedisSource {
                        client,
                        stream_key,
                        epoch_key,
                    },
                    stop,
                )
                .await;
            }
            Source::Local(bus) => self.run_local(bus, stop).await,
        }
    }

    async fn run_local(
        mut self,
        mut bus: tokio::sync::broadcast::Receiver<Invalidation>,
        stop: CancellationToken,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => return,
                received = bus.recv() => received,
            };
            match received {
                Ok(entry) => self.apply(&entry),
                Err(RecvError::Lagged(missed)) => {
                    self.metrics.stream_gaps.inc();
                    self.flush(&format!(
                        "{missed} invalidations lost on the in-process bus"
                    ));
                    self.position.last_seq = None;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    async fn run_redis(mut self, redis: RedisSource, stop: CancellationToken) {
        let RedisSource {
            client,
            stream_key,
            epoch_key,
        } = redis;
        // Connected here, so the client's tasks run where the consumer does.
        client.connect();
        let mut backoff = Backoff::default();
        loop {
            // Know the epoch before reading, so a reset is noticed even if it happens
            // before this reader has seen any entry.
            if self.position.epoch.is_none() {
                match super::stream::ensure_epoch(&client, &epoch_key).await {
                    Ok(epoch) => self.position.epoch = Some(epoch),
                    Err(err) => {
                        self.metrics.consumer_errors.inc();
                        tracing::warn!(error = %err, retry_in = ?backoff.next(), "cannot read the stream's epoch");
                        if !backoff.wait(&stop).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let read = client.xread::<fred::types::Value, _, _>(
                Some(BATCH),
                Some(BLOCK_MS),
                stream_key.as_str(),
                self.position.last_id.as_str(),
            );
            let result = tokio::select! {
                () = stop.cancelled() => return,
                result = read => result,
            };
            // A read that timed out answers nil.
            let result = result.and_then(|value| {
                if value.is_null() {
                    Ok(HashMap::new())
                } else {
                    value.into_xread_response::<String, String, String, String>()
                }
            });
            match result {
                Ok(mut streams) => {
                    backoff.reset();
                    match streams.remove(&stream_key) {
                        Some(entries) if !entries.is_empty() => self.apply_all(entries),
                        _ => self.check_epoch(&client, &epoch_key).await,
                    }
                }
                Err(err) => {
                    self.metrics.consumer_errors.inc();
                    tracing::warn!(error = %err, retry_in = ?backoff.next(), "invalidation stream read failed");
                    if !backoff.wait(&stop).await {
                        return;
                    }
                }
            }
        }
    }

    fn apply_all(&mut self, entries: Vec<(String, HashMap<String, String>)>) {
        for (id, fields) in entries {
            self.position.last_id = id;
            match Invalidation::parse(&fields) {
                Some(entry) => self.apply(&entry),
                None => {
                    tracing::warn!(id = %self.position.last_id, "malformed invalidation skipped")
                }
            }
        }
    }

    /// Applies one invalidation (or heartbeat).
    pub fn apply(&mut self, entry: &Invalidation) {
        self.feed.heard();
        let step = self.position.advance(entry);
        match step {
            Step::InOrder | Step::Duplicate => {}
            Step::Gap => {
                self.metrics.stream_gaps.inc();
                self.flush("gap in the invalidation sequence");
                self.changes
                    .iter()
                    .for_each(|f| f.reset("the reader missed changes"));
            }
            Step::Reset => {
                self.metrics.stream_resets.inc();
                self.flush("the invalidation stream was reset");
                self.changes
                    .iter()
                    .for_each(|f| f.reset("the invalidation stream was reset"));
            }
        }

        match (entry.product_id, entry.purge) {
            (Some(id), false) => {
                self.floors.raise(id, entry.version);
                self.l1.evict_older(id, entry.version);
            }
            (Some(id), true) => self.l1.remove_product(id),
            (None, true) if entry.categories.is_empty() => {
                self.metrics.l1_flushes.inc();
                self.l1.flush();
                tracing::info!("L1 flushed by an operator's purge");
            }
            (None, _) => {}
        }
        // `GET /categories` changes only with categories themselves (a product's write
        // names the categories it is in, which the list does not show).
        if entry.product_id.is_none() && !entry.categories.is_empty() {
            self.l1.invalidate(&Key::Categories, entry.visible_at);
        }
        if let Some(watermark) = entry.watermark {
            self.watermark.send_if_modified(|current| {
                let raised = watermark > *current;
                *current = (*current).max(watermark);
                raised
            });
        }
        // Subscribers hear of a change once this reader serves it: after the evictions.
        if step != Step::Duplicate
            && let Some(changes) = &self.changes
        {
            changes.publish(entry, &self.position.last_id);
        }
        if entry.heartbeat {
            return;
        }
        self.metrics.invalidations.inc();
        if entry.committed_at_micros < self.started_micros {
            return;
        }
        let now = super::stream::now_micros();
        let micros = u64::try_from(now.saturating_sub(entry.committed_at_micros)).unwrap_or(0);
        self.metrics
            .propagation
            .observe(Duration::from_micros(micros));
    }

    /// After an idle read: if the epoch key changed or vanished, the stream was reset;
    /// the next loop learns (or creates) the new epoch and reads the new stream from its
    /// start.
    async fn check_epoch(&mut self, client: &Client, epoch_key: &str) {
        let current: Option<String> = match client.get(epoch_key).await {
            Ok(value) => value,
            Err(err) => {
                self.metrics.consumer_errors.inc();
                tracing::debug!(error = %err, "epoch check failed");
                return;
            }
        };
        if let Some(known) = &self.position.epoch
            && current.as_ref() != Some(known)
        {
            self.metrics.stream_resets.inc();
            self.flush("the invalidation stream's epoch changed");
            self.position = Position {
                last_id: "0".to_owned(),
                last_seq: None,
                epoch: None,
            };
        }
    }

    fn flush(&self, why: &str) {
        self.metrics.l1_flushes.inc();
        self.l1.flush();
        tracing::warn!(
            reason = why,
            "L1 flushed: this reader cannot know what it missed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64, epoch: &str) -> Invalidation {
        Invalidation {
            product_id: Some(1),
            version: 1,
            purge: false,
            deleted: false,
            categories: Vec::new(),
            committed_at_micros: 0,
            seq,
            epoch: epoch.to_owned(),
            watermark: None,
            visible_at: None,
            heartbeat: false,
        }
    }

    #[test]
    fn the_sequence_reveals_gaps_duplicates_and_resets() {
        let mut position = Position::default();
        assert_eq!(
            position.advance(&entry(5, "a")),
            Step::InOrder,
            "first entry"
        );
        assert_eq!(position.advance(&entry(6, "a")), Step::InOrder);
        assert_eq!(position.advance(&entry(6, "a")), Step::Duplicate);
        assert_eq!(position.advance(&entry(4, "a")), Step::Duplicate);
        assert_eq!(position.last_seq, Some(6));
        assert_eq!(position.advance(&entry(9, "a")), Step::Gap);
        assert_eq!(position.advance(&entry(10, "a")), Step::InOrder);
        assert_eq!(position.advance(&entry(1, "b")), Step::Reset);
        assert_eq!(position.advance(&entry(2, "b")), Step::InOrder);
    }
}
