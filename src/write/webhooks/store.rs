//! The webhook tables' SQL: endpoints for the admin routes, and the deliveries the
//! deliverer claims and settles (schema and fan-out: `migrations/0008_webhooks.sql`).
//!
//! A delivery is claimed with `for update skip locked` and leased: the claim moves its
//! `next_attempt_at` past the attempt's deadline and counts the attempt, in one
//! statement, so no other worker (in this writer or another) can claim it until the
//! lease ends. Its outcome is stored only if `attempts` is still the claimed attempt
//! (a fencing token): a worker whose lease ran out cannot overwrite a later attempt's
//! outcome. A delivery is claimed only when no pending delivery of the same endpoint
//! and subject (product or category) has a smaller ordinal (version), so one product's
//! deliveries go out one at a time, in version order.

use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::{PgPool, Postgres, Transaction};

use super::event::{Change, Event};
use super::input::{NewWebhook, Page, Rotation};
use super::signature::Secret;

/// The notification channel that wakes deliverers when dead letters are replayed
/// (new deliveries come with the writes' own `catalog_outbox` notification).
pub const CHANNEL: &str = "catalog_webhooks";

/// A timestamp column as RFC 3339 text in UTC, with microseconds.
macro_rules! rfc3339 {
    ($column:literal) => {
        concat!(
            "to_char(",
            $column,
            " at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        )
    };
}

/// An endpoint as the admin API shows it: never its secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Endpoint {
    /// Its id.
    pub id: i64,
    /// Where deliveries go.
    pub url: String,
    /// The event types it takes.
    pub events: Vec<String>,
    /// The categories it is limited to (empty: all).
    pub categories: Vec<String>,
    /// The admin's note.
    pub description: String,
    /// When it was created.
    pub created_at: String,
    /// When its secret was last rotated.
    pub rotated_at: Option<String>,
    /// Until when the secret before the last rotation signs too, if it still does.
    pub previous_secret_until: Option<String>,
    /// Deliveries waiting (first attempts and retries).
    pub pending: i64,
    /// Dead letters kept.
    pub dead: i64,
}

/// The columns of an [`Endpoint`], for `webhooks w`.
const ENDPOINT: &str = concat!(
    "w.id, w.url, w.events, w.categories, w.description, ",
    rfc3339!("w.created_at"),
    " as created_at, ",
    rfc3339!("w.rotated_at"),
    " as rotated_at, case when w.previous_until > now() then ",
    rfc3339!("w.previous_until"),
    " end as previous_secret_until, \
     (select count(*) from webhook_deliveries d where d.webhook_id = w.id \
      and d.state = 'pending') as pending, \
     (select count(*) from webhook_deliveries d where d.webhook_id = w.id \
      and d.state = 'dead') as dead"
);

/// Registers an endpoint; its id.
pub async fn create(pool: &PgPool, hook: &NewWebhook) -> Result<Endpoint, sqlx::Error> {
    let sql = format!(
        "with w as (insert into webhooks (url, events, categories, description, secret) \
         values ($1, $2, $3, $4, $5) returning *) select {ENDPOINT} from w"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&hook.url)
        .bind(&hook.events)
        .bind(&hook.categories)
        .bind(&hook.description)
        .bind(hook.secret.expose())
        .fetch_one(pool)
        .await
}

/// Every endpoint, by id.
pub async fn list(pool: &PgPool) -> Result<Vec<Endpoint>, sqlx::Error> {
    let sql = format!("select {ENDPOINT} from webhooks w order by w.id");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
}

/// One endpoint.
pub async fn get(pool: &PgPool, id: i64) -> Result<Option<Endpoint>, sqlx::Error> {
    let sql = format!("select {ENDPOINT} from webhooks w where w.id = $1");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Deletes an endpoint and its deliveries; whether it existed.
pub async fn delete(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query("delete from webhooks where id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(deleted.rows_affected() == 1)
}

/// Makes `rotation.secret` the signing secret; the current one keeps signing for
/// `previous_valid_secs` (not at all for 0). Whether the endpoint exists.
pub async fn rotate(pool: &PgPool, id: i64, rotation: &Rotation) -> Result<bool, sqlx::Error> {
    let rotated = sqlx::query(
        "update webhooks set \
             previous_secret = case when $3 > 0 then secret end, \
             previous_until = case when $3 > 0 then now() + make_interval(secs => $3) end, \
             secret = $2, rotated_at = now() \
         where id = $1",
    )
    .bind(id)
    .bind(rotation.secret.expose())
    .bind(rotation.previous_valid_secs as f64)
    .execute(pool)
    .await?;
    Ok(rotated.rows_affected() == 1)
}

/// A dead letter as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The delivery's id (what a replay names).
    pub id: i64,
    /// The `webhook-id` it was sent with.
    pub message_id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last answer's status, if there was an answer.
    pub last_status: Option<i16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the retry period began (the first attempt, or the last replay).
    pub first_attempt_at: Option<String>,
    /// When it was last tried.
    pub last_attempt_at: Option<String>,
    /// When it was given up.
    pub dead_at: Option<String>,
    /// The body it sends.
    pub event: Box<RawValue>,
}

/// One delivery row with its event.
#[derive(Debug, sqlx::FromRow)]
struct EventRow {
    id: i64,
    event_type: String,
    product_id: Option<i64>,
    category: Option<String>,
    version: i64,
    deleted: bool,
    active: Option<bool>,
    categories: Vec<String>,
    committed_at: String,
}

impl EventRow {
    fn event(&self) -> Event {
        let change = match (self.product_id, &self.category) {
            (Some(product_id), _) => Change::Product {
                product_id,
                version: self.version,
                deleted: self.deleted,
                active: self.active.unwrap_or(false),
                categories: self.categories.clone(),
            },
            (None, category) => Change::Category {
                slug: category.clone().unwrap_or_default(),
                deleted: self.deleted,
            },
        };
        Event {
            kind: self.event_type.clone(),
            change,
            committed_at: self.committed_at.clone(),
        }
    }
}

/// The columns of an [`EventRow`], for `webhook_deliveries d`.
const EVENT: &str = concat!(
    "d.id, d.event_type, d.product_id, d.category, d.version, d.deleted, d.active, \
     d.categories, ",
    rfc3339!("d.committed_at"),
    " as committed_at"
);

/// The `webhook-id` of a delivery: the same on every attempt and replay.
pub fn message_id(delivery: i64) -> String {
    format!("msg_{delivery}")
}

/// A page of an endpoint's dead letters, oldest first; `None` if it does not exist.
pub async fn dead_letters(
    pool: &PgPool,
    id: i64,
    page: Page,
) -> Result<Option<Vec<DeadLetter>>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("select exists(select 1 from webhooks where id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(None);
    }
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        event: EventRow,
        attempts: i32,
        last_status: Option<i16>,
        last_error: Option<String>,
        first_attempt_at: Option<String>,
        last_attempt_at: Option<String>,
        dead_at: Option<String>,
    }
    let sql = format!(
        concat!(
            "select {}, d.attempts, d.last_status, d.last_error, ",
            rfc3339!("d.retry_from"),
            " as first_attempt_at, ",
            rfc3339!("d.last_attempt_at"),
            " as last_attempt_at, ",
            rfc3339!("d.finished_at"),
            " as dead_at from webhook_deliveries d \
             where d.webhook_id = $1 and d.state = 'dead' and d.id > $2 \
             order by d.id limit $3"
        ),
        EVENT
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(page.after)
        .bind(page.limit)
        .fetch_all(pool)
        .await?;
    let letters = rows
        .into_iter()
        .map(|row| {
            let body = String::from_utf8(row.event.event().body()).unwrap_or_default();
            DeadLetter {
                id: row.event.id,
                message_id: message_id(row.event.id),
                kind: row.event.event_type.clone(),
                attempts: row.attempts,
                last_status: row.last_status,
                last_error: row.last_error,
                first_attempt_at: row.first_attempt_at,
                last_attempt_at: row.last_attempt_at,
                dead_at: row.dead_at,
                event: RawValue::from_string(body).expect("an event is JSON"),
            }
        })
        .collect();
    Ok(Some(letters))
}

/// Puts an endpoint's dead letters (those named, or all) back in the queue, with a new
/// retry period, and wakes the deliverers; how many, or `None` if it does not exist.
pub async fn replay(
    pool: &PgPool,
    id: i64,
    ids: Option<&[i64]>,
) -> Result<Option<u64>, sqlx::Error> {
    let mut tx: Transaction<'_, Postgres> = pool.begin().await?;
    let exists: bool =
        sqlx::query_scalar("select exists(select 1 from webhooks where id = $1 for key share)")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if !exists {
        return Ok(None);
    }
    let replayed = sqlx::query(
        "update webhook_deliveries set state = 'pending', next_attempt_at = now(), \
             retry_from = null, finished_at = null \
         where webhook_id = $1 and state = 'dead' and ($2::bigint[] is null or id = any($2))",
    )
    .bind(id)
    .bind(ids)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("select pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(replayed))
}

/// A delivery claimed for one attempt.
#[derive(Debug)]
pub struct Claimed {
    /// The delivery's id.
    pub id: i64,
    /// The attempt this claim is (1 for the first): the fencing token of its outcome.
    pub attempt: i32,
    /// The receiver's URL.
    pub url: String,
    /// The secrets that sign: the current one, and the previous one while it is valid.
    pub secrets: Vec<Secret>,
    /// The event.
    pub event: Event,
    /// Commit time in microseconds since the Unix epoch, for the latency metric.
    pub committed_micros: i64,
}

/// Claims up to `limit` due deliveries whose predecessors (same endpoint and subject)
/// are settled, leased for `lease_secs`.
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    lease_secs: f64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        event: EventRow,
        attempts: i32,
        committed_micros: i64,
        url: String,
        secret: String,
        previous_secret: Option<String>,
    }
    let sql = format!(
        "with due as ( \
             select d.id from webhook_deliveries d \
             where d.state = 'pending' and d.next_attempt_at <= now() \
               and not exists (select 1 from webhook_deliveries e \
                               where e.webhook_id = d.webhook_id and e.subject = d.subject \
                                 and e.state = 'pending' and e.ordinal < d.ordinal) \
             order by d.next_attempt_at, d.id limit $1 \
             for update of d skip locked) \
         update webhook_deliveries d set attempts = d.attempts + 1, \
             next_attempt_at = now() + make_interval(secs => $2), \
             retry_from = coalesce(d.retry_from, now()), last_attempt_at = now() \
         from due, webhooks w \
         where d.id = due.id and w.id = d.webhook_id \
         returning {EVENT}, d.attempts, \
             (extract(epoch from d.committed_at) * 1000000)::bigint as committed_micros, \
             w.url, w.secret, \
             case when w.previous_until > now() then w.previous_secret end as previous_secret"
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(limit)
        .bind(lease_secs)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            // Stored secrets were checked when they were stored; one that no longer
            // parses signs nothing (the receiver refuses the delivery, it is retried).
            let secrets = std::iter::once(row.secret)
                .chain(row.previous_secret)
                .filter_map(|text| Secret::parse(&text).ok())
                .collect();
            Claimed {
                id: row.event.id,
                attempt: row.attempts,
                url: row.url,
                secrets,
                event: row.event.event(),
                committed_micros: row.committed_micros,
            }
        })
        .collect())
}

/// What became of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Acknowledged.
    Delivered,
    /// To be tried again.
    Retrying,
    /// Given up: a dead letter.
    Dead,
    /// The outcome was not stored: the lease ran out and another attempt was claimed,
    /// or the endpoint was deleted.
    Stale,
}

/// Stores a 2xx answer to `attempt` of delivery `id`.
pub async fn delivered(
    pool: &PgPool,
    id: i64,
    attempt: i32,
    status: u16,
) -> Result<Settled, sqlx::Error> {
    let updated = sqlx::query(
        "update webhook_deliveries set state = 'delivered', finished_at = now(), \
             last_status = $3, last_error = null \
         where id = $1 and attempts = $2 and state = 'pending'",
    )
    .bind(id)
    .bind(attempt)
    .bind(status as i16)
    .execute(pool)
    .await?;
    Ok(if updated.rows_affected() == 1 {
        Settled::Delivered
    } else {
        Settled::Stale
    })
}

/// Stores a failed `attempt` of delivery `id`: tried again after `pause_secs` (at the
/// latest when the retry period ends), or a dead letter if the period has ended.
pub async fn failed(
    pool: &PgPool,
    id: i64,
    attempt: i32,
    pause_secs: f64,
    period_secs: f64,
    status: Option<u16>,
    error: &str,
) -> Result<Settled, sqlx::Error> {
    let state: Option<String> = sqlx::query_scalar(
        "update webhook_deliveries set \
             state = case when now() >= retry_from + make_interval(secs => $4) \
                          then 'dead' else 'pending' end, \
             finished_at = case when now() >= retry_from + make_interval(secs => $4) \
                                then now() end, \
             next_attempt_at = least(now() + make_interval(secs => $3), \
                                     retry_from + make_interval(secs => $4)), \
             last_status = $5, last_error = $6 \
         where id = $1 and attempts = $2 and state = 'pending' \
         returning state",
    )
    .bind(id)
    .bind(attempt)
    .bind(pause_secs)
    .bind(period_secs)
    .bind(status.map(|s| s as i16))
    .bind(error)
    .fetch_optional(pool)
    .await?;
    Ok(match state.as_deref() {
        Some("dead") => Settled::Dead,
        Some(_) => Settled::Retrying,
        None => Settled::Stale,
    })
}

/// Deliveries waiting, waiting for a retry, and dead letters.
pub async fn backlog(pool: &PgPool) -> Result<(i64, i64, i64), sqlx::Error> {
    sqlx::query_as(
        "select (select count(*) from webhook_deliveries where state = 'pending'), \
                (select count(*) from webhook_deliveries where state = 'pending' \
                 and last_error is not null), \
                (select count(*) from webhook_deliveries where state = 'dead')",
    )
    .fetch_one(pool)
    .await
}

/// In how many seconds the next pending delivery not yet due (a retry, or a lease
/// running out) becomes due; `None` when none waits. Deliveries already due but held
/// behind an earlier one of their subject are not counted: that one's outcome wakes the
/// deliverer.
pub async fn next_due(pool: &PgPool) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "select extract(epoch from min(next_attempt_at) - now())::float8 \
         from webhook_deliveries where state = 'pending' and next_attempt_at > now()",
    )
    .fetch_one(pool)
    .await
}

/// Rows one retention batch deletes at most.
const SWEEP_BATCH: i64 = 1000;

/// Deletes one batch of delivered deliveries and dead letters finished more than
/// `retention_secs` ago; how many.
pub async fn sweep(pool: &PgPool, retention_secs: f64) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "delete from webhook_deliveries where id in ( \
             select id from webhook_deliveries \
             where state <> 'pending' and finished_at < now() - make_interval(secs => $1) \
             order by finished_at limit $2 for update skip locked)",
    )
    .bind(retention_secs)
    .bind(SWEEP_BATCH)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}

/// Whether a sweep batch came back full (more may wait).
pub fn sweep_full(deleted: u64) -> bool {
    deleted >= SWEEP_BATCH.unsigned_abs()
}
