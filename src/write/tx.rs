//! The write transactions on the primary: the row, its version bump and an outbox row
//! commit together, and `NOTIFY` wakes the relay at commit.
//!
//! Every transaction locks the product's row (`for update`) before it checks `If-Match`,
//! so two concurrent writers of one product serialize and each sees the other's version.
//! After commit the write's token is read: the primary's WAL position
//! (`pg_current_wal_lsn()`), which is at or past the commit record.

use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};

use super::error::WriteError;
use super::payload::{CategoryInput, PriceInput, ProductInput};
use crate::coherence::relay::CHANNEL;

/// Creates products from `$rows` (`values (...)` or a `select`) or replaces them,
/// bumping the version and clearing any tombstone, returning `$returning`.
macro_rules! upsert_products {
    ($rows:literal, $returning:literal) => {
        concat!(
            "insert into products (id, sku, name, description, brand, price_amount, currency, \
                 stock, attributes, images, active) ",
            $rows,
            " on conflict (id) do update set sku = excluded.sku, name = excluded.name, \
                 description = excluded.description, brand = excluded.brand, \
                 price_amount = excluded.price_amount, currency = excluded.currency, \
                 stock = excluded.stock, attributes = excluded.attributes, \
                 images = excluded.images, active = excluded.active, deleted_at = null, \
                 updated_at = now(), version = products.version + 1 \
             returning ",
            $returning
        )
    };
}

/// What a committed write answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The product's version after the write.
    pub version: i64,
    /// Whether the product did not exist (or was deleted) before.
    pub created: bool,
    /// The commit's LSN, the read-your-writes token.
    pub token: String,
}

/// The locked current state of a product.
#[derive(Debug, sqlx::FromRow)]
struct Current {
    version: i64,
    deleted: bool,
    sku: String,
    name: String,
    description: String,
    brand: String,
    price_amount: i64,
    currency: String,
    stock: i32,
    attributes: Value,
    images: Json<Vec<String>>,
    active: bool,
    categories: Vec<String>,
}

impl Current {
    fn live(&self) -> bool {
        !self.deleted
    }

    fn input(&self) -> ProductInput {
        ProductInput {
            sku: self.sku.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            brand: self.brand.clone(),
            price: PriceInput {
                amount: self.price_amount,
                currency: self.currency.clone(),
            },
            stock: self.stock,
            attributes: self.attributes.clone(),
            images: self.images.0.clone(),
            active: self.active,
            categories: self.categories.clone(),
        }
    }
}

async fn lock(tx: &mut Transaction<'_, Postgres>, id: i64) -> Result<Option<Current>, sqlx::Error> {
    sqlx::query_as(
        "select p.version, p.deleted_at is not null as deleted, p.sku, p.name, p.description, \
         p.brand, p.price_amount, p.currency, p.stock, p.attributes, p.images, p.active, \
         array(select c.slug from product_categories pc join categories c on c.id = pc.category_id \
               where pc.product_id = p.id order by c.slug) as categories \
         from products p where p.id = $1 for update",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
}

/// Begins the write's transaction, locks product `id` and checks `If-Match`.
async fn begin(
    pool: &PgPool,
    id: i64,
    if_match: Option<i64>,
) -> Result<(Transaction<'static, Postgres>, Option<Current>), WriteError> {
    let mut tx = pool.begin().await?;
    let current = lock(&mut tx, id).await?;
    match (if_match, &current) {
        (None, _) => Ok((tx, current)),
        (Some(expected), Some(c)) if c.live() && c.version == expected => Ok((tx, current)),
        (Some(_), c) => Err(WriteError::PreconditionFailed {
            current: c.as_ref().filter(|c| c.live()).map_or(0, |c| c.version),
        }),
    }
}

/// Creates or replaces product `id`.
pub async fn put_product(
    pool: &PgPool,
    id: i64,
    input: &ProductInput,
    if_match: Option<i64>,
) -> Result<Committed, WriteError> {
    let (tx, current) = begin(pool, id, if_match).await?;
    store(tx, id, input, current, pool).await
}

/// Applies a JSON merge patch to live product `id`.
pub async fn patch_product(
    pool: &PgPool,
    id: i64,
    patch: &[u8],
    if_match: Option<i64>,
) -> Result<Committed, WriteError> {
    let (tx, current) = begin(pool, id, if_match).await?;
    let Some(current) = current.filter(Current::live) else {
        return Err(WriteError::ProductNotFound(id));
    };
    let input = current.input().patched(patch)?;
    store(tx, id, &input, Some(current), pool).await
}

async fn store(
    mut tx: Transaction<'_, Postgres>,
    id: i64,
    input: &ProductInput,
    current: Option<Current>,
    pool: &PgPool,
) -> Result<Committed, WriteError> {
    let (version, created) = upsert(&mut tx, id, input, current).await?;
    let token = commit(tx, pool).await?;
    Ok(Committed {
        version,
        created,
        token,
    })
}

/// Writes product `id` (locked as `current`) and its outbox row, inside `tx`.
/// Returns the new version and whether the product was created.
async fn upsert(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    input: &ProductInput,
    current: Option<Current>,
) -> Result<(i64, bool), WriteError> {
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
    outbox(tx, Some(id), version, &touched, false).await?;
    Ok((version, created))
}

/// One line of a bulk import.
#[derive(Debug)]
pub struct BulkItem {
    /// The product's id.
    pub id: i64,
    /// Its content.
    pub input: ProductInput,
}

/// One bulk item's outcome: its new version and whether it was created, or why not.
pub type BulkOutcome = Result<(i64, bool), WriteError>;

/// Creates or replaces every item in one transaction. Items that name unknown categories
/// or a SKU held by another product are refused first; the rest are written with a
/// handful of set-based statements for the whole batch. If the batch cannot be written
/// that way (the same id or SKU twice in it, or a conflict with a concurrent write), it
/// is written item by item instead ([`bulk_put_each`]).
pub async fn bulk_put(
    pool: &PgPool,
    items: &[BulkItem],
) -> Result<(Vec<BulkOutcome>, String), WriteError> {
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
        return bulk_put_each(pool, items).await;
    }
    match put_set(pool, &ready).await {
        Ok((written, token)) => {
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
            Ok((outcomes, token))
        }
        // A constraint a concurrent write broke: item by item, each refused alone.
        Err(WriteError::Database(sqlx::Error::Database(_))) => bulk_put_each(pool, items).await,
        Err(err) => Err(err),
    }
}

/// Writes `items` (distinct ids and SKUs, known categories) in one transaction of
/// set-based statements; returns each item's version and whether it was created.
async fn put_set(
    pool: &PgPool,
    items: &[&BulkItem],
) -> Result<(Vec<(i64, bool)>, String), WriteError> {
    let mut tx = pool.begin().await?;
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
        outcomes.push((version, created));
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
    Ok((outcomes, commit(tx, pool).await?))
}

/// Writes every item in one transaction, each in a savepoint of its own, so an item
/// that fails (a taken SKU, an unknown category) is rolled back alone.
async fn bulk_put_each(
    pool: &PgPool,
    items: &[BulkItem],
) -> Result<(Vec<BulkOutcome>, String), WriteError> {
    let mut tx = pool.begin().await?;
    let mut outcomes = Vec::with_capacity(items.len());
    for item in items {
        let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
        let current = lock(&mut savepoint, item.id).await?;
        match upsert(&mut savepoint, item.id, &item.input, current).await {
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
    let token = commit(tx, pool).await?;
    Ok((outcomes, token))
}

/// Deletes live product `id`, leaving a tombstone with a new version.
pub async fn delete_product(
    pool: &PgPool,
    id: i64,
    if_match: Option<i64>,
) -> Result<Committed, WriteError> {
    let (mut tx, current) = begin(pool, id, if_match).await?;
    let Some(current) = current.filter(Current::live) else {
        return Err(WriteError::ProductNotFound(id));
    };
    let version: i64 = sqlx::query_scalar(
        "update products set deleted_at = now(), updated_at = now(), version = version + 1 \
         where id = $1 returning version",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    finish(tx, id, version, &current.categories, false, pool).await
}

/// Inserts a product's outbox row, then commits.
async fn finish(
    mut tx: Transaction<'_, Postgres>,
    id: i64,
    version: i64,
    categories: &[String],
    created: bool,
    pool: &PgPool,
) -> Result<Committed, WriteError> {
    outbox(&mut tx, Some(id), version, categories, false).await?;
    let token = commit(tx, pool).await?;
    Ok(Committed {
        version,
        created,
        token,
    })
}

/// Inserts one outbox row.
async fn outbox(
    tx: &mut Transaction<'_, Postgres>,
    product_id: Option<i64>,
    version: i64,
    categories: &[String],
    purge: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into outbox (product_id, version, categories, purge, created_at) \
         values ($1, $2, $3, $4, clock_timestamp())",
    )
    .bind(product_id)
    .bind(version)
    .bind(categories)
    .bind(purge)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Notifies the relay (delivered at commit), commits, and reads the write's token.
async fn commit(mut tx: Transaction<'_, Postgres>, pool: &PgPool) -> Result<String, WriteError> {
    sqlx::query("select pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(sqlx::query_scalar("select pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?)
}

/// Creates or renames category `slug`; returns whether it was created and the token.
pub async fn put_category(
    pool: &PgPool,
    slug: &str,
    input: &CategoryInput,
) -> Result<(bool, String), WriteError> {
    let mut tx = pool.begin().await?;
    let parent: Option<i64> = match &input.parent {
        None => None,
        Some(parent) => {
            let row: Option<(i64, bool)> = sqlx::query_as(
                "with recursive up(id, slug, parent_id) as ( \
                     select id, slug, parent_id from categories where slug = $1 \
                     union all \
                     select c.id, c.slug, c.parent_id from categories c join up on c.id = up.parent_id) \
                 select (select id from categories where slug = $1), \
                        exists(select 1 from up where slug = $2)",
            )
            .bind(parent)
            .bind(slug)
            .fetch_optional(&mut *tx)
            .await?
            .and_then(|(id, cycle): (Option<i64>, bool)| id.map(|id| (id, cycle)));
            match row {
                None => return Err(WriteError::UnknownCategories(vec![parent.clone()])),
                Some((_, true)) => {
                    return Err(WriteError::Invalid {
                        field: "parent",
                        reason: "the parent is a descendant of this category".to_owned(),
                    });
                }
                Some((id, false)) => Some(id),
            }
        }
    };
    let created: bool = sqlx::query_scalar(
        "insert into categories (slug, name, parent_id) values ($1, $2, $3) \
         on conflict (slug) do update set name = excluded.name, parent_id = excluded.parent_id, \
             updated_at = now() \
         returning (xmax = 0)",
    )
    .bind(slug)
    .bind(&input.name)
    .bind(parent)
    .fetch_one(&mut *tx)
    .await?;
    outbox(&mut tx, None, 0, &[slug.to_owned()], false).await?;
    Ok((created, commit(tx, pool).await?))
}

/// Deletes category `slug`. Its products' documents list their categories, so each
/// member gets a new version and an outbox row of its own.
pub async fn delete_category(pool: &PgPool, slug: &str) -> Result<String, WriteError> {
    let mut tx = pool.begin().await?;
    let id: Option<i64> =
        sqlx::query_scalar("select id from categories where slug = $1 for update")
            .bind(slug)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(id) = id else {
        return Err(WriteError::CategoryNotFound);
    };
    sqlx::query(
        "with members as (delete from product_categories where category_id = $1 \
                          returning product_id), \
              bumped as (update products set version = version + 1, updated_at = now() \
                         where id in (select product_id from members) returning id, version) \
         insert into outbox (product_id, version, categories, created_at) \
         select id, version, array[$2], clock_timestamp() from bumped",
    )
    .bind(id)
    .bind(slug)
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from categories where id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    outbox(&mut tx, None, 0, &[slug.to_owned()], false).await?;
    commit(tx, pool).await
}

/// Broadcasts an operator's purge: of one category's products, or of everything.
pub async fn purge(pool: &PgPool, category: Option<&str>) -> Result<String, WriteError> {
    let mut tx = pool.begin().await?;
    match category {
        None => outbox(&mut tx, None, 0, &[], true).await?,
        Some(slug) => {
            let exists: bool =
                sqlx::query_scalar("select exists(select 1 from categories where slug = $1)")
                    .bind(slug)
                    .fetch_one(&mut *tx)
                    .await?;
            if !exists {
                return Err(WriteError::CategoryNotFound);
            }
            sqlx::query(
                "insert into outbox (product_id, version, categories, purge, created_at) \
                 select pc.product_id, p.version, array[$1], true, clock_timestamp() \
                 from product_categories pc join categories c on c.id = pc.category_id \
                 join products p on p.id = pc.product_id where c.slug = $1",
            )
            .bind(slug)
            .execute(&mut *tx)
            .await?;
            outbox(&mut tx, None, 0, &[slug.to_owned()], false).await?;
        }
    }
    commit(tx, pool).await
}

fn sku_conflict(err: sqlx::Error) -> WriteError {
    match &err {
        sqlx::Error::Database(db) if db.constraint() == Some("products_sku") => {
            WriteError::SkuTaken
        }
        _ => WriteError::Database(err),
    }
}
