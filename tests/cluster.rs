//! The service beyond one process, through real engines: `ops/dev.sh cluster` starts
//! two readers and two writers of the binary cargo built, HAProxy in front of the
//! readers, Varnish (xkey) in front of HAProxy and Prometheus scraping them all, on a
//! database of the test's own. The live change feed is followed through both hops. Each test drives real clients through the hops and
//! prints its figures (`cargo test --test cluster -- --nocapture`).
//!
//! The tests take turns (a lock): each starts and stops a cluster of its own, on ports
//! between 10000 and 11999 (below the ephemeral range, clear of the other tests' servers).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::load::{Load, Outcome, Target, request};
use common::{TestDb, poll, seeded};

/// One cluster at a time: each takes most of the machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Products the load reads and writes.
const HOT: i64 = 10;
/// Concurrent reading tasks.
const READERS: usize = 4;
/// Pause between two writes.
const WRITE_PAUSE: Duration = Duration::from_millis(25);
/// How long after an acknowledgement the edge may still serve the old version: the
/// second purge (`CATALOG_EDGE_REPURGE_MS`, 200 ms) plus scheduling on a busy machine.
const EDGE_WINDOW: Duration = Duration::from_secs(1);

/// A cluster of the test's own, stopped (and its state removed) when dropped.
struct Cluster {
    dir: PathBuf,
    port: u16,
    env: Vec<(&'static str, String)>,
}

impl Cluster {
    /// `ops/dev.sh cluster up` on `db`, the stack's Redis under the database's prefix.
    fn up(db: &TestDb) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 10_000 + ((std::process::id() * 7 + n * 53) % 40) as u16 * 50;
        let stack = common::Stack::from_env();
        let cluster = Self {
            dir: std::env::temp_dir().join(format!("catalog-cluster-{}-{n}", std::process::id())),
            port,
            env: vec![
                ("CATALOG_DATABASE_URL", db.primary_url.clone()),
                ("CATALOG_REPLICA_URLS", db.replica_url.clone()),
                ("CATALOG_REDIS_URL", stack.redis_url.clone()),
                ("CATALOG_REDIS_PREFIX", format!("{}:", db.name)),
                ("CATALOG_ADMIN_TOKENS", common::ADMIN_TOKEN.to_owned()),
            ],
        };
        cluster.dev_ok(&["up"]);
        cluster
    }

    /// `ops/dev.sh cluster <args>`, which must succeed.
    fn dev_ok(&self, args: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/dev.sh");
        let output = Command::new(script)
            .arg("cluster")
            .args(args)
            .env("CATALOG_DEV_DIR", &self.dir)
            .env("CATALOG_DEV_CLUSTER_PORT", self.port.to_string())
            .env("CATALOG_DEV_TIMEOUT", "30")
            .env("CATALOG_BIN", env!("CARGO_BIN_EXE_catalogd"))
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .output()
            .expect("ops/dev.sh");
        assert!(
            output.status.success(),
            "ops/dev.sh cluster {args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn varnish(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn haproxy(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port + 1))
    }

    fn prometheus(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port + 2))
    }

    fn reader(&self, i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port + 10 + i))
    }

    fn writer(&self, i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port + 30 + i))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/dev.sh");
        let _ = Command::new(script)
            .args(["cluster", "down"])
            .env("CATALOG_DEV_DIR", &self.dir)
            .env("CATALOG_DEV_CLUSTER_PORT", self.port.to_string())
            .stdin(Stdio::null())
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A series' value in a `/metrics` scrape of `addr` (0 when absent).
async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let Ok(reply) = request(addr, "GET", "/metrics", &[], String::new()).await else {
        return 0.0;
    };
    String::from_utf8_lossy(&reply.body)
        .lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A series summed over both writers.
async fn over_writers(cluster: &Cluster, series: &str) -> f64 {
    metric(cluster.writer(1), series).await + metric(cluster.writer(2), series).await
}

async fn run_for(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Prints one line of figures and returns the report of `outcome` for `window`.
fn figures(
    name: &str,
    outcome: &Outcome,
    window: Duration,
    extra: &str,
) -> catalog::checker::Report {
    let report = outcome.report(window);
    eprintln!(
        "CLUSTER {name}: {} requests ({} reads, {} acked writes), read errors {}, write errors {}, \
         stale reads {} (window {} ms); acknowledgement -> first read of the new version: p50 {} ms, \
         p99 {} ms, max {} ms{extra}",
        outcome.requests(),
        outcome.reads.len(),
        outcome.acks.len(),
        outcome.read_errors.len(),
        outcome.write_errors.len(),
        report.stale,
        window.as_millis(),
        report.quantile(0.5).as_millis(),
        report.quantile(0.99).as_millis(),
        report.quantile(1.0).as_millis(),
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_goes_through_every_hop_and_the_edge_caches_and_revalidates() {
    let _serial = SERIAL.lock().await;
    let db = seeded(HOT as u64, 3).await;
    let cluster = tokio::task::block_in_place(|| Cluster::up(&db));

    // Each hop answers the same document.
    let direct = request(cluster.reader(1), "GET", "/products/1", &[], String::new())
        .await
        .unwrap();
    let balanced = request(cluster.haproxy(), "GET", "/products/1", &[], String::new())
        .await
        .unwrap();
    assert_eq!((direct.status, balanced.status), (200, 200));
    assert_eq!(direct.body, balanced.body);
    // The edge: a miss, then a hit, its surrogate keys kept to itself.
    let first = request(cluster.varnish(), "GET", "/products/1", &[], String::new())
        .await
        .unwrap();
    let second = request(cluster.varnish(), "GET", "/products/1", &[], String::new())
        .await
        .unwrap();
    assert_eq!(first.body, direct.body);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.header("xkey"), None);
    assert_eq!(direct.header("xkey"), Some("p1"));
    // Validators pass through the edge: a 304 from its copy.
    let etag = second.header("etag").unwrap().to_owned();
    let revalidated = request(
        cluster.varnish(),
        "GET",
        "/products/1",
        &[("if-none-match", &etag)],
        String::new(),
    )
    .await
    .unwrap();
    assert_eq!(revalidated.status, 304);
    // Listings are cached with their validators too.
    for _ in 0..2 {
        let batch = request(
            cluster.varnish(),
            "GET",
            "/products?ids=1,2,3",
            &[],
            String::new(),
        )
        .await
        .unwrap();
        assert_eq!(batch.status, 200);
        // Varnish fetches gzip (the reader's `"l…-gz"`) and inflates it for this client,
        // which asked for none, weakening the tag.
        assert!(
            batch
                .header("etag")
                .is_some_and(|e| e.trim_start_matches("W/").starts_with("\"l"))
        );
    }
    // A read with a token passes the edge every time, and is not stored.
    for _ in 0..2 {
        let token = request(
            cluster.varnish(),
            "GET",
            "/products/1",
            &[("min-catalog-token", "0/1")],
            String::new(),
        )
        .await
        .unwrap();
        assert_eq!(token.header("x-cache"), Some("MISS"));
        assert_eq!(token.header("cache-control"), Some("no-store"));
    }
    // Only the writers may purge.
    let purge = request(
        cluster.varnish(),
        "PURGE",
        "/",
        &[("xkey-purge", "p1")],
        String::new(),
    )
    .await
    .unwrap();
    assert_eq!(purge.status, 200, "loopback is the purgers' network here");
    let after = request(cluster.varnish(), "GET", "/products/1", &[], String::new())
        .await
        .unwrap();
    assert_eq!(
        after.header("x-cache"),
        Some("MISS"),
        "the purge left the copy"
    );

    // The live change feed passes through both hops, uncached, as a stream.
    let mut through_edge =
        common::sse::Subscription::open(cluster.varnish(), "/changes?products=2", &[], false).await;
    let mut through_balancer =
        common::sse::Subscription::open(cluster.haproxy(), "/changes?products=2", &[], false).await;
    assert_eq!((through_edge.status, through_balancer.status), (200, 200));
    let bearer = format!("Bearer {}", common::ADMIN_TOKEN);
    let written = request(
        cluster.writer(1),
        "PATCH",
        "/admin/products/2",
        &[("authorization", &bearer)],
        r#"{"stock": 42}"#.to_owned(),
    )
    .await
    .unwrap();
    assert_eq!(written.status, 200);
    let version = written.json()["version"].as_i64().unwrap();
    for feed in [&mut through_edge, &mut through_balancer] {
        let event = feed
            .next_event(Duration::from_secs(10))
            .await
            .expect("the change through the hop");
        assert_eq!(event.json()["product_id"], 2);
        assert_eq!(event.json()["version"], version);
    }

    // Prometheus scrapes every reader and writer.
    let query = "/api/v1/query?query=sum(up%7Bjob%3D%22catalog%22%7D)";
    poll(|| async {
        let reply = request(cluster.prometheus(), "GET", query, &[], String::new())
            .await
            .ok()?;
        let body: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
        let up = body["data"]["result"][0]["value"][1]
            .as_str()?
            .parse::<f64>()
            .ok()?;
        (up == 4.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_stops_serving_an_old_version_soon_after_the_write() {
    let _serial = SERIAL.lock().await;
    let db = seeded(HOT as u64, 3).await;
    let cluster = tokio::task::block_in_place(|| Cluster::up(&db));
    let edge = Target::new(cluster.varnish());
    let writer = Target::new(cluster.writer(1));

    let load = Load::start(edge, Some(writer), HOT, READERS, WRITE_PAUSE);
    run_for(Duration::from_secs(8)).await;
    let outcome = load.finish().await;
    let purges = over_writers(&cluster, r#"catalog_edge_purges_total{outcome="ok"}"#).await;
    let failed = over_writers(&cluster, r#"catalog_edge_purges_total{outcome="failed"}"#).await;
    let report = figures(
        "edge (Varnish) after acknowledged writes",
        &outcome,
        EDGE_WINDOW,
        &format!(
            "; {} of the reads answered by the edge's copy; {purges} purges sent, {failed} failed",
            outcome.edge_hits
        ),
    );
    // The edge really cached: most reads never reached a reader.
    assert!(
        outcome.edge_hits * 2 > outcome.reads.len(),
        "{} hits",
        outcome.edge_hits
    );
    assert!(
        outcome.acks.len() >= 50,
        "too few writes to measure: {}",
        outcome.acks.len()
    );
    assert_eq!(report.stale, 0, "{report}");
    assert!(
        outcome.read_errors.is_empty(),
        "{:?}",
        outcome.read_errors.first()
    );
    assert!(
        outcome.write_errors.is_empty(),
        "{:?}",
        outcome.write_errors.first()
    );
    assert!(purges >= 1.0 && failed == 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_leader_killed_hands_over_without_a_gap() {
    let _serial = SERIAL.lock().await;
    let db = seeded(HOT as u64, 3).await;
    let cluster = tokio::task::block_in_place(|| Cluster::up(&db));
    let leader = poll(|| async {
        for i in [1, 2] {
            if metric(cluster.writer(i), "catalog_relay_leader").await == 1.0 {
                return Some(i);
            }
        }
        None
    })
    .await;
    let follower = 3 - leader;
    // Writes through the leader, reads through the balancer.
    let writer = Target::new(cluster.writer(leader));
    let load = Load::start(
        Target::new(cluster.haproxy()),
        Some(writer.clone()),
        HOT,
        READERS,
        WRITE_PAUSE,
    );
    run_for(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| cluster.dev_ok(&["kill", "writer", &leader.to_string()]));
    let killed = Instant::now();
    writer.set(cluster.writer(follower));
    poll(|| async {
        (metric(cluster.writer(follower), "catalog_relay_leader").await == 1.0).then_some(())
    })
    .await;
    let handover = killed.elapsed();
    run_for(Duration::from_secs(3)).await;
    let outcome = load.finish().await;

    common::admin::outbox_drained(&db.primary).await;
    let mut gaps = 0.0;
    let mut resets = 0.0;
    for i in [1, 2] {
        gaps += metric(cluster.reader(i), "catalog_stream_gaps_total").await;
        resets += metric(cluster.reader(i), "catalog_stream_resets_total").await;
    }
    let lost = outcome.lost_writes(&db.primary).await;
    let report = figures(
        "relay leader kill -9 under load",
        &outcome,
        Duration::from_secs(2),
        &format!(
            "; handover {handover:?}; {lost} acknowledged writes lost; readers: {gaps} gaps, {resets} resets"
        ),
    );
    assert_eq!(lost, 0);
    assert_eq!((gaps, resets), (0.0, 0.0));
    assert_eq!(report.stale, 0, "{report}");
    assert!(
        outcome.read_errors.is_empty(),
        "{:?}",
        outcome.read_errors.first()
    );
    assert!(
        outcome.first_ack_after(killed).is_some(),
        "no write after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_killed_and_restarted_behind_the_balancer_fail_no_request() {
    let _serial = SERIAL.lock().await;
    let db = seeded(HOT as u64, 3).await;
    let cluster = tokio::task::block_in_place(|| Cluster::up(&db));
    let balancer = Target::new(cluster.haproxy());
    let writer = Target::new(cluster.writer(1));

    // One reader killed outright, then started again.
    let load = Load::start(
        balancer.clone(),
        Some(writer.clone()),
        HOT,
        READERS,
        WRITE_PAUSE,
    );
    run_for(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| cluster.dev_ok(&["kill", "reader", "1"]));
    run_for(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| cluster.dev_ok(&["start", "reader", "1"]));
    run_for(Duration::from_secs(2)).await;
    let killed = load.finish().await;
    let report = figures(
        "one reader kill -9 behind HAProxy",
        &killed,
        Duration::from_secs(1),
        "",
    );
    assert!(
        killed.read_errors.is_empty(),
        "{} failed: {:?}",
        killed.read_errors.len(),
        killed.read_errors.first()
    );
    assert_eq!(report.stale, 0, "{report}");

    // Every reader restarted, one after another (SIGTERM: readiness off, drain, exit).
    let load = Load::start(balancer, Some(writer), HOT, READERS, WRITE_PAUSE);
    run_for(Duration::from_secs(1)).await;
    let rolling = Instant::now();
    for i in ["1", "2"] {
        tokio::task::block_in_place(|| cluster.dev_ok(&["restart", "reader", i]));
    }
    let took = rolling.elapsed();
    run_for(Duration::from_secs(1)).await;
    let rolled = load.finish().await;
    let report = figures(
        "rolling restart of every reader behind HAProxy",
        &rolled,
        Duration::from_secs(1),
        &format!("; the restarts took {took:?}"),
    );
    assert!(
        rolled.read_errors.is_empty(),
        "{} failed: {:?}",
        rolled.read_errors.len(),
        rolled.read_errors.first()
    );
    assert_eq!(report.stale, 0, "{report}");
}
