//! The writer and the coherence protocol against the real stack: admin writes, their
//! propagation to readers, refusals that change nothing, relay healing, gaps, resets,
//! and a consistency checker under concurrent reads and writes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use catalog::startup::Role;
use common::{OwnRedis, Stack, TestApp, TestDb, poll, seeded};
use fred::prelude::*;
use serde_json::Value;

/// An active product of the seed and one of its category slugs.
async fn product_in_category(db: &TestDb) -> (i64, String) {
    sqlx::query_as(
        "select p.id, c.slug from products p join product_categories pc on pc.product_id = p.id \
         join categories c on c.id = pc.category_id where p.active order by p.id limit 1",
    )
    .fetch_one(&db.primary)
    .await
    .unwrap()
}

fn lamp(name: &str, categories: &[String]) -> String {
    serde_json::json!({
        "sku": format!("LAMP-{}", name.len()),
        "name": name,
        "price": {"amount": 2999, "currency": "EUR"},
        "stock": 3,
        "attributes": {"color": "red"},
        "images": ["https://img.example.com/lamp.jpg"],
        "categories": categories,
    })
    .to_string()
}

/// Sets a product's stock through the writer; the write must succeed.
async fn patch_stock(app: &TestApp, id: i64, stock: i64) -> common::Reply {
    let reply = app
        .admin(
            "PATCH",
            &format!("/admin/products/{id}"),
            &[],
            &format!(r#"{{"stock": {stock}}}"#),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply
}

/// Sets a product's stock through the writer and waits until the reader serves it.
async fn set_stock(app: &TestApp, id: i64, stock: i64) -> Value {
    let reply = patch_stock(app, id, stock).await;
    let doc = wait_for_version(app, id, reply.json()["version"].as_i64().unwrap()).await;
    assert_eq!(doc["stock"], stock);
    doc
}

/// Polls the reader until product `id` has at least `version`.
async fn wait_for_version(app: &TestApp, id: i64, version: i64) -> Value {
    poll(|| async {
        let reply = app.get(&format!("/products/{id}")).await;
        let doc = reply.json();
        (doc["version"].as_i64().unwrap_or(0) >= version).then_some(doc)
    })
    .await
}

/// The primary's row and the outbox size: what a refused request must leave alone.
async fn primary_state(db: &TestDb, id: i64) -> (Option<String>, i64) {
    let row: Option<String> = sqlx::query_scalar(
        "select concat_ws('|', version, sku, name, price_amount, currency, stock, attributes::text, \
         deleted_at) from products where id = $1",
    )
    .bind(id)
    .fetch_optional(&db.primary)
    .await
    .unwrap();
    let outbox: i64 = sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(&db.primary)
        .await
        .unwrap();
    (row, outbox)
}

#[tokio::test]
async fn a_write_reaches_single_gets_batches_and_category_pages() {
    let db = seeded(40, 4).await;
    let app = TestApp::spawn_as(&TestApp::config(&db), Role::All).await;
    let (id, slug) = product_in_category(&db).await;
    let before = app.get(&format!("/products/{id}")).await.json();
    assert_eq!(before["version"], 1);
    let page = app
        .get(&format!("/categories/{slug}/products?limit=200"))
        .await
        .json();
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == id)
    );

    let reply = app
        .admin(
            "PUT",
            &format!("/admin/products/{id}"),
            &[],
            &lamp("Brighter lamp", std::slice::from_ref(&slug)),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["version"], 2);
    assert_eq!(reply.header("etag"), Some("\"2\""));
    assert!(
        reply
            .header("catalog-token")
            .is_some_and(|t| t.contains('/'))
    );

    let doc = wait_for_version(&app, id, 2).await;
    assert_eq!(doc["name"], "Brighter lamp");
    let batch = app.get(&format!("/products?ids={id}")).await.json();
    assert_eq!(batch["items"][0]["version"], 2);
    let page = app
        .get(&format!("/categories/{slug}/products?limit=200"))
        .await
        .json();
    let listed = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap();
    assert_eq!(listed["version"], 2);
    assert!(app.metric("catalog_invalidations_total").await >= 1.0);
    assert!(app.metric("catalog_relay_published_total").await >= 1.0);
    assert!(app.metric("catalog_relay_lag_seconds_count").await >= 1.0);
    assert!(app.metric("catalog_propagation_seconds_count").await >= 1.0);

    // A patch, then a delete: both propagate.
    let patched = app
        .admin(
            "PATCH",
            &format!("/admin/products/{id}"),
            &[],
            r#"{"stock": 11}"#,
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(wait_for_version(&app, id, 3).await["stock"], 11);
    let deleted = app
        .admin("DELETE", &format!("/admin/products/{id}"), &[], "")
        .await;
    assert_eq!(deleted.json()["version"], 4);
    poll(|| async { (app.get(&format!("/products/{id}")).await.status == 404).then_some(()) })
        .await;

    // A new product is created with 201 and becomes readable.
    let created = app
        .admin("PUT", "/admin/products/900001", &[], &lamp("New lamp", &[]))
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.header("location"), Some("/products/900001"));
    assert_eq!(wait_for_version(&app, 900_001, 1).await["name"], "New lamp");
    app.shutdown().await;
}

#[tokio::test]
async fn refused_admin_requests_change_nothing() {
    let db = seeded(10, 4).await;
    let mut config = TestApp::config(&db);
    config.max_body_bytes = 4096;
    let app = TestApp::spawn_as(&config, Role::Writer).await;
    let (id, _) = product_in_category(&db).await;
    let other_sku: String = sqlx::query_scalar("select sku from products where id <> $1 limit 1")
        .bind(id)
        .fetch_one(&db.primary)
        .await
        .unwrap();
    let path = format!("/admin/products/{id}");
    let before = primary_state(&db, id).await;
    let valid = lamp("Lamp", &[]);

    let none = app
        .admin("PUT", &path, &[("authorization", "")], &valid)
        .await;
    none.assert_problem(401, "unauthenticated");
    let wrong = app
        .admin(
            "PUT",
            &path,
            &[("authorization", "Bearer not-the-token")],
            &valid,
        )
        .await;
    wrong.assert_problem(403, "forbidden");
    let malformed = app.admin("PUT", &path, &[], r#"{"sku": "A",, }"#).await;
    malformed.assert_problem(400, "malformed-json");
    assert!(
        malformed.json()["detail"]
            .as_str()
            .unwrap()
            .chars()
            .any(|c| c.is_ascii_digit())
    );
    app.admin(
        "PUT",
        &path,
        &[],
        r#"{"sku":"A","name":"x","price":{"amount":1,"currency":"EUR"},"extra":1}"#,
    )
    .await
    .assert_problem(400, "invalid-product");
    app.admin(
        "PUT",
        &path,
        &[],
        r#"{"sku":"A","name":"x","price":{"amount":-5,"currency":"EUR"}}"#,
    )
    .await
    .assert_problem(400, "invalid-product");
    let huge = lamp(&"x".repeat(5000), &[]);
    app.admin("PUT", &path, &[], &huge)
        .await
        .assert_problem(413, "payload-too-large");
    app.admin("PUT", &path, &[("if-match", "\"7\"")], &valid)
        .await
        .assert_problem(412, "version-mismatch");
    app.admin(
        "PUT",
        &path,
        &[],
        &lamp("Lamp", &["no-such-category".into()]),
    )
    .await
    .assert_problem(422, "unknown-categories");
    let taken = valid.replace("LAMP-4", &other_sku);
    app.admin("PUT", &path, &[], &taken)
        .await
        .assert_problem(409, "sku-taken");
    app.admin("PATCH", &path, &[], r#"{"price": {"currency": "euro"}}"#)
        .await
        .assert_problem(400, "invalid-product");
    app.admin("PATCH", "/admin/products/999999", &[], r#"{"stock": 1}"#)
        .await
        .assert_problem(404, "product-not-found");
    app.admin("PUT", "/admin/products/abc", &[], &valid)
        .await
        .assert_problem(400, "invalid-id");
    app.admin("POST", &path, &[], &valid)
        .await
        .assert_problem(405, "method-not-allowed");
    assert_eq!(
        primary_state(&db, id).await,
        before,
        "a refused request changed the primary"
    );

    // A writer-only process answers its operational endpoints without a token.
    assert_eq!(app.get("/healthz").await.status, 200);
    assert_eq!(app.get("/readyz").await.status, 200);
    let metrics = app.get("/metrics").await.text();
    assert!(
        metrics.contains("catalog_relay_published_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"catalog_http_requests_total{route="admin_product",status="412"} 1"#)
    );

    // The matching If-Match succeeds.
    let ok = app
        .admin("PUT", &path, &[("if-match", "\"1\"")], &valid)
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_ne!(primary_state(&db, id).await, before);
    app.shutdown().await;
}

#[tokio::test]
async fn a_writer_stopped_between_commit_and_publish_is_healed_by_the_relay() {
    let db = seeded(10, 4).await;
    let config = TestApp::config(&db);
    let reader = TestApp::spawn_as(&config, Role::Reader).await;
    let (id, _) = product_in_category(&db).await;
    assert_eq!(
        reader.get(&format!("/products/{id}")).await.json()["version"],
        1
    );

    // What a writer leaves when it dies right after commit: the row and an unpublished
    // outbox row, no stream entry.
    let mut tx = db.primary.begin().await.unwrap();
    sqlx::query("update products set name = 'Healed', version = version + 1 where id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("insert into outbox (product_id, version) values ($1, 2)")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        reader.get(&format!("/products/{id}")).await.json()["version"],
        1
    );

    // A writer starts: its relay publishes what was left.
    let writer = TestApp::spawn_as(&config, Role::Writer).await;
    let doc = wait_for_version(&reader, id, 2).await;
    assert_eq!(doc["name"], "Healed");
    let unpublished: i64 =
        sqlx::query_scalar("select count(*) from outbox where published_at is null")
            .fetch_one(&db.primary)
            .await
            .unwrap();
    assert_eq!(unpublished, 0);
    writer.shutdown().await;
    reader.shutdown().await;
}

/// Adds entries and trims the stream in one atomic script, so a blocked reader wakes to
/// find the early ones already gone: a real gap.
const ADD_AND_TRIM: &str = r"
for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[1], '*', 'p', ARGV[2], 'v', '1', 'c', '', 't', '0',
             's', tostring(tonumber(ARGV[3]) + i), 'e', ARGV[4])
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', '2')
return 1
";

#[tokio::test]
async fn a_stream_trimmed_past_the_reader_flushes_l1() {
    let db = seeded(10, 4).await;
    let app = TestApp::spawn_as(&TestApp::config(&db), Role::All).await;
    let (id, _) = product_in_category(&db).await;
    // One real write, so the reader knows the epoch and the sequence.
    set_stock(&app, id, 5).await;
    let warm = app.get("/products/2").await;
    assert_eq!(warm.status, 200);

    let stack = Stack::from_env();
    let redis = Builder::from_config(Config::from_url(&stack.redis_url).unwrap())
        .build()
        .unwrap();
    redis.init().await.unwrap();
    let prefix = format!("{}:", db.name);
    let epoch: String = redis
        .get(format!("{prefix}invalidations:epoch"))
        .await
        .unwrap();
    let next_seq: i64 = sqlx::query_scalar("select next_seq from relay_state")
        .fetch_one(&db.primary)
        .await
        .unwrap();
    let flushes = app.metric("catalog_l1_flushes_total").await;
    let _: i64 = redis
        .eval(
            ADD_AND_TRIM,
            vec![format!("{prefix}invalidations")],
            vec![
                "10".to_owned(),
                "1".to_owned(),
                (next_seq - 1).to_string(),
                epoch,
            ],
        )
        .await
        .unwrap();
    poll(|| async { (app.metric("catalog_stream_gaps_total").await >= 1.0).then_some(()) }).await;
    assert!(app.metric("catalog_l1_flushes_total").await > flushes);
    // The warm product is read again from below L1.
    let misses = app.metric("catalog_l1_misses_total").await;
    assert_eq!(app.get("/products/2").await.status, 200);
    assert_eq!(app.metric("catalog_l1_misses_total").await, misses + 1.0);
    redis.quit().await.unwrap();
    app.shutdown().await;
}

#[tokio::test]
async fn a_flushed_redis_flushes_l1() {
    let db = seeded(10, 4).await;
    let redis_server = OwnRedis::start().await;
    let mut config = TestApp::config(&db);
    config.redis_url = Some(format!("redis://127.0.0.1:{}", redis_server.port));
    let app = TestApp::spawn_as(&config, Role::All).await;
    let (id, _) = product_in_category(&db).await;
    set_stock(&app, id, 6).await;

    let redis = Builder::from_config(
        Config::from_url(&format!("redis://127.0.0.1:{}", redis_server.port)).unwrap(),
    )
    .build()
    .unwrap();
    redis.init().await.unwrap();
    let _: () = redis.flushall(false).await.unwrap();
    poll(|| async { (app.metric("catalog_stream_resets_total").await >= 1.0).then_some(()) }).await;
    assert!(app.metric("catalog_l1_flushes_total").await >= 1.0);
    // Writes after the reset propagate again, under a new epoch.
    set_stock(&app, id, 7).await;
    redis.quit().await.unwrap();
    app.shutdown().await;
}

/// One acknowledged write, or one read, as the checker records them.
#[derive(Debug, Clone, Copy)]
struct Event {
    id: i64,
    version: i64,
    at: Instant,
}

/// Upper bucket bounds of a histogram's quantiles, from the exposition.
async fn histogram_quantiles(app: &TestApp, name: &str, quantiles: &[f64]) -> Vec<String> {
    let text = app.get("/metrics").await.text();
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (bound, count) = rest.split_once("\"} ")?;
            Some((bound.to_owned(), count.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |(_, n)| *n);
    quantiles
        .iter()
        .map(|q| {
            buckets
                .iter()
                .find(|(_, n)| *n >= q * total)
                .map_or_else(|| "?".to_owned(), |(bound, _)| bound.clone())
        })
        .collect()
}

#[tokio::test]
async fn consistency_checker_finds_no_stale_reads() {
    const HOT: i64 = 10;
    const READERS: usize = 8;
    const READS_PER_READER: usize = 1_500;
    /// A read that starts this long after an acknowledgement must see that write.
    const WINDOW: Duration = Duration::from_millis(250);

    let db = seeded(HOT as u64, 4).await;
    let app = Arc::new(TestApp::spawn_as(&TestApp::config(&db), Role::All).await);
    for id in 1..=HOT {
        app.get(&format!("/products/{id}")).await;
    }
    let started = Instant::now();
    let writer = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let mut acks = Vec::new();
            let mut n = 0;
            while started.elapsed() < Duration::from_secs(4) {
                n += 1;
                let id = n % HOT + 1;
                let reply = patch_stock(&app, id, n).await;
                let at = Instant::now();
                acks.push(Event {
                    id,
                    version: reply.json()["version"].as_i64().unwrap(),
                    at,
                });
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acks
        })
    };
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                let mut reads = Vec::with_capacity(READS_PER_READER);
                for i in 0..READS_PER_READER {
                    let id = ((i + r) as i64) % HOT + 1;
                    let at = Instant::now();
                    let reply = app.get(&format!("/products/{id}")).await;
                    assert_eq!(reply.status, 200);
                    reads.push(Event {
                        id,
                        version: reply.json()["version"].as_i64().unwrap(),
                        at,
                    });
                }
                reads
            })
        })
        .collect();
    let acks = writer.await.unwrap();
    let mut reads = Vec::new();
    for reader in readers {
        reads.extend(reader.await.unwrap());
    }
    assert!(reads.len() >= 10_000, "{} reads", reads.len());
    assert!(acks.len() >= 20, "{} writes", acks.len());

    let stale = reads
        .iter()
        .filter(|read| {
            acks.iter().any(|ack| {
                ack.id == read.id && read.at > ack.at + WINDOW && read.version < ack.version
            })
        })
        .count();
    // Propagation as a storefront sees it: acknowledgement → first read of that version.
    let mut propagation: Vec<Duration> = acks
        .iter()
        .filter_map(|ack| {
            reads
                .iter()
                .filter(|r| r.id == ack.id && r.version >= ack.version && r.at >= ack.at)
                .map(|r| r.at - ack.at)
                .min()
        })
        .collect();
    propagation.sort_unstable();
    let quantile = |q: f64| propagation[((propagation.len() - 1) as f64 * q) as usize];
    let applied = histogram_quantiles(&app, "catalog_propagation_seconds", &[0.5, 0.99]).await;
    eprintln!(
        "consistency checker: {} reads, {} writes, {stale} stale; ack → first read of the new \
         version: p50 {:?} p99 {:?} max {:?}; commit → invalidation applied at the reader \
         (histogram bucket bounds): p50 <= {} s, p99 <= {} s",
        reads.len(),
        acks.len(),
        quantile(0.5),
        quantile(0.99),
        propagation.last().unwrap(),
        applied[0],
        applied[1],
    );
    assert_eq!(
        stale, 0,
        "reads older than an acknowledged write after {WINDOW:?}"
    );
    Arc::try_unwrap(app).unwrap().shutdown().await;
}

#[tokio::test]
async fn a_read_with_a_writes_token_sees_that_write_at_once() {
    let db = seeded(10, 4).await;
    let app = TestApp::spawn_as(&TestApp::config(&db), Role::All).await;
    let (id, _) = product_in_category(&db).await;
    assert_eq!(
        app.get(&format!("/products/{id}")).await.json()["version"],
        1
    );
    for n in 2..=6 {
        let reply = patch_stock(&app, id, n).await;
        let token = reply.header("catalog-token").unwrap().to_owned();
        // No polling: the very next read carrying the token sees the write.
        let read = app
            .request(
                "GET",
                &format!("/products/{id}"),
                &[("min-catalog-token", &token)],
            )
            .await;
        assert_eq!(read.json()["version"], n, "token {token}");
        let batch = app
            .request(
                "GET",
                &format!("/products?ids={id}"),
                &[("min-catalog-token", &token)],
            )
            .await;
        assert_eq!(batch.json()["items"][0]["version"], n);
    }
    app.request("GET", "/products/1", &[("min-catalog-token", "yesterday")])
        .await
        .assert_problem(400, "invalid-token");
    app.shutdown().await;
}

#[tokio::test]
async fn idempotency_keys_replay_refuse_reuse_and_expire() {
    let db = seeded(5, 4).await;
    let mut config = TestApp::config(&db);
    config.idempotency_ttl = Duration::from_secs(2);
    let app = TestApp::spawn_as(&config, Role::Writer).await;
    let body = lamp("Keyed lamp", &[]);
    let key = [("idempotency-key", "order-1")];

    let first = app
        .admin("PUT", "/admin/products/700001", &key, &body)
        .await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(first.header("idempotent-replayed"), None);
    let retry = app
        .admin("PUT", "/admin/products/700001", &key, &body)
        .await;
    assert_eq!(retry.status, 201);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.header("etag"), first.header("etag"));
    assert_eq!(retry.header("catalog-token"), first.header("catalog-token"));
    let version: i64 = sqlx::query_scalar("select version from products where id = 700001")
        .fetch_one(&db.primary)
        .await
        .unwrap();
    assert_eq!(version, 1, "the retry was applied again");

    let other = app
        .admin("PUT", "/admin/products/700001", &key, &lamp("Other", &[]))
        .await;
    other.assert_problem(422, "idempotency-key-reused");

    // A key whose first request is still running.
    let print = catalog::write::idempotency::fingerprint("PUT", "700002", body.as_bytes());
    sqlx::query(
        "insert into idempotency_keys (key, fingerprint, expires_at) \
         values ('order-2', $1, now() + interval '1 hour')",
    )
    .bind(&print)
    .execute(&db.primary)
    .await
    .unwrap();
    app.admin(
        "PUT",
        "/admin/products/700002",
        &[("idempotency-key", "order-2")],
        &body,
    )
    .await
    .assert_problem(409, "request-in-progress");
    app.admin(
        "PUT",
        "/admin/products/700002",
        &[("idempotency-key", "")],
        &body,
    )
    .await
    .assert_problem(400, "invalid-idempotency-key");

    // Refusals are stored too: a retry of a refused request is refused the same way.
    let bad = app
        .admin(
            "PATCH",
            "/admin/products/700001",
            &[("idempotency-key", "bad-1")],
            r#"{"stock": -1}"#,
        )
        .await;
    bad.assert_problem(400, "invalid-product");
    let bad_again = app
        .admin(
            "PATCH",
            "/admin/products/700001",
            &[("idempotency-key", "bad-1")],
            r#"{"stock": -1}"#,
        )
        .await;
    assert_eq!(bad_again.header("idempotent-replayed"), Some("true"));
    assert_eq!(bad_again.body, bad.body);

    // After the key expires, the same request runs again.
    poll(|| async {
        let again = app
            .admin("PUT", "/admin/products/700001", &key, &body)
            .await;
        (again.header("idempotent-replayed").is_none()).then_some(again)
    })
    .await
    .json()["version"]
        .as_i64()
        .filter(|v| *v == 2)
        .expect("applied once more after expiry");
    app.shutdown().await;
}

#[tokio::test]
async fn all_in_one_without_redis_invalidates_over_the_in_process_bus() {
    let db = seeded(5, 4).await;
    let mut config = TestApp::config(&db);
    config.redis_url = None;
    let app = TestApp::spawn_as(&config, Role::All).await;
    let (id, _) = product_in_category(&db).await;
    assert_eq!(
        app.get(&format!("/products/{id}")).await.json()["version"],
        1
    );
    set_stock(&app, id, 31).await;
    assert!(app.metric("catalog_invalidations_total").await >= 1.0);
    assert_eq!(app.metric("catalog_l2_hits_total").await, 0.0);
    // Tokens work too: the bus carries the watermark.
    let token = patch_stock(&app, id, 32)
        .await
        .header("catalog-token")
        .unwrap()
        .to_owned();
    let doc = app
        .request(
            "GET",
            &format!("/products/{id}"),
            &[("min-catalog-token", &token)],
        )
        .await
        .json();
    assert_eq!(doc["stock"], 32);
    app.shutdown().await;
}

async fn listed_categories(app: &TestApp) -> Vec<Value> {
    app.get("/categories").await.json()["items"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn categories_and_purges_reach_the_readers() {
    let db = seeded(20, 4).await;
    let app = TestApp::spawn_as(&TestApp::config(&db), Role::All).await;
    let (id, parent) = product_in_category(&db).await;
    assert_eq!(listed_categories(&app).await.len(), 4);

    let body = format!(r#"{{"name": "New lamps", "parent": "{parent}"}}"#);
    let created = app
        .admin("PUT", "/admin/categories/new-lamps", &[], &body)
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert!(created.header("catalog-token").is_some());
    poll(|| async {
        listed_categories(&app)
            .await
            .iter()
            .any(|c| c["slug"] == "new-lamps" && c["parent"] == parent.as_str())
            .then_some(())
    })
    .await;
    let renamed = app
        .admin(
            "PUT",
            "/admin/categories/new-lamps",
            &[],
            r#"{"name": "Lamps, new"}"#,
        )
        .await;
    assert_eq!(renamed.status, 200);
    poll(|| async {
        listed_categories(&app)
            .await
            .iter()
            .any(|c| c["name"] == "Lamps, new")
            .then_some(())
    })
    .await;

    // A product joins the category, then the category is deleted: the product's
    // document (which lists its categories) gets a new version without it.
    let joined = app
        .admin(
            "PATCH",
            &format!("/admin/products/{id}"),
            &[],
            r#"{"categories": ["new-lamps"]}"#,
        )
        .await;
    assert_eq!(joined.status, 200, "{}", joined.text());
    let doc = wait_for_version(&app, id, 2).await;
    assert_eq!(doc["categories"], serde_json::json!(["new-lamps"]));
    // The page's ids come from a replica: read it with the write's token.
    let token = joined
        .header("catalog-token")
        .expect("a write answers a token");
    let page = app
        .request(
            "GET",
            "/categories/new-lamps/products",
            &[("min-catalog-token", token)],
        )
        .await
        .json();
    assert_eq!(page["items"][0]["id"], id);
    let deleted = app
        .admin("DELETE", "/admin/categories/new-lamps", &[], "")
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let doc = wait_for_version(&app, id, 3).await;
    assert_eq!(doc["categories"], serde_json::json!([]));
    poll(|| async {
        (app.get("/categories/new-lamps/products").await.status == 404).then_some(())
    })
    .await;

    // Refusals.
    app.admin("DELETE", "/admin/categories/new-lamps", &[], "")
        .await
        .assert_problem(404, "category-not-found");
    app.admin("PUT", "/admin/categories/Bad_Slug", &[], r#"{"name": "x"}"#)
        .await
        .assert_problem(400, "invalid-slug");
    app.admin(
        "PUT",
        "/admin/categories/orphan",
        &[],
        r#"{"name": "x", "parent": "nowhere"}"#,
    )
    .await
    .assert_problem(422, "unknown-categories");
    assert_eq!(
        app.admin("PUT", "/admin/categories/ca", &[], r#"{"name": "A"}"#)
            .await
            .status,
        201
    );
    let child = app
        .admin(
            "PUT",
            "/admin/categories/cb",
            &[],
            r#"{"name": "B", "parent": "ca"}"#,
        )
        .await;
    assert_eq!(child.status, 201);
    app.admin(
        "PUT",
        "/admin/categories/ca",
        &[],
        r#"{"name": "A", "parent": "cb"}"#,
    )
    .await
    .assert_problem(400, "invalid-product");
    app.admin("POST", "/admin/categories/ca", &[], "")
        .await
        .assert_problem(405, "method-not-allowed");

    // An operator's purge of one category drops its products from L1 ...
    let (other, slug) = product_in_category(&db).await;
    app.get(&format!("/products/{other}")).await;
    let purged = app
        .admin(
            "POST",
            "/admin/purge",
            &[],
            &format!(r#"{{"category": "{slug}"}}"#),
        )
        .await;
    assert_eq!(purged.status, 202, "{}", purged.text());
    poll(|| async {
        let misses = app.metric("catalog_l1_misses_total").await;
        app.get(&format!("/products/{other}")).await;
        (app.metric("catalog_l1_misses_total").await > misses).then_some(())
    })
    .await;
    // ... and a purge of everything flushes every reader's L1.
    let flushes = app.metric("catalog_l1_flushes_total").await;
    assert_eq!(app.admin("POST", "/admin/purge", &[], "").await.status, 202);
    poll(|| async { (app.metric("catalog_l1_flushes_total").await > flushes).then_some(()) }).await;
    app.admin("POST", "/admin/purge", &[], r#"{"category": "nowhere"}"#)
        .await
        .assert_problem(404, "category-not-found");
    app.shutdown().await;
}

#[tokio::test]
async fn bulk_import_streams_batches_and_reports_every_line() {
    let db = seeded(5, 4).await;
    let app = TestApp::spawn_as(&TestApp::config(&db), Role::All).await;
    let (_, slug) = product_in_category(&db).await;
    let taken_sku: String = sqlx::query_scalar("select sku from products where id = 1")
        .fetch_one(&db.primary)
        .await
        .unwrap();
    let mut body = String::new();
    for n in 0..2_000 {
        let line = serde_json::json!({
            "id": 800_000 + n,
            "sku": format!("BULK-{n}"),
            "name": format!("Bulk product {n}"),
            "price": {"amount": 100 + n, "currency": "USD"},
            "categories": [slug.clone()],
        });
        body.push_str(&line.to_string());
        body.push('\n');
    }
    body.push_str("{not json\n");
    body.push_str(
        r#"{"id": 900001, "sku": "X", "name": "x", "price": {"amount": -1, "currency": "USD"}}"#,
    );
    body.push('\n');
    body.push_str(&format!(
        r#"{{"id": 900002, "sku": "{taken_sku}", "name": "x", "price": {{"amount": 1, "currency": "USD"}}}}"#
    ));
    body.push_str("\n\n");
    body.push_str(r#"{"id": 900003, "sku": "Y", "name": "y", "price": {"amount": 1, "currency": "USD"}, "categories": ["nowhere"]}"#);

    let started = Instant::now();
    let reply = app.admin("POST", "/admin/products/bulk", &[], &body).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/x-ndjson"));
    assert!(reply.header("catalog-token").is_some());
    let report: Vec<Value> = reply
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = &report.last().unwrap()["summary"];
    assert_eq!(summary["written"], 2_000);
    assert_eq!(summary["failed"], 4);
    assert_eq!(summary["lines"], 2_005);
    let status_of = |line: u64| {
        report.iter().find(|r| r["line"] == line).map(|r| {
            (
                r["status"].as_u64().unwrap(),
                r["type"].as_str().unwrap_or("").to_owned(),
            )
        })
    };
    assert_eq!(status_of(1), Some((201, String::new())));
    assert_eq!(
        status_of(2_001).unwrap(),
        (400, "/problems/malformed-json".to_owned())
    );
    assert_eq!(
        status_of(2_002).unwrap(),
        (400, "/problems/invalid-product".to_owned())
    );
    assert_eq!(
        status_of(2_003).unwrap(),
        (409, "/problems/sku-taken".to_owned())
    );
    assert_eq!(status_of(2_004), None, "blank line");
    assert_eq!(
        status_of(2_005).unwrap(),
        (422, "/problems/unknown-categories".to_owned())
    );
    let imported: i64 = sqlx::query_scalar("select count(*) from products where id >= 800000")
        .fetch_one(&db.primary)
        .await
        .unwrap();
    assert_eq!(imported, 2_000);
    let memberships: i64 = sqlx::query_scalar(
        "select count(*) from product_categories where product_id between 800000 and 899999",
    )
    .fetch_one(&db.primary)
    .await
    .unwrap();
    assert_eq!(memberships, 2_000);
    eprintln!(
        "bulk import: 2,000 products in {elapsed:?} ({:.0} per second)",
        2_000.0 / elapsed.as_secs_f64()
    );
    assert_eq!(
        wait_for_version(&app, 801_999, 1).await["name"],
        "Bulk product 1999"
    );
    app.shutdown().await;
}
