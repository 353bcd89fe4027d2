//! PostgreSQL connection pools and the embedded schema migrations.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a request waits for a pooled connection before it fails: long enough to
/// ride out a burst, short enough that a dead database surfaces as an error quickly.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a pool of at most `max_connections` connections to `url`, connecting eagerly
/// so a wrong URL fails at start-up rather than on the first request. With
/// `synchronous_commit`, every connection's transactions commit at that level (the
/// writer's pool, when `CATALOG_SYNCHRONOUS_COMMIT` is set).
pub async fn connect(
    url: &str,
    max_connections: u32,
    synchronous_commit: Option<&str>,
) -> Result<PgPool, sqlx::Error> {
    let mut options: PgConnectOptions = url.parse()?;
    options = options.application_name("catalogd");
    if let Some(level) = synchronous_commit {
        options = options.options([("synchronous_commit", level)]);
    }
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
}

/// Applies every pending migration; applying them again changes nothing.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}
