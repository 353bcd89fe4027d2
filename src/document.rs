//! The product document: the exact JSON bytes a storefront receives, rendered once per
//! version and shared by every cache tier.
//!
//! A [`Document`] is immutable: its body is a `Bytes` that a cache hit clones (a
//! reference-count increment) and writes; its `ETag` and surrogate-key headers are built
//! with it. Its gzip form is made the first time a response needs it
//! ([`Document::gzip`]) and kept with it. What a
//! tier can know about an id is a [`Lookup`]: a live document, a version that is gone
//! (deleted or deactivated: a tombstone), or nothing at all. A document's age is taken
//! at a [`Tick`], the clock reading it keeps its load time as; it is rendered from a
//! [`ProductRow`], as PostgreSQL answers the product query.

use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::HeaderValue;
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::Row as _;
use sqlx::postgres::PgRow;

use crate::gzip;

/// The reference point of [`Tick`]: a document keeps its load time as nanoseconds since
/// this instant, 8 bytes rather than an `Instant`'s 16.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A clock reading as nanoseconds since [`EPOCH`], the form a document keeps its load
/// time in: a document's age at a tick is one subtraction, where with `Instant`s the
/// load time had to be turned back into one first. A lookup takes its tick once and
/// ages every document it touches at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(u64);

impl Tick {
    /// The clock now.
    pub fn now() -> Self {
        Self::of(Instant::now())
    }

    /// The tick of `instant` (a reading taken before the epoch counts as the epoch).
    pub fn of(instant: Instant) -> Self {
        let since = instant.saturating_duration_since(*EPOCH);
        Self(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
impl std::ops::Add<Duration> for Tick {
    type Output = Self;

    fn add(self, later: Duration) -> Self {
        Self(self.0 + u64::try_from(later.as_nanos()).unwrap())
    }
}

#[cfg(test)]
impl std::ops::Sub<Duration> for Tick {
    type Output = Self;

    fn sub(self, earlier: Duration) -> Self {
        Self(self.0 - u64::try_from(earlier.as_nanos()).unwrap())
    }
}

/// One product as served: pre-serialized JSON and the headers derived from its version.
///
/// The body, the `ETag`, the surrogate key and the SKU live in one exactly sized buffer,
/// and the document keeps only that buffer, where each part ends, and the place of its
/// gzip form: 80 bytes beside the
/// buffer, whatever buffer the body arrived in (a serializer's doubled `Vec`, a slice of a
/// Redis reply holding many values). The headers are sliced from the buffer when a
/// response needs them (a reference-count increment each, as cloning them was). L1 holds
/// a million of these: every byte here is a megabyte there (`bench/memory.sh`).
#[derive(Debug, Clone)]
pub struct Document {
    /// Product id.
    pub id: i64,
    /// The row's version; every write increments it.
    pub version: i64,
    /// Body, then `ETag` (`"<version>"`), surrogate key (`p<id>`) and SKU (UTF-8).
    buffer: Bytes,
    /// When this copy was read from its source (PostgreSQL or Redis): see
    /// [`Document::age_at`].
    loaded: Tick,
    /// Where the body ends in `buffer`.
    body_end: u32,
    /// The lengths of the `ETag` and of the surrogate key that follow the body.
    etag_len: u8,
    key_len: u8,
    /// The gzip form, made on first demand ([`Document::gzip`]) and then kept: a gzip
    /// member, then its `ETag` (`"<version>-gz"`). Boxed, so that a document no client
    /// asks gzip of costs 16 bytes for it, not 40.
    gzip: OnceLock<Box<Bytes>>,
}

/// A document's gzip form (see [`Document::gzip`]).
#[derive(Debug, Clone, Copy)]
pub struct Gzipped<'a> {
    /// The gzip member, then its `ETag`.
    buffer: &'a Bytes,
    /// Where the member ends.
    member_end: usize,
    /// Whether this call made it (what the document holds grew: L1 re-weighs it).
    pub made: bool,
}

impl Gzipped<'_> {
    /// The gzip member, as a response body; shares the buffer.
    pub fn member(&self) -> Bytes {
        self.buffer.slice(..self.member_end)
    }

    /// The `ETag` of the gzip representation, `"<version>-gz"`; shares the buffer.
    pub fn etag(&self) -> HeaderValue {
        HeaderValue::from_maybe_shared(self.buffer.slice(self.member_end..))
            .expect("digits, quotes and letters are a valid header value")
    }

    /// The deflated bytes a listing splices.
    pub fn piece(&self) -> gzip::Piece<'_> {
        gzip::Piece::of(&self.buffer[..self.member_end])
    }
}

/// Two copies are the same document whenever they were loaded.
impl PartialEq for Document {
    fn eq(&self, other: &Self) -> bool {
        (self.id, self.version, self.body_end, &self.buffer)
            == (other.id, other.version, other.body_end, &other.buffer)
    }
}

impl Eq for Document {}

impl Document {
    /// Copies an already-rendered body into the document's own buffer.
    ///
    /// # Panics
    ///
    /// If the body is 4 GiB or more.
    pub fn new(id: i64, version: i64, sku: &str, body: &[u8]) -> Self {
        let (mut version_digits, mut id_digits) = (itoa::Buffer::new(), itoa::Buffer::new());
        let version_digits = version_digits.format(version).as_bytes();
        let id_digits = id_digits.format(id).as_bytes();
        let mut buffer =
            Vec::with_capacity(body.len() + version_digits.len() + 3 + id_digits.len() + sku.len());
        buffer.extend_from_slice(body);
        buffer.push(b'"');
        buffer.extend_from_slice(version_digits);
        buffer.push(b'"');
        buffer.push(crate::http::surrogate::PRODUCT_PREFIX);
        buffer.extend_from_slice(id_digits);
        buffer.extend_from_slice(sku.as_bytes());
        Self {
            id,
            version,
            buffer: Bytes::from(buffer),
            loaded: Tick::now(),
            body_end: u32::try_from(body.len()).expect("a document body under 4 GiB"),
            // at most 20 digits and a sign, and two quotes or a prefix
            etag_len: u8::try_from(version_digits.len() + 2).expect("an i64's digits"),
            key_len: u8::try_from(id_digits.len() + 1).expect("an i64's digits"),
            gzip: OnceLock::new(),
        }
    }

    /// The gzip form of the body, made on the first call and kept (compressed once per
    /// version); `None` for a body under [`gzip::MIN_BODY`] bytes, which gzip would not
    /// make worth its cost.
    pub fn gzip(&self) -> Option<Gzipped<'_>> {
        if (self.body_end as usize) < gzip::MIN_BODY {
            return None;
        }
        let mut made = false;
        let buffer = self.gzip.get_or_init(|| {
            made = true;
            let etag = &self.buffer[self.etag_range()];
            let etag = [&etag[..etag.len() - 1], b"-gz\""].concat();
            Box::new(gzip::member(self.body(), &etag))
        });
        Some(Gzipped {
            buffer,
            member_end: buffer.len() - usize::from(self.etag_len) - 3,
            made,
        })
    }

    /// The bytes of the gzip form once made (the member and its `ETag`).
    pub fn gzip_held_bytes(&self) -> Option<usize> {
        self.gzip.get().map(|buffer| buffer.len())
    }

    fn etag_range(&self) -> std::ops::Range<usize> {
        let start = self.body_end as usize;
        start..start + usize::from(self.etag_len)
    }

    fn key_range(&self) -> std::ops::Range<usize> {
        let start = self.body_end as usize + usize::from(self.etag_len);
        start..start + usize::from(self.key_len)
    }

    fn header(&self, range: std::ops::Range<usize>) -> HeaderValue {
        HeaderValue::from_maybe_shared(self.buffer.slice(range))
            .expect("digits, quotes and a letter are a valid header value")
    }

    /// The exact response body.
    pub fn body(&self) -> &[u8] {
        &self.buffer[..self.body_end as usize]
    }

    /// The body as a response takes it: shares the buffer (a reference-count increment).
    pub fn body_bytes(&self) -> Bytes {
        self.buffer.slice(..self.body_end as usize)
    }

    /// `ETag` value, `"<version>"`; shares the buffer.
    pub fn etag(&self) -> HeaderValue {
        self.header(self.etag_range())
    }

    /// The product's surrogate key, `p<id>`, which an edge cache purges it by; shares the
    /// buffer.
    pub fn key(&self) -> HeaderValue {
        self.header(self.key_range())
    }

    /// The surrogate key as text.
    pub fn key_str(&self) -> &str {
        std::str::from_utf8(&self.buffer[self.key_range()]).expect("a letter and digits")
    }

    /// The product's SKU.
    pub fn sku(&self) -> &str {
        let start = self.key_range().end;
        std::str::from_utf8(&self.buffer[start..]).expect("built from a str")
    }

    /// How long before `now` this copy was read from its source (PostgreSQL or Redis):
    /// the HTTP `Age` of a stale answer; it drives refresh-ahead and expiry in L1.
    pub fn age_at(&self, now: Tick) -> Duration {
        Duration::from_nanos(now.0.saturating_sub(self.loaded.0))
    }

    /// When this copy was read from its source.
    #[cfg(test)]
    pub(crate) fn loaded(&self) -> Tick {
        self.loaded
    }

    /// The bytes of the document's buffer (body, `ETag`, surrogate key, SKU): what it
    /// holds beyond its fixed size.
    pub fn held_bytes(&self) -> usize {
        self.buffer.len()
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

/// One product row as loaded from PostgreSQL, before rendering: the columns of
/// `crate::store::catalog`'s product query, in its order.
#[derive(Debug, Clone)]
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

impl<'r> sqlx::FromRow<'r, PgRow> for ProductRow {
    /// By position: a column named for each field cost a hash of its name per field per
    /// row (sqlx looks names up in a `HashMap`), in every fill and every relay round.
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get(0)?,
            sku: row.try_get(1)?,
            name: row.try_get(2)?,
            description: row.try_get(3)?,
            brand: row.try_get(4)?,
            price_amount: row.try_get(5)?,
            currency: row.try_get(6)?,
            stock: row.try_get(7)?,
            attributes: row.try_get(8)?,
            images: row.try_get(9)?,
            categories: row.try_get(10)?,
            version: row.try_get(11)?,
            updated_at: row.try_get(12)?,
            visible: row.try_get(13)?,
        })
    }
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
            std::str::from_utf8(doc.body()).unwrap(),
            r#"{"id":7,"sku":"ACM-LAM-7","name":"Desk \"Lamp\"","description":"Bright","brand":"Acme","price":{"amount":2999,"currency":"EUR"},"stock":3,"attributes":{"color": "red"},"images":["https://img/1.jpg"],"categories":["lamps","office"],"version":4,"updated_at":"2026-01-02T03:04:05.000006Z"}"#
        );
        assert_eq!(doc.etag(), "\"4\"");
        assert_eq!(doc.key(), "p7");
        assert_eq!(doc.key_str(), "p7");
        assert_eq!(doc.sku(), "ACM-LAM-7");
        assert_eq!(&doc.body_bytes()[..], doc.body());
        assert_eq!(
            doc.held_bytes(),
            doc.body().len() + "\"4\"p7ACM-LAM-7".len()
        );
        let age = doc.age_at(Tick::now());
        assert!(age < Duration::from_secs(5), "loaded {age:?} ago");
        let later = Tick::of(Instant::now() + Duration::from_secs(7));
        assert!(doc.age_at(later) >= Duration::from_secs(7));
        assert_eq!(
            doc.age_at(Tick::of(*EPOCH)),
            Duration::ZERO,
            "no age before loading"
        );
    }

    #[test]
    fn the_gzip_form_is_made_once_and_inflates_to_the_body() {
        let Lookup::Found(doc) = row().into_lookup().unwrap() else {
            panic!("not found")
        };
        assert_eq!(doc.gzip_held_bytes(), None, "made before it was asked for");
        let first = doc.gzip().expect("a document above the threshold");
        assert!(first.made);
        assert_eq!(crate::gzip::tests::inflate(&first.member()), doc.body());
        assert_eq!(first.etag(), "\"4-gz\"");
        let held = doc.gzip_held_bytes().unwrap();
        assert_eq!(held, first.member().len() + "\"4-gz\"".len());
        let second = doc.gzip().unwrap();
        assert!(!second.made, "made twice");
        assert_eq!(second.member(), first.member());
        assert!(
            Document::new(1, 1, "A", &[b' '; gzip::MIN_BODY - 1])
                .gzip()
                .is_none(),
            "a small body is not worth gzip"
        );
    }

    #[test]
    fn a_document_keeps_80_bytes_beside_its_buffer() {
        // What L1 charges per entry counts on it (`src/cache/weigh.rs`, `bench/memory.sh`).
        assert_eq!(std::mem::size_of::<Document>(), 80);
        let a = Document::new(1, 2, "AB", b"{}");
        let b = Document::new(1, 2, "AB", b"{}");
        assert!(b.loaded >= a.loaded);
        assert_eq!(a, b, "the same document whenever loaded");
        assert_ne!(a, Document::new(1, 3, "AB", b"{}"));
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
