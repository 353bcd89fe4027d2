//! Documents and listings as responses: the cached bytes (JSON, or gzip for a client
//! that accepts it: [`super::encoding`]), their `ETag` (one per representation, the gzip
//! one suffixed `-gz`; 304 when `If-None-Match` names the one of the representation
//! chosen), the `Cache-Control` that lets downstream caches keep them,
//! `Vary: Min-Catalog-Token` (a read with a token never gets a shared copy) and, with
//! gzip on, `Accept-Encoding`, and, when
//! `CATALOG_SURROGATE_KEYS` is on, the surrogate keys an edge cache purges them by
//! ([`crate::http::surrogate`]). Error and operational answers are built in
//! [`crate::http::response`].

use std::hash::{BuildHasher as _, Hasher as _};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    AGE, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue,
    IF_NONE_MATCH, VARY,
};
use hyper::{Response, StatusCode};

use super::encoding::Encoding;
use super::listing;
use super::{HttpCaching, Reader};
use crate::document::{Document, Tick};
use crate::http::response::JSON;
use crate::http::surrogate::{SURROGATE_KEY, XKEY};

/// A strong validator of a listing: a hash of what its body was assembled from (each
/// document's id and version, and what else the body says), the same in every reader
/// running this build, so an edge can revalidate with any of them; suffixed `-gz` for
/// the gzip representation.
pub(super) fn listing_etag(docs: &[&Document], extra: &[u8], encoding: Encoding) -> HeaderValue {
    let mut hasher = foldhash::quality::FixedState::with_seed(0x6361_7461_6c6f_6721).build_hasher();
    for doc in docs {
        hasher.write_i64(doc.id);
        hasher.write_i64(doc.version);
    }
    hasher.write(extra);
    tagged_etag(hasher.finish(), encoding)
}

/// A strong validator of a body held whole (`/categories`), from its JSON.
pub(super) fn body_etag(body: &[u8], encoding: Encoding) -> HeaderValue {
    let mut hasher = foldhash::quality::FixedState::with_seed(0x6361_7461_6c6f_6722).build_hasher();
    hasher.write(body);
    tagged_etag(hasher.finish(), encoding)
}

fn tagged_etag(hash: u64, encoding: Encoding) -> HeaderValue {
    let suffix = match encoding {
        Encoding::Identity => "",
        Encoding::Gzip => "-gz",
    };
    HeaderValue::try_from(format!("\"l{hash:016x}{suffix}\""))
        .expect("hex digits and quotes are a valid header value")
}

/// `Cache-Control` of documents and listings.
pub(super) fn cache_control(caching: HttpCaching) -> HeaderValue {
    HeaderValue::try_from(format!(
        "public, max-age={}, stale-while-revalidate={}, stale-if-error={}",
        caching.max_age_secs, caching.stale_while_revalidate_secs, caching.stale_if_error_secs
    ))
    .expect("digits form a valid header value")
}

impl Reader {
    /// The representation the request may have: gzip only when it is on here and the
    /// request's `Accept-Encoding` allows it.
    pub(super) fn encoding(&self, headers: &HeaderMap) -> Encoding {
        if self.gzip {
            super::encoding::negotiate(headers)
        } else {
            Encoding::Identity
        }
    }

    /// A listing of `docs` is sent in gzip when the request may have it and some
    /// document in it is worth it.
    pub(super) fn listing_encoding(&self, headers: &HeaderMap, docs: &[&Document]) -> Encoding {
        match self.encoding(headers) {
            Encoding::Gzip if listing::worth_gzip(docs) => Encoding::Gzip,
            Encoding::Gzip | Encoding::Identity => Encoding::Identity,
        }
    }

    /// 200 with the document, or 304 when `If-None-Match` names its ETag; in gzip when
    /// the client accepts it and the body is worth it (its gzip form is made on the
    /// first such answer, and L1 weighs the document again).
    ///
    /// `now` is when the request started (the hit path has read the clock already).
    pub(super) fn document_response(
        &self,
        doc: &Document,
        headers: &HeaderMap,
        now: Tick,
    ) -> Response<Full<Bytes>> {
        let keys = self.surrogate_keys.then(|| doc.key());
        let gzip = match self.encoding(headers) {
            Encoding::Gzip => self.l1.gzip(doc),
            Encoding::Identity => None,
        };
        let mut response = match gzip {
            Some(gzip) => {
                self.validated(|| gzip.member(), gzip.etag(), Encoding::Gzip, keys, headers)
            }
            None => self.validated(
                || doc.body_bytes(),
                doc.etag(),
                Encoding::Identity,
                keys,
                headers,
            ),
        };
        // Only a copy past the hard TTL is ever served this old: a stale answer, because
        // no database could answer. Say how old (RFC 9111 `Age`).
        let age = doc.age_at(now);
        if age >= self.ttl.hard {
            response
                .headers_mut()
                .insert(AGE, HeaderValue::from(age.as_secs()));
        }
        response
    }

    /// 200 with a listing's body (made only then), in `encoding`, or 304 when
    /// `If-None-Match` names `etag`; `keys` are its surrogate keys, space-separated.
    pub(super) fn listing_response(
        &self,
        body: impl FnOnce() -> Bytes,
        etag: HeaderValue,
        encoding: Encoding,
        keys: impl FnOnce() -> String,
        request: &HeaderMap,
    ) -> Response<Full<Bytes>> {
        let keys = self
            .surrogate_keys
            .then(|| HeaderValue::try_from(keys()).ok())
            .flatten();
        self.validated(body, etag, encoding, keys, request)
    }

    /// 200 with `body` (JSON, in `encoding`), or 304 when the request's
    /// `If-None-Match` names `etag`; either way with the validator, the caching headers
    /// and the surrogate `keys`.
    fn validated(
        &self,
        body: impl FnOnce() -> Bytes,
        etag: HeaderValue,
        encoding: Encoding,
        keys: Option<HeaderValue>,
        request: &HeaderMap,
    ) -> Response<Full<Bytes>> {
        let not_modified = request
            .get(IF_NONE_MATCH)
            .is_some_and(|value| etag_matches(value, &etag));
        let mut response = if not_modified {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            let mut response = Response::new(Full::new(body()));
            response.headers_mut().insert(CONTENT_TYPE, JSON);
            if encoding == Encoding::Gzip {
                response.headers_mut().insert(CONTENT_ENCODING, GZIP);
            }
            response
        };
        let headers = response.headers_mut();
        headers.insert(ETAG, etag);
        headers.insert(CACHE_CONTROL, self.cache_control.clone());
        headers.insert(
            VARY,
            if self.gzip {
                VARY_TOKEN_AND_ENCODING
            } else {
                VARY_TOKEN
            },
        );
        if let Some(keys) = keys {
            headers.insert(XKEY, keys.clone());
            headers.insert(SURROGATE_KEY, keys);
        }
        response
    }
}

/// Documents and listings vary with `Min-Catalog-Token`: a shared cache must not answer
/// a read that carries one with a copy stored for reads without (or with another).
const VARY_TOKEN: HeaderValue = HeaderValue::from_static("min-catalog-token");

/// With gzip on, they vary with `Accept-Encoding` too.
const VARY_TOKEN_AND_ENCODING: HeaderValue =
    HeaderValue::from_static("min-catalog-token, accept-encoding");

/// `Content-Encoding: gzip`.
const GZIP: HeaderValue = HeaderValue::from_static("gzip");

/// A read with `Min-Catalog-Token` is answered for that client alone: no shared or
/// private cache may store it.
pub(super) fn not_stored(response: &mut Response<Full<Bytes>>) {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
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
    fn listing_validators_follow_what_the_body_was_made_of() {
        let a = Document::new(1, 3, "A", b"{}");
        let b = Document::new(2, 5, "B", b"{}");
        let b6 = Document::new(2, 6, "B", b"{}");
        let id = Encoding::Identity;
        let etag = listing_etag(&[&a, &b], b"", id);
        assert_eq!(etag, listing_etag(&[&a, &b], b"", id), "not stable");
        assert_ne!(
            etag,
            listing_etag(&[&a, &b6], b"", id),
            "a new version kept the tag"
        );
        assert_ne!(
            etag,
            listing_etag(&[&b, &a], b"", id),
            "another order kept the tag"
        );
        assert_ne!(
            etag,
            listing_etag(&[&a, &b], b"7", id),
            "another tail kept the tag"
        );
        let tag = etag.to_str().unwrap();
        assert!(
            tag.starts_with("\"l") && tag.ends_with('"') && tag.len() == 19,
            "{tag}"
        );
        let gzip = listing_etag(&[&a, &b], b"", Encoding::Gzip);
        assert_eq!(gzip.to_str().unwrap(), format!("{}-gz\"", &tag[..18]));
        assert_ne!(body_etag(b"[1]", id), body_etag(b"[2]", id));
        assert_ne!(body_etag(b"[1]", id), body_etag(b"[1]", Encoding::Gzip));
    }

    #[test]
    fn cache_control_names_both_lifetimes() {
        let value = cache_control(HttpCaching {
            max_age_secs: 5,
            stale_while_revalidate_secs: 30,
            stale_if_error_secs: 300,
            surrogate_keys: false,
            gzip: true,
        });
        assert_eq!(
            value,
            "public, max-age=5, stale-while-revalidate=30, stale-if-error=300"
        );
    }
}
