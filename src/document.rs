//! The product document: the exact JSON bytes a storefront receives, rendered once per
//! version and shared by every cache tier.
//!
//! A [`Document`] is immutable: its body is a `Bytes` that a cache hit clones (a
//! reference-count increment) and writes; its `ETag` and surrogate-key headers are built
//! with it. What a
//! tier can know about an id is a [`Lookup`]: a live document, a version that is gone
//! (deleted or deactivated: a tombstone), or nothing at all.

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::HeaderValue;
use serde::Serialize;
use serde_json::value::RawValue;

/// One product as served: pre-serialized JSON and the headers derived from its version.
///
/// The body, the `ETag`, the surrogate key and the SKU live in one exactly sized buffer
/// that the four fields slice: an entry costs that buffer, `bytes`' shared header and this struct,
/// whatever buffer the body arrived in (a serializer's doubled `Vec`, a slice of a Redis
/// reply holding many values).
#[derive(Debug, Clone)]
pub struct Document {
    /// Product id.
    pub id: i64,
    /// The row's version; every write increments it.
    pub version: i64,
    /// The exact response body.
    pub body: Bytes,
    /// `ETag` value, `"<version>"`, built once.
    pub etag: HeaderValue,
    /// The product's surrogate key, `p<id>`, which an edge cache purges it by.
    pub key: HeaderValue,
    /// The product's SKU (UTF-8), to check `by-sku` lookups against.
    sku: Bytes,
    /// When this copy was read from its source (PostgreSQL or Redis): its age is the
    /// HTTP `Age` of a stale answer, and drives refresh-ahead and expiry in L1.
    pub loaded: std::time::Instant,
}

/// Two copies are the same document whenever they were loaded.
impl PartialEq for Document {
    fn eq(&self, other: &Self) -> bool {
        (self.id, self.version, &self.body, &self.etag, &self.sku)
            == (
                other.id,
                other.version,
                &other.body,
                &other.etag,
                &other.sku,
            )
    }
}

impl Eq for Document {}

impl Document {
    /// Copies an already-rendered body into the document's own buffer.
    pub fn new(id: i64, version: i64, sku: &str, body: &[u8]) -> Self {
        let (mut version_digits, mut id_digits) = (itoa::Buffer::new(), itoa::Buffer::new());
        let version_digits = version_digits.format(version).as_bytes();
        let id_digits = id_digits.format(id).as_bytes();
        let etag_end = body.len() + version_digits.len() + 2;
        let key_end = etag_end + 1 + id_digits.len();
        let mut buffer = Vec::with_capacity(key_end + sku.len());
        buffer.extend_from_slice(body);
        buffer.push(b'"');
        buffer.extend_from_slice(version_digits);
        buffer.push(b'"');
        buffer.push(crate::http::surrogate::PRODUCT_PREFIX);
        buffer.extend_from_slice(id_digits);
        buffer.extend_from_slice(sku.as_bytes());
        let buffer = Bytes::from(buffer);
        let header = |range: std::ops::Range<usize>| {
            HeaderValue::from_maybe_shared(buffer.slice(range))
                .expect("digits, quotes and a letter are a valid header value")
        };
        Self {
            id,
            version,
            body: buffer.slice(..body.len()),
            etag: header(body.len()..etag_end),
            key: header(etag_end..key_end),
            sku: buffer.slice(key_end..),
            loaded: std::time::Instant::now(),
        }
    }

    /// The product's SKU.
    pub fn sku(&self) -> &str {
        std::str::from_utf8(&self.sku).expect("built from a str")
    }
}

/// The strong `ETag` of a version.
pub fn etag(version: i64) -> HeaderValue {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(version);
    let mut value = Vec::with_capacity(digits.len() + 2);
    value.push(b'"');
    value.extend_from_slice(digits.as_bytes());
    value.push(b'"');
    HeaderValue::from_bytes(&value).expect("digits and quotes are a valid header value")
}

/// What a tier knows about one product id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A live, active product.
    Found(Arc<Document>),
    /// The product existed but is deleted or inactive, as of `version`.
    Gone {
        /// The version of the tombstone.
        version: i64,
    },
    /// No product ever had this id (or it was purged).
    Unknown,
}

impl Lookup {
    /// The version this lookup reflects; `Unknown` is older than any write.
    pub fn version(&self) -> i64 {
        match self {
            Self::Found(doc) => doc.version,
            Self::Gone { version } => *version,
            Self::Unknown => 0,
        }
    }
}

/// One product row as loaded from PostgreSQL, before rendering.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProductRow {
    /// Product id.
    pub id: i64,
    /// Stock-keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Long description.
    pub description: String,
    /// Brand name.
    pub brand: String,
    /// Price in minor units.
    pub price_amount: i64,
    /// ISO-4217 currency.
    pub currency: String,
    /// Units in stock.
    pub stock: i32,
    /// Free-form attributes, JSON object text.
    pub attributes: String,
    /// Image URLs, JSON array text.
    pub images: String,
    /// Slugs of the product's categories, sorted.
    pub categories: Vec<String>,
    /// Row version.
    pub version: i64,
    /// RFC 3339 UTC timestamp of the last write.
    pub updated_at: String,
    /// Whether the storefront may show it (not deleted, active).
    pub visible: bool,
}

/// The document's field order: stable, and the order clients see.
#[derive(Serialize)]
struct Wire<'a> {
    id: i64,
    sku: &'a str,
    name: &'a str,
    description: &'a str,
    brand: &'a str,
    price: Price<'a>,
    stock: i32,
    attributes: &'a RawValue,
    images: &'a RawValue,
    categories: &'a [String],
    version: i64,
    updated_at: &'a str,
}

#[derive(Serialize)]
struct Price<'a> {
    amount: i64,
    currency: &'a str,
}

impl ProductRow {
    /// Renders the row into what the caches hold.
    pub fn into_lookup(self) -> Result<Lookup, serde_json::Error> {
        if !self.visible {
            return Ok(Lookup::Gone {
                version: self.version,
            });
        }
        let attributes: Box<RawValue> = serde_json::from_str(&self.attributes)?;
        let images: Box<RawValue> = serde_json::from_str(&self.images)?;
        let wire = Wire {
            id: self.id,
            sku: &self.sku,
            name: &self.name,
            description: &self.description,
            brand: &self.brand,
            price: Price {
                amount: self.price_amount,
                currency: &self.currency,
            },
            stock: self.stock,
            attributes: &attributes,
            images: &images,
            categories: &self.categories,
            version: self.version,
            updated_at: &self.updated_at,
        };
        let body = serde_json::to_vec(&wire)?;
        Ok(Lookup::Found(Arc::new(Document::new(
            self.id,
            self.version,
            &self.sku,
            &body,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> ProductRow {
        ProductRow {
            id: 7,
            sku: "ACM-LAM-7".into(),
            name: "Desk \"Lamp\"".into(),
            description: "Bright".into(),
            brand: "Acme".into(),
            price_amount: 2999,
            currency: "EUR".into(),
            stock: 3,
            attributes: r#"{"color": "red"}"#.into(),
            images: r#"["https://img/1.jpg"]"#.into(),
            categories: vec!["lamps".into(), "office".into()],
            version: 4,
            updated_at: "2026-01-02T03:04:05.000006Z".into(),
            visible: true,
        }
    }

    #[test]
    fn renders_fields_in_the_documented_order() {
        let Lookup::Found(doc) = row().into_lookup().unwrap() else {
            panic!("not found")
        };
        assert_eq!(
            std::str::from_utf8(&doc.body).unwrap(),
            r#"{"id":7,"sku":"ACM-LAM-7","name":"Desk \"Lamp\"","description":"Bright","brand":"Acme","price":{"amount":2999,"currency":"EUR"},"stock":3,"attributes":{"color": "red"},"images":["https://img/1.jpg"],"categories":["lamps","office"],"version":4,"updated_at":"2026-01-02T03:04:05.000006Z"}"#
        );
        assert_eq!(doc.etag, "\"4\"");
        assert_eq!(doc.key, "p7");
        assert_eq!(doc.sku(), "ACM-LAM-7");
    }

    #[test]
    fn invisible_rows_are_tombstones_with_their_version() {
        let hidden = ProductRow {
            visible: false,
            ..row()
        };
        assert_eq!(hidden.into_lookup().unwrap(), Lookup::Gone { version: 4 });
        assert_eq!(Lookup::Unknown.version(), 0);
    }
}
