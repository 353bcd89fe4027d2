//! Everything a storefront request can fail with, and the status each one answers.

use std::fmt;
use std::sync::Arc;

use hyper::StatusCode;

use super::limits::{MAX_BATCH_IDS, MAX_LIMIT, MAX_SKU_CHARS, MAX_URI_BYTES};
use crate::http::problem::Problem;

/// A store's error, shared by every request that waited on the same fill (so
/// [`ReadError`] stays `Clone`) and compared by identity.
#[derive(Debug)]
pub struct Shared<E>(pub Arc<E>);

impl<E> Clone for Shared<E> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<E> PartialEq for Shared<E> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<E: fmt::Display> fmt::Display for Shared<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Shared<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// A failed storefront request.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ReadError {
    /// The path matches no route.
    #[error("no route")]
    RouteNotFound,
    /// A method other than GET or HEAD.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A method other than GET on the change feed (`HEAD` included).
    #[error("method not allowed on the change feed")]
    FeedMethodNotAllowed,
    /// The URI is longer than the server accepts.
    #[error("URI too long")]
    UriTooLong,
    /// A product id that is not a positive 64-bit integer.
    #[error("invalid product id {0:?}")]
    InvalidId(Box<str>),
    /// `ids=` missing, empty or malformed.
    #[error("invalid ids: {0}")]
    InvalidIds(Box<str>),
    /// More distinct ids than a batch may ask for.
    #[error("too many ids: {0}")]
    TooManyIds(usize),
    /// A SKU that is empty, too long or badly escaped.
    #[error("invalid SKU")]
    InvalidSku,
    /// `limit` not an integer in range.
    #[error("invalid limit {0:?}")]
    InvalidLimit(Box<str>),
    /// A `Min-Catalog-Token` that is not a token this service issued.
    #[error("invalid token")]
    InvalidToken,
    /// A well-formed token ahead of every position the primary has reached: not a
    /// token this service issued.
    #[error("token ahead of the primary")]
    TokenAhead,
    /// Too many token reads are going around the caches at once.
    #[error("too many token reads around the caches")]
    TokenBypassesBusy,
    /// The process is shutting down (readiness only).
    #[error("shutting down")]
    ShuttingDown,
    /// The request did not finish within `CATALOG_REQUEST_TIMEOUT_MS`.
    #[error("request deadline passed")]
    Timeout,
    /// A cursor this server did not issue for this category.
    #[error("invalid cursor")]
    InvalidCursor,
    /// A change-feed filter that is malformed or too large.
    #[error("invalid filter: {0}")]
    InvalidFilter(Box<str>),
    /// The change feed has as many subscribers as this reader keeps.
    #[error("too many change-feed subscribers")]
    FeedFull,
    /// This client address has as many change-feed subscriptions as it may.
    #[error("too many change-feed subscriptions from this client")]
    FeedClientLimit,
    /// No visible product with this id (never existed, deleted or inactive).
    #[error("product {0} not found")]
    ProductNotFound(i64),
    /// No live product with this SKU.
    #[error("no product with this SKU")]
    SkuNotFound,
    /// No category with this slug.
    #[error("category not found")]
    CategoryNotFound,
    /// No replica is healthy and the primary may not (or cannot) serve.
    #[error("no database available")]
    NoDatabase,
    /// A query failed on the primary (or on a replica with no other to retry on).
    #[error("database error: {0}")]
    Database(#[source] Shared<sqlx::Error>),
    /// A stored row could not be rendered (corrupt JSON in the database).
    #[error("render error: {0}")]
    Render(String),
}

impl From<sqlx::Error> for ReadError {
    fn from(err: sqlx::Error) -> Self {
        Self::Database(Shared(Arc::new(err)))
    }
}

impl From<serde_json::Error> for ReadError {
    fn from(err: serde_json::Error) -> Self {
        Self::Render(err.to_string())
    }
}

impl ReadError {
    /// Whether no database could answer (a stale copy may then be served instead).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::NoDatabase | Self::Database(_) | Self::Timeout)
    }

    /// The problem document this error answers with.
    pub fn problem(&self) -> Problem {
        use StatusCode as S;
        match self {
            Self::RouteNotFound => Problem::no_route("no such resource; see docs/api.md"),
            Self::MethodNotAllowed => Problem::method_not_allowed(
                "GET, HEAD",
                "the storefront API is read-only: use GET or HEAD",
            ),
            Self::FeedMethodNotAllowed => Problem::method_not_allowed(
                "GET",
                "the change feed is served to GET alone: subscribe with GET",
            ),
            Self::UriTooLong => Problem::new(
                S::URI_TOO_LONG,
                "uri-too-long",
                "URI too long",
                format!("the URI must be at most {MAX_URI_BYTES} bytes"),
            ),
            Self::InvalidId(id) => Problem::invalid_id(id),
            Self::InvalidIds(why) => Problem::new(
                S::BAD_REQUEST,
                "invalid-ids",
                "Invalid ids",
                format!("ids must be a comma-separated list of product ids: {why}"),
            ),
            Self::TooManyIds(n) => Problem::new(
                S::BAD_REQUEST,
                "too-many-ids",
                "Too many ids",
                format!("{n} distinct ids asked; at most {MAX_BATCH_IDS} per request"),
            ),
            Self::InvalidSku => Problem::new(
                S::BAD_REQUEST,
                "invalid-sku",
                "Invalid SKU",
                format!("a SKU is 1 to {MAX_SKU_CHARS} characters, percent-encoded in the path"),
            ),
            Self::InvalidLimit(raw) => Problem::new(
                S::BAD_REQUEST,
                "invalid-limit",
                "Invalid limit",
                format!("limit {raw:?} must be an integer from 1 to {MAX_LIMIT}"),
            ),
            Self::InvalidToken => Problem::new(
                S::BAD_REQUEST,
                "invalid-token",
                "Invalid token",
                "Min-Catalog-Token must be a Catalog-Token returned by a write, such as 0/16B3F28",
            ),
            Self::TokenAhead => Problem::new(
                S::BAD_REQUEST,
                "invalid-token",
                "Invalid token",
                "Min-Catalog-Token is ahead of every write the primary has made: it was not \
                 returned by a write",
            ),
            Self::TokenBypassesBusy => Problem::unavailable(
                "too many reads with a token are waiting for a database right now; retry shortly",
            ),
            Self::ShuttingDown => {
                Problem::unavailable("this instance is shutting down; send new requests to another")
            }
            Self::Timeout => {
                Problem::unavailable("the read did not finish within its deadline; retry shortly")
            }
            Self::InvalidCursor => Problem::new(
                S::BAD_REQUEST,
                "invalid-cursor",
                "Invalid cursor",
                "the cursor was not issued for this category; start again without one",
            ),
            Self::InvalidFilter(why) => Problem::new(
                S::BAD_REQUEST,
                "invalid-filter",
                "Invalid filter",
                format!("products= takes product ids, categories= slugs: {why}"),
            ),
            Self::FeedFull => Problem::unavailable(
                "this reader has as many change-feed subscribers as it keeps; retry on another",
            ),
            Self::FeedClientLimit => Problem::too_many_requests(
                "too-many-subscriptions",
                "Too many subscriptions",
                "this client address has as many change-feed subscriptions as it may",
            ),
            Self::ProductNotFound(id) => {
                Problem::product_not_found(format!("there is no product {id}"))
            }
            Self::SkuNotFound => {
                Problem::product_not_found("there is no live product with this SKU")
            }
            Self::CategoryNotFound => Problem::category_not_found(),
            Self::NoDatabase => {
                Problem::unavailable("no database can serve this read right now; retry shortly")
            }
            Self::Database(_) => {
                Problem::unavailable("the database failed to answer; retry shortly")
            }
            Self::Render(_) => Problem::new(
                S::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "a stored product could not be rendered",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status_and_type() {
        let cases: [(ReadError, u16, &str); 22] = [
            (ReadError::ShuttingDown, 503, "unavailable"),
            (ReadError::InvalidToken, 400, "invalid-token"),
            (ReadError::TokenAhead, 400, "invalid-token"),
            (ReadError::TokenBypassesBusy, 503, "unavailable"),
            (ReadError::Timeout, 503, "unavailable"),
            (ReadError::RouteNotFound, 404, "not-found"),
            (ReadError::MethodNotAllowed, 405, "method-not-allowed"),
            (ReadError::FeedMethodNotAllowed, 405, "method-not-allowed"),
            (ReadError::UriTooLong, 414, "uri-too-long"),
            (ReadError::InvalidId("x".into()), 400, "invalid-id"),
            (ReadError::InvalidIds("x".into()), 400, "invalid-ids"),
            (ReadError::TooManyIds(201), 400, "too-many-ids"),
            (ReadError::InvalidSku, 400, "invalid-sku"),
            (ReadError::InvalidLimit("0".into()), 400, "invalid-limit"),
            (ReadError::InvalidCursor, 400, "invalid-cursor"),
            (ReadError::ProductNotFound(1), 404, "product-not-found"),
            (ReadError::SkuNotFound, 404, "product-not-found"),
            (ReadError::CategoryNotFound, 404, "category-not-found"),
            (ReadError::NoDatabase, 503, "unavailable"),
            (
                ReadError::from(sqlx::Error::PoolTimedOut),
                503,
                "unavailable",
            ),
            (ReadError::Render("x".into()), 500, "internal"),
            (ReadError::InvalidId("\"q\"".into()), 400, "invalid-id"),
        ];
        for (error, status, kind) in cases {
            let problem = error.problem();
            assert_eq!(problem.status.as_u16(), status, "{error:?}");
            assert_eq!(problem.kind, kind, "{error:?}");
            assert!(!problem.detail.is_empty());
        }
        assert_eq!(
            ReadError::MethodNotAllowed.problem().allow,
            Some("GET, HEAD")
        );
        assert_eq!(ReadError::FeedMethodNotAllowed.problem().allow, Some("GET"));
    }
}
