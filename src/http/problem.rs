//! RFC 9457 problem documents: every error answer is `application/problem+json` with a
//! stable `type`, a human `title` and a `detail` about this occurrence.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::response::no_store;

/// `Content-Type` of problem documents.
pub const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// One error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable identifier, served as the type URI `/problems/<kind>`.
    pub kind: &'static str,
    /// Short, human summary of the kind of problem.
    pub title: &'static str,
    /// What went wrong this time.
    pub detail: Cow<'static, str>,
    /// Methods for the `Allow` header of a 405.
    pub allow: Option<&'static str>,
    /// Seconds for the `Retry-After` header of a 503 or 429.
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    /// A problem without an `Allow` header.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            kind,
            title,
            detail: detail.into(),
            allow: None,
            retry_after: None,
        }
    }

    /// 404 `not-found`: no route matches.
    pub fn no_route(detail: &'static str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 405 `method-not-allowed`, with the `Allow` header.
    pub fn method_not_allowed(allow: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                detail,
            )
        }
    }

    /// 400 `invalid-id`: a path id that is not a positive 64-bit integer (either face).
    pub fn invalid_id(id: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-id",
            "Invalid product id",
            format!(
                "{id:?} is not a product id: expected an integer from 1 to {}",
                i64::MAX
            ),
        )
    }

    /// 404 `product-not-found`.
    pub fn product_not_found(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "product-not-found",
            "Product not found",
            detail,
        )
    }

    /// 404 `category-not-found`.
    pub fn category_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "category-not-found",
            "Category not found",
            "there is no category with this slug",
        )
    }

    /// 503 `unavailable`: a store failed or is saturated; retrying in a second may
    /// succeed (`Retry-After: 1`).
    pub fn unavailable(detail: &'static str) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                detail,
            )
        }
    }

    /// 429 of `kind`, with `Retry-After: 1`.
    pub fn too_many_requests(
        kind: &'static str,
        title: &'static str,
        detail: &'static str,
    ) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, kind, title, detail)
        }
    }

    /// The response: status, problem+json body, `no-store` so no cache keeps an error.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let type_uri = format!("/problems/{}", self.kind);
        let body = serde_json::to_vec(&Wire {
            kind: &type_uri,
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
        })
        .unwrap_or_default();
        let mut response = no_store(self.status, PROBLEM_JSON, Bytes::from(body));
        let headers = response.headers_mut();
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};

    #[tokio::test]
    async fn problems_are_json_with_type_title_status_and_detail() {
        let problem = Problem::method_not_allowed("GET, HEAD", "POST \"x\" is not served here");
        let response = problem.response();
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(response.headers()[ALLOW], "GET, HEAD");
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "/problems/method-not-allowed");
        assert_eq!(json["title"], "Method not allowed");
        assert_eq!(json["status"], 405);
        assert_eq!(json["detail"], "POST \"x\" is not served here");
        let busy = Problem::unavailable("retry").response();
        assert_eq!(busy.status(), 503);
        assert_eq!(busy.headers()[RETRY_AFTER], "1");
    }
}
