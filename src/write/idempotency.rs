//! `Idempotency-Key`: the first response to a keyed admin request is stored with a
//! fingerprint of the request (method, path, body) and replayed for every retry.
//!
//! Claiming a key is an `insert ... on conflict do nothing` on the primary, so exactly
//! one request owns it. A retry with the same key and the same request gets the stored
//! response (marked `Idempotent-Replayed: true`); the same key with another request is
//! refused (422); a retry while the first is still in flight gets 409. Responses that
//! are not final (5xx) release the key so the retry runs for real. Keys expire after
//! `CATALOG_IDEMPOTENCY_TTL_SECS`. The response is stored right after the write commits:
//! a crash in between releases nothing, and the retry then runs again, which the admin
//! API's writes tolerate (PUT and merge PATCH are idempotent, a repeated DELETE is 404).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use sqlx::types::Json;

use super::error::WriteError;

/// The header that marks a replayed response.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The longest key accepted.
const MAX_KEY: usize = 255;

/// Headers of a stored response that a replay repeats.
const KEPT_HEADERS: [&str; 4] = ["etag", "catalog-token", "location", "content-type"];

/// What claiming a key found.
#[derive(Debug)]
pub enum Claim {
    /// This request owns the key: run it, then [`store`] or [`release`].
    Owned,
    /// A previous request with this key finished: its response.
    Replay(Response<Full<Bytes>>),
}

/// A stored response.
#[derive(Debug, sqlx::FromRow)]
struct Stored {
    fingerprint: Vec<u8>,
    status: Option<i16>,
    body: Option<Vec<u8>>,
    headers: Json<Vec<(String, String)>>,
}

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

/// Claims `key` for a request with `fingerprint`, or finds what it already holds.
pub async fn claim(
    pool: &PgPool,
    key: &str,
    fingerprint: &[u8],
    ttl: Duration,
) -> Result<Claim, WriteError> {
    sqlx::query("delete from idempotency_keys where key = $1 and expires_at < now()")
        .bind(key)
        .execute(pool)
        .await?;
    let claimed = sqlx::query(
        "insert into idempotency_keys (key, fingerprint, expires_at) \
         values ($1, $2, now() + make_interval(secs => $3)) on conflict (key) do nothing",
    )
    .bind(key)
    .bind(fingerprint)
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        return Ok(Claim::Owned);
    }
    let stored: Option<Stored> = sqlx::query_as(
        "select fingerprint, status, body, headers from idempotency_keys where key = $1",
    )
    .bind(key)
    .fetch_optional(pool)
    .await?;
    let Some(stored) = stored else {
        // Released between our insert and select: the retry may run.
        return Box::pin(claim(pool, key, fingerprint, ttl)).await;
    };
    if stored.fingerprint != fingerprint {
        return Err(WriteError::IdempotencyKeyReused);
    }
    let (Some(status), Some(body)) = (stored.status, stored.body) else {
        return Err(WriteError::RequestInProgress);
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(u16::try_from(status).unwrap_or(500)).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    for (name, value) in stored.headers.0 {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(name, value);
        }
    }
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    Ok(Claim::Replay(response))
}

/// Stores the final response of the request that owns `key`; returns it unchanged.
pub async fn store(
    pool: &PgPool,
    key: &str,
    response: Response<Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, WriteError> {
    if response.status().is_server_error() {
        release(pool, key).await;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = parts.headers.get(*name)?.to_str().ok()?;
            Some(((*name).to_owned(), value.to_owned()))
        })
        .collect();
    sqlx::query("update idempotency_keys set status = $2, body = $3, headers = $4 where key = $1")
        .bind(key)
        .bind(i16::try_from(parts.status.as_u16()).unwrap_or(500))
        .bind(body.as_ref())
        .bind(Json(&headers))
        .execute(pool)
        .await?;
    Ok(Response::from_parts(parts, Full::new(body)))
}

/// Gives the key up (the request failed in a way a retry may fix).
pub async fn release(pool: &PgPool, key: &str) {
    let deleted = sqlx::query("delete from idempotency_keys where key = $1 and status is null")
        .bind(key)
        .execute(pool)
        .await;
    if let Err(err) = deleted {
        tracing::warn!(error = %err, "could not release an idempotency key; it expires on its own");
    }
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
