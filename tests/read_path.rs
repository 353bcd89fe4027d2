//! The storefront face against the real stack: every route, every error, caching tiers,
//! single-flight fills, Redis going away, and keyset paging under concurrent inserts.

mod common;

use std::time::{Duration, Instant};

use common::fault::{self, FaultProxy};
use common::{OwnRedis, TestApp, TestDb, poll, replica_has_products, seeded};
use serde_json::Value;

/// A configuration whose replica is reached through a fault proxy, without Redis. Its
/// replica is never taken out for lag: the shared replica replays every test's writes,
/// and while other tests seed databases it can fall more than the default bound behind
/// the primary, which would send these tests' reads to the primary, away from the
/// fault they inject.
async fn replica_behind_proxy(db: &TestDb) -> (FaultProxy, catalog::config::Config) {
    let proxy = FaultProxy::start(fault::target(&db.replica_url)).await;
    let mut config = TestApp::config(db);
    config.replica_urls = vec![fault::through(&db.replica_url, proxy.addr)];
    config.redis_url = None;
    config.read.replica_max_lag_bytes = u64::MAX;
    (proxy, config)
}

/// Waits until the app's replica is in its healthy set (its first probe, through a
/// proxy on a busy machine, may have been too slow).
async fn replica_healthy(app: &TestApp) {
    poll(|| async {
        (app.metric(r#"catalog_replica_healthy{replica="0"}"#).await == 1.0).then_some(())
    })
    .await;
}

async fn visible_product(db: &TestDb) -> (i64, String) {
    sqlx::query_as("select id, sku from products where active order by id limit 1")
        .fetch_one(&db.primary)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_product_is_served_with_etag_cache_control_and_304() {
    let db = seeded(50, 5).await;
    let app = TestApp::spawn(&TestApp::config(&db)).await;
    let (id, sku) = visible_product(&db).await;

    let reply = app.get(&format!("/products/{id}")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("etag"), Some("\"1\""));
    assert_eq!(
        reply.header("cache-control"),
        Some("public, max-age=5, stale-while-revalidate=30, stale-if-error=300")
    );
    let doc = reply.json();
    let text = reply.text();
    let positions: Vec<usize> = [
        "id",
        "sku",
        "name",
        "description",
        "brand",
        "price",
        "stock",
        "attributes",
        "images",
        "categories",
        "version",
        "updated_at",
    ]
    .iter()
    .map(|key| {
        text.find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("{key} missing"))
    })
    .collect();
    assert!(positions.is_sorted(), "fields out of order: {text}");
    assert_eq!(doc.as_object().unwrap().len(), 12);
    assert_eq!(doc["id"], id);
    assert_eq!(doc["sku"], sku.as_str());
    assert_eq!(doc["version"], 1);
    assert!(doc["price"]["amount"].as_i64().unwrap() > 0);
    assert_eq!(doc["price"]["currency"].as_str().unwrap().len(), 3);
    assert!(!doc["categories"].as_array().unwrap().is_empty());

    let cached = app
        .request(
            "GET",
            &format!("/products/{id}"),
            &[("if-none-match", "\"1\"")],
        )
        .await;
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());
    assert_eq!(cached.header("etag"), Some("\"1\""));
    let changed = app
        .request(
            "GET",
            &format!("/products/{id}"),
            &[("if-none-match", "\"0\"")],
        )
        .await;
    assert_eq!(changed.status, 200);

    let head = app.request("HEAD", &format!("/products/{id}"), &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("etag"), Some("\"1\""));
    assert_eq!(
        head.header("content-length"),
        Some(reply.body.len().to_string().as_str())
    );

    let by_sku = app.get(&format!("/products/by-sku/{sku}")).await;
    assert_eq!(by_sku.status, 200);
    assert_eq!(by_sku.body, reply.body);
    app.get("/products/by-sku/NO-SUCH-SKU")
        .await
        .assert_problem(404, "product-not-found");
    app.shutdown().await;
}

#[tokio::test]
async fn a_second_read_is_an_l1_hit() {
    let db = seeded(20, 3).await;
    let app = TestApp::spawn(&TestApp::config(&db)).await;
    let (id, _) = visible_product(&db).await;
    assert_eq!(app.get(&format!("/products/{id}")).await.status, 200);
    let hits = app.metric("catalog_l1_hits_total").await;
    let reads = app.metric("catalog_db_reads_replica_total").await;
    assert_eq!(app.get(&format!("/products/{id}")).await.status, 200);
    assert_eq!(app.metric("catalog_l1_hits_total").await, hits + 1.0);
    assert_eq!(app.metric("catalog_db_reads_replica_total").await, reads);
    assert!(app.metric("catalog_l1_entries").await >= 1.0);
    let metrics = app.get("/metrics").await.text();
    assert!(metrics.contains(r#"catalog_http_requests_total{route="product",status="200"} 2"#));
    assert!(metrics.contains("catalog_http_request_duration_seconds_count{route=\"product\"}"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_hundred_concurrent_requests_for_one_cold_key_read_the_database_once() {
    let db = seeded(20, 3).await;
    let app = TestApp::spawn(&TestApp::config(&db)).await;
    let (id, _) = visible_product(&db).await;
    let before = app.metric("catalog_db_reads_replica_total").await
        + app.metric("catalog_db_reads_primary_total").await;
    let path = format!("/products/{id}");
    let replies = futures_util::future::join_all((0..100).map(|_| app.get(&path))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    let after = app.metric("catalog_db_reads_replica_total").await
        + app.metric("catalog_db_reads_primary_total").await;
    assert_eq!(after - before, 1.0, "database reads for one cold key");
    assert_eq!(app.metric("catalog_l2_misses_total").await, 1.0);
    app.shutdown().await;
}

#[tokio::test]
async fn unknown_ids_are_404_and_cached_as_negative_entries() {
    let db = seeded(10, 2).await;
    let app = TestApp::spawn(&TestApp::config(&db)).await;
    app.get("/products/999999")
        .await
        .assert_problem(404, "product-not-found");
    let reads = app.metric("catalog_db_reads_replica_total").await;
    app.get("/products/999999")
        .await
        .assert_problem(404, "product-not-found");
    assert_eq!(app.metric("catalog_db_reads_replica_total").await, reads);
    assert_eq!(app.metric("catalog_negative_hits_total").await, 1.0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_second_reader_is_served_from_redis() {
    let db = seeded(10, 2).await;
    let config = TestApp::config(&db);
    let (id, _) = visible_product(&db).await;
    let first = TestApp::spawn(&config).await;
    let body = first.get(&format!("/products/{id}")).await.body;
    // The write-back runs in the background: wait until Redis has the document.
    use fred::prelude::{ClientLike as _, KeysInterface as _};
    let redis = fred::prelude::Builder::from_config(
        fred::prelude::Config::from_url(config.redis_url.as_deref().unwrap()).unwrap(),
    )
    .build()
    .unwrap();
    redis.init().await.unwrap();
    let key = format!("{}p:{id}", config.redis_prefix);
    poll(|| async {
        let stored: i64 = redis.exists(&key).await.ok()?;
        (stored == 1).then_some(())
    })
    .await;
    redis.quit().await.unwrap();
    first.shutdown().await;
    let second = TestApp::spawn(&config).await;
    let reply = second.get(&format!("/products/{id}")).await;
    assert_eq!(reply.body, body);
    assert_eq!(second.metric("catalog_l2_hits_total").await, 1.0);
    assert_eq!(second.metric("catalog_db_reads_replica_total").await, 0.0);
    second.shutdown().await;
}

#[tokio::test]
async fn batches_keep_request_order_collapse_duplicates_and_list_missing_ids() {
    let db = seeded(300, 4).await;
    let app = TestApp::spawn(&TestApp::config(&db)).await;
    let hidden: Vec<i64> = sqlx::query_scalar("select id from products where not active")
        .fetch_all(&db.primary)
        .await
        .unwrap();
    // Warm one id, so the batch mixes L1 hits and misses.
    app.get("/products/5").await;
    let reply = app.get("/products?ids=7,5,999999,7,3").await;
    assert_eq!(reply.status, 200);
    let json = reply.json();
    let ids: Vec<i64> = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    let mut expected: Vec<i64> = vec![7, 5, 3];
    expected.retain(|id| !hidden.contains(id));
    assert_eq!(ids, expected);
    assert!(
        json["missing"]
            .as_array()
            .unwrap()
            .contains(&Value::from(999_999))
    );

    let all: Vec<String> = (1..=200).map(|i| i.to_string()).collect();
    let reply = app.get(&format!("/products?ids={}", all.join(","))).await;
    assert_eq!(reply.status, 200);
    let json = reply.json();
    let items = json["items"].as_array().unwrap();
    assert_eq!(items.len() + json["missing"].as_array().unwrap().len(), 200);
    let single = app.get("/products/10").await;
    if single.status == 200 {
        let ten = items.iter().find(|d| d["id"] == 10).unwrap();
        assert_eq!(ten, &single.json());
    }

    let too_many: Vec<String> = (1..=201).map(|i| i.to_string()).collect();
    app.get(&format!("/products?ids={}", too_many.join(",")))
        .await
        .assert_problem(400, "too-many-ids");
    app.get("/products")
        .await
        .assert_problem(400, "invalid-ids");
    app.get("/products?ids=1,x")
        .await
        .assert_problem(400, "invalid-ids");
    app.shutdown().await;
}

#[tokio::test]
async fn categories_are_listed_and_paged_with_opaque_cursors() {
    let db = seeded(400, 6).await;
    let app = TestApp::spawn(&TestApp::config(&db)).await;
    let reply = app.get("/categories").await;
    assert_eq!(reply.status, 200);
    let categories = reply.json()["items"].as_array().unwrap().clone();
    assert_eq!(categories.len(), 6);
    let slug = categories[0]["slug"].as_str().unwrap().to_owned();
    assert!(categories[0].get("name").is_some() && categories[0].get("parent").is_some());

    let expected: Vec<i64> = sqlx::query_scalar(
        "select pc.product_id from product_categories pc join categories c on c.id = pc.category_id \
         join products p on p.id = pc.product_id \
         where c.slug = $1 and p.active and p.deleted_at is null order by 1",
    )
    .bind(&slug)
    .fetch_all(&db.primary)
    .await
    .unwrap();
    let walked = walk(&app, &slug, 7).await;
    assert_eq!(walked, expected);

    let first = app
        .get(&format!("/categories/{slug}/products"))
        .await
        .json();
    assert_eq!(
        first["items"].as_array().unwrap().len(),
        expected.len().min(50)
    );

    app.get(&format!("/categories/{slug}/products?limit=0"))
        .await
        .assert_problem(400, "invalid-limit");
    app.get(&format!("/categories/{slug}/products?limit=201"))
        .await
        .assert_problem(400, "invalid-limit");
    app.get(&format!("/categories/{slug}/products?cursor=bogus"))
        .await
        .assert_problem(400, "invalid-cursor");
    let other = categories[1]["slug"].as_str().unwrap();
    let page = app
        .get(&format!("/categories/{slug}/products?limit=1"))
        .await
        .json();
    let cursor = page["next_cursor"].as_str().unwrap();
    app.get(&format!("/categories/{other}/products?cursor={cursor}"))
        .await
        .assert_problem(400, "invalid-cursor");
    app.get("/categories/no-such-category/products")
        .await
        .assert_problem(404, "category-not-found");
    app.shutdown().await;
}

/// Every product id of a category, page by page.
async fn walk(app: &TestApp, slug: &str, limit: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let path = match &cursor {
            Some(c) => format!("/categories/{slug}/products?limit={limit}&cursor={c}"),
            None => format!("/categories/{slug}/products?limit={limit}"),
        };
        let reply = app.get(&path).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let page = reply.json();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= limit);
        ids.extend(items.iter().map(|d| d["id"].as_i64().unwrap()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return ids,
        }
    }
    panic!("paging never ended");
}

#[tokio::test]
async fn paging_during_concurrent_inserts_misses_nothing_and_repeats_nothing() {
    let db = seeded(300, 3).await;
    let app = TestApp::spawn(&TestApp::config(&db)).await;
    let (category_id, slug): (i64, String) = sqlx::query_as(
        "select c.id, c.slug from categories c join product_categories pc on pc.category_id = c.id \
         group by c.id order by count(*) desc limit 1",
    )
    .fetch_one(&db.primary)
    .await
    .unwrap();
    let before: Vec<i64> = sqlx::query_scalar(
        "select pc.product_id from product_categories pc join products p on p.id = pc.product_id \
         where pc.category_id = $1 and p.active order by 1",
    )
    .bind(category_id)
    .fetch_all(&db.primary)
    .await
    .unwrap();

    // New products land in the category, with ids both below and above the walk's position.
    let writer = {
        let pool = db.primary.clone();
        tokio::spawn(async move {
            for n in 0..60_i64 {
                let id = if n % 2 == 0 {
                    10_000 + n
                } else {
                    1_000_000 - n
                };
                sqlx::query(
                    "insert into products (id, sku, name, price_amount, currency) \
                     values ($1, 'NEW-' || $1, 'New', 100, 'USD')",
                )
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
                sqlx::query("insert into product_categories values ($1, $2)")
                    .bind(category_id)
                    .bind(id)
                    .execute(&pool)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let walked = walk(&app, &slug, 5).await;
    writer.await.unwrap();

    let mut sorted = walked.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), walked.len(), "a product was repeated");
    assert_eq!(sorted, walked, "pages are in id order");
    for id in &before {
        assert!(walked.contains(id), "product {id} was missed");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_problem_documents() {
    let db = seeded(5, 1).await;
    let app = TestApp::spawn(&TestApp::config(&db)).await;
    for bad in [
        "/products/abc",
        "/products/0",
        "/products/-3",
        "/products/99999999999999999999",
    ] {
        app.get(bad).await.assert_problem(400, "invalid-id");
    }
    app.get("/nope").await.assert_problem(404, "not-found");
    app.get("/products/1/extra")
        .await
        .assert_problem(404, "not-found");
    let post = app.request("POST", "/products/1", &[]).await;
    post.assert_problem(405, "method-not-allowed");
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    app.request("DELETE", "/categories", &[])
        .await
        .assert_problem(405, "method-not-allowed");
    let long = format!("/products?ids={}", "1,".repeat(3000));
    app.get(&long).await.assert_problem(414, "uri-too-long");
    app.get("/products/by-sku/%ZZ")
        .await
        .assert_problem(400, "invalid-sku");
    app.get(&format!("/products/by-sku/{}", "A".repeat(65)))
        .await
        .assert_problem(400, "invalid-sku");

    let big = "x".repeat(20_000);
    let reply = app.request("GET", "/products/1", &[("x-big", &big)]).await;
    assert_eq!(reply.status, 431);
    let many: Vec<(String, String)> = (0..100).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(app.request("GET", "/products/1", &many).await.status, 431);

    // The server is still up and serving.
    assert_eq!(app.get("/healthz").await.status, 200);
    assert_eq!(app.get("/readyz").await.status, 200);
    app.shutdown().await;
}

/// The change feed is `GET` alone: its 405 (to `HEAD` too) names only `GET` in `Allow`,
/// as its OpenAPI description says (it once said `GET, HEAD` and refused `HEAD`).
#[tokio::test]
async fn the_change_feed_refuses_other_methods_with_allow_get() {
    let db = seeded(1, 1).await;
    let app = TestApp::spawn(&TestApp::config(&db)).await;
    for method in ["HEAD", "POST", "DELETE", "OPTIONS"] {
        let reply = app.request(method, "/changes", &[]).await;
        assert_eq!(reply.status, 405, "{method}");
        assert_eq!(reply.header("allow"), Some("GET"), "{method}");
        if method != "HEAD" {
            reply.assert_problem(405, "method-not-allowed");
        }
    }
    // The other routes still allow both.
    let post = app.request("POST", "/categories", &[]).await;
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    app.shutdown().await;
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served_beside_http1() {
    use http_body_util::{BodyExt as _, Empty};
    let db = seeded(20, 2).await;
    let app = TestApp::spawn(&TestApp::config(&db)).await;
    let (id, _) = visible_product(&db).await;
    let over_http1 = app.get(&format!("/products/{id}")).await;
    assert_eq!(over_http1.status, 200);

    let stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("the server speaks HTTP/2 to a client that opens with its preface");
    tokio::spawn(connection);
    // Twice: a miss-or-hit, then certainly an L1 hit, over one HTTP/2 connection.
    for _ in 0..2 {
        let request = hyper::Request::get(format!("http://{}/products/{id}", app.addr))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, over_http1.body, "the same bytes over both protocols");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_slow_client_is_disconnected_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let db = TestDb::migrated().await;
    let mut config = TestApp::config(&db);
    config.read.header_read_timeout = Duration::from_millis(300);
    let app = TestApp::spawn(&config).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept a slow client's socket open");
    app.shutdown().await;
}

#[tokio::test]
async fn a_slow_reader_of_large_responses_receives_them_whole() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let db = seeded(200, 2).await;
    let mut config = TestApp::config(&db);
    let period = Duration::from_millis(50);
    config.read.header_read_timeout = period;
    let app = TestApp::spawn(&config).await;
    let ids: Vec<String> = (1..=200).map(|id| id.to_string()).collect();
    let path = format!("/products?ids={}", ids.join(","));
    let whole = app.get(&path).await;
    assert_eq!(whole.status, 200);
    assert!(whole.body.len() > 60_000, "{} bytes", whole.body.len());

    // 40 pipelined batches, more than the kernel's socket buffers hold, so the server
    // still writes answers long after their handlers returned, at the client's pace.
    let requests = 40;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut heads = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").repeat(requests - 1);
    heads.push_str(&format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ));
    stream.write_all(heads.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 20 * 1024];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..n]);
        // The client's pace, not a synchronisation: at most about 2 MB/s.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = String::from_utf8_lossy(&received);
    let answered = text.matches("HTTP/1.1 200 OK\r\n").count();
    assert_eq!(
        answered,
        requests,
        "the watchdog cut a slow reader after {:?} and {} bytes",
        started.elapsed(),
        received.len()
    );
    assert!(
        received.ends_with(&whole.body),
        "the last answer was cut short"
    );
    assert!(started.elapsed() > period * 3, "{:?}", started.elapsed());
    app.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_stall_limit() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let db = seeded(200, 2).await;
    let mut config = TestApp::config(&db);
    config.read.header_read_timeout = Duration::from_millis(50);
    config.read.write_stall = Duration::from_millis(500);
    let app = TestApp::spawn(&config).await;
    let ids: Vec<String> = (1..=200).map(|id| id.to_string()).collect();
    let path = format!("/products?ids={}", ids.join(","));
    // 40 pipelined batches, more than the socket buffers hold, then no reading at all:
    // the client's behaviour under test, for four times the stall limit.
    let requests = 40;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut heads = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").repeat(requests - 1);
    heads.push_str(&format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ));
    stream.write_all(heads.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // What the server wrote before it gave up is still there to read, then the end.
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was never closed");
    let answered = String::from_utf8_lossy(&received)
        .matches("HTTP/1.1 200 OK\r\n")
        .count();
    assert!(
        answered < requests,
        "a client that stopped reading kept its connection: {answered} answers"
    );
    // The server goes on serving others.
    assert_eq!(app.get("/products/1").await.status, 200);
    app.shutdown().await;
}

#[tokio::test]
async fn a_prefix_of_the_h2_preface_is_cut_and_a_split_preface_is_served() {
    use http_body_util::{BodyExt as _, Empty};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let db = seeded(5, 1).await;
    let mut config = TestApp::config(&db);
    config.read.header_read_timeout = Duration::from_millis(300);
    let app = TestApp::spawn(&config).await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    // Ten bytes of the preface, then silence: closed after the header timeout.
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(&preface[..10]).await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a prefix of the preface kept its socket open");
    assert!(started.elapsed() >= Duration::from_millis(250));

    // The preface in two writes, then HTTP/2.
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(&preface[..10]).await.unwrap();
    let io = common::SkipWritten::new(stream, 10);
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .expect("HTTP/2 after a preface sent in two parts");
    tokio::spawn(connection);
    let request = hyper::Request::get(format!("http://{}/healthz", app.addr))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(b"ok"), "{body:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn replica_metrics_are_labelled_by_index_not_by_host() {
    let db = seeded(5, 1).await;
    let app = TestApp::spawn(&TestApp::config(&db)).await;
    poll(|| async {
        (app.metric("catalog_replica_healthy{replica=\"0\"}").await == 1.0).then_some(())
    })
    .await;
    let scrape = app.get("/metrics").await.text();
    let host = catalog::store::replicas::display_name(&db.replica_url);
    let (address, _) = host.split_once('/').unwrap();
    for leak in [host.as_str(), address, db.name.as_str()] {
        assert!(!scrape.contains(leak), "/metrics shows {leak:?}");
    }
    assert!(scrape.contains("catalog_replica_lag_bytes{replica=\"0\"}"));
    app.shutdown().await;
}

#[tokio::test]
async fn reads_keep_answering_when_redis_stops() {
    let db = seeded(30, 2).await;
    let mut redis = OwnRedis::start().await;
    let mut config = TestApp::config(&db);
    config.redis_url = Some(format!("redis://127.0.0.1:{}", redis.port));
    config.redis_timeout = Duration::from_millis(100);
    let app = TestApp::spawn(&config).await;
    let ids: Vec<i64> = sqlx::query_scalar("select id from products where active order by id")
        .fetch_all(&db.primary)
        .await
        .unwrap();
    assert_eq!(app.get(&format!("/products/{}", ids[0])).await.status, 200);
    assert_eq!(app.metric("catalog_l2_errors_total").await, 0.0);

    redis.stop();
    // A cached product (L1) and an uncached one (replica) both still answer 200.
    for id in &ids[..5] {
        let reply = app.get(&format!("/products/{id}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let batch = app
        .get(&format!("/products?ids={},{}", ids[6], ids[7]))
        .await;
    assert_eq!(batch.status, 200);
    assert!(app.metric("catalog_l2_errors_total").await >= 1.0);
    app.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let db = TestDb::migrated().await;
    let mut config = TestApp::config(&db);
    config.read.max_connections = 1;
    let app = TestApp::spawn(&config).await;
    let mut first = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");

    // The only slot is taken by the idle keep-alive connection: a second client waits.
    let addr = app.addr;
    let mut second =
        tokio::spawn(async move { common::http_request(addr, "GET", "/healthz", &[]).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut second)
            .await
            .is_err(),
        "a connection beyond the limit was served"
    );
    drop(first);
    let reply = tokio::time::timeout(common::DEADLINE, second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200);
    app.shutdown().await;
}

#[tokio::test]
async fn a_frozen_replica_costs_a_read_its_deadline_not_minutes() {
    let db = seeded(20, 2).await;
    replica_has_products(&db, 20).await;
    let (proxy, mut config) = replica_behind_proxy(&db).await;
    config.db_timeout = Duration::from_millis(300);
    let app = TestApp::spawn(&config).await;
    replica_healthy(&app).await;
    assert_eq!(app.get("/products/1").await.status, 200);
    assert_eq!(app.metric("catalog_db_reads_replica_total").await, 1.0);

    // Silent from now on: the product query meets a replica that says nothing. Not
    // `freeze_on` the query's text: sqlx prepares a statement once per connection and
    // later executions send no text, so when the read reused the first read's
    // connection nothing froze and it was answered in a millisecond.
    proxy.freeze();
    let started = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(15), app.get("/products/2"))
        .await
        .expect("a read must not wait on a replica that does not answer");
    eprintln!("read with the replica frozen: {:?}", started.elapsed());
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["id"], 2);
    assert!(app.metric("catalog_db_errors_total").await >= 1.0);
    assert_eq!(app.metric("catalog_db_reads_primary_total").await, 1.0);
    proxy.thaw();
    app.shutdown().await;
}

#[tokio::test]
async fn a_token_ahead_of_the_primary_is_refused_without_a_primary_read() {
    let db = seeded(5, 2).await;
    let app = TestApp::spawn(&TestApp::config(&db)).await;
    let current: String = sqlx::query_scalar("select pg_current_wal_lsn()::text")
        .fetch_one(&db.primary)
        .await
        .unwrap();
    let (high, low) = current.split_once('/').unwrap();
    let ahead = format!("{:X}/{low}", u64::from_str_radix(high, 16).unwrap() + 1);
    let reads = app.metric("catalog_db_reads_primary_total").await;
    for token in ["FFFFFFFF/FFFFFFFF", ahead.as_str()] {
        for path in ["/products/1", "/products?ids=1,2", "/products/by-sku/x"] {
            let reply = app
                .request("GET", path, &[("min-catalog-token", token)])
                .await;
            reply.assert_problem(400, "invalid-token");
        }
    }
    assert_eq!(
        app.metric("catalog_db_reads_primary_total").await,
        reads,
        "a refused token read the primary"
    );
    // A position the primary has reached is a token it may have issued.
    let reply = app
        .request("GET", "/products/1", &[("min-catalog-token", &current)])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    app.shutdown().await;
}

#[tokio::test]
async fn a_frozen_redis_costs_cold_batches_no_write_back_waits() {
    let db = seeded(400, 4).await;
    let redis = OwnRedis::start().await;
    let mut config = TestApp::config(&db);
    config.redis_url = Some(format!("redis://127.0.0.1:{}", redis.port));
    config.redis_timeout = Duration::from_millis(250);
    config.read.request_timeout = Duration::from_secs(5);
    let app = TestApp::spawn(&config).await;
    assert_eq!(app.get("/products/1").await.status, 200);

    redis.freeze();
    // Two cold batches of 200 ids: each id's write-back would wait its own Redis timeout
    // (200 × 250 ms) if the answer waited for them, far past the request deadline.
    for ids in [(1..=200), (201..=400)] {
        let list: Vec<String> = ids.map(|id: i64| id.to_string()).collect();
        let started = Instant::now();
        let reply = app.get(&format!("/products?ids={}", list.join(","))).await;
        eprintln!(
            "cold batch of 200 with Redis frozen: {:?}",
            started.elapsed()
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["items"].as_array().unwrap().len(), 200);
    }
    // Redis kept failing: the breaker opened, and reads stop waiting on it at all.
    assert!(app.metric("catalog_l2_breaker_trips_total").await >= 1.0);
    redis.thaw();
    app.shutdown().await;
}

#[tokio::test]
async fn a_known_product_is_served_stale_with_its_age_when_no_database_answers() {
    let db = seeded(10, 2).await;
    replica_has_products(&db, 10).await;
    let primary = FaultProxy::start(fault::target(&db.primary_url)).await;
    let replica = FaultProxy::start(fault::target(&db.replica_url)).await;
    let mut config = TestApp::config(&db);
    config.database_url = fault::through(&db.primary_url, primary.addr);
    config.replica_urls = vec![fault::through(&db.replica_url, replica.addr)];
    config.redis_url = None;
    config.db_timeout = Duration::from_millis(300);
    config.read.l1_max_ttl = Duration::from_secs(1);
    config.read.l1_soft_ttl = Duration::from_secs(1);
    config.read.stale_if_error = Duration::from_secs(60);
    let app = TestApp::spawn(&config).await;
    let fresh = app.get("/products/3").await;
    assert_eq!(fresh.status, 200);
    assert_eq!(fresh.header("age"), None);
    assert!(
        fresh
            .header("cache-control")
            .unwrap()
            .contains("stale-if-error=60")
    );

    primary.freeze();
    replica.freeze();
    // Past its hard TTL the copy is refilled first; with no database answering, it is
    // served anyway, saying how old it is.
    let stale = poll(|| async {
        let reply = app.get("/products/3").await;
        (reply.status == 200 && reply.header("age").is_some()).then_some(reply)
    })
    .await;
    assert_eq!(stale.body, fresh.body);
    assert!(stale.header("age").unwrap().parse::<u64>().unwrap() >= 1);
    assert!(app.metric("catalog_stale_served_total").await >= 1.0);
    // A product it never had is still an error.
    assert_eq!(app.get("/products/4").await.status, 503);
    primary.thaw();
    replica.thaw();
    app.shutdown().await;
}

#[tokio::test]
async fn a_document_past_its_soft_ttl_is_refreshed_in_the_background() {
    let db = seeded(10, 2).await;
    let mut config = TestApp::config(&db);
    // No feed: nothing invalidates, only the refresh can bring the new version.
    config.redis_url = None;
    config.read.l1_soft_ttl = Duration::from_secs(1);
    config.read.l1_max_ttl = Duration::from_secs(3600);
    let app = TestApp::spawn(&config).await;
    assert_eq!(app.get("/products/5").await.json()["version"], 1);
    sqlx::query("update products set stock = 9, version = version + 1 where id = 5")
        .execute(&db.primary)
        .await
        .unwrap();
    // Hits go on answering from L1 at once; one past the soft TTL queues the refresh,
    // and the new version follows without waiting for the hour-long hard TTL.
    let doc = poll(|| async {
        let doc = app.get("/products/5").await.json();
        (doc["version"] == 2).then_some(doc)
    })
    .await;
    assert_eq!(doc["stock"], 9);
    assert!(app.metric("catalog_refreshes_ahead_total").await >= 1.0);
    app.shutdown().await;
}

#[tokio::test]
async fn browsers_from_configured_origins_get_cors_headers() {
    let db = seeded(5, 2).await;
    let mut config = TestApp::config(&db);
    config.read.cors_origins = vec!["https://shop.example".to_owned()];
    let app = TestApp::spawn(&config).await;
    let shop = [("origin", "https://shop.example")];
    // The miss and then the L1 hit both carry the headers.
    for _ in 0..2 {
        let reply = app.request("GET", "/products/1", &shop).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("access-control-allow-origin"),
            Some("https://shop.example")
        );
        let vary: Vec<&str> = reply
            .headers
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(vary, ["min-catalog-token, accept-encoding", "Origin"]);
    }
    let other = app
        .request("GET", "/products/1", &[("origin", "https://evil.example")])
        .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("access-control-allow-origin"), None);
    let preflight = [
        ("origin", "https://shop.example"),
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "min-catalog-token"),
    ];
    let allowed = app.request("OPTIONS", "/products/1", &preflight).await;
    assert_eq!(allowed.status, 204);
    assert_eq!(
        allowed.header("access-control-allow-headers"),
        Some("Min-Catalog-Token, If-None-Match, Last-Event-ID")
    );
    let refused = app
        .request(
            "OPTIONS",
            "/products/1",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ],
        )
        .await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("access-control-allow-origin"), None);
    app.shutdown().await;
}

#[tokio::test]
async fn a_client_past_its_rate_gets_429_and_every_answer_carries_a_request_id() {
    use std::num::NonZeroU32;
    let db = seeded(5, 2).await;
    let mut config = TestApp::config(&db);
    config.read_rate = Some(catalog::http::rate::Rate {
        per_second: NonZeroU32::new(1).unwrap(),
        burst: NonZeroU32::new(5).unwrap(),
    });
    let app = TestApp::spawn(&config).await;
    let mut ids = Vec::new();
    let mut limited = None;
    for _ in 0..8 {
        let reply = app.get("/products/1").await;
        ids.push(reply.header("x-request-id").expect("an id").to_owned());
        if reply.status == 429 {
            limited = Some(reply);
        }
    }
    let limited = limited.expect("the 6th request within a second is over the burst");
    limited.assert_problem(429, "rate-limited");
    assert!(
        limited
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8, "generated ids are distinct");
    // A client's (or a proxy's) own id is passed through.
    let given = app
        .request("GET", "/healthz", &[("x-request-id", "trace-abc-123")])
        .await;
    assert_eq!(given.header("x-request-id"), Some("trace-abc-123"));
    assert!(
        app.metric(r#"catalog_rate_limited_total{face="storefront"}"#)
            .await
            >= 1.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn on_shutdown_readiness_turns_false_first_and_requests_in_flight_finish() {
    let db = seeded(10, 2).await;
    replica_has_products(&db, 10).await;
    let (replica, mut config) = replica_behind_proxy(&db).await;
    config.shutdown_delay = Duration::from_millis(500);
    let app = TestApp::spawn(&config).await;
    replica_healthy(&app).await;
    assert_eq!(app.get("/readyz").await.status, 200);
    assert_eq!(app.get("/products/1").await.status, 200);

    // A request in flight: its product query is held by the replica (frozen whole, as
    // above: a prepared statement sends no text to match).
    replica.freeze();
    let addr = app.addr;
    let in_flight =
        tokio::spawn(async move { common::http_request(addr, "GET", "/products/2", &[]).await });
    poll(|| async { (app.metric("catalog_l1_misses_total").await >= 2.0).then_some(()) }).await;

    app.stop.cancel();
    // Readiness turns false at once, while the listener still serves.
    let ready = app.get("/readyz").await;
    ready.assert_problem(503, "unavailable");
    assert!(ready.text().contains("shutting down"), "{}", ready.text());
    assert_eq!(app.get("/healthz").await.status, 200);

    // The request in flight finishes with its answer.
    replica.thaw();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["id"], 2);
    app.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn metrics_can_be_served_on_an_address_of_their_own() {
    let db = seeded(5, 2).await;
    let mut config = TestApp::config(&db);
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let app = catalog::startup::Application::build(&config, catalog::startup::Role::All)
        .await
        .unwrap();
    let metrics = app.metrics_addr().expect("a metrics listener");
    let (reader, writer) = (app.reader_addr().unwrap(), app.writer_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    assert_eq!(
        common::http_request(reader, "GET", "/products/1", &[])
            .await
            .status,
        200
    );
    let scraped = common::http_request(metrics, "GET", "/metrics", &[]).await;
    assert_eq!(scraped.status, 200);
    assert!(
        scraped
            .text()
            .contains(r#"catalog_http_requests_total{route="product",status="200"} 1"#),
        "{}",
        scraped.text()
    );
    assert!(scraped.text().contains("catalog_l1_entries"));
    // The public faces no longer expose it.
    for face in [reader, writer] {
        common::http_request(face, "GET", "/metrics", &[])
            .await
            .assert_problem(404, "not-found");
    }
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn reads_around_the_caches_are_bounded_by_the_bypass_limit() {
    let db = seeded(10, 2).await;
    let (replica, mut config) = replica_behind_proxy(&db).await;
    let primary = FaultProxy::start(fault::target(&db.primary_url)).await;
    config.database_url = fault::through(&db.primary_url, primary.addr);
    config.read.token_bypass_max = 1;
    // A reader alone, without a feed: its watermark never moves, so every token read
    // goes around the caches.
    let app = TestApp::spawn(&config).await;
    replica_healthy(&app).await;
    let committed = catalog::write::tx::product::patch(&db.primary, 1, br#"{"stock": 5}"#, None)
        .await
        .unwrap();
    assert_eq!(committed.written.version, 2);
    let token = catalog::write::tx::outbox::token(&db.primary, Duration::from_secs(2))
        .await
        .expect("the write's token");
    let with_token = [("min-catalog-token", token.as_str())];
    // The first read learns the primary's position and goes around the caches.
    let read = app.request("GET", "/products/1", &with_token).await;
    assert_eq!(read.json()["version"], 2);
    assert_eq!(app.metric("catalog_token_bypasses_total").await, 1.0);

    // Every database stops answering: the next token read holds the one permit...
    replica.freeze();
    primary.freeze();
    let addr = app.addr;
    let token_read = {
        let token = token.clone();
        tokio::spawn(async move {
            common::http_request(addr, "GET", "/products/1", &[("min-catalog-token", &token)]).await
        })
    };
    poll(|| async { (app.metric("catalog_token_bypasses_total").await == 2.0).then_some(()) })
        .await;
    // ...so another is refused at once, without reaching a database.
    let refused = app.request("GET", "/products/2", &with_token).await;
    refused.assert_problem(503, "unavailable");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        !token_read.is_finished(),
        "the first token read did not wait"
    );
    assert_eq!(app.metric("catalog_token_bypasses_total").await, 2.0);
    // Reads without a token are not limited by it: L1 answers.
    assert_eq!(app.get("/products/1").await.status, 200);

    replica.thaw();
    primary.thaw();
    token_read.await.unwrap();
    // The permit is back.
    let read = app.request("GET", "/products/2", &with_token).await;
    assert_eq!(read.status, 200, "{}", read.text());
    app.shutdown().await;
}

#[tokio::test]
async fn a_reader_starts_and_serves_while_the_primary_is_down() {
    let db = seeded(10, 2).await;
    replica_has_products(&db, 10).await;
    let (replica, mut config) = replica_behind_proxy(&db).await;
    let primary = FaultProxy::start(fault::target(&db.primary_url)).await;
    primary.down();
    config.database_url = fault::through(&db.primary_url, primary.addr);
    let app = TestApp::spawn(&config).await;
    replica_healthy(&app).await;
    assert_eq!(app.get("/healthz").await.status, 200);
    assert_eq!(app.get("/readyz").await.status, 200);
    let read = app.get("/products/3").await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["id"], 3);
    assert_eq!(app.get("/categories").await.status, 200);
    assert_eq!(app.metric("catalog_db_reads_primary_total").await, 0.0);

    // The primary comes back and the replica goes: the same reader reads the primary,
    // without a restart.
    primary.up();
    replica.down();
    let read = app.get("/products/4").await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["id"], 4);
    assert!(app.metric("catalog_db_reads_primary_total").await >= 1.0);
    app.shutdown().await;
}

#[tokio::test]
async fn listings_have_strong_validators_and_surrogate_keys() {
    let db = seeded(30, 3).await;
    let mut config = TestApp::config(&db);
    config.read.surrogate_keys = true;
    let app = TestApp::spawn(&config).await;
    let (id, slug) = common::admin::product_in_category(&db).await;

    // A product: its key, and no shared copy for token reads.
    let doc = app.get(&format!("/products/{id}")).await;
    assert_eq!(doc.header("xkey"), Some(format!("p{id}").as_str()));
    assert_eq!(doc.header("surrogate-key"), Some(format!("p{id}").as_str()));
    assert_eq!(
        doc.header("vary"),
        Some("min-catalog-token, accept-encoding")
    );

    // Every listing: an ETag, a 304 for it, and its keys.
    let batch = format!("/products?ids={id},2,999999");
    let page = format!("/categories/{slug}/products?limit=5");
    for (path, keys) in [
        (batch.as_str(), format!("p{id} p2")),
        (page.as_str(), format!("c:{slug}")),
        ("/categories", "categories".to_owned()),
    ] {
        let first = app.get(path).await;
        assert_eq!(first.status, 200, "{path}: {}", first.text());
        let etag = first.header("etag").expect("an ETag").to_owned();
        assert!(etag.starts_with("\"l"), "{path}: {etag}");
        assert_eq!(first.header("xkey"), Some(keys.as_str()), "{path}");
        assert_eq!(
            first.header("vary"),
            Some("min-catalog-token, accept-encoding"),
            "{path}"
        );
        let again = app.request("GET", path, &[("if-none-match", &etag)]).await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty());
        assert_eq!(again.header("etag"), Some(etag.as_str()));
    }

    // A write changes the validators of what shows the product.
    let before = app.get(&batch).await.header("etag").unwrap().to_owned();
    let before_page = app.get(&page).await.header("etag").unwrap().to_owned();
    catalog::write::tx::product::patch(&db.primary, id, br#"{"stock": 9}"#, None)
        .await
        .unwrap();
    let token = catalog::write::tx::outbox::token(&db.primary, Duration::from_secs(2))
        .await
        .expect("a token");
    let fresh = app
        .request(
            "GET",
            &batch,
            &[("if-none-match", &before), ("min-catalog-token", &token)],
        )
        .await;
    assert_eq!(fresh.status, 200, "the old validator still matched");
    assert_ne!(fresh.header("etag"), Some(before.as_str()));
    // A read with a token is for its client alone.
    assert_eq!(fresh.header("cache-control"), Some("no-store"));
    let fresh_page = app
        .request("GET", &page, &[("min-catalog-token", &token)])
        .await;
    assert_ne!(fresh_page.header("etag"), Some(before_page.as_str()));
    app.shutdown().await;
}

#[tokio::test]
async fn surrogate_keys_are_off_by_default() {
    let db = seeded(5, 1).await;
    let app = TestApp::spawn(&TestApp::config(&db)).await;
    let doc = app.get("/products/1").await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.header("xkey"), None);
    assert_eq!(doc.header("surrogate-key"), None);
    app.shutdown().await;
}

#[tokio::test]
async fn each_face_serves_its_openapi_description() {
    let db = seeded(3, 1).await;
    let app = TestApp::spawn_as(&TestApp::config(&db), catalog::startup::Role::All).await;
    let storefront = app.get("/openapi.json").await;
    let admin = common::http_request(app.writer.unwrap(), "GET", "/openapi.json", &[]).await;
    for (reply, route) in [
        (&storefront, "/products/{id}"),
        (&admin, "/admin/products/{id}"),
    ] {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let spec = reply.json();
        assert_eq!(spec["openapi"], "3.1.0");
        assert!(spec["paths"][route].is_object(), "{route} is not described");
    }
    assert!(storefront.json()["paths"]["/admin/products/{id}"].is_null());
    app.shutdown().await;
}

#[tokio::test]
async fn the_change_feed_answers_preflights_and_long_uris_like_every_route() {
    let db = seeded(3, 1).await;
    let mut config = TestApp::config(&db);
    config.read.cors_origins = vec!["https://shop.example".to_owned()];
    let app = TestApp::spawn(&config).await;
    let preflight = app
        .request(
            "OPTIONS",
            "/changes",
            &[
                ("origin", "https://shop.example"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "last-event-id"),
            ],
        )
        .await;
    assert_eq!(preflight.status, 204);
    assert!(
        preflight
            .header("access-control-allow-headers")
            .is_some_and(|h| h.contains("Last-Event-ID"))
    );
    let long = format!("/changes?products={}", "1,".repeat(3000));
    app.get(&long).await.assert_problem(414, "uri-too-long");
    app.shutdown().await;
}

/// Inflates one gzip member, as a client does.
fn inflate(body: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .expect("a valid gzip member");
    out
}

/// Inflates `body` with Python's gzip module: a decoder that is not ours.
fn python_gunzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import gzip, sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python's gzip refused the body");
    out.stdout
}

/// The gzip `ETag` of an identity one: `"x"` → `"x-gz"`.
fn gzip_tag(identity: &str) -> String {
    format!("{}-gz\"", identity.strip_suffix('"').unwrap())
}

#[tokio::test]
async fn gzip_clients_get_the_same_json_compressed_with_their_own_validators() {
    let db = seeded(60, 12).await;
    let mut config = TestApp::config(&db);
    config.read.surrogate_keys = true;
    let app = TestApp::spawn(&config).await;
    let (id, slug) = common::admin::product_in_category(&db).await;
    let gzip = [("accept-encoding", "gzip, deflate, br")];

    // A document's gzip form is made on its first gzip answer, and L1 charges it.
    let first = app.get(&format!("/products/{id}")).await;
    assert_eq!(first.status, 200);
    let charged = app.metric("catalog_l1_bytes").await;
    let zipped = app.request("GET", &format!("/products/{id}"), &gzip).await;
    let grown = app.metric("catalog_l1_bytes").await - charged;
    assert!(
        grown >= zipped.body.len() as f64,
        "L1 grew {grown} bytes for a {}-byte gzip form",
        zipped.body.len()
    );

    let ids: Vec<String> = (1..=50).map(|i| i.to_string()).collect();
    let batch = format!("/products?ids={},999999", ids.join(","));
    let paths = [
        format!("/products/{id}"),
        format!("/products/by-sku/{}", first.json()["sku"].as_str().unwrap()),
        batch.clone(),
        format!("/categories/{slug}/products?limit=20"),
        "/categories".to_owned(),
    ];
    for path in &paths {
        let plain = app.get(path).await;
        let zipped = app.request("GET", path, &gzip).await;
        assert_eq!((plain.status, zipped.status), (200, 200), "{path}");
        assert!(
            plain.body.len() >= catalog::gzip::MIN_BODY,
            "{path}: too small to test"
        );
        assert_eq!(plain.header("content-encoding"), None, "{path}");
        assert_eq!(zipped.header("content-encoding"), Some("gzip"), "{path}");
        assert_eq!(inflate(&zipped.body), plain.body, "{path}");
        assert!(zipped.body.len() < plain.body.len(), "{path}: not smaller");
        for reply in [&plain, &zipped] {
            assert_eq!(
                reply.header("vary"),
                Some("min-catalog-token, accept-encoding"),
                "{path}"
            );
            assert_eq!(reply.header("content-type"), Some("application/json"));
        }
        assert_eq!(
            plain.header("cache-control"),
            zipped.header("cache-control")
        );
        assert_eq!(plain.header("xkey"), zipped.header("xkey"), "{path}");
        assert!(plain.header("xkey").is_some(), "{path}");
        let tag = plain.header("etag").unwrap();
        let gz_tag = zipped.header("etag").unwrap();
        assert_eq!(gz_tag, gzip_tag(tag), "{path}");

        // Each representation is revalidated by its own tag, and only by it.
        for (headers, matching, other) in [(&gzip[..], gz_tag, tag), (&[][..], tag, gz_tag)] {
            let same = [headers, &[("if-none-match", matching)]].concat();
            let again = app.request("GET", path, &same).await;
            assert_eq!(again.status, 304, "{path} {matching}");
            assert!(again.body.is_empty());
            assert_eq!(again.header("etag"), Some(matching));
            assert_eq!(again.header("vary"), plain.header("vary"));
            let crossed = [headers, &[("if-none-match", other)]].concat();
            let full = app.request("GET", path, &crossed).await;
            assert_eq!(full.status, 200, "{path}: {other} matched {matching}");
            assert_eq!(full.header("etag"), Some(matching));
        }
        // HEAD says the length of the gzip body.
        let head = app.request("HEAD", path, &gzip).await;
        assert_eq!(
            head.header("content-length"),
            Some(zipped.body.len().to_string().as_str())
        );
        // A client that refuses gzip gets identity.
        for refusal in ["gzip;q=0", "identity", "br", "gzip;q=0.5, identity"] {
            let reply = app
                .request("GET", path, &[("accept-encoding", refusal)])
                .await;
            assert_eq!(reply.header("content-encoding"), None, "{path} {refusal}");
            assert_eq!(reply.body, plain.body, "{path} {refusal}");
        }
    }

    // Real clients read the assembled batch: Python's gzip module and curl.
    let zipped = app.request("GET", &batch, &gzip).await;
    let plain = app.get(&batch).await;
    assert_eq!(python_gunzip(&zipped.body), plain.body);
    // curl blocks: off this runtime's thread, which serves the reader.
    let url = format!("http://{}{batch}", app.addr);
    let curl = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--compressed", "-D", "-", &url])
            .output()
            .expect("curl")
    })
    .await
    .unwrap();
    assert!(curl.status.success());
    let (head, body) = curl.stdout.split_at(
        curl.stdout
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap()
            + 4,
    );
    let head = String::from_utf8_lossy(head).to_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert_eq!(body, &plain.body[..]);
    let items = plain.json()["items"].as_array().unwrap().len();
    assert_eq!(items, 50);
    app.shutdown().await;
}

#[tokio::test]
async fn with_gzip_off_everyone_gets_identity_and_vary_names_only_the_token() {
    let db = seeded(10, 2).await;
    let mut config = TestApp::config(&db);
    config.read.gzip = false;
    let app = TestApp::spawn(&config).await;
    for path in ["/products/1", "/products?ids=1,2,3", "/categories"] {
        let plain = app.get(path).await;
        let asked = app
            .request("GET", path, &[("accept-encoding", "gzip")])
            .await;
        assert_eq!(asked.status, 200, "{path}");
        assert_eq!(asked.header("content-encoding"), None, "{path}");
        assert_eq!(asked.body, plain.body, "{path}");
        assert_eq!(asked.header("etag"), plain.header("etag"), "{path}");
        assert_eq!(asked.header("vary"), Some("min-catalog-token"), "{path}");
    }
    app.shutdown().await;
}

/// `calls` of `command` in Redis's `INFO commandstats` (0 before its first call).
fn command_calls(info: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

/// Reads every one of `ids` at once from an app whose next tier was just frozen, and
/// `thaw`s it once every read has missed L1 (and so waits on that tier); each read must
/// answer its product.
async fn cold_reads_while_frozen(app: &TestApp, ids: &[i64], thaw: impl FnOnce()) {
    let reads = futures_util::future::join_all(
        ids.iter()
            .map(|id| async move { app.get(&format!("/products/{id}")).await }),
    );
    let misses = ids.len() as f64;
    let thaw = async {
        poll(|| async { (app.metric("catalog_l1_misses_total").await >= misses).then_some(()) })
            .await;
        thaw();
    };
    let (replies, ()) = tokio::join!(reads, thaw);
    for (id, reply) in ids.iter().zip(&replies) {
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["id"], *id);
    }
}

#[tokio::test]
async fn concurrent_misses_share_redis_lookups() {
    use catalog::store::redis::{L2, L2Config};
    use fred::prelude::*;

    let db = seeded(100, 4).await;
    let redis = OwnRedis::start().await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let mut config = TestApp::config(&db);
    config.redis_url = Some(url.clone());
    // Long enough that lookups wait out the freeze below instead of failing.
    config.redis_timeout = Duration::from_secs(5);
    // L2 holds every product, as the relay leaves them.
    let l2 = L2::connect(&L2Config {
        url: url.clone(),
        prefix: config.redis_prefix.clone(),
        ttl: config.l2_ttl,
        command_timeout: Duration::from_secs(5),
        breaker_trips: Default::default(),
    })
    .unwrap();
    l2.wait_connected(Duration::from_secs(5)).await.unwrap();
    let ids: Vec<i64> = (1..=100).collect();
    let documents: Vec<_> = catalog::store::catalog::products_by_ids(&db.primary, &ids)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.id, row.into_lookup().unwrap()))
        .collect();
    assert_eq!(documents.len(), 100);
    l2.put_many(&documents).await.unwrap();
    let app = TestApp::spawn(&config).await;
    let stats = Builder::from_config(Config::from_url(&url).unwrap())
        .build()
        .unwrap();
    stats.init().await.unwrap();
    let info = || async {
        let text: String = stats
            .info(Some(fred::types::InfoKind::CommandStats))
            .await
            .unwrap();
        let calls = |command| command_calls(&text, command);
        (calls("get"), calls("mget"), calls("xread"))
    };
    // The reader's own GETs: its stream consumer reads the epoch once it starts, and
    // again after each `XREAD` that found nothing (1 s blocks).
    let epoch_key = catalog::coherence::relay::epoch_key(&config.redis_prefix);
    poll(|| async {
        let epoch: Option<String> = stats.get(&epoch_key).await.ok()?;
        epoch.map(drop)
    })
    .await;
    poll(|| async { (info().await.2 > 0).then_some(()) }).await;
    let (gets, mgets, xreads) = info().await;

    // Redis frozen while 100 cold reads arrive: the first lookups go out and wait, the
    // rest gather; once Redis answers, they go out in a few batches.
    redis.freeze();
    cold_reads_while_frozen(&app, &ids, || redis.thaw()).await;
    assert_eq!(app.metric("catalog_l2_hits_total").await, 100.0);
    let (gets_after, mgets_after, xreads_after) = info().await;
    let batches = mgets_after - mgets;
    let (alone, idle_reads) = (gets_after - gets, xreads_after - xreads);
    eprintln!("100 concurrent misses: {batches} MGETs, {alone} GETs, {idle_reads} XREADs");
    // At most the consumer's epoch checks (one after each XREAD, one of which may have
    // returned just before the first count).
    assert!(
        alone <= idle_reads + 1,
        "{alone} GETs beside {idle_reads} XREADs: misses looked up alone"
    );
    assert!(
        (1..=10).contains(&batches),
        "100 misses in {batches} lookups"
    );
    stats.quit().await.unwrap();
    app.shutdown().await;
}

#[tokio::test]
async fn concurrent_misses_share_replica_queries() {
    let db = seeded(100, 4).await;
    replica_has_products(&db, 100).await;
    let (proxy, mut config) = replica_behind_proxy(&db).await;
    // Long enough that the queries wait out the freeze below instead of failing.
    config.db_timeout = Duration::from_secs(5);
    let app = TestApp::spawn(&config).await;
    replica_healthy(&app).await;
    let replica_reads = app.metric("catalog_db_reads_replica_total").await;
    let primary_reads = app.metric("catalog_db_reads_primary_total").await;

    // The replica silent while 100 cold reads arrive: the first queries go out and wait,
    // the other fills gather; once it answers, they go out in a few shared queries.
    proxy.freeze();
    let ids: Vec<i64> = (1..=100).collect();
    cold_reads_while_frozen(&app, &ids, || proxy.thaw()).await;
    let queries = app.metric("catalog_db_reads_replica_total").await - replica_reads;
    eprintln!("100 concurrent misses: {queries} replica queries");
    assert!(
        (1.0..=10.0).contains(&queries),
        "100 misses in {queries} queries"
    );
    assert_eq!(
        app.metric("catalog_db_reads_primary_total").await,
        primary_reads,
        "a miss was read from the primary"
    );
    app.shutdown().await;
}
