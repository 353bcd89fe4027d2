//! Outbox rows and the commit: every write transaction inserts the rows that announce
//! its changes, then [`commit`] notifies the relay (delivered at commit), commits, and
//! reads the write's token. Operator purges are transactions of outbox rows alone.

use sqlx::{PgPool, Postgres, Transaction};

use crate::coherence::relay::CHANNEL;
use crate::write::error::WriteError;

/// What one outbox row announces.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// A product's new version, and the categories whose listings it touched.
    Product {
        /// The product.
        id: i64,
        /// Its version after the write.
        version: i64,
        /// Slugs of the categories it left or joined (or belongs to).
        categories: &'a [String],
    },
    /// A category was created, renamed or deleted: its listings and `/categories`.
    Category(&'a str),
    /// An operator's purge of every cached product.
    PurgeAll,
}

/// Inserts the outbox row announcing `change`.
pub async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    change: Change<'_>,
) -> Result<(), sqlx::Error> {
    let category;
    let (product_id, version, categories, purge): (Option<i64>, i64, &[String], bool) = match change
    {
        Change::Product {
            id,
            version,
            categories,
        } => (Some(id), version, categories, false),
        Change::Category(slug) => {
            category = [slug.to_owned()];
            (None, 0, &category, false)
        }
        Change::PurgeAll => (None, 0, &[], true),
    };
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
pub async fn commit(
    mut tx: Transaction<'_, Postgres>,
    pool: &PgPool,
) -> Result<String, WriteError> {
    sqlx::query("select pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(sqlx::query_scalar("select pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?)
}

/// Broadcasts an operator's purge: of one category's products, or of everything.
pub async fn purge(pool: &PgPool, category: Option<&str>) -> Result<String, WriteError> {
    let mut tx = pool.begin().await?;
    match category {
        None => insert(&mut tx, Change::PurgeAll).await?,
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
            insert(&mut tx, Change::Category(slug)).await?;
        }
    }
    commit(tx, pool).await
}
