//! The stores beneath the caches: the PostgreSQL primary and its read replicas.
//!
//! This is the lowest floor of the crate: it knows nothing of HTTP or of the
//! caches above it.

pub mod postgres;
