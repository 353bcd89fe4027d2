//! goose load tests for the catalog service.
//!
//! Scenarios (choose with goose's `--scenarios`, e.g. `--scenarios browse`):
//!
//! - `browse`: storefront reads: `GET /products/{id}` with ids from a Zipf distribution
//!   over the catalog, batch gets of 20 ids, and category pages walked with their cursors;
//! - `admin`: stock updates through the writer (`PATCH /admin/products/{id}`), each user
//!   pausing `LOADTEST_WRITE_INTERVAL_MS` between writes (write rate = users / interval);
//! - `mixed`: both, in one user: twenty reads per write;
//! - `consistency`: the consistency checker under load: writes and reads over a hot set
//!   of `LOADTEST_HOT` products; at the end it counts reads that started more than
//!   `LOADTEST_WINDOW_MS` after a write's acknowledgement yet returned an older version,
//!   reports propagation (acknowledgement → first read of the new version) and exits 1
//!   if any read was stale.
//!
//! goose's own options apply (`--host` is the reader, `--users`, `--hatch-rate`,
//! `--run-time`, `--report-file report.html|report.json`, ...). Options of this load test
//! come from the environment, since goose owns the command line:
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `LOADTEST_PRODUCTS` | 100000 | catalog size: ids are 1..=N |
//! | `LOADTEST_ZIPF` | 1.0 | Zipf exponent of product popularity |
//! | `LOADTEST_WRITER` | http://127.0.0.1:8081 | the writer's base URL |
//! | `LOADTEST_TOKEN` | dev-admin-token | admin bearer token |
//! | `LOADTEST_WRITE_INTERVAL_MS` | 100 | pause between one user's writes |
//! | `LOADTEST_HOT` | 20 | hot-set size of `consistency` |
//! | `LOADTEST_WINDOW_MS` | 250 | propagation window of `consistency` |

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use catalog::checker::{Event, Report};
use catalog::seed::zipf::Zipf;
use goose::prelude::*;
use rand::RngExt as _;

/// Settings read once from the environment.
struct Settings {
    products: u64,
    zipf: Zipf,
    writer: String,
    token: String,
    write_interval: Duration,
    hot: i64,
    window: Duration,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let products = env("LOADTEST_PRODUCTS", 100_000u64).max(1);
        let exponent = env("LOADTEST_ZIPF", 1.0f64);
        Settings {
            products,
            zipf: Zipf::new(usize::try_from(products).unwrap_or(usize::MAX), exponent),
            writer: env("LOADTEST_WRITER", "http://127.0.0.1:8081".to_owned()),
            token: env("LOADTEST_TOKEN", "dev-admin-token".to_owned()),
            write_interval: Duration::from_millis(env("LOADTEST_WRITE_INTERVAL_MS", 100)),
            hot: env("LOADTEST_HOT", 20i64).max(1),
            window: Duration::from_millis(env("LOADTEST_WINDOW_MS", 250)),
        }
    })
}

/// A product id drawn from the Zipf distribution (id = rank: low ids are popular).
fn zipf_id() -> u64 {
    settings().zipf.sample(&mut rand::rng()) as u64
}

async fn get_product(user: &mut GooseUser) -> TransactionResult {
    let id = zipf_id().min(settings().products);
    let _goose = user
        .get_named(&format!("/products/{id}"), "/products/{id}")
        .await?;
    Ok(())
}

async fn get_batch(user: &mut GooseUser) -> TransactionResult {
    let ids: Vec<String> = (0..20).map(|_| zipf_id().to_string()).collect();
    let _goose = user
        .get_named(
            &format!("/products?ids={}", ids.join(",")),
            "/products?ids=",
        )
        .await?;
    Ok(())
}

/// Walks up to five pages of a random category.
async fn walk_category(user: &mut GooseUser) -> TransactionResult {
    let goose = user.get("/categories").await?;
    let Ok(response) = goose.response else {
        return Ok(());
    };
    let Ok(categories) = response.json::<serde_json::Value>().await else {
        return Ok(());
    };
    let slugs: Vec<String> = categories["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|c| c["slug"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if slugs.is_empty() {
        return Ok(());
    }
    let slug = &slugs[rand::rng().random_range(0..slugs.len())];
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let path = match &cursor {
            Some(c) => format!("/categories/{slug}/products?limit=50&cursor={c}"),
            None => format!("/categories/{slug}/products?limit=50"),
        };
        let goose = user.get_named(&path, "/categories/{slug}/products").await?;
        let Ok(response) = goose.response else {
            return Ok(());
        };
        let page: serde_json::Value = response.json().await.unwrap_or_default();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    Ok(())
}

/// Sets product `id`'s stock through the writer; returns the acknowledged version.
async fn write_stock(user: &mut GooseUser, id: i64) -> Result<Option<i64>, Box<TransactionError>> {
    let s = settings();
    let url = format!("{}/admin/products/{id}", s.writer);
    let stock = rand::rng().random_range(0..1000);
    let builder = user
        .get_request_builder(&GooseMethod::Patch, &url)?
        .bearer_auth(&s.token)
        .header("content-type", "application/json")
        .body(format!(r#"{{"stock": {stock}}}"#));
    let request = GooseRequest::builder()
        .method(GooseMethod::Patch)
        .path(url.as_str())
        .name("/admin/products/{id}")
        .set_request_builder(builder)
        .build();
    let goose = user.request(request).await?;
    let Ok(response) = goose.response else {
        return Ok(None);
    };
    let ack: serde_json::Value = response.json().await.unwrap_or_default();
    Ok(ack["version"].as_i64())
}

async fn admin_write(user: &mut GooseUser) -> TransactionResult {
    let id = zipf_id() as i64;
    write_stock(user, id).await?;
    tokio::time::sleep(settings().write_interval).await;
    Ok(())
}

fn acks() -> &'static Mutex<Vec<Event>> {
    static ACKS: Mutex<Vec<Event>> = Mutex::new(Vec::new());
    &ACKS
}

fn reads() -> &'static Mutex<Vec<Event>> {
    static READS: Mutex<Vec<Event>> = Mutex::new(Vec::new());
    &READS
}

async fn consistency_write(user: &mut GooseUser) -> TransactionResult {
    let id = rand::rng().random_range(1..=settings().hot);
    if let Some(version) = write_stock(user, id).await? {
        let event = Event {
            id,
            version,
            at: Instant::now(),
        };
        acks()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event);
    }
    tokio::time::sleep(settings().write_interval).await;
    Ok(())
}

async fn consistency_read(user: &mut GooseUser) -> TransactionResult {
    let id = rand::rng().random_range(1..=settings().hot);
    let at = Instant::now();
    let goose = user
        .get_named(&format!("/products/{id}"), "/products/{id} (hot)")
        .await?;
    if let Ok(response) = goose.response
        && let Ok(doc) = response.json::<serde_json::Value>().await
        && let Some(version) = doc["version"].as_i64()
    {
        let event = Event { id, version, at };
        reads()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event);
    }
    Ok(())
}

/// Counts stale reads and reports propagation; `false` if any read was stale.
fn check_consistency() -> bool {
    let acks = acks()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let reads = reads()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if acks.is_empty() {
        return true;
    }
    let report = Report::check(&acks, &reads, settings().window);
    eprintln!("consistency: {report}");
    report.stale == 0
}

#[tokio::main]
async fn main() -> Result<(), GooseError> {
    let browse = scenario!("browse")
        .register_transaction(transaction!(get_product).set_weight(16)?)
        .register_transaction(transaction!(get_batch).set_weight(2)?)
        .register_transaction(transaction!(walk_category).set_weight(1)?);
    let admin = scenario!("admin").register_transaction(transaction!(admin_write));
    let mixed = scenario!("mixed")
        .register_transaction(transaction!(get_product).set_weight(20)?)
        .register_transaction(transaction!(admin_write).set_weight(1)?);
    let consistency = scenario!("consistency")
        .register_transaction(transaction!(consistency_read).set_weight(20)?)
        .register_transaction(transaction!(consistency_write).set_weight(1)?);
    let attack = GooseAttack::initialize()?
        .register_scenario(browse)
        .register_scenario(admin)
        .register_scenario(mixed)
        .register_scenario(consistency);
    Box::pin(attack.execute()).await?;
    if !check_consistency() {
        std::process::exit(1);
    }
    Ok(())
}
