//! The database set of the read path: the primary, the read replicas, and the
//! background check that keeps the healthy replica set current.
//!
//! Every `CATALOG_REPLICA_CHECK_MS` each replica is probed: it must answer, and its replay
//! position (`pg_last_wal_replay_lsn()`) must be within `CATALOG_REPLICA_MAX_LAG_BYTES` of
//! the primary's `pg_current_wal_lsn()`. Lag is measured by LSN, not by `replay_lag` or
//! replay timestamps, which stop meaning anything while the primary is idle. The healthy
//! set is an [`ArcSwap`] snapshot: readers load it without a lock, the checker replaces
//! it. A query that fails on a replica removes that replica at once, without waiting for
//! the next probe. With no healthy replica, reads go to the primary
//! (`CATALOG_PRIMARY_FALLBACK`). If the primary cannot be reached, replicas that answer
//! stay in the set: they are as fresh as anything left.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// A probe that takes longer than this counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One read replica.
#[derive(Debug)]
pub struct Replica {
    /// `host:port/database`, for logs (no credentials); metrics label it by index.
    pub name: String,
    /// Its connection pool (connected lazily).
    pub pool: PgPool,
    /// Its replay position at the last probe (it only grows), 0 before the first.
    pub replayed: AtomicU64,
}

impl Replica {
    /// A replica not probed yet.
    pub fn new(name: String, pool: PgPool) -> Self {
        Self {
            name,
            pool,
            replayed: AtomicU64::new(0),
        }
    }
}

/// Where a query should go.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Replica number `.0`.
    Replica(usize, &'a PgPool),
    /// The primary.
    Primary(&'a PgPool),
}

impl<'a> Target<'a> {
    /// The pool to run the query on.
    pub fn pool(self) -> &'a PgPool {
        match self {
            Self::Replica(_, pool) | Self::Primary(pool) => pool,
        }
    }
}

/// The primary, the replicas and the current healthy set.
#[derive(Debug)]
pub struct Databases {
    primary: PgPool,
    replicas: Vec<Replica>,
    /// Indices into `replicas` of those that may serve reads.
    healthy: ArcSwap<Vec<usize>>,
    next: AtomicUsize,
    primary_fallback: bool,
    primary_up: AtomicBool,
    /// The primary's WAL position at its last probe (it only grows), 0 before the first.
    primary_position: AtomicU64,
    /// When the last on-demand probe of the primary's position started.
    position_probed: tokio::sync::Mutex<Option<Instant>>,
    max_lag_bytes: u64,
}

impl Databases {
    /// A set whose replicas all start healthy (the first check runs at once).
    pub fn new(
        primary: PgPool,
        replicas: Vec<Replica>,
        primary_fallback: bool,
        max_lag_bytes: u64,
    ) -> Self {
        let all = (0..replicas.len()).collect();
        for (index, replica) in replicas.iter().enumerate() {
            tracing::info!(replica = index, name = %replica.name, "replica metric label");
        }
        Self {
            primary,
            replicas,
            healthy: ArcSwap::from_pointee(all),
            next: AtomicUsize::new(0),
            primary_fallback,
            primary_up: AtomicBool::new(true),
            primary_position: AtomicU64::new(0),
            position_probed: tokio::sync::Mutex::new(None),
            max_lag_bytes,
        }
    }

    /// The primary's pool.
    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// The next healthy replica (round robin), else the primary if allowed.
    pub fn pick(&self) -> Option<Target<'_>> {
        let healthy = self.healthy.load();
        if healthy.is_empty() {
            return self
                .primary_fallback
                .then_some(Target::Primary(&self.primary));
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) % healthy.len();
        let index = healthy[n];
        Some(Target::Replica(index, &self.replicas[index].pool))
    }

    /// A healthy replica known to have replayed at least `lsn`, else the primary: where
    /// a read carrying a read-your-writes token may go.
    pub fn pick_covering(&self, lsn: u64) -> Target<'_> {
        let healthy = self.healthy.load();
        healthy
            .iter()
            .map(|&i| (i, &self.replicas[i]))
            .find(|(_, r)| r.replayed.load(Ordering::Relaxed) >= lsn)
            .map_or(Target::Primary(&self.primary), |(i, r)| {
                Target::Replica(i, &r.pool)
            })
    }

    /// Whether WAL position `lsn` exists yet: some replica has replayed it, or the
    /// primary had reached it at its last probe; if neither, after one more probe of
    /// the primary that starts after this call (concurrent calls share one probe, so a
    /// flood of made-up positions costs the primary one cheap query at a time).
    /// `None` when the primary cannot be asked.
    pub async fn reached(&self, lsn: u64) -> Option<bool> {
        let known = |this: &Self| {
            this.primary_position.load(Ordering::Relaxed) >= lsn
                || this
                    .replicas
                    .iter()
                    .any(|r| r.replayed.load(Ordering::Relaxed) >= lsn)
        };
        if known(self) {
            return Some(true);
        }
        let asked = Instant::now();
        let mut probed = self.position_probed.lock().await;
        if probed.is_some_and(|started| started >= asked) {
            return Some(known(self));
        }
        *probed = Some(Instant::now());
        Some(self.primary_position().await? >= lsn)
    }

    /// The primary's WAL position now (one query with the probe deadline), `None` when
    /// the primary cannot be asked.
    pub async fn primary_position(&self) -> Option<u64> {
        let position = probe(&self.primary, "select pg_current_wal_lsn()::text").await?;
        let position = parse_lsn(&position)?;
        self.primary_position.fetch_max(position, Ordering::Relaxed);
        Some(position)
    }

    /// Takes replica `index` out of the healthy set after a failed query.
    pub fn mark_failed(&self, index: usize, metrics: &Metrics) {
        self.healthy.rcu(|set| {
            set.iter()
                .copied()
                .filter(|&i| i != index)
                .collect::<Vec<_>>()
        });
        if index < self.replicas.len() {
            metrics.replica_healthy.get_or_create(&label(index)).set(0);
        }
    }

    /// Whether reads can be served at all: a healthy replica, or a reachable primary.
    pub fn ready(&self) -> bool {
        !self.healthy.load().is_empty() || self.primary_up.load(Ordering::Relaxed)
    }

    /// Probes the primary and every replica once and publishes the new healthy set.
    pub async fn check(&self, metrics: &Metrics) {
        let primary_lsn = self.primary_position().await;
        self.primary_up
            .store(primary_lsn.is_some(), Ordering::Relaxed);
        let mut healthy = Vec::with_capacity(self.replicas.len());
        for (index, replica) in self.replicas.iter().enumerate() {
            let replay = probe(
                &replica.pool,
                "select coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text",
            )
            .await;
            let replayed = replay.as_deref().and_then(parse_lsn);
            if let Some(position) = replayed {
                replica.replayed.fetch_max(position, Ordering::Relaxed);
            }
            let lag = match (primary_lsn, replayed) {
                (Some(primary), Some(replay)) => Some(primary.saturating_sub(replay)),
                _ => None,
            };
            let ok = replay.is_some() && lag.is_none_or(|lag| lag <= self.max_lag_bytes);
            let labels = label(index);
            metrics
                .replica_healthy
                .get_or_create(&labels)
                .set(i64::from(ok));
            if let Some(lag) = lag {
                metrics
                    .replica_lag_bytes
                    .get_or_create(&labels)
                    .set(i64::try_from(lag).unwrap_or(i64::MAX));
            }
            if ok {
                healthy.push(index);
            }
        }
        let previous = self.healthy.swap(Arc::new(healthy.clone()));
        if *previous != healthy {
            let names: Vec<&str> = healthy
                .iter()
                .map(|&i| self.replicas[i].name.as_str())
                .collect();
            tracing::info!(healthy = ?names, "healthy replica set changed");
        }
    }

    /// Runs [`Databases::check`] every `interval` until `stop` fires.
    pub async fn run_checks(
        self: Arc<Self>,
        metrics: Arc<Metrics>,
        interval: Duration,
        stop: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => self.check(&metrics).await,
            }
        }
    }
}

/// A replica's metric labels: its index in `CATALOG_REPLICA_URLS`, never its address
/// (host names are not for whoever can scrape `/metrics`); [`Databases::new`] logs
/// which index is which replica once.
fn label(index: usize) -> Vec<(&'static str, String)> {
    vec![("replica", index.to_string())]
}

/// Runs a one-value probe with a timeout; `None` on any failure.
async fn probe(pool: &PgPool, sql: &'static str) -> Option<String> {
    let query = sqlx::query_scalar::<_, String>(sql).fetch_one(pool);
    match tokio::time::timeout(PROBE_TIMEOUT, query).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(_)) | Err(_) => None,
    }
}

/// Parses PostgreSQL's `X/Y` LSN notation into a byte position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let hex = |half: &str| !half.is_empty() && half.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(high) || !hex(low) {
        return None;
    }
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    (high <= u64::from(u32::MAX) && low <= u64::from(u32::MAX)).then_some((high << 32) | low)
}

/// A byte position in PostgreSQL's `X/Y` LSN notation.
pub fn format_lsn(position: u64) -> String {
    format!("{:X}/{:X}", position >> 32, position & u64::from(u32::MAX))
}

/// `host:port/database` of a PostgreSQL URL, without credentials or parameters.
pub fn display_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    rest.split('?').next().unwrap_or(rest).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_into_byte_positions() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(
            parse_lsn("1/0").unwrap() - parse_lsn("0/FFFFFFFF").unwrap(),
            1
        );
        assert_eq!(parse_lsn("nope"), None);
        for signed in ["+0/+0", "0/+16B3F28", "-1/0", "0/", "/0"] {
            assert_eq!(parse_lsn(signed), None, "{signed}");
        }
        assert_eq!(parse_lsn("1/XYZ"), None);
        assert_eq!(parse_lsn("100000000/0"), None);
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn(&format_lsn(0x1_0000_0000)), Some(0x1_0000_0000));
    }

    #[test]
    fn names_drop_credentials_and_parameters() {
        assert_eq!(
            display_name("postgres://user:pw@db.example:5432/catalog?sslmode=require"),
            "db.example:5432/catalog"
        );
        assert_eq!(display_name("postgres://h/x"), "h/x");
    }
}
