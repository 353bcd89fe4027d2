//! Shared harness of the integration tests: the real stack started by `ops/dev.sh`,
//! and a fresh database per test so tests run in parallel and in any order.
//!
//! The stack's addresses come from the `CATALOG_*` variables that `ops/dev.sh test`
//! exports; tests read them but never set them.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};

/// How long a poll waits for the real stack before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The addresses of the running stack.
#[derive(Debug, Clone)]
pub struct Stack {
    pub primary_url: String,
    pub replica_url: String,
    pub redis_url: String,
}

impl Stack {
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the suite with `ops/dev.sh test`")
            })
        };
        let replica_url = var("CATALOG_REPLICA_URLS")
            .split(',')
            .next()
            .expect("one replica")
            .to_owned();
        Self {
            primary_url: var("CATALOG_DATABASE_URL"),
            replica_url,
            redis_url: var("CATALOG_REDIS_URL"),
        }
    }
}

/// A database of its own for one test, on the primary and (by replication) the replica.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub primary_url: String,
    pub replica_url: String,
    pub primary: PgPool,
}

impl TestDb {
    /// A new, empty database named `t_<pid>_<n>_<micros>` (`ops/dev.sh test` drops old ones).
    pub async fn empty() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let stack = Stack::from_env();
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() % 1_000_000_000)
        );
        let admin = pool(&stack.primary_url, 1).await;
        sqlx::query(AssertSqlSafe(format!("create database {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let primary_url = with_database(&stack.primary_url, &name);
        let replica_url = with_database(&stack.replica_url, &name);
        Self {
            primary: pool(&primary_url, 8).await,
            name,
            primary_url,
            replica_url,
        }
    }

    /// A new database with every migration applied.
    pub async fn migrated() -> Self {
        let db = Self::empty().await;
        catalog::store::postgres::migrate(&db.primary)
            .await
            .expect("migrate");
        db
    }

    /// A pool on the replica's copy of this database, once it exists there.
    pub async fn replica(&self) -> PgPool {
        let url = self.replica_url.clone();
        poll(|| {
            let url = url.clone();
            async move {
                let options: PgConnectOptions = url.parse().ok()?;
                PgPoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await
                    .ok()
            }
        })
        .await
    }
}

/// Points a PostgreSQL URL at another database.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let root = base.rsplit_once('/').map_or(base, |(root, _)| root);
    if query.is_empty() {
        format!("{root}/{database}")
    } else {
        format!("{root}/{database}?{query}")
    }
}

pub async fn pool(url: &str, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Calls `probe` until it answers `Some`, failing the test after [`DEADLINE`].
pub async fn poll<T, F, Fut>(mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A digest of the catalog's content (everything but timestamps), for determinism checks.
pub async fn catalog_checksum(pool: &PgPool) -> String {
    sqlx::query_scalar(
        "select md5(
            (select coalesce(string_agg(concat_ws('|', id, slug, name, parent_id), ',' order by id), '')
               from categories)
         || (select coalesce(string_agg(concat_ws('|', id, sku, name, description, brand,
                    price_amount, currency, stock, attributes::text, images::text, active, version),
                    ',' order by id), '') from products)
         || (select coalesce(string_agg(category_id || ':' || product_id, ','
                    order by category_id, product_id), '') from product_categories))",
    )
    .fetch_one(pool)
    .await
    .expect("checksum")
}
