//! The foundation against the real stack: migrations, replication, Redis, seeding,
//! and the binary's handling of bad configuration and arguments.

mod common;

use std::process::Command;

use catalog::seed::{self, SeedError, SeedSpec};
use common::{Stack, TestDb, catalog_checksum, poll};
use fred::prelude::*;

async fn count(pool: &sqlx::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every column of every table, in order: a picture of the schema.
async fn schema(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "select table_name || '.' || column_name || ':' || data_type \
         from information_schema.columns where table_schema = 'public' \
         order by table_name, ordinal_position",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn migrations_apply_on_an_empty_database_and_a_second_run_changes_nothing() {
    let db = TestDb::empty().await;
    assert!(schema(&db.primary).await.is_empty());

    catalog::store::postgres::migrate(&db.primary)
        .await
        .unwrap();
    let first = schema(&db.primary).await;
    for table in [
        "products",
        "categories",
        "product_categories",
        "outbox",
        "idempotency_keys",
    ] {
        assert!(
            first.iter().any(|c| c.starts_with(&format!("{table}."))),
            "{table} missing"
        );
    }
    let applied = count(&db.primary, "_sqlx_migrations").await;

    catalog::store::postgres::migrate(&db.primary)
        .await
        .unwrap();
    assert_eq!(schema(&db.primary).await, first);
    assert_eq!(count(&db.primary, "_sqlx_migrations").await, applied);
}

#[tokio::test]
async fn constraints_refuse_impossible_rows() {
    let db = TestDb::migrated().await;
    let insert = |price: i64, currency: &'static str, stock: i32| {
        sqlx::query(
            "insert into products (id, sku, name, price_amount, currency, stock) \
             values (1, 'SKU-1', 'Lamp', $1, $2, $3)",
        )
        .bind(price)
        .bind(currency)
        .bind(stock)
        .execute(&db.primary)
    };
    assert!(insert(-1, "USD", 1).await.is_err(), "negative price");
    assert!(insert(100, "usd", 1).await.is_err(), "lower-case currency");
    assert!(insert(100, "EURO", 1).await.is_err(), "4-letter currency");
    assert!(insert(100, "USD", -1).await.is_err(), "negative stock");
    assert_eq!(count(&db.primary, "products").await, 0);
    insert(100, "USD", 0).await.expect("a valid row");
    assert_eq!(count(&db.primary, "products").await, 1);
}

#[tokio::test]
async fn a_write_on_the_primary_becomes_visible_on_the_replica() {
    let db = TestDb::migrated().await;
    let replica = db.replica().await;
    let in_recovery: bool = sqlx::query_scalar("select pg_is_in_recovery()")
        .fetch_one(&replica)
        .await
        .unwrap();
    assert!(in_recovery, "the replica must be a hot standby");
    let primary_in_recovery: bool = sqlx::query_scalar("select pg_is_in_recovery()")
        .fetch_one(&db.primary)
        .await
        .unwrap();
    assert!(!primary_in_recovery);

    sqlx::query("insert into categories (slug, name) values ('lamps', 'Lamps')")
        .execute(&db.primary)
        .await
        .unwrap();
    let name: String = poll(|| async {
        sqlx::query_scalar("select name from categories where slug = 'lamps'")
            .fetch_optional(&replica)
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!(name, "Lamps");
    // The replica is read-only.
    assert!(
        sqlx::query("insert into categories (slug, name) values ('x', 'X')")
            .execute(&replica)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn redis_answers() {
    let stack = Stack::from_env();
    let client = Builder::from_config(Config::from_url(&stack.redis_url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    let pong: String = client.ping(None).await.unwrap();
    assert_eq!(pong, "PONG");
    let key = format!("test:foundation:{}", std::process::id());
    let _: () = client
        .set(&key, "hello", Some(Expiration::EX(30)), None, false)
        .await
        .unwrap();
    let value: Option<String> = client.get(&key).await.unwrap();
    assert_eq!(value.as_deref(), Some("hello"));
    client.quit().await.unwrap();
}

fn spec(seed: u64) -> SeedSpec {
    SeedSpec {
        products: 3_000,
        categories: 40,
        seed,
        replace: false,
    }
}

#[tokio::test]
async fn seed_creates_exactly_the_counts_asked_and_is_deterministic() {
    let (a, b, c) = tokio::join!(TestDb::migrated(), TestDb::migrated(), TestDb::migrated());
    let report = seed::seed(&a.primary, spec(5)).await.unwrap();
    seed::seed(&b.primary, spec(5)).await.unwrap();
    seed::seed(&c.primary, spec(6)).await.unwrap();

    assert_eq!(count(&a.primary, "products").await, 3_000);
    assert_eq!(count(&a.primary, "categories").await, 40);
    assert_eq!(
        count(&a.primary, "product_categories").await,
        report.memberships as i64
    );
    let empty_categories: i64 = sqlx::query_scalar(
        "select count(*) from categories c \
         where not exists (select 1 from product_categories m where m.category_id = c.id)",
    )
    .fetch_one(&a.primary)
    .await
    .unwrap();
    assert!(empty_categories < 40);

    let checksum = catalog_checksum(&a.primary).await;
    assert_eq!(catalog_checksum(&b.primary).await, checksum);
    assert_ne!(catalog_checksum(&c.primary).await, checksum);
}

#[tokio::test]
async fn seed_refuses_a_non_empty_catalog_unless_asked_to_replace_it() {
    let db = TestDb::migrated().await;
    seed::seed(&db.primary, spec(1)).await.unwrap();
    let before = catalog_checksum(&db.primary).await;

    let err = seed::seed(
        &db.primary,
        SeedSpec {
            products: 10,
            ..spec(2)
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SeedError::NotEmpty(3_000)), "{err}");
    assert_eq!(catalog_checksum(&db.primary).await, before);

    let replace = SeedSpec {
        products: 10,
        replace: true,
        ..spec(2)
    };
    seed::seed(&db.primary, replace).await.unwrap();
    assert_eq!(count(&db.primary, "products").await, 10);
}

fn catalogd(db: &TestDb) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_catalogd"));
    cmd.env_clear()
        .env("CATALOG_DATABASE_URL", &db.primary_url)
        .env("CATALOG_LOG", "warn");
    cmd
}

#[tokio::test]
async fn the_cli_migrates_and_seeds_a_catalog_that_the_replica_serves() {
    let db = TestDb::empty().await;
    let migrate = catalogd(&db).arg("migrate").output().unwrap();
    assert!(migrate.status.success(), "{migrate:?}");
    let seed = catalogd(&db)
        .args([
            "seed",
            "--products",
            "10000",
            "--categories",
            "25",
            "--seed",
            "3",
        ])
        .output()
        .unwrap();
    assert!(seed.status.success(), "{seed:?}");

    let replica = db.replica().await;
    poll(|| async {
        let n: i64 = sqlx::query_scalar("select count(*) from products")
            .fetch_one(&replica)
            .await
            .ok()?;
        (n == 10_000).then_some(())
    })
    .await;
}

#[tokio::test]
async fn bad_seed_arguments_are_refused_and_write_nothing() {
    let db = TestDb::migrated().await;
    for args in [
        &["--products", "-5"][..],
        &["--products", "many"],
        &["--categories", "0"],
        &["--seed", "x"],
    ] {
        let out = catalogd(&db).arg("seed").args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(args[0]), "{args:?}: {stderr}");
    }
    assert_eq!(count(&db.primary, "products").await, 0);
    assert_eq!(count(&db.primary, "categories").await, 0);
}

#[tokio::test]
async fn configuration_errors_name_the_variable() {
    let db = TestDb::empty().await;
    let out = catalogd(&db)
        .env("CATALOG_READER_ADDR", "not-an-address")
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CATALOG_READER_ADDR"), "{stderr}");
    // Nothing was migrated.
    assert!(schema(&db.primary).await.is_empty());

    let out = Command::new(env!("CARGO_BIN_EXE_catalogd"))
        .env_clear()
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CATALOG_DATABASE_URL"));
}

#[tokio::test]
async fn probe_answers_a_health_check_without_configuration() {
    let db = common::seeded(3, 1).await;
    let app = common::TestApp::spawn(&common::TestApp::config(&db)).await;
    let probe = |path: String| {
        Command::new(env!("CARGO_BIN_EXE_catalogd"))
            .env_clear()
            .args(["probe", &path])
            .output()
            .unwrap()
    };
    // Healthy, a 404, nothing listening, and a URL that is not http://.
    let urls = [
        format!("http://{}/healthz", app.addr),
        format!("http://{}/nowhere", app.addr),
        "http://127.0.0.1:1/healthz".to_owned(),
        "https://x/".to_owned(),
    ];
    let answers = tokio::task::spawn_blocking(move || urls.map(probe))
        .await
        .unwrap();
    app.shutdown().await;
    let codes = answers.each_ref().map(|out| out.status.code());
    assert_eq!(codes, [Some(0), Some(1), Some(1), Some(2)], "{answers:?}");
}
