//! Typed configuration, read in exactly one place from `CATALOG_*` variables.
//!
//! Nothing else in the crate reads the environment. [`Config::from_source`] takes
//! any [`Source`] so tests build configurations from a map instead of mutating the
//! process environment. Every value has a typed default except the primary's URL; a
//! value that does not parse is refused with a [`ConfigError`] naming the variable.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use crate::http::rate::Rate;

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
    /// `CATALOG_AUDIT_INTERVAL_MS`: time between rounds of the consistency auditor;
    /// `None` (0) turns it off.
    pub audit_interval: Option<Duration>,
    /// `CATALOG_AUDIT_SAMPLE`: L1 entries the auditor compares with the primary per round.
    pub audit_sample: usize,
}

impl Default for ReadConfig {
    fn default() -> Self {
        Self {
            l1_budget_bytes: 256 * 1024 * 1024,
            l1_max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(2),
            http_max_age_secs: 5,
            http_stale_while_revalidate_secs: 30,
            replica_check_interval: Duration::from_millis(500),
            replica_max_lag_bytes: 1024 * 1024,
            primary_fallback: true,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            token_bypass_max: 32,
            l1_soft_ttl: Duration::from_secs(240),
            stale_if_error: Duration::from_secs(300),
            cors_origins: Vec::new(),
            audit_interval: Some(Duration::from_secs(10)),
            audit_sample: 64,
        }
    }
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
            admin_tokens: Vec::new(),
            db_pool_size: 16,
            db_timeout: Duration::from_secs(2),
            read_rate: None,
            write_rate: None,
            shutdown_delay: Duration::ZERO,
            heartbeat: Duration::from_secs(1),
            feed_silence: Duration::from_secs(5),
            log_filter: "info".to_owned(),
            log_format: LogFormat::Text,
            read: ReadConfig::default(),
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
        let d = ReadConfig::default();
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
        config.read = ReadConfig {
            l1_budget_bytes: var.or("CATALOG_L1_BYTES", d.l1_budget_bytes, |raw| {
                parse_in_range(raw, 1024..=u64::MAX)
            })?,
            l1_max_ttl: var.or("CATALOG_L1_TTL_SECS", d.l1_max_ttl, |raw| {
                parse_in_range(raw, 1..=86_400).map(Duration::from_secs)
            })?,
            negative_ttl: var.or("CATALOG_NEGATIVE_TTL_MS", d.negative_ttl, |raw| {
                parse_in_range(raw, 0..=3_600_000).map(Duration::from_millis)
            })?,
            http_max_age_secs: var.or("CATALOG_HTTP_MAX_AGE_SECS", d.http_max_age_secs, |raw| {
                parse_in_range(raw, 0..=31_536_000)
            })?,
            http_stale_while_revalidate_secs: var.or(
                "CATALOG_HTTP_SWR_SECS",
                d.http_stale_while_revalidate_secs,
                |raw| parse_in_range(raw, 0..=31_536_000),
            )?,
            replica_check_interval: var.or(
                "CATALOG_REPLICA_CHECK_MS",
                d.replica_check_interval,
                |raw| parse_in_range(raw, 10..=60_000).map(Duration::from_millis),
            )?,
            replica_max_lag_bytes: var.or(
                "CATALOG_REPLICA_MAX_LAG_BYTES",
                d.replica_max_lag_bytes,
                parse_from_str,
            )?,
            primary_fallback: var.or("CATALOG_PRIMARY_FALLBACK", d.primary_fallback, parse_bool)?,
            max_connections: var.or("CATALOG_MAX_CONNECTIONS", d.max_connections, |raw| {
                parse_in_range(raw, 1..=1_000_000)
            })?,
            header_read_timeout: var.or(
                "CATALOG_HEADER_TIMEOUT_MS",
                d.header_read_timeout,
                |raw| parse_in_range(raw, 1..=600_000).map(Duration::from_millis),
            )?,
            request_timeout: var.or("CATALOG_REQUEST_TIMEOUT_MS", d.request_timeout, |raw| {
                parse_in_range(raw, 10..=600_000).map(Duration::from_millis)
            })?,
            token_bypass_max: var.or("CATALOG_TOKEN_BYPASS_MAX", d.token_bypass_max, |raw| {
                parse_in_range(raw, 1..=100_000)
            })?,
            l1_soft_ttl: var.or("CATALOG_L1_SOFT_TTL_SECS", d.l1_soft_ttl, |raw| {
                parse_in_range(raw, 1..=86_400).map(Duration::from_secs)
            })?,
            stale_if_error: var.or("CATALOG_STALE_IF_ERROR_SECS", d.stale_if_error, |raw| {
                parse_in_range(raw, 0..=86_400).map(Duration::from_secs)
            })?,
            cors_origins: var.or("CATALOG_CORS_ORIGINS", Vec::new(), |raw| {
                split_list(raw).map(parse_origin).collect()
            })?,
            audit_interval: var.or("CATALOG_AUDIT_INTERVAL_MS", d.audit_interval, |raw| {
                parse_in_range(raw, 0..=86_400_000)
                    .map(|ms| (ms > 0).then(|| Duration::from_millis(ms)))
            })?,
            audit_sample: var.or("CATALOG_AUDIT_SAMPLE", d.audit_sample, |raw| {
                parse_in_range(raw, 1..=10_000)
            })?,
        };
        // Refresh-ahead happens before expiry, or at it.
        config.read.l1_soft_ttl = config.read.l1_soft_ttl.min(config.read.l1_max_ttl);
        Ok(config)
    }
}

/// Typed lookups that attach the variable's name to any failure.
struct Vars<'a, S: ?Sized>(&'a S);

impl<S: Source + ?Sized> Vars<'_, S> {
    fn optional<T>(
        &self,
        var: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.0.get(var) {
            None => Ok(None),
            Some(raw) if raw.trim().is_empty() => Ok(None),
            Some(raw) => parse(raw.trim()).map(Some).map_err(|reason| ConfigError {
                var,
                reason: match shown(var, &raw) {
                    Some(shown) => format!("invalid value {shown:?}: {reason}"),
                    None => format!("invalid value (not shown: it holds secrets): {reason}"),
                },
            }),
        }
    }

    fn or<T>(
        &self,
        var: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        Ok(self.optional(var, parse)?.unwrap_or(default))
    }

    fn required<T>(
        &self,
        var: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.optional(var, parse)?.ok_or_else(|| ConfigError {
            var,
            reason: "is not set (for the local stack: eval \"$(ops/dev.sh env)\")".to_owned(),
        })
    }
}

/// Variables whose values are never printed, not even in part.
const SECRET_VARS: [&str; 1] = ["CATALOG_ADMIN_TOKENS"];

/// Variables holding URLs, which may carry a password: printed with it masked.
const URL_VARS: [&str; 3] = [
    "CATALOG_DATABASE_URL",
    "CATALOG_REPLICA_URLS",
    "CATALOG_REDIS_URL",
];

/// What an error message may show of `var`'s value: nothing for secrets, URLs with
/// their passwords masked, other values as they are.
fn shown(var: &str, raw: &str) -> Option<String> {
    if SECRET_VARS.contains(&var) {
        None
    } else if URL_VARS.contains(&var) {
        Some(raw.split(',').map(mask_url).collect::<Vec<_>>().join(","))
    } else {
        Some(raw.to_owned())
    }
}

/// `url` with the password of its user information and any `password` query parameter
/// replaced by `***`. Everything up to the last `@` before the query is taken as user
/// information, so a password holding `@`, `/` or `:` is masked whole.
fn mask_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let mut masked = String::with_capacity(url.len());
    if !scheme.is_empty() || url.contains("://") {
        masked.push_str(scheme);
        masked.push_str("://");
    }
    match path.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    masked.push_str(user);
                    masked.push_str(":***");
                }
                None => masked.push_str(userinfo),
            }
            masked.push('@');
            masked.push_str(host);
        }
        None => masked.push_str(path),
    }
    if let Some(query) = query {
        masked.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => param.to_owned(),
            })
            .collect();
        masked.push_str(&params.join("&"));
    }
    masked
}

fn split_list(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_from_str<T: FromStr>(raw: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    raw.parse().map_err(|e: T::Err| e.to_string())
}

fn parse_in_range<T>(raw: &str, range: std::ops::RangeInclusive<T>) -> Result<T, String>
where
    T: FromStr + PartialOrd + fmt::Display,
    T::Err: fmt::Display,
{
    let value: T = parse_from_str(raw)?;
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "must be between {} and {}",
            range.start(),
            range.end()
        ))
    }
}

fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

fn parse_pg_url(raw: &str) -> Result<String, String> {
    if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        Ok(raw.to_owned())
    } else {
        Err("expected a postgres:// URL".to_owned())
    }
}

fn parse_redis_url(raw: &str) -> Result<String, String> {
    if raw.starts_with("redis://") || raw.starts_with("rediss://") {
        Ok(raw.to_owned())
    } else {
        Err("expected a redis:// URL".to_owned())
    }
}

/// A per-client rate from its two variables: the rate (0, the default, means no limit)
/// and the burst (default: twice the rate, at least 1).
fn rate<S: Source + ?Sized>(
    var: &Vars<'_, S>,
    per_second: &'static str,
    burst: &'static str,
) -> Result<Option<Rate>, ConfigError> {
    let rate: u32 = var.or(per_second, 0, |raw| parse_in_range(raw, 0..=10_000_000))?;
    let Some(rate) = NonZeroU32::new(rate) else {
        return Ok(None);
    };
    let default_burst = rate.saturating_mul(NonZeroU32::new(2).expect("2 is not zero"));
    let burst = var.or(burst, default_burst, |raw| {
        parse_in_range(raw, 1..=100_000_000).map(|b: u32| NonZeroU32::new(b).expect("at least 1"))
    })?;
    Ok(Some(Rate {
        per_second: rate,
        burst,
    }))
}

/// An origin as browsers send it: `scheme://host[:port]`, nothing after; or `*`.
fn parse_origin(raw: &str) -> Result<String, String> {
    let valid = raw == "*"
        || raw.split_once("://").is_some_and(|(scheme, host)| {
            matches!(scheme, "http" | "https")
                && !host.is_empty()
                && !host.contains(['/', '?', '#', ' '])
        });
    if valid {
        Ok(raw.to_owned())
    } else {
        Err("an origin is scheme://host[:port] (http or https), or *".to_owned())
    }
}

fn parse_tokens(raw: &str) -> Result<Vec<Secret>, String> {
    let tokens: Vec<Secret> = split_list(raw).map(Secret::new).collect();
    for token in &tokens {
        let entry = token.expose();
        if entry.starts_with(DIGEST_PREFIX.as_bytes()) {
            if parse_digest(entry).is_none() {
                return Err("a sha256: entry must be followed by 64 hex digits".to_owned());
            }
        } else if entry.len() < 8 {
            return Err("every token must be at least 8 characters".to_owned());
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_tokens_are_tokens_or_their_digests() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            parse_tokens(&format!("long-enough,{digest}"))
                .unwrap()
                .len(),
            2
        );
        assert!(parse_tokens("short").is_err());
        assert!(parse_tokens("sha256:00").is_err());
        assert!(parse_tokens(&format!("sha256:{}", "z".repeat(64))).is_err());
        assert_eq!(parse_digest(digest.as_bytes()), Some([0xab; 32]));
    }

    const DB: (&str, &str) = ("CATALOG_DATABASE_URL", "postgres://u@h/db");

    #[test]
    fn defaults_apply_when_only_the_database_is_set() {
        let config = Config::from_source(&[DB][..]).unwrap();
        assert_eq!(config.database_url, "postgres://u@h/db");
        assert!(config.replica_urls.is_empty());
        assert_eq!(config.redis_url, None);
        assert_eq!(config.reader_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.writer_addr.to_string(), "127.0.0.1:8081");
        assert_eq!(config.read, ReadConfig::default());
    }

    #[test]
    fn lists_are_split_and_trimmed() {
        let src = [
            DB,
            (
                "CATALOG_REPLICA_URLS",
                " postgres://a/x , postgresql://b/x ,",
            ),
            ("CATALOG_ADMIN_TOKENS", "token-one-1,token-two-2"),
        ];
        let config = Config::from_source(&src[..]).unwrap();
        assert_eq!(config.replica_urls, ["postgres://a/x", "postgresql://b/x"]);
        assert_eq!(config.admin_tokens.len(), 2);
        assert_eq!(config.admin_tokens[1].expose(), b"token-two-2");
        assert_eq!(format!("{:?}", config.admin_tokens[0]), "Secret(..)");
    }

    #[test]
    fn a_missing_database_url_names_the_variable() {
        let err = Config::from_source(&[][..]).unwrap_err();
        assert_eq!(err.var, "CATALOG_DATABASE_URL");
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let cases = [
            ("CATALOG_DATABASE_URL", "mysql://x"),
            ("CATALOG_REPLICA_URLS", "postgres://ok,http://bad"),
            ("CATALOG_REDIS_URL", "localhost:6379"),
            ("CATALOG_REDIS_PREFIX", "has space"),
            ("CATALOG_REDIS_TIMEOUT_MS", "0"),
            ("CATALOG_L2_TTL_SECS", "forever"),
            ("CATALOG_STREAM_MAXLEN", "10"),
            ("CATALOG_MAX_BODY_BYTES", "big"),
            ("CATALOG_IDEMPOTENCY_TTL_SECS", "0"),
            ("CATALOG_SWEEP_INTERVAL_SECS", "0"),
            ("CATALOG_OUTBOX_RETENTION_SECS", "-1"),
            ("CATALOG_SYNCHRONOUS_COMMIT", "always"),
            ("CATALOG_READER_ADDR", "not-an-address"),
            ("CATALOG_WRITER_ADDR", "127.0.0.1:99999"),
            ("CATALOG_ADMIN_TOKENS", "short"),
            ("CATALOG_DB_POOL_SIZE", "0"),
            ("CATALOG_LOG_FORMAT", "xml"),
            ("CATALOG_L1_BYTES", "-5"),
            ("CATALOG_L1_TTL_SECS", "0"),
            ("CATALOG_NEGATIVE_TTL_MS", "soon"),
            ("CATALOG_HTTP_MAX_AGE_SECS", "1.5"),
            ("CATALOG_HTTP_SWR_SECS", "-1"),
            ("CATALOG_REPLICA_CHECK_MS", "1"),
            ("CATALOG_REPLICA_MAX_LAG_BYTES", "lots"),
            ("CATALOG_PRIMARY_FALLBACK", "maybe"),
            ("CATALOG_MAX_CONNECTIONS", "0"),
            ("CATALOG_HEADER_TIMEOUT_MS", "0"),
        ];
        for (var, value) in cases {
            let mut src: HashMap<String, String> = HashMap::new();
            src.insert(DB.0.to_owned(), DB.1.to_owned());
            src.insert(var.to_owned(), value.to_owned());
            let err = Config::from_source(&src).unwrap_err();
            assert_eq!(err.var, var, "{value:?} was not refused as {var}");
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }

    #[test]
    fn errors_never_print_secrets() {
        let cases = [
            (
                "CATALOG_DATABASE_URL",
                "mysql://admin:hunter2-db@db.example/catalog",
                "mysql://admin:***@db.example/catalog",
            ),
            (
                "CATALOG_REPLICA_URLS",
                "postgres://r:hunter2-a@a/x,http://r:p@ss:hunter2-b@b/x",
                "postgres://r:***@a/x,http://r:***@b/x",
            ),
            (
                "CATALOG_REDIS_URL",
                "localhost:6379?password=hunter2-redis&db=1",
                "localhost:6379?password=***&db=1",
            ),
        ];
        for (var, value, masked) in cases {
            let src = [DB, (var, value)];
            let src = if var == DB.0 { &src[1..] } else { &src[..] };
            let err = Config::from_source(src).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{var} printed a password: {err}");
            assert!(err.contains(masked), "{var}: {err}");
        }
        let src = [DB, ("CATALOG_ADMIN_TOKENS", "a-long-admin-secret,short")];
        let err = Config::from_source(&src[..]).unwrap_err().to_string();
        assert_eq!(
            err,
            "CATALOG_ADMIN_TOKENS: invalid value (not shown: it holds secrets): \
             every token must be at least 8 characters"
        );
        // Values that hold no secret are still shown, to help the operator.
        let src = [DB, ("CATALOG_READER_ADDR", "not-an-address")];
        let err = Config::from_source(&src[..]).unwrap_err().to_string();
        assert!(err.contains("\"not-an-address\""), "{err}");
    }

    #[test]
    fn urls_are_masked_whole() {
        assert_eq!(mask_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            mask_url("postgres://u:p/w@x@h:1/db"),
            "postgres://u:***@h:1/db"
        );
        assert_eq!(mask_url("redis://:pw@h"), "redis://:***@h");
        assert_eq!(
            mask_url("postgres://h/db?PassWord=pw&sslmode=require"),
            "postgres://h/db?PassWord=***&sslmode=require"
        );
        assert_eq!(mask_url("u:pw@h"), "u:***@h");
    }

    #[test]
    fn blank_optional_values_mean_unset() {
        let src = [DB, ("CATALOG_REDIS_URL", "  ")];
        assert_eq!(Config::from_source(&src[..]).unwrap().redis_url, None);
    }
}
