//! Bearer-token authentication of the admin face.
//!
//! Configured tokens are kept only as SHA-256 digests: an entry of
//! `CATALOG_ADMIN_TOKENS` is either a token (hashed at start) or `sha256:<64 hex>`, the
//! digest of one, so a deployment's configuration need not hold the tokens themselves
//! (`printf %s "$TOKEN" | sha256sum`). A presented token is hashed and compared with
//! every digest in full, in constant time: timing reveals neither which token matched,
//! nor how much of one, nor its length.

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use sha2::{Digest as _, Sha256};

use super::error::WriteError;
use crate::config::{Secret, parse_digest};

/// The admin tokens a writer accepts, as digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokens(Vec<[u8; 32]>);

impl AdminTokens {
    /// The digests of the configured entries; an entry that is not a well-formed digest
    /// is a token and is hashed (configuration has checked both forms).
    pub fn new(entries: &[Secret]) -> Self {
        Self(
            entries
                .iter()
                .map(|entry| digest_of(entry.expose()))
                .collect(),
        )
    }

    /// Whether no token is accepted at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The digest a configuration entry stands for.
fn digest_of(entry: &[u8]) -> [u8; 32] {
    parse_digest(entry).unwrap_or_else(|| Sha256::digest(entry).into())
}

/// Checks `Authorization: Bearer <token>` against every admin token.
pub fn authorize(headers: &HeaderMap, tokens: &AdminTokens) -> Result<(), WriteError> {
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .ok_or(WriteError::Unauthenticated)?;
    let given: [u8; 32] = Sha256::digest(given).into();
    let matched = tokens.0.iter().fold(false, |found, digest| {
        found | constant_time_eq(digest, &given)
    });
    if matched {
        Ok(())
    } else {
        Err(WriteError::Forbidden)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
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
        let tokens = AdminTokens::new(&[Secret::new("first-token"), Secret::new("second-token")]);
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
            authorize(&headers(Some("Bearer x")), &AdminTokens::new(&[])),
            Err(WriteError::Forbidden)
        ));
    }

    #[test]
    fn a_configured_digest_accepts_its_token_only() {
        // printf %s third-token | sha256sum
        let digest = format!("sha256:{:x}", Sha256::digest(b"third-token"));
        let tokens = AdminTokens::new(&[Secret::new(digest.clone())]);
        assert!(authorize(&headers(Some("Bearer third-token")), &tokens).is_ok());
        // The digest itself is not a token.
        let mut presented = HeaderMap::new();
        presented.insert(
            AUTHORIZATION,
            HeaderValue::try_from(format!("Bearer {digest}")).unwrap(),
        );
        assert!(authorize(&presented, &tokens).is_err());
    }
}
