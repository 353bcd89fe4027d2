//! Surrogate keys: the names an edge cache purges the storefront's answers by, shared by
//! the reader (which puts them on its answers) and the writer's edge purger (which
//! purges them as changes are published).
//!
//! - `p<id>`: a product's document, and every batch that holds it;
//! - `c:<slug>`: a category's pages;
//! - `categories`: `GET /categories`.

use hyper::header::HeaderName;

/// The header Varnish's xkey module reads surrogate keys from.
pub const XKEY: HeaderName = HeaderName::from_static("xkey");
/// The header hosted CDNs (Fastly, and others after it) read surrogate keys from.
pub const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
/// The first byte of a product's key, before its id.
pub const PRODUCT_PREFIX: u8 = b'p';
/// The surrogate key of `/categories`.
pub const CATEGORIES_KEY: &str = "categories";

/// The surrogate key of a product.
pub fn product_key(id: i64) -> String {
    format!("{}{id}", PRODUCT_PREFIX as char)
}

/// The surrogate key of a category's pages.
pub fn category_key(slug: &str) -> String {
    format!("c:{slug}")
}
