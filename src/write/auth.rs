//! Bearer-token authentication of the admin face, compared in constant time.

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;

use super::error::WriteError;
use crate::config::Secret;

/// Checks `Authorization: Bearer <token>` against every admin token. Every token is
/// compared in full (no early exit), so timing reveals neither which token nor how much
/// of one matched; only a token's length can show.
pub fn authorize(headers: &HeaderMap, tokens: &[Secret]) -> Result<(), WriteError> {
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .ok_or(WriteError::Unauthenticated)?;
    let matched = tokens.iter().fold(false, |found, token| {
        found | constant_time_eq(token.expose(), given)
    });
    if matched {
        Ok(())
    } else {
        Err(WriteError::Forbidden)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(value: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            headers.insert(AUTHORIZATION, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn tokens_are_checked() {
        let tokens = [Secret::new("first-token"), Secret::new("second-token")];
        assert!(authorize(&headers(Some("Bearer second-token")), &tokens).is_ok());
        assert!(matches!(
            authorize(&headers(None), &tokens),
            Err(WriteError::Unauthenticated)
        ));
        assert!(matches!(
            authorize(&headers(Some("Basic abc")), &tokens),
            Err(WriteError::Unauthenticated)
        ));
        assert!(matches!(
            authorize(&headers(Some("Bearer second-tokeN")), &tokens),
            Err(WriteError::Forbidden)
        ));
        assert!(matches!(
            authorize(&headers(Some("Bearer x")), &[]),
            Err(WriteError::Forbidden)
        ));
    }
}
