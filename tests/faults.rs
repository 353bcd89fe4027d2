//! Faults under load, against real processes: a `catalogd reader` and a `catalogd
//! writer` (the binary cargo built, configured only by the environment each child is
//! given), real PostgreSQL and Redis, and a steady load from inside the test (reads of
//! a hot set, `PATCH`es of their stock). Each test injects one fault, heals it, and
//! judges the run with the stale-read checker: no stale read after the window the
//! documented guarantee allows for that fault, no failed read where an L1 copy or a
//! replica exists, no acknowledged write missing from the primary. Each prints one
//! line of figures (`cargo test --test faults -- --nocapture`).
//!
//! The tests run one at a time (a lock): they measure recovery times, and one of them
//! pauses replay on the shared replica. Tests that stop a server use servers of their
//! own: a Redis per test, a fault proxy in front of the shared PostgreSQL nodes, and
//! for a stopped primary and for failover a primary + replica pair started with `ops/dev.sh`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use catalog::checker::Report;
use common::fault::{self, FaultProxy};
use common::load::{Load, Outcome, Target, request, request_within};
use common::process::{Catalogd, OwnStack};
use common::{OwnRedis, TestDb, poll, seeded};
use sqlx::PgPool;

/// The tests take turns: figures are measured, and one pauses the shared replica.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Products the load reads and writes.
const HOT: i64 = 10;
/// Concurrent reading tasks.
const READERS: usize = 4;
/// Pause between two writes of the writing task.
const WRITE_PAUSE: Duration = Duration::from_millis(20);
/// The readers' `CATALOG_FEED_SILENCE_MS`, small so a silent feed is found quickly.
const SILENCE: Duration = Duration::from_millis(1000);
/// The writers' `CATALOG_HEARTBEAT_MS`, well inside the silence limit.
const HEARTBEAT_MS: &str = "200";
/// Window of faults the feed survives (replica, primary): invalidations still arrive
/// within milliseconds; one second absorbs scheduling on a shared 2-core machine.
const PROPAGATION_WINDOW: Duration = Duration::from_secs(1);
/// Window of faults that silence the feed: "a write acknowledged while the feed is down
/// is then served within about twice the silence limit" (docs/coherence.md).
const SILENT_FEED_WINDOW: Duration = Duration::from_millis(2 * 1000);

/// The environment of a writer child.
fn writer_env(database_url: &str, redis_url: &str, prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CATALOG_DATABASE_URL", database_url.to_owned()),
        ("CATALOG_REDIS_URL", redis_url.to_owned()),
        ("CATALOG_REDIS_PREFIX", prefix.to_owned()),
        ("CATALOG_ADMIN_TOKENS", common::ADMIN_TOKEN.to_owned()),
        ("CATALOG_HEARTBEAT_MS", HEARTBEAT_MS.to_owned()),
        ("CATALOG_DB_POOL_SIZE", "4".to_owned()),
        ("CATALOG_DB_TIMEOUT_MS", "1000".to_owned()),
    ]
}

/// The environment of a reader child.
fn reader_env(
    database_url: &str,
    replica_url: &str,
    redis_url: &str,
    prefix: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("CATALOG_DATABASE_URL", database_url.to_owned()),
        ("CATALOG_REPLICA_URLS", replica_url.to_owned()),
        ("CATALOG_REDIS_URL", redis_url.to_owned()),
        ("CATALOG_REDIS_PREFIX", prefix.to_owned()),
        ("CATALOG_FEED_SILENCE_MS", SILENCE.as_millis().to_string()),
        // checked against the silence limit at start, as for a writer
        ("CATALOG_HEARTBEAT_MS", HEARTBEAT_MS.to_owned()),
        ("CATALOG_REPLICA_CHECK_MS", "100".to_owned()),
        ("CATALOG_DB_POOL_SIZE", "4".to_owned()),
        ("CATALOG_DB_TIMEOUT_MS", "1000".to_owned()),
    ]
}

/// Short L1 and L2 lifetimes, so the load keeps reading from the replicas (a fault of
/// the replica is otherwise hidden behind the caches).
fn short_caches(env: &mut Vec<(&'static str, String)>) {
    env.push(("CATALOG_L1_TTL_SECS", "1".to_owned()));
    env.push(("CATALOG_L2_TTL_SECS", "1".to_owned()));
}

/// A reader and a writer on the shared stack's database `db`, with `primary` and
/// `replica` as the URLs the children use (maybe through a proxy).
struct Pair {
    reader: Catalogd,
    writer: Catalogd,
}

impl Pair {
    async fn start(primary: &str, replica: &str, redis: &str, prefix: &str, short: bool) -> Self {
        let mut w = writer_env(primary, redis, prefix);
        let mut r = reader_env(primary, replica, redis, prefix);
        if short {
            short_caches(&mut w);
            short_caches(&mut r);
        }
        let writer = Catalogd::start("writer", &w).await;
        let reader = Catalogd::start("reader", &r).await;
        warm(reader.reader.unwrap()).await;
        Self { reader, writer }
    }

    fn targets(&self) -> (Target, Target) {
        (
            Target::new(self.reader.reader.unwrap()),
            Target::new(self.writer.writer.unwrap()),
        )
    }
}

/// Waits until the reader serves every hot product (L1 filled).
async fn warm(reader: SocketAddr) {
    for id in 1..=HOT {
        poll(|| async {
            let reply = request(
                reader,
                "GET",
                &format!("/products/{id}"),
                &[],
                String::new(),
            )
            .await
            .ok()?;
            (reply.status == 200).then_some(())
        })
        .await;
    }
}

/// Starts the load on a pair.
fn load(reader: &Target, writer: &Target) -> Load {
    Load::start(
        reader.clone(),
        Some(writer.clone()),
        HOT,
        READERS,
        WRITE_PAUSE,
    )
}

/// Waits until `reader` serves every hot product at the version `primary` has.
async fn converged(reader: SocketAddr, primary: &PgPool) -> Duration {
    let started = Instant::now();
    poll(|| async {
        let rows: Vec<(i64, i64)> =
            sqlx::query_as("select id, version from products where id <= $1 order by id")
                .bind(HOT)
                .fetch_all(primary)
                .await
                .ok()?;
        for (id, version) in rows {
            let reply = request(
                reader,
                "GET",
                &format!("/products/{id}"),
                &[],
                String::new(),
            )
            .await
            .ok()?;
            let served = serde_json::from_slice::<serde_json::Value>(&reply.body).ok()?["version"]
                .as_i64()?;
            if served != version {
                return None;
            }
        }
        Some(())
    })
    .await;
    started.elapsed()
}

/// A metric of a child, 0 if absent.
async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let Ok(reply) = request(addr, "GET", "/metrics", &[], String::new()).await else {
        return 0.0;
    };
    reply
        .text()
        .lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// The figures of one run, printed as one line.
struct Figures<'a> {
    name: &'a str,
    outcome: &'a Outcome,
    report: &'a Report,
    lost: usize,
    heal: Instant,
    converge: Duration,
}

impl Figures<'_> {
    /// For a fault that took the primary away from `away` until the heal: prints the
    /// figures with the writer's, and asserts the guarantees and what the writer does
    /// meanwhile: every write refused with 503 and `Retry-After`, and `/readyz` 503
    /// (`ready`, asked during the fault).
    fn assert_primary_away(&self, away: Instant, ready: Result<common::Reply, String>, how: &str) {
        let o = self.outcome;
        let during = o.write_errors.iter().filter(|f| f.at >= away);
        let refused = during.clone().filter(|f| f.at < self.heal).count();
        let first = during.map(|f| f.at - away).min();
        self.print(&format!(
            "; writer: {refused} writes refused while {how}, first after {first:?}, {} 503s \
             without Retry-After, /readyz {:?}",
            o.unavailable_without_retry_after,
            ready.as_ref().map(|r| r.status)
        ));
        self.assert_guarantees(true);
        assert!(refused > 0, "no write was refused while {how}");
        let other = o.write_errors.iter().find(|f| !f.what.starts_with("503 "));
        assert!(
            other.is_none(),
            "a write failed otherwise than with 503: {other:?}"
        );
        assert_eq!(
            o.unavailable_without_retry_after, 0,
            "a 503 without Retry-After"
        );
        assert_eq!(
            ready.map(|r| r.status),
            Ok(503),
            "writer /readyz while {how}"
        );
    }

    fn print(&self, extra: &str) {
        let o = self.outcome;
        let ms =
            |d: Option<Duration>| d.map_or("none".to_owned(), |d| format!("{} ms", d.as_millis()));
        eprintln!(
            "FAULT {}: {} requests ({} reads, {} acked writes), read errors {}, write errors {}, \
             stale reads {} (window {} ms), lost acked writes {}, recovery after heal: first ack {}, \
             first read of a post-heal write {}, readers converged {} ms after the load; \
             propagation p50 {} ms p99 {} ms max {} ms{extra}",
            self.name,
            o.requests(),
            o.reads.len(),
            o.acks.len(),
            o.read_errors.len(),
            o.write_errors.len(),
            self.report.stale,
            self.report.window.as_millis(),
            self.lost,
            ms(o.first_ack_after(self.heal)),
            ms(o.first_propagated_after(self.heal)),
            self.converge.as_millis(),
            self.report.quantile(0.5).as_millis(),
            self.report.quantile(0.99).as_millis(),
            self.report.quantile(1.0).as_millis(),
        );
    }

    /// The assertions every test makes; `writes`: the load's writing task ran.
    fn assert_guarantees(&self, writes: bool) {
        let o = self.outcome;
        assert!(o.reads.len() > 1_000, "too few reads: {}", o.reads.len());
        assert!(
            o.read_errors.is_empty(),
            "{} failed reads, first: {:?}",
            o.read_errors.len(),
            o.read_errors.first()
        );
        assert_eq!(self.report.stale, 0, "stale reads: {}", self.report);
        assert_eq!(self.lost, 0, "acknowledged writes missing from the primary");
        if writes {
            assert!(o.acks.len() > 20, "too few writes: {}", o.acks.len());
            assert!(
                o.first_propagated_after(self.heal).is_some(),
                "no write after the fault reached a reader"
            );
        }
    }
}

/// Lets the load run for `d` (a fixed stretch of load, not a synchronisation).
async fn run_for(d: Duration) {
    tokio::time::sleep(d).await;
}

// ------------------------------------------------------------------ Redis

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_then_restarted_empty() {
    let _serial = SERIAL.lock().await;
    let db = seeded(HOT as u64, 4).await;
    let mut redis = OwnRedis::start().await;
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let prefix = format!("{}:", db.name);
    let pair = Pair::start(&db.primary_url, &db.replica_url, &redis_url, &prefix, false).await;
    let (reader, writer) = pair.targets();

    let load = load(&reader, &writer);
    run_for(Duration::from_secs(2)).await;
    redis.stop();
    run_for(Duration::from_secs(3)).await; // past the silence limit
    redis.restart().await;
    let heal = Instant::now();
    run_for(Duration::from_secs(4)).await;
    let outcome = load.finish().await;

    common::admin::outbox_drained(&db.primary).await;
    let converge = converged(reader.get(), &db.primary).await;
    let report = outcome.report(SILENT_FEED_WINDOW);
    let figures = Figures {
        name: "redis stopped 3 s, restarted empty",
        outcome: &outcome,
        report: &report,
        lost: outcome.lost_writes(&db.primary).await,
        heal,
        converge,
    };
    let resets = metric(reader.get(), "catalog_stream_resets_total").await;
    let silences = metric(reader.get(), "catalog_feed_silences_total").await;
    figures.print(&format!("; reader: {silences} silences, {resets} resets"));
    figures.assert_guarantees(true);
    assert!(
        silences >= 1.0,
        "the stopped Redis was not noticed as a silent feed"
    );
    assert!(resets >= 1.0, "the empty Redis was not noticed as a reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_longer_than_every_timeout() {
    let _serial = SERIAL.lock().await;
    let db = seeded(HOT as u64, 4).await;
    let redis = OwnRedis::start().await;
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let prefix = format!("{}:", db.name);
    let pair = Pair::start(&db.primary_url, &db.replica_url, &redis_url, &prefix, false).await;
    let (reader, writer) = pair.targets();

    let load = load(&reader, &writer);
    run_for(Duration::from_secs(2)).await;
    redis.freeze();
    // Longer than the silence limit (1 s), the consumer's deadline (3 s) and the L2
    // command timeout (250 ms).
    run_for(Duration::from_secs(4)).await;
    redis.thaw();
    let heal = Instant::now();
    run_for(Duration::from_secs(4)).await;
    let outcome = load.finish().await;

    common::admin::outbox_drained(&db.primary).await;
    let converge = converged(reader.get(), &db.primary).await;
    let report = outcome.report(SILENT_FEED_WINDOW);
    let figures = Figures {
        name: "redis frozen 4 s",
        outcome: &outcome,
        report: &report,
        lost: outcome.lost_writes(&db.primary).await,
        heal,
        converge,
    };
    let silences = metric(reader.get(), "catalog_feed_silences_total").await;
    figures.print(&format!("; reader: {silences} silences"));
    figures.assert_guarantees(true);
    assert!(
        silences >= 1.0,
        "the frozen Redis was not noticed as a silent feed"
    );
}

// ------------------------------------------------------------------ replica

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_frozen_then_down_then_back() {
    let _serial = SERIAL.lock().await;
    let db = seeded(HOT as u64, 4).await;
    let proxy = FaultProxy::start(fault::target(&db.replica_url)).await;
    let replica = fault::through(&db.replica_url, proxy.addr);
    let stack = common::Stack::from_env();
    let prefix = format!("{}:", db.name);
    let pair = Pair::start(&db.primary_url, &replica, &stack.redis_url, &prefix, true).await;
    let (reader, writer) = pair.targets();

    let load = load(&reader, &writer);
    run_for(Duration::from_secs(2)).await;
    let before = metric(reader.get(), "catalog_db_reads_replica_total").await;
    proxy.freeze(); // a replica that stops answering, sockets open
    run_for(Duration::from_secs(3)).await;
    proxy.thaw();
    run_for(Duration::from_secs(1)).await;
    proxy.down(); // a replica that is gone: connections closed and refused
    run_for(Duration::from_secs(3)).await;
    proxy.up();
    let heal = Instant::now();
    // The replica is back in the healthy set at its first passing probe (100 ms).
    let back = poll(|| async {
        let healthy = metric(reader.get(), "catalog_db_reads_replica_total").await;
        (healthy > before).then_some(heal.elapsed())
    })
    .await;
    run_for(Duration::from_secs(3)).await;
    let outcome = load.finish().await;

    let converge = converged(reader.get(), &db.primary).await;
    let report = outcome.report(PROPAGATION_WINDOW);
    let figures = Figures {
        name: "replica frozen 3 s, then down 3 s",
        outcome: &outcome,
        report: &report,
        lost: outcome.lost_writes(&db.primary).await,
        heal,
        converge,
    };
    let primary_reads = metric(reader.get(), "catalog_db_reads_primary_total").await;
    let replica_reads = metric(reader.get(), "catalog_db_reads_replica_total").await;
    figures.print(&format!(
        "; reader: {replica_reads} replica reads, {primary_reads} primary reads, replica read again \
         within {} ms of its return",
        back.as_millis()
    ));
    figures.assert_guarantees(true);
    assert!(
        before > 0.0,
        "the load never read the replica: the fault was not exercised"
    );
}

/// Pauses replay on the shared replica; resumes it when dropped, even on failure.
struct ReplayPaused(String);

impl ReplayPaused {
    async fn pause(replica_url: &str) -> Self {
        let replica = common::pool(replica_url, 1).await;
        sqlx::query("select pg_wal_replay_pause()")
            .execute(&replica)
            .await
            .expect("pause replay");
        Self(replica_url.to_owned())
    }
}

impl Drop for ReplayPaused {
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
            eprintln!("could not resume replay on the shared replica: {resumed:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_lagging_during_writes() {
    let _serial = SERIAL.lock().await;
    let db = seeded(HOT as u64, 4).await;
    let stack = common::Stack::from_env();
    let prefix = format!("{}:", db.name);
    let pair = Pair::start(
        &db.primary_url,
        &db.replica_url,
        &stack.redis_url,
        &prefix,
        true,
    )
    .await;
    let (reader, writer) = pair.targets();

    let load = load(&reader, &writer);
    run_for(Duration::from_secs(2)).await;
    let stale_fills_before = metric(reader.get(), "catalog_stale_fills_total").await;
    let paused = ReplayPaused::pause(&db.replica_url).await;
    run_for(Duration::from_secs(4)).await;
    drop(paused);
    let heal = Instant::now();
    run_for(Duration::from_secs(3)).await;
    let outcome = load.finish().await;

    let converge = converged(reader.get(), &db.primary).await;
    let report = outcome.report(PROPAGATION_WINDOW);
    let figures = Figures {
        name: "replica replay paused 4 s",
        outcome: &outcome,
        report: &report,
        lost: outcome.lost_writes(&db.primary).await,
        heal,
        converge,
    };
    let stale_fills = metric(reader.get(), "catalog_stale_fills_total").await;
    figures.print(&format!(
        "; reader: {} fills refused by a floor during the lag",
        stale_fills - stale_fills_before
    ));
    figures.assert_guarantees(true);
    assert!(
        stale_fills > stale_fills_before,
        "no replica row was refused: the lag was not exercised"
    );
}

// ------------------------------------------------------------------ primary

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_partitioned_then_back() {
    let _serial = SERIAL.lock().await;
    let db = seeded(HOT as u64, 4).await;
    let proxy = FaultProxy::start(fault::target(&db.primary_url)).await;
    let primary = fault::through(&db.primary_url, proxy.addr);
    let stack = common::Stack::from_env();
    let prefix = format!("{}:", db.name);
    let pair = Pair::start(&primary, &db.replica_url, &stack.redis_url, &prefix, false).await;
    let (reader, writer) = pair.targets();

    let load = load(&reader, &writer);
    run_for(Duration::from_secs(2)).await;
    // The catalogd processes lose the primary (connections closed and refused); the
    // replica keeps streaming from it: a network partition of the service.
    proxy.down();
    let down_at = Instant::now();
    run_for(Duration::from_secs(4)).await;
    let writer_ready = request(writer.get(), "GET", "/readyz", &[], String::new()).await;
    proxy.up();
    let heal = Instant::now();
    run_for(Duration::from_secs(4)).await;
    let outcome = load.finish().await;

    common::admin::outbox_drained(&db.primary).await;
    let converge = converged(reader.get(), &db.primary).await;
    // The relay needs the primary for every round, heartbeats included: the
    // partition silences the feed, so the silent-feed bound applies.
    let report = outcome.report(SILENT_FEED_WINDOW);
    let figures = Figures {
        name: "primary partitioned 4 s",
        outcome: &outcome,
        report: &report,
        lost: outcome.lost_writes(&db.primary).await,
        heal,
        converge,
    };
    figures.assert_primary_away(down_at, writer_ready, "partitioned");
}

// ------------------------------------------------------------------ own stack

/// A primary + replica + Redis of the test's own (`ops/dev.sh`), migrated and seeded
/// with the hot set, which the replica has replayed; and a pool on its primary.
async fn own_seeded_stack() -> (OwnStack, PgPool) {
    let stack = tokio::task::block_in_place(OwnStack::up);
    let primary = common::pool(&stack.primary_url(), 4).await;
    catalog::store::postgres::migrate(&primary)
        .await
        .expect("migrate");
    let spec = catalog::seed::SeedSpec {
        products: HOT as u64,
        categories: 4,
        seed: 9,
        replace: false,
    };
    catalog::seed::seed(&primary, spec).await.expect("seed");
    sqlx::query("update products set active = true")
        .execute(&primary)
        .await
        .unwrap();
    let replica = common::pool(&stack.replica_url(), 1).await;
    poll(|| async {
        let n: i64 = sqlx::query_scalar("select count(*) from products where active")
            .fetch_one(&replica)
            .await
            .ok()?;
        (n == HOT).then_some(())
    })
    .await;
    (stack, primary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_stopped_then_restarted() {
    let _serial = SERIAL.lock().await;
    let (stack, primary) = own_seeded_stack().await;
    let writer = Catalogd::start(
        "writer",
        &writer_env(&stack.primary_url(), &stack.redis_url(), "s:"),
    )
    .await;
    let reader = Catalogd::start(
        "reader",
        &reader_env(
            &stack.primary_url(),
            &stack.replica_url(),
            &stack.redis_url(),
            "s:",
        ),
    )
    .await;
    warm(reader.reader.unwrap()).await;
    let (reader_t, writer_t) = (
        Target::new(reader.reader.unwrap()),
        Target::new(writer.writer.unwrap()),
    );

    let load = load(&reader_t, &writer_t);
    run_for(Duration::from_secs(2)).await;
    // A real stop of the primary server (a fast shutdown: sessions are ended, the
    // replica keeps serving what it replayed and tries to reconnect).
    let stopped = Instant::now();
    tokio::task::block_in_place(|| stack.dev_ok(&["stop", "primary"]));
    run_for(Duration::from_secs(4)).await;
    let writer_ready = request(writer_t.get(), "GET", "/readyz", &[], String::new()).await;
    tokio::task::block_in_place(|| stack.dev_ok(&["up"]));
    let heal = Instant::now();
    run_for(Duration::from_secs(4)).await;
    let outcome = load.finish().await;

    common::admin::outbox_drained(&primary).await;
    let converge = converged(reader_t.get(), &primary).await;
    let report = outcome.report(SILENT_FEED_WINDOW);
    let figures = Figures {
        name: "primary stopped 4 s, then started",
        outcome: &outcome,
        report: &report,
        lost: outcome.lost_writes(&primary).await,
        heal,
        converge,
    };
    figures.assert_primary_away(stopped, writer_ready, "stopped");
    drop((reader, writer));
    drop(stack);
}

// ------------------------------------------------------------------ failover

/// A primary + replica of the test's own, failed over under load: the primary crashes
/// (immediate shutdown), the replica is promoted, and the address the catalogd
/// processes use for the primary (a proxy) moves to it. With `synchronous`, the replica
/// is a synchronous standby and the writer commits with `remote_apply`. Without it,
/// the primary's WAL sender is stopped (`SIGSTOP`) for the last second before the
/// crash, so acknowledged writes are missing from it. Returns the acknowledged writes
/// the promoted primary lacks.
async fn failover(synchronous: bool) -> usize {
    let _serial = SERIAL.lock().await;
    let (stack, primary) = own_seeded_stack().await;
    if synchronous {
        sqlx::query("alter system set synchronous_standby_names = 'catalog_replica'")
            .execute(&primary)
            .await
            .unwrap();
        sqlx::query("select pg_reload_conf()")
            .execute(&primary)
            .await
            .unwrap();
    }
    let replica = common::pool(&stack.replica_url(), 2).await;
    let replica_addr = fault::target(&stack.replica_url());
    let proxy = FaultProxy::start(fault::target(&stack.primary_url())).await;
    let primary_via_proxy = fault::through(&stack.primary_url(), proxy.addr);
    let mut w = writer_env(&primary_via_proxy, &stack.redis_url(), "f:");
    if synchronous {
        w.push(("CATALOG_SYNCHRONOUS_COMMIT", "remote_apply".to_owned()));
    }
    let writer = Catalogd::start("writer", &w).await;
    let r = reader_env(
        &primary_via_proxy,
        &stack.replica_url(),
        &stack.redis_url(),
        "f:",
    );
    let reader = Catalogd::start("reader", &r).await;
    warm(reader.reader.unwrap()).await;
    let (reader_t, writer_t) = (
        Target::new(reader.reader.unwrap()),
        Target::new(writer.writer.unwrap()),
    );

    let load = load(&reader_t, &writer_t);
    run_for(Duration::from_secs(3)).await;
    let sender: Option<i32> = if synchronous {
        None
    } else {
        // The primary's WAL sender stops sending: what is committed from now on is
        // on the primary only (a receiver stopped instead would still find it in its
        // socket buffer).
        let pid: i32 = sqlx::query_scalar("select pid from pg_stat_replication")
            .fetch_one(&primary)
            .await
            .expect("the primary's WAL sender");
        signal(pid, "-STOP");
        run_for(Duration::from_secs(1)).await;
        Some(pid)
    };
    proxy.down();
    let crashed = Instant::now();
    if let Some(pid) = sender {
        signal(pid, "-KILL"); // a stopped process would hold up the crash
    }
    tokio::task::block_in_place(|| stack.dev_ok(&["crash", "primary"]));
    let promoted: bool = sqlx::query_scalar("select pg_promote(true, 30)")
        .fetch_one(&replica)
        .await
        .expect("promote");
    assert!(promoted, "the replica was not promoted");
    // What the new primary holds before any write reaches it.
    let kept: std::collections::HashMap<i64, i64> =
        sqlx::query_as::<_, (i64, i64)>("select id, version from products")
            .fetch_all(&replica)
            .await
            .unwrap()
            .into_iter()
            .collect();
    proxy.retarget(replica_addr);
    proxy.up();
    let heal = Instant::now();
    run_for(Duration::from_secs(5)).await;
    let outcome = load.finish().await;

    let lost = outcome
        .acks
        .iter()
        .filter(|ack| ack.at < heal && kept.get(&ack.id).copied().unwrap_or(0) < ack.version)
        .count();
    // Versions acknowledged after the failover continue from what the new primary kept,
    // so the writes lost are judged above, and staleness against the surviving ones.
    let surviving: Vec<_> = outcome
        .acks
        .iter()
        .filter(|ack| ack.at >= heal || kept.get(&ack.id).copied().unwrap_or(0) >= ack.version)
        .copied()
        .collect();
    let report = Report::check(&surviving, &outcome.reads, SILENT_FEED_WINDOW);
    let converge = converged(reader_t.get(), &replica).await;
    let name = if synchronous {
        "failover with remote_apply + synchronous standby"
    } else {
        "failover, asynchronous replica (WAL sender stopped 1 s before the crash)"
    };
    let figures = Figures {
        name,
        outcome: &outcome,
        report: &report,
        lost,
        heal,
        converge,
    };
    let span = |f: fn(Duration, Duration) -> Duration| {
        outcome
            .read_errors
            .iter()
            .map(|e| e.at.saturating_duration_since(crashed))
            .reduce(f)
    };
    figures.print(&format!(
        "; primary address moved {} ms after the crash; failed reads from {:?} to {:?} after the crash",
        (heal - crashed).as_millis(),
        span(Duration::min),
        span(Duration::max),
    ));
    // With writes lost, readers hold freshness floors above what any database has left:
    // such fills need the primary and are 503 while it is away (docs/operations.md).
    // With the synchronous standby nothing is lost, and every read must succeed.
    if synchronous {
        assert!(
            outcome.read_errors.is_empty(),
            "{} failed reads, first: {:?}",
            outcome.read_errors.len(),
            outcome.read_errors.first()
        );
    }
    assert_eq!(
        report.stale, 0,
        "stale reads against surviving writes: {report}"
    );
    assert!(
        outcome.first_ack_after(heal).is_some(),
        "no write acknowledged after the failover"
    );
    drop((reader, writer, proxy));
    drop(stack);
    lost
}

fn signal(pid: i32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_with_a_synchronous_standby_loses_no_acknowledged_write() {
    let lost = failover(true).await;
    assert_eq!(lost, 0, "acknowledged writes lost with remote_apply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_an_asynchronous_replica_loses_acknowledged_writes() {
    let lost = failover(false).await;
    // Not a guarantee: the figure is what an asynchronous failover costs.
    assert!(
        lost > 0,
        "the stopped WAL sender should have cost acknowledged writes"
    );
}

// ------------------------------------------------------------------ writer killed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_killed_while_writes_are_in_flight() {
    let _serial = SERIAL.lock().await;
    let db = seeded(HOT as u64, 4).await;
    let stack = common::Stack::from_env();
    let prefix = format!("{}:", db.name);
    let mut pair = Pair::start(
        &db.primary_url,
        &db.replica_url,
        &stack.redis_url,
        &prefix,
        false,
    )
    .await;
    let (reader, writer) = pair.targets();
    let env = writer_env(&db.primary_url, &stack.redis_url, &prefix);

    let load = load(&reader, &writer);
    run_for(Duration::from_secs(2)).await;
    let mut restarts = Vec::new();
    let mut heal = Instant::now();
    for _ in 0..3 {
        // kill -9 in the middle of the load: requests, commits and relay rounds in flight.
        pair.writer.kill9();
        let killed = Instant::now();
        pair.writer = Catalogd::start("writer", &env).await;
        writer.set(pair.writer.writer.unwrap());
        restarts.push(killed.elapsed());
        heal = Instant::now();
        run_for(Duration::from_millis(1500)).await;
    }
    run_for(Duration::from_secs(2)).await;
    let outcome = load.finish().await;

    common::admin::outbox_drained(&db.primary).await;
    let converge = converged(reader.get(), &db.primary).await;
    let report = outcome.report(SILENT_FEED_WINDOW);
    let figures = Figures {
        name: "writer (relay) kill -9 x3 under load",
        outcome: &outcome,
        report: &report,
        lost: outcome.lost_writes(&db.primary).await,
        heal,
        converge,
    };
    let gaps = metric(reader.get(), "catalog_stream_gaps_total").await;
    let resets = metric(reader.get(), "catalog_stream_resets_total").await;
    figures.print(&format!(
        "; writer back in {restarts:?}; reader: {gaps} gaps, {resets} resets"
    ));
    figures.assert_guarantees(true);
}

/// The stream's sequence numbers, oldest entry first.
async fn stream_seqs(redis_url: &str, prefix: &str) -> Vec<i64> {
    use fred::prelude::{Builder, ClientLike as _, Config, StreamsInterface as _};
    let redis = Builder::from_config(Config::from_url(redis_url).unwrap())
        .build()
        .unwrap();
    redis.init().await.unwrap();
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis
        .xrange(
            catalog::coherence::relay::stream_key(prefix),
            "-",
            "+",
            None,
        )
        .await
        .unwrap();
    redis.quit().await.unwrap();
    entries
        .iter()
        .filter_map(|(_, fields)| catalog::coherence::stream::Invalidation::parse(fields))
        .map(|entry| entry.seq)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_between_publishing_and_marking() {
    let _serial = SERIAL.lock().await;
    let db = seeded(HOT as u64, 4).await;
    let stack = common::Stack::from_env();
    let prefix = format!("{}:", db.name);
    // The writer reaches the primary through a proxy that freezes once the relay sends
    // the statement marking its rows published: the round's entries are in the stream
    // by then, and its transaction can no longer commit.
    let proxy = FaultProxy::start(fault::target(&db.primary_url)).await;
    proxy.freeze_on(b"update outbox set published_at");
    let env = writer_env(
        &fault::through(&db.primary_url, proxy.addr),
        &stack.redis_url,
        &prefix,
    );
    let mut writer_process = Catalogd::start("writer", &env).await;
    let reader_process = Catalogd::start(
        "reader",
        &reader_env(&db.primary_url, &db.replica_url, &stack.redis_url, &prefix),
    )
    .await;
    warm(reader_process.reader.unwrap()).await;
    let (reader, writer) = (
        Target::new(reader_process.reader.unwrap()),
        Target::new(writer_process.writer.unwrap()),
    );

    let load = load(&reader, &writer);
    poll(|| async { proxy.is_frozen().then_some(()) }).await;
    let published_unmarked = stream_seqs(&stack.redis_url, &prefix).await;
    writer_process.kill9();
    // The dead writer's sessions end (its transaction rolls back) when their
    // connections close; the proxy forwards again for the next writer.
    proxy.down();
    proxy.thaw();
    proxy.up();
    writer_process = Catalogd::start("writer", &env).await;
    writer.set(writer_process.writer.unwrap());
    let heal = Instant::now();
    run_for(Duration::from_secs(3)).await;
    let outcome = load.finish().await;

    common::admin::outbox_drained(&db.primary).await;
    let converge = converged(reader.get(), &db.primary).await;
    let report = outcome.report(SILENT_FEED_WINDOW);
    let figures = Figures {
        name: "relay killed between XADD and marking its rows",
        outcome: &outcome,
        report: &report,
        lost: outcome.lost_writes(&db.primary).await,
        heal,
        converge,
    };
    let seqs = stream_seqs(&stack.redis_url, &prefix).await;
    let republished = seqs.len() - {
        let mut unique = seqs.clone();
        unique.sort_unstable();
        unique.dedup();
        unique.len()
    };
    let gaps = metric(reader.get(), "catalog_stream_gaps_total").await;
    let resets = metric(reader.get(), "catalog_stream_resets_total").await;
    figures.print(&format!(
        "; {} entries published before the kill, {republished} published again; reader: \
         {gaps} gaps, {resets} resets",
        published_unmarked.len()
    ));
    figures.assert_guarantees(true);
    // The cut round's entries were in the stream, unmarked, and went out again under
    // the same sequence numbers: duplicates the readers skip, never a gap.
    assert!(
        !published_unmarked.is_empty(),
        "nothing was published before the kill"
    );
    assert!(
        republished >= 1,
        "the cut round was not published again: {seqs:?}"
    );
    assert_eq!(
        (gaps, resets),
        (0.0, 0.0),
        "the reader saw a break in the stream"
    );
    drop((reader_process, writer_process, proxy));
}

// ------------------------------------------------------------------ bulk import killed

/// An NDJSON import of products `first..first + lines`, each line's content derived
/// from its id (checked by [`bulk_rows_right`]).
fn bulk_lines(first: i64, lines: i64) -> String {
    (first..first + lines)
        .map(|id| {
            serde_json::json!({
                "id": id,
                "sku": format!("BULK-{id}"),
                "name": format!("bulk {id}"),
                "price": {"amount": id * 3, "currency": "EUR"},
                "stock": id % 97,
                "attributes": {"n": id},
                "images": [],
                "categories": [],
            })
            .to_string()
                + "\n"
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_mid_bulk_import_then_the_import_re_run() {
    const FIRST: i64 = 1_001;
    const LINES: i64 = 20_000;
    let _serial = SERIAL.lock().await;
    let db: TestDb = seeded(HOT as u64, 4).await;
    let stack = common::Stack::from_env();
    let prefix = format!("{}:", db.name);
    let mut pair = Pair::start(
        &db.primary_url,
        &db.replica_url,
        &stack.redis_url,
        &prefix,
        false,
    )
    .await;
    let (reader, writer) = pair.targets();
    let env = writer_env(&db.primary_url, &stack.redis_url, &prefix);
    let body = bulk_lines(FIRST, LINES);
    let bearer = format!("Bearer {}", common::ADMIN_TOKEN);

    // Readers keep reading the hot set meanwhile. The bulk import is the write under
    // test (PATCHes beside an import are the next test's).
    let load = Load::start(reader.clone(), None, HOT, READERS, WRITE_PAUSE);
    let import = {
        let (addr, body, bearer) = (writer.get(), body.clone(), bearer.clone());
        tokio::spawn(async move {
            let headers = [("authorization", bearer.as_str())];
            request(addr, "POST", "/admin/products/bulk", &headers, body).await
        })
    };
    // Kill once at least two batches of 500 are committed, well before the end.
    let written_before_kill = poll(|| async {
        let n: i64 = sqlx::query_scalar("select count(*) from products where id >= $1")
            .bind(FIRST)
            .fetch_one(&db.primary)
            .await
            .ok()?;
        (n >= 1_000).then_some(n)
    })
    .await;
    pair.writer.kill9();
    let cut = import.await.unwrap();
    assert!(
        cut.as_ref().is_err() || cut.as_ref().is_ok_and(|r| r.status != 200),
        "the import finished before the kill: {:?}",
        cut.map(|r| r.status)
    );
    pair.writer = Catalogd::start("writer", &env).await;
    writer.set(pair.writer.writer.unwrap());
    let heal = Instant::now();
    let headers = [("authorization", bearer.as_str())];
    let rerun = request(writer.get(), "POST", "/admin/products/bulk", &headers, body)
        .await
        .expect("the re-run import");
    let rerun_took = heal.elapsed();
    run_for(Duration::from_secs(1)).await;
    let outcome = load.finish().await;

    assert_eq!(rerun.status, 200, "{}", rerun.text());
    let summary = rerun
        .text()
        .lines()
        .last()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .unwrap();
    assert_eq!(summary["summary"]["written"], LINES, "{summary}");
    assert_eq!(summary["summary"]["failed"], 0, "{summary}");
    // Every line once, with its content.
    let (rows, right): (i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where sku = 'BULK-' || id and name = 'bulk ' || id \
         and price_amount = id * 3 and currency = 'EUR' and stock = id % 97 \
         and attributes = jsonb_build_object('n', id) and deleted_at is null) \
         from products where id >= $1",
    )
    .bind(FIRST)
    .fetch_one(&db.primary)
    .await
    .unwrap();
    assert_eq!(
        (rows, right),
        (LINES, LINES),
        "rows and rows with the line's content"
    );
    common::admin::outbox_drained(&db.primary).await;
    let converge = converged(reader.get(), &db.primary).await;
    // The reader serves bulk products at the primary's content.
    for id in [FIRST, FIRST + LINES / 2, FIRST + LINES - 1] {
        let doc = poll(|| async {
            let reply = request(
                reader.get(),
                "GET",
                &format!("/products/{id}"),
                &[],
                String::new(),
            )
            .await
            .ok()?;
            (reply.status == 200).then(|| reply.json())
        })
        .await;
        assert_eq!(doc["name"], format!("bulk {id}"));
        assert_eq!(doc["stock"], id % 97);
    }
    let report = outcome.report(SILENT_FEED_WINDOW);
    let figures = Figures {
        name: "writer kill -9 mid bulk import (20,000 lines), re-run",
        outcome: &outcome,
        report: &report,
        lost: outcome.lost_writes(&db.primary).await,
        heal,
        converge,
    };
    figures.print(&format!(
        "; {written_before_kill} lines committed before the kill, re-run of {LINES} lines took {} ms",
        rerun_took.as_millis()
    ));
    figures.assert_guarantees(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_beside_a_bulk_import_reaches_readers_within_the_window() {
    const FIRST: i64 = 1_001;
    const LINES: i64 = 20_000;
    let _serial = SERIAL.lock().await;
    let db = seeded(HOT as u64, 4).await;
    let stack = common::Stack::from_env();
    let prefix = format!("{}:", db.name);
    let pair = Pair::start(
        &db.primary_url,
        &db.replica_url,
        &stack.redis_url,
        &prefix,
        false,
    )
    .await;
    let (reader, writer) = pair.targets();
    let bearer = format!("Bearer {}", common::ADMIN_TOKEN);
    let load = load(&reader, &writer);
    run_for(Duration::from_secs(1)).await;
    let headers = [("authorization", bearer.as_str())];
    let heal = Instant::now();
    // The import is the backdrop, not the subject: in a debug build, beside the load,
    // its 20,000 lines take 10 to 20 s on 2 cores, longer than an ordinary request's
    // deadline.
    let import = request_within(
        Duration::from_secs(120),
        writer.get(),
        "POST",
        "/admin/products/bulk",
        &headers,
        bulk_lines(FIRST, LINES),
    )
    .await
    .expect("the import");
    eprintln!("FAULT the 20,000-line import took {:?}", heal.elapsed());
    assert_eq!(import.status, 200, "{}", import.text());
    common::admin::outbox_drained(&db.primary).await;
    run_for(Duration::from_secs(1)).await;
    let outcome = load.finish().await;
    let converge = converged(reader.get(), &db.primary).await;
    let report = outcome.report(PROPAGATION_WINDOW);
    let figures = Figures {
        name: "PATCHes beside a 20,000-line bulk import",
        outcome: &outcome,
        report: &report,
        lost: outcome.lost_writes(&db.primary).await,
        heal,
        converge,
    };
    figures.print("");
    figures.assert_guarantees(true);
}
