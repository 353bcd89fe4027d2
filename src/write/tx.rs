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
use super::payload::{PriceInput, ProductInput};
use crate::coherence::relay::CHANNEL;

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
    let mut wanted = input.categories.clone();
    wanted.sort_unstable();
    wanted.dedup();
    let found: Vec<(i64, String)> =
        sqlx::query_as("select id, slug from categories where slug = any($1)")
            .bind(&wanted)
            .fetch_all(&mut *tx)
            .await?;
    if found.len() != wanted.len() {
        let unknown = wanted
            .iter()
            .filter(|slug| !found.iter().any(|(_, s)| s == *slug))
            .cloned()
            .collect();
        return Err(WriteError::UnknownCategories(unknown));
    }
    let version: i64 = sqlx::query_scalar(
        "insert into products (id, sku, name, description, brand, price_amount, currency, \
             stock, attributes, images, active) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         on conflict (id) do update set sku = excluded.sku, name = excluded.name, \
             description = excluded.description, brand = excluded.brand, \
             price_amount = excluded.price_amount, currency = excluded.currency, \
             stock = excluded.stock, attributes = excluded.attributes, images = excluded.images, \
             active = excluded.active, deleted_at = null, updated_at = now(), \
             version = products.version + 1 \
         returning version",
    )
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
    .fetch_one(&mut *tx)
    .await
    .map_err(sku_conflict)?;
    let category_ids: Vec<i64> = found.iter().map(|(id, _)| *id).collect();
    sqlx::query("delete from product_categories where product_id = $1 and category_id <> all($2)")
        .bind(id)
        .bind(&category_ids)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "insert into product_categories (category_id, product_id) \
         select unnest($2::bigint[]), $1 on conflict do nothing",
    )
    .bind(id)
    .bind(&category_ids)
    .execute(&mut *tx)
    .await?;
    let created = current.as_ref().is_none_or(|c| !c.live());
    let mut touched = current.map(|c| c.categories).unwrap_or_default();
    touched.extend(wanted);
    touched.sort_unstable();
    touched.dedup();
    finish(tx, id, version, &touched, created, pool).await
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

/// Inserts the outbox row, notifies the relay, commits and reads the token.
async fn finish(
    mut tx: Transaction<'_, Postgres>,
    id: i64,
    version: i64,
    categories: &[String],
    created: bool,
    pool: &PgPool,
) -> Result<Committed, WriteError> {
    sqlx::query(
        "insert into outbox (product_id, version, categories, created_at) \
         values ($1, $2, $3, clock_timestamp())",
    )
    .bind(id)
    .bind(version)
    .bind(categories)
    .execute(&mut *tx)
    .await?;
    sqlx::query("select pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let token: String = sqlx::query_scalar("select pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?;
    Ok(Committed {
        version,
        created,
        token,
    })
}

fn sku_conflict(err: sqlx::Error) -> WriteError {
    match &err {
        sqlx::Error::Database(db) if db.constraint() == Some("products_sku") => {
            WriteError::SkuTaken
        }
        _ => WriteError::Database(err),
    }
}
