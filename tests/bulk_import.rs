//! The set-based path of a bulk import's batch (`catalog::write::tx::bulk`): every
//! product written once, its memberships brought to what its line names, and exactly
//! one outbox row per written product, in the bulk lane, naming the categories it left,
//! kept or joined; and, through the writer, an import of several batches published
//! once per change by the relay.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use catalog::startup::Role;
use catalog::write::payload::{PriceInput, ProductInput};
use catalog::write::tx::bulk::{BulkItem, put_batch};
use common::{TestApp, TestDb, poll, seeded};
use serde_json::Value;

fn item(id: i64, categories: &[&str]) -> BulkItem {
    BulkItem {
        id,
        input: ProductInput {
            sku: format!("BULK-{id}"),
            name: format!("Bulk {id}"),
            description: format!("line {id}\twith a tab, a \\ and a newline\n"),
            brand: "Brand".to_owned(),
            price: PriceInput {
                amount: 100 + id,
                currency: "EUR".to_owned(),
            },
            stock: i32::try_from(id % 1000).unwrap(),
            attributes: serde_json::json!({"n": id, "quote": "\"x\""}),
            images: vec![format!("https://img.example.com/{id}.jpg")],
            active: id % 2 == 0,
            categories: categories.iter().map(|s| (*s).to_owned()).collect(),
        },
    }
}

/// Every product's category slugs.
async fn memberships(db: &TestDb) -> BTreeMap<i64, BTreeSet<String>> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "select pc.product_id, c.slug from product_categories pc \
         join categories c on c.id = pc.category_id",
    )
    .fetch_all(&db.primary)
    .await
    .unwrap();
    let mut all: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for (id, slug) in rows {
        all.entry(id).or_default().insert(slug);
    }
    all
}

async fn set_memberships(db: &TestDb, id: i64, slugs: &[&str]) {
    sqlx::query("delete from product_categories where product_id = $1")
        .bind(id)
        .execute(&db.primary)
        .await
        .unwrap();
    sqlx::query(
        "insert into product_categories (category_id, product_id) \
         select id, $1 from categories where slug = any($2)",
    )
    .bind(id)
    .bind(slugs)
    .execute(&db.primary)
    .await
    .unwrap();
}

async fn versions(db: &TestDb) -> BTreeMap<i64, i64> {
    sqlx::query_as::<_, (i64, i64)>("select id, version from products")
        .fetch_all(&db.primary)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn a_set_based_batch_writes_each_product_once_with_its_memberships_and_outbox_row() {
    let db = seeded(20, 6).await;
    let slugs: Vec<String> = sqlx::query_scalar("select slug from categories order by slug")
        .fetch_all(&db.primary)
        .await
        .unwrap();
    let s: Vec<&str> = slugs.iter().map(String::as_str).collect();
    // Product 1 leaves s0, keeps s1 and joins s2; product 2 is written as it is; product
    // 3 is a tombstone brought back; product 4 had no category.
    set_memberships(&db, 1, &[s[0], s[1]]).await;
    set_memberships(&db, 2, &[s[2]]).await;
    set_memberships(&db, 3, &[s[3]]).await;
    set_memberships(&db, 4, &[]).await;
    sqlx::query("update products set deleted_at = now(), version = version + 1 where id = 3")
        .execute(&db.primary)
        .await
        .unwrap();
    let versions_before = versions(&db).await;
    let members_before = memberships(&db).await;
    let outbox_before: i64 = sqlx::query_scalar("select coalesce(max(id), 0) from outbox")
        .fetch_one(&db.primary)
        .await
        .unwrap();

    // New products in descending id order, the existing ones among them.
    let mut items: Vec<BulkItem> = (0..400_i64)
        .rev()
        .map(|n| {
            let categories: Vec<&str> = (0..n % 3).map(|k| s[((n + k) % 6) as usize]).collect();
            item(10_000 + n, &categories)
        })
        .collect();
    items.insert(100, item(1, &[s[1], s[2], s[2]]));
    items.insert(200, item(2, &[s[2]]));
    items.insert(300, item(3, &[s[3], s[0]]));
    items.push(item(4, &[s[4], s[5]]));

    let committed = put_batch(&db.primary, &items).await.unwrap();
    assert_eq!(committed.outcomes.len(), items.len());

    let versions_after = versions(&db).await;
    let members_after = memberships(&db).await;
    let outbox: Vec<(i64, i64, Vec<String>, bool)> = sqlx::query_as(
        "select product_id, version, categories, bulk from outbox where id > $1 order by id",
    )
    .bind(outbox_before)
    .fetch_all(&db.primary)
    .await
    .unwrap();
    assert_eq!(
        outbox.len(),
        items.len(),
        "one outbox row per written product"
    );
    let outbox: BTreeMap<i64, (i64, Vec<String>, bool)> = outbox
        .into_iter()
        .map(|(id, version, categories, bulk)| (id, (version, categories, bulk)))
        .collect();
    assert_eq!(outbox.len(), items.len(), "no product has two outbox rows");

    for (item, outcome) in items.iter().zip(&committed.outcomes) {
        let id = item.id;
        let written = outcome.as_ref().unwrap_or_else(|e| panic!("{id}: {e}"));
        let before = versions_before.get(&id).copied();
        assert_eq!(written.version, before.map_or(1, |v| v + 1), "{id}");
        assert_eq!(written.version, versions_after[&id], "{id}");
        assert_eq!(written.created, before.is_none() || id == 3, "{id}");

        let wanted: BTreeSet<String> = item.input.categories.iter().cloned().collect();
        let now = members_after.get(&id).cloned().unwrap_or_default();
        assert_eq!(now, wanted, "memberships of {id}");
        let mut touched: BTreeSet<String> = members_before.get(&id).cloned().unwrap_or_default();
        touched.extend(wanted);
        let (version, categories, bulk) = &outbox[&id];
        assert_eq!(*version, written.version, "outbox version of {id}");
        assert_eq!(
            categories,
            &touched.into_iter().collect::<Vec<_>>(),
            "outbox categories of {id}"
        );
        assert!(bulk, "outbox row of {id} in the bulk lane");
    }
    // The content written is the line's.
    let stored: Value = sqlx::query_scalar(
        "select to_jsonb(p) - 'created_at' - 'updated_at' from products p where id = 10007",
    )
    .fetch_one(&db.primary)
    .await
    .unwrap();
    let expected = &items.iter().find(|i| i.id == 10_007).unwrap().input;
    assert_eq!(stored["sku"], expected.sku);
    assert_eq!(stored["name"], expected.name);
    assert_eq!(stored["description"], expected.description);
    assert_eq!(stored["brand"], expected.brand);
    assert_eq!(stored["price_amount"], expected.price.amount);
    assert_eq!(stored["currency"], expected.price.currency);
    assert_eq!(stored["stock"], expected.stock);
    assert_eq!(stored["attributes"], expected.attributes);
    assert_eq!(stored["images"], serde_json::json!(expected.images));
    assert_eq!(stored["active"], expected.active);
    assert_eq!(stored["deleted_at"], Value::Null);
    let revived: bool =
        sqlx::query_scalar("select deleted_at is null and version = $1 from products where id = 3")
            .bind(versions_before[&3] + 1)
            .fetch_one(&db.primary)
            .await
            .unwrap();
    assert!(revived, "the tombstone is live again");
    // Products the batch does not name are left as they were.
    for id in 5..=20 {
        assert_eq!(versions_after[&id], versions_before[&id], "{id}");
        assert_eq!(members_after.get(&id), members_before.get(&id), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_of_the_same_products_in_opposite_orders_both_commit_every_row() {
    let db = seeded(300, 4).await;
    let slugs: Vec<String> = sqlx::query_scalar("select slug from categories order by slug")
        .fetch_all(&db.primary)
        .await
        .unwrap();
    let up: Vec<BulkItem> = (1..=300).map(|id| item(id, &[&slugs[0]])).collect();
    let down: Vec<BulkItem> = (1..=300).rev().map(|id| item(id, &[&slugs[1]])).collect();
    let before = versions(&db).await;
    let (a, b) = tokio::join!(put_batch(&db.primary, &up), put_batch(&db.primary, &down));
    for outcome in a.unwrap().outcomes.iter().chain(&b.unwrap().outcomes) {
        outcome.as_ref().unwrap();
    }
    let after = versions(&db).await;
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "select product_id, count(*), count(distinct version) from outbox \
         where bulk group by product_id",
    )
    .fetch_all(&db.primary)
    .await
    .unwrap();
    assert_eq!(rows.len(), 300);
    for (id, count, distinct) in rows {
        assert_eq!(after[&id], before[&id] + 2, "{id}");
        assert_eq!((count, distinct), (2, 2), "outbox rows of {id}");
    }
    // Whichever committed last, each product is in exactly one of the two categories.
    let members = memberships(&db).await;
    for id in 1..=300 {
        assert_eq!(members[&id].len(), 1, "{id}: {:?}", members[&id]);
    }
}

#[tokio::test]
async fn an_import_of_several_batches_has_every_change_published_once() {
    let db = seeded(5, 3).await;
    let slug: String = sqlx::query_scalar("select slug from categories order by slug limit 1")
        .fetch_one(&db.primary)
        .await
        .unwrap();
    let app = TestApp::spawn_as(&TestApp::config(&db), Role::Writer).await;
    let lines = 1_234;
    let body: String = (1..=lines)
        .map(|n: i64| {
            let categories = if n % 2 == 0 {
                vec![slug.clone()]
            } else {
                vec![]
            };
            let line = serde_json::json!({
                "id": 500_000 + n, "sku": format!("B-{n}"), "name": format!("B {n}"),
                "price": {"amount": n, "currency": "USD"}, "categories": categories,
            });
            format!("{line}\n")
        })
        .collect();
    // Created, then replaced: two changes of every product.
    for pass in 1..=2 {
        let reply = app.admin("POST", "/admin/products/bulk", &[], &body).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let summary: Value = serde_json::from_str(reply.text().lines().last().unwrap()).unwrap();
        assert_eq!(
            summary["summary"]["written"], lines,
            "pass {pass}: {summary}"
        );
        assert_eq!(summary["summary"]["failed"], 0, "pass {pass}: {summary}");
    }
    poll(|| async {
        let waiting: bool =
            sqlx::query_scalar("select exists(select 1 from outbox where published_at is null)")
                .fetch_one(&db.primary)
                .await
                .ok()?;
        (!waiting).then_some(())
    })
    .await;
    let (rows, changes, products, published): (i64, i64, i64, i64) = sqlx::query_as(
        "select count(*), count(distinct (product_id, version)), count(distinct product_id), \
             count(distinct seq) \
         from outbox where product_id > 500000",
    )
    .fetch_one(&db.primary)
    .await
    .unwrap();
    assert_eq!((rows, changes, products), (2 * lines, 2 * lines, lines));
    assert_eq!(
        published,
        2 * lines,
        "each row published with a sequence number of its own"
    );
    let current: i64 = sqlx::query_scalar(
        "select count(*) from products p where id > 500000 and version = 2 and exists \
         (select 1 from outbox o where o.product_id = p.id and o.version = 2 and o.bulk)",
    )
    .fetch_one(&db.primary)
    .await
    .unwrap();
    assert_eq!(current, lines);
    app.shutdown().await;
}
