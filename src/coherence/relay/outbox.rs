//! The relay's queries on the outbox, inside a round's transaction: the oldest
//! unpublished rows it takes, and the sequence in `relay_state` it advances past them.

use sqlx::{Postgres, Transaction};

use super::BATCH;

/// One outbox row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct OutboxRow {
    pub(super) id: i64,
    pub(super) product_id: Option<i64>,
    pub(super) purge: bool,
    pub(super) deleted: bool,
    pub(super) version: i64,
    pub(super) categories: Vec<String>,
    pub(super) created_micros: i64,
}

/// The oldest unpublished outbox rows, single writes before a bulk import's, at most
/// [`BATCH`].
pub(super) async fn unpublished(
    tx: &mut Transaction<'_, Postgres>,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(
        "select id, product_id, purge, deleted, coalesce(version, 0) as version, categories, \
         (extract(epoch from created_at) * 1000000)::bigint as created_micros \
         from outbox where published_at is null order by bulk, id limit $1",
    )
    .bind(BATCH)
    .fetch_all(&mut **tx)
    .await
}

/// Moves the relay's sequence to `next`, inside the round's transaction.
pub(super) async fn advance_sequence(
    tx: &mut Transaction<'_, Postgres>,
    next: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("update relay_state set next_seq = $1 where id = 1")
        .bind(next)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
