//! CORS for storefront pages that call the API from a browser
//! (`CATALOG_CORS_ORIGINS`): a request from an allowed `Origin` gets
//! `Access-Control-Allow-Origin` (and `Vary: Origin`, so a shared cache keeps one copy
//! per origin), and a preflight (`OPTIONS` with `Access-Control-Request-Method`) from an
//! allowed origin is answered 204 with the methods and headers the storefront API takes.
//! Without configured origins nothing is added and `OPTIONS` is 405, like any method
//! but GET and HEAD.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD,
    HeaderMap, HeaderValue, ORIGIN, VARY,
};
use hyper::{Method, Response, StatusCode};

/// Methods a browser may use.
const METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD");
/// Request headers a browser may send beyond the simple ones.
const HEADERS: HeaderValue =
    HeaderValue::from_static("Min-Catalog-Token, If-None-Match, Last-Event-ID");
/// Response headers a page's script may read beyond the simple ones.
const EXPOSED: HeaderValue = HeaderValue::from_static("ETag, Age");
/// How long a browser may reuse a preflight's answer, seconds.
const PREFLIGHT_MAX_AGE: HeaderValue = HeaderValue::from_static("600");

/// Which origins may read the storefront API from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// Any origin (`*`): documents are public anyway.
    Any,
    /// These origins, exactly (`https://shop.example`).
    Origins(Vec<HeaderValue>),
}

impl Cors {
    /// The policy of `CATALOG_CORS_ORIGINS` entries; `None` when there are none.
    pub fn new(origins: &[String]) -> Option<Self> {
        if origins.is_empty() {
            return None;
        }
        if origins.iter().any(|o| o == "*") {
            return Some(Self::Any);
        }
        let origins = origins
            .iter()
            .filter_map(|o| HeaderValue::try_from(o.as_str()).ok())
            .collect();
        Some(Self::Origins(origins))
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if allowed.
    fn allow(&self, request: &HeaderMap) -> Option<HeaderValue> {
        let origin = request.get(ORIGIN)?;
        match self {
            Self::Any => Some(HeaderValue::from_static("*")),
            Self::Origins(allowed) => allowed.iter().any(|a| a == origin).then(|| origin.clone()),
        }
    }

    /// Adds the CORS headers a response to `request` needs.
    pub fn decorate(&self, request: &HeaderMap, response: &mut Response<Full<Bytes>>) {
        let headers = response.headers_mut();
        if let Self::Origins(_) = self {
            headers.append(VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(origin) = self.allow(request) {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED);
        }
    }

    /// The answer to a preflight, if `method` and `request` make one: 204 with the
    /// allowed methods and headers for an allowed origin, 403 (no CORS headers, so the
    /// browser refuses) for another.
    pub fn preflight(&self, method: &Method, request: &HeaderMap) -> Option<Response<Full<Bytes>>> {
        if method != Method::OPTIONS || !request.contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
            return None;
        }
        let mut response = Response::new(Full::new(Bytes::new()));
        let Some(origin) = self.allow(request) else {
            *response.status_mut() = StatusCode::FORBIDDEN;
            return Some(response);
        };
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, METHODS);
        headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, HEADERS);
        headers.insert(ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE);
        headers.insert(VARY, HeaderValue::from_static("Origin"));
        Some(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: &'static str, preflight: bool) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ORIGIN, HeaderValue::from_static(origin));
        if preflight {
            headers.insert(
                ACCESS_CONTROL_REQUEST_METHOD,
                HeaderValue::from_static("GET"),
            );
        }
        headers
    }

    #[test]
    fn only_configured_origins_are_allowed() {
        assert_eq!(Cors::new(&[]), None);
        let cors = Cors::new(&["https://shop.example".to_owned()]).unwrap();
        let mut ok = Response::new(Full::new(Bytes::new()));
        cors.decorate(&request("https://shop.example", false), &mut ok);
        assert_eq!(
            ok.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://shop.example"
        );
        assert_eq!(ok.headers()[VARY], "Origin");
        let mut other = Response::new(Full::new(Bytes::new()));
        cors.decorate(&request("https://evil.example", false), &mut other);
        assert!(!other.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));

        let preflight = cors
            .preflight(&Method::OPTIONS, &request("https://shop.example", true))
            .unwrap();
        assert_eq!(preflight.status(), 204);
        assert_eq!(
            preflight.headers()[ACCESS_CONTROL_ALLOW_METHODS],
            "GET, HEAD"
        );
        let refused = cors
            .preflight(&Method::OPTIONS, &request("https://evil.example", true))
            .unwrap();
        assert_eq!(refused.status(), 403);
        assert!(
            cors.preflight(&Method::GET, &request("https://shop.example", true))
                .is_none()
        );
        let any = Cors::new(&["*".to_owned()]).unwrap();
        let mut open = Response::new(Full::new(Bytes::new()));
        any.decorate(&request("https://anyone.example", false), &mut open);
        assert_eq!(open.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
