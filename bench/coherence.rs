//! Micro-benchmarks of the write and coherence paths, in-process:
//!
//! - `validate_simd_json` / `validate_serde_json`: an admin's `PUT` body (a ~1 KB
//!   product) parsed into the typed payload, unknown fields refused, and every bound
//!   checked, with simd-json (what the writer uses) and with serde_json, on the same
//!   bytes: the ratio is what simd-json buys;
//! - `invalidation_parse`: a stream entry's fields into an `Invalidation`;
//! - `invalidation_apply`: one in-order invalidation applied by the reader's consumer
//!   (sequence check, floor raised, the cached older version evicted under moka's
//!   per-key lock, watermark), with the older version put back in L1 before each
//!   iteration (outside the measurement).
//!
//! Run: `cargo bench --bench coherence`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use catalog::cache::{L1, L1Config};
use catalog::coherence::consumer::{Consumer, Targets};
use catalog::coherence::floors::Floors;
use catalog::coherence::stream::Invalidation;
use catalog::document::{Document, Lookup};
use catalog::metrics::Metrics;
use catalog::write::payload::ProductInput;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

/// An admin's `PUT /admin/products/{id}` body of the demo catalog's shape.
const PRODUCT: &str = r#"{
  "sku": "ACM-HEA-0000042",
  "name": "Acme Wireless Headphones Pro 300",
  "description": "The Acme Headphones Pro 300 in black, made of aluminium. Designed for everyday use at home or on the road. Closed-back, 40 mm drivers, 30 hours of battery life, USB-C charging, a folding headband and a hard case. Bluetooth 5.3 with multipoint pairing; a 3.5 mm cable for wired listening. Two-year warranty.",
  "brand": "Acme",
  "price": {"amount": 12999, "currency": "EUR"},
  "stock": 245,
  "attributes": {"color": "black", "material": "aluminium", "weight_g": 285, "warranty_months": 24, "driver_mm": 40},
  "images": ["https://img.example.com/p/42/1.jpg", "https://img.example.com/p/42/2.jpg", "https://img.example.com/p/42/3.jpg"],
  "active": true,
  "categories": ["electronics", "wireless-headphones", "travel"]
}"#;

const PRODUCTS: i64 = 10_000;

fn validation(c: &mut Criterion) {
    let body = PRODUCT.as_bytes();
    assert_eq!(
        ProductInput::parse(body).expect("a valid payload"),
        serde_json::from_slice::<ProductInput>(body).expect("a valid payload"),
        "both parsers read the same product"
    );
    c.bench_function("validate_simd_json", |b| {
        b.iter(|| black_box(ProductInput::parse(black_box(body)).expect("valid")));
    });
    c.bench_function("validate_serde_json", |b| {
        b.iter(|| {
            let input: ProductInput = serde_json::from_slice(black_box(body)).expect("valid");
            input.validate().expect("valid");
            black_box(input)
        });
    });
}

fn document(id: i64, version: i64) -> Lookup {
    let body = format!("{{\"id\":{id},\"version\":{version}}}");
    Lookup::Found(Arc::new(Document::new(id, version, "SKU", body.as_bytes())))
}

fn entry(seq: i64, product: i64, version: i64) -> Invalidation {
    Invalidation {
        product_id: Some(product),
        version,
        purge: false,
        deleted: false,
        categories: Vec::new(),
        committed_at_micros: 1_790_000_000_000_000,
        seq,
        epoch: "bench".to_owned(),
        watermark: Some(seq as u64 * 1000),
        visible_at: None,
        heartbeat: false,
    }
}

fn invalidation(c: &mut Criterion) {
    let fields: HashMap<String, String> = entry(1, 42, 2)
        .fields()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    c.bench_function("invalidation_parse", |b| {
        b.iter(|| black_box(Invalidation::parse(black_box(&fields)).expect("well-formed")));
    });

    let l1 = L1::new(L1Config {
        budget_bytes: 1 << 30,
        max_ttl: Duration::from_secs(3600),
        negative_ttl: Duration::from_secs(1),
        stale_if_error: Duration::ZERO,
    });
    for id in 1..=PRODUCTS {
        l1.insert_product(id, document(id, 1));
    }
    let (watermark, _applied) = tokio::sync::watch::channel(0);
    let mut consumer = Consumer::new(Targets {
        l1: l1.clone(),
        floors: Floors::new(1 << 20, Duration::from_secs(3600)),
        watermark,
        feed: catalog::coherence::feed::Feed::new(Duration::from_secs(3600)),
        metrics: Arc::new(Metrics::new()),
        changes: None,
    });
    let mut seq = 0;
    c.bench_function("invalidation_apply", |b| {
        b.iter_batched(
            || {
                seq += 1;
                let id = seq % PRODUCTS + 1;
                // The cached version is always the one just before the invalidation's.
                l1.insert_product(id, document(id, seq));
                entry(seq, id, seq + 1)
            },
            |entry| consumer.apply(black_box(&entry)),
            BatchSize::SmallInput,
        );
    });
    assert_eq!(
        l1.product(seq % PRODUCTS + 1),
        None,
        "the last invalidation evicted its product"
    );
}

criterion_group!(coherence, validation, invalidation);
criterion_main!(coherence);
