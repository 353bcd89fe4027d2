//! Webhook subscriptions: admins register endpoints, and every committed change they
//! subscribed to is `POST`ed to them at least once, in commit order per product, signed
//! per Standard Webhooks 1.0 ([`signature`]). The API and the receiver's side are in
//! `docs/api.md` (Webhooks); the design in `docs/coherence.md` (Webhooks).
//!
//! The data path:
//!
//! 1. **Fan-out, in the write's transaction.** A trigger on `outbox`
//!    (`migrations/0008_webhooks.sql`) inserts one `webhook_deliveries` row per change
//!    and per endpoint that wants it, with the event (type, version, deleted, active,
//!    categories) read in that transaction. A committed change has its deliveries when
//!    it commits: a writer restart, the relay, Redis and the sweeper's deletion of
//!    published outbox rows cannot lose one. Bulk imports, category deletes and every
//!    other path that inserts outbox rows are covered the same way.
//! 2. **Delivery, by every writer** ([`deliverer`]): due deliveries are claimed with
//!    `for update skip locked` under a lease ([`store`]), so several writers never send
//!    the same attempt, and a delivery waits while an earlier one of the same endpoint
//!    and product is pending, so a product's changes arrive in version (= commit) order.
//! 3. **Retries** with exponential backoff and jitter ([`schedule`]) for
//!    `CATALOG_WEBHOOK_RETRY_SECS`, then a dead letter, which an admin lists and replays
//!    ([`admin`]).
//!
//! The rest: [`event`] renders the JSON body, [`input`] parses and bounds the admin
//! bodies, [`error`] maps refusals to problem documents.

pub mod admin;
pub mod deliverer;
pub mod error;
pub mod event;
pub mod input;
pub mod schedule;
pub mod signature;
pub mod store;
