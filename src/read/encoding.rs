//! Content negotiation of documents and listings: whether a request's
//! `Accept-Encoding` (RFC 9110 §12.5.3) lets it have gzip.
//!
//! gzip is chosen when the request accepts it (`gzip` or `x-gzip`, else `*`, with a
//! q-value above 0) at least as much as `identity`; anything else gets the JSON as it
//! is. No `Accept-Encoding` at all gets identity (any coding would do, identity is what
//! every client reads). The parse allocates nothing; a malformed element counts as
//! absent, and a malformed q-value as 0.

use hyper::header::{ACCEPT_ENCODING, HeaderMap};

/// The representation a response is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The JSON bytes as they are.
    Identity,
    /// `Content-Encoding: gzip`.
    Gzip,
}

/// What the request's `Accept-Encoding` fields (all of them) allow.
pub fn negotiate(headers: &HeaderMap) -> Encoding {
    let mut gzip: Option<u16> = None;
    let mut identity: Option<u16> = None;
    let mut any: Option<u16> = None;
    for field in headers.get_all(ACCEPT_ENCODING) {
        for element in field.as_bytes().split(|&b| b == b',') {
            let mut parts = element.split(|&b| b == b';');
            let coding = parts.next().unwrap_or_default().trim_ascii();
            let q = parts
                .find_map(|param| {
                    let (name, value) = split_once(param.trim_ascii(), b'=')?;
                    name.trim_ascii()
                        .eq_ignore_ascii_case(b"q")
                        .then(|| qvalue(value.trim_ascii()))
                })
                .unwrap_or(Some(1000))
                .unwrap_or(0);
            let slot =
                if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
                    &mut gzip
                } else if coding.eq_ignore_ascii_case(b"identity") {
                    &mut identity
                } else if coding == b"*" {
                    &mut any
                } else {
                    continue;
                };
            // Listed twice: the most favourable wins.
            *slot = Some(slot.map_or(q, |old| old.max(q)));
        }
    }
    let gzip = gzip.or(any).unwrap_or(0);
    // identity is acceptable unless refused by name or by `*;q=0` (RFC 9110 §12.5.3).
    let identity = identity.or(any).unwrap_or(1);
    if gzip > 0 && gzip >= identity {
        Encoding::Gzip
    } else {
        Encoding::Identity
    }
}

fn split_once(bytes: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = bytes.iter().position(|&b| b == at)?;
    Some((&bytes[..i], &bytes[i + 1..]))
}

/// A q-value in thousandths: `0`, `0.5`, `1.000`; `None` if malformed.
fn qvalue(raw: &[u8]) -> Option<u16> {
    let (int, frac) = split_once(raw, b'.').unwrap_or((raw, b""));
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for i in 0..3 {
        thousandths = thousandths * 10 + frac.get(i).map_or(0, |d| u16::from(d - b'0'));
    }
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with(values: &[&'static str]) -> Encoding {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(ACCEPT_ENCODING, HeaderValue::from_static(value));
        }
        negotiate(&headers)
    }

    #[test]
    fn gzip_when_accepted_with_a_positive_q() {
        for accepted in [
            "gzip",
            "GZIP",
            "x-gzip",
            "gzip, deflate, br",
            "br;q=1.0, gzip;q=0.8, *;q=0.1",
            "*",
            "*;q=0.5",
            "deflate, *",
            "gzip;q=0.001",
            " gzip ; q=1 ",
            "gzip;level=9",
            "gzip;q=0.5, identity;q=0.5",
            "identity;q=0, *",
        ] {
            assert_eq!(with(&[accepted]), Encoding::Gzip, "{accepted:?}");
        }
        // Several fields are one list.
        assert_eq!(with(&["br", "gzip"]), Encoding::Gzip);
    }

    #[test]
    fn identity_otherwise() {
        for refused in [
            "",
            "identity",
            "br, deflate",
            "gzip;q=0",
            "gzip;q=0.000",
            "gzip;q=0, *",
            "*;q=0",
            "gzip;q=0.5, identity",
            "gzip;q=2",
            "gzip;q=1.5",
            "gzip;q=0.1234",
            "gzip;q=",
            "gzip;q=abc",
            "gzipx",
            "br;q=1, *;q=0",
        ] {
            assert_eq!(with(&[refused]), Encoding::Identity, "{refused:?}");
        }
        assert_eq!(with(&[]), Encoding::Identity, "no Accept-Encoding");
        assert_eq!(
            with(&["gzip;q=0", "gzip"]),
            Encoding::Gzip,
            "listed twice: the better q"
        );
    }

    #[test]
    fn qvalues_parse_to_thousandths() {
        for (raw, q) in [
            ("0", Some(0)),
            ("0.", Some(0)),
            ("0.5", Some(500)),
            ("0.25", Some(250)),
            ("0.125", Some(125)),
            ("1", Some(1000)),
            ("1.0", Some(1000)),
            ("1.000", Some(1000)),
            ("1.001", None),
            ("2", None),
            (".5", None),
            ("0.5x", None),
        ] {
            assert_eq!(qvalue(raw.as_bytes()), q, "{raw}");
        }
    }
}
