//! The admin payload validators on arbitrary bodies: `write::payload::ProductInput::parse`
//! (`PUT`), `CategoryInput::parse` and `PurgeInput::parse`.
//!
//! Properties: no body panics (deep nesting, huge numbers, invalid UTF-8, odd escapes);
//! a refusal is a 4xx problem, never a 5xx; a body that parses re-serializes to JSON
//! that parses again to the same value, and that value passes its bounds.
#![no_main]

use catalog::write::error::WriteError;
use catalog::write::payload::{CategoryInput, ProductInput, PurgeInput, valid_slug};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    product(body);
    category(body);
    purge(body);
});

fn refused(error: &WriteError) {
    let problem = error.problem();
    assert!(problem.status.is_client_error(), "{error:?}");
    let _ = problem.response();
}

fn product(body: &[u8]) {
    match ProductInput::parse(body) {
        Ok(input) => {
            input.validate().expect("a parsed product is valid");
            let again = serde_json::to_vec(&input).unwrap();
            match ProductInput::parse(&again) {
                Ok(reparsed) => assert_eq!(reparsed, input),
                Err(error) => panic!(
                    "{:?} re-serialized as {:?}: {error}",
                    String::from_utf8_lossy(body),
                    String::from_utf8_lossy(&again)
                ),
            }
        }
        Err(error) => refused(&error),
    }
}

fn category(body: &[u8]) {
    const SLUG: &str = "lamps";
    match CategoryInput::parse(SLUG, body) {
        Ok(input) => {
            let chars = input.name.chars().count();
            assert!((1..=200).contains(&chars));
            if let Some(parent) = &input.parent {
                assert!(valid_slug(parent) && parent != SLUG, "{parent:?}");
            }
            let again = serde_json::json!({"name": input.name, "parent": input.parent});
            let reparsed = CategoryInput::parse(SLUG, again.to_string().as_bytes());
            assert_eq!(reparsed.ok(), Some(input));
        }
        Err(error) => refused(&error),
    }
}

fn purge(body: &[u8]) {
    match PurgeInput::parse(body) {
        Ok(input) => {
            assert!(input.category.as_deref().is_none_or(valid_slug));
            let again = serde_json::json!({"category": input.category});
            let reparsed = PurgeInput::parse(again.to_string().as_bytes());
            assert_eq!(reparsed.ok(), Some(input));
        }
        Err(error) => refused(&error),
    }
}
