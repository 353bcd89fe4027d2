//! The stores beneath L1: the PostgreSQL primary and its read replicas, and Redis (L2).
//!
//! This is the lowest floor of the crate: it knows nothing of HTTP or of the faces
//! above it.

pub mod catalog;
pub mod postgres;
pub mod redis;
pub mod replicas;
