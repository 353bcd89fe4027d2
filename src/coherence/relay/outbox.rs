//! The relay's queries on the outbox, inside a round's transaction: the oldest
//! unpublished rows it takes, the rows it publishes again after Redis lost entries, and
//! the sequence in `relay_state` it advances past them.

use sqlx::{Postgres, Transaction};

use super::BATCH;

/// `select <the columns of an [`OutboxRow`]> from outbox` followed by `$tail`.
macro_rules! outbox_rows {
    ($tail:literal) => {
        concat!(
            "select id, product_id, purge, deleted, coalesce(version, 0) as version, \
             categories, (extract(epoch from created_at) * 1000000)::bigint as created_micros \
             from outbox ",
            $tail
        )
    };
}

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

impl OutboxRow {
    /// A change to categories themselves (or their purge): it names categories and no
    /// product.
    pub(super) fn names_categories_only(&self) -> bool {
        self.product_id.is_none() && !self.categories.is_empty()
    }
}

/// The primary's WAL insert position: past the commit record of every transaction whose
/// rows a statement before this one saw (a commit is inserted before it is visible).
pub(super) async fn visible_position(
    tx: &mut Transaction<'_, Postgres>,
) -> Result<u64, sqlx::Error> {
    let text: String = sqlx::query_scalar("select pg_current_wal_insert_lsn()::text")
        .fetch_one(&mut **tx)
        .await?;
    crate::store::replicas::parse_lsn(&text)
        .ok_or_else(|| sqlx::Error::Protocol(format!("unparsable WAL position {text}")))
}

/// The oldest unpublished outbox rows, single writes before a bulk import's, at most
/// [`BATCH`].
pub(super) async fn unpublished(
    tx: &mut Transaction<'_, Postgres>,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(outbox_rows!(
        "where published_at is null order by bulk, id limit $1"
    ))
    .bind(BATCH)
    .fetch_all(&mut **tx)
    .await
}

/// At most `limit` rows of the window of publication times that a recovery from a Redis
/// rollback recorded in `relay_state` ([`begin_republishing`]); publishing a row moves
/// its `published_at` past the window, so each call takes the next ones.
pub(super) async fn to_republish(
    tx: &mut Transaction<'_, Postgres>,
    limit: usize,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(outbox_rows!(
        "where published_at > (select republish_after from relay_state where id = 1) \
           and published_at < (select republish_before from relay_state where id = 1) \
         order by published_at limit $1"
    ))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&mut **tx)
    .await
}

/// Records the window to publish again after Redis lost entries: every change published
/// within the last `lifetime_secs` (L2's lifetime) before now, the round's time.
pub(super) async fn begin_republishing(
    tx: &mut Transaction<'_, Postgres>,
    lifetime_secs: f64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update relay_state set republish_after = now() - make_interval(secs => $1), \
         republish_before = now() where id = 1",
    )
    .bind(lifetime_secs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Clears the window once every row of it was published again.
pub(super) async fn end_republishing(
    tx: &mut Transaction<'_, Postgres>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update relay_state set republish_after = null, republish_before = null where id = 1",
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
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

/// Marks a round's `rows` published, numbered from `first_seq` in their order, and
/// moves the relay's sequence past them: one statement, inside the round's transaction.
pub(super) async fn mark_published(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[OutboxRow],
    first_seq: i64,
) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let seqs: Vec<i64> = (first_seq..).take(rows.len()).collect();
    sqlx::query(
        "with marked as (update outbox set published_at = now(), seq = data.seq \
         from unnest($1::bigint[], $2::bigint[]) as data(id, seq) where outbox.id = data.id) \
         update relay_state set next_seq = $3 where id = 1",
    )
    .bind(&ids)
    .bind(&seqs)
    .bind(first_seq + rows.len() as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
