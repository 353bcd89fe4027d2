//! Replica health: with replay paused on the replica (real lag, measured by LSN), reads
//! stop using it, and use it again once replay resumes.
//!
//! Pausing replay affects every database on the shared replica, so this file holds the
//! tests that pause it and cargo runs it as a binary of its own, not beside the others.

mod common;

use catalog::seed::{self, SeedSpec};
use common::{TestApp, TestDb, poll, replica_has_products};

/// Resumes replay even when the test fails half-way. It connects afresh on a runtime
/// of its own: the test's pools belong to the test's runtime, which is shutting down.
struct ResumeOnDrop(String);

impl Drop for ResumeOnDrop {
    fn drop(&mut self) {
        use sqlx::Connection as _;
        let url = self.0.clone();
        let resumed = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::query("select pg_wal_replay_resume()")
                    .execute(&mut conn)
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(resumed, Ok(Ok(()))) {
            eprintln!("could not resume replay on the replica: {resumed:?}");
        }
    }
}

#[tokio::test]
async fn a_lagging_replica_is_skipped_until_it_catches_up() {
    let db = TestDb::migrated().await;
    seed::seed(
        &db.primary,
        SeedSpec {
            products: 50,
            categories: 2,
            seed: 4,
            replace: false,
        },
    )
    .await
    .unwrap();
    replica_has_products(&db, 50).await;
    let mut config = TestApp::config(&db);
    config.read.replica_max_lag_bytes = 4096;
    config.redis_url = None;
    let app = TestApp::spawn(&config).await;
    let healthy = format!(
        "catalog_replica_healthy{{replica=\"{}\"}}",
        catalog::store::replicas::display_name(&db.replica_url)
    );
    poll(|| async { (app.metric(&healthy).await == 1.0).then_some(()) }).await;
    assert_eq!(app.get("/products/1").await.status, 200);
    assert_eq!(app.metric("catalog_db_reads_replica_total").await, 1.0);

    let replica = db.replica().await;
    let _resume = ResumeOnDrop(db.replica_url.clone());
    sqlx::query("select pg_wal_replay_pause()")
        .execute(&replica)
        .await
        .unwrap();
    // Real WAL on the primary, which the paused replica does not replay.
    sqlx::query("update products set stock = stock + 1")
        .execute(&db.primary)
        .await
        .unwrap();
    poll(|| async { (app.metric(&healthy).await == 0.0).then_some(()) }).await;
    let lag_series = healthy.replace("replica_healthy", "replica_lag_bytes");
    assert!(app.metric(&lag_series).await > 4096.0);

    let primary_reads = app.metric("catalog_db_reads_primary_total").await;
    let replica_reads = app.metric("catalog_db_reads_replica_total").await;
    assert_eq!(app.get("/products/2").await.status, 200);
    assert_eq!(
        app.metric("catalog_db_reads_primary_total").await,
        primary_reads + 1.0
    );
    assert_eq!(
        app.metric("catalog_db_reads_replica_total").await,
        replica_reads
    );
    assert_eq!(app.get("/readyz").await.status, 200);

    sqlx::query("select pg_wal_replay_resume()")
        .execute(&replica)
        .await
        .unwrap();
    poll(|| async { (app.metric(&healthy).await == 1.0).then_some(()) }).await;
    assert_eq!(app.get("/products/3").await.status, 200);
    assert_eq!(
        app.metric("catalog_db_reads_replica_total").await,
        replica_reads + 1.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn without_any_healthy_replica_and_no_fallback_reads_answer_503() {
    let db = TestDb::migrated().await;
    let mut config = TestApp::config(&db);
    config.replica_urls = vec!["postgres://catalog@127.0.0.1:1/none".to_owned()];
    config.read.primary_fallback = false;
    config.redis_url = None;
    let app = TestApp::spawn(&config).await;
    app.get("/products/1")
        .await
        .assert_problem(503, "unavailable");
    app.shutdown().await;
}
