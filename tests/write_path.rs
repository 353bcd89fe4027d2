//! The admin face against the real stack: refusals that change nothing, `If-Match`,
//! `Idempotency-Key` replay and reuse, categories and purges reaching the readers, and
//! NDJSON bulk import.

mod common;

use std::time::{Duration, Instant};

use catalog::startup::Role;
use catalog::write::idempotency::{self, Claim, Lease};
use catalog::write::payload::ProductInput;
use catalog::write::sweeper::{SweepSettings, Sweeper, Swept};
use catalog::write::tx::product::{self, Op};
use common::admin::{lamp, primary_state, product_in_category, wait_for_version};
use common::{TestApp, TestDb, poll, seeded};
use serde_json::Value;

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
    // A replay's token is read at replay time: at or past the write's own.
    let lsn = |reply: &common::Reply| {
        catalog::store::replicas::parse_lsn(reply.header("catalog-token").expect("a token"))
            .expect("an LSN")
    };
    assert!(lsn(&retry) >= lsn(&first));
    let version: i64 = sqlx::query_scalar("select version from products where id = 700001")
        .fetch_one(&db.primary)
        .await
        .unwrap();
    assert_eq!(version, 1, "the retry was applied again");

    let other = app
        .admin("PUT", "/admin/products/700001", &key, &lamp("Other", &[]))
        .await;
    other.assert_problem(422, "idempotency-key-reused");

    // A key whose first request is still running (within its lease).
    let print = catalog::write::idempotency::fingerprint("PUT", "700002", body.as_bytes());
    let hour = Duration::from_secs(3600);
    catalog::write::idempotency::claim(&db.primary, "order-2", &print, hour, hour)
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
    let refused = || {
        app.admin(
            "PATCH",
            "/admin/products/700001",
            &[("idempotency-key", "bad-1")],
            r#"{"stock": -1}"#,
        )
    };
    let bad = refused().await;
    bad.assert_problem(400, "invalid-product");
    let bad_again = refused().await;
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

#[tokio::test]
async fn every_status_answered_is_counted_under_its_own_label() {
    let db = seeded(5, 2).await;
    let app = TestApp::spawn_as(&TestApp::config(&db), Role::All).await;
    let counted = |route: &str, status: u16| {
        format!(r#"catalog_http_requests_total{{route="{route}",status="{status}"}}"#)
    };

    // 201: a create.
    let created = app
        .admin(
            "PUT",
            "/admin/products/800001",
            &[],
            &lamp("Counted lamp", &[]),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(app.metric(&counted("admin_product", 201)).await, 1.0);

    // 202: a purge.
    assert_eq!(app.admin("POST", "/admin/purge", &[], "").await.status, 202);
    assert_eq!(app.metric(&counted("admin_purge", 202)).await, 1.0);

    // 414: a URI past the limit.
    let long = format!("/products/1?pad={}", "x".repeat(5000));
    app.get(&long).await.assert_problem(414, "uri-too-long");
    assert_eq!(app.metric(&counted("product", 414)).await, 1.0);

    // 500 (a stored row that cannot be rendered) has no way in from outside; the
    // metrics' unit test covers its label.
    let text = app.get("/metrics").await.text();
    assert!(
        !text.contains(r#"status="other"} 1"#),
        "a status was counted as other:\n{text}"
    );
    app.shutdown().await;
}

/// `attributes` nested `depth` objects deep: `{"k":{"k":...{"k":1}}}`.
fn nested(depth: usize) -> Value {
    let mut value = Value::from(1);
    for _ in 0..depth {
        value = serde_json::json!({ "k": value });
    }
    value
}

/// A product body whose `attributes` nest `depth` levels.
fn deep_lamp(depth: usize) -> String {
    let mut product: Value = serde_json::from_str(&lamp("Deep lamp", &[])).unwrap();
    product["attributes"] = nested(depth);
    product.to_string()
}

#[tokio::test]
async fn attributes_nest_at_most_32_levels_so_every_product_stays_writable() {
    let db = seeded(3, 2).await;
    let app = TestApp::spawn_as(&TestApp::config(&db), Role::Writer).await;
    let path = "/admin/products/710001";

    // Too deep: refused, nothing written. 200 levels is past serde_json's 128, the
    // depth at which a stored product could no longer be locked and changed.
    for depth in [33, 40, 200] {
        let before = primary_state(&db, 710_001).await;
        let refused = app.admin("PUT", path, &[], &deep_lamp(depth)).await;
        refused.assert_problem(400, "invalid-product");
        let detail = refused.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains("32 levels"), "{depth}: {detail}");
        assert_eq!(primary_state(&db, 710_001).await, before, "{depth}");
    }
    // A bulk line gets the same refusal.
    let mut line: Value = serde_json::from_str(&deep_lamp(40)).unwrap();
    line["id"] = Value::from(710_002);
    let report = app
        .admin("POST", "/admin/products/bulk", &[], &line.to_string())
        .await;
    assert_eq!(report.status, 200, "{}", report.text());
    let first: Value = serde_json::from_str(report.text().lines().next().unwrap()).unwrap();
    assert_eq!(first["status"], 400, "{first}");
    assert_eq!(first["type"], "/problems/invalid-product", "{first}");

    // At the limit: written, then changed and deleted like any product.
    let created = app.admin("PUT", path, &[], &deep_lamp(32)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let patched = app.admin("PATCH", path, &[], r#"{"stock": 9}"#).await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(patched.json()["version"], 2);
    // A patch may not push it past the limit.
    let deeper = serde_json::json!({ "attributes": nested(33) }).to_string();
    app.admin("PATCH", path, &[], &deeper)
        .await
        .assert_problem(400, "invalid-product");
    let deleted = app.admin("DELETE", path, &[], "").await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(deleted.json()["version"], 3);
    app.shutdown().await;
}

/// Claims `key` for a `PUT` of `body` to product `id` as a handler would, holding it for
/// `lease`; the test then plays a handler that was dropped, or one that goes on.
async fn claim_put(db: &TestDb, key: &str, id: i64, body: &str, lease: Duration) -> Lease {
    let print = idempotency::fingerprint("PUT", &id.to_string(), body.as_bytes());
    let day = Duration::from_secs(86_400);
    match idempotency::claim(&db.primary, key, &print, day, lease).await {
        Ok(Claim::Owned(lease)) => lease,
        other => panic!("claim {key}: {other:?}"),
    }
}

/// Moves `key`'s lease into the past, as if its lease period had gone by.
async fn expire_lease(db: &TestDb, key: &str) {
    sqlx::query(
        "update idempotency_keys set locked_until = now() - interval '1 ms' where key = $1",
    )
    .bind(key)
    .execute(&db.primary)
    .await
    .unwrap();
}

async fn version_of(db: &TestDb, id: i64) -> Option<i64> {
    sqlx::query_scalar("select version from products where id = $1")
        .bind(id)
        .fetch_optional(&db.primary)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_dropped_request_s_key_answers_409_within_its_lease_and_is_taken_over_after() {
    let db = seeded(3, 2).await;
    let app = TestApp::spawn_as(&TestApp::config(&db), Role::Writer).await;
    let body = lamp("Dropped lamp", &[]);
    let path = "/admin/products/720001";
    let key = [("idempotency-key", "dropped-1")];
    // The first request claimed the key, then its handler was dropped (the client went
    // away, or the process died): nothing stores or releases it.
    claim_put(&db, "dropped-1", 720_001, &body, Duration::from_secs(3600)).await;

    // Within the lease: 409 with Retry-After (the lease's remaining seconds).
    let early = app.admin("PUT", path, &key, &body).await;
    early.assert_problem(409, "request-in-progress");
    let wait: u64 = early.header("retry-after").unwrap().parse().unwrap();
    assert!((3000..=3600).contains(&wait), "Retry-After: {wait}");
    assert_eq!(version_of(&db, 720_001).await, None);

    // After the lease: concurrent retries, one of which takes the key over and writes.
    expire_lease(&db, "dropped-1").await;
    let retries: Vec<common::Reply> =
        futures_util::future::join_all((0..8).map(|_| app.admin("PUT", path, &key, &body))).await;
    let ran: Vec<&common::Reply> = retries
        .iter()
        .filter(|r| r.status == 201 && r.header("idempotent-replayed").is_none())
        .collect();
    assert_eq!(ran.len(), 1, "exactly one retry runs the request");
    let waited_or_replayed = retries
        .iter()
        .filter(|r| r.status == 409 || r.header("idempotent-replayed") == Some("true"))
        .count();
    assert_eq!(
        waited_or_replayed,
        retries.len() - 1,
        "the others wait or replay"
    );
    assert_eq!(version_of(&db, 720_001).await, Some(1), "written once");
    let replay = app.admin("PUT", path, &key, &body).await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, ran[0].body);
    assert!(replay.header("catalog-token").is_some());
    assert_eq!(replay.header("location"), Some("/products/720001"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_keyed_write_stores_its_response_as_it_commits_and_never_applies_twice() {
    let db = seeded(3, 2).await;
    let app = TestApp::spawn_as(&TestApp::config(&db), Role::Writer).await;
    let body = lamp("Sealed lamp", &[]);
    let input = ProductInput::parse(body.as_bytes()).unwrap();
    let path = "/admin/products/730001";
    let key = [("idempotency-key", "sealed-1")];

    // The first request's lease runs out while it is still working; a retry takes the
    // key over. The first request's write must then roll back ...
    let slow = claim_put(&db, "sealed-1", 730_001, &body, Duration::ZERO).await;
    let taker = claim_put(&db, "sealed-1", 730_001, &body, Duration::from_secs(3600)).await;
    let lost = product::write(&db.primary, 730_001, Op::Put(&input), None, Some(&slow)).await;
    assert!(
        lost.is_err(),
        "a write that lost its key committed: {lost:?}"
    );
    assert_eq!(version_of(&db, 730_001).await, None);

    // ... while the taker's commits with its response. Its handler stops right after
    // the commit (crashed, or dropped): the retry replays the stored response.
    let committed = product::write(&db.primary, 730_001, Op::Put(&input), None, Some(&taker))
        .await
        .unwrap();
    assert_eq!(committed.written.version, 1);
    let committed_token = catalog::write::tx::outbox::token(&db.primary, Duration::from_secs(2))
        .await
        .expect("the token after the commit");
    let retry = app.admin("PUT", path, &key, &body).await;
    assert_eq!(retry.status, 201, "{}", retry.text());
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        retry.json(),
        serde_json::json!({"id": 730001, "version": 1})
    );
    assert_eq!(retry.header("etag"), Some("\"1\""));
    let token = retry.header("catalog-token").expect("a token");
    let lsn = catalog::store::replicas::parse_lsn;
    assert!(
        lsn(token) >= lsn(&committed_token),
        "{token} < {committed_token}"
    );
    assert_eq!(version_of(&db, 730_001).await, Some(1), "applied once");
    app.shutdown().await;
}

#[tokio::test]
async fn a_sweeper_round_deletes_expired_keys_and_old_published_outbox_rows_only() {
    let db = seeded(3, 2).await;
    let run = |sql: &'static str| {
        let pool = db.primary.clone();
        async move { sqlx::query(sql).execute(&pool).await.unwrap() }
    };
    // Keys: 2,500 finished and expired (more than two batches), one expired but still
    // held by a request, one live.
    run(
        "insert into idempotency_keys (key, fingerprint, status, body, expires_at, locked_until) \
         select 'old-' || n, '\\x00', 200, '', now() - interval '1 minute', \
                now() - interval '1 minute' from generate_series(1, 2500) n",
    )
    .await;
    run(
        "insert into idempotency_keys (key, fingerprint, expires_at, locked_until) values \
         ('held', '\\x00', now() - interval '1 minute', now() + interval '1 hour'), \
         ('live', '\\x00', now() + interval '1 hour', now() - interval '1 minute')",
    )
    .await;
    // Outbox: 1,500 published two hours ago, one published a minute ago, and one never
    // published although it is two days old.
    run(
        "insert into outbox (product_id, version, created_at, published_at) \
         select 1, n, now() - interval '2 hours', now() - interval '2 hours' \
         from generate_series(1, 1500) n",
    )
    .await;
    run(
        "insert into outbox (product_id, version, created_at, published_at) values \
         (2, 1, now() - interval '1 minute', now() - interval '1 minute'), \
         (3, 1, now() - interval '2 days', null)",
    )
    .await;

    let metrics = std::sync::Arc::new(catalog::metrics::Metrics::new());
    let settings = SweepSettings {
        interval: Duration::from_secs(60),
        outbox_retention: Duration::from_secs(3600),
        deadline: Duration::from_secs(5),
    };
    let sweeper = Sweeper::new(db.primary.clone(), settings, metrics.clone());
    let swept = sweeper.round().await.unwrap();
    assert_eq!(
        swept,
        Swept {
            keys: 2500,
            outbox: 1500
        }
    );
    let keys: Vec<String> = sqlx::query_scalar("select key from idempotency_keys order by key")
        .fetch_all(&db.primary)
        .await
        .unwrap();
    assert_eq!(keys, ["held", "live"]);
    let outbox: Vec<(i64, bool)> = sqlx::query_as(
        "select product_id, published_at is not null from outbox order by product_id",
    )
    .fetch_all(&db.primary)
    .await
    .unwrap();
    assert_eq!(outbox, [(2, true), (3, false)]);
    let text = metrics.render(None);
    assert!(
        text.contains("catalog_sweeper_idempotency_keys_deleted_total 2500"),
        "{text}"
    );
    assert!(text.contains("catalog_sweeper_outbox_rows_deleted_total 1500"));
    assert_eq!(
        sweeper.round().await.unwrap(),
        Swept::default(),
        "idempotent"
    );

    // A writer runs the sweeper: its first round runs at start.
    run("insert into idempotency_keys (key, fingerprint, status, body, expires_at, locked_until) \
         values ('old-again', '\\x00', 200, '', now() - interval '1 minute', now() - interval '1 minute')")
    .await;
    run(
        "insert into outbox (product_id, version, created_at, published_at) \
         values (4, 1, now() - interval '2 hours', now() - interval '2 hours')",
    )
    .await;
    let app = TestApp::spawn_as(&TestApp::config(&db), Role::Writer).await;
    poll(|| async {
        let left: i64 = sqlx::query_scalar(
            "select (select count(*) from idempotency_keys where key = 'old-again') \
                  + (select count(*) from outbox where product_id = 4)",
        )
        .fetch_one(&db.primary)
        .await
        .unwrap();
        (left == 0).then_some(())
    })
    .await;
    assert!(app.metric("catalog_sweeper_rounds_total").await >= 1.0);
    let held: i64 =
        sqlx::query_scalar("select count(*) from idempotency_keys where key in ('held', 'live')")
            .fetch_one(&db.primary)
            .await
            .unwrap();
    assert_eq!(held, 2);
    app.shutdown().await;
}

/// NDJSON lines of new products `ids`, each valid.
fn bulk_lines(ids: std::ops::Range<i64>) -> String {
    let mut body = String::new();
    for id in ids {
        let line = serde_json::json!({
            "id": id, "sku": format!("BULK-{id}"), "name": format!("Bulk {id}"),
            "price": {"amount": 100, "currency": "USD"},
        });
        body.push_str(&line.to_string());
        body.push('\n');
    }
    body
}

fn report_of(reply: &common::Reply) -> Vec<Value> {
    reply
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn a_bulk_import_that_fails_part_way_still_reports_the_batches_it_committed() {
    let db = seeded(5, 1).await;
    let mut config = TestApp::config(&db);
    config.db_timeout = Duration::from_millis(500);
    let app = TestApp::spawn_as(&config, Role::Writer).await;
    // Line 600 (in the second batch of 500) updates product 5, whose row another
    // transaction holds locked: the second batch misses its deadline.
    let mut body = bulk_lines(700_001..700_600);
    body.push_str(&bulk_lines(5..6));
    body.push_str(&bulk_lines(700_600..700_700));
    let mut holder = db.primary.begin().await.unwrap();
    sqlx::query("select 1 from products where id = 5 for update")
        .execute(&mut *holder)
        .await
        .unwrap();
    let reply = app.admin("POST", "/admin/products/bulk", &[], &body).await;
    holder.rollback().await.unwrap();

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.header("catalog-token").is_some());
    let report = report_of(&reply);
    let written: Vec<u64> = report
        .iter()
        .filter(|r| r["status"] == 201)
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(written, (1..=500).collect::<Vec<u64>>(), "batch 1's lines");
    let stop = &report[report.len() - 2];
    assert_eq!(stop["line"], 501, "{stop}");
    assert_eq!(stop["status"], 503, "{stop}");
    assert_eq!(stop["type"], "/problems/unavailable", "{stop}");
    let summary = &report.last().unwrap()["summary"];
    assert_eq!(summary["written"], 500, "{summary}");
    assert_eq!(summary["stopped_at"], 501, "{summary}");
    let imported: i64 = sqlx::query_scalar("select count(*) from products where id > 700000")
        .fetch_one(&db.primary)
        .await
        .unwrap();
    assert_eq!(imported, 500, "batch 1 committed, nothing after it");
    app.shutdown().await;
}

#[tokio::test]
async fn a_bulk_report_keeps_a_bounded_number_of_lines() {
    use catalog::write::bulk::{MAX_REPORTED_REFUSED, MAX_REPORTED_WRITTEN};
    let db = seeded(5, 1).await;
    let app = TestApp::spawn_as(&TestApp::config(&db), Role::Writer).await;
    let extra = 100;
    let good = i64::try_from(MAX_REPORTED_WRITTEN + extra).unwrap();
    let mut body = bulk_lines(710_001..710_001 + good);
    body.push_str(&"{not json\n".repeat(MAX_REPORTED_REFUSED + extra));
    let reply = app.admin("POST", "/admin/products/bulk", &[], &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let report = report_of(&reply);
    assert_eq!(
        report.len(),
        MAX_REPORTED_WRITTEN + MAX_REPORTED_REFUSED + 1,
        "the report is bounded"
    );
    let summary = &report.last().unwrap()["summary"];
    assert_eq!(
        summary["written"],
        MAX_REPORTED_WRITTEN + extra,
        "{summary}"
    );
    assert_eq!(summary["failed"], MAX_REPORTED_REFUSED + extra, "{summary}");
    assert_eq!(summary["omitted"], 2 * extra, "{summary}");
    assert!(summary.get("stopped_at").is_none(), "{summary}");
    let imported: i64 = sqlx::query_scalar("select count(*) from products where id > 710000")
        .fetch_one(&db.primary)
        .await
        .unwrap();
    assert_eq!(imported, good);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_category_moves_never_commit_a_cycle() {
    use catalog::write::payload::CategoryInput;
    use catalog::write::tx::category;
    let db = TestDb::migrated().await;
    let rounds = 60;
    for round in 0..rounds {
        sqlx::query("insert into categories (slug, name) values ($1, 'a'), ($2, 'b')")
            .bind(format!("a-{round}"))
            .bind(format!("b-{round}"))
            .execute(&db.primary)
            .await
            .unwrap();
    }
    let under = |parent: String| CategoryInput {
        name: "moved".to_owned(),
        parent: Some(parent),
    };
    // Every round: A under B and B under A at once, all rounds in parallel.
    let mut moves = tokio::task::JoinSet::new();
    for round in 0..rounds {
        let (a, b) = (format!("a-{round}"), format!("b-{round}"));
        for (slug, parent) in [(a.clone(), b.clone()), (b, a)] {
            let pool = db.primary.clone();
            let input = under(parent);
            moves.spawn(async move {
                let put = category::put(&pool, &slug, &input);
                tokio::time::timeout(Duration::from_secs(20), put)
                    .await
                    .expect("a category write never ended")
                    .is_ok()
            });
        }
    }
    let mut applied = 0;
    while let Some(ok) = moves.join_next().await {
        applied += usize::from(ok.unwrap());
    }
    let cycles: i64 = sqlx::query_scalar(
        "with recursive up(start, id, depth) as ( \
             select id, parent_id, 1 from categories where parent_id is not null \
             union all \
             select up.start, c.parent_id, up.depth + 1 from categories c join up on c.id = up.id \
             where c.parent_id is not null and up.depth < 10) \
         select count(distinct start) from up where id = start",
    )
    .fetch_one(&db.primary)
    .await
    .unwrap();
    assert_eq!(cycles, 0, "categories in a parent cycle");
    assert_eq!(
        applied, rounds,
        "one move of each pair applies, the other is refused"
    );
}

#[tokio::test]
async fn an_admin_token_configured_as_its_digest_is_accepted() {
    use sha2::Digest as _;
    let db = seeded(5, 2).await;
    let mut config = TestApp::config(&db);
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(b"digest-only-token"));
    config.admin_tokens = vec![catalog::config::Secret::new(digest.clone())];
    let app = TestApp::spawn_as(&config, Role::All).await;
    let patch = |token: String| {
        let app = &app;
        async move {
            app.admin(
                "PATCH",
                "/admin/products/1",
                &[("authorization", &format!("Bearer {token}"))],
                r#"{"stock": 8}"#,
            )
            .await
        }
    };
    assert_eq!(patch("digest-only-token".to_owned()).await.status, 200);
    patch(digest).await.assert_problem(403, "forbidden");
    app.shutdown().await;
}

/// Findings of the schemathesis run (docs/api.md#openapi-descriptions), each fixed.
#[tokio::test]
async fn schemathesis_findings_stay_fixed() {
    let db = seeded(10, 4).await;
    let app = TestApp::spawn_as(&TestApp::config(&db), Role::Writer).await;
    let (id, _) = product_in_category(&db).await;
    let path = format!("/admin/products/{id}");

    // An unsupported method is 405 with Allow, whatever else the request carries.
    for (method, target) in [("TRACE", path.as_str()), ("GET", "/admin/products/abc")] {
        let reply = app.admin(method, target, &[("if-match", "0")], "").await;
        reply.assert_problem(405, "method-not-allowed");
        assert_eq!(reply.header("allow"), Some("PUT, PATCH, DELETE"));
    }
    // An If-Match we never issued (weak, or not a version) fails with the real version.
    for tag in ["W/\"1\"", "abc", "\"0\""] {
        let reply = app
            .admin("PATCH", &path, &[("if-match", tag)], r#"{"stock": 1}"#)
            .await;
        reply.assert_problem(412, "version-mismatch");
        assert!(
            reply.text().contains("current version (1)"),
            "{tag}: {}",
            reply.text()
        );
    }
    // A field of the wrong type is an invalid product naming the type, not malformed JSON.
    for body in [
        r#"{"sku":"ST-F-1","name":"n","price":{"amount":1,"currency":"EUR"},"stock":"5"}"#,
        r#"{"sku":5,"name":"n","price":{"amount":1,"currency":"EUR"}}"#,
        r#""x""#,
    ] {
        let reply = app.admin("PUT", "/admin/products/900002", &[], body).await;
        reply.assert_problem(400, "invalid-product");
    }
    app.admin("PUT", "/admin/categories/x", &[], r#"{"name":5}"#)
        .await
        .assert_problem(400, "invalid-product");
    // A number at the edge of f64 survives its round trip through jsonb: the product can
    // still be changed afterwards.
    let big = r#"{"sku":"ST-BIG-1","name":"n","price":{"amount":1,"currency":"EUR"},"attributes":{"v":1.7976931348623157e308,"w":-1.7976931348623157e308}}"#;
    assert_eq!(
        app.admin("PUT", "/admin/products/900102", &[], big)
            .await
            .status,
        201
    );
    let patched = app
        .admin("PATCH", "/admin/products/900102", &[], r#"{"stock": 1}"#)
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    app.shutdown().await;
}
