//! Batch and listing helpers: parsing `ids=`, `limit=` and opaque keyset cursors, and
//! assembling response bodies by concatenating cached document bodies, as JSON or as
//! one gzip member spliced from the documents' gzip forms ([`crate::gzip`]).
//!
//! A cursor is the last product id of the page, scrambled and tagged with a 16-bit
//! checksum of the category's slug and the id: it is opaque, garbage and cursors
//! carried to another category are refused (but it is not a cryptographic seal: a
//! client that learns the scheme can make one, and gains nothing it could not get by
//! paging), and the server needs no state to resume. Keyset pagination (`product_id > cursor`)
//! returns every product of a category exactly once across pages, even while products
//! are inserted or removed between page requests.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::ReadError;
use super::limits::{DEFAULT_LIMIT, MAX_BATCH_IDS, MAX_LIMIT};
use crate::document::{Document, Gzipped};
use crate::gzip;
use crate::http::parse::{parse_id, percent_decode};

/// Makes cursors opaque; not a secret (the tag is what rejects garbage, which is all a
/// cursor needs). Also the multiplier of the batch's de-duplication filter (Fibonacci
/// hashing: its top bits spread consecutive ids).
const SCRAMBLE: u64 = 0x9E37_79B9_7F4A_7C15;

/// Parses `ids=1,2,3`: distinct ids in request order, 1 to [`MAX_BATCH_IDS`] of them.
pub fn parse_ids(raw: Option<&str>) -> Result<Vec<i64>, ReadError> {
    let raw = raw.ok_or_else(|| ReadError::InvalidIds("the ids parameter is missing".into()))?;
    let raw =
        percent_decode(raw).ok_or_else(|| ReadError::InvalidIds("bad percent-encoding".into()))?;
    let mut ids: Vec<i64> = Vec::new();
    // A 1,024-bit filter of the ids taken: an id whose bit is clear is new at once, and
    // only the others are looked for among the ids taken (a linear search for every id
    // cost about 3,000 instructions a batch of 50).
    let mut taken = [0u64; 16];
    // Split by hand: `str::split(',')` searched for each comma through `memchr`, which
    // cost more than the short parts between them (`bench/profile.sh 15 target/profile
    // batch`). Commas are ASCII, so every part is a `str` of its own.
    let mut rest = Some(raw.as_ref());
    while let Some(part) = next_part(&mut rest) {
        // ASCII whitespace first (the common case), then any other `str::trim` takes.
        let id = parse_id(part.trim_ascii())
            .or_else(|_| parse_id(part.trim()))
            .map_err(|_| ReadError::InvalidIds(format!("{part:?} is not a product id").into()))?;
        let bit = (id as u64).wrapping_mul(SCRAMBLE) >> 54;
        let (word, mask) = ((bit >> 6) as usize, 1u64 << (bit & 63));
        if taken[word] & mask == 0 || !ids.contains(&id) {
            taken[word] |= mask;
            if ids.len() == MAX_BATCH_IDS {
                let distinct = count_distinct(&raw);
                return Err(ReadError::TooManyIds(distinct));
            }
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The text before the next comma of `rest` (all of it when there is none), `rest`
/// moved past that comma; `None` once `rest` was taken whole.
fn next_part<'a>(rest: &mut Option<&'a str>) -> Option<&'a str> {
    let text = rest.take()?;
    match text.bytes().position(|b| b == b',') {
        Some(comma) => {
            *rest = Some(&text[comma + 1..]);
            Some(&text[..comma])
        }
        None => Some(text),
    }
}

fn count_distinct(raw: &str) -> usize {
    let mut all: Vec<&str> = raw.split(',').map(str::trim).collect();
    all.sort_unstable();
    all.dedup();
    all.len()
}

/// Parses `limit=`: default [`DEFAULT_LIMIT`], 1 to [`MAX_LIMIT`].
pub fn parse_limit(raw: Option<&str>) -> Result<i64, ReadError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_LIMIT);
    };
    match raw.parse::<i64>() {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(ReadError::InvalidLimit(raw.into())),
    }
}

fn tag(slug: &str, id: u64) -> u16 {
    // FNV-1a over the slug and the id.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in slug.bytes().chain(id.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash ^ (hash >> 16) ^ (hash >> 32) ^ (hash >> 48)) as u16
}

/// The cursor resuming `slug`'s listing after product `last_id`.
pub fn encode_cursor(slug: &str, last_id: i64) -> String {
    let id = last_id as u64;
    format!("{:016x}{:04x}", id ^ SCRAMBLE, tag(slug, id))
}

/// The product id a cursor resumes after; 0 (the start) when there is none.
pub fn decode_cursor(slug: &str, raw: Option<&str>) -> Result<i64, ReadError> {
    let Some(raw) = raw else {
        return Ok(0);
    };
    if raw.len() != 20 || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ReadError::InvalidCursor);
    }
    let scrambled = u64::from_str_radix(&raw[..16], 16).map_err(|_| ReadError::InvalidCursor)?;
    let check = u16::from_str_radix(&raw[16..], 16).map_err(|_| ReadError::InvalidCursor)?;
    let id = scrambled ^ SCRAMBLE;
    if tag(slug, id) != check || i64::try_from(id).is_err() {
        return Err(ReadError::InvalidCursor);
    }
    Ok(id as i64)
}

/// Where a listing's body is written: the JSON as it is, or a gzip member spliced
/// from the documents' gzip forms.
trait Sink {
    /// JSON between documents.
    fn put(&mut self, bytes: &[u8]);
    /// One document's body.
    fn document(&mut self, doc: &Document);
}

impl Sink for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.put_slice(bytes);
    }

    fn document(&mut self, doc: &Document) {
        self.put_slice(doc.body());
    }
}

/// A gzip member of a listing: each document's deflated bytes as they are (its gzip
/// form, which `form` hands out, made if it was not yet), the JSON around them stored.
struct GzipSink<F> {
    out: gzip::Assembler,
    form: F,
}

impl<F: FnMut(&Document) -> Option<Gzipped<'_>>> Sink for GzipSink<F> {
    fn put(&mut self, bytes: &[u8]) {
        self.out.literal(bytes);
    }

    fn document(&mut self, doc: &Document) {
        match (self.form)(doc) {
            Some(gzip) => self.out.piece(gzip.piece()),
            None => self.out.literal(doc.body()),
        }
    }
}

/// `{"items":[<bodies>],"missing":[<ids>]}`, by concatenation.
pub fn batch_body(docs: &[&Document], missing: &[i64]) -> Bytes {
    let size: usize = docs.iter().map(|d| d.body().len() + 1).sum::<usize>() + missing.len() * 20;
    let mut out = BytesMut::with_capacity(size + 32);
    write_batch(&mut out, docs, missing);
    out.freeze()
}

/// [`batch_body`] as a gzip member assembled from the documents' gzip forms, as `form`
/// hands them out (L1's, which re-weighs an entry whose form it made).
pub fn batch_gzip(
    docs: &[&Document],
    missing: &[i64],
    form: impl FnMut(&Document) -> Option<Gzipped<'_>>,
) -> Bytes {
    let mut out = GzipSink {
        out: gzip::Assembler::with_capacity(gzip_size(docs) + missing.len() * 20),
        form,
    };
    write_batch(&mut out, docs, missing);
    out.out.finish()
}

fn write_batch(out: &mut impl Sink, docs: &[&Document], missing: &[i64]) {
    out.put(b"{\"items\":[");
    put_bodies(out, docs);
    out.put(b"],\"missing\":[");
    let mut digits = itoa::Buffer::new();
    for (i, id) in missing.iter().enumerate() {
        if i > 0 {
            out.put(b",");
        }
        out.put(digits.format(*id).as_bytes());
    }
    out.put(b"]}");
}

/// `{"items":[<bodies>],"next_cursor":"..."|null}`, by concatenation.
pub fn page_body(docs: &[&Document], next_cursor: Option<&str>) -> Bytes {
    let size: usize = docs.iter().map(|d| d.body().len() + 1).sum();
    let mut out = BytesMut::with_capacity(size + 64);
    write_page(&mut out, docs, next_cursor);
    out.freeze()
}

/// [`page_body`] as a gzip member assembled from the documents' gzip forms, as `form`
/// hands them out.
pub fn page_gzip(
    docs: &[&Document],
    next_cursor: Option<&str>,
    form: impl FnMut(&Document) -> Option<Gzipped<'_>>,
) -> Bytes {
    let mut out = GzipSink {
        out: gzip::Assembler::with_capacity(gzip_size(docs) + 64),
        form,
    };
    write_page(&mut out, docs, next_cursor);
    out.out.finish()
}

fn write_page(out: &mut impl Sink, docs: &[&Document], next_cursor: Option<&str>) {
    out.put(b"{\"items\":[");
    put_bodies(out, docs);
    out.put(b"],\"next_cursor\":");
    match next_cursor {
        Some(cursor) => {
            out.put(b"\"");
            out.put(cursor.as_bytes());
            out.put(b"\"");
        }
        None => out.put(b"null"),
    }
    out.put(b"}");
}

fn put_bodies(out: &mut impl Sink, docs: &[&Document]) {
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.put(b",");
        }
        out.document(doc);
    }
}

/// About what a listing's gzip member takes: the documents' gzip forms where made, a
/// guess of half their JSON where not.
fn gzip_size(docs: &[&Document]) -> usize {
    docs.iter()
        .map(|d| d.gzip_held_bytes().unwrap_or(d.body().len() / 2) + 8)
        .sum()
}

/// Whether a listing of `docs` is worth gzip: some document in it is (the others go
/// in stored as they are).
pub fn worth_gzip(docs: &[&Document]) -> bool {
    docs.iter().any(|d| d.body().len() >= gzip::MIN_BODY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_request_order_without_duplicates() {
        assert_eq!(parse_ids(Some("3,1,3,2")).unwrap(), vec![3, 1, 2]);
        assert_eq!(parse_ids(Some("3%2C1")).unwrap(), vec![3, 1]);
        assert_eq!(parse_ids(Some(" 7 ,\t8,9\u{b}")).unwrap(), vec![7, 8, 9]);
        for bad in ["", "1,,2", "a", "1,-2", "0", "1,", ",1", "1,+2"] {
            assert!(
                matches!(parse_ids(Some(bad)), Err(ReadError::InvalidIds(_))),
                "{bad}"
            );
        }
        assert!(matches!(parse_ids(None), Err(ReadError::InvalidIds(_))));
    }

    #[test]
    fn two_hundred_distinct_ids_is_the_limit() {
        let list = |n: i64| (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        assert_eq!(parse_ids(Some(&list(200))).unwrap().len(), 200);
        assert_eq!(parse_ids(Some(&list(201))), Err(ReadError::TooManyIds(201)));
        // Duplicates do not count against the limit.
        let doubled = format!("{},{}", list(200), list(200));
        assert_eq!(parse_ids(Some(&doubled)).unwrap().len(), 200);
    }

    #[test]
    fn distinct_ids_sharing_a_filter_bit_are_all_kept() {
        use rand::{RngExt as _, SeedableRng as _};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        for _ in 0..500 {
            // Few distinct values over a wide range, repeated: collisions in the filter
            // and true duplicates both.
            let pool: Vec<i64> = (0..120).map(|_| rng.random_range(1..1_000_000)).collect();
            let asked: Vec<i64> = (0..190)
                .map(|_| pool[rng.random_range(0..pool.len())])
                .collect();
            let mut expected: Vec<i64> = Vec::new();
            for id in &asked {
                if !expected.contains(id) {
                    expected.push(*id);
                }
            }
            let raw = asked
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            assert_eq!(parse_ids(Some(&raw)).unwrap(), expected);
        }
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(parse_limit(None), Ok(DEFAULT_LIMIT));
        assert_eq!(parse_limit(Some("1")), Ok(1));
        assert_eq!(parse_limit(Some("200")), Ok(200));
        for bad in ["0", "201", "-1", "x", ""] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_are_bound_to_their_category() {
        for id in [1, 42, 999_999, i64::MAX] {
            let cursor = encode_cursor("lamps", id);
            assert_eq!(cursor.len(), 20);
            assert!(!cursor.contains(&id.to_string()) || id < 10);
            assert_eq!(decode_cursor("lamps", Some(&cursor)), Ok(id));
            assert_eq!(
                decode_cursor("desks", Some(&cursor)),
                Err(ReadError::InvalidCursor)
            );
        }
        assert_eq!(decode_cursor("lamps", None), Ok(0));
        for bad in ["", "xyz", "00000000000000000000", "ffffffffffffffffffff0"] {
            assert_eq!(
                decode_cursor("lamps", Some(bad)),
                Err(ReadError::InvalidCursor),
                "{bad}"
            );
        }
    }

    #[test]
    fn bodies_are_concatenated_into_valid_json() {
        let a = Document::new(1, 1, "A", b"{\"id\":1}");
        let b = Document::new(2, 1, "B", b"{\"id\":2}");
        let batch = batch_body(&[&a, &b], &[7, 9]);
        assert_eq!(
            &batch[..],
            br#"{"items":[{"id":1},{"id":2}],"missing":[7,9]}"#
        );
        assert_eq!(&batch_body(&[], &[])[..], br#"{"items":[],"missing":[]}"#);
        let page = page_body(&[&a], Some("c"));
        assert_eq!(&page[..], br#"{"items":[{"id":1}],"next_cursor":"c"}"#);
        assert_eq!(
            &page_body(&[], None)[..],
            br#"{"items":[],"next_cursor":null}"#
        );
    }

    #[test]
    fn gzip_listings_inflate_to_the_json_listings() {
        use crate::gzip::tests::inflate;
        let docs: Vec<Document> = (1..=50)
            .map(|id| {
                let body = format!(
                    r#"{{"id":{id},"name":"Lamp {id}","description":"{}"}}"#,
                    "warm light ".repeat(id as usize % 40)
                );
                Document::new(id, 1, "S", body.as_bytes())
            })
            .collect();
        let docs: Vec<&Document> = docs.iter().collect();
        assert!(
            docs.iter().any(|d| d.gzip().is_none()),
            "some below the threshold"
        );
        assert!(worth_gzip(&docs));
        assert!(!worth_gzip(&docs[..1]));
        // Half the forms are made ahead; the listing has the rest made, once.
        for doc in docs.iter().step_by(2) {
            doc.gzip();
        }
        let mut made = Vec::new();
        let batch = batch_gzip(&docs, &[7, 9], |doc| {
            let form = doc.gzip();
            if form.as_ref().is_some_and(|f| f.made) {
                made.push(doc.id);
            }
            form
        });
        assert_eq!(inflate(&batch), batch_body(&docs, &[7, 9]));
        assert!(batch.len() < batch_body(&docs, &[7, 9]).len() / 2);
        let expected: Vec<i64> = docs
            .iter()
            .skip(1)
            .step_by(2)
            .filter(|d| d.body().len() >= gzip::MIN_BODY)
            .map(|d| d.id)
            .collect();
        assert_eq!(made, expected);
        let mut made = 0;
        let page = page_gzip(&docs, Some("c"), |doc| {
            let form = doc.gzip();
            made += usize::from(form.as_ref().is_some_and(|f| f.made));
            form
        });
        assert_eq!(inflate(&page), page_body(&docs, Some("c")));
        assert_eq!(made, 0, "made once, not per listing");
        for (docs, cursor) in [(&docs[..0], None), (&docs[..1], Some("x"))] {
            assert_eq!(
                inflate(&page_gzip(docs, cursor, Document::gzip)),
                page_body(docs, cursor)
            );
            assert_eq!(
                inflate(&batch_gzip(docs, &[], Document::gzip)),
                batch_body(docs, &[])
            );
        }
    }
}
