//! The coherence protocol against the real stack: admin writes propagating to
//! readers (single gets, batches, pages), relay healing, gaps, resets, tokens, the
//! in-process bus, and the consistency checker under concurrent reads and writes.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use catalog::checker::{Event, Report};
use catalog::coherence::stream::Invalidation;
use catalog::startup::Role;
use common::admin::{
    create_category, lamp, patch_stock, product_in_category, set_stock, wait_for_version,
};
use common::fault::{self, FaultProxy};
use common::{OwnRedis, Stack, TestApp, TestDb, poll, seeded};
use fred::prelude::*;

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
    // The relay counts a round once it committed, which a reader may beat.
    poll(|| async { (app.metric("catalog_relay_published_total").await >= 1.0).then_some(()) })
        .await;
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
    // The round marks its rows once its entries are out (a reader may be quicker).
    common::admin::outbox_drained(&db.primary).await;
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
        .get(catalog::coherence::relay::epoch_key(&prefix))
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
            vec![catalog::coherence::relay::stream_key(&prefix)],
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

    let report = Report::check(&acks, &reads, WINDOW);
    let applied = histogram_quantiles(&app, "catalog_propagation_seconds", &[0.5, 0.99]).await;
    eprintln!(
        "consistency checker: {report}; commit → invalidation applied at the reader \
         (histogram bucket bounds): p50 <= {} s, p99 <= {} s",
        applied[0], applied[1],
    );
    assert_eq!(
        report.stale, 0,
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

/// A relay of the test's own, publishing to the test database's Redis stream only when
/// the test runs its rounds.
async fn own_relay(
    db: &TestDb,
    config: &catalog::config::Config,
) -> catalog::coherence::relay::Relay {
    use catalog::coherence::relay::{Relay, Sink};
    use catalog::store::redis::{L2, L2Config};

    let l2 = L2::connect(&L2Config {
        url: config.redis_url.clone().unwrap(),
        prefix: config.redis_prefix.clone(),
        ttl: config.l2_ttl,
        command_timeout: config.redis_timeout,
        breaker_trips: Default::default(),
    })
    .unwrap();
    l2.wait_connected(Duration::from_secs(5)).await.unwrap();
    Relay::new(
        db.primary.clone(),
        Sink::redis(l2, &config.redis_prefix, config.stream_max_len),
        Arc::new(catalog::metrics::Metrics::new()),
        config.heartbeat,
    )
}

/// 300 unpublished outbox rows of products that do not exist (more than a relay round
/// takes), then `id`'s stock set to `stock`, committed behind them as its version 2.
async fn backlog_then_stock(db: &TestDb, id: i64, stock: i64) {
    sqlx::query(
        "insert into outbox (product_id, version, categories, created_at) \
         select g, 1, '{}', clock_timestamp() from generate_series(900001, 900300) g",
    )
    .execute(&db.primary)
    .await
    .unwrap();
    let patch = format!(r#"{{"stock": {stock}}}"#);
    let committed = catalog::write::tx::product::patch(&db.primary, id, patch.as_bytes(), None)
        .await
        .unwrap();
    assert_eq!(committed.written.version, 2);
}

#[tokio::test]
async fn a_relay_round_stopped_at_its_batch_limit_carries_no_watermark() {
    let db = seeded(10, 4).await;
    let config = TestApp::config(&db);
    // A reader alone: nothing publishes until this test runs the relay's rounds.
    let app = TestApp::spawn(&config).await;
    let (id, _) = product_in_category(&db).await;
    assert_eq!(
        app.get(&format!("/products/{id}")).await.json()["version"],
        1
    );
    // A backlog: more unpublished rows than one round takes, then the product's write.
    backlog_then_stock(&db, id, 77).await;
    let token = catalog::write::tx::outbox::token(&db.primary, Duration::from_secs(2))
        .await
        .expect("the write's token");
    // Later writes move the primary's WAL position past the token, as a busy primary's do.
    let other = if id == 1 { 2 } else { 1 };
    catalog::write::tx::product::patch(&db.primary, other, br#"{"stock": 1}"#, None)
        .await
        .unwrap();

    let relay = own_relay(&db, &config).await;
    // One round: the oldest 256 rows, not the product's.
    assert_eq!(relay.round().await.unwrap(), 256);
    poll(|| async { (app.metric("catalog_invalidations_total").await >= 256.0).then_some(()) })
        .await;
    // The reader has applied everything the round published, and nothing that covers
    // the write: a read with its token must not be answered from the stale L1 entry.
    let read = app
        .request(
            "GET",
            &format!("/products/{id}"),
            &[("min-catalog-token", &token)],
        )
        .await;
    assert_eq!(read.json()["version"], 2, "token {token}");
    assert_eq!(read.json()["stock"], 77);
    // The next round drains the backlog and carries the watermark again.
    assert_eq!(relay.round().await.unwrap(), 46);
    wait_for_version(&app, id, 2).await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_single_write_is_published_before_a_bulk_import_backlog() {
    let db = seeded(10, 4).await;
    let config = TestApp::config(&db);
    // A reader alone: nothing publishes until this test runs the relay's rounds.
    let app = TestApp::spawn(&config).await;
    let (id, _) = product_in_category(&db).await;
    assert_eq!(
        app.get(&format!("/products/{id}")).await.json()["version"],
        1
    );
    // A bulk import's backlog, committed before the product's single write.
    let mut tx = db.primary.begin().await.unwrap();
    catalog::write::tx::outbox::bulk_lane(&mut tx)
        .await
        .unwrap();
    sqlx::query(
        "insert into outbox (product_id, version, categories, created_at) \
         select g, 1, '{}', clock_timestamp() from generate_series(900001, 900600) g",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    catalog::write::tx::product::patch(&db.primary, id, br#"{"stock": 78}"#, None)
        .await
        .unwrap();

    let relay = own_relay(&db, &config).await;
    // The first round takes the single write ahead of the older bulk rows.
    assert_eq!(relay.round().await.unwrap(), 256);
    let published: bool = sqlx::query_scalar(
        "select published_at is not null from outbox where product_id = $1 and version = 2",
    )
    .bind(id)
    .fetch_one(&db.primary)
    .await
    .unwrap();
    assert!(published, "the single write waited behind the bulk backlog");
    wait_for_version(&app, id, 2).await;
    // The bulk lane follows, oldest first, until it is drained.
    assert_eq!(relay.round().await.unwrap(), 256);
    assert_eq!(relay.round().await.unwrap(), 89);
    let unpublished: i64 =
        sqlx::query_scalar("select count(*) from outbox where published_at is null")
            .fetch_one(&db.primary)
            .await
            .unwrap();
    assert_eq!(unpublished, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_frozen_redis_is_a_silent_feed_and_readers_stop_trusting_l1() {
    let db = seeded(10, 4).await;
    let redis = OwnRedis::start().await;
    let mut config = TestApp::config(&db);
    config.redis_url = Some(format!("redis://127.0.0.1:{}", redis.port));
    config.heartbeat = Duration::from_millis(100);
    config.feed_silence = Duration::from_millis(600);
    let app = TestApp::spawn_as(&config, Role::All).await;
    let (id, _) = product_in_category(&db).await;
    assert_eq!(
        app.get(&format!("/products/{id}")).await.json()["version"],
        1
    );
    // Heartbeats flow while nothing changes: the feed is not silent.
    poll(|| async { (app.metric("catalog_relay_heartbeats_total").await >= 3.0).then_some(()) })
        .await;
    assert_eq!(app.metric("catalog_feed_silent").await, 0.0);
    assert_eq!(app.get("/readyz").await.text(), "ready\n");

    redis.freeze();
    let frozen = Instant::now();
    // The write is acknowledged (the primary is fine); its invalidation cannot flow.
    let version = patch_stock(&app, id, 41).await.json()["version"]
        .as_i64()
        .unwrap();
    // Within the silence limit (and a watchdog tick) the reader stops serving the old
    // copy from L1.
    let doc = wait_for_version(&app, id, version).await;
    eprintln!(
        "Redis frozen: new version served after {:?}",
        frozen.elapsed()
    );
    assert_eq!(doc["stock"], 41);
    assert_eq!(app.metric("catalog_feed_silent").await, 1.0);
    assert!(app.metric("catalog_feed_silences_total").await >= 1.0);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert!(
        ready.text().contains("invalidation feed silent"),
        "{}",
        ready.text()
    );

    redis.thaw();
    poll(|| async { (app.metric("catalog_feed_silent").await == 0.0).then_some(()) }).await;
    assert_eq!(app.get("/readyz").await.text(), "ready\n");
    app.shutdown().await;
}

#[tokio::test]
async fn a_feed_heard_again_is_trusted_only_once_it_has_caught_up_with_the_primary() {
    let db = seeded(10, 4).await;
    let mut config = TestApp::config(&db);
    // Long enough that the feed, heard again, does not fall silent before the test looks.
    config.feed_silence = Duration::from_millis(1_500);
    // A reader alone: nothing publishes until this test runs the relay's rounds.
    let app = TestApp::spawn(&config).await;
    let (id, _) = product_in_category(&db).await;
    let relay = own_relay(&db, &config).await;
    // The product's document goes to L2 by a published round, as the relay does.
    sqlx::query("insert into outbox (product_id, version) values ($1, 1)")
        .bind(id)
        .execute(&db.primary)
        .await
        .unwrap();
    assert_eq!(relay.round().await.unwrap(), 1);
    poll(|| async { (app.metric("catalog_invalidations_total").await >= 1.0).then_some(()) }).await;
    assert_eq!(
        app.get(&format!("/products/{id}")).await.json()["version"],
        1
    );

    // The relay stops (as when Redis freezes): the feed goes silent.
    poll(|| async { (app.metric("catalog_feed_silent").await == 1.0).then_some(()) }).await;
    // Meanwhile a backlog builds, then a write is acknowledged behind it.
    backlog_then_stock(&db, id, 78).await;

    // The relay is back and publishes its oldest 256 rows: the feed is heard again,
    // but the write is not announced yet, and L2 still holds version 1.
    assert_eq!(relay.round().await.unwrap(), 256);
    poll(|| async { (app.metric("catalog_invalidations_total").await >= 257.0).then_some(()) })
        .await;
    // The watchdog's next look (every quarter of the limit) decides; until then /readyz
    // says silent.
    let ready = poll(|| async {
        let text = app.get("/readyz").await.text();
        (!text.contains("invalidation feed silent for")).then_some(text)
    })
    .await;
    let read = app.get(&format!("/products/{id}")).await.json();
    assert_eq!(read["version"], 2, "the acknowledged write, not L2's copy");
    assert_eq!(read["stock"], 78);
    assert!(
        ready.contains("catching up to the primary's position"),
        "heard again, not caught up: {ready}"
    );
    assert_eq!(app.metric("catalog_feed_silent").await, 1.0);

    // The rest of the backlog and the write, with a watermark past the position read.
    assert_eq!(relay.round().await.unwrap(), 45);
    poll(|| async { (app.metric("catalog_feed_silent").await == 0.0).then_some(()) }).await;
    assert_eq!(app.get("/readyz").await.text(), "ready\n");
    assert_eq!(
        app.get(&format!("/products/{id}")).await.json()["version"],
        2
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_create_is_found_by_sku_with_its_token_at_once() {
    let db = seeded(10, 2).await;
    let app = TestApp::spawn_as(&TestApp::config(&db), Role::All).await;
    // The reader learns that no product has this SKU (a cached negative entry).
    app.get("/products/by-sku/NEW-SKU-1")
        .await
        .assert_problem(404, "product-not-found");
    let body = serde_json::json!({
        "sku": "NEW-SKU-1",
        "name": "New lamp",
        "price": {"amount": 1999, "currency": "EUR"},
        "stock": 2,
    })
    .to_string();
    let created = app.admin("PUT", "/admin/products/900100", &[], &body).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let token = created.header("catalog-token").unwrap().to_owned();
    // No polling: the read carrying the create's token finds it.
    let read = app
        .request(
            "GET",
            "/products/by-sku/NEW-SKU-1",
            &[("min-catalog-token", &token)],
        )
        .await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["id"], 900100);
    app.shutdown().await;
}

/// A client of the Redis `config` names, connected.
async fn redis_client(config: &catalog::config::Config) -> Client {
    let url = config.redis_url.as_deref().expect("a Redis URL");
    let redis = Builder::from_config(Config::from_url(url).unwrap())
        .build()
        .unwrap();
    redis.init().await.unwrap();
    redis
}

/// Waits until L2's `key` holds `version` of its product.
async fn wait_for_l2_version(redis: &Client, key: &str, version: i64) {
    let prefix = format!("F{version}|");
    poll(|| async {
        let value: String = redis.get::<Option<String>, _>(key).await.ok()??;
        value.starts_with(&prefix).then_some(())
    })
    .await;
}

/// The relay loads its write-through script once. A Redis that forgot it (a restart, a
/// failover to a node that never had it, `SCRIPT FLUSH`) answers `NOSCRIPT`; the relay
/// loads it again within the round, and the round's documents reach L2 (a writer alone,
/// so no reader's write-back puts them there instead).
#[tokio::test]
async fn the_relay_loads_its_write_through_script_again_when_redis_lost_it() {
    let db = seeded(10, 4).await;
    let config = TestApp::config(&db);
    let writer = TestApp::spawn_as(&config, Role::Writer).await;
    let redis = redis_client(&config).await;
    let key = format!("{}p:1", config.redis_prefix);
    let version = |reply: common::Reply| reply.json()["version"].as_i64().unwrap();

    let first = version(patch_stock(&writer, 1, 5).await);
    wait_for_l2_version(&redis, &key, first).await;
    redis.script_flush(false).await.unwrap();
    let second = version(patch_stock(&writer, 1, 6).await);
    wait_for_l2_version(&redis, &key, second).await;
    assert_eq!(writer.metric("catalog_relay_errors_total").await, 0.0);
    writer.shutdown().await;
}

/// A change to categories is published with the position where it is visible: a
/// replica that has replayed that position has it (readers fill `GET /categories` from
/// such a database). A product's change carries none.
#[tokio::test]
async fn a_category_change_carries_the_position_where_it_is_visible() {
    let db = seeded(10, 4).await;
    let config = TestApp::config(&db);
    let app = TestApp::spawn_as(&config, Role::All).await;
    let (id, _) = product_in_category(&db).await;
    set_stock(&app, id, 12).await;
    create_category(&app, "new-in", "New in").await;

    let redis = redis_client(&config).await;
    let stream = catalog::coherence::relay::stream_key(&config.redis_prefix);
    let entries: Vec<Invalidation> = poll(|| async {
        let all: Vec<(String, HashMap<String, String>)> =
            redis.xrange(&stream, "-", "+", None).await.ok()?;
        let entries: Vec<Invalidation> = all
            .iter()
            .filter_map(|(_, fields)| Invalidation::parse(fields))
            .collect();
        entries
            .iter()
            .any(|e| e.categories == ["new-in"])
            .then_some(entries)
    })
    .await;
    let category = entries.iter().find(|e| e.categories == ["new-in"]).unwrap();
    assert_eq!(category.product_id, None);
    let visible_at = category
        .visible_at
        .expect("the position of a category change");
    let product = entries.iter().find(|e| e.product_id == Some(id)).unwrap();
    assert_eq!(product.visible_at, None);

    let replica = db.replica().await;
    poll(|| async {
        let replayed: String = sqlx::query_scalar("select pg_last_wal_replay_lsn()::text")
            .fetch_one(&replica)
            .await
            .ok()?;
        (catalog::store::replicas::parse_lsn(&replayed)? >= visible_at).then_some(())
    })
    .await;
    let names: Vec<String> =
        sqlx::query_scalar("select name from categories where slug = 'new-in'")
            .fetch_all(&replica)
            .await
            .unwrap();
    assert_eq!(names, ["New in"]);
    redis.quit().await.unwrap();
    app.shutdown().await;
}

#[tokio::test]
async fn a_rollback_after_a_large_import_does_not_stall_the_relay() {
    let db = seeded(10, 4).await;
    let mut config = TestApp::config(&db);
    // A short deadline, so that marking every change of L2's lifetime unpublished in one
    // statement, what a recovery used to do, cannot finish in it.
    config.db_timeout = Duration::from_millis(300);
    let app = TestApp::spawn_as(&config, Role::All).await;
    let (id, _) = product_in_category(&db).await;
    set_stock(&app, id, 11).await;
    // An import's worth of changes published within L2's lifetime.
    sqlx::query(
        "insert into outbox (product_id, version, categories, created_at, published_at) \
         select 1 + i % 10, 1, '{}', now(), now() from generate_series(1, 200000) i",
    )
    .execute(&db.primary)
    .await
    .unwrap();
    let published = app.metric("catalog_relay_published_total").await;

    // Redis loses the stream: the relay's next round finds its sequence ahead of it.
    let redis = redis_client(&config).await;
    let stream = catalog::coherence::relay::stream_key(&config.redis_prefix);
    let _: i64 = redis.del(&stream).await.unwrap();
    poll(|| async { (app.metric("catalog_stream_rollbacks_total").await >= 1.0).then_some(()) })
        .await;

    // A write after the loss is published (beside the changes published again, batch by
    // batch), and readers see it.
    let version = patch_stock(&app, id, 77).await.json()["version"]
        .as_i64()
        .unwrap();
    poll(|| async {
        sqlx::query_scalar::<_, bool>(
            "select published_at is not null from outbox where product_id = $1 and version = $2",
        )
        .bind(id)
        .bind(version)
        .fetch_one(&db.primary)
        .await
        .ok()?
        .then_some(())
    })
    .await;
    assert_eq!(wait_for_version(&app, id, version).await["stock"], 77);
    poll(|| async {
        (app.metric("catalog_relay_published_total").await > published + 1000.0).then_some(())
    })
    .await;
    redis.quit().await.unwrap();
    app.shutdown().await;
}

/// Restores the stream and a document as a snapshot had them, in one atomic script:
/// every entry after `ARGV[1]` is deleted and `KEYS[2]` set to `ARGV[2]`; returns how
/// many entries went.
const RESTORE_SNAPSHOT: &str = r"
local lost = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+')
for _, entry in ipairs(lost) do
  redis.call('XDEL', KEYS[1], entry[1])
end
redis.call('SET', KEYS[2], ARGV[2])
return #lost
";

/// What a Redis snapshot holds of product `id`: its L2 value and where the stream ends.
struct Snapshot {
    stream: String,
    key: String,
    value: String,
    end: String,
}

impl Snapshot {
    /// Taken once `app` has served `id` at version 1 (the reader's write-back put it in
    /// L2).
    async fn take(app: &TestApp, redis: &Client, prefix: &str, id: i64) -> Self {
        let stream = catalog::coherence::relay::stream_key(prefix);
        let key = format!("{prefix}p:{id}");
        assert_eq!(
            app.get(&format!("/products/{id}")).await.json()["version"],
            1
        );
        let value: String =
            poll(|| async { redis.get::<Option<String>, _>(&key).await.ok()? }).await;
        let entries: Vec<(String, HashMap<String, String>)> =
            redis.xrange(&stream, "-", "+", None).await.unwrap();
        let end = entries
            .last()
            .map_or("0-0".to_owned(), |(id, _)| id.clone());
        Self {
            stream,
            key,
            value,
            end,
        }
    }

    /// Redis comes back from the snapshot, at once: the entries published since are
    /// gone, L2 holds the snapshot's value again, and the epoch key is the same. Returns
    /// how many entries went.
    async fn restore(&self, redis: &Client) -> i64 {
        redis
            .eval(
                RESTORE_SNAPSHOT,
                vec![self.stream.clone(), self.key.clone()],
                vec![self.end.clone(), self.value.clone()],
            )
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_redis_that_rolls_back_is_a_reset_and_its_old_documents_are_replaced() {
    let db = seeded(10, 4).await;
    let config = TestApp::config(&db);
    let app = TestApp::spawn_as(&config, Role::All).await;
    let (id, _) = product_in_category(&db).await;
    let redis = redis_client(&config).await;
    let snapshot = Snapshot::take(&app, &redis, &config.redis_prefix, id).await;

    // Changes after it: version 2, published and applied, and the heartbeat that follows
    // its round (after which the relay is quiet until the next heartbeat is due).
    set_stock(&app, id, 55).await;
    poll(|| async {
        let after: Vec<(String, HashMap<String, String>)> =
            redis.xrange(&snapshot.stream, "-", "+", None).await.ok()?;
        let entries: Vec<Invalidation> = after
            .iter()
            .filter_map(|(_, fields)| Invalidation::parse(fields))
            .collect();
        let change = entries
            .iter()
            .position(|e| e.product_id == Some(id) && e.version == 2)?;
        entries[change..].iter().any(|e| e.heartbeat).then_some(())
    })
    .await;
    let lost = snapshot.restore(&redis).await;
    assert!(lost >= 2, "{lost} entries deleted");

    // The relay's next round (a heartbeat at the latest) notices, and every reader resets.
    poll(|| async { (app.metric("catalog_stream_rollbacks_total").await >= 1.0).then_some(()) })
        .await;
    poll(|| async { (app.metric("catalog_stream_resets_total").await >= 1.0).then_some(()) }).await;
    // The republished change put version 2 back into L2 over the restored copy.
    wait_for_l2_version(&redis, &snapshot.key, 2).await;
    // A reader started now has no floor from before: it must not get the old copy.
    let late = TestApp::spawn(&config).await;
    let doc = late.get(&format!("/products/{id}")).await.json();
    assert_eq!(doc["version"], 2);
    assert_eq!(doc["stock"], 55);
    late.shutdown().await;
    redis.quit().await.unwrap();
    app.shutdown().await;
}

/// Redis loses entries while a relay round runs: the round read the stream's state
/// before the loss (a failover in the middle of the round, its commands retried on the
/// new primary). Its entries must not land on top of the loss, or the stream would end
/// where the relay's sequence expects and the rollback would never be found: L2 would
/// keep the restored, older documents for their whole lifetime.
#[tokio::test]
async fn entries_lost_while_a_round_runs_are_found_as_a_rollback() {
    let db = seeded(10, 4).await;
    let direct = TestApp::config(&db);
    let redis_url = direct.redis_url.clone().expect("a Redis URL");
    let proxy = FaultProxy::start(fault::target(&redis_url)).await;
    let mut config = direct.clone();
    config.redis_url = Some(fault::through(&redis_url, proxy.addr));
    // Idle rounds come as heartbeats, which append.
    config.heartbeat = Duration::from_millis(50);
    let app = TestApp::spawn_as(&config, Role::All).await;
    let (id, _) = product_in_category(&db).await;
    let redis = redis_client(&direct).await;
    let snapshot = Snapshot::take(&app, &redis, &config.redis_prefix, id).await;
    set_stock(&app, id, 56).await;

    // The next round reads the stream's state, and is held there while Redis comes back
    // from the snapshot.
    proxy.freeze_on(b"XREVRANGE");
    poll(|| async { proxy.is_frozen().then_some(()) }).await;
    let lost = snapshot.restore(&redis).await;
    assert!(lost >= 1, "{lost} entries deleted");
    proxy.thaw();

    // The rollback is found, and version 2 goes back into L2 over the restored copy.
    poll(|| async { (app.metric("catalog_stream_rollbacks_total").await >= 1.0).then_some(()) })
        .await;
    wait_for_l2_version(&redis, &snapshot.key, 2).await;
    redis.quit().await.unwrap();
    app.shutdown().await;
}

#[tokio::test]
async fn the_auditor_finds_an_entry_a_lost_invalidation_left_stale() {
    let db = seeded(10, 2).await;
    let mut config = TestApp::config(&db);
    // A reader without a feed: nothing will invalidate what it caches.
    config.redis_url = None;
    config.read.audit_interval = Some(Duration::from_millis(100));
    config.read.audit_sample = 100;
    let app = TestApp::spawn(&config).await;
    let (id, _) = product_in_category(&db).await;
    assert_eq!(
        app.get(&format!("/products/{id}")).await.json()["version"],
        1
    );
    // A write this reader never hears of, made (as far as the row says) 10 s ago.
    sqlx::query(
        "update products set stock = 3, version = version + 1, \
         updated_at = now() - interval '10 seconds' where id = $1",
    )
    .bind(id)
    .execute(&db.primary)
    .await
    .unwrap();
    poll(|| async { (app.metric("catalog_stale_detected_total").await >= 1.0).then_some(()) })
        .await;
    assert!(app.metric("catalog_stalest_entry_seconds").await >= 10.0);
    app.shutdown().await;
}

#[tokio::test]
async fn one_writer_relay_leads_and_another_takes_over_when_it_stops() {
    let db = seeded(10, 4).await;
    let config = TestApp::config(&db);
    let reader = TestApp::spawn_as(&config, Role::Reader).await;
    let first = TestApp::spawn_as(&config, Role::Writer).await;
    poll(|| async { (first.metric("catalog_relay_leader").await == 1.0).then_some(()) }).await;
    let second = TestApp::spawn_as(&config, Role::Writer).await;
    // The second writer follows (it keeps trying, and keeps failing, while the first leads).
    let (id, _) = product_in_category(&db).await;
    assert_eq!(patch_stock(&second, id, 11).await.status, 200);
    wait_for_version(&reader, id, 2).await;
    const PUBLISHED: &str = "catalog_relay_published_total";
    poll(|| async { (first.metric(PUBLISHED).await >= 1.0).then_some(()) }).await;
    assert_eq!(second.metric("catalog_relay_leader").await, 0.0);
    assert_eq!(second.metric(PUBLISHED).await, 0.0);

    // The leader stops: the follower takes over and publishes, with no gap.
    first.shutdown().await;
    let stopped = Instant::now();
    poll(|| async { (second.metric("catalog_relay_leader").await == 1.0).then_some(()) }).await;
    let handover = stopped.elapsed();
    assert_eq!(patch_stock(&second, id, 12).await.status, 200);
    wait_for_version(&reader, id, 3).await;
    poll(|| async { (second.metric(PUBLISHED).await >= 1.0).then_some(()) }).await;
    assert_eq!(reader.metric("catalog_stream_gaps_total").await, 0.0);
    assert_eq!(reader.metric("catalog_stream_resets_total").await, 0.0);
    eprintln!("relay leadership handed over {handover:?} after the leader stopped");
    second.shutdown().await;
    reader.shutdown().await;
}

#[tokio::test]
async fn a_starting_readers_replay_is_not_counted_as_propagation() {
    let db = seeded(10, 4).await;
    let config = TestApp::config(&db);
    let writer = TestApp::spawn_as(&config, Role::Writer).await;
    let first = TestApp::spawn_as(&config, Role::Reader).await;
    for stock in 1..=3 {
        assert_eq!(patch_stock(&writer, 1, stock).await.status, 200);
    }
    wait_for_version(&first, 1, 4).await;
    poll(|| async {
        (first.metric("catalog_propagation_seconds_count").await >= 3.0).then_some(())
    })
    .await;
    // A reader started now replays those changes from the stream: invalidations, but
    // not propagation (they were committed before it existed).
    let late = TestApp::spawn_as(&config, Role::Reader).await;
    poll(|| async { (late.metric("catalog_invalidations_total").await >= 3.0).then_some(()) })
        .await;
    assert_eq!(late.metric("catalog_propagation_seconds_count").await, 0.0);
    // What it applies from now on is.
    assert_eq!(patch_stock(&writer, 1, 9).await.status, 200);
    poll(|| async {
        (late.metric("catalog_propagation_seconds_count").await >= 1.0).then_some(())
    })
    .await;
    for app in [late, first, writer] {
        app.shutdown().await;
    }
}
