//! Everything an admin request can fail with, and the status each one answers.
//! A failed request changes nothing: every write is one transaction.

use hyper::StatusCode;

use crate::http::problem::Problem;

/// A failed admin request.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No bearer token.
    #[error("missing bearer token")]
    Unauthenticated,
    /// A bearer token that is not one of `CATALOG_ADMIN_TOKENS`.
    #[error("unknown bearer token")]
    Forbidden,
    /// No such admin route.
    #[error("no route")]
    RouteNotFound,
    /// A method the route does not serve.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// A path id that is not a positive integer.
    #[error("invalid product id {0:?}")]
    InvalidId(Box<str>),
    /// The body is not JSON; the message names the position.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// A field is missing, unknown or out of bounds.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The body is larger than `CATALOG_MAX_BODY_BYTES`.
    #[error("body too large")]
    TooLarge(usize),
    /// Categories named by the product that do not exist.
    #[error("unknown categories: {0:?}")]
    UnknownCategories(Vec<String>),
    /// Another live product has this SKU.
    #[error("SKU taken")]
    SkuTaken,
    /// No category with this slug.
    #[error("category not found")]
    CategoryNotFound,
    /// A path slug that is not a well-formed category slug.
    #[error("invalid slug")]
    InvalidSlug,
    /// No (live) product with this id.
    #[error("product {0} not found")]
    ProductNotFound(i64),
    /// `If-Match` names another version.
    #[error("version mismatch")]
    PreconditionFailed {
        /// The product's current version (0: it does not exist).
        current: i64,
    },
    /// An `Idempotency-Key` that is empty or longer than 255 bytes.
    #[error("invalid idempotency key")]
    InvalidIdempotencyKey,
    /// The key was used before with another request.
    #[error("idempotency key reused")]
    IdempotencyKeyReused,
    /// The first request with this key is still running.
    #[error("request in progress")]
    RequestInProgress,
    /// The body arrived too slowly (slower than `MIN_BODY_RATE` after its grace).
    #[error("body too slow")]
    BodyTooSlow,
    /// The process is shutting down (readiness only).
    #[error("shutting down")]
    ShuttingDown,
    /// The primary did not finish the call within `CATALOG_DB_TIMEOUT_MS`.
    #[error("the primary did not answer in time")]
    Timeout,
    /// The primary failed before the commit, or refused it: nothing was applied.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// `COMMIT` was sent but its answer was lost: the write may have been applied.
    #[error("commit outcome unknown: {0}")]
    CommitUnknown(sqlx::Error),
}

impl WriteError {
    /// The problem document this error answers with.
    pub fn problem(&self) -> Problem {
        use StatusCode as S;
        match self {
            Self::Unauthenticated => Problem::new(
                S::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
                "send Authorization: Bearer <admin token>",
            ),
            Self::Forbidden => Problem::new(
                S::FORBIDDEN,
                "forbidden",
                "Forbidden",
                "this token is not an admin token",
            ),
            Self::RouteNotFound => Problem::no_route("no such admin resource; see docs/api.md"),
            Self::MethodNotAllowed(allow) => {
                Problem::method_not_allowed(allow, format!("this resource accepts {allow}"))
            }
            Self::InvalidId(id) => Problem::invalid_id(id),
            Self::MalformedJson(detail) => Problem::new(
                S::BAD_REQUEST,
                "malformed-json",
                "Malformed JSON",
                detail.clone(),
            ),
            Self::Invalid { field, reason } => Problem::new(
                S::BAD_REQUEST,
                "invalid-product",
                "Invalid product",
                format!("{field}: {reason}"),
            ),
            Self::TooLarge(limit) => Problem::new(
                S::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
                format!("the body must be at most {limit} bytes"),
            ),
            Self::UnknownCategories(slugs) => Problem::new(
                S::UNPROCESSABLE_ENTITY,
                "unknown-categories",
                "Unknown categories",
                format!("no such categories: {}", slugs.join(", ")),
            ),
            Self::SkuTaken => Problem::new(
                S::CONFLICT,
                "sku-taken",
                "SKU taken",
                "another live product has this SKU",
            ),
            Self::ProductNotFound(id) => {
                Problem::product_not_found(format!("there is no product {id}"))
            }
            Self::CategoryNotFound => Problem::category_not_found(),
            Self::InvalidSlug => Problem::new(
                S::BAD_REQUEST,
                "invalid-slug",
                "Invalid slug",
                "a category slug is lower-case letters and digits in words joined by '-', at most 64 characters",
            ),
            Self::PreconditionFailed { current } => Problem::new(
                S::PRECONDITION_FAILED,
                "version-mismatch",
                "Precondition failed",
                format!("If-Match does not name the current version ({current})"),
            ),
            Self::InvalidIdempotencyKey => Problem::new(
                S::BAD_REQUEST,
                "invalid-idempotency-key",
                "Invalid Idempotency-Key",
                "an Idempotency-Key is 1 to 255 visible characters",
            ),
            Self::IdempotencyKeyReused => Problem::new(
                S::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "this key was used with another request; use a new key for a new request",
            ),
            Self::RequestInProgress => Problem::new(
                S::CONFLICT,
                "request-in-progress",
                "Request in progress",
                "the first request with this Idempotency-Key has not finished; retry shortly",
            ),
            Self::BodyTooSlow => Problem::new(
                S::REQUEST_TIMEOUT,
                "body-too-slow",
                "Request body too slow",
                "the body must keep up 64 KiB/s after a short grace; send it at once",
            ),
            Self::ShuttingDown => {
                Problem::unavailable("this instance is shutting down; send new requests to another")
            }
            Self::Timeout => Problem::unavailable(
                "the primary did not answer in time; the write may or may not have been \
                 applied: retry with the same Idempotency-Key, or read the product first",
            ),
            Self::Database(_) => Problem::unavailable(
                "the primary failed to answer; the write was not applied, retry shortly",
            ),
            Self::CommitUnknown(_) => Problem::unavailable(
                "the primary failed during the commit; the write may or may not have been \
                 applied: retry with the same Idempotency-Key, or read the product first",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status_and_type() {
        let cases: Vec<(WriteError, u16, &str)> = vec![
            (WriteError::Unauthenticated, 401, "unauthenticated"),
            (WriteError::Forbidden, 403, "forbidden"),
            (WriteError::RouteNotFound, 404, "not-found"),
            (
                WriteError::MethodNotAllowed("PUT"),
                405,
                "method-not-allowed",
            ),
            (WriteError::InvalidId("x".into()), 400, "invalid-id"),
            (
                WriteError::MalformedJson("at 3".into()),
                400,
                "malformed-json",
            ),
            (
                WriteError::Invalid {
                    field: "sku",
                    reason: "x".into(),
                },
                400,
                "invalid-product",
            ),
            (WriteError::TooLarge(10), 413, "payload-too-large"),
            (
                WriteError::UnknownCategories(vec!["x".into()]),
                422,
                "unknown-categories",
            ),
            (WriteError::SkuTaken, 409, "sku-taken"),
            (WriteError::ProductNotFound(1), 404, "product-not-found"),
            (WriteError::CategoryNotFound, 404, "category-not-found"),
            (WriteError::InvalidSlug, 400, "invalid-slug"),
            (
                WriteError::PreconditionFailed { current: 2 },
                412,
                "version-mismatch",
            ),
            (
                WriteError::Database(sqlx::Error::PoolTimedOut),
                503,
                "unavailable",
            ),
            (WriteError::Timeout, 503, "unavailable"),
            (WriteError::ShuttingDown, 503, "unavailable"),
            (WriteError::BodyTooSlow, 408, "body-too-slow"),
            (
                WriteError::CommitUnknown(sqlx::Error::PoolClosed),
                503,
                "unavailable",
            ),
        ];
        for (error, status, kind) in cases {
            let problem = error.problem();
            assert_eq!(problem.status.as_u16(), status, "{error:?}");
            assert_eq!(problem.kind, kind, "{error:?}");
        }
        assert_eq!(
            WriteError::MethodNotAllowed("PUT, PATCH").problem().allow,
            Some("PUT, PATCH")
        );
        // "Not applied" only where it is certain.
        let unknown = WriteError::CommitUnknown(sqlx::Error::PoolClosed).problem();
        assert!(
            unknown.detail.contains("may or may not"),
            "{}",
            unknown.detail
        );
        let before = WriteError::Database(sqlx::Error::PoolClosed).problem();
        assert!(before.detail.contains("not applied"), "{}", before.detail);
    }
}
