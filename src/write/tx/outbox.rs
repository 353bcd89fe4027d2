//! Outbox rows and the commit: every write transaction inserts the rows that announce
//! its changes, then [`commit`] notifies the relay (delivered at commit) and commits.
//! Operator purges are transactions of outbox rows alone. A bulk import's transactions
//! put their rows in the bulk lane ([`bulk_lane`]), which the relay publishes after the
//! single writes waiting beside it.
//!
//! After the commit, the face reads the write's token with [`token`]: the primary's WAL
//! position then, at or past the commit record. A committed write is acknowledged
//! whatever happens next: if the token cannot be read within its deadline (after a few
//! tries), the write is answered without one.

use std::future::Future;
use std::time::Duration;

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

/// Puts every outbox row `tx` inserts from now on in the bulk lane: the relay publishes
/// them after the rows of single writes, so a large import does not hold up the writes
/// made beside it (the column's default reads this transaction-local setting).
pub async fn bulk_lane(tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
    sqlx::query("set local catalog.outbox_lane = 'bulk'")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Notifies the relay (delivered at commit) and commits. A failure before `COMMIT`
/// is [`WriteError::Database`] (nothing applied), and so is `COMMIT` refused by the
/// server (it rolled back); `COMMIT` lost on the way (the connection failed, no answer)
/// is [`WriteError::CommitUnknown`]: the write may have been applied.
pub async fn commit(mut tx: Transaction<'_, Postgres>) -> Result<(), WriteError> {
    sqlx::query("select pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *tx)
        .await?;
    match tx.commit().await {
        Ok(()) => Ok(()),
        Err(refused @ sqlx::Error::Database(_)) => Err(WriteError::Database(refused)),
        Err(lost) => Err(WriteError::CommitUnknown(lost)),
    }
}

/// First pause between two tries of a token read; it doubles up to [`TOKEN_PAUSE_MAX`].
const TOKEN_PAUSE: Duration = Duration::from_millis(20);

/// Longest pause between two tries of a token read.
const TOKEN_PAUSE_MAX: Duration = Duration::from_millis(200);

/// The token of a write that committed: the primary's WAL position now, read within
/// `deadline` (tried again while it fails); `None` if it could not be read.
pub async fn token(pool: &PgPool, deadline: Duration) -> Option<String> {
    read_token(
        || sqlx::query_scalar("select pg_current_wal_lsn()::text").fetch_one(pool),
        deadline,
    )
    .await
}

/// Runs `read` until it answers or `deadline` passes, pausing between tries.
async fn read_token<F, Fut>(mut read: F, deadline: Duration) -> Option<String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<String, sqlx::Error>>,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut pause = TOKEN_PAUSE;
    loop {
        match tokio::time::timeout_at(end, read()).await {
            Ok(Ok(token)) => return Some(token),
            Ok(Err(err)) => tracing::debug!(error = %err, "reading a write's token failed"),
            Err(_) => break,
        }
        if tokio::time::Instant::now() + pause >= end {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(TOKEN_PAUSE_MAX);
    }
    tracing::warn!(
        ?deadline,
        "a committed write is answered without a Catalog-Token: its token could not be read"
    );
    None
}

/// Broadcasts an operator's purge: of one category's products, or of everything.
pub async fn purge(pool: &PgPool, category: Option<&str>) -> Result<(), WriteError> {
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
    commit(tx).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_token_that_cannot_be_read_is_given_up_at_the_deadline() {
        let tries = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let token = read_token(
            || async {
                tries.fetch_add(1, Ordering::SeqCst);
                Err::<String, _>(sqlx::Error::PoolClosed)
            },
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(token, None);
        assert!(started.elapsed() <= Duration::from_secs(1));
        assert!(tries.load(Ordering::SeqCst) >= 3, "tried only once");

        // A read that never answers is bounded by the same deadline.
        let started = tokio::time::Instant::now();
        let token = read_token(std::future::pending, Duration::from_secs(1)).await;
        assert_eq!(token, None);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_read_is_tried_again_until_it_answers() {
        let tries = AtomicUsize::new(0);
        let token = read_token(
            || async {
                match tries.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(sqlx::Error::PoolTimedOut),
                    _ => Ok("0/16B3748".to_owned()),
                }
            },
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(token.as_deref(), Some("0/16B3748"));
    }
}
