//! The stores beneath L1: the PostgreSQL primary and its read replicas, and Redis (L2).
//!
//! [`catalog`] holds the storefront's read queries; the write transactions live with
//! the admin face (`write::tx`) and the relay's queries with the relay
//! (`coherence::relay`), beside the code whose promises they keep.
//!
//! This is the lowest floor of the crate: it knows nothing of HTTP or of the faces
//! above it.

pub mod breaker;
pub mod catalog;
pub mod coalesce;
pub mod postgres;
pub mod redis;
pub mod replicas;
