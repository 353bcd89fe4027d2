//! A high-throughput cached product-catalog service.
//!
//! Storefront reads are served from an in-process cache of pre-serialized documents,
//! then Redis, then lag-aware PostgreSQL replicas; admin writes go to the primary in
//! one transaction with an outbox row, and invalidations reach every reader over a
//! Redis stream. The parts, top to bottom:
//!
//! - [`cli`], [`config`], [`telemetry`]: the binary's edges: arguments, typed
//!   `CATALOG_*` configuration, structured logs.
//! - [`seed`]: a deterministic synthetic catalog for demos and load tests.
//! - [`store`]: the PostgreSQL primary and replicas, and the embedded migrations.

pub mod cli;
pub mod config;
pub mod seed;
pub mod store;
pub mod telemetry;
