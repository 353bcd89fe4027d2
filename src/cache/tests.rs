//! L1's tests: version-aware fills and evictions, the byte budget and what each entry
//! weighs, negative entries, a document's life and the expiry walk, caps on entry life.

use super::weigh::{ENTRY_OVERHEAD, GZIP_OVERHEAD, allocation_size};
use super::*;
use crate::document::{Document, Tick};

fn config() -> L1Config {
    L1Config {
        budget_bytes: 1 << 20,
        max_ttl: Duration::from_secs(300),
        negative_ttl: Duration::from_millis(50),
        stale_if_error: Duration::ZERO,
    }
}

fn found(id: i64, len: usize) -> Lookup {
    Lookup::Found(Arc::new(Document::new(id, 1, "SKU", &vec![b'x'; len])))
}

fn version(id: i64, version: i64) -> Lookup {
    Lookup::Found(Arc::new(Document::new(id, version, "SKU", b"{}")))
}

#[test]
fn fills_never_replace_newer_versions_or_pass_the_floor() {
    let l1 = L1::new(config());
    assert!(l1.insert_fresh(1, version(1, 3), || 0));
    assert!(
        !l1.insert_fresh(1, version(1, 2), || 0),
        "older than cached"
    );
    assert_eq!(l1.product(1).unwrap().version(), 3);
    assert!(
        !l1.insert_fresh(2, version(2, 4), || 5),
        "older than the floor"
    );
    assert_eq!(l1.product(2), None);
    assert!(!l1.insert_fresh(2, Lookup::Unknown, || 1));
    assert!(l1.insert_fresh(2, version(2, 5), || 5));
}

#[test]
fn invalidations_evict_only_older_entries() {
    let l1 = L1::new(config());
    l1.insert_product(1, version(1, 3));
    assert!(!l1.evict_older(1, 3));
    assert!(l1.product(1).is_some());
    assert!(l1.evict_older(1, 4));
    assert_eq!(l1.product(1), None);
    l1.insert_product(2, Lookup::Unknown);
    assert!(
        l1.evict_older(2, 1),
        "a negative entry is older than any write"
    );
    l1.insert_product(3, version(3, 1));
    l1.flush();
    assert_eq!(l1.product(3), None);
}

#[test]
fn the_budget_bounds_the_bytes_held() {
    let l1 = L1::new(L1Config {
        budget_bytes: 100_000,
        ..config()
    });
    for id in 0..1000 {
        l1.insert_product(id, found(id, 1000));
    }
    l1.sync();
    let (entries, bytes) = l1.usage();
    assert!(bytes <= 100_000, "{bytes} bytes held");
    assert!(entries < 100, "{entries} entries held");
}

#[test]
fn negative_entries_expire_first_and_a_fill_replaces_them() {
    let l1 = L1::new(config());
    l1.insert_product(1, Lookup::Unknown);
    l1.insert_product(2, found(2, 10));
    assert_eq!(l1.product(1), Some(Lookup::Unknown));
    let deadline = Instant::now() + Duration::from_secs(5);
    while l1.product(1).is_some() {
        assert!(Instant::now() < deadline, "negative entry never expired");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(l1.product(2).is_some());
    // An update from negative to found takes the long TTL.
    l1.insert_product(3, Lookup::Unknown);
    l1.insert_product(3, found(3, 10));
    std::thread::sleep(Duration::from_millis(120));
    assert!(matches!(l1.product(3), Some(Lookup::Found(_))));
}

fn loaded(l1: &L1, id: i64) -> Tick {
    match l1.product(id) {
        Some(Lookup::Found(doc)) => doc.loaded(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_document_is_returned_for_its_life_from_loading_and_then_dropped() {
    let l1 = L1::new(L1Config {
        stale_if_error: Duration::from_secs(60),
        ..config()
    });
    l1.insert_product(1, found(1, 10));
    let life = Duration::from_secs(360);
    let loaded = loaded(&l1, 1);
    let last = loaded + life - Duration::from_millis(1);
    assert!(
        matches!(l1.product_at(1, last), Some(Lookup::Found(_))),
        "kept past max_ttl, for stale-if-error"
    );
    assert_eq!(l1.product_at(1, loaded + life), None, "outlived");
    l1.sync();
    assert_eq!(
        l1.usage().0,
        0,
        "dropped by the read that found it outlived"
    );
}

#[test]
fn an_outlived_document_counts_as_absent_to_fills_and_the_auditor() {
    let l1 = L1::new(L1Config {
        max_ttl: Duration::from_millis(30),
        negative_ttl: Duration::from_millis(30),
        ..config()
    });
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    l1.insert_product(1, version(1, 5));
    assert_eq!(l1.sample_products(10, &mut rng), vec![(1, 5)]);
    std::thread::sleep(Duration::from_millis(40));
    assert!(l1.sample_products(10, &mut rng).is_empty());
    // As when moka expired it: an older fill is stored (floors guard the rest).
    assert!(l1.insert_fresh(1, version(1, 4), || 0));
    assert_eq!(l1.product(1).unwrap().version(), 4);
}

#[test]
fn the_sweeper_drops_the_outlived_documents_no_read_finds() {
    let l1 = L1::new(config());
    l1.insert_product(1, found(1, 10));
    l1.insert_product(2, Lookup::Gone { version: 2 });
    let loaded = loaded(&l1, 1);
    assert_eq!(l1.sweep(Tick::now()), 0);
    assert_eq!(l1.sweep(loaded + Duration::from_secs(300)), 1);
    l1.sync();
    assert_eq!(l1.usage().0, 1, "the tombstone has a timer of its own");
    // and the thread sweeps every half life
    let l1 = L1::new(L1Config {
        max_ttl: Duration::from_millis(40),
        ..config()
    });
    l1.insert_product(1, found(1, 10));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        l1.sync();
        if l1.usage().0 == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never swept");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn documents_stored_under_a_cap_expire_at_the_cap() {
    let l1 = L1::new(config());
    l1.limit_ttl(Some(Duration::from_millis(50)));
    l1.insert_product(1, found(1, 10));
    assert!(l1.insert_fresh(3, version(3, 1), || 0));
    l1.limit_ttl(None);
    l1.insert_product(2, found(2, 10));
    let deadline = Instant::now() + Duration::from_secs(5);
    while l1.product(1).is_some() || l1.product(3).is_some() {
        assert!(Instant::now() < deadline, "capped documents never expired");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(l1.product(2).is_some(), "stored after the cap was lifted");
}

#[test]
fn skus_and_bodies_round_trip() {
    let l1 = L1::new(config());
    let (a, b): (Arc<str>, Arc<str>) = ("A".into(), "B".into());
    l1.insert_sku(Arc::clone(&a), Some(7));
    l1.insert_sku(Arc::clone(&b), None);
    assert_eq!(l1.sku(&a), Some(Some(7)));
    assert_eq!(l1.sku(&b), Some(None));
    assert_eq!(l1.sku(&"C".into()), None);
    let BodyFill { generation, floor } = l1.body_fill();
    assert_eq!(floor, 0);
    let body = Arc::new(Body {
        identity: Bytes::from_static(b"[]"),
        gzip: Some(Bytes::from_static(b"gz")),
    });
    assert!(l1.insert_body(Key::Categories, Arc::clone(&body), generation));
    assert_eq!(l1.body(&Key::Categories), Some(Arc::clone(&body)));
    assert_eq!(
        weigh(&Key::Categories, &Cached::Body(Arc::clone(&body))),
        4 + ENTRY_OVERHEAD
    );
    l1.invalidate(&Key::Categories, None);
    assert!(!l1.insert_body(Key::Categories, Arc::clone(&body), generation));
    assert_eq!(l1.body(&Key::Categories), None);
}

#[test]
fn a_body_invalidated_where_its_change_is_visible_is_filled_from_there() {
    let l1 = L1::new(config());
    let body = Arc::new(Body {
        identity: Bytes::from_static(b"[]"),
        gzip: None,
    });
    l1.invalidate(&Key::Categories, Some(500));
    // A later invalidation from an older position does not lower the floor.
    l1.invalidate(&Key::Categories, Some(300));
    let fill = l1.body_fill();
    assert_eq!(fill.floor, 500);
    assert!(l1.insert_body(Key::Categories, Arc::clone(&body), fill.generation));
    // A flush moves the generation too: a fill begun before it does not store.
    let before = l1.body_fill();
    l1.flush();
    assert!(!l1.insert_body(Key::Categories, body, before.generation));
    assert_eq!(l1.body(&Key::Categories), None);
}

#[test]
fn a_document_is_charged_the_allocation_of_its_buffer() {
    let sizes = [
        (0, 0),
        (1, 8),
        (64, 64),
        (65, 80),
        (570, 640),
        (640, 640),
        (641, 768),
    ];
    for (len, charged) in sizes {
        assert_eq!(allocation_size(len), charged, "{len} bytes");
    }
    assert_eq!(allocation_size(1025), 1280);
    let doc = found(1, 570);
    let Lookup::Found(held) = &doc else {
        unreachable!()
    };
    let charged = weigh(&Key::Product(1), &Cached::product(doc.clone()));
    assert_eq!(
        charged as usize,
        allocation_size(held.held_bytes()) + ENTRY_OVERHEAD as usize
    );
}

#[test]
fn a_document_is_charged_its_gzip_form_once_made() {
    let l1 = L1::new(config());
    let doc = Arc::new(Document::new(1, 1, "SKU", &vec![b'x'; 2000]));
    l1.insert_product(1, Lookup::Found(Arc::clone(&doc)));
    l1.sync();
    let before = l1.usage().1;
    assert_eq!(
        before,
        u64::from(weigh(&Key::Product(1), &Cached::Found(Arc::clone(&doc))))
    );
    assert!(l1.gzip(&doc).unwrap().made);
    l1.sync();
    let grown = allocation_size(doc.gzip_held_bytes().unwrap()) + GZIP_OVERHEAD;
    assert_eq!(l1.usage().1, before + grown as u64);
    // Another copy of the same version is not reweighed in its place.
    let other = Arc::new(Document::new(1, 1, "SKU", &vec![b'x'; 2000]));
    l1.insert_product(1, Lookup::Found(Arc::clone(&doc)));
    assert!(l1.gzip(&other).unwrap().made);
    assert!(matches!(l1.product(1), Some(Lookup::Found(held)) if Arc::ptr_eq(&held, &doc)));
}
