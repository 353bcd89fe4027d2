//! Category transactions: create or rename (with a parent that must not be a
//! descendant), and delete (each member product gets a new version and an outbox row,
//! since documents list their categories).
//!
//! Writes that set a parent serialize on a transaction-level advisory lock
//! ([`TREE_LOCK`]) before they check for a cycle: two concurrent writes (A under B, B
//! under A) would otherwise each check the other's old state and commit a cycle. The
//! walk up the tree is bounded by [`MAX_DEPTH`] all the same.

use sqlx::PgPool;

use super::outbox::{self, Change};
use crate::write::error::WriteError;
use crate::write::payload::CategoryInput;

/// The advisory lock key of category-tree writes (`pg_advisory_xact_lock`): any
/// constant the other transactions of this database do not use; "CATTREE" in ASCII.
const TREE_LOCK: i64 = 0x0043_4154_5452_4545;

/// Most ancestors the cycle check walks: a guard so the walk ends even on a tree that
/// holds a cycle already (written before the lock, or by hand).
const MAX_DEPTH: i32 = 10_000;

/// A committed category write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryCommitted {
    /// Whether the category did not exist before.
    pub created: bool,
}

/// Creates or renames category `slug`.
pub async fn put(
    pool: &PgPool,
    slug: &str,
    input: &CategoryInput,
) -> Result<CategoryCommitted, WriteError> {
    let mut tx = pool.begin().await?;
    let parent: Option<i64> = match &input.parent {
        None => None,
        Some(parent) => {
            // Taken before the check, whose snapshot then sees every earlier tree write.
            sqlx::query("select pg_advisory_xact_lock($1)")
                .bind(TREE_LOCK)
                .execute(&mut *tx)
                .await?;
            let row: Option<(i64, bool)> = sqlx::query_as(
                "with recursive up(id, slug, parent_id, depth) as ( \
                     select id, slug, parent_id, 1 from categories where slug = $1 \
                     union all \
                     select c.id, c.slug, c.parent_id, up.depth + 1 \
                     from categories c join up on c.id = up.parent_id where up.depth < $3) \
                 select (select id from categories where slug = $1), \
                        exists(select 1 from up where slug = $2)",
            )
            .bind(parent)
            .bind(slug)
            .bind(MAX_DEPTH)
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
    outbox::insert(&mut tx, Change::Category(slug)).await?;
    outbox::commit(tx).await?;
    Ok(CategoryCommitted { created })
}

/// Deletes category `slug`. Its products' documents list their categories, so each
/// member gets a new version and an outbox row of its own.
pub async fn delete(pool: &PgPool, slug: &str) -> Result<(), WriteError> {
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
    outbox::insert(&mut tx, Change::Category(slug)).await?;
    outbox::commit(tx).await
}
