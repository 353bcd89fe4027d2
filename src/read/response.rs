//! Documents and listings as responses: the cached bytes, their `ETag` (304 when
//! `If-None-Match` names it) and the `Cache-Control` that lets downstream caches keep
//! them. Error and operational answers are built in [`crate::http::response`].

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    AGE, CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue, IF_NONE_MATCH,
};
use hyper::{Response, StatusCode};

use super::{HttpCaching, Reader};
use crate::document::Document;
use crate::http::response::JSON;

/// `Cache-Control` of documents and listings.
pub(super) fn cache_control(caching: HttpCaching) -> HeaderValue {
    HeaderValue::try_from(format!(
        "public, max-age={}, stale-while-revalidate={}, stale-if-error={}",
        caching.max_age_secs, caching.stale_while_revalidate_secs, caching.stale_if_error_secs
    ))
    .expect("digits form a valid header value")
}

impl Reader {
    /// 200 with the document, or 304 when `If-None-Match` names its ETag.
    pub(super) fn document_response(
        &self,
        doc: &Document,
        headers: &HeaderMap,
    ) -> Response<Full<Bytes>> {
        let not_modified = headers
            .get(IF_NONE_MATCH)
            .is_some_and(|value| etag_matches(value, &doc.etag));
        let mut response = if not_modified {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            let mut response = Response::new(Full::new(doc.body.clone()));
            response.headers_mut().insert(CONTENT_TYPE, JSON);
            response
        };
        let headers = response.headers_mut();
        headers.insert(ETAG, doc.etag.clone());
        headers.insert(CACHE_CONTROL, self.cache_control.clone());
        // Only a copy past the hard TTL is ever served this old: a stale answer, because
        // no database could answer. Say how old (RFC 9111 `Age`).
        let age = doc.loaded.elapsed();
        if age >= self.ttl.hard {
            headers.insert(AGE, HeaderValue::from(age.as_secs()));
        }
        response
    }

    /// 200 with a listing's JSON body.
    pub(super) fn json(&self, body: Bytes) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(body));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, JSON);
        headers.insert(CACHE_CONTROL, self.cache_control.clone());
        response
    }
}

/// Whether an `If-None-Match` value names `etag` (weak comparison, lists, `*`).
fn etag_matches(value: &HeaderValue, etag: &HeaderValue) -> bool {
    let value = value.as_bytes();
    if value == etag.as_bytes() || value == b"*" {
        return true;
    }
    value.split(|&b| b == b',').any(|candidate| {
        let candidate = candidate.trim_ascii();
        let candidate = candidate.strip_prefix(b"W/").unwrap_or(candidate);
        candidate == etag.as_bytes()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_understands_lists_weak_tags_and_star() {
        let etag = HeaderValue::from_static("\"5\"");
        for matching in ["\"5\"", "*", "\"4\", \"5\"", "W/\"5\"", " \"5\" ,\"6\""] {
            assert!(
                etag_matches(&HeaderValue::from_static(matching), &etag),
                "{matching}"
            );
        }
        for other in ["\"4\"", "5", "\"55\"", ""] {
            assert!(
                !etag_matches(&HeaderValue::from_static(other), &etag),
                "{other}"
            );
        }
    }

    #[test]
    fn cache_control_names_both_lifetimes() {
        let value = cache_control(HttpCaching {
            max_age_secs: 5,
            stale_while_revalidate_secs: 30,
            stale_if_error_secs: 300,
        });
        assert_eq!(
            value,
            "public, max-age=5, stale-while-revalidate=30, stale-if-error=300"
        );
    }
}
