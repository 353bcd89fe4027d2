//! `Idempotency-Key`: the first response to a keyed admin request is stored with a
//! fingerprint of the request (method, path, body) and replayed for every retry.
//!
//! - **Claim.** One statement on the primary (`insert ... on conflict do update ...
//!   where`), so one request at a time owns a key. The owner holds a lease
//!   (`locked_until`, [`lease_for`]): the write's deadline plus a margin.
//! - **Takeover.** A retry with the same request that finds no stored response and the
//!   lease expired (the owner was dropped by a client disconnect, or its process died)
//!   takes the key over and runs the request. Concurrent retries serialize on the row:
//!   one wins, the others see its lease. Each claim of a key bumps `attempt`.
//! - **Storing.** A product write stores its response inside its own transaction, just
//!   before the commit ([`seal`]), and only while its attempt still holds the key;
//!   otherwise the write rolls back. So a write commits exactly when its response is
//!   stored, and a key's write commits at most once while the key lives, whatever
//!   crashes or takeovers happen. A refusal (4xx), which wrote nothing, is stored after
//!   its rollback ([`finish`]); a crash before that leaves the lease to expire, and the
//!   retry runs the request again. A 5xx releases the key, unless the write committed
//!   (then its response is stored and the retry replays it).
//! - **Replay.** A retry with the same key and request gets the stored response
//!   (`Idempotent-Replayed: true`); the same key with another request is refused (422);
//!   a retry within the lease gets 409 with `Retry-After`. The `Catalog-Token` of a
//!   replayed success is read at replay time: the primary's WAL position then, at or
//!   past the write's commit (the commit's own position is only known after it).
//! - **Expiry.** Keys are replayed for `CATALOG_IDEMPOTENCY_TTL_SECS`. An expired key
//!   that no request holds is reclaimed by the next request with it, and deleted by the
//!   sweeper ([`super::sweeper`]).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{CACHE_CONTROL, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use sha2::{Digest as _, Sha256};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};

use super::CATALOG_TOKEN;
use super::error::WriteError;
use super::tx::Written;
use crate::store::postgres::within;

/// The header that marks a replayed response.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The longest key accepted.
const MAX_KEY: usize = 255;

/// Headers of a stored response that a replay repeats (`Catalog-Token` is read anew).
const KEPT_HEADERS: [&str; 3] = ["etag", "location", "content-type"];

/// How much longer than the write's deadline a claim's lease lasts. The write's
/// transaction is bounded by `CATALOG_DB_TIMEOUT_MS`; the margin covers the claim's own
/// round trip and the handler's steps around the transaction. A request that outlives
/// its lease anyway and is taken over rolls back at [`seal`], so the margin only
/// decides how soon a retry may take a key over, never whether a write applies twice.
pub const LEASE_MARGIN: Duration = Duration::from_secs(3);

/// Claims of one request that lose a race with a release before it gives up with 409.
const CLAIM_ROUNDS: usize = 3;

/// The lease a claim holds when writes are bounded by `write_deadline`.
pub fn lease_for(write_deadline: Duration) -> Duration {
    write_deadline + LEASE_MARGIN
}

/// A claimed key: which request (`attempt`) holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    key: String,
    attempt: i32,
}

/// What claiming a key found.
#[derive(Debug)]
pub enum Claim {
    /// This request holds the key: run it with the lease ([`seal`] in its transaction,
    /// or [`finish`] after a refusal).
    Owned(Lease),
    /// A previous request with this key finished: its response.
    Replay(Response<Full<Bytes>>),
    /// Another request holds the key's lease for this many more seconds (at least 1).
    InProgress {
        /// Seconds until the lease expires, for `Retry-After`.
        retry_after: u32,
    },
}

/// A key's row, as a retry finds it.
#[derive(Debug, sqlx::FromRow)]
struct Found {
    fingerprint: Vec<u8>,
    status: Option<i16>,
    body: Option<Vec<u8>>,
    headers: Json<Vec<(String, String)>>,
    retry_after: i32,
    token: String,
}

/// A response as stored: status, body and the headers a replay repeats.
#[derive(Debug)]
struct Record {
    status: i16,
    body: Bytes,
    headers: Vec<(String, String)>,
}

impl Record {
    /// Splits `response` into what is stored and the response itself, unchanged.
    async fn of(response: Response<Full<Bytes>>) -> (Self, Response<Full<Bytes>>) {
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let headers = KEPT_HEADERS
            .iter()
            .filter_map(|name| {
                let value = parts.headers.get(*name)?.to_str().ok()?;
                Some(((*name).to_owned(), value.to_owned()))
            })
            .collect();
        let record = Self {
            status: i16::try_from(parts.status.as_u16()).unwrap_or(500),
            body: body.clone(),
            headers,
        };
        (record, Response::from_parts(parts, Full::new(body)))
    }
}

/// Stores a response for the attempt that holds the key, and ends its lease.
const STORE: &str = "update idempotency_keys set status = $3, body = $4, headers = $5, \
                     locked_until = least(locked_until, now()) \
                     where key = $1 and attempt = $2 and status is null";

/// The fingerprint of a request: SHA-256 of method, path and body.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(method.as_bytes());
    hash.update([0]);
    hash.update(path.as_bytes());
    hash.update([0]);
    hash.update(body);
    hash.finalize().to_vec()
}

/// Validates the header's value.
pub fn parse_key(value: &HeaderValue) -> Result<String, WriteError> {
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= MAX_KEY => Ok(key.to_owned()),
        _ => Err(WriteError::InvalidIdempotencyKey),
    }
}

/// Claims `key` for a request with `fingerprint`, holding it for `lease`; or finds what
/// the key already holds. A new key, an expired key that no request holds, and a key
/// whose request (with this fingerprint) lost its lease are claimed.
pub async fn claim(
    pool: &PgPool,
    key: &str,
    fingerprint: &[u8],
    ttl: Duration,
    lease: Duration,
) -> Result<Claim, WriteError> {
    for _ in 0..CLAIM_ROUNDS {
        let attempt: Option<i32> = sqlx::query_scalar(
            "insert into idempotency_keys as k (key, fingerprint, expires_at, locked_until) \
             values ($1, $2, now() + make_interval(secs => $3), now() + make_interval(secs => $4)) \
             on conflict (key) do update set fingerprint = excluded.fingerprint, \
                 expires_at = excluded.expires_at, locked_until = excluded.locked_until, \
                 attempt = k.attempt + 1, status = null, body = null, headers = '[]' \
             where k.locked_until < now() and (k.expires_at < now() \
                 or (k.status is null and k.fingerprint = excluded.fingerprint)) \
             returning k.attempt",
        )
        .bind(key)
        .bind(fingerprint)
        .bind(ttl.as_secs_f64())
        .bind(lease.as_secs_f64())
        .fetch_optional(pool)
        .await?;
        if let Some(attempt) = attempt {
            return Ok(Claim::Owned(Lease {
                key: key.to_owned(),
                attempt,
            }));
        }
        let found: Option<Found> = sqlx::query_as(
            "select fingerprint, status, body, headers, \
             least(greatest(1, ceil(extract(epoch from locked_until - now()))), 86400)::int4 \
                 as retry_after, \
             pg_current_wal_lsn()::text as token \
             from idempotency_keys where key = $1",
        )
        .bind(key)
        .fetch_optional(pool)
        .await?;
        // None: released (or swept) between the two statements; claim again.
        if let Some(found) = found {
            return found.claim(fingerprint);
        }
    }
    Ok(Claim::InProgress { retry_after: 1 })
}

impl Found {
    fn claim(self, fingerprint: &[u8]) -> Result<Claim, WriteError> {
        if self.fingerprint != fingerprint {
            return Err(WriteError::IdempotencyKeyReused);
        }
        let (Some(status), Some(body)) = (self.status, self.body) else {
            return Ok(Claim::InProgress {
                retry_after: u32::try_from(self.retry_after).unwrap_or(1),
            });
        };
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        for (name, value) in self.headers.0 {
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(name), HeaderValue::try_from(value))
            {
                headers.insert(name, value);
            }
        }
        if status.is_success()
            && let Ok(token) = HeaderValue::try_from(self.token)
        {
            headers.insert(CATALOG_TOKEN, token);
        }
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(REPLAYED, HeaderValue::from_static("true"));
        Ok(Claim::Replay(response))
    }
}

/// Stores the response of product write `id` inside its transaction, before the
/// commit. Fails with [`WriteError::RequestInProgress`] when `lease`'s attempt no
/// longer holds the key (a retry took it over): the caller's transaction must then roll
/// back, which dropping it does.
pub async fn seal(
    tx: &mut Transaction<'_, Postgres>,
    lease: &Lease,
    id: i64,
    written: Written,
) -> Result<(), WriteError> {
    let (record, _) = Record::of(super::written_response(id, written, None)).await;
    let stored = sqlx::query(STORE)
        .bind(&lease.key)
        .bind(lease.attempt)
        .bind(record.status)
        .bind(record.body.as_ref())
        .bind(Json(&record.headers))
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if stored == 1 {
        Ok(())
    } else {
        Err(WriteError::RequestInProgress)
    }
}

/// Ends the lease of a request that wrote nothing: stores a final answer (a refusal),
/// or releases the key after a 5xx so the retry runs for real. Returns the response
/// unchanged. A failure here is logged, not answered: the lease then expires on its own.
pub async fn finish(
    pool: &PgPool,
    lease: &Lease,
    response: Response<Full<Bytes>>,
    deadline: Duration,
) -> Response<Full<Bytes>> {
    if response.status().is_server_error() {
        release(pool, lease, deadline).await;
        return response;
    }
    let (record, response) = Record::of(response).await;
    let store = sqlx::query(STORE)
        .bind(&lease.key)
        .bind(lease.attempt)
        .bind(record.status)
        .bind(record.body.as_ref())
        .bind(Json(&record.headers))
        .execute(pool);
    let stored = within(deadline, store).await;
    if let Err(err) = stored {
        tracing::warn!(error = %err, "could not store an idempotent response; its lease expires on its own");
    }
    response
}

/// Gives the key up (the request failed in a way a retry may fix). A key whose write
/// committed has its response stored and is kept.
async fn release(pool: &PgPool, lease: &Lease, deadline: Duration) {
    let delete = sqlx::query(
        "delete from idempotency_keys where key = $1 and attempt = $2 and status is null",
    )
    .bind(&lease.key)
    .bind(lease.attempt)
    .execute(pool);
    let deleted = within(deadline, delete).await;
    if let Err(err) = deleted {
        tracing::warn!(error = %err, "could not release an idempotency key; its lease expires on its own");
    }
}

/// 409 `request-in-progress` with `Retry-After`: another request holds the key.
pub fn in_progress(retry_after: u32) -> Response<Full<Bytes>> {
    let mut response = WriteError::RequestInProgress.problem().response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_separate_method_path_and_body() {
        let a = fingerprint("PUT", "/admin/products/1", b"{}");
        assert_eq!(a, fingerprint("PUT", "/admin/products/1", b"{}"));
        assert_ne!(a, fingerprint("PATCH", "/admin/products/1", b"{}"));
        assert_ne!(a, fingerprint("PUT", "/admin/products/12", b"{}"));
        assert_ne!(
            fingerprint("PUT", "/a", b"b"),
            fingerprint("PUT", "/ab", b"")
        );
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn keys_are_bounded() {
        assert!(parse_key(&HeaderValue::from_static("order-42")).is_ok());
        assert!(parse_key(&HeaderValue::from_static("")).is_err());
        let long = HeaderValue::try_from("k".repeat(256)).unwrap();
        assert!(parse_key(&long).is_err());
    }
}
