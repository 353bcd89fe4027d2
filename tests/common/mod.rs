//! Shared harness of the integration tests: the real stack started by `ops/dev.sh`,
//! and a fresh database per test so tests run in parallel and in any order.
//!
//! The stack's addresses come from the `CATALOG_*` variables that `ops/dev.sh test`
//! exports; tests read them but never set them.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

pub mod admin;
pub mod fault;
pub mod load;
pub mod process;
pub mod sse;

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

/// The admin token of test apps.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A reader built in-process on port 0 against a test database, its replica and Redis.
#[derive(Debug)]
pub struct TestApp {
    /// The reader's address (the writer's, for a writer-only app).
    pub addr: std::net::SocketAddr,
    /// The writer's address, when it runs one.
    pub writer: Option<std::net::SocketAddr>,
    pub stop: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// The configuration a test app starts from: this database, its replica, the stack's
    /// Redis under a key prefix of the database's own.
    pub fn config(db: &TestDb) -> catalog::config::Config {
        let stack = Stack::from_env();
        let mut config = catalog::config::Config::with_database(&db.primary_url);
        config.replica_urls = vec![db.replica_url.clone()];
        config.redis_url = Some(stack.redis_url);
        config.redis_prefix = format!("{}:", db.name);
        config.reader_addr = "127.0.0.1:0".parse().unwrap();
        config.writer_addr = "127.0.0.1:0".parse().unwrap();
        config.admin_tokens = vec![catalog::config::Secret::new(ADMIN_TOKEN)];
        config.db_pool_size = 8;
        config.read.replica_check_interval = Duration::from_millis(100);
        // Most tests run a reader without a writer (so without heartbeats): they must
        // not see their feed go silent; the tests of silence set their own limit.
        config.feed_silence = Duration::from_secs(600);
        config
    }

    pub async fn spawn(config: &catalog::config::Config) -> Self {
        Self::spawn_as(config, catalog::startup::Role::Reader).await
    }

    pub async fn spawn_as(config: &catalog::config::Config, role: catalog::startup::Role) -> Self {
        let app = catalog::startup::Application::build(config, role)
            .await
            .expect("build the app");
        let addr = app.reader_addr().or(app.writer_addr()).expect("a listener");
        let writer = app.writer_addr();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        Self {
            addr,
            writer,
            stop,
            task,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[]).await
    }

    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        http_request(self.addr, method, path, headers).await
    }

    /// An admin request to the writer, with the test token unless `headers` has one.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            all.push(("authorization", &bearer));
        }
        all.push(("content-type", "application/json"));
        http_request_with_body(
            self.writer.expect("a writer"),
            method,
            path,
            &all,
            body.to_owned().into(),
        )
        .await
    }

    /// The value of a metric line (`name{labels}` exactly as exposed), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").await.text();
        text.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// An HTTP answer, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: bytes::Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem document with this status and type.
    pub fn assert_problem(&self, status: u16, kind: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let json = self.json();
        assert_eq!(json["type"], format!("/problems/{kind}"), "{json}");
        assert_eq!(json["status"], status);
        assert!(json["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(json["detail"].as_str().is_some_and(|t| !t.is_empty()));
    }
}

/// One bodiless request on a fresh HTTP/1.1 connection.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    http_request_with_body(addr, method, path, headers, bytes::Bytes::new()).await
}

/// One request on a fresh HTTP/1.1 connection.
pub async fn http_request_with_body(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: bytes::Bytes,
) -> Reply {
    try_http_request(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|failure| panic!("{method} {path}: {failure}"))
}

/// One request on a fresh HTTP/1.1 connection; a failure (connect, handshake, send,
/// body) is a value, for callers that count failures instead of failing.
pub async fn try_http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: bytes::Bytes,
) -> Result<Reply, String> {
    use http_body_util::BodyExt as _;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A migrated database with a seeded catalog whose products are all active, visible on
/// the replica.
pub async fn seeded(products: u64, categories: u32) -> TestDb {
    let db = TestDb::migrated().await;
    let spec = catalog::seed::SeedSpec {
        products,
        categories,
        seed: 9,
        replace: false,
    };
    catalog::seed::seed(&db.primary, spec).await.expect("seed");
    sqlx::query("update products set active = true")
        .execute(&db.primary)
        .await
        .expect("activate");
    let replica = db.replica().await;
    poll(|| async {
        let visible: i64 = sqlx::query_scalar("select count(*) from products where active")
            .fetch_one(&replica)
            .await
            .ok()?;
        (visible == products as i64).then_some(())
    })
    .await;
    db
}

/// Waits until the replica's copy of `db` has exactly `n` products.
pub async fn replica_has_products(db: &TestDb, n: i64) {
    let replica = db.replica().await;
    poll(|| async {
        let count: i64 = sqlx::query_scalar("select count(*) from products")
            .fetch_one(&replica)
            .await
            .ok()?;
        (count == n).then_some(())
    })
    .await;
}

/// A Redis server of this test's own, so stopping it disturbs no other test.
pub struct OwnRedis {
    child: std::process::Child,
    pub port: u16,
}

impl OwnRedis {
    /// Starts `redis-server` on a free port below the ephemeral range. The port is not
    /// probed and released first (another process could take it in between): the
    /// server binds it itself, and a server that cannot (it exits) is retried on
    /// another port; the one that answers must report this child's process id.
    pub async fn start() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        for _ in 0..20 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = 20_000 + ((std::process::id() * 31 + n * 7919) % 10_000) as u16;
            let mut child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .args(["--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server (installed by ops/dev.sh)");
            let deadline = Instant::now() + DEADLINE;
            let ours = loop {
                if child.try_wait().ok().flatten().is_some() {
                    break false; // it could not bind the port: try another
                }
                if let Some(pid) = redis_pid(port).await {
                    break pid == child.id();
                }
                assert!(Instant::now() < deadline, "redis-server did not start");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            if ours {
                return Self { child, port };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("no free port for a test's own redis-server after 20 tries");
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the server (`SIGSTOP`): its sockets stay open and say nothing.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server run again (`SIGCONT`).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} failed");
    }
}

/// The process id a Redis server on `port` reports, if one answers.
async fn redis_pid(port: u16) -> Option<u32> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream.write_all(b"INFO server\r\n").await.ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    // The reply is one bulk string; the line after `process_id:` is all we need.
    loop {
        let text = String::from_utf8_lossy(&reply);
        if let Some((_, after)) = text.split_once("process_id:")
            && after.contains("\r\n")
        {
            break;
        }
        let n = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&reply);
    text.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client socket whose first `skip` written bytes were already sent by hand: a
/// protocol client can then send its opening in two parts (e.g. HTTP/2's preface).
#[derive(Debug)]
pub struct SkipWritten {
    stream: tokio::net::TcpStream,
    skip: usize,
}

impl SkipWritten {
    pub fn new(stream: tokio::net::TcpStream, skip: usize) -> Self {
        Self { stream, skip }
    }
}

impl tokio::io::AsyncRead for SkipWritten {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SkipWritten {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.skip > 0 {
            let skipped = self.skip.min(buf.len());
            self.skip -= skipped;
            return std::task::Poll::Ready(Ok(skipped));
        }
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
