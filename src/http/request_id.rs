//! The `X-Request-Id` of each request: the client's (or a proxy's) when it is usable,
//! else a new one made without formatting, this process's random tag and a counter.

use std::sync::atomic::{AtomicU64, Ordering};

use hyper::header::HeaderValue;

use super::X_REQUEST_ID;

/// Longest request id passed through.
const MAX_REQUEST_ID: usize = 128;

/// The request's own id if it sent a usable one (1 to 128 visible ASCII characters),
/// else a new one: this process's random tag and a counter, unique per process.
pub(super) fn request_id(headers: &hyper::HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get(X_REQUEST_ID)
        && (1..=MAX_REQUEST_ID).contains(&given.len())
        && given.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return given.clone();
    }
    static TAG: std::sync::OnceLock<[u8; 8]> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tag = TAG.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut tag = [0; 8];
        hex(
            u64::from(nanos ^ std::process::id().rotate_left(16)),
            &mut tag,
        );
        tag
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // `<tag>-<n>`, both in hex, written by hand: this runs on every hit of a client that
    // sends no id, where `format!` cost a few hundred instructions.
    let mut id = [0; 8 + 1 + 16];
    id[..8].copy_from_slice(tag);
    id[8] = b'-';
    let digits = (u64::BITS - n.leading_zeros()).div_ceil(4).max(1) as usize;
    hex(n, &mut id[9..9 + digits]);
    HeaderValue::from_bytes(&id[..9 + digits]).expect("hex digits form a header value")
}

/// Writes the low `out.len()` hex digits of `n` into `out`, most significant first.
fn hex(mut n: u64, out: &mut [u8]) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_process_tag_and_a_hex_counter_unless_the_client_sent_one() {
        let none = hyper::HeaderMap::new();
        let ids: Vec<String> = (0..40)
            .map(|_| request_id(&none).to_str().unwrap().to_owned())
            .collect();
        let (tag, _) = ids[0].split_once('-').unwrap();
        let counters: Vec<u64> = ids
            .iter()
            .map(|id| {
                let (t, n) = id.split_once('-').expect("tag-counter");
                assert_eq!(t, tag, "{id}");
                assert_eq!(t.len(), 8, "{id}");
                assert!(!n.starts_with('0') || n == "0", "no leading zero: {id}");
                u64::from_str_radix(n, 16).expect("hex")
            })
            .collect();
        // Other tests draw ids too: increasing, not always consecutive.
        assert!(counters.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let mut digits = [0; 16];
        hex(u64::MAX, &mut digits);
        assert_eq!(&digits, b"ffffffffffffffff");
        hex(0x1a, &mut digits[..3]);
        assert_eq!(&digits[..3], b"01a");

        let mut given = hyper::HeaderMap::new();
        given.insert(X_REQUEST_ID, HeaderValue::from_static("trace-42"));
        assert_eq!(request_id(&given), "trace-42");
        given.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&given), "has space", "not visible ASCII only");
    }
}
