//! Responses that no cache may keep: operational answers (`/healthz`, `/readyz`,
//! `/metrics`, `/openapi.json`), admin answers and problem documents all get
//! `Cache-Control: no-store` here, in one place.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

/// `application/json`.
pub const JSON: HeaderValue = HeaderValue::from_static("application/json");
/// `text/plain; charset=utf-8`.
pub const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
/// Prometheus' text exposition format.
pub const PROMETHEUS: HeaderValue = HeaderValue::from_static("text/plain; version=0.0.4");
/// `application/x-ndjson`.
pub const NDJSON: HeaderValue = HeaderValue::from_static("application/x-ndjson");
/// `Cache-Control` of everything built here.
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// A response with `status`, `content_type` and `body`, marked `no-store`.
pub fn no_store(
    status: StatusCode,
    content_type: HeaderValue,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CACHE_CONTROL, NO_STORE);
    response
}

/// `200 ok`, the liveness answer of both faces.
pub fn healthy() -> Response<Full<Bytes>> {
    no_store(StatusCode::OK, TEXT, Bytes::from_static(b"ok\n"))
}

/// `200 ready`, the readiness answer of both faces.
pub fn ready() -> Response<Full<Bytes>> {
    no_store(StatusCode::OK, TEXT, Bytes::from_static(b"ready\n"))
}

/// `200` with a face's OpenAPI description (`GET /openapi.json`).
pub fn openapi(spec: &'static str) -> Response<Full<Bytes>> {
    no_store(StatusCode::OK, JSON, Bytes::from_static(spec.as_bytes()))
}

/// `200` with a Prometheus exposition.
pub fn metrics(text: String) -> Response<Full<Bytes>> {
    no_store(StatusCode::OK, PROMETHEUS, text)
}
