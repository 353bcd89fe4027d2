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
//! - [`http`]: server plumbing shared by the faces (limits, drain, problem documents).
//! - [`cache`]: L1, the byte-budgeted in-process cache with single-flight fills.
//! - [`document`]: the pre-serialized product document every tier holds.
//! - [`store`]: the PostgreSQL primary and replicas (health, lag), Redis (L2), the
//!   read queries and the embedded migrations.
//! - [`metrics`]: Prometheus metrics with lock-free hot-path handles.
//! - [`seed`]: a deterministic synthetic catalog for demos and load tests.

pub mod cache;
pub mod cli;
pub mod coherence;
pub mod config;
pub mod document;
pub mod http;
pub mod metrics;
pub mod read;
pub mod seed;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod write;
