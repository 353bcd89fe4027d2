//! Parsing both faces share: product ids in paths, percent-decoding, query parameters.
//!
//! Each parser is total (any input gives a value or an error, never a panic) and
//! allocates only when it must (`percent_decode` of text that holds escapes).

use std::borrow::Cow;

/// Text that is not a product id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidId;

/// Parses a product id: decimal digits, 1 to `i64::MAX`. One pass over the bytes, no
/// sign or whitespace accepted (`str::parse` takes a `+`, and validating first then
/// parsing read every byte twice: this runs once per id of every batch, and on every
/// hit).
pub fn parse_id(text: &str) -> Result<i64, InvalidId> {
    let bytes = text.as_bytes();
    // 19 digits hold `i64::MAX` and cannot overflow a `u64` (below 1.9e19).
    if bytes.is_empty() || bytes.len() > 19 {
        return Err(InvalidId);
    }
    let mut id: u64 = 0;
    for &byte in bytes {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return Err(InvalidId);
        }
        id = id * 10 + u64::from(digit);
    }
    match i64::try_from(id) {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(InvalidId),
    }
}

/// The value of query parameter `name`, still percent-encoded.
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// Decodes `%XX` escapes, `X` a hex digit (`+` stays `+`: no parameter here uses form
/// encoding). `None` for a malformed escape or invalid UTF-8.
pub fn percent_decode(text: &str) -> Option<Cow<'_, str>> {
    if !text.contains('%') {
        return Some(Cow::Borrowed(text));
    }
    // Not `u8::from_str_radix`, which takes a sign: `%+C` would decode to a form feed.
    let hex = |i: usize| {
        text.as_bytes()
            .get(i)
            .and_then(|&b| char::from(b).to_digit(16))
    };
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(((hex(i + 1)? << 4) | hex(i + 2)?) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positive_decimal_i64() {
        assert_eq!(parse_id("1"), Ok(1));
        assert_eq!(parse_id("9223372036854775807"), Ok(i64::MAX));
        for bad in [
            "0",
            "-1",
            "+1",
            "1.5",
            "abc",
            "",
            " 1",
            "9223372036854775808",
            "9999999999999999999",
            "99999999999999999999",
            "1/",
            "1:",
        ] {
            assert_eq!(parse_id(bad), Err(InvalidId), "{bad}");
        }
    }

    #[test]
    fn query_parameters_are_found_by_name() {
        let q = Some("limit=5&cursor=abc&flag");
        assert_eq!(query_param(q, "limit"), Some("5"));
        assert_eq!(query_param(q, "cursor"), Some("abc"));
        assert_eq!(query_param(q, "flag"), Some(""));
        assert_eq!(query_param(q, "ids"), None);
        assert_eq!(query_param(None, "ids"), None);
    }

    #[test]
    fn percent_escapes_decode() {
        assert_eq!(percent_decode("a%2Cb").as_deref(), Some("a,b"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        // Two hex digits, nothing else: no sign, no partial escape.
        for bad in ["%+C", "1%+9", "%+1", "%-1", "% 1", "%1", "a%", "%é"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }
}
