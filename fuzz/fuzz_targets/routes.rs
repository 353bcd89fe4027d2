//! The path and query parsers of both faces: `read::route::Route::parse`,
//! `write::route::AdminRoute::parse`, `http::parse::{parse_id, percent_decode,
//! query_param}`, and the `ids=` / `limit=` parsers of `read::listing`.
//!
//! Properties: no input panics; a matched route is the path it came from (parameters
//! are the path's own text, ids re-render to the path's digits); a refusal maps to a
//! 4xx problem document; `percent_decode` is exactly RFC 3986's `%XX` decoding (two hex
//! digits, valid UTF-8), checked against a reference and by round trip.
#![no_main]

use catalog::http::parse::{parse_id, percent_decode, query_param};
use catalog::read::listing::{parse_ids, parse_limit};
use catalog::read::route::Route;
use catalog::write::route::AdminRoute;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match text.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (text, None),
    };
    storefront_route(path);
    admin_route(path);
    id(path);
    id(text.rsplit('/').next().unwrap_or(text));
    decoding(text);
    parameters(query);
});

fn storefront_route(path: &str) {
    match Route::parse(path) {
        Ok(route) => {
            let _ = route.label();
            match route {
                Route::Product(id) => {
                    let rest = path.strip_prefix("/products/").expect("product prefix");
                    assert_eq!(parse_id(rest), Ok(id));
                }
                Route::ProductBySku(sku) => {
                    assert!(!sku.is_empty() && !sku.contains('/'), "{path:?}");
                    assert_eq!(path, format!("/products/by-sku/{sku}"));
                }
                Route::CategoryProducts(slug) => {
                    assert!(!slug.is_empty() && !slug.contains('/'), "{path:?}");
                    assert_eq!(path, format!("/categories/{slug}/products"));
                }
                Route::Batch => assert_eq!(path, "/products"),
                Route::Categories => assert_eq!(path, "/categories"),
                Route::Healthz => assert_eq!(path, "/healthz"),
                Route::Readyz => assert_eq!(path, "/readyz"),
                Route::Metrics => assert_eq!(path, "/metrics"),
            }
        }
        Err(refused) => {
            let problem = refused.problem();
            assert!(problem.status.is_client_error(), "{refused:?}");
            let _ = problem.response();
        }
    }
}

fn admin_route(path: &str) {
    let Some(route) = AdminRoute::parse(path) else {
        return;
    };
    let _ = route.label();
    match route {
        AdminRoute::Product(raw) => assert_eq!(path, format!("/admin/products/{raw}")),
        AdminRoute::Category(slug) => assert_eq!(path, format!("/admin/categories/{slug}")),
        AdminRoute::Bulk => assert_eq!(path, "/admin/products/bulk"),
        AdminRoute::Purge => assert_eq!(path, "/admin/purge"),
        AdminRoute::Healthz | AdminRoute::Readyz | AdminRoute::Metrics => {}
    }
}

fn id(text: &str) {
    if let Ok(id) = parse_id(text) {
        assert!(id > 0);
        assert!(text.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
        assert_eq!(id.to_string(), text.trim_start_matches('0'));
        assert_eq!(parse_id(&id.to_string()), Ok(id));
    }
}

/// `%XX` with two hex digits, nothing else; the result must be UTF-8.
fn reference_decode(text: &str) -> Option<String> {
    let hex = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let high = hex(*bytes.get(i + 1)?)?;
            let low = hex(*bytes.get(i + 2)?)?;
            out.push((high << 4) | low);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn decoding(text: &str) {
    let decoded = percent_decode(text);
    assert_eq!(
        decoded.as_deref(),
        reference_decode(text).as_deref(),
        "percent_decode({text:?})"
    );
    // Any text survives encoding and decoding.
    assert_eq!(percent_decode(&percent_encode(text)).as_deref(), Some(text));
}

fn parameters(query: Option<&str>) {
    for name in ["ids", "limit", "cursor", ""] {
        if let (Some(query), Some(value)) = (query, query_param(query, name)) {
            let pair = format!("{name}={value}");
            assert!(
                query
                    .split('&')
                    .any(|p| p == pair || (value.is_empty() && p == name)),
                "{name:?} in {query:?} gave {value:?}"
            );
        }
    }
    match parse_ids(query_param(query, "ids")) {
        Ok(ids) => {
            assert!(!ids.is_empty() && ids.len() <= 200, "{query:?}");
            assert!(ids.iter().all(|&id| id > 0));
            for (i, id) in ids.iter().enumerate() {
                assert!(!ids[..i].contains(id), "duplicate {id} from {query:?}");
            }
        }
        Err(refused) => assert!(refused.problem().status.is_client_error()),
    }
    match parse_limit(query_param(query, "limit")) {
        Ok(limit) => assert!((1..=200).contains(&limit)),
        Err(refused) => assert!(refused.problem().status.is_client_error()),
    }
}
