//! A steady load for the fault tests, from inside the test: a few tasks reading a hot
//! set of products from a reader in a loop, and one task `PATCH`ing their stock through
//! a writer. Every acknowledged write and every answered read is recorded as a
//! [`catalog::checker::Event`], every failure with its time, so a test can judge the
//! run with [`catalog::checker::Report`] and say when the service recovered.
//!
//! The clients never panic on a failed request: a fault is expected to fail some.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catalog::checker::{Event, Report};
use sqlx::PgPool;

use super::{ADMIN_TOKEN, Reply};

/// How long one client request may take before it counts as failed.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// An address the load follows: a restarted writer gets a new one.
#[derive(Debug, Clone)]
pub struct Target(Arc<Mutex<SocketAddr>>);

impl Target {
    pub fn new(addr: SocketAddr) -> Self {
        Self(Arc::new(Mutex::new(addr)))
    }

    pub fn set(&self, addr: SocketAddr) {
        *self.0.lock().unwrap() = addr;
    }

    pub fn get(&self) -> SocketAddr {
        *self.0.lock().unwrap()
    }
}

/// A failed request: when it started and what came back.
#[derive(Debug, Clone)]
pub struct Failure {
    pub at: Instant,
    pub what: String,
}

/// What a run recorded.
#[derive(Debug, Default)]
pub struct Outcome {
    pub acks: Vec<Event>,
    pub reads: Vec<Event>,
    pub read_errors: Vec<Failure>,
    pub write_errors: Vec<Failure>,
    /// 503 answers of the writer without `Retry-After`.
    pub unavailable_without_retry_after: usize,
    /// Reads an edge cache answered from its copy (`X-Cache: HIT`).
    pub edge_hits: usize,
}

impl Outcome {
    /// Reads and writes sent.
    pub fn requests(&self) -> usize {
        self.acks.len() + self.reads.len() + self.read_errors.len() + self.write_errors.len()
    }

    /// The first acknowledgement at or after `at`, as a delay from `at`.
    pub fn first_ack_after(&self, at: Instant) -> Option<Duration> {
        self.acks
            .iter()
            .filter(|ack| ack.at >= at)
            .map(|ack| ack.at - at)
            .min()
    }

    /// From `at` to the first read that saw a write acknowledged after `at`: when the
    /// write → invalidation → read path worked again.
    pub fn first_propagated_after(&self, at: Instant) -> Option<Duration> {
        self.acks
            .iter()
            .filter(|ack| ack.at >= at)
            .filter_map(|ack| {
                self.reads
                    .iter()
                    .filter(|r| r.id == ack.id && r.version >= ack.version && r.at >= ack.at)
                    .map(|r| r.at - at)
                    .min()
            })
            .min()
    }

    /// The highest version acknowledged for each product.
    pub fn last_acked(&self) -> std::collections::BTreeMap<i64, i64> {
        let mut last = std::collections::BTreeMap::new();
        for ack in &self.acks {
            let v = last.entry(ack.id).or_insert(0);
            *v = (*v).max(ack.version);
        }
        last
    }

    /// Acknowledged writes the primary does not have: product versions below them.
    pub async fn lost_writes(&self, primary: &PgPool) -> usize {
        let rows: Vec<(i64, i64)> = sqlx::query_as("select id, version from products")
            .fetch_all(primary)
            .await
            .expect("versions on the primary");
        let now: std::collections::HashMap<i64, i64> = rows.into_iter().collect();
        self.acks
            .iter()
            .filter(|ack| now.get(&ack.id).copied().unwrap_or(0) < ack.version)
            .count()
    }

    pub fn report(&self, window: Duration) -> Report {
        Report::check(&self.acks, &self.reads, window)
    }
}

/// What a reading task recorded: reads, failures, reads an edge answered from its copy.
type ReadLog = (Vec<Event>, Vec<Failure>, usize);
/// What the writing task recorded: acknowledgements, failures, 503s without `Retry-After`.
type WriteLog = (Vec<Event>, Vec<Failure>, usize);

/// The running load.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    readers: Vec<tokio::task::JoinHandle<ReadLog>>,
    writer: Option<tokio::task::JoinHandle<WriteLog>>,
}

impl Load {
    /// `readers` tasks reading products `1..=hot` from `reader`, and (with `writer`)
    /// one task writing their stock every `pause`.
    pub fn start(
        reader: Target,
        writer: Option<Target>,
        hot: i64,
        readers: usize,
        pause: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let readers = (0..readers)
            .map(|r| {
                let (stop, reader) = (Arc::clone(&stop), reader.clone());
                tokio::spawn(async move {
                    let (mut reads, mut errors, mut edge_hits) = (Vec::new(), Vec::new(), 0);
                    let mut i = r as i64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let id = i % hot + 1;
                        let at = Instant::now();
                        let path = format!("/products/{id}");
                        match request(reader.get(), "GET", &path, &[], String::new()).await {
                            Ok(reply) if reply.status == 200 => {
                                edge_hits += usize::from(reply.header("x-cache") == Some("HIT"));
                                let version =
                                    serde_json::from_slice::<serde_json::Value>(&reply.body)
                                        .ok()
                                        .and_then(|doc| doc["version"].as_i64());
                                match version {
                                    Some(version) => reads.push(Event { id, version, at }),
                                    None => errors.push(Failure {
                                        at,
                                        what: format!("200 without a version: {}", reply.text()),
                                    }),
                                }
                            }
                            Ok(reply) => errors.push(Failure {
                                at,
                                what: format!("{} {}", reply.status, reply.text()),
                            }),
                            Err(err) => errors.push(Failure { at, what: err }),
                        }
                    }
                    (reads, errors, edge_hits)
                })
            })
            .collect();
        let writer = writer.map(|writer| {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                static STOCK: AtomicI64 = AtomicI64::new(1);
                let (mut acks, mut errors, mut no_retry_after) = (Vec::new(), Vec::new(), 0);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = n % hot + 1;
                    let stock = STOCK.fetch_add(1, Ordering::Relaxed);
                    let body = format!(r#"{{"stock": {stock}}}"#);
                    let path = format!("/admin/products/{id}");
                    let bearer = format!("Bearer {ADMIN_TOKEN}");
                    let headers = [("authorization", bearer.as_str())];
                    let sent = Instant::now();
                    let answer = request(writer.get(), "PATCH", &path, &headers, body).await;
                    let at = Instant::now();
                    match answer {
                        Ok(reply) if reply.status == 200 => {
                            let version = reply.json()["version"].as_i64().expect("a version");
                            acks.push(Event { id, version, at });
                        }
                        Ok(reply) => {
                            if reply.status == 503 && reply.header("retry-after").is_none() {
                                no_retry_after += 1;
                            }
                            errors.push(Failure {
                                at: sent,
                                what: format!("{} {}", reply.status, reply.text()),
                            });
                        }
                        Err(err) => errors.push(Failure {
                            at: sent,
                            what: err,
                        }),
                    }
                    tokio::time::sleep(pause).await;
                }
                (acks, errors, no_retry_after)
            })
        });
        Self {
            stop,
            readers,
            writer,
        }
    }

    /// Stops every client and collects what they recorded.
    pub async fn finish(mut self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut outcome = Outcome::default();
        for reader in self.readers.drain(..) {
            let (reads, errors, edge_hits) = reader.await.expect("a reader task");
            outcome.reads.extend(reads);
            outcome.read_errors.extend(errors);
            outcome.edge_hits += edge_hits;
        }
        if let Some(writer) = self.writer.take() {
            let (acks, errors, no_retry_after) = writer.await.expect("the writer task");
            outcome.acks = acks;
            outcome.write_errors = errors;
            outcome.unavailable_without_retry_after = no_retry_after;
        }
        outcome
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.readers {
            task.abort();
        }
        if let Some(writer) = &self.writer {
            writer.abort();
        }
    }
}

/// One request on a fresh HTTP/1.1 connection, with a deadline; failures are values.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: String,
) -> Result<Reply, String> {
    request_within(REQUEST_DEADLINE, addr, method, path, headers, body).await
}

/// [`request`] with a deadline of its own, for a request that is long by nature (a
/// bulk import of thousands of lines, in a debug build, beside a load).
pub async fn request_within(
    deadline: Duration,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: String,
) -> Result<Reply, String> {
    let mut all = headers.to_vec();
    if !body.is_empty() {
        all.push(("content-type", "application/json"));
    }
    let exchange = super::try_http_request(addr, method, path, &all, body.into());
    tokio::time::timeout(deadline, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {deadline:?}")))
}
