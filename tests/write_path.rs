//! The admin face against the real stack: refusals that change nothing, `If-Match`,
//! `Idempotency-Key` replay and reuse, categories and purges reaching the readers, and
//! NDJSON bulk import.

mod common;

use std::time::{Duration, Instant};

use catalog::startup::Role;
use common::admin::{lamp, primary_state, product_in_category, wait_for_version};
use common::{TestApp, poll, seeded};
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
