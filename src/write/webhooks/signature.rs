//! Standard Webhooks 1.0 signatures (<https://www.standardwebhooks.com/>), so
//! receivers can verify deliveries with that project's libraries.
//!
//! A secret is `whsec_` followed by the standard base64 of 24 to 64 random bytes; the
//! bytes are the HMAC key. A delivery carries three headers:
//!
//! - `webhook-id`: the message's id, the same on every attempt (receivers deduplicate
//!   on it);
//! - `webhook-timestamp`: the attempt's time, in whole seconds since the Unix epoch
//!   (receivers refuse a timestamp too far from their clock);
//! - `webhook-signature`: `v1,<base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`,
//!   one per active secret, separated by a space: after a rotation the previous secret
//!   signs too, so a receiver that still holds it keeps verifying.
//!
//! Secrets never appear in logs or `Debug` output.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use rand::RngExt as _;
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Fewest key bytes a secret may hold (the specification's lower bound).
pub const MIN_KEY_BYTES: usize = 24;
/// Most key bytes a secret may hold.
pub const MAX_KEY_BYTES: usize = 64;
/// Key bytes of a generated secret.
pub const GENERATED_KEY_BYTES: usize = 32;

/// The header carrying the message id.
pub const WEBHOOK_ID: &str = "webhook-id";
/// The header carrying the attempt's Unix time in seconds.
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// The header carrying the signatures.
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// A signing secret: its `whsec_` text and its key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    text: String,
    key: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Parses `whsec_<base64>`; the message says what is wrong without quoting it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| format!("a secret starts with {SECRET_PREFIX}"))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| format!("after {SECRET_PREFIX}, a secret is standard base64"))?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(format!(
                "a secret holds {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes (base64-decoded), \
                 not {}",
                key.len()
            ));
        }
        Ok(Self {
            text: text.to_owned(),
            key,
        })
    }

    /// A new secret of [`GENERATED_KEY_BYTES`] random bytes (from the thread's CSPRNG,
    /// seeded by the operating system).
    pub fn generate() -> Self {
        let key: [u8; GENERATED_KEY_BYTES] = rand::rng().random();
        Self {
            text: format!("{SECRET_PREFIX}{}", STANDARD.encode(key)),
            key: key.to_vec(),
        }
    }

    /// The `whsec_` text: stored, and shown to the admin only when it is created.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// `v1,<signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` value: one `v1,` signature per secret, space-separated.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_specifications_example() {
        // The example of the Standard Webhooks libraries' test suites.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn generated_secrets_are_random_and_parse() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a, b);
        assert!(a.expose().starts_with(SECRET_PREFIX));
        let parsed = Secret::parse(a.expose()).unwrap();
        assert_eq!(parsed.key.len(), GENERATED_KEY_BYTES);
        assert_eq!(format!("{a:?}"), "Secret(..)");
    }

    #[test]
    fn bad_secrets_are_refused_without_being_quoted() {
        let short = format!("{SECRET_PREFIX}{}", STANDARD.encode([7u8; 16]));
        let long = format!("{SECRET_PREFIX}{}", STANDARD.encode([7u8; 65]));
        for bad in [
            "",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_***",
            &short,
            &long,
        ] {
            let err = Secret::parse(bad).unwrap_err();
            assert!(bad.len() < 8 || !err.contains(bad), "{err}");
        }
    }

    #[test]
    fn two_secrets_give_two_signatures() {
        let (a, b) = (Secret::generate(), Secret::generate());
        let header = signature_header(&[a.clone(), b.clone()], "msg_1", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [a.sign("msg_1", 1, b"{}"), b.sign("msg_1", 1, b"{}")]
        );
    }
}
