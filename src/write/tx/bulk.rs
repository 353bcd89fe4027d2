//! One batch of a bulk import in one transaction: set-based statements for the whole
//! batch when it can (about 15k products/s), item by item in savepoints when it must.

use serde_json::Value;
use sqlx::PgPool;

use super::{Written, lock, outbox, product};
use crate::write::error::WriteError;
use crate::write::payload::ProductInput;

/// One line of a bulk import.
#[derive(Debug)]
pub struct BulkItem {
    /// The product's id.
    pub id: i64,
    /// Its content.
    pub input: ProductInput,
}

/// One bulk item's outcome: what was written, or why not.
pub type BulkOutcome = Result<Written, WriteError>;

/// A committed batch: each item's outcome, in order.
#[derive(Debug)]
pub struct BatchCommitted {
    /// One outcome per item.
    pub outcomes: Vec<BulkOutcome>,
}

/// Creates or replaces every item in one transaction. Items that name unknown categories
/// or a SKU held by another product are refused first; the rest are written with a
/// handful of set-based statements for the whole batch. If the batch cannot be written
/// that way (the same id or SKU twice in it, or a conflict with a concurrent write), it
/// is written item by item instead ([`put_each`]).
pub async fn put_batch(pool: &PgPool, items: &[BulkItem]) -> Result<BatchCommitted, WriteError> {
    let mut outcomes: Vec<Option<BulkOutcome>> = (0..items.len()).map(|_| None).collect();
    let mut slugs: Vec<&str> = items
        .iter()
        .flat_map(|i| i.input.categories.iter().map(String::as_str))
        .collect();
    slugs.sort_unstable();
    slugs.dedup();
    let known: Vec<String> = sqlx::query_scalar("select slug from categories where slug = any($1)")
        .bind(&slugs)
        .fetch_all(pool)
        .await?;
    let skus: Vec<&str> = items.iter().map(|i| i.input.sku.as_str()).collect();
    let holders: Vec<(String, i64)> =
        sqlx::query_as("select sku, id from products where sku = any($1) and deleted_at is null")
            .bind(&skus)
            .fetch_all(pool)
            .await?;
    for (i, item) in items.iter().enumerate() {
        let unknown: Vec<String> = item
            .input
            .categories
            .iter()
            .filter(|slug| !known.contains(slug))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            outcomes[i] = Some(Err(WriteError::UnknownCategories(unknown)));
        } else if holders
            .iter()
            .any(|(sku, id)| *sku == item.input.sku && *id != item.id)
        {
            outcomes[i] = Some(Err(WriteError::SkuTaken));
        }
    }
    let ready: Vec<&BulkItem> = items
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.is_none())
        .map(|(item, _)| item)
        .collect();
    let mut ids: Vec<i64> = ready.iter().map(|i| i.id).collect();
    let mut ready_skus: Vec<&str> = ready.iter().map(|i| i.input.sku.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ready_skus.sort_unstable();
    ready_skus.dedup();
    if ids.len() != ready.len() || ready_skus.len() != ready.len() {
        return put_each(pool, items).await;
    }
    match put_set(pool, &ready).await {
        Ok(written) => {
            let mut written = written.into_iter();
            for outcome in &mut outcomes {
                if outcome.is_none() {
                    *outcome = written.next().map(Ok);
                }
            }
            let outcomes = outcomes
                .into_iter()
                .map(|o| o.unwrap_or(Err(WriteError::Database(sqlx::Error::RowNotFound))))
                .collect();
            Ok(BatchCommitted { outcomes })
        }
        // A constraint a concurrent write broke: item by item, each refused alone.
        Err(WriteError::Database(sqlx::Error::Database(_))) => put_each(pool, items).await,
        Err(err) => Err(err),
    }
}

/// Writes `items` (distinct ids and SKUs, known categories) in one transaction of
/// set-based statements; returns each item's version and whether it was created.
async fn put_set(pool: &PgPool, items: &[&BulkItem]) -> Result<Vec<Written>, WriteError> {
    let mut tx = pool.begin().await?;
    outbox::bulk_lane(&mut tx).await?;
    let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
    let before: Vec<(i64, Vec<String>)> = sqlx::query_as(
        "select p.id, array(select c.slug from product_categories pc \
             join categories c on c.id = pc.category_id where pc.product_id = p.id) \
         from products p where p.id = any($1) order by p.id for update",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let column = |f: fn(&ProductInput) -> String| -> Vec<String> {
        items.iter().map(|i| f(&i.input)).collect()
    };
    let written: Vec<(i64, i64, bool)> = sqlx::query_as(upsert_products!(
        "select * from unnest($1::bigint[], $2::text[], $3::text[], $4::text[], \
             $5::text[], $6::bigint[], $7::text[], $8::int[], $9::jsonb[], $10::jsonb[], \
             $11::bool[])",
        "id, version, (xmax = 0)"
    ))
    .bind(&ids)
    .bind(column(|i| i.sku.clone()))
    .bind(column(|i| i.name.clone()))
    .bind(column(|i| i.description.clone()))
    .bind(column(|i| i.brand.clone()))
    .bind(
        items
            .iter()
            .map(|i| i.input.price.amount)
            .collect::<Vec<_>>(),
    )
    .bind(column(|i| i.price.currency.clone()))
    .bind(items.iter().map(|i| i.input.stock).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|i| i.input.attributes.clone())
            .collect::<Vec<Value>>(),
    )
    .bind(
        items
            .iter()
            .map(|i| Value::from(i.input.images.clone()))
            .collect::<Vec<Value>>(),
    )
    .bind(items.iter().map(|i| i.input.active).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    let (members, slugs): (Vec<i64>, Vec<String>) = items
        .iter()
        .flat_map(|i| {
            i.input
                .categories
                .iter()
                .map(move |slug| (i.id, slug.clone()))
        })
        .unzip();
    sqlx::query("delete from product_categories where product_id = any($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "insert into product_categories (category_id, product_id) \
         select c.id, x.product_id from unnest($1::bigint[], $2::text[]) as x(product_id, slug) \
         join categories c on c.slug = x.slug on conflict do nothing",
    )
    .bind(&members)
    .bind(&slugs)
    .execute(&mut *tx)
    .await?;
    let mut outcomes = Vec::with_capacity(items.len());
    let mut versions = Vec::with_capacity(items.len());
    let mut touched = Vec::with_capacity(items.len());
    for item in items {
        let (version, created) = written
            .iter()
            .find(|(id, _, _)| *id == item.id)
            .map(|(_, v, c)| (*v, *c))
            .ok_or(WriteError::Database(sqlx::Error::RowNotFound))?;
        let mut categories: Vec<String> = before
            .iter()
            .find(|(id, _)| *id == item.id)
            .map(|(_, c)| c.clone())
            .unwrap_or_default();
        categories.extend(item.input.categories.iter().cloned());
        categories.sort_unstable();
        categories.dedup();
        touched.push(categories.join(","));
        versions.push(version);
        outcomes.push(Written { version, created });
    }
    sqlx::query(
        "insert into outbox (product_id, version, categories, created_at) \
         select x.id, x.version, coalesce(string_to_array(nullif(x.categories, ''), ','), '{}'), \
             clock_timestamp() \
         from unnest($1::bigint[], $2::bigint[], $3::text[]) as x(id, version, categories)",
    )
    .bind(&ids)
    .bind(&versions)
    .bind(&touched)
    .execute(&mut *tx)
    .await?;
    outbox::commit(tx).await?;
    Ok(outcomes)
}

/// Writes every item in one transaction, each in a savepoint of its own, so an item
/// that fails (a taken SKU, an unknown category) is rolled back alone.
async fn put_each(pool: &PgPool, items: &[BulkItem]) -> Result<BatchCommitted, WriteError> {
    let mut tx = pool.begin().await?;
    outbox::bulk_lane(&mut tx).await?;
    let mut outcomes = Vec::with_capacity(items.len());
    for item in items {
        let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
        let current = lock(&mut savepoint, item.id).await?;
        match product::upsert(&mut savepoint, item.id, &item.input, current).await {
            Ok(outcome) => {
                savepoint.commit().await?;
                outcomes.push(Ok(outcome));
            }
            Err(WriteError::Database(err)) => return Err(WriteError::Database(err)),
            Err(refused) => {
                savepoint.rollback().await?;
                outcomes.push(Err(refused));
            }
        }
    }
    outbox::commit(tx).await?;
    Ok(BatchCommitted { outcomes })
}
