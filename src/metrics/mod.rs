//! Prometheus metrics, served at `/metrics` in the text exposition format.
//!
//! Every handle the hot path touches is resolved once at start-up: a request increments
//! a pre-built counter and records into a lock-free histogram (plain atomics), with no
//! label lookup, hashing or lock. prometheus-client's own `Histogram` takes a mutex per
//! observation, so [`AtomicHistogram`] replaces it.

pub mod face;
mod http;

pub use http::{AtomicHistogram, HttpMetrics, RouteLabel, RouteMetrics};
use http::{LATENCY_BUCKETS, Labels};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route and status (faces resolve theirs with [`HttpMetrics`]).
    http_requests: Family<Labels, Counter>,
    /// HTTP latency by route.
    http_latency: Family<Labels, AtomicHistogram, fn() -> AtomicHistogram>,
    /// Product lookups answered by L1.
    pub l1_hits: Counter,
    /// Product lookups L1 could not answer.
    pub l1_misses: Counter,
    /// L1 hits on a negative (unknown id) entry.
    pub negative_hits: Counter,
    /// Misses answered by another request's fill (single-flight).
    pub coalesced: Counter,
    /// L2 (Redis) lookups that found a document.
    pub l2_hits: Counter,
    /// L2 lookups that found nothing.
    pub l2_misses: Counter,
    /// Redis commands that failed (the read went on without L2).
    pub l2_errors: Counter,
    /// Openings of L2's circuit breaker (Redis kept failing).
    pub l2_breaker_trips: Counter,
    /// Write-backs to L2 skipped because too many were in flight.
    pub l2_write_backs_skipped: Counter,
    /// Read queries answered by a replica.
    pub db_reads_replica: Counter,
    /// Read queries answered by the primary.
    pub db_reads_primary: Counter,
    /// Database queries that failed.
    pub db_errors: Counter,
    /// Fills refused because Redis or a replica was older than the product's floor.
    pub stale_fills: Counter,
    /// Invalidations applied by the consumer.
    pub invalidations: Counter,
    /// Breaks in the stream's sequence (entries trimmed before this reader saw them).
    pub stream_gaps: Counter,
    /// Resets of the stream (a new epoch: Redis lost or replaced the stream).
    pub stream_resets: Counter,
    /// Times the relay found the stream had lost published entries (Redis rolled back).
    pub stream_rollbacks: Counter,
    /// Whole-L1 flushes (after a gap or a reset).
    pub l1_flushes: Counter,
    /// Stream reads that failed (the consumer reconnects with backoff).
    pub consumer_errors: Counter,
    /// Requests refused by a per-client rate limit, by face.
    pub rate_limited: Family<Labels, Counter>,
    /// Documents served past the hard TTL because no database answered.
    pub stale_served: Counter,
    /// Documents queued for a background refresh by a hit past the soft TTL.
    pub refreshes_ahead: Counter,
    /// L1 entries the auditor found older than a write made before its grace period.
    pub stale_detected: Counter,
    /// How long ago the newest version of the stalest entry of the last audit round
    /// was written, in seconds (0: none stale).
    pub stalest_entry_seconds: Gauge,
    /// Times the invalidation feed went silent (no entry, not even a heartbeat).
    pub feed_silences: Counter,
    /// 1 while the invalidation feed is silent, else 0.
    pub feed_silent: Gauge,
    /// Heartbeats published by the relay.
    pub relay_heartbeats: Counter,
    /// Commit on the primary to invalidation applied here, in seconds.
    pub propagation: AtomicHistogram,
    /// Reads with a `Min-Catalog-Token` the caches could not prove fresh enough, served
    /// from a replica that replayed the token's commit or from the primary.
    pub token_bypasses: Counter,
    /// Outbox rows published by the relay.
    pub relay_published: Counter,
    /// Commit on the primary to publication by the relay, in seconds.
    pub relay_lag: AtomicHistogram,
    /// Relay rounds that failed (retried).
    pub relay_errors: Counter,
    /// Outbox rows not yet published.
    pub outbox_backlog: Gauge,
    /// Change-feed subscribers connected to this reader.
    pub changes_subscribers: Gauge,
    /// Change-feed frames (changes, resets, heartbeats) handed to subscribers.
    pub changes_delivered: Counter,
    /// Change-feed subscribers dropped because they fell a whole buffer behind.
    pub changes_dropped: Counter,
    /// 1 while this writer's relay holds the leadership (publishes), else 0.
    pub relay_leader: Gauge,
    /// Edge purge requests by outcome (`ok`, `failed` after every retry).
    pub edge_purges: Family<Labels, Counter>,
    /// Surrogate keys waiting to be purged from the edges (first purges and re-purges).
    pub edge_purge_backlog: Gauge,
    /// Sweeper rounds run (each deletes what it finds).
    pub sweeper_rounds: Counter,
    /// Expired idempotency keys the sweeper deleted.
    pub sweeper_keys_deleted: Counter,
    /// Published outbox rows past their retention the sweeper deleted.
    pub sweeper_outbox_deleted: Counter,
    /// Sweeper rounds that failed (retried at the next round).
    pub sweeper_errors: Counter,
    /// Webhook deliveries a receiver acknowledged (2xx).
    pub webhook_delivered: Counter,
    /// Webhook attempts that failed (not 2xx, no answer, or past the deadline).
    pub webhook_failed: Counter,
    /// Webhook deliveries that became dead letters (retried for the whole period).
    pub webhook_dead_lettered: Counter,
    /// Webhook deliveries waiting to be sent (first attempts and retries).
    pub webhook_backlog: Gauge,
    /// Webhook deliveries waiting for a retry (they failed at least once).
    pub webhook_retry_backlog: Gauge,
    /// Dead letters kept (not replayed, not yet past their retention).
    pub webhook_dead_letters: Gauge,
    /// Commit of a change to its webhook's acknowledgement, in seconds.
    pub webhook_latency: AtomicHistogram,
    /// Webhook deliverer rounds that failed on the primary (retried).
    pub webhook_errors: Counter,
    /// 1 when a replica is in the healthy set, else 0, by replica.
    pub replica_healthy: Family<Vec<(&'static str, String)>, Gauge>,
    /// Replay lag of each replica behind the primary's WAL position, in bytes.
    pub replica_lag_bytes: Family<Vec<(&'static str, String)>, Gauge>,
    l1_entries: Gauge,
    l1_bytes: Gauge,
}

/// Buckets of `catalog_webhook_delivery_seconds`, in seconds: from a prompt delivery
/// (milliseconds) to one that waited through retries (hours).
const WEBHOOK_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0, 3600.0, 86_400.0,
];

/// Registers `metric` under `name` and hands it back.
fn registered<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric; each face resolves its HTTP handles with
    /// [`HttpMetrics::new`].
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("catalog");
        let http_requests: Family<Labels, Counter> = registered(
            &mut registry,
            "http_requests",
            "HTTP requests answered, by route and status",
            Family::default(),
        );
        let http_latency: Family<Labels, AtomicHistogram, fn() -> AtomicHistogram> = registered(
            &mut registry,
            "http_request_duration_seconds",
            "Time from request head to response head",
            Family::new_with_constructor(|| AtomicHistogram::new(&LATENCY_BUCKETS)),
        );

        let counter = |registry: &mut Registry, name: &str, help: &str| {
            registered(registry, name, help, Counter::default())
        };
        let r = &mut registry;
        let l1_hits = counter(r, "l1_hits", "Product lookups answered by L1");
        let l1_misses = counter(r, "l1_misses", "Product lookups L1 could not answer");
        let negative_hits = counter(r, "negative_hits", "L1 hits on a cached unknown id");
        let coalesced = counter(
            r,
            "coalesced_fills",
            "Misses answered by a concurrent request's fill",
        );
        let l2_hits = counter(r, "l2_hits", "Redis lookups that found the product");
        let l2_misses = counter(r, "l2_misses", "Redis lookups that found nothing");
        let l2_errors = counter(r, "l2_errors", "Redis commands that failed");
        let l2_breaker_trips = counter(
            r,
            "l2_breaker_trips",
            "Openings of the Redis circuit breaker",
        );
        let l2_write_backs_skipped = counter(
            r,
            "l2_write_backs_skipped",
            "Write-backs to Redis skipped while too many were in flight",
        );
        let db_reads_replica = counter(r, "db_reads_replica", "Read queries answered by a replica");
        let db_reads_primary = counter(
            r,
            "db_reads_primary",
            "Read queries answered by the primary",
        );
        let db_errors = counter(r, "db_errors", "Database queries that failed");
        let stale_fills = counter(
            r,
            "stale_fills",
            "Fills refused for being older than the product's freshness floor",
        );
        let invalidations = counter(r, "invalidations", "Invalidations applied");
        let stream_gaps = counter(r, "stream_gaps", "Breaks in the invalidation sequence");
        let stream_resets = counter(r, "stream_resets", "Resets of the invalidation stream");
        let stream_rollbacks = counter(
            r,
            "stream_rollbacks",
            "Streams found to have lost published entries (new epoch, republished)",
        );
        let l1_flushes = counter(r, "l1_flushes", "Whole-L1 flushes after a gap or reset");
        let consumer_errors = counter(r, "consumer_errors", "Failed invalidation stream reads");
        let rate_limited: Family<Labels, Counter> = registered(
            r,
            "rate_limited",
            "Requests refused by a per-client rate limit, by face",
            Family::default(),
        );
        let stale_served = counter(
            r,
            "stale_served",
            "Documents served past the hard TTL because no database answered",
        );
        let refreshes_ahead = counter(
            r,
            "refreshes_ahead",
            "Documents queued for a background refresh past the soft TTL",
        );
        let stale_detected = counter(
            r,
            "stale_detected",
            "L1 entries the auditor found older than the primary past the grace period",
        );
        let stalest_entry_seconds = registered(
            r,
            "stalest_entry_seconds",
            "Age of the newest version of the stalest entry of the last audit round",
            Gauge::default(),
        );
        let feed_silences = counter(
            r,
            "feed_silences",
            "Times the invalidation feed went silent past the limit",
        );
        let relay_heartbeats = counter(r, "relay_heartbeats", "Heartbeats published by the relay");
        let feed_silent = registered(
            r,
            "feed_silent",
            "1 while the invalidation feed is silent",
            Gauge::default(),
        );
        let relay_published = counter(r, "relay_published", "Outbox rows published");
        let token_bypasses = counter(
            r,
            "token_bypasses",
            "Token reads served around the caches (watermark behind the token)",
        );
        let relay_errors = counter(r, "relay_errors", "Failed relay rounds");
        let sweeper_rounds = counter(r, "sweeper_rounds", "Sweeper rounds run");
        let sweeper_keys_deleted = counter(
            r,
            "sweeper_idempotency_keys_deleted",
            "Expired idempotency keys deleted by the sweeper",
        );
        let sweeper_outbox_deleted = counter(
            r,
            "sweeper_outbox_rows_deleted",
            "Published outbox rows past their retention deleted by the sweeper",
        );
        let sweeper_errors = counter(r, "sweeper_errors", "Failed sweeper rounds");
        let webhook_delivered = counter(
            r,
            "webhook_delivered",
            "Webhook deliveries acknowledged with a 2xx",
        );
        let webhook_failed = counter(
            r,
            "webhook_failed",
            "Webhook attempts that failed (not 2xx, no answer, past the deadline)",
        );
        let webhook_dead_lettered = counter(
            r,
            "webhook_dead_lettered",
            "Webhook deliveries given up after the retry period (dead letters)",
        );
        let webhook_errors = counter(
            r,
            "webhook_errors",
            "Webhook deliverer rounds that failed on the primary",
        );
        let webhook_backlog = registered(
            r,
            "webhook_backlog",
            "Webhook deliveries waiting to be sent",
            Gauge::default(),
        );
        let webhook_retry_backlog = registered(
            r,
            "webhook_retry_backlog",
            "Webhook deliveries waiting for a retry",
            Gauge::default(),
        );
        let webhook_dead_letters = registered(
            r,
            "webhook_dead_letters",
            "Webhook dead letters kept",
            Gauge::default(),
        );
        let webhook_latency = registered(
            r,
            "webhook_delivery_seconds",
            "Commit of a change to its webhook delivery's acknowledgement",
            AtomicHistogram::new(&WEBHOOK_BUCKETS),
        );
        let propagation = registered(
            &mut registry,
            "propagation_seconds",
            "Commit on the primary to invalidation applied at this reader",
            AtomicHistogram::new(&LATENCY_BUCKETS),
        );
        let relay_lag = registered(
            &mut registry,
            "relay_lag_seconds",
            "Commit on the primary to publication by the relay",
            AtomicHistogram::new(&LATENCY_BUCKETS),
        );
        let outbox_backlog = registered(
            &mut registry,
            "outbox_backlog",
            "Outbox rows not yet published",
            Gauge::default(),
        );
        let changes_subscribers = registered(
            &mut registry,
            "changes_subscribers",
            "Change-feed subscribers connected to this reader",
            Gauge::default(),
        );
        let changes_delivered = registered(
            &mut registry,
            "changes_delivered",
            "Change-feed frames handed to subscribers",
            Counter::default(),
        );
        let changes_dropped = registered(
            &mut registry,
            "changes_dropped",
            "Change-feed subscribers dropped for falling a whole buffer behind",
            Counter::default(),
        );
        let relay_leader = registered(
            &mut registry,
            "relay_leader",
            "1 while this writer's relay holds the leadership and publishes",
            Gauge::default(),
        );
        let edge_purges: Family<Labels, Counter> = registered(
            &mut registry,
            "edge_purges",
            "Edge purge requests, by outcome (failed: after every retry)",
            Family::default(),
        );
        let edge_purge_backlog = registered(
            &mut registry,
            "edge_purge_backlog",
            "Surrogate keys waiting to be purged from the edge caches",
            Gauge::default(),
        );
        let replica_healthy = registered(
            &mut registry,
            "replica_healthy",
            "1 when the replica is in the healthy set",
            Family::default(),
        );
        let replica_lag_bytes = registered(
            &mut registry,
            "replica_lag_bytes",
            "Replay lag behind the primary's WAL position",
            Family::default(),
        );
        let l1_entries = registered(
            &mut registry,
            "l1_entries",
            "Entries in L1",
            Gauge::default(),
        );
        let l1_bytes = registered(
            &mut registry,
            "l1_bytes",
            "Weighted bytes held by L1",
            Gauge::default(),
        );
        Self {
            registry,
            http_requests,
            http_latency,
            l1_hits,
            l1_misses,
            negative_hits,
            coalesced,
            l2_hits,
            l2_misses,
            l2_errors,
            l2_breaker_trips,
            l2_write_backs_skipped,
            db_reads_replica,
            db_reads_primary,
            db_errors,
            stale_fills,
            invalidations,
            stream_gaps,
            stream_resets,
            stream_rollbacks,
            l1_flushes,
            consumer_errors,
            rate_limited,
            stale_served,
            refreshes_ahead,
            stale_detected,
            stalest_entry_seconds,
            feed_silences,
            feed_silent,
            relay_heartbeats,
            propagation,
            token_bypasses,
            relay_published,
            relay_lag,
            relay_errors,
            outbox_backlog,
            changes_subscribers,
            changes_delivered,
            changes_dropped,
            relay_leader,
            edge_purges,
            edge_purge_backlog,
            sweeper_rounds,
            sweeper_keys_deleted,
            sweeper_outbox_deleted,
            sweeper_errors,
            webhook_delivered,
            webhook_failed,
            webhook_dead_lettered,
            webhook_backlog,
            webhook_retry_backlog,
            webhook_dead_letters,
            webhook_latency,
            webhook_errors,
            replica_healthy,
            replica_lag_bytes,
            l1_entries,
            l1_bytes,
        }
    }

    /// The text exposition, with L1's size as of now (a writer-only process has no L1).
    pub fn render(&self, l1_usage: Option<(u64, u64)>) -> String {
        if let Some((entries, bytes)) = l1_usage {
            self.l1_entries
                .set(i64::try_from(entries).unwrap_or(i64::MAX));
            self.l1_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests;
