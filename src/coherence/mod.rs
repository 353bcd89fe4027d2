//! The coherence protocol: how an acknowledged write reaches every reader.
//!
//! - [`relay`] (writer side): publishes committed outbox rows to the Redis stream
//!   `<prefix>{invalidations}` with a dense sequence number and the stream's epoch, and
//!   writes the new document (or tombstone) to L2 by version; publishes a heartbeat
//!   when there is nothing to publish.
//! - [`consumer`] (reader side): reads the stream from its last-seen id, raises
//!   per-product freshness [`floors`], evicts older L1 entries, and flushes L1 when it
//!   sees a gap in the sequence or a new epoch (the stream was trimmed past it, or Redis
//!   lost it).
//! - [`feed`] (reader side): silence (no entry, not even a heartbeat) is a fault that
//!   flushes L1 and limits caching until the feed is heard again and has caught up
//!   with the primary's position.
//! - [`auditor`] (reader side): samples L1 against the primary in production and counts
//!   what it finds stale.
//! - [`leader`] (writer side): one writer's relay publishes at a time.
//! - [`purger`] (writer side): purges what the relay published from the edge caches
//!   by surrogate key.
//! - [`stream`]: the entry format both sides share.
//! - [`backoff`]: the retry pause of both loops.

pub mod auditor;
pub mod backoff;
pub mod consumer;
pub mod feed;
pub mod floors;
pub mod leader;
pub mod purger;
pub mod relay;
pub mod stream;
