//! Micro-benchmarks of the storefront's hot paths, in-process (no sockets):
//!
//! - `hit_path`: a parsed `GET /products/{id}` request → `Reader::hit` (routing, L1,
//!   `ETag`, metrics) → the response with its body bytes, for ~1 KB documents uniform
//!   over 10,000 warm ids;
//! - `batch_50`: `GET /products?ids=<50 ids>` answered from L1 by concatenation;
//! - `batch_body_50`: the concatenation alone;
//! - `bare_response`: the floor under `hit_path`: the same steps (a `Response` with the
//!   same headers around a cloned `Bytes`, the body collected on the runtime) with no
//!   routing, cache lookup or metrics. `hit_path / bare_response` is the figure.
//!
//! Run: `cargo bench --bench hit_path`. See `bench/README.md` for how to read the figures.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use catalog::cache::{L1, L1Config};
use catalog::document::{Document, Lookup};
use catalog::metrics::Metrics;
use catalog::read::listing::batch_body;
use catalog::read::{DocumentTtl, Freshness, HttpCaching, Reader, ReaderSettings};
use catalog::store::replicas::Databases;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt as _;
use hyper::Request;

const PRODUCTS: i64 = 10_000;

fn document(id: i64) -> Document {
    let body = format!(
        "{{\"id\":{id},\"sku\":\"ACM-BEN-{id:07}\",\"name\":\"Acme Wireless Headphones Pro 300\",\
         \"description\":\"{}\",\"brand\":\"Acme\",\"price\":{{\"amount\":2999,\"currency\":\"USD\"}},\
         \"stock\":12,\"attributes\":{{\"color\": \"black\"}},\"images\":[\"https://img.example.com/p/{id}/1.jpg\"],\
         \"categories\":[\"electronics\"],\"version\":1,\"updated_at\":\"2026-11-23T12:00:00.000000Z\"}}",
        "x".repeat(700)
    );
    Document::new(id, 1, &format!("ACM-BEN-{id:07}"), body.as_bytes())
}

fn setup(runtime: &tokio::runtime::Runtime) -> (Reader, Vec<Arc<Document>>) {
    runtime.block_on(async {
        let l1 = L1::new(L1Config {
            budget_bytes: 1 << 30,
            max_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(1),
            stale_if_error: Duration::ZERO,
        });
        let mut docs = Vec::new();
        for id in 1..=PRODUCTS {
            let doc = Arc::new(document(id));
            l1.insert_product(id, Lookup::Found(Arc::clone(&doc)));
            docs.push(doc);
        }
        l1.sync();
        // Never connected: every request below is an L1 hit.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://bench@127.0.0.1:1/none")
            .expect("a lazy pool");
        let databases = Arc::new(Databases::new(pool, Vec::new(), true, 0));
        let metrics = Arc::new(Metrics::new());
        let floors = catalog::coherence::floors::Floors::new(1024, Duration::from_secs(60));
        let (_, applied) = tokio::sync::watch::channel(0);
        (
            Reader::new(
                l1,
                None,
                Freshness {
                    floors,
                    applied,
                    feed: catalog::coherence::feed::Feed::new(Duration::from_secs(3600)),
                },
                databases,
                metrics,
                ReaderSettings {
                    caching: HttpCaching {
                        max_age_secs: 5,
                        stale_while_revalidate_secs: 30,
                        stale_if_error_secs: 300,
                        surrogate_keys: false,
                        gzip: true,
                    },
                    db_timeout: Duration::from_secs(2),
                    request_timeout: Duration::from_secs(5),
                    token_bypass_max: 32,
                    ttl: DocumentTtl {
                        soft: Duration::from_secs(240),
                        hard: Duration::from_secs(300),
                    },
                    cors: None,
                },
            ),
            docs,
        )
    })
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (reader, docs) = setup(&runtime);
    let paths: Vec<String> = (1..=PRODUCTS).map(|id| format!("/products/{id}")).collect();
    let requests: Vec<Request<()>> = paths
        .iter()
        .map(|p| Request::get(p.as_str()).body(()).expect("request"))
        .collect();

    let mut n = 0usize;
    c.bench_function("hit_path", |b| {
        b.iter(|| {
            n = (n + 7919) % requests.len();
            let response = reader.hit(&requests[n]).expect("an L1 hit");
            let body = runtime
                .block_on(response.into_body().collect())
                .expect("body")
                .to_bytes();
            black_box(body)
        });
    });

    let etag = hyper::header::HeaderValue::from_static("\"1\"");
    let cache_control =
        hyper::header::HeaderValue::from_static("public, max-age=5, stale-while-revalidate=30");
    c.bench_function("bare_response", |b| {
        b.iter(|| {
            n = (n + 7919) % docs.len();
            let body = docs[n].body_bytes();
            let mut response = hyper::Response::new(http_body_util::Full::new(body));
            let headers = response.headers_mut();
            headers.insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            headers.insert(hyper::header::ETAG, etag.clone());
            headers.insert(hyper::header::CACHE_CONTROL, cache_control.clone());
            let body = runtime
                .block_on(response.into_body().collect())
                .expect("body")
                .to_bytes();
            black_box(body)
        });
    });

    let ids: Vec<String> = (1..=50).map(|i| (i * 97).to_string()).collect();
    let batch = Request::get(format!("/products?ids={}", ids.join(",")))
        .body(())
        .expect("request");
    c.bench_function("batch_50", |b| {
        b.iter(|| black_box(runtime.block_on(reader.handle(&batch))));
    });

    let fifty: Vec<&Document> = docs.iter().take(50).map(|d| &**d).collect();
    c.bench_function("batch_body_50", |b| {
        b.iter(|| black_box(batch_body(black_box(&fifty), &[])));
    });
}

criterion_group!(hit_path, benches);
criterion_main!(hit_path);
