//! Replay paused on the replica (real lag, measured by LSN): reads stop using a lagging
//! replica and use it again once it catches up; and a reader that has an invalidation
//! never serves the older version, even when the only replica still has it.
//!
//! Pausing replay affects every database on the shared replica, so this file holds the
//! tests that pause it and cargo runs it as a binary of its own, not beside the others.

mod common;

use catalog::seed::{self, SeedSpec};
use catalog::startup::Role;
use common::admin::create_category;
use common::{TestApp, TestDb, poll, replica_has_products, seeded};
use fred::prelude::*;
use std::time::Duration;

/// Tests that pause replay hold this, so one never resumes what another paused.
static REPLAY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `statements` on `url` when dropped, so a test that fails half-way still puts
/// the shared stack back (resumes replay, resets settings). It connects afresh on a
/// runtime of its own: the test's pools belong to the test's runtime, which is going.
struct RestoreOnDrop {
    url: String,
    statements: &'static [&'static str],
}

/// Resumes replay on the replica at `url`.
fn resume_on_drop(url: &str) -> RestoreOnDrop {
    RestoreOnDrop {
        url: url.to_owned(),
        statements: &["select pg_wal_replay_resume()"],
    }
}

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        use sqlx::Connection as _;
        let url = self.url.clone();
        let statements = self.statements;
        let restored = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                for statement in statements {
                    sqlx::query(*statement).execute(&mut conn).await?;
                }
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(restored, Ok(Ok(()))) {
            eprintln!("could not restore the stack ({statements:?}): {restored:?}");
        }
    }
}

#[tokio::test]
async fn a_lagging_replica_is_skipped_until_it_catches_up() {
    let _replay = REPLAY.lock().await;
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
    let healthy = "catalog_replica_healthy{replica=\"0\"}";
    poll(|| async { (app.metric(healthy).await == 1.0).then_some(()) }).await;
    assert_eq!(app.get("/products/1").await.status, 200);
    assert_eq!(app.metric("catalog_db_reads_replica_total").await, 1.0);

    let replica = db.replica().await;
    let _resume = resume_on_drop(&db.replica_url);
    sqlx::query("select pg_wal_replay_pause()")
        .execute(&replica)
        .await
        .unwrap();
    // Real WAL on the primary, which the paused replica does not replay.
    sqlx::query("update products set stock = stock + 1")
        .execute(&db.primary)
        .await
        .unwrap();
    poll(|| async { (app.metric(healthy).await == 0.0).then_some(()) }).await;
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
    poll(|| async { (app.metric(healthy).await == 1.0).then_some(()) }).await;
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

/// A reader whose replica lags (replay paused, lag bound generous so it stays in use)
/// and that got the invalidation of a write serves the new version: its floor refuses
/// the replica's older row and the primary answers.
#[tokio::test]
async fn a_reader_with_the_invalidation_never_serves_the_replicas_older_version() {
    let _replay = REPLAY.lock().await;
    let db = seeded(20, 2).await;
    let replica = db.replica().await;
    let config = TestApp::config(&db);
    let app = TestApp::spawn_as(&config, Role::All).await;
    assert_eq!(app.get("/products/1").await.json()["version"], 1);

    let _resume = resume_on_drop(&db.replica_url);
    sqlx::query("select pg_wal_replay_pause()")
        .execute(&replica)
        .await
        .unwrap();
    for id in [1, 2, 3] {
        let reply = app
            .admin(
                "PATCH",
                &format!("/admin/products/{id}"),
                &[],
                r#"{"stock": 4242}"#,
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    poll(|| async { (app.metric("catalog_invalidations_total").await >= 3.0).then_some(()) }).await;
    // The replica still has version 1 of all three.
    let on_replica: i64 = sqlx::query_scalar("select max(version) from products where id <= 3")
        .fetch_one(&replica)
        .await
        .unwrap();
    assert_eq!(on_replica, 1);
    for _ in 0..20 {
        for id in [1, 2, 3] {
            let doc = app.get(&format!("/products/{id}")).await.json();
            assert_eq!(doc["version"], 2, "product {id} served at an older version");
        }
        let batch = app.get("/products?ids=1,2,3").await.json();
        assert!(
            batch["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["version"] == 2)
        );
    }

    // A reader started now, while the replica still lags, rebuilds its floors from the
    // stream and refuses the replica's old rows too.
    let late = TestApp::spawn_as(&config, Role::Reader).await;
    poll(|| async { (late.metric("catalog_invalidations_total").await >= 3.0).then_some(()) })
        .await;
    // Without the L2 copies the relay wrote, only the floors stand between the reader
    // and the replica's old rows.
    let redis = Builder::from_config(
        fred::prelude::Config::from_url(config.redis_url.as_deref().unwrap()).unwrap(),
    )
    .build()
    .unwrap();
    redis.init().await.unwrap();
    let keys: Vec<String> = (1..=3)
        .map(|id| format!("{}p:{id}", config.redis_prefix))
        .collect();
    let _: i64 = redis.del(keys).await.unwrap();
    redis.quit().await.unwrap();
    for id in [1, 2, 3] {
        assert_eq!(
            late.get(&format!("/products/{id}")).await.json()["version"],
            2
        );
    }
    assert_eq!(late.metric("catalog_stale_fills_total").await, 3.0);
    late.shutdown().await;
    app.shutdown().await;
}

/// A reader that gets no invalidations at all (no Redis) still honours a token: its
/// watermark never passes it, so the read goes around its caches to a replica that has
/// replayed the write (none: replay is paused) or the primary.
#[tokio::test]
async fn a_token_read_never_returns_the_older_version_with_replay_paused() {
    let _replay = REPLAY.lock().await;
    let db = seeded(5, 1).await;
    let replica = db.replica().await;
    let mut config = TestApp::config(&db);
    config.redis_url = None;
    let reader = TestApp::spawn_as(&config, Role::Reader).await;
    let writer = TestApp::spawn_as(&config, Role::Writer).await;
    assert_eq!(reader.get("/products/1").await.json()["version"], 1);

    let _resume = resume_on_drop(&db.replica_url);
    sqlx::query("select pg_wal_replay_pause()")
        .execute(&replica)
        .await
        .unwrap();
    let reply = writer
        .admin("PATCH", "/admin/products/1", &[], r#"{"stock": 77}"#)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let token = reply.header("catalog-token").unwrap().to_owned();
    for _ in 0..5 {
        let doc = reader
            .request("GET", "/products/1", &[("min-catalog-token", &token)])
            .await
            .json();
        assert_eq!(doc["version"], 2);
        assert_eq!(doc["stock"], 77);
    }
    assert!(reader.metric("catalog_token_bypasses_total").await >= 1.0);
    assert!(reader.metric("catalog_db_reads_primary_total").await >= 1.0);
    writer.shutdown().await;
    reader.shutdown().await;
}

/// The deployment option: with the replica as a synchronous standby and the writer at
/// `synchronous_commit = remote_apply`, an acknowledged write is already applied on the
/// replica (so it survives the replica's promotion); a writer at the default level
/// acknowledges once the standby has the WAL, applied or not.
#[tokio::test]
async fn with_a_synchronous_standby_acknowledged_means_applied_on_it() {
    let _replay = REPLAY.lock().await;
    let db = seeded(5, 1).await;
    let replica = db.replica().await;
    let _async = RestoreOnDrop {
        url: db.primary_url.clone(),
        statements: &[
            "alter system reset synchronous_standby_names",
            "select pg_reload_conf()",
        ],
    };
    sqlx::query("alter system set synchronous_standby_names = '*'")
        .execute(&db.primary)
        .await
        .unwrap();
    sqlx::query("select pg_reload_conf()")
        .execute(&db.primary)
        .await
        .unwrap();
    poll(|| async {
        let sync: String =
            sqlx::query_scalar("select coalesce(max(sync_state), '') from pg_stat_replication")
                .fetch_one(&db.primary)
                .await
                .ok()?;
        (sync == "sync").then_some(())
    })
    .await;
    let version_on_replica = |id: i64| {
        let replica = replica.clone();
        async move {
            sqlx::query_scalar::<_, i64>("select version from products where id = $1")
                .bind(id)
                .fetch_one(&replica)
                .await
                .unwrap()
        }
    };

    let mut config = TestApp::config(&db);
    config.redis_url = None;
    config.synchronous_commit = Some("remote_apply".to_owned());
    let applied = TestApp::spawn_as(&config, Role::Writer).await;
    let reply = applied
        .admin("PATCH", "/admin/products/1", &[], r#"{"stock": 1}"#)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // No polling: acknowledged means applied on the standby.
    assert_eq!(version_on_replica(1).await, 2);

    // With replay paused, a writer at the default level is acknowledged (the standby
    // has the WAL, not yet applied) ...
    let _resume = resume_on_drop(&db.replica_url);
    sqlx::query("select pg_wal_replay_pause()")
        .execute(&replica)
        .await
        .unwrap();
    config.synchronous_commit = None;
    let flushed = TestApp::spawn_as(&config, Role::Writer).await;
    let reply = flushed
        .admin("PATCH", "/admin/products/3", &[], r#"{"stock": 3}"#)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        version_on_replica(3).await,
        1,
        "not applied: replay is paused"
    );

    // ... while a remote_apply write is not acknowledged until it is applied. (Its
    // transaction holds PostgreSQL's NOTIFY lock while it waits, so other writes wait
    // behind it: with remote_apply, every acknowledgement waits for the standby.)
    let writer = std::sync::Arc::new(applied);
    let pending = {
        let writer = std::sync::Arc::clone(&writer);
        tokio::spawn(async move {
            writer
                .admin("PATCH", "/admin/products/2", &[], r#"{"stock": 2}"#)
                .await
        })
    };
    let early = tokio::time::timeout(Duration::from_millis(500), async {
        while !pending.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        early.is_err(),
        "a remote_apply write was acknowledged before it was applied"
    );
    sqlx::query("select pg_wal_replay_resume()")
        .execute(&replica)
        .await
        .unwrap();
    let reply = tokio::time::timeout(common::DEADLINE, pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(version_on_replica(2).await, 2);
    flushed.shutdown().await;
    std::sync::Arc::try_unwrap(writer).unwrap().shutdown().await;
}

/// `GET /categories` is read from a database that covers every invalidation the reader
/// applied, so a lagging replica cannot put the old list back after a category change.
#[tokio::test]
async fn a_category_change_is_never_undone_by_a_lagging_replica() {
    let _replay = REPLAY.lock().await;
    let db = seeded(20, 2).await;
    let replica = db.replica().await;
    let app = TestApp::spawn_as(&TestApp::config(&db), Role::All).await;
    let listed = |text: String| text.contains("\"slug\":\"late-arrivals\"");
    assert!(!listed(app.get("/categories").await.text()));

    let _resume = resume_on_drop(&db.replica_url);
    sqlx::query("select pg_wal_replay_pause()")
        .execute(&replica)
        .await
        .unwrap();
    create_category(&app, "late-arrivals", "Late arrivals").await;
    // Once the change's invalidation is applied, the list shows it, and keeps showing it.
    poll(|| async { listed(app.get("/categories").await.text()).then_some(()) }).await;
    for _ in 0..20 {
        assert!(listed(app.get("/categories").await.text()));
    }
    app.shutdown().await;
}

/// The relay reads its watermark before it selects a round's rows, so a change to
/// categories committed in between is published under a watermark that does not cover
/// it. This test plays that relay against a reader: the entry's watermark is a position
/// the paused replica has replayed, its `visible_at` one it has not. A reader filling
/// `GET /categories` at its watermark alone read the replica's list without the new
/// category and kept it; one filling where the change is visible never does.
#[tokio::test]
async fn a_category_change_published_under_an_older_watermark_is_read_where_visible() {
    use catalog::coherence::{relay, stream};
    use catalog::store::replicas::{format_lsn, parse_lsn};

    let _replay = REPLAY.lock().await;
    let db = seeded(10, 2).await;
    let replica = db.replica().await;
    let config = TestApp::config(&db);
    let app = TestApp::spawn(&config).await;
    let listed = |text: String| text.contains("\"slug\":\"late-arrivals\"");
    assert!(!listed(app.get("/categories").await.text()));

    // The watermark: a position the reader knows the replica has replayed (a read at it
    // is answered by the replica).
    let lsn = |text: String| parse_lsn(&text).expect("a WAL position");
    let watermark = lsn(sqlx::query_scalar("select pg_current_wal_lsn()::text")
        .fetch_one(&db.primary)
        .await
        .unwrap());
    let token = format_lsn(watermark);
    poll(|| async {
        let replica_reads = app.metric("catalog_db_reads_replica_total").await;
        let reply = app
            .request("GET", "/products/1", &[("min-catalog-token", &token)])
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        (app.metric("catalog_db_reads_replica_total").await > replica_reads).then_some(())
    })
    .await;

    // The change, committed on the primary while the replica does not replay it.
    let _resume = resume_on_drop(&db.replica_url);
    sqlx::query("select pg_wal_replay_pause()")
        .execute(&replica)
        .await
        .unwrap();
    sqlx::query("insert into categories (slug, name) values ('late-arrivals', 'Late arrivals')")
        .execute(&db.primary)
        .await
        .unwrap();
    let visible_at = lsn(
        sqlx::query_scalar("select pg_current_wal_insert_lsn()::text")
            .fetch_one(&db.primary)
            .await
            .unwrap(),
    );
    assert!(visible_at > watermark);

    // Its entry, as the relay publishes it.
    let redis = fred::prelude::Builder::from_config(
        fred::prelude::Config::from_url(config.redis_url.as_deref().unwrap()).unwrap(),
    )
    .build()
    .unwrap();
    redis.init().await.unwrap();
    let epoch = stream::ensure_epoch(&redis, &relay::epoch_key(&config.redis_prefix))
        .await
        .unwrap();
    let entry = stream::Invalidation {
        product_id: None,
        version: 0,
        purge: false,
        deleted: false,
        categories: vec!["late-arrivals".to_owned()],
        committed_at_micros: stream::now_micros(),
        seq: 1,
        epoch,
        watermark: Some(watermark),
        visible_at: Some(visible_at),
        heartbeat: false,
    };
    let _: String = redis
        .xadd(
            relay::stream_key(&config.redis_prefix),
            false,
            None,
            "*",
            entry.fields(),
        )
        .await
        .unwrap();

    // Once the reader applied it, the list shows the category, and keeps showing it.
    poll(|| async { listed(app.get("/categories").await.text()).then_some(()) }).await;
    for _ in 0..20 {
        assert!(listed(app.get("/categories").await.text()));
    }
    redis.quit().await.unwrap();
    app.shutdown().await;
}
