//! The write transactions on the primary: a product's row, its version bump and an
//! outbox row commit together, and `NOTIFY` wakes the relay at commit.
//!
//! - [`product`]: create, replace, merge-patch and delete one product;
//! - [`bulk`]: one batch of a bulk import, set-based, item by item when it must;
//! - [`category`]: create, rename and delete categories;
//! - [`outbox`]: the outbox rows every transaction inserts, operator purges, and the
//!   commit that notifies the relay and reads the write's token.
//!
//! Every product transaction locks the product's row (`for update`) before it checks
//! `If-Match`, so two concurrent writers of one product serialize and each sees the
//! other's version. After commit the face reads the write's token
//! ([`outbox::token`]): the primary's WAL position (`pg_current_wal_lsn()`), which is at
//! or past the commit record.
//!
//! The storefront's read queries live in [`crate::store::catalog`]; the relay's in
//! [`crate::coherence::relay`].

use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};

use super::error::WriteError;
use super::payload::{PriceInput, ProductInput};

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

pub mod bulk;
pub mod category;
pub mod outbox;
pub mod product;

/// What a write did to one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The product's version after the write.
    pub version: i64,
    /// Whether the product did not exist (or was deleted) before.
    pub created: bool,
}

/// What a committed product write answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// What the write did.
    pub written: Written,
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

/// Locks product `id`'s row and reads it with its categories (each slug by primary key:
/// see [`crate::store::catalog`] for why not a join).
async fn lock(tx: &mut Transaction<'_, Postgres>, id: i64) -> Result<Option<Current>, sqlx::Error> {
    sqlx::query_as(
        "select p.version, p.deleted_at is not null as deleted, p.sku, p.name, p.description, \
         p.brand, p.price_amount, p.currency, p.stock, p.attributes, p.images, p.active, \
         array(select (select c.slug from categories c where c.id = pc.category_id) \
               from product_categories pc where pc.product_id = p.id order by 1) as categories \
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

/// A unique-SKU violation is the client's conflict; anything else is the database's.
fn sku_conflict(err: sqlx::Error) -> WriteError {
    match &err {
        sqlx::Error::Database(db) if db.constraint() == Some("products_sku") => {
            WriteError::SkuTaken
        }
        _ => WriteError::Database(err),
    }
}
