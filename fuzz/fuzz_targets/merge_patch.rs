//! The `PATCH` path: `write::payload::ProductInput::patched`, a JSON merge patch
//! (RFC 7396) applied to a stored product, then validated like a `PUT`.
//!
//! The input is `<base>\0<patch>`: the base is used when it parses as a product, else
//! a fixed valid product; without a NUL byte the whole input is the patch.
//!
//! Properties: no patch panics; a refusal is a 4xx problem; a patched product is valid,
//! re-serializes to a body that parses to itself, is unchanged by the empty patch, and
//! is unchanged by the same patch applied again (merge patches are idempotent).
#![no_main]

use catalog::write::payload::ProductInput;
use libfuzzer_sys::fuzz_target;

const LAMP: &[u8] = br#"{"sku":"ACM-1","name":"Lamp","description":"Warm","brand":"Acme",
    "price":{"amount":2999,"currency":"EUR"},"stock":3,
    "attributes":{"color":"red","size":{"w":10,"h":[1,2,{"x":null}]}},
    "images":["https://img.example.com/1.jpg"],"active":true,"categories":["lamps","home"]}"#;

fuzz_target!(|data: &[u8]| {
    let (base, patch) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (&b""[..], data),
    };
    let base = ProductInput::parse(base)
        .or_else(|_| ProductInput::parse(LAMP))
        .expect("the fixed product is valid");
    match base.patched(patch) {
        Ok(patched) => {
            patched.validate().expect("a patched product is valid");
            let body = serde_json::to_vec(&patched).unwrap();
            assert_eq!(ProductInput::parse(&body).ok().as_ref(), Some(&patched));
            assert_eq!(patched.patched(b"{}").ok().as_ref(), Some(&patched));
            assert_eq!(
                patched.patched(patch).ok().as_ref(),
                Some(&patched),
                "the patch {:?} is not idempotent",
                String::from_utf8_lossy(patch)
            );
        }
        Err(error) => {
            let problem = error.problem();
            assert!(problem.status.is_client_error(), "{error:?}");
            let _ = problem.response();
        }
    }
});
