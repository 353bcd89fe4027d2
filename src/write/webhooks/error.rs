//! What a webhook admin request can fail with, and the problem document each answers.
//! A refused request changes nothing: each change is one statement or transaction.

use hyper::StatusCode;

use crate::http::problem::Problem;

/// A failed webhook admin request.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// No such route under `/admin/webhooks`.
    #[error("no route")]
    RouteNotFound,
    /// A method the route does not serve.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// A path id that is not a positive integer.
    #[error("invalid webhook id {0:?}")]
    InvalidId(String),
    /// The body is not JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// A field is missing, unknown, or out of bounds; the message names it.
    #[error("invalid webhook: {0}")]
    Invalid(String),
    /// No webhook with this id.
    #[error("webhook {0} not found")]
    NotFound(i64),
    /// The primary did not answer within `CATALOG_DB_TIMEOUT_MS`.
    #[error("the primary did not answer in time")]
    Timeout,
    /// The primary failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl WebhookError {
    /// The problem document this error answers with.
    pub fn problem(&self) -> Problem {
        use StatusCode as S;
        match self {
            Self::RouteNotFound => Problem::no_route("no such admin resource; see docs/api.md"),
            Self::MethodNotAllowed(allow) => {
                Problem::method_not_allowed(allow, format!("this resource accepts {allow}"))
            }
            Self::InvalidId(id) => Problem::new(
                S::BAD_REQUEST,
                "invalid-id",
                "Invalid id",
                format!(
                    "{id:?} is not a webhook id: expected an integer from 1 to {}",
                    i64::MAX
                ),
            ),
            Self::MalformedJson(detail) => Problem::new(
                S::BAD_REQUEST,
                "malformed-json",
                "Malformed JSON",
                detail.clone(),
            ),
            Self::Invalid(detail) => Problem::new(
                S::BAD_REQUEST,
                "invalid-webhook",
                "Invalid webhook",
                detail.clone(),
            ),
            Self::NotFound(id) => Problem::new(
                S::NOT_FOUND,
                "webhook-not-found",
                "Webhook not found",
                format!("there is no webhook {id}"),
            ),
            Self::Timeout => Problem::unavailable(
                "the primary did not answer in time; the change may or may not have been \
                 applied: list the webhooks to see",
            ),
            Self::Database(_) => Problem::unavailable(
                "the primary failed to answer; nothing was changed, retry shortly",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status_and_type() {
        let cases: Vec<(WebhookError, u16, &str)> = vec![
            (WebhookError::RouteNotFound, 404, "not-found"),
            (
                WebhookError::MethodNotAllowed("GET, POST"),
                405,
                "method-not-allowed",
            ),
            (WebhookError::InvalidId("x".into()), 400, "invalid-id"),
            (
                WebhookError::MalformedJson("x".into()),
                400,
                "malformed-json",
            ),
            (
                WebhookError::Invalid("url: x".into()),
                400,
                "invalid-webhook",
            ),
            (WebhookError::NotFound(3), 404, "webhook-not-found"),
            (WebhookError::Timeout, 503, "unavailable"),
            (
                WebhookError::Database(sqlx::Error::PoolTimedOut),
                503,
                "unavailable",
            ),
        ];
        for (error, status, kind) in cases {
            let problem = error.problem();
            assert_eq!(problem.status.as_u16(), status, "{error:?}");
            assert_eq!(problem.kind, kind, "{error:?}");
        }
    }
}
