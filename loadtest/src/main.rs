//! goose load tests for the catalog service.
//!
//! Scenario `browse`: storefront reads of `GET /products/{id}` with ids drawn uniformly
//! from `1..=LOADTEST_PRODUCTS` (default 100000, the demo catalog). goose's own options
//! (`--host`, `--users`, `--hatch-rate`, `--run-time`, `--report-file`, ...) apply:
//!
//! ```text
//! cargo run --release -p catalog-loadtest -- --host http://127.0.0.1:8080 \
//!     --users 32 --hatch-rate 32 --run-time 30s --report-file report.html
//! ```

use std::sync::OnceLock;

use goose::prelude::*;
use rand::RngExt as _;

/// Number of products in the catalog under test, from `LOADTEST_PRODUCTS`.
fn catalog_size() -> u64 {
    static SIZE: OnceLock<u64> = OnceLock::new();
    *SIZE.get_or_init(|| {
        std::env::var("LOADTEST_PRODUCTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(100_000)
    })
}

async fn get_product(user: &mut GooseUser) -> TransactionResult {
    let id = rand::rng().random_range(1..=catalog_size());
    let _goose = user
        .get_named(&format!("/products/{id}"), "/products/{id}")
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), GooseError> {
    let attack = GooseAttack::initialize()?
        .register_scenario(scenario!("browse").register_transaction(transaction!(get_product)));
    Box::pin(attack.execute()).await?;
    Ok(())
}
