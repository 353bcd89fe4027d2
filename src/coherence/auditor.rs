//! The coherence promise checked in production: a background task in every reader
//! samples the product versions L1 holds, at a low configurable rate, and compares them
//! with the primary's.
//!
//! An entry is **stale** when the primary has a newer version that was written more
//! than the grace period ago (a write younger than that may still be on its way to this
//! reader). Each one found is counted in `catalog_stale_detected_total` and logged; the
//! gauge `catalog_stalest_entry_seconds` says how long ago the newest version of the
//! stalest entry of the last round was written (0 when the round found none). A healthy
//! deployment keeps the counter at 0.

use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng as _;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cache::L1;
use crate::metrics::Metrics;
use crate::store::postgres::within;

/// A write younger than this may still be propagating: not counted as stale.
pub const GRACE: Duration = Duration::from_secs(2);

/// How the auditor samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditSettings {
    /// Time between rounds (`CATALOG_AUDIT_INTERVAL_MS`).
    pub interval: Duration,
    /// Entries compared per round (`CATALOG_AUDIT_SAMPLE`).
    pub sample: usize,
    /// Deadline of the round's query.
    pub db_timeout: Duration,
}

/// The auditor task of one reader.
#[derive(Debug)]
pub struct Auditor {
    l1: L1,
    primary: PgPool,
    metrics: Arc<Metrics>,
    settings: AuditSettings,
}

/// What one round found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Round {
    /// Entries compared.
    pub compared: usize,
    /// Entries older than a write made before the grace period.
    pub stale: usize,
    /// How long ago the newest version of the stalest entry was written.
    pub stalest: Duration,
}

impl Auditor {
    /// An auditor of `l1` against `primary`.
    pub fn new(l1: L1, primary: PgPool, metrics: Arc<Metrics>, settings: AuditSettings) -> Self {
        Self {
            l1,
            primary,
            metrics,
            settings,
        }
    }

    /// Audits every interval until `stop` fires.
    pub async fn run(self, stop: CancellationToken) {
        let mut rng = rand_chacha::ChaCha8Rng::from_rng(&mut rand::rng());
        let mut ticker = tokio::time::interval(self.settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(err) = self.round(&mut rng).await {
                tracing::debug!(error = %err, "audit round failed; the next one retries");
            }
        }
    }

    /// One round: samples L1, asks the primary, counts what is stale.
    pub async fn round(&self, rng: &mut impl rand::RngExt) -> Result<Round, sqlx::Error> {
        let sample = self.l1.sample_products(self.settings.sample, rng);
        if sample.is_empty() {
            self.metrics.stalest_entry_seconds.set(0);
            return Ok(Round::default());
        }
        let ids: Vec<i64> = sample.iter().map(|(id, _)| *id).collect();
        let current: Vec<(i64, i64, f64)> = within(
            self.settings.db_timeout,
            sqlx::query_as(
                "select id, version, extract(epoch from now() - updated_at)::float8 \
                 from products where id = any($1)",
            )
            .bind(&ids)
            .fetch_all(&self.primary),
        )
        .await?;
        let mut round = Round {
            compared: sample.len(),
            ..Round::default()
        };
        for (id, version, age_secs) in current {
            let Some(&(_, cached)) = sample.iter().find(|(sampled, _)| *sampled == id) else {
                continue;
            };
            let age = Duration::from_secs_f64(age_secs.max(0.0));
            if cached < version && age > GRACE {
                round.stale += 1;
                round.stalest = round.stalest.max(age);
                tracing::warn!(
                    id,
                    cached,
                    current = version,
                    ?age,
                    "stale L1 entry found by the auditor"
                );
            }
        }
        self.metrics.stale_detected.inc_by(round.stale as u64);
        self.metrics
            .stalest_entry_seconds
            .set(i64::try_from(round.stalest.as_secs()).unwrap_or(i64::MAX));
        Ok(round)
    }
}
