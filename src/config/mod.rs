//! Typed configuration, read in exactly one place from `CATALOG_*` variables.
//!
//! Nothing else in the crate reads the environment. [`Config::from_source`] takes
//! any [`Source`] so tests build configurations from a map instead of mutating the
//! process environment. Every value has a typed default except the primary's URL; a
//! value that does not parse is refused with a [`ConfigError`] naming the variable.
//!
//! The read path's settings are parsed in `read.rs`; the lookups and value parsers
//! every variable goes through are in `values.rs`.

mod read;
mod values;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::http::rate::Rate;
use values::*;

/// Where configuration values come from: the process environment in production,
/// a map in tests.
pub trait Source {
    /// The raw value of `key`, if set.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl Source for [(&str, &str)] {
    fn get(&self, key: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// A configuration value was missing or did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    /// The variable at fault, e.g. `CATALOG_READER_ADDR`.
    pub var: &'static str,
    /// What is wrong with it, and what would be accepted.
    pub reason: String,
}

/// A bearer token that never appears in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret's bytes, for constant-time comparison.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The prefix of an admin token given as its SHA-256 digest.
pub const DIGEST_PREFIX: &str = "sha256:";

/// `sha256:<64 hex digits>` as bytes; `None` for anything else.
pub fn parse_digest(entry: &[u8]) -> Option<[u8; 32]> {
    let hex = entry.strip_prefix(DIGEST_PREFIX.as_bytes())?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for a log pipeline.
    Json,
}

/// The whole service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CATALOG_DATABASE_URL`: the PostgreSQL primary. Required.
    pub database_url: String,
    /// `CATALOG_REPLICA_URLS`: comma-separated read replicas; empty means reads use the primary.
    pub replica_urls: Vec<String>,
    /// `CATALOG_REDIS_URL`: Redis for L2 and the invalidation stream; `None` disables both.
    pub redis_url: Option<String>,
    /// `CATALOG_REDIS_PREFIX`: prefix of every Redis key and stream of this deployment.
    pub redis_prefix: String,
    /// `CATALOG_REDIS_TIMEOUT_MS`: timeout of each Redis command; past it the read goes on
    /// without Redis.
    pub redis_timeout: Duration,
    /// `CATALOG_L2_TTL_SECS`: lifetime of a document in Redis (bounds its memory; versions
    /// keep it coherent).
    pub l2_ttl: Duration,
    /// `CATALOG_STREAM_MAXLEN`: entries the invalidation stream keeps (`XADD MAXLEN ~`);
    /// a reader further behind than this sees a gap and flushes L1.
    pub stream_max_len: u64,
    /// `CATALOG_MAX_BODY_BYTES`: largest admin request body; larger is answered 413.
    pub max_body_bytes: usize,
    /// `CATALOG_SYNCHRONOUS_COMMIT`: `synchronous_commit` of the writer's transactions.
    /// With a synchronous standby configured on the primary, `remote_apply` makes
    /// "acknowledged" mean "applied on that standby" too. `None`: the server's setting.
    pub synchronous_commit: Option<String>,
    /// `CATALOG_IDEMPOTENCY_TTL_SECS`: how long a stored `Idempotency-Key` response is kept.
    pub idempotency_ttl: Duration,
    /// `CATALOG_SWEEP_INTERVAL_SECS`: time between the writer's sweeper rounds, which
    /// delete expired idempotency keys and old published outbox rows.
    pub sweep_interval: Duration,
    /// `CATALOG_OUTBOX_RETENTION_SECS`: how long a published outbox row is kept before
    /// the sweeper deletes it (unpublished rows are never deleted).
    pub outbox_retention: Duration,
    /// `CATALOG_READER_ADDR`: where the storefront (read) face listens.
    pub reader_addr: SocketAddr,
    /// `CATALOG_WRITER_ADDR`: where the admin (write) face listens.
    pub writer_addr: SocketAddr,
    /// `CATALOG_METRICS_ADDR`: a listener of its own for `/metrics` (the faces then
    /// answer it 404); `None`: each face serves `/metrics`.
    pub metrics_addr: Option<SocketAddr>,
    /// `CATALOG_ADMIN_TOKENS`: comma-separated bearer tokens accepted by the admin face.
    pub admin_tokens: Vec<Secret>,
    /// `CATALOG_DB_POOL_SIZE`: connections per PostgreSQL pool (primary, and each replica).
    pub db_pool_size: u32,
    /// `CATALOG_SHUTDOWN_DELAY_MS`: after SIGTERM, how long readiness is off while the
    /// listeners still serve, before they stop accepting and drain.
    pub shutdown_delay: Duration,
    /// `CATALOG_HEARTBEAT_MS`: the relay publishes a heartbeat when this long passes
    /// without an entry, so readers can tell a quiet feed from a dead one.
    pub heartbeat: Duration,
    /// `CATALOG_EDGE_PURGE_URLS`: edge caches (Varnish with xkey) the writer purges by
    /// surrogate key as changes are published; empty: none.
    pub edge_purge_urls: Vec<crate::http::client::Target>,
    /// `CATALOG_EDGE_REPURGE_MS`: each purge is sent again this much later.
    pub edge_repurge: Duration,
    /// `CATALOG_FEED_SILENCE_MS`: a reader that hears no entry (not even a heartbeat) for
    /// this long treats its feed as lost: it flushes L1 and caps entries' life at this.
    pub feed_silence: Duration,
    /// `CATALOG_DB_TIMEOUT_MS`: deadline of every database call (a query, or a write's
    /// transaction), enforced by the server (`statement_timeout`) and by the client.
    pub db_timeout: Duration,
    /// `CATALOG_READ_RATE_PER_SEC` / `CATALOG_READ_RATE_BURST`: requests per second and
    /// burst each client address may send to the storefront face; `None` (rate 0): no
    /// limit.
    pub read_rate: Option<Rate>,
    /// `CATALOG_WRITE_RATE_PER_SEC` / `CATALOG_WRITE_RATE_BURST`: the same for the admin
    /// face.
    pub write_rate: Option<Rate>,
    /// `CATALOG_LOG`: a `tracing` filter such as `info` or `catalog=debug`.
    pub log_filter: String,
    /// `CATALOG_LOG_FORMAT`: `text` or `json`.
    pub log_format: LogFormat,
    /// Read-path tuning.
    pub read: ReadConfig,
    /// Webhook delivery (`CATALOG_WEBHOOK_*`).
    pub webhooks: WebhookConfig,
}

/// How the writer delivers webhooks ([`crate::write::webhooks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookConfig {
    /// `CATALOG_WEBHOOK_RETRY_SECS`: how long a delivery is retried, from its first
    /// attempt (or its replay), before it becomes a dead letter.
    pub retry_period: Duration,
    /// `CATALOG_WEBHOOK_BACKOFF_MS`: the pause after a delivery's first failure; it
    /// doubles after each further failure (with jitter), up to `backoff_max`.
    pub backoff_first: Duration,
    /// `CATALOG_WEBHOOK_BACKOFF_MAX_MS`: the longest pause between two attempts.
    pub backoff_max: Duration,
    /// `CATALOG_WEBHOOK_TIMEOUT_MS`: deadline of one attempt (connect, send, answer).
    pub timeout: Duration,
    /// `CATALOG_WEBHOOK_RETENTION_SECS`: how long delivered deliveries and dead letters
    /// are kept before they are deleted.
    pub retention: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            retry_period: Duration::from_secs(86_400),
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Tuning of the read path (L1, replicas, HTTP caching headers, connection limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadConfig {
    /// `CATALOG_L1_BYTES`: the in-process cache's budget, in bytes of documents and keys.
    pub l1_budget_bytes: u64,
    /// `CATALOG_L1_TTL_SECS`: the maximum age of an L1 entry, the backstop against any
    /// invalidation that was lost without anyone noticing.
    pub l1_max_ttl: Duration,
    /// `CATALOG_NEGATIVE_TTL_MS`: how long an unknown id is remembered as missing.
    pub negative_ttl: Duration,
    /// `CATALOG_HTTP_MAX_AGE_SECS`: `Cache-Control: max-age` sent with documents.
    pub http_max_age_secs: u32,
    /// `CATALOG_SURROGATE_KEYS`: documents and listings carry `xkey` and
    /// `Surrogate-Key` headers naming what an edge cache purges them by.
    pub surrogate_keys: bool,
    /// `CATALOG_GZIP`: documents and listings are sent with `Content-Encoding: gzip` to
    /// clients whose `Accept-Encoding` allows it.
    pub gzip: bool,
    /// `CATALOG_HTTP_SWR_SECS`: `Cache-Control: stale-while-revalidate` sent with documents.
    pub http_stale_while_revalidate_secs: u32,
    /// `CATALOG_REPLICA_CHECK_MS`: how often each replica's health and lag are probed.
    pub replica_check_interval: Duration,
    /// `CATALOG_REPLICA_MAX_LAG_BYTES`: a replica whose replay position is further than this
    /// behind the primary's WAL position is skipped.
    pub replica_max_lag_bytes: u64,
    /// `CATALOG_PRIMARY_FALLBACK`: serve reads from the primary when no replica is healthy.
    pub primary_fallback: bool,
    /// `CATALOG_MAX_CONNECTIONS`: concurrent client connections per face; more wait in the
    /// kernel's accept queue.
    pub max_connections: usize,
    /// `CATALOG_HEADER_TIMEOUT_MS`: a client must send its request head within this time.
    pub header_read_timeout: Duration,
    /// `CATALOG_WRITE_STALL_MS`: a response whose client takes none of it for this long
    /// (it stopped reading) has its connection closed.
    pub write_stall: Duration,
    /// `CATALOG_REQUEST_TIMEOUT_MS`: deadline of a storefront request from its head to
    /// its answer; past it the request is answered 503.
    pub request_timeout: Duration,
    /// `CATALOG_TOKEN_BYPASS_MAX`: token reads that may go around the caches at once;
    /// more are answered 503.
    pub token_bypass_max: usize,
    /// `CATALOG_L1_SOFT_TTL_SECS`: a document older than this is still served from L1,
    /// and refreshed in the background (refresh-ahead); at most `l1_max_ttl`.
    pub l1_soft_ttl: Duration,
    /// `CATALOG_STALE_IF_ERROR_SECS`: how long past `l1_max_ttl` a document is kept to be
    /// served, with an `Age` header, when no database answers; 0 turns it off.
    pub stale_if_error: Duration,
    /// `CATALOG_CORS_ORIGINS`: browser origins (`https://shop.example`, or `*`) allowed to
    /// read the storefront API; empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// `CATALOG_CHANGES_MAX_SUBSCRIBERS`, `CATALOG_CHANGES_MAX_PER_CLIENT`,
    /// `CATALOG_CHANGES_BUFFER` and `CATALOG_CHANGES_HEARTBEAT_MS`: the live change feed's
    /// limits.
    pub changes: crate::read::changes::FeedSettings,
    /// `CATALOG_AUDIT_INTERVAL_MS`: time between rounds of the consistency auditor;
    /// `None` (0) turns it off.
    pub audit_interval: Option<Duration>,
    /// `CATALOG_AUDIT_SAMPLE`: L1 entries the auditor compares with the primary per round.
    pub audit_sample: usize,
    /// `CATALOG_L2_COALESCE`: at most this many concurrent misses share one Redis
    /// lookup (`MGET`); 0 gives each miss a `GET` of its own.
    pub l2_coalesce: usize,
    /// `CATALOG_DB_COALESCE`: at most this many concurrent misses that go to the
    /// databases share one query; 0 gives each miss a query of its own.
    pub db_coalesce: usize,
}

impl Config {
    /// A configuration with every default, for `database_url`. Tests start here.
    pub fn with_database(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            replica_urls: Vec::new(),
            redis_url: None,
            redis_prefix: "catalog:".to_owned(),
            redis_timeout: Duration::from_millis(250),
            l2_ttl: Duration::from_secs(3600),
            stream_max_len: 100_000,
            max_body_bytes: 1024 * 1024,
            idempotency_ttl: Duration::from_secs(86_400),
            sweep_interval: Duration::from_secs(60),
            outbox_retention: Duration::from_secs(3600),
            synchronous_commit: None,
            reader_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            writer_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            metrics_addr: None,
            admin_tokens: Vec::new(),
            db_pool_size: 16,
            db_timeout: Duration::from_secs(2),
            read_rate: None,
            write_rate: None,
            shutdown_delay: Duration::ZERO,
            heartbeat: Duration::from_secs(1),
            edge_purge_urls: Vec::new(),
            edge_repurge: Duration::from_millis(200),
            feed_silence: Duration::from_secs(5),
            log_filter: "info".to_owned(),
            log_format: LogFormat::Text,
            read: ReadConfig::default(),
            webhooks: WebhookConfig::default(),
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    /// Reads every `CATALOG_*` variable from `src`, applying defaults.
    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Self, ConfigError> {
        let var = Vars(src);
        let database_url = var.required("CATALOG_DATABASE_URL", parse_pg_url)?;
        let mut config = Self::with_database(database_url);
        config.replica_urls = var.or("CATALOG_REPLICA_URLS", Vec::new(), |raw| {
            split_list(raw).map(parse_pg_url).collect()
        })?;
        config.redis_url = var.optional("CATALOG_REDIS_URL", parse_redis_url)?;
        config.redis_prefix = var.or("CATALOG_REDIS_PREFIX", config.redis_prefix, |raw| {
            if raw.len() <= 64 && !raw.contains(char::is_whitespace) {
                Ok(raw.to_owned())
            } else {
                Err("at most 64 characters, no spaces".to_owned())
            }
        })?;
        config.redis_timeout = var.or("CATALOG_REDIS_TIMEOUT_MS", config.redis_timeout, |raw| {
            parse_in_range(raw, 1..=60_000).map(Duration::from_millis)
        })?;
        config.l2_ttl = var.or("CATALOG_L2_TTL_SECS", config.l2_ttl, |raw| {
            parse_in_range(raw, 1..=2_592_000).map(Duration::from_secs)
        })?;
        config.stream_max_len = var.or("CATALOG_STREAM_MAXLEN", config.stream_max_len, |raw| {
            parse_in_range(raw, 100..=100_000_000)
        })?;
        config.max_body_bytes = var.or("CATALOG_MAX_BODY_BYTES", config.max_body_bytes, |raw| {
            parse_in_range(raw, 1024..=1024 * 1024 * 1024)
        })?;
        config.idempotency_ttl = var.or(
            "CATALOG_IDEMPOTENCY_TTL_SECS",
            config.idempotency_ttl,
            |raw| parse_in_range(raw, 1..=2_592_000).map(Duration::from_secs),
        )?;
        config.sweep_interval = var.or(
            "CATALOG_SWEEP_INTERVAL_SECS",
            config.sweep_interval,
            |raw| parse_in_range(raw, 1..=86_400).map(Duration::from_secs),
        )?;
        config.outbox_retention = var.or(
            "CATALOG_OUTBOX_RETENTION_SECS",
            config.outbox_retention,
            |raw| parse_in_range(raw, 0..=31_536_000).map(Duration::from_secs),
        )?;
        if config.outbox_retention < config.l2_ttl {
            return Err(ConfigError {
                var: "CATALOG_OUTBOX_RETENTION_SECS",
                reason: format!(
                    "must be at least CATALOG_L2_TTL_SECS ({} s): after Redis rolls back, the \
                     relay republishes the changes of one L2 lifetime from the outbox",
                    config.l2_ttl.as_secs()
                ),
            });
        }
        config.synchronous_commit =
            var.optional("CATALOG_SYNCHRONOUS_COMMIT", |raw| match raw {
                "on" | "off" | "local" | "remote_write" | "remote_apply" => Ok(raw.to_owned()),
                _ => Err("expected on, off, local, remote_write or remote_apply".to_owned()),
            })?;
        config.reader_addr = var.or("CATALOG_READER_ADDR", config.reader_addr, parse_from_str)?;
        config.writer_addr = var.or("CATALOG_WRITER_ADDR", config.writer_addr, parse_from_str)?;
        config.metrics_addr = var.optional("CATALOG_METRICS_ADDR", parse_from_str)?;
        config.admin_tokens = var.or("CATALOG_ADMIN_TOKENS", Vec::new(), parse_tokens)?;
        config.db_pool_size = var.or("CATALOG_DB_POOL_SIZE", 16, |raw| {
            parse_in_range(raw, 1..=1000)
        })?;
        config.db_timeout = var.or("CATALOG_DB_TIMEOUT_MS", config.db_timeout, |raw| {
            parse_in_range(raw, 10..=600_000).map(Duration::from_millis)
        })?;
        config.read_rate = rate(&var, "CATALOG_READ_RATE_PER_SEC", "CATALOG_READ_RATE_BURST")?;
        config.write_rate = rate(
            &var,
            "CATALOG_WRITE_RATE_PER_SEC",
            "CATALOG_WRITE_RATE_BURST",
        )?;
        config.shutdown_delay =
            var.or("CATALOG_SHUTDOWN_DELAY_MS", config.shutdown_delay, |raw| {
                parse_in_range(raw, 0..=600_000).map(Duration::from_millis)
            })?;
        config.heartbeat = var.or("CATALOG_HEARTBEAT_MS", config.heartbeat, |raw| {
            parse_in_range(raw, 10..=60_000).map(Duration::from_millis)
        })?;
        config.edge_purge_urls = var.or("CATALOG_EDGE_PURGE_URLS", Vec::new(), |raw| {
            split_list(raw)
                .map(|url| crate::http::client::Target::parse(url).map_err(|e| e.to_string()))
                .collect()
        })?;
        config.edge_repurge = var.or("CATALOG_EDGE_REPURGE_MS", config.edge_repurge, |raw| {
            parse_in_range(raw, 1..=60_000).map(Duration::from_millis)
        })?;
        config.feed_silence = var.or("CATALOG_FEED_SILENCE_MS", config.feed_silence, |raw| {
            parse_in_range(raw, 20..=3_600_000).map(Duration::from_millis)
        })?;
        if config.feed_silence <= config.heartbeat {
            return Err(ConfigError {
                var: "CATALOG_FEED_SILENCE_MS",
                reason: format!(
                    "must be longer than CATALOG_HEARTBEAT_MS ({} ms), or every reader would \
                     think its feed lost between two heartbeats",
                    config.heartbeat.as_millis()
                ),
            });
        }
        config.log_filter = var.or("CATALOG_LOG", config.log_filter, |raw| Ok(raw.to_owned()))?;
        config.log_format = var.or("CATALOG_LOG_FORMAT", LogFormat::Text, |raw| match raw {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected `text` or `json`".to_owned()),
        })?;
        config.read = read::parse(&var)?;
        config.webhooks = webhooks(&var)?;
        Ok(config)
    }
}

/// The `CATALOG_WEBHOOK_*` variables.
fn webhooks<S: Source + ?Sized>(var: &Vars<'_, S>) -> Result<WebhookConfig, ConfigError> {
    let d = WebhookConfig::default();
    let webhooks = WebhookConfig {
        retry_period: var.or("CATALOG_WEBHOOK_RETRY_SECS", d.retry_period, |raw| {
            parse_in_range(raw, 1..=2_592_000).map(Duration::from_secs)
        })?,
        backoff_first: var.or("CATALOG_WEBHOOK_BACKOFF_MS", d.backoff_first, |raw| {
            parse_in_range(raw, 10..=3_600_000).map(Duration::from_millis)
        })?,
        backoff_max: var.or("CATALOG_WEBHOOK_BACKOFF_MAX_MS", d.backoff_max, |raw| {
            parse_in_range(raw, 10..=86_400_000).map(Duration::from_millis)
        })?,
        timeout: var.or("CATALOG_WEBHOOK_TIMEOUT_MS", d.timeout, |raw| {
            parse_in_range(raw, 100..=120_000).map(Duration::from_millis)
        })?,
        retention: var.or("CATALOG_WEBHOOK_RETENTION_SECS", d.retention, |raw| {
            parse_in_range(raw, 60..=31_536_000).map(Duration::from_secs)
        })?,
    };
    if webhooks.backoff_max < webhooks.backoff_first {
        return Err(ConfigError {
            var: "CATALOG_WEBHOOK_BACKOFF_MAX_MS",
            reason: format!(
                "must be at least CATALOG_WEBHOOK_BACKOFF_MS ({} ms)",
                webhooks.backoff_first.as_millis()
            ),
        });
    }
    Ok(webhooks)
}

#[cfg(test)]
mod tests;
