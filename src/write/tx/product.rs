//! One product's transactions: create or replace (`PUT`), merge-patch (`PATCH`) and
//! delete (a tombstone with a new version), each with its outbox row, and, for a
//! request with an `Idempotency-Key`, its stored response ([`idempotency::seal`]).

use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};

use super::outbox::{self, Change};
use super::{Committed, Current, Written, begin, sku_conflict};
use crate::write::error::WriteError;
use crate::write::idempotency::{self, Lease};
use crate::write::payload::ProductInput;

/// What a product write does.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    /// Create or replace.
    Put(&'a ProductInput),
    /// Apply this JSON merge patch to the live product.
    Patch(&'a [u8]),
    /// Delete the live product.
    Delete,
}

/// Runs `op` on product `id` in one transaction. With `lease`, the response is stored
/// for the key in the same transaction, and the write rolls back if the lease's request
/// no longer holds the key.
pub async fn write(
    pool: &PgPool,
    id: i64,
    op: Op<'_>,
    if_match: Option<i64>,
    lease: Option<&Lease>,
) -> Result<Committed, WriteError> {
    let (mut tx, current) = begin(pool, id, if_match).await?;
    let written = match op {
        Op::Put(input) => upsert(&mut tx, id, input, current).await?,
        Op::Patch(patch) => {
            let Some(current) = current.filter(Current::live) else {
                return Err(WriteError::ProductNotFound(id));
            };
            let input = current.input().patched(patch)?;
            upsert(&mut tx, id, &input, Some(current)).await?
        }
        Op::Delete => tombstone(&mut tx, id, current).await?,
    };
    if let Some(lease) = lease {
        idempotency::seal(&mut tx, lease, id, written).await?;
    }
    outbox::commit(tx).await?;
    Ok(Committed { written })
}

/// Creates or replaces product `id`.
pub async fn put(
    pool: &PgPool,
    id: i64,
    input: &ProductInput,
    if_match: Option<i64>,
) -> Result<Committed, WriteError> {
    write(pool, id, Op::Put(input), if_match, None).await
}

/// Applies a JSON merge patch to live product `id`.
pub async fn patch(
    pool: &PgPool,
    id: i64,
    patch: &[u8],
    if_match: Option<i64>,
) -> Result<Committed, WriteError> {
    write(pool, id, Op::Patch(patch), if_match, None).await
}

/// Deletes live product `id`, leaving a tombstone with a new version.
pub async fn delete(
    pool: &PgPool,
    id: i64,
    if_match: Option<i64>,
) -> Result<Committed, WriteError> {
    write(pool, id, Op::Delete, if_match, None).await
}

/// Marks live product `id` (locked as `current`) deleted, and its outbox row.
async fn tombstone(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    current: Option<Current>,
) -> Result<Written, WriteError> {
    let Some(current) = current.filter(Current::live) else {
        return Err(WriteError::ProductNotFound(id));
    };
    let version: i64 = sqlx::query_scalar(
        "update products set deleted_at = now(), updated_at = now(), version = version + 1 \
         where id = $1 returning version",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    let change = Change::Product {
        id,
        version,
        categories: &current.categories,
    };
    outbox::insert(tx, change).await?;
    Ok(Written {
        version,
        created: false,
    })
}

/// Writes product `id` (locked as `current`) and its outbox row, inside `tx`.
pub(super) async fn upsert(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    input: &ProductInput,
    current: Option<Current>,
) -> Result<Written, WriteError> {
    let mut wanted = input.categories.clone();
    wanted.sort_unstable();
    wanted.dedup();
    let found: Vec<(i64, String)> =
        sqlx::query_as("select id, slug from categories where slug = any($1)")
            .bind(&wanted)
            .fetch_all(&mut **tx)
            .await?;
    if found.len() != wanted.len() {
        let unknown = wanted
            .iter()
            .filter(|slug| !found.iter().any(|(_, s)| s == *slug))
            .cloned()
            .collect();
        return Err(WriteError::UnknownCategories(unknown));
    }
    let version: i64 = sqlx::query_scalar(upsert_products!(
        "values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        "version"
    ))
    .bind(id)
    .bind(&input.sku)
    .bind(&input.name)
    .bind(&input.description)
    .bind(&input.brand)
    .bind(input.price.amount)
    .bind(&input.price.currency)
    .bind(input.stock)
    .bind(&input.attributes)
    .bind(Json(&input.images))
    .bind(input.active)
    .fetch_one(&mut **tx)
    .await
    .map_err(sku_conflict)?;
    let category_ids: Vec<i64> = found.iter().map(|(id, _)| *id).collect();
    sqlx::query("delete from product_categories where product_id = $1 and category_id <> all($2)")
        .bind(id)
        .bind(&category_ids)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "insert into product_categories (category_id, product_id) \
         select unnest($2::bigint[]), $1 on conflict do nothing",
    )
    .bind(id)
    .bind(&category_ids)
    .execute(&mut **tx)
    .await?;
    let created = current.as_ref().is_none_or(|c| !c.live());
    let mut touched = current.map(|c| c.categories).unwrap_or_default();
    touched.extend(wanted);
    touched.sort_unstable();
    touched.dedup();
    let change = Change::Product {
        id,
        version,
        categories: &touched,
    };
    outbox::insert(tx, change).await?;
    Ok(Written { version, created })
}
