//! Webhook subscriptions against the real stack: a writer delivering to a receiver that
//! is a real HTTP server inside the test, which can be down (connections refused),
//! answer 500, or answer 200. Every change arrives, signatures verify (here, and with
//! the Standard Webhooks library for Python, `ops/check/verify_webhooks.sh`), a
//! product's changes arrive in order, nothing is sent again after a 2xx, dead letters
//! appear after the retry period and a replay delivers them, two writers never send one
//! attempt twice, and bad admin input is refused without changing anything.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use catalog::config::{Config, WebhookConfig};
use catalog::startup::Role;
use common::admin::primary_state;
use common::{ADMIN_TOKEN, Reply, TestApp, TestDb, poll, seeded};
use hmac::{Hmac, Mac as _};
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not listening: connections are refused.
    Down,
    /// 500 to everything.
    Fail,
    /// 200 to everything.
    Ok,
    /// 500 the first time a `webhook-id` arrives, 200 after.
    FailFirst,
}

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: String,
    status: u16,
    /// Unix seconds when it arrived.
    arrived: i64,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    fn acknowledged(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `(product id, version)` of a product event.
    fn product_version(&self) -> Option<(i64, i64)> {
        let data = &self.json()["data"];
        Some((data["product_id"].as_i64()?, data["version"].as_i64()?))
    }
}

#[derive(Debug)]
struct ReceiverState {
    mode: Mode,
    log: Vec<Received>,
    /// Answers take this long (several attempts overlap).
    delay: Duration,
}

/// A webhook receiver: a hyper server on a port of its own.
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    accept: Option<JoinHandle<()>>,
}

impl Receiver {
    async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ReceiverState {
            mode,
            log: Vec::new(),
            delay: Duration::ZERO,
        }));
        let mut receiver = Self {
            addr,
            state,
            accept: None,
        };
        if mode == Mode::Down {
            drop(listener);
        } else {
            receiver.accept = Some(receiver.serve(listener));
        }
        receiver
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/catalog", self.addr)
    }

    fn serve(&self, listener: TcpListener) -> JoinHandle<()> {
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&state);
                let service = hyper::service::service_fn(move |request| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, hyper::Error>(answer(&state, request).await) }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        })
    }

    /// Switches what it answers; `Down` closes the listener, leaving it reopens it on
    /// the same port.
    async fn set(&mut self, mode: Mode) {
        let was = std::mem::replace(&mut self.state.lock().unwrap().mode, mode);
        if was == Mode::Down && mode != Mode::Down {
            let listener = poll(|| async { TcpListener::bind(self.addr).await.ok() }).await;
            self.accept = Some(self.serve(listener));
        } else if mode == Mode::Down
            && let Some(accept) = self.accept.take()
        {
            accept.abort();
            let _ = accept.await;
        }
    }

    fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    fn log(&self) -> Vec<Received> {
        self.state.lock().unwrap().log.clone()
    }

    fn acknowledged(&self) -> Vec<Received> {
        self.log()
            .into_iter()
            .filter(Received::acknowledged)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

async fn answer(
    state: &Mutex<ReceiverState>,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, timestamp, signature, content_type) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        header("content-type"),
    );
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let delay = state.lock().unwrap().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut state = state.lock().unwrap();
    let status = match state.mode {
        Mode::Ok => 200,
        Mode::Fail | Mode::Down => 500,
        Mode::FailFirst if state.log.iter().any(|r| r.id == id) => 200,
        Mode::FailFirst => 500,
    };
    state.log.push(Received {
        id,
        timestamp,
        signature,
        content_type,
        body: String::from_utf8(body.to_vec()).unwrap(),
        status,
        arrived: unix_now(),
    });
    let mut response = hyper::Response::new(Full::new(Bytes::from_static(b"thanks")));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    response
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A writer configuration with short retries.
fn config(db: &TestDb, retry_period: Duration) -> Config {
    let mut config = TestApp::config(db);
    config.webhooks = WebhookConfig {
        retry_period,
        backoff_first: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        timeout: Duration::from_secs(2),
        ..WebhookConfig::default()
    };
    config
}

/// Registers an endpoint; its id and secret.
async fn register(app: &TestApp, body: Value) -> (i64, String) {
    let reply = app
        .admin("POST", "/admin/webhooks", &[], &body.to_string())
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let json = reply.json();
    let id = json["id"].as_i64().unwrap();
    assert_eq!(
        reply.header("location"),
        Some(format!("/admin/webhooks/{id}").as_str())
    );
    (id, json["secret"].as_str().unwrap().to_owned())
}

/// A product write through the writer; its new version.
async fn write(app: &TestApp, method: &str, id: i64, body: &str) -> i64 {
    let reply = app
        .admin(method, &format!("/admin/products/{id}"), &[], body)
        .await;
    assert!(
        reply.status == 200 || reply.status == 201,
        "{}",
        reply.text()
    );
    reply.json()["version"].as_i64().unwrap()
}

async fn patch_stock(app: &TestApp, id: i64, stock: i64) -> i64 {
    write(app, "PATCH", id, &format!(r#"{{"stock":{stock}}}"#)).await
}

fn product(sku: &str, categories: &[&str]) -> String {
    json!({
        "sku": sku, "name": format!("Product {sku}"),
        "price": {"amount": 1250, "currency": "EUR"}, "categories": categories,
    })
    .to_string()
}

/// NDJSON lines of new products `ids`; the versions the import reports.
async fn bulk(app: &TestApp, ids: std::ops::Range<i64>) -> Vec<(i64, i64)> {
    let mut body = String::new();
    for id in ids {
        let line = json!({"id": id, "sku": format!("HOOK-{id}"), "name": format!("Hook {id}"),
                          "price": {"amount": 100, "currency": "USD"}});
        body.push_str(&format!("{line}\n"));
    }
    let reply = app.admin("POST", "/admin/products/bulk", &[], &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply
        .text()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter_map(|line| Some((line["id"].as_i64()?, line["version"].as_i64()?)))
        .collect()
}

/// Active product ids of the seed.
async fn product_ids(db: &TestDb, n: i64) -> Vec<i64> {
    sqlx::query_scalar("select id from products where active order by id limit $1")
        .bind(n)
        .fetch_all(&db.primary)
        .await
        .unwrap()
}

/// Waits until no delivery waits (every one delivered or dead).
async fn settled(db: &TestDb) {
    poll(|| async {
        let pending: i64 =
            sqlx::query_scalar("select count(*) from webhook_deliveries where state = 'pending'")
                .fetch_one(&db.primary)
                .await
                .ok()?;
        (pending == 0).then_some(())
    })
    .await;
}

/// Whether `header` holds a `v1,` signature of this delivery by `secret` (computed here
/// from the specification, not with the service's code).
fn signed_by(secret: &str, received: &Received) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", received.id, received.timestamp).as_bytes());
    mac.update(received.body.as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    received.signature.split(' ').any(|s| s == expected)
}

/// Checks every request's headers and signature: each signed by every one of
/// `secrets`, with one signature per secret, a timestamp of its arrival, and a JSON body
/// of the documented shape.
fn assert_signed(log: &[Received], secrets: &[&str]) {
    assert!(!log.is_empty());
    for received in log {
        assert!(received.id.starts_with("msg_"), "{received:?}");
        assert_eq!(received.content_type, "application/json");
        let timestamp: i64 = received.timestamp.parse().unwrap();
        assert!(
            (received.arrived - timestamp).abs() <= 5,
            "the timestamp is the attempt's time: {received:?}"
        );
        assert_eq!(received.signature.split(' ').count(), secrets.len());
        for secret in secrets {
            assert!(signed_by(secret, received), "bad signature: {received:?}");
        }
        let body = received.json();
        assert!(body["type"].is_string() && body["timestamp"].is_string());
        assert_eq!(body["timestamp"], body["data"]["committed_at"]);
    }
}

/// Verifies `log` with the Standard Webhooks library for Python.
fn verify_with_python(log: &[Received], secrets: &[&str]) {
    let deliveries: Vec<Value> = log
        .iter()
        .map(|r| {
            json!({
                "headers": {"webhook-id": r.id, "webhook-timestamp": r.timestamp,
                            "webhook-signature": r.signature},
                "body": r.body,
                "secrets": secrets,
            })
        })
        .collect();
    let path = std::env::temp_dir().join(format!(
        "catalog-webhooks-{}-{}.json",
        std::process::id(),
        log.first().map_or("none", |r| r.id.as_str())
    ));
    std::fs::write(&path, json!({ "deliveries": deliveries }).to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/ops/check/verify_webhooks.sh");
    let output = std::process::Command::new("bash")
        .arg(script)
        .arg(&path)
        .output()
        .expect("bash ops/check/verify_webhooks.sh");
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the Python standardwebhooks library refused deliveries:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Per product, versions never go backwards across all requests, and acknowledged
/// versions strictly increase; no `webhook-id` arrives again after its 2xx.
fn assert_ordered_and_once(log: &[Received]) {
    let mut seen: HashMap<i64, i64> = HashMap::new();
    let mut acked: HashMap<i64, i64> = HashMap::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for received in log {
        assert!(
            !done.contains(received.id.as_str()),
            "{} arrived again after a 2xx",
            received.id
        );
        if received.acknowledged() {
            done.insert(&received.id);
        }
        let Some((product, version)) = received.product_version() else {
            continue;
        };
        let last = seen.insert(product, version).unwrap_or(0);
        assert!(
            version >= last,
            "product {product}: version {version} arrived after {last}"
        );
        if received.acknowledged() {
            let last = acked.insert(product, version).unwrap_or(0);
            assert!(
                version > last,
                "product {product}: version {version} acknowledged after {last}"
            );
        }
    }
}

#[tokio::test]
async fn a_receiver_down_then_failing_then_back_gets_every_change_in_order_once() {
    let db = seeded(20, 4).await;
    let app = TestApp::spawn_as(&config(&db, Duration::from_secs(120)), Role::Writer).await;
    let mut receiver = Receiver::start(Mode::Down).await;
    let (_, secret) = register(&app, json!({"url": receiver.url()})).await;
    assert!(secret.starts_with("whsec_"));
    let ids = product_ids(&db, 6).await;
    let mut expected: BTreeSet<(i64, i64)> = BTreeSet::new();

    // Down: connections refused; every product's first change is retried, the rest wait.
    for round in 0..3 {
        for &id in &ids[..5] {
            expected.insert((id, patch_stock(&app, id, round * 10 + 1).await));
        }
    }
    let deleted = write(&app, "DELETE", ids[5], "").await;
    expected.insert((ids[5], deleted));
    let category = app
        .admin(
            "PUT",
            "/admin/categories/hook-lamps",
            &[],
            r#"{"name":"Lamps"}"#,
        )
        .await;
    assert_eq!(category.status, 201, "{}", category.text());
    expected.extend(bulk(&app, 910_001..910_004).await);
    poll(|| async { (app.metric("catalog_webhook_failed_total").await >= 12.0).then_some(()) })
        .await;
    assert!(receiver.log().is_empty());

    // 500s: attempts arrive and are refused.
    receiver.set(Mode::Fail).await;
    for &id in &ids[..2] {
        expected.insert((id, patch_stock(&app, id, 99).await));
    }
    poll(|| async { (receiver.log().len() >= 8).then_some(()) }).await;
    assert!(receiver.log().iter().all(|r| r.status == 500));

    // Back: everything arrives.
    receiver.set(Mode::Ok).await;
    expected.insert((ids[0], patch_stock(&app, ids[0], 7).await));
    settled(&db).await;
    let log = receiver.log();
    let acked: BTreeSet<(i64, i64)> = receiver
        .acknowledged()
        .iter()
        .filter_map(Received::product_version)
        .collect();
    assert_eq!(acked, expected, "every product change, acknowledged");
    let categories: Vec<Value> = receiver
        .acknowledged()
        .iter()
        .map(Received::json)
        .filter(|body| body["type"] == "category.updated")
        .collect();
    assert_eq!(categories.len(), 1, "{categories:?}");
    assert_eq!(categories[0]["data"]["category"], "hook-lamps");
    assert_eq!(categories[0]["data"]["deleted"], false);
    let tombstone = receiver
        .acknowledged()
        .into_iter()
        .find(|r| r.product_version() == Some((ids[5], deleted)))
        .unwrap()
        .json();
    assert_eq!(tombstone["type"], "product.deleted");
    assert_eq!(tombstone["data"]["deleted"], true);

    assert_ordered_and_once(&log);
    assert_signed(&log, &[&secret]);
    let acknowledged = receiver.acknowledged().len() as f64;
    assert_eq!(acknowledged, expected.len() as f64 + 1.0);
    assert_eq!(
        app.metric("catalog_webhook_delivered_total").await,
        acknowledged
    );
    assert!(
        app.metric("catalog_webhook_failed_total").await
            >= 12.0 + log.iter().filter(|r| r.status == 500).count() as f64
    );
    poll(|| async { (app.metric("catalog_webhook_backlog").await == 0.0).then_some(()) }).await;
    assert!(
        app.metric("catalog_webhook_delivery_seconds_count").await >= acknowledged,
        "latency recorded"
    );
    println!(
        "webhooks: {} changes, {} requests ({} refused while failing), every one signed",
        expected.len() + 1,
        log.len(),
        log.iter().filter(|r| r.status == 500).count()
    );
    verify_with_python(&log, &[&secret]);
    app.shutdown().await;
}

#[tokio::test]
async fn dead_letters_after_the_retry_period_then_a_replay_delivers_them() {
    let db = seeded(10, 2).await;
    let app = TestApp::spawn_as(&config(&db, Duration::from_secs(1)), Role::Writer).await;
    let mut receiver = Receiver::start(Mode::Fail).await;
    let (hook, secret) = register(&app, json!({"url": receiver.url()})).await;
    let ids = product_ids(&db, 2).await;
    let first = patch_stock(&app, ids[0], 1).await;
    let second = patch_stock(&app, ids[0], 2).await;
    let other = patch_stock(&app, ids[1], 3).await;

    let path = format!("/admin/webhooks/{hook}/dead-letters");
    let letters = poll(|| async {
        let reply = app.admin("GET", &path, &[], "").await;
        let items = reply.json()["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (items.len() == 3).then_some(items)
    })
    .await;
    for letter in &letters {
        assert_eq!(letter["type"], "product.updated");
        assert_eq!(letter["last_status"], 500);
        assert!(letter["attempts"].as_i64().unwrap() >= 2, "{letter}");
        assert_eq!(
            letter["message_id"],
            format!("msg_{}", letter["id"].as_i64().unwrap())
        );
        assert!(letter["dead_at"].is_string() && letter["first_attempt_at"].is_string());
    }
    let versions: Vec<(i64, i64)> = letters
        .iter()
        .map(|l| {
            let data = &l["event"]["data"];
            (
                data["product_id"].as_i64().unwrap(),
                data["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        versions.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([(ids[0], first), (ids[0], second), (ids[1], other)])
    );
    assert_eq!(app.metric("catalog_webhook_dead_lettered_total").await, 3.0);
    poll(|| async { (app.metric("catalog_webhook_dead_letters").await == 3.0).then_some(()) })
        .await;
    let listed = app.admin("GET", "/admin/webhooks", &[], "").await.json();
    assert_eq!(listed["items"][0]["dead"], 3);
    assert_eq!(listed["items"][0]["pending"], 0);

    // Pages.
    let page = app
        .admin("GET", &format!("{path}?limit=2"), &[], "")
        .await
        .json();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let after = page["next_after"].as_i64().unwrap();
    let rest = app
        .admin("GET", &format!("{path}?limit=2&after={after}"), &[], "")
        .await
        .json();
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_after"], Value::Null);

    // Nothing more is attempted while they are dead.
    let attempts_when_dead = receiver.log().len();

    // A replay of one, then of all the rest.
    receiver.set(Mode::Ok).await;
    let one = letters[0]["id"].as_i64().unwrap();
    let replay = format!("/admin/webhooks/{hook}/dead-letters/replay");
    let reply = app
        .admin("POST", &replay, &[], &json!({"ids": [one]}).to_string())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(reply.json()["replayed"], 1);
    poll(|| async {
        let reply = app.admin("GET", &path, &[], "").await;
        (reply.json()["items"].as_array()?.len() == 2).then_some(())
    })
    .await;
    settled(&db).await;
    let reply = app.admin("POST", &replay, &[], "").await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(reply.json()["replayed"], 2);
    settled(&db).await;
    let empty = app.admin("GET", &path, &[], "").await.json();
    assert_eq!(empty["items"], json!([]));

    let log = receiver.log();
    let acked: Vec<Received> = receiver.acknowledged();
    assert_eq!(acked.len(), 3, "each dead letter delivered once: {acked:?}");
    for received in &acked {
        // The same message id as its failed attempts.
        assert!(
            log[..attempts_when_dead]
                .iter()
                .any(|r| r.id == received.id && r.status == 500),
            "{received:?}"
        );
    }
    let ids_acked: BTreeSet<&str> = acked.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids_acked.len(), 3);
    assert_signed(&log, &[&secret]);
    poll(|| async { (app.metric("catalog_webhook_dead_letters").await == 0.0).then_some(()) })
        .await;
    assert_eq!(app.metric("catalog_webhook_delivered_total").await, 3.0);

    // Unknown endpoints.
    app.admin(
        "POST",
        "/admin/webhooks/999999/dead-letters/replay",
        &[],
        "",
    )
    .await
    .assert_problem(404, "webhook-not-found");
    app.admin("GET", "/admin/webhooks/999999/dead-letters", &[], "")
        .await
        .assert_problem(404, "webhook-not-found");
    app.shutdown().await;
}

#[tokio::test]
async fn two_writers_share_the_deliveries_and_never_send_one_attempt_twice() {
    let db = seeded(10, 2).await;
    let config = config(&db, Duration::from_secs(120));
    let a = TestApp::spawn_as(&config, Role::Writer).await;
    let b = TestApp::spawn_as(&config, Role::Writer).await;
    let receiver = Receiver::start(Mode::FailFirst).await;
    receiver.set_delay(Duration::from_millis(5));
    let (_, secret) = register(&a, json!({"url": receiver.url()})).await;

    let mut expected: BTreeSet<(i64, i64)> = BTreeSet::new();
    expected.extend(bulk(&b, 920_001..920_151).await);
    for (i, &id) in product_ids(&db, 5).await.iter().enumerate() {
        let writer = if i % 2 == 0 { &a } else { &b };
        expected.insert((id, patch_stock(writer, id, 1).await));
        expected.insert((id, patch_stock(writer, id, 2).await));
    }
    settled(&db).await;

    let log = receiver.log();
    let mut requests: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    for received in &log {
        requests
            .entry(received.id.as_str())
            .or_default()
            .push(received.status);
    }
    assert_eq!(requests.len(), expected.len());
    for (id, statuses) in &requests {
        assert_eq!(
            statuses,
            &[500, 200],
            "{id}: each attempt sent once, by one writer"
        );
    }
    let acked: BTreeSet<(i64, i64)> = receiver
        .acknowledged()
        .iter()
        .filter_map(Received::product_version)
        .collect();
    assert_eq!(acked, expected);
    assert_ordered_and_once(&log);
    assert_signed(&log, &[&secret]);
    let (delivered_a, delivered_b) = (
        a.metric("catalog_webhook_delivered_total").await,
        b.metric("catalog_webhook_delivered_total").await,
    );
    let (failed_a, failed_b) = (
        a.metric("catalog_webhook_failed_total").await,
        b.metric("catalog_webhook_failed_total").await,
    );
    println!(
        "two writers: {} deliveries; delivered by a {delivered_a}, by b {delivered_b}; \
         failed attempts a {failed_a}, b {failed_b}",
        expected.len()
    );
    assert_eq!(delivered_a + delivered_b, expected.len() as f64);
    assert_eq!(failed_a + failed_b, expected.len() as f64);
    assert!(
        delivered_a > 0.0 && delivered_b > 0.0,
        "both writers delivered"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn endpoints_filter_events_rotate_secrets_and_stop_when_deleted() {
    let db = TestDb::migrated().await;
    let app = TestApp::spawn_as(&config(&db, Duration::from_secs(120)), Role::Writer).await;
    for slug in ["lamps", "chairs"] {
        let reply = app
            .admin(
                "PUT",
                &format!("/admin/categories/{slug}"),
                &[],
                r#"{"name":"x"}"#,
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    let deletions = Receiver::start(Mode::Ok).await;
    let lamps = Receiver::start(Mode::Ok).await;
    let rotated = Receiver::start(Mode::Ok).await;
    let (_, deletions_secret) = register(
        &app,
        json!({"url": deletions.url(), "events": ["product.deleted"], "description": "ERP"}),
    )
    .await;
    let given = format!("whsec_{}", STANDARD.encode([42u8; 24]));
    let (_, lamps_secret) = register(
        &app,
        json!({"url": lamps.url(), "categories": ["lamps"], "secret": given}),
    )
    .await;
    assert_eq!(lamps_secret, given, "a given secret is kept");
    let (rotated_id, first_secret) = register(&app, json!({"url": rotated.url()})).await;
    assert_eq!(
        STANDARD
            .decode(first_secret.strip_prefix("whsec_").unwrap())
            .unwrap()
            .len(),
        32
    );

    // Listed and shown without secrets.
    let list = app.admin("GET", "/admin/webhooks", &[], "").await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["items"].as_array().unwrap().len(), 3);
    assert!(!list.text().contains("whsec_"), "{}", list.text());
    let one = app
        .admin("GET", &format!("/admin/webhooks/{rotated_id}"), &[], "")
        .await;
    assert_eq!(one.json()["url"], rotated.url());
    assert_eq!(
        one.json()["events"],
        json!(["product.updated", "product.deleted", "category.updated"])
    );
    assert!(!one.text().contains("whsec_"));

    let v1 = write(&app, "PUT", 1, &product("LAMP-1", &["lamps"])).await;
    let v1_moved = write(&app, "PUT", 1, &product("LAMP-1", &["chairs"])).await;
    write(&app, "PUT", 2, &product("CHAIR-2", &["chairs"])).await;
    let v2_deleted = write(&app, "DELETE", 2, "").await;
    let reply = app
        .admin("PUT", "/admin/categories/lamps", &[], r#"{"name":"Lamps"}"#)
        .await;
    assert_eq!(reply.status, 200);
    // An operator's purge is not a change: nothing is delivered for it.
    let reply = app
        .admin("POST", "/admin/purge", &[], r#"{"category":"chairs"}"#)
        .await;
    assert_eq!(reply.status, 202);
    settled(&db).await;

    let types = |r: &Receiver| -> Vec<(String, Value)> {
        r.acknowledged()
            .iter()
            .map(|r| {
                let body = r.json();
                (
                    body["type"].as_str().unwrap().to_owned(),
                    body["data"].clone(),
                )
            })
            .collect()
    };
    let got = types(&deletions);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "product.deleted");
    assert_eq!(got[0].1["product_id"], 2);
    assert_eq!(got[0].1["version"], v2_deleted);
    assert_eq!(got[0].1["categories"], json!(["chairs"]));
    let got = types(&lamps);
    let summary: Vec<(String, Option<i64>)> = got
        .iter()
        .map(|(t, d)| (t.clone(), d["version"].as_i64()))
        .collect();
    assert_eq!(
        summary,
        [
            ("product.updated".to_owned(), Some(v1)),
            ("product.updated".to_owned(), Some(v1_moved)),
            ("category.updated".to_owned(), None),
        ],
        "the lamps endpoint gets what touched lamps: {got:?}"
    );
    assert_eq!(got[1].1["categories"], json!(["chairs"]), "left lamps");
    assert_eq!(got[2].1["category"], "lamps");
    assert_eq!(types(&rotated).len(), 5, "{:?}", types(&rotated));
    assert_signed(&deletions.log(), &[&deletions_secret]);
    assert_signed(&lamps.log(), &[&lamps_secret]);
    assert_signed(&rotated.log(), &[&first_secret]);

    // Rotation: both secrets sign until the previous one expires.
    let rotate = format!("/admin/webhooks/{rotated_id}/rotate");
    let reply = app.admin("POST", &rotate, &[], "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let second_secret = reply.json()["secret"].as_str().unwrap().to_owned();
    assert!(reply.json()["previous_secret_until"].is_string());
    assert_ne!(second_secret, first_secret);
    let before = rotated.log().len();
    write(&app, "PATCH", 1, r#"{"stock":5}"#).await;
    settled(&db).await;
    let both = rotated.log()[before..].to_vec();
    assert_eq!(both.len(), 1);
    assert_signed(&both, &[&second_secret, &first_secret]);
    verify_with_python(&both, &[&second_secret, &first_secret]);

    // A rotation that drops the previous secret at once.
    let third_secret = format!("whsec_{}", STANDARD.encode([7u8; 40]));
    let body = json!({"secret": third_secret, "previous_valid_secs": 0}).to_string();
    let reply = app.admin("POST", &rotate, &[], &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["previous_secret_until"], Value::Null);
    let before = rotated.log().len();
    write(&app, "PATCH", 1, r#"{"stock":6}"#).await;
    settled(&db).await;
    let only = rotated.log()[before..].to_vec();
    assert_signed(&only, &[&third_secret]);
    assert!(!signed_by(&second_secret, &only[0]));
    verify_with_python(&only, &[&third_secret]);

    // Deleted: gone, with its deliveries, and nothing more is sent to it.
    let path = format!("/admin/webhooks/{rotated_id}");
    let reply = app.admin("DELETE", &path, &[], "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    app.admin("GET", &path, &[], "")
        .await
        .assert_problem(404, "webhook-not-found");
    app.admin("DELETE", &path, &[], "")
        .await
        .assert_problem(404, "webhook-not-found");
    let before = rotated.log().len();
    write(&app, "PATCH", 1, r#"{"stock":8}"#).await;
    write(&app, "DELETE", 1, "").await;
    settled(&db).await;
    assert_eq!(rotated.log().len(), before);
    let left: i64 =
        sqlx::query_scalar("select count(*) from webhook_deliveries where webhook_id = $1")
            .bind(rotated_id)
            .fetch_one(&db.primary)
            .await
            .unwrap();
    assert_eq!(left, 0);
    assert_eq!(types(&deletions).len(), 2, "the other endpoints go on");
    app.shutdown().await;
}

#[tokio::test]
async fn a_write_fanning_out_to_an_endpoint_being_deleted_still_commits() {
    let db = seeded(5, 2).await;
    let app = TestApp::spawn_as(&config(&db, Duration::from_secs(120)), Role::Writer).await;
    let receiver = Receiver::start(Mode::Ok).await;
    let (hook, _) = register(&app, json!({"url": receiver.url()})).await;
    let id = product_ids(&db, 1).await[0];

    // The endpoint's deletion holds its row while the write's fan-out reaches it.
    let mut deleting = db.primary.begin().await.unwrap();
    sqlx::query("delete from webhooks where id = $1")
        .bind(hook)
        .execute(&mut *deleting)
        .await
        .unwrap();
    let writer = tokio::spawn({
        let writer = app.writer.unwrap();
        async move {
            common::http_request_with_body(
                writer,
                "PATCH",
                &format!("/admin/products/{id}"),
                &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
                Bytes::from_static(br#"{"stock": 4}"#),
            )
            .await
        }
    });
    poll(|| async {
        let waiting: bool = sqlx::query_scalar(
            "select exists(select 1 from pg_locks l join pg_class c on c.oid = l.relation \
             where not l.granted and c.relname = 'webhooks') \
             or exists(select 1 from pg_stat_activity where datname = current_database() \
             and wait_event_type = 'Lock')",
        )
        .fetch_one(&db.primary)
        .await
        .ok()?;
        waiting.then_some(())
    })
    .await;
    deleting.commit().await.unwrap();
    let reply = writer.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let left: i64 = sqlx::query_scalar("select count(*) from webhook_deliveries")
        .fetch_one(&db.primary)
        .await
        .unwrap();
    assert_eq!(left, 0, "no delivery for the deleted endpoint");
    app.shutdown().await;
}

/// The webhook tables' content, for "nothing changed".
async fn webhook_state(db: &TestDb) -> (String, i64) {
    sqlx::query_as(
        "select md5(coalesce(string_agg(concat_ws('|', id, url, events, categories, \
         description, secret, previous_secret, previous_until, rotated_at), ',' order by id), '')), \
         (select count(*) from webhook_deliveries) from webhooks",
    )
    .fetch_one(&db.primary)
    .await
    .unwrap()
}

#[tokio::test]
async fn bad_webhook_requests_get_problems_and_change_nothing() {
    let db = seeded(5, 2).await;
    let mut config = config(&db, Duration::from_secs(120));
    config.max_body_bytes = 4096;
    let app = TestApp::spawn_as(&config, Role::Writer).await;
    let receiver = Receiver::start(Mode::Ok).await;
    let (hook, _) = register(&app, json!({"url": receiver.url()})).await;
    let (id, _) = common::admin::product_in_category(&db).await;
    patch_stock(&app, id, 3).await;
    settled(&db).await;
    let before = webhook_state(&db).await;
    let catalog_before = primary_state(&db, id).await;

    let bearer = format!("Bearer {ADMIN_TOKEN}");
    assert!(!bearer.is_empty());
    let valid = json!({"url": receiver.url()}).to_string();
    app.admin("POST", "/admin/webhooks", &[("authorization", "")], &valid)
        .await
        .assert_problem(401, "unauthenticated");
    app.admin(
        "GET",
        "/admin/webhooks",
        &[("authorization", "Bearer nope-nope")],
        "",
    )
    .await
    .assert_problem(403, "forbidden");
    app.admin(
        "DELETE",
        &format!("/admin/webhooks/{hook}"),
        &[("authorization", "Bearer nope-nope")],
        "",
    )
    .await
    .assert_problem(403, "forbidden");

    let refused: Vec<(&str, String, u16, &str)> = vec![
        (
            "POST",
            r#"{"url": "http://h/",, }"#.into(),
            400,
            "malformed-json",
        ),
        ("POST", String::new(), 400, "malformed-json"),
        (
            "POST",
            r#"{"url": "https://example.com/hook"}"#.into(),
            400,
            "invalid-webhook",
        ),
        (
            "POST",
            r#"{"url": "ftp://example.com/"}"#.into(),
            400,
            "invalid-webhook",
        ),
        (
            "POST",
            r#"{"url": "http://user:pw@example.com/"}"#.into(),
            400,
            "invalid-webhook",
        ),
        (
            "POST",
            r#"{"url": "not a url"}"#.into(),
            400,
            "invalid-webhook",
        ),
        (
            "POST",
            r#"{"url": "http://h/", "events": []}"#.into(),
            400,
            "invalid-webhook",
        ),
        (
            "POST",
            r#"{"url": "http://h/", "events": ["product.created"]}"#.into(),
            400,
            "invalid-webhook",
        ),
        (
            "POST",
            r#"{"url": "http://h/", "categories": ["Kitchen!"]}"#.into(),
            400,
            "invalid-webhook",
        ),
        (
            "POST",
            r#"{"url": "http://h/", "secret": "hunter2hunter2"}"#.into(),
            400,
            "invalid-webhook",
        ),
        (
            "POST",
            r#"{"url": "http://h/", "secret": "whsec_c2hvcnQ="}"#.into(),
            400,
            "invalid-webhook",
        ),
        (
            "POST",
            r#"{"url": "http://h/", "owner": "me"}"#.into(),
            400,
            "invalid-webhook",
        ),
        (
            "POST",
            r#"{"events": ["product.updated"]}"#.into(),
            400,
            "invalid-webhook",
        ),
        (
            "POST",
            format!(r#"{{"url": "http://h/{}"}}"#, "a".repeat(5000)),
            413,
            "payload-too-large",
        ),
        ("PUT", valid.clone(), 405, "method-not-allowed"),
        ("DELETE", String::new(), 405, "method-not-allowed"),
    ];
    for (method, body, status, kind) in &refused {
        let reply = app.admin(method, "/admin/webhooks", &[], body).await;
        reply.assert_problem(*status, kind);
        assert!(!reply.text().contains("hunter2"), "{}", reply.text());
    }
    let put = app.admin("PUT", "/admin/webhooks", &[], &valid).await;
    assert_eq!(put.header("allow"), Some("GET, POST"));

    let one = format!("/admin/webhooks/{hook}");
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        ("GET", "/admin/webhooks/abc".into(), "", 400, "invalid-id"),
        ("DELETE", "/admin/webhooks/0".into(), "", 400, "invalid-id"),
        ("GET", "/admin/webhooks/".into(), "", 400, "invalid-id"),
        (
            "GET",
            "/admin/webhooks/999999".into(),
            "",
            404,
            "webhook-not-found",
        ),
        (
            "DELETE",
            "/admin/webhooks/999999".into(),
            "",
            404,
            "webhook-not-found",
        ),
        (
            "POST",
            "/admin/webhooks/999999/rotate".into(),
            "",
            404,
            "webhook-not-found",
        ),
        ("POST", one.clone(), "{}", 405, "method-not-allowed"),
        (
            "GET",
            format!("{one}/rotate"),
            "",
            405,
            "method-not-allowed",
        ),
        ("GET", format!("{one}/other"), "", 404, "not-found"),
        (
            "POST",
            format!("{one}/rotate"),
            r#"{"secret":"whsec_x"}"#,
            400,
            "invalid-webhook",
        ),
        (
            "POST",
            format!("{one}/rotate"),
            r#"{"previous_valid_secs":-1}"#,
            400,
            "invalid-webhook",
        ),
        (
            "POST",
            format!("{one}/rotate"),
            r#"{"previous_valid_secs":99999999}"#,
            400,
            "invalid-webhook",
        ),
        ("POST", format!("{one}/rotate"), "{", 400, "malformed-json"),
        (
            "GET",
            format!("{one}/dead-letters?limit=0"),
            "",
            400,
            "invalid-webhook",
        ),
        (
            "GET",
            format!("{one}/dead-letters?after=x"),
            "",
            400,
            "invalid-webhook",
        ),
        (
            "POST",
            format!("{one}/dead-letters/replay"),
            r#"{"ids":[]}"#,
            400,
            "invalid-webhook",
        ),
        (
            "POST",
            format!("{one}/dead-letters/replay"),
            r#"{"ids":["x"]}"#,
            400,
            "invalid-webhook",
        ),
        (
            "GET",
            format!("{one}/dead-letters/replay"),
            "",
            405,
            "method-not-allowed",
        ),
    ];
    for (method, path, body, status, kind) in &cases {
        let reply: Reply = app.admin(method, path, &[], body).await;
        assert_eq!(reply.status, *status, "{method} {path}: {}", reply.text());
        reply.assert_problem(*status, kind);
    }

    assert_eq!(
        webhook_state(&db).await,
        before,
        "a refused request changed webhooks"
    );
    assert_eq!(primary_state(&db, id).await, catalog_before);
    let metrics = app.get("/metrics").await.text();
    assert!(
        metrics.contains(r#"catalog_http_requests_total{route="admin_webhooks",status="400"}"#),
        "{metrics}"
    );
    app.shutdown().await;
}
