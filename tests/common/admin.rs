//! Admin helpers of the integration tests: writes through the writer that must
//! succeed, waits for the reader to serve them, and the primary's state a refused
//! request must leave alone.

use serde_json::Value;

use super::{Reply, TestApp, TestDb, poll};

/// An active product of the seed and one of its category slugs.
pub async fn product_in_category(db: &TestDb) -> (i64, String) {
    sqlx::query_as(
        "select p.id, c.slug from products p join product_categories pc on pc.product_id = p.id \
         join categories c on c.id = pc.category_id where p.active order by p.id limit 1",
    )
    .fetch_one(&db.primary)
    .await
    .unwrap()
}

/// Creates category `slug` named `name` (a top-level one) through the writer.
pub async fn create_category(app: &TestApp, slug: &str, name: &str) {
    let reply = app
        .admin(
            "PUT",
            &format!("/admin/categories/{slug}"),
            &[],
            &serde_json::json!({ "name": name }).to_string(),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
}

pub fn lamp(name: &str, categories: &[String]) -> String {
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
pub async fn patch_stock(app: &TestApp, id: i64, stock: i64) -> Reply {
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
pub async fn set_stock(app: &TestApp, id: i64, stock: i64) -> Value {
    let reply = patch_stock(app, id, stock).await;
    let doc = wait_for_version(app, id, reply.json()["version"].as_i64().unwrap()).await;
    assert_eq!(doc["stock"], stock);
    doc
}

/// Polls the reader until product `id` has at least `version`.
pub async fn wait_for_version(app: &TestApp, id: i64, version: i64) -> Value {
    poll(|| async {
        let reply = app.get(&format!("/products/{id}")).await;
        let doc = reply.json();
        (doc["version"].as_i64().unwrap_or(0) >= version).then_some(doc)
    })
    .await
}

/// The primary's row and the outbox size: what a refused request must leave alone.
pub async fn primary_state(db: &TestDb, id: i64) -> (Option<String>, i64) {
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

/// Polls until the relay has published every outbox row of `primary`.
pub async fn outbox_drained(primary: &sqlx::PgPool) {
    poll(|| async {
        let left: i64 =
            sqlx::query_scalar("select count(*) from outbox where published_at is null")
                .fetch_one(primary)
                .await
                .ok()?;
        (left == 0).then_some(())
    })
    .await;
}
