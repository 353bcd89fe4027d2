//! The coherence protocol against a real Redis Cluster of three masters, started by
//! `ops/dev.sh redis-cluster up` on ports and in a state directory of this test
//! binary's own (and stopped when its last test is done): a write reaching a second
//! reader's L1, L2 shared by two readers (single gets and cross-slot batches), tokens,
//! a reset, and where the keys live (documents on every master, the stream and its
//! epoch in one slot). And the sentinel form of `CATALOG_REDIS_URL`: a write reaching a
//! reader and L2 through a primary that a sentinel names, and a sentinel's failover to
//! the replica losing no acknowledged write. PostgreSQL is the dev stack's
//! (`eval "$(ops/dev.sh env)"`).
//!
//! docs/operations.md (Redis Cluster) names these tests.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use catalog::coherence::relay::{epoch_key, stream_key};
use catalog::config::Config;
use catalog::startup::Role;
use common::admin::{patch_stock, product_in_category, wait_for_version};
use common::{DEADLINE, OwnRedis, TestApp, TestDb, poll, seeded};
use fred::prelude::{Builder, Client, ClientLike as _, KeysInterface as _};
use fred::types::CustomCommand;

/// Masters of the cluster.
const NODES: u16 = 3;
/// Time from a write's acknowledgement to a second reader serving it. Propagation is
/// milliseconds (docs/coherence.md); this leaves room for a machine busy compiling.
const WINDOW: Duration = Duration::from_secs(1);

/// A Redis Cluster of this test binary's own, run by `ops/dev.sh redis-cluster`.
#[derive(Debug)]
struct OwnCluster {
    dir: PathBuf,
    base: u16,
}

impl OwnCluster {
    /// The cluster the running tests share: started by the first, stopped when the
    /// last one drops it.
    fn shared() -> Arc<Self> {
        static SHARED: Mutex<Weak<OwnCluster>> = Mutex::new(Weak::new());
        let mut shared = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cluster) = shared.upgrade() {
            return cluster;
        }
        let cluster = Arc::new(Self::up());
        *shared = Arc::downgrade(&cluster);
        cluster
    }

    /// `ops/dev.sh redis-cluster up` with client ports between 9000 and 9899 (their
    /// cluster bus ports, + 10000, lie between 19000 and 19899): below Linux's ephemeral
    /// range and clear of the dev stack, the dev cluster (17000, 27000), the fault
    /// tests' stacks (12000 to 15000) and the tests' own Redis servers (20000 to
    /// 29999). Ports found taken are retried elsewhere, a few times.
    fn up() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let mut refused = String::new();
        for _ in 0..5 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let base = 9_000 + ((std::process::id() * 7 + n * 101) % 300) as u16 * NODES;
            let cluster = Self {
                dir: std::env::temp_dir()
                    .join(format!("catalog-redis-cluster-{}-{n}", std::process::id())),
                base,
            };
            let output = cluster.dev(&["up"]);
            if output.status.success() {
                return cluster;
            }
            refused = String::from_utf8_lossy(&output.stderr).into_owned();
            drop(cluster); // stops what it started
            assert!(
                refused.contains("already in use"),
                "ops/dev.sh redis-cluster up failed:\n{refused}"
            );
        }
        panic!("no free ports for a test cluster after 5 tries; the last refusal:\n{refused}");
    }

    /// `ops/dev.sh redis-cluster <args>` on this cluster, bounded by its own waits.
    fn dev(&self, args: &[&str]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/dev.sh");
        Command::new(script)
            .arg("redis-cluster")
            .args(args)
            .env("CATALOG_DEV_DIR", &self.dir)
            .env("CATALOG_DEV_REDIS_CLUSTER_PORT", self.base.to_string())
            .env("CATALOG_DEV_TIMEOUT", "30")
            .stdin(Stdio::null())
            .output()
            .expect("ops/dev.sh")
    }

    fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        (0..NODES).map(|i| self.base + i)
    }

    /// `CATALOG_REDIS_URL` for it: the seed nodes, comma-separated.
    fn url(&self) -> String {
        let nodes: Vec<String> = self.ports().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis-cluster://{}", nodes.join(","))
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let output = self.dev(&["down"]);
        if !output.status.success() {
            eprintln!(
                "ops/dev.sh redis-cluster down in {} failed:\n{}",
                self.dir.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        } else if std::thread::panicking() {
            eprintln!("redis-cluster logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A test's configuration on the shared cluster: its own database and key prefix.
fn on_cluster(db: &TestDb, cluster: &OwnCluster) -> Config {
    let mut config = TestApp::config(db);
    config.redis_url = Some(cluster.url());
    config
}

/// A client of `url` (any form `CATALOG_REDIS_URL` takes), connected.
async fn client(url: &str) -> Client {
    let config = catalog::store::redis::redis_config(url).expect("a Redis URL");
    let client = Builder::from_config(config).build().expect("a client");
    client.init().await.expect("connect");
    client
}

/// The keys matching `pattern` that one node holds itself (asked directly, not
/// through the cluster client).
async fn keys_on_node(port: u16, pattern: &str) -> Vec<String> {
    let node = client(&format!("redis://127.0.0.1:{port}")).await;
    let keys: Vec<String> = node
        .custom(
            CustomCommand::new_static("KEYS", None, false),
            vec![pattern.to_owned()],
        )
        .await
        .unwrap();
    node.quit().await.unwrap();
    keys
}

/// `CLUSTER KEYSLOT key`, asked of the cluster.
async fn keyslot(cluster: &Client, key: &str) -> i64 {
    cluster
        .custom(
            CustomCommand::new_static("CLUSTER", None, false),
            vec!["KEYSLOT".to_owned(), key.to_owned()],
        )
        .await
        .unwrap()
}

/// Whether `app`'s Redis commands all went through: no L2 error, no failed stream read,
/// no failed relay round (a key sent to the wrong node or a cross-slot command fails).
async fn assert_no_redis_errors(app: &TestApp) {
    for series in [
        "catalog_l2_errors_total",
        "catalog_consumer_errors_total",
        "catalog_relay_errors_total",
    ] {
        assert_eq!(app.metric(series).await, 0.0, "{series}");
    }
}

#[tokio::test]
async fn cluster_a_write_reaches_a_second_readers_l1_within_the_window() {
    let cluster = OwnCluster::shared();
    let db = seeded(10, 4).await;
    let config = on_cluster(&db, &cluster);
    let writer = TestApp::spawn_as(&config, Role::Writer).await;
    let first = TestApp::spawn(&config).await;
    let second = TestApp::spawn(&config).await;
    let (id, _) = product_in_category(&db).await;
    let path = format!("/products/{id}");

    // Both readers hold version 1 in L1.
    for reader in [&first, &second] {
        assert_eq!(reader.get(&path).await.json()["version"], 1);
        let hits = reader.metric("catalog_l1_hits_total").await;
        assert_eq!(reader.get(&path).await.json()["version"], 1);
        assert_eq!(reader.metric("catalog_l1_hits_total").await, hits + 1.0);
    }

    for stock in [21, 22, 23] {
        let reply = patch_stock(&writer, id, stock).await;
        let version = reply.json()["version"].as_i64().unwrap();
        let acknowledged = Instant::now();
        for reader in [&second, &first] {
            let doc = wait_for_version(reader, id, version).await;
            assert_eq!(doc["stock"], stock);
        }
        let took = acknowledged.elapsed();
        eprintln!("cluster: acknowledgement → both readers serve version {version}: {took:?}");
        assert!(took < WINDOW, "version {version} took {took:?}");
    }
    assert!(second.metric("catalog_invalidations_total").await >= 3.0);

    // The relay's write-through went to the node of the document's slot: L2 holds the
    // last version.
    let redis = client(&cluster.url()).await;
    let key = format!("{}p:{id}", config.redis_prefix);
    let stored: String = poll(|| async { redis.get::<Option<String>, _>(&key).await.ok()? }).await;
    assert!(stored.starts_with("F4|"), "{stored}");
    redis.quit().await.unwrap();

    for app in [&writer, &first, &second] {
        assert_no_redis_errors(app).await;
    }
    second.shutdown().await;
    first.shutdown().await;
    writer.shutdown().await;
}

#[tokio::test]
async fn cluster_l2_is_shared_by_readers_and_documents_spread_over_every_master() {
    const PRODUCTS: i64 = 30;
    let cluster = OwnCluster::shared();
    let db = seeded(PRODUCTS as u64, 4).await;
    let config = on_cluster(&db, &cluster);
    let filler = TestApp::spawn(&config).await;
    let single = TestApp::spawn(&config).await;
    let batch = TestApp::spawn(&config).await;

    // One reader fills L2 from the databases, one product at a time.
    for id in 1..=PRODUCTS {
        assert_eq!(filler.get(&format!("/products/{id}")).await.status, 200);
    }
    let redis = client(&cluster.url()).await;
    let prefix = config.redis_prefix.clone();
    poll(|| async {
        let keys: Vec<String> = (1..=PRODUCTS).map(|id| format!("{prefix}p:{id}")).collect();
        let mut present = 0;
        for key in keys {
            present += redis.exists::<i64, _>(key).await.ok()?;
        }
        (present == PRODUCTS).then_some(())
    })
    .await;

    // Another reader's single gets are L2 hits.
    for id in 1..=PRODUCTS {
        assert_eq!(single.get(&format!("/products/{id}")).await.status, 200);
    }
    assert_eq!(
        single.metric("catalog_l2_hits_total").await,
        PRODUCTS as f64
    );
    assert_eq!(single.metric("catalog_l2_misses_total").await, 0.0);

    // A third reader's batch asks for keys of many slots at once (a pipeline of GETs on
    // a cluster, not MGET): all L2 hits.
    let ids: Vec<String> = (1..=PRODUCTS).map(|id| id.to_string()).collect();
    let reply = batch.get(&format!("/products?ids={}", ids.join(","))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json()["items"].as_array().unwrap().len(),
        PRODUCTS as usize
    );
    assert_eq!(batch.metric("catalog_l2_hits_total").await, PRODUCTS as f64);
    assert_eq!(batch.metric("catalog_db_reads_primary_total").await, 0.0);
    assert_eq!(batch.metric("catalog_db_reads_replica_total").await, 0.0);

    // Every master holds some of this test's documents.
    let mut total = 0;
    for port in cluster.ports() {
        let here = keys_on_node(port, &format!("{prefix}p:*")).await.len();
        eprintln!("cluster: node {port} holds {here} of {PRODUCTS} documents");
        assert!(here > 0, "node {port} holds none of the documents");
        total += here;
    }
    assert_eq!(total, PRODUCTS as usize);

    redis.quit().await.unwrap();
    for app in [&filler, &single, &batch] {
        assert_no_redis_errors(app).await;
    }
    batch.shutdown().await;
    single.shutdown().await;
    filler.shutdown().await;
}

#[tokio::test]
async fn cluster_a_read_with_a_writes_token_sees_it_at_once() {
    let cluster = OwnCluster::shared();
    let db = seeded(10, 4).await;
    let config = on_cluster(&db, &cluster);
    let writer = TestApp::spawn_as(&config, Role::Writer).await;
    let reader = TestApp::spawn(&config).await;
    let (id, _) = product_in_category(&db).await;
    let path = format!("/products/{id}");
    assert_eq!(reader.get(&path).await.json()["version"], 1);
    for stock in 2..=5 {
        let reply = patch_stock(&writer, id, stock).await;
        let version = reply.json()["version"].as_i64().unwrap();
        let token = reply.header("catalog-token").unwrap().to_owned();
        // No polling: the very next read carrying the token sees the write.
        let read = reader
            .request("GET", &path, &[("min-catalog-token", &token)])
            .await;
        assert_eq!(read.json()["version"], version, "token {token}");
        assert_eq!(read.json()["stock"], stock);
    }
    for app in [&writer, &reader] {
        assert_no_redis_errors(app).await;
    }
    reader.shutdown().await;
    writer.shutdown().await;
}

#[tokio::test]
async fn cluster_a_reset_flushes_the_readers_and_the_stream_and_epoch_share_a_slot() {
    let cluster = OwnCluster::shared();
    let db = seeded(10, 4).await;
    let config = on_cluster(&db, &cluster);
    let writer = TestApp::spawn_as(&config, Role::Writer).await;
    let reader = TestApp::spawn(&config).await;
    let (id, _) = product_in_category(&db).await;
    let path = format!("/products/{id}");
    assert_eq!(reader.get(&path).await.json()["version"], 1);
    let reply = patch_stock(&writer, id, 8).await;
    wait_for_version(&reader, id, reply.json()["version"].as_i64().unwrap()).await;
    reader.get("/products/1").await; // one more entry for the flush to drop

    // The stream and its epoch: one slot, so one node, which holds both.
    let redis = client(&cluster.url()).await;
    let (stream, epoch) = (
        stream_key(&config.redis_prefix),
        epoch_key(&config.redis_prefix),
    );
    assert!(stream.ends_with("{invalidations}"), "{stream}");
    assert_eq!(
        keyslot(&redis, &stream).await,
        keyslot(&redis, &epoch).await
    );
    assert_eq!(
        keyslot(&redis, &stream).await,
        keyslot(&redis, "invalidations").await,
        "only the hash tag is hashed"
    );
    let mut holders = Vec::new();
    for port in cluster.ports() {
        let keys = keys_on_node(port, &format!("{}*", config.redis_prefix)).await;
        if keys.contains(&stream) || keys.contains(&epoch) {
            assert!(
                keys.contains(&stream) && keys.contains(&epoch),
                "node {port} holds one of the two: {keys:?}"
            );
            holders.push(port);
        }
    }
    assert_eq!(holders.len(), 1, "{holders:?}");

    // Redis loses both (one multi-key DEL: it works because they share a slot): every
    // reader sees a reset and flushes L1.
    let flushes = reader.metric("catalog_l1_flushes_total").await;
    let deleted: i64 = redis
        .del(vec![stream.clone(), epoch.clone()])
        .await
        .unwrap();
    assert_eq!(deleted, 2);
    poll(|| async { (reader.metric("catalog_stream_resets_total").await >= 1.0).then_some(()) })
        .await;
    assert!(reader.metric("catalog_l1_flushes_total").await > flushes);

    // Writes after the reset propagate again, under a new epoch.
    let reply = patch_stock(&writer, id, 9).await;
    let doc = wait_for_version(&reader, id, reply.json()["version"].as_i64().unwrap()).await;
    assert_eq!(doc["stock"], 9);
    let fresh: Option<String> = redis.get(&epoch).await.unwrap();
    assert!(fresh.is_some(), "a new epoch was set");

    redis.quit().await.unwrap();
    for app in [&writer, &reader] {
        assert_no_redis_errors(app).await;
    }
    reader.shutdown().await;
    writer.shutdown().await;
}

/// A sentinel of this test's own, watching one server as the service `catalog`.
struct OwnSentinel {
    child: std::process::Child,
    port: u16,
    dir: PathBuf,
}

impl OwnSentinel {
    /// `redis-server <conf> --sentinel` on a port between 9900 and 9999 (clear of the
    /// test clusters' and of the tests' own Redis servers); a sentinel that cannot bind
    /// its port (it exits) is retried on another, and the one answering must report
    /// this child's process id.
    async fn start(primary: u16) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        for _ in 0..20 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = 9_900 + ((std::process::id() * 7 + n * 13) % 100) as u16;
            let dir =
                std::env::temp_dir().join(format!("catalog-sentinel-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            // The sentinel rewrites its configuration file: it must be its own.
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor catalog 127.0.0.1 {primary} 1\n",
                    dir.display()
                ),
            )
            .unwrap();
            let mut child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server (installed by ops/dev.sh)");
            let deadline = Instant::now() + DEADLINE;
            let ours = loop {
                if child.try_wait().ok().flatten().is_some() {
                    break false; // it could not bind the port: try another
                }
                if let Some(pid) = server_pid(port) {
                    break pid == child.id();
                }
                assert!(Instant::now() < deadline, "the sentinel did not start");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            if ours {
                return Self { child, port, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
        }
        panic!("no free port for a test's own sentinel after 20 tries");
    }
}

impl Drop for OwnSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The process id the server (or sentinel) on `port` reports, if one answers.
fn server_pid(port: u16) -> Option<u32> {
    let output = Command::new("timeout")
        .args(["2", "redis-cli", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["info", "server"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

#[tokio::test]
async fn sentinel_a_write_reaches_a_reader_and_l2_through_the_named_primary() {
    let primary = OwnRedis::start().await;
    let sentinel = OwnSentinel::start(primary.port).await;
    let db = seeded(10, 4).await;
    let mut config = TestApp::config(&db);
    // Two sentinels listed; the one on port 1 does not exist, so the client moves on.
    config.redis_url = Some(format!(
        "redis-sentinel://127.0.0.1:{},127.0.0.1:1?sentinelServiceName=catalog",
        sentinel.port
    ));
    let writer = TestApp::spawn_as(&config, Role::Writer).await;
    let reader = TestApp::spawn(&config).await;
    let (id, _) = product_in_category(&db).await;
    let path = format!("/products/{id}");
    assert_eq!(reader.get(&path).await.json()["version"], 1);
    let reply = patch_stock(&writer, id, 12).await;
    let version = reply.json()["version"].as_i64().unwrap();
    assert_eq!(wait_for_version(&reader, id, version).await["stock"], 12);

    // The relay's write-through reached the primary the sentinel names: another reader
    // finds the new version in L2.
    let late = TestApp::spawn(&config).await;
    assert_eq!(late.get(&path).await.json()["version"], version);
    assert_eq!(late.metric("catalog_l2_hits_total").await, 1.0);
    let direct = client(&format!("redis://127.0.0.1:{}", primary.port)).await;
    let stored: Option<String> = direct
        .get(format!("{}p:{id}", config.redis_prefix))
        .await
        .unwrap();
    assert!(stored.is_some_and(|s| s.starts_with(&format!("F{version}|"))));
    direct.quit().await.unwrap();

    for app in [&writer, &reader, &late] {
        assert_no_redis_errors(app).await;
    }
    late.shutdown().await;
    reader.shutdown().await;
    writer.shutdown().await;
}

/// `redis-cli -p <port> <args>`'s output, within two seconds.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("timeout")
        .args(["2", "redis-cli", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli (installed by ops/dev.sh)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A failover to the replica, as a sentinel carries it out: the replica is promoted
/// and, some seconds later, the old primary made its replica. Until then the service's
/// clients still write to the old primary, and what the relay publishes there is lost
/// with it: the relay finds that as a rollback and publishes it again. A write
/// acknowledged in that window and one after the failover both reach L2 on the new
/// primary and the readers.
#[tokio::test]
async fn sentinel_a_failover_to_the_replica_loses_no_acknowledged_write() {
    let primary = OwnRedis::start().await;
    let replica = OwnRedis::start().await;
    let replica_of = redis_cli(
        replica.port,
        &["replicaof", "127.0.0.1", &primary.port.to_string()],
    );
    assert!(replica_of.starts_with("OK"), "{replica_of}");
    let role = |port: u16, role: &'static str| async move {
        redis_cli(port, &["info", "replication"])
            .contains(role)
            .then_some(())
    };
    poll(|| role(replica.port, "master_link_status:up")).await;
    let sentinel = OwnSentinel::start(primary.port).await;
    // The sentinel learns of the replica from the primary.
    poll(|| async {
        redis_cli(sentinel.port, &["sentinel", "replicas", "catalog"])
            .contains(&replica.port.to_string())
            .then_some(())
    })
    .await;

    let db = seeded(10, 4).await;
    let mut config = TestApp::config(&db);
    config.redis_url = Some(format!(
        "redis-sentinel://127.0.0.1:{}?sentinelServiceName=catalog",
        sentinel.port
    ));
    let writer = TestApp::spawn_as(&config, Role::Writer).await;
    let reader = TestApp::spawn(&config).await;
    let (id, _) = product_in_category(&db).await;
    let other = if id == 1 { 2 } else { 1 };
    let first = patch_stock(&writer, id, 21).await.json()["version"]
        .as_i64()
        .unwrap();
    assert_eq!(wait_for_version(&reader, id, first).await["stock"], 21);

    let failover = redis_cli(sentinel.port, &["sentinel", "failover", "catalog"]);
    assert!(failover.starts_with("OK"), "{failover}");
    poll(|| role(replica.port, "role:master")).await;
    // A write while the old primary still takes writes.
    let between = patch_stock(&writer, other, 31).await.json()["version"]
        .as_i64()
        .unwrap();
    assert_eq!(wait_for_version(&reader, other, between).await["stock"], 31);
    poll(|| role(primary.port, "role:slave")).await;
    // And one after the failover.
    let after = patch_stock(&writer, id, 22).await.json()["version"]
        .as_i64()
        .unwrap();
    assert_eq!(wait_for_version(&reader, id, after).await["stock"], 22);

    let promoted = client(&format!("redis://127.0.0.1:{}", replica.port)).await;
    for (product, version) in [(other, between), (id, after)] {
        let key = format!("{}p:{product}", config.redis_prefix);
        poll(|| async {
            let stored: Option<String> = promoted.get(&key).await.ok()?;
            stored
                .is_some_and(|s| s.starts_with(&format!("F{version}|")))
                .then_some(())
        })
        .await;
    }
    promoted.quit().await.unwrap();
    let late = TestApp::spawn(&config).await;
    for (product, version) in [(other, between), (id, after)] {
        let doc = late.get(&format!("/products/{product}")).await.json();
        assert_eq!(doc["version"], version);
    }
    eprintln!(
        "failover: {} rollback(s) found by the relay",
        writer.metric("catalog_stream_rollbacks_total").await
    );
    late.shutdown().await;
    reader.shutdown().await;
    writer.shutdown().await;
}
