//! The invalidation stream's entries: `coherence::stream::Invalidation::parse` on
//! arbitrary field maps (a Redis stream accepts any fields from anyone who can `XADD`),
//! and `Invalidation::fields` → `parse`.
//!
//! Properties: no field map panics; an entry that parses re-encodes to fields that parse
//! to the same entry; every entry whose category slugs are non-empty and free of `,`
//! (all the relay writes) survives `fields` → `parse` unchanged.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use catalog::coherence::stream::Invalidation;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    fields: Vec<(String, String)>,
    entry: Entry,
}

#[derive(Debug, Arbitrary)]
struct Entry {
    product_id: Option<i64>,
    version: i64,
    purge: bool,
    deleted: bool,
    categories: Vec<String>,
    committed_at_micros: i64,
    seq: i64,
    epoch: String,
    watermark: Option<u64>,
    heartbeat: bool,
}

fn as_map(fields: Vec<(&'static str, String)>) -> HashMap<String, String> {
    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fuzz_target!(|input: Input| {
    let fields: HashMap<String, String> = input.fields.into_iter().collect();
    if let Some(parsed) = Invalidation::parse(&fields) {
        let again = Invalidation::parse(&as_map(parsed.fields()));
        assert_eq!(again.as_ref(), Some(&parsed), "{fields:?}");
    }

    let e = input.entry;
    let entry = Invalidation {
        product_id: e.product_id,
        version: e.version,
        purge: e.purge,
        deleted: e.deleted,
        categories: e
            .categories
            .into_iter()
            .filter(|c| !c.is_empty() && !c.contains(','))
            .collect(),
        committed_at_micros: e.committed_at_micros,
        seq: e.seq,
        epoch: e.epoch,
        watermark: e.watermark,
        heartbeat: e.heartbeat,
    };
    assert_eq!(
        Invalidation::parse(&as_map(entry.fields())).as_ref(),
        Some(&entry)
    );
});
