//! The webhook deliverer (in every writer): claims due deliveries from PostgreSQL,
//! `POST`s each signed event to its receiver, and stores the outcome.
//!
//! Every writer runs one; they share the work through the database, with no leader. A
//! delivery is claimed with `for update skip locked` under a lease longer than an
//! attempt can take ([`store::claim`]), so two writers never send the same attempt; an
//! attempt's outcome is stored only if the delivery was not claimed again meanwhile.
//! One endpoint's deliveries of one product go out one at a time, in version order.
//!
//! - **Wake-ups.** The deliverer `LISTEN`s on the writes' `catalog_outbox` channel
//!   (deliveries are inserted with the write, [`super`]) and on [`store::CHANNEL`]
//!   (replays), looks again when one of its own attempts settles (the next change of
//!   that product may be due), and otherwise when the next retry is due, at least every
//!   [`POLL`].
//! - **Attempts.** At most [`CONCURRENCY`] at once per writer, each on a connection of
//!   its own, bounded by `CATALOG_WEBHOOK_TIMEOUT_MS` in all. A 2xx is delivered; any
//!   other status (redirects included), no answer, or the deadline is a failure, retried
//!   after the pause of [`Schedule`], until `CATALOG_WEBHOOK_RETRY_SECS` after the first
//!   attempt; then the delivery is a dead letter.
//! - **At least once.** If the outcome of an attempt cannot be stored (the primary is
//!   away for longer than the tries of [`SETTLE_TRIES`]), the lease runs out and the
//!   delivery is sent again, with the same `webhook-id`: receivers deduplicate on it.
//! - **Housekeeping.** Delivered deliveries and dead letters are deleted
//!   `CATALOG_WEBHOOK_RETENTION_SECS` after they finished, in batches, every
//!   [`SWEEP_EVERY`]. The backlog gauges are refreshed at most every [`GAUGES_EVERY`].
//!
//! A failing primary is retried with backoff; the deliverer never stops the process.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::schedule::Schedule;
use super::signature::{WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP, signature_header};
use super::store::{self, Claimed, Settled};
use crate::coherence::backoff::Backoff;
use crate::coherence::relay::CHANNEL as OUTBOX_CHANNEL;
use crate::coherence::stream::now_micros;
use crate::config::WebhookConfig;
use crate::http::client::Target;
use crate::metrics::Metrics;

/// Attempts in flight at once per writer.
pub const CONCURRENCY: usize = 32;
/// The deliverer looks for due deliveries at least this often.
pub const POLL: Duration = Duration::from_secs(1);
/// Time between two retention sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Shortest time between two refreshes of the backlog gauges.
pub const GAUGES_EVERY: Duration = Duration::from_secs(1);
/// Beyond the attempt's deadline, how long a claim's lease lasts: the time an attempt
/// may take to start after its claim, and to store its outcome after its answer.
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Tries of storing an attempt's outcome before it is left to the lease.
pub const SETTLE_TRIES: u32 = 5;
/// Longest reason of a failure stored with the delivery, in bytes.
const ERROR_BYTES: usize = 500;
/// `User-Agent` of deliveries.
const USER_AGENT: &str = concat!("catalogd-webhooks/", env!("CARGO_PKG_VERSION"));

/// The deliverer task.
#[derive(Debug)]
pub struct Deliverer {
    primary: PgPool,
    config: WebhookConfig,
    metrics: Arc<Metrics>,
    /// Set when an attempt settles: the next delivery of its subject may be due.
    settled: Notify,
}

/// How an attempt went.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// A 2xx answer.
    Acknowledged(u16),
    /// Another status.
    Refused(u16),
    /// No answer: connecting, sending or reading failed, or the deadline passed.
    NoAnswer(String),
}

impl Deliverer {
    /// A deliverer on `primary`.
    pub fn new(primary: PgPool, config: WebhookConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            primary,
            config,
            metrics,
            settled: Notify::new(),
        })
    }

    /// How long a claim keeps a delivery from other workers.
    fn lease(&self) -> Duration {
        self.config.timeout + LEASE_MARGIN * 2
    }

    /// Delivers until `stop` fires; attempts in flight then get their deadline to end.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let permits = Arc::new(Semaphore::new(CONCURRENCY));
        let mut attempts: JoinSet<()> = JoinSet::new();
        let mut listener: Option<PgListener> = None;
        let mut backoff = Backoff::default();
        let mut gauges_at: Option<Instant> = None;
        let mut swept_at: Option<Instant> = None;
        while !stop.is_cancelled() {
            while attempts.try_join_next().is_some() {}
            if listener.is_none() {
                listener = self.listen().await;
            }
            let housekeeping = self.housekeeping(&mut gauges_at, &mut swept_at).await;
            let wait = match housekeeping {
                Ok(()) => self.claim_and_send(&permits, &mut attempts).await,
                Err(err) => Err(err),
            };
            let wait = match wait {
                Ok(Some(wait)) => {
                    backoff.reset();
                    wait
                }
                Ok(None) => continue,
                Err(err) => {
                    self.metrics.webhook_errors.inc();
                    tracing::warn!(error = %err, retry_in = ?backoff.next(), "webhook deliverer round failed");
                    if !backoff.wait(&stop).await {
                        break;
                    }
                    continue;
                }
            };
            let notified = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(drop),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                result = notified => if result.is_err() { listener = None },
                () = self.settled.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        let drain = async { while attempts.join_next().await.is_some() {} };
        if tokio::time::timeout(self.config.timeout + LEASE_MARGIN, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                "webhook attempts still in flight at shutdown are retried after their lease"
            );
        }
    }

    /// Claims what is due for the free permits and starts the attempts. `None`: look
    /// again at once (every permit found work); else how long to wait at most.
    async fn claim_and_send(
        self: &Arc<Self>,
        permits: &Arc<Semaphore>,
        attempts: &mut JoinSet<()>,
    ) -> Result<Option<Duration>, sqlx::Error> {
        let free = permits.available_permits();
        if free == 0 {
            // Every permit is busy: an attempt that settles wakes the loop.
            return Ok(Some(POLL));
        }
        let claimed_at = Instant::now();
        let lease = self.lease().as_secs_f64();
        let claim = store::claim(&self.primary, free as i64, lease);
        let claimed = tokio::time::timeout(LEASE_MARGIN, claim)
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        let count = claimed.len();
        for delivery in claimed {
            let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
                break; // cannot happen: as many claimed as permits were free
            };
            attempts.spawn(Arc::clone(self).attempt(delivery, permit, claimed_at));
        }
        if count == free {
            return Ok(None);
        }
        let next = store::next_due(&self.primary).await?;
        Ok(Some(next.map_or(POLL, |secs| {
            Duration::from_secs_f64(secs.clamp(0.001, POLL.as_secs_f64()))
        })))
    }

    /// Refreshes the gauges and sweeps old deliveries when they are due.
    async fn housekeeping(
        &self,
        gauges_at: &mut Option<Instant>,
        swept_at: &mut Option<Instant>,
    ) -> Result<(), sqlx::Error> {
        if gauges_at.is_none_or(|at| at.elapsed() >= GAUGES_EVERY) {
            *gauges_at = Some(Instant::now());
            let (pending, retrying, dead) = store::backlog(&self.primary).await?;
            self.metrics.webhook_backlog.set(pending);
            self.metrics.webhook_retry_backlog.set(retrying);
            self.metrics.webhook_dead_letters.set(dead);
        }
        if swept_at.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            *swept_at = Some(Instant::now());
            let retention = self.config.retention.as_secs_f64();
            let mut total = 0;
            loop {
                let deleted = store::sweep(&self.primary, retention).await?;
                total += deleted;
                if !store::sweep_full(deleted) || total >= 100_000 {
                    break;
                }
            }
            if total > 0 {
                tracing::info!(deleted = total, "old webhook deliveries swept");
            }
        }
        Ok(())
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.primary).await.ok()?;
        listener
            .listen_all([OUTBOX_CHANNEL, store::CHANNEL])
            .await
            .ok()?;
        Some(listener)
    }

    /// One attempt of one delivery, and its outcome stored.
    async fn attempt(
        self: Arc<Self>,
        delivery: Claimed,
        _permit: OwnedSemaphorePermit,
        claimed_at: Instant,
    ) {
        // An attempt that could not start soon after its claim is not made: its lease
        // may run out while it is in flight. The next claim makes it.
        if claimed_at.elapsed() >= LEASE_MARGIN {
            return;
        }
        let started = Instant::now();
        let outcome = self.send(&delivery).await;
        let settled = self.settle(&delivery, &outcome).await;
        match (&outcome, settled) {
            (Outcome::Acknowledged(_), Some(Settled::Delivered)) => {
                self.metrics.webhook_delivered.inc();
                let lag = now_micros().saturating_sub(delivery.committed_micros);
                let lag = Duration::from_micros(u64::try_from(lag).unwrap_or(0));
                self.metrics.webhook_latency.observe(lag);
            }
            (Outcome::Acknowledged(_), _) => {
                self.metrics.webhook_delivered.inc();
            }
            (failure, settled) => {
                self.metrics.webhook_failed.inc();
                tracing::debug!(delivery = delivery.id, attempt = delivery.attempt, ?failure, took = ?started.elapsed(), "webhook attempt failed");
                if settled == Some(Settled::Dead) {
                    self.metrics.webhook_dead_lettered.inc();
                    tracing::warn!(
                        delivery = delivery.id,
                        attempts = delivery.attempt,
                        ?failure,
                        "webhook delivery given up: a dead letter"
                    );
                }
            }
        }
        self.settled.notify_one();
    }

    /// Sends the delivery's event, signed, within the attempt's deadline.
    async fn send(&self, delivery: &Claimed) -> Outcome {
        let deadline = self.config.timeout;
        let target = match Target::parse(&delivery.url) {
            Ok(target) => target,
            Err(_) => {
                return Outcome::NoAnswer(
                    "not an http:// URL (this build has no TLS for https://)".to_owned(),
                );
            }
        };
        let body = Bytes::from(delivery.event.body());
        let id = store::message_id(delivery.id);
        let timestamp = now_micros() / 1_000_000;
        let signature = signature_header(&delivery.secrets, &id, timestamp, &body);
        let timestamp = timestamp.to_string();
        let headers = [
            ("content-type", "application/json"),
            ("user-agent", USER_AGENT),
            (WEBHOOK_ID, id.as_str()),
            (WEBHOOK_TIMESTAMP, timestamp.as_str()),
            (WEBHOOK_SIGNATURE, signature.as_str()),
        ];
        let exchange = async {
            let mut connection = target.connect(deadline).await?;
            connection
                .send_body(Method::POST, target.path(), &headers, body, deadline)
                .await
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(Ok(status)) if status.is_success() => Outcome::Acknowledged(status.as_u16()),
            Ok(Ok(status)) => Outcome::Refused(status.as_u16()),
            Ok(Err(err)) => Outcome::NoAnswer(err.to_string()),
            Err(_) => Outcome::NoAnswer(format!("no answer within {deadline:?}")),
        }
    }

    /// Stores the outcome, tried a few times; `None` if it could not be stored (the
    /// lease then runs out and the delivery is attempted again).
    async fn settle(&self, delivery: &Claimed, outcome: &Outcome) -> Option<Settled> {
        let mut pause = Duration::from_millis(50);
        for _ in 0..SETTLE_TRIES {
            let stored = match outcome {
                Outcome::Acknowledged(status) => {
                    store::delivered(&self.primary, delivery.id, delivery.attempt, *status).await
                }
                Outcome::Refused(_) | Outcome::NoAnswer(_) => {
                    let (status, error) = match outcome {
                        Outcome::Refused(status) => (Some(*status), format!("answered {status}")),
                        Outcome::NoAnswer(error) => (None, truncated(error)),
                        Outcome::Acknowledged(_) => unreachable!("matched above"),
                    };
                    let failures = u32::try_from(delivery.attempt).unwrap_or(u32::MAX);
                    let pause = self.schedule().pause(failures, &mut rand::rng());
                    store::failed(
                        &self.primary,
                        delivery.id,
                        delivery.attempt,
                        pause.as_secs_f64(),
                        self.config.retry_period.as_secs_f64(),
                        status,
                        &error,
                    )
                    .await
                }
            };
            match stored {
                Ok(settled) => return Some(settled),
                Err(err) => {
                    tracing::debug!(error = %err, delivery = delivery.id, "storing a webhook outcome failed");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
        tracing::warn!(
            delivery = delivery.id,
            "a webhook attempt's outcome could not be stored; it is sent again after its lease"
        );
        None
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            first: self.config.backoff_first,
            max: self.config.backoff_max,
        }
    }
}

/// `error` cut to [`ERROR_BYTES`] at a character boundary.
fn truncated(error: &str) -> String {
    let mut end = error.len().min(ERROR_BYTES);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_errors_are_bounded_at_a_character_boundary() {
        assert_eq!(truncated("refused"), "refused");
        let long = "é".repeat(400);
        let cut = truncated(&long);
        assert!(cut.len() <= ERROR_BYTES && cut.len() >= ERROR_BYTES - 1);
        assert!(long.starts_with(&cut));
    }
}
