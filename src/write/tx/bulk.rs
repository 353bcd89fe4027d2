//! One batch of a bulk import in one transaction: a few set-based statements for the
//! whole batch when it can, item by item in savepoints when it must.
//!
//! The set-based path ([`put_set`]) costs the same handful of statements whatever the
//! batch's size: the existing rows locked in id order, one upsert of every product, and
//! one statement that brings every product's category memberships to what its line
//! names (only the memberships that change are deleted or inserted) and inserts the
//! outbox rows, each naming the categories its product left, kept or joined.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use sqlx::PgPool;
use sqlx::types::Json;

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
    let mut outcomes: Vec<Option<BulkOutcome>> = refusals(pool, items)
        .await?
        .into_iter()
        .map(|refused| refused.map(Err))
        .collect();
    let ready: Vec<&BulkItem> = items
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.is_none())
        .map(|(item, _)| item)
        .collect();
    let mut ids = HashSet::with_capacity(ready.len());
    let mut skus = HashSet::with_capacity(ready.len());
    if !ready
        .iter()
        .all(|i| ids.insert(i.id) && skus.insert(i.input.sku.as_str()))
    {
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

/// Why each item is refused, if it is: it names categories that do not exist, or a SKU
/// another live product holds. One query for the whole batch.
async fn refusals(
    pool: &PgPool,
    items: &[BulkItem],
) -> Result<Vec<Option<WriteError>>, WriteError> {
    let mut slugs: Vec<&str> = items
        .iter()
        .flat_map(|i| i.input.categories.iter().map(String::as_str))
        .collect();
    slugs.sort_unstable();
    slugs.dedup();
    let skus: Vec<&str> = items.iter().map(|i| i.input.sku.as_str()).collect();
    // Categories come back without an id, SKUs with their holder's.
    let found: Vec<(String, Option<i64>)> = sqlx::query_as(
        "select slug, null::bigint from categories where slug = any($1) \
         union all select sku, id from products where sku = any($2) and deleted_at is null",
    )
    .bind(&slugs)
    .bind(&skus)
    .fetch_all(pool)
    .await?;
    let known: HashSet<&str> = found
        .iter()
        .filter(|(_, id)| id.is_none())
        .map(|(slug, _)| slug.as_str())
        .collect();
    let holders: HashMap<&str, i64> = found
        .iter()
        .filter_map(|(sku, id)| Some((sku.as_str(), (*id)?)))
        .collect();
    Ok(items
        .iter()
        .map(|item| {
            let unknown: Vec<String> = item
                .input
                .categories
                .iter()
                .filter(|slug| !known.contains(slug.as_str()))
                .cloned()
                .collect();
            if !unknown.is_empty() {
                Some(WriteError::UnknownCategories(unknown))
            } else if holders
                .get(item.input.sku.as_str())
                .is_some_and(|holder| *holder != item.id)
            {
                Some(WriteError::SkuTaken)
            } else {
                None
            }
        })
        .collect())
}

/// Brings every product of the batch to what its line names: its memberships that the
/// line drops are deleted, those it adds inserted (the others stay as they are), and
/// each product gets its outbox row, with the slugs of every category it was in before
/// or is in now. `$1`, `$2`: the wanted memberships (product id, slug); `$3`, `$4`: each
/// product's id and new version. Runs after the products' rows are locked and written,
/// so it reads memberships no concurrent write can change any more.
const MEMBERSHIPS_AND_OUTBOX: &str = "\
    with wanted as ( \
        select m.product_id, c.id as category_id, c.slug \
        from unnest($1::bigint[], $2::text[]) as m(product_id, slug) \
        join categories c on c.slug = m.slug \
    ), current as ( \
        select pc.product_id, pc.category_id, c.slug \
        from product_categories pc join categories c on c.id = pc.category_id \
        where pc.product_id = any($3) \
    ), removed as ( \
        delete from product_categories pc using current o \
        where pc.category_id = o.category_id and pc.product_id = o.product_id \
          and not exists (select from wanted w \
                          where w.product_id = o.product_id and w.category_id = o.category_id) \
    ), added as ( \
        insert into product_categories (category_id, product_id) \
        select w.category_id, w.product_id from wanted w \
        where not exists (select from current o \
                          where o.product_id = w.product_id and o.category_id = w.category_id) \
        order by w.category_id, w.product_id \
        on conflict do nothing \
    ), touched as ( \
        select product_id, array_agg(distinct slug order by slug) as slugs \
        from (select product_id, slug from current \
              union all select product_id, slug from wanted) as t \
        group by product_id \
    ) \
    insert into outbox (product_id, version, categories, created_at) \
    select x.id, x.version, coalesce(t.slugs, '{}'), clock_timestamp() \
    from unnest($3::bigint[], $4::bigint[]) with ordinality as x(id, version, n) \
    left join touched t on t.product_id = x.id \
    order by x.n";

/// Writes `items` (distinct ids and SKUs, known categories) in one transaction of
/// set-based statements; returns each item's version and whether it was created.
async fn put_set(pool: &PgPool, items: &[&BulkItem]) -> Result<Vec<Written>, WriteError> {
    // Rows are locked and written in id order, so two imports of overlapping ids cannot
    // deadlock on them.
    let mut sorted: Vec<&BulkItem> = items.to_vec();
    sorted.sort_unstable_by_key(|i| i.id);
    let ids: Vec<i64> = sorted.iter().map(|i| i.id).collect();
    let mut tx = pool.begin().await?;
    outbox::bulk_lane(&mut tx).await?;
    // The existing rows, locked; a tombstone brought back counts as created.
    let tombstones: HashSet<i64> = sqlx::query_as::<_, (i64, bool)>(
        "select id, deleted_at is not null from products where id = any($1) order by id for update",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .filter_map(|(id, deleted)| deleted.then_some(id))
    .collect();
    let text = |f: fn(&ProductInput) -> &str| -> Vec<&str> {
        sorted.iter().map(|i| f(&i.input)).collect()
    };
    let written: Vec<(i64, i64, bool)> = sqlx::query_as(upsert_products!(
        "select * from unnest($1::bigint[], $2::text[], $3::text[], $4::text[], \
             $5::text[], $6::bigint[], $7::text[], $8::int[], $9::jsonb[], $10::jsonb[], \
             $11::bool[])",
        "id, version, (xmax = 0)"
    ))
    .bind(&ids)
    .bind(text(|i| &i.sku))
    .bind(text(|i| &i.name))
    .bind(text(|i| &i.description))
    .bind(text(|i| &i.brand))
    .bind(
        sorted
            .iter()
            .map(|i| i.input.price.amount)
            .collect::<Vec<_>>(),
    )
    .bind(text(|i| &i.price.currency))
    .bind(sorted.iter().map(|i| i.input.stock).collect::<Vec<_>>())
    .bind(
        sorted
            .iter()
            .map(|i| &i.input.attributes)
            .collect::<Vec<&Value>>(),
    )
    .bind(
        sorted
            .iter()
            .map(|i| Json(i.input.images.as_slice()))
            .collect::<Vec<_>>(),
    )
    .bind(sorted.iter().map(|i| i.input.active).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    let written: HashMap<i64, Written> = written
        .into_iter()
        .map(|(id, version, inserted)| {
            let created = inserted || tombstones.contains(&id);
            (id, Written { version, created })
        })
        .collect();
    let mut member_ids = Vec::new();
    let mut member_slugs: Vec<&str> = Vec::new();
    let mut versions = Vec::with_capacity(sorted.len());
    for item in &sorted {
        let mut slugs: Vec<&str> = item.input.categories.iter().map(String::as_str).collect();
        slugs.sort_unstable();
        slugs.dedup();
        member_ids.extend(std::iter::repeat_n(item.id, slugs.len()));
        member_slugs.extend(slugs);
        let written = written
            .get(&item.id)
            .ok_or(WriteError::Database(sqlx::Error::RowNotFound))?;
        versions.push(written.version);
    }
    let outbox_rows = sqlx::query(MEMBERSHIPS_AND_OUTBOX)
        .bind(&member_ids)
        .bind(&member_slugs)
        .bind(&ids)
        .bind(&versions)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if outbox_rows != ids.len() as u64 {
        return Err(WriteError::Database(sqlx::Error::RowNotFound));
    }
    outbox::commit(tx).await?;
    items
        .iter()
        .map(|item| {
            written
                .get(&item.id)
                .copied()
                .ok_or(WriteError::Database(sqlx::Error::RowNotFound))
        })
        .collect()
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
