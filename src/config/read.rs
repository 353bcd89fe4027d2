//! The read path's settings ([`ReadConfig`]): their defaults, and their `CATALOG_*`
//! variables parsed and bounded.

use std::time::Duration;

use super::values::*;
use super::{ConfigError, ReadConfig, Source};

impl Default for ReadConfig {
    fn default() -> Self {
        Self {
            l1_budget_bytes: 256 * 1024 * 1024,
            l1_max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(2),
            http_max_age_secs: 5,
            surrogate_keys: false,
            gzip: true,
            http_stale_while_revalidate_secs: 30,
            replica_check_interval: Duration::from_millis(500),
            replica_max_lag_bytes: 1024 * 1024,
            primary_fallback: true,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(5),
            write_stall: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
            token_bypass_max: 32,
            l1_soft_ttl: Duration::from_secs(240),
            stale_if_error: Duration::from_secs(300),
            cors_origins: Vec::new(),
            changes: crate::read::changes::FeedSettings {
                max_subscribers: 10_000,
                max_per_client: 100,
                buffer: 4096,
                heartbeat: Duration::from_secs(15),
            },
            audit_interval: Some(Duration::from_secs(10)),
            audit_sample: 64,
            l2_coalesce: 64,
            db_coalesce: 64,
        }
    }
}

/// The read path's variables, over [`ReadConfig::default`].
pub(super) fn parse<S: Source + ?Sized>(var: &Vars<'_, S>) -> Result<ReadConfig, ConfigError> {
    let d = ReadConfig::default();
    let mut read = ReadConfig {
        l1_budget_bytes: var.or("CATALOG_L1_BYTES", d.l1_budget_bytes, |raw| {
            parse_in_range(raw, 1024..=u64::MAX)
        })?,
        l1_max_ttl: var.or("CATALOG_L1_TTL_SECS", d.l1_max_ttl, |raw| {
            parse_in_range(raw, 1..=86_400).map(Duration::from_secs)
        })?,
        negative_ttl: var.or("CATALOG_NEGATIVE_TTL_MS", d.negative_ttl, |raw| {
            parse_in_range(raw, 0..=3_600_000).map(Duration::from_millis)
        })?,
        surrogate_keys: var.or("CATALOG_SURROGATE_KEYS", d.surrogate_keys, parse_bool)?,
        gzip: var.or("CATALOG_GZIP", d.gzip, parse_bool)?,
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
        header_read_timeout: var.or("CATALOG_HEADER_TIMEOUT_MS", d.header_read_timeout, |raw| {
            parse_in_range(raw, 1..=600_000).map(Duration::from_millis)
        })?,
        write_stall: var.or("CATALOG_WRITE_STALL_MS", d.write_stall, |raw| {
            parse_in_range(raw, 100..=3_600_000).map(Duration::from_millis)
        })?,
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
        changes: crate::read::changes::FeedSettings {
            max_subscribers: var.or(
                "CATALOG_CHANGES_MAX_SUBSCRIBERS",
                d.changes.max_subscribers,
                |raw| parse_in_range(raw, 0..=1_000_000),
            )?,
            max_per_client: var.or(
                "CATALOG_CHANGES_MAX_PER_CLIENT",
                d.changes.max_per_client,
                |raw| parse_in_range(raw, 1..=1_000_000),
            )?,
            buffer: var.or("CATALOG_CHANGES_BUFFER", d.changes.buffer, |raw| {
                parse_in_range(raw, 16..=1_000_000)
            })?,
            heartbeat: var.or("CATALOG_CHANGES_HEARTBEAT_MS", d.changes.heartbeat, |raw| {
                parse_in_range(raw, 100..=600_000).map(Duration::from_millis)
            })?,
        },
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
        l2_coalesce: var.or("CATALOG_L2_COALESCE", d.l2_coalesce, |raw| {
            parse_in_range(raw, 0..=1_000)
        })?,
        db_coalesce: var.or("CATALOG_DB_COALESCE", d.db_coalesce, |raw| {
            parse_in_range(raw, 0..=1_000)
        })?,
    };
    // Refresh-ahead happens before expiry, or at it.
    read.l1_soft_ttl = read.l1_soft_ttl.min(read.l1_max_ttl);
    Ok(read)
}
