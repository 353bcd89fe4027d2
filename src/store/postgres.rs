//! PostgreSQL connection pools, the deadline every database call runs under, and the
//! embedded schema migrations.
//!
//! A call gets two deadlines of the same length: the server's `statement_timeout`
//! (set on every connection), which cancels a slow query, and [`within`] on the client,
//! which also gives up on a server that does not answer at all (frozen, or behind a
//! network black hole), where `statement_timeout` cannot fire.

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a request waits for a pooled connection before it fails: long enough to
/// ride out a burst, short enough that a dead database surfaces as an error quickly.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a pool's connections are set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// `statement_timeout` of every statement (`CATALOG_DB_TIMEOUT_MS`); zero: none
    /// (migrations and seeding, which run as long as they must).
    pub statement_timeout: Duration,
    /// `synchronous_commit` of every transaction (the writer's pool, when
    /// `CATALOG_SYNCHRONOUS_COMMIT` is set); `None`: the server's setting.
    pub synchronous_commit: Option<String>,
}

fn options(url: &str, settings: &PoolSettings) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let timeout = settings.statement_timeout.as_millis().to_string();
    let mut parameters = vec![("statement_timeout", timeout.as_str())];
    if let Some(level) = &settings.synchronous_commit {
        parameters.push(("synchronous_commit", level));
    }
    Ok(options.application_name("catalogd").options(parameters))
}

fn pool_options(settings: &PoolSettings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(if settings.statement_timeout.is_zero() {
            ACQUIRE_TIMEOUT
        } else {
            ACQUIRE_TIMEOUT.min(settings.statement_timeout)
        })
}

/// Opens a pool to `url`, connecting eagerly so a wrong URL fails at start-up rather
/// than on the first request (the writer's pool).
pub async fn connect(url: &str, settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    pool_options(settings)
        .connect_with(options(url, settings)?)
        .await
}

/// A pool to `url` that connects on first use, so a process can start while the
/// database is down (the reader's pools: it serves what its caches hold meanwhile).
pub fn connect_lazy(url: &str, settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    Ok(pool_options(settings).connect_lazy_with(options(url, settings)?))
}

/// Runs one database call under the client-side deadline `limit`; past it the call is
/// dropped (a transaction in flight rolls back) and fails with a timed-out I/O error.
pub async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {limit:?}"),
        )))
    })
}

/// Applies every pending migration; applying them again changes nothing.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_fails_as_timed_out() {
        let never = std::future::pending::<Result<(), sqlx::Error>>();
        let err = within(Duration::from_millis(100), never).await.unwrap_err();
        assert!(
            matches!(&err, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut),
            "{err}"
        );
        assert_eq!(
            within(Duration::from_secs(1), async { Ok(7) })
                .await
                .unwrap(),
            7
        );
    }
}
