//! A high-throughput cached product-catalog service.
//!
//! Storefront reads are served from an in-process cache of pre-serialized documents,
//! then Redis, then lag-aware PostgreSQL replicas; admin writes go to the primary in
//! one transaction with an outbox row, and invalidations reach every reader over a
//! Redis stream. The parts, top to bottom:
//!
//! - [`cli`], [`config`], [`telemetry`]: the binary's edges: arguments, typed
//!   `CATALOG_*` configuration, structured logs.
//! - [`startup`]: builds listeners, pools and tasks; runs until shutdown.
//! - [`read`]: the storefront face: route → L1 → L2 → replicas → response bytes.
//! - [`write`]: the admin face: auth, validation, one transaction with an outbox row.
//! - [`coherence`]: outbox relay → Redis stream → consumer → floors and L1 evictions.
//! - [`http`]: what both faces share: the server (limits, drain), no-store and problem
//!   responses, and the parsing of ids, escapes and query parameters.
//! - [`cache`]: L1, the byte-budgeted in-process cache with single-flight fills.
//! - [`document`]: the pre-serialized product document every tier holds.
//! - [`gzip`]: gzip members deflated once per body, and listings spliced from them.
//! - [`store`]: the PostgreSQL primary and replicas (health, lag), Redis (L2), the
//!   read queries and the embedded migrations (write SQL lives in `write::tx`).
//! - [`metrics`]: Prometheus metrics with lock-free hot-path handles.
//! - [`seed`]: a deterministic synthetic catalog for demos and load tests, and the
//!   Zipf sampler the load test and benches share.
//! - [`checker`]: the stale-read and propagation checker of the integration tests and
//!   the goose consistency scenario.

pub mod cache;
pub mod checker;
pub mod cli;
pub mod coherence;
pub mod config;
pub mod document;
pub mod gzip;
pub mod http;
pub mod metrics;
pub mod read;
pub mod seed;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod write;
