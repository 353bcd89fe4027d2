//! The opaque tokens clients hand back: keyset cursors (`read::listing::decode_cursor`
//! and `encode_cursor`) and read-your-writes tokens (`store::replicas::parse_lsn`).
//!
//! Properties: no input panics; every cursor `encode_cursor` makes decodes to its id
//! under its own slug; a cursor that decodes is the canonical encoding of what it
//! decodes to (up to hex case), so no second spelling smuggles another id; a refused
//! cursor is a 400; an LSN that parses re-parses from PostgreSQL's `%X/%X` rendering.
#![no_main]

use arbitrary::Arbitrary;
use catalog::read::listing::{decode_cursor, encode_cursor};
use catalog::store::replicas::parse_lsn;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    slug: &'a str,
    raw: &'a str,
    id: i64,
    position: u64,
}

fuzz_target!(|input: Input<'_>| {
    let Input {
        slug,
        raw,
        id,
        position,
    } = input;

    match decode_cursor(slug, Some(raw)) {
        Ok(after) => {
            assert!(after >= 0);
            assert!(
                encode_cursor(slug, after).eq_ignore_ascii_case(raw),
                "{raw:?} decoded to {after} for {slug:?}"
            );
        }
        Err(refused) => assert_eq!(refused.problem().status.as_u16(), 400),
    }
    assert_eq!(decode_cursor(slug, None), Ok(0));

    let id = id & i64::MAX;
    let cursor = encode_cursor(slug, id);
    assert_eq!(cursor.len(), 20);
    assert_eq!(decode_cursor(slug, Some(&cursor)), Ok(id), "{slug:?} {id}");
    assert_eq!(
        decode_cursor(slug, Some(&cursor.to_ascii_uppercase())),
        Ok(id)
    );

    if let Some(lsn) = parse_lsn(raw) {
        let rendered = format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF);
        assert_eq!(parse_lsn(&rendered), Some(lsn), "{raw:?}");
    }
    let rendered = format!("{:X}/{:X}", position >> 32, position & 0xFFFF_FFFF);
    assert_eq!(parse_lsn(&rendered), Some(position));
});
