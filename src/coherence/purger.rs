//! The edge purger (in the writer): what each relay round published is purged from
//! every edge cache in `CATALOG_EDGE_PURGE_URLS` by surrogate key, the keys the
//! storefront puts on its answers ([`crate::http::surrogate`]). The request is Varnish's xkey convention: `PURGE /` with
//! `xkey-purge: <keys, space-separated>`; `xkey-purge: all` (an operator's purge of
//! everything, or more keys than [`MAX_KEYS`] at once) asks the edge to drop everything.
//!
//! Keys are purged as soon as the round commits, and once more `CATALOG_EDGE_REPURGE_MS`
//! later: an edge that missed its copy between the first purge and the moment a reader
//! applied the invalidation refetched the old version from that reader, and the second
//! purge drops it. A failed purge is retried with backoff ([`ATTEMPTS`] tries, each
//! bounded by [`DEADLINE`]) and then counted as failed; what an edge kept is then bounded
//! by the documents' `max-age`. Keys wait in one set (coalesced, bounded), never in an
//! unbounded queue; while they wait they are `catalog_edge_purge_backlog`.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::Method;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use crate::http::client::{Connection, Target};
use crate::http::surrogate::{CATEGORIES_KEY, category_key, product_key};
use crate::metrics::Metrics;

/// The key that asks an edge to drop everything.
pub const ALL: &str = "all";
/// Most keys kept apart; beyond, the batch becomes [`ALL`] (a bulk import of many
/// products purges the edge whole rather than key by key).
pub const MAX_KEYS: usize = 10_000;
/// Tries of one purge request before it counts as failed.
const ATTEMPTS: u32 = 5;
/// Deadline of one try (connecting and the answer).
const DEADLINE: Duration = Duration::from_secs(2);
/// Longest `xkey-purge` header; more keys go in further requests.
const HEADER_BYTES: usize = 4096;

/// Keys waiting to be purged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Keys {
    all: bool,
    keys: BTreeSet<String>,
}

impl Keys {
    /// The keys of one published change: the product, the categories whose pages it
    /// touched, `categories` for a category's own change, everything for a purge of
    /// everything.
    pub fn add_change(&mut self, product: Option<i64>, categories: &[String], purge: bool) {
        match product {
            Some(id) => self.add(product_key(id)),
            None if categories.is_empty() && purge => self.all = true,
            None => self.add(CATEGORIES_KEY.to_owned()),
        }
        for slug in categories {
            self.add(category_key(slug));
        }
    }

    fn add(&mut self, key: String) {
        if !self.all {
            self.keys.insert(key);
            if self.keys.len() > MAX_KEYS {
                self.all = true;
            }
        }
        if self.all {
            self.keys.clear();
        }
    }

    fn merge(&mut self, other: Self) {
        if other.all {
            self.all = true;
            self.keys.clear();
        }
        for key in other.keys {
            self.add(key);
        }
    }

    fn is_empty(&self) -> bool {
        !self.all && self.keys.is_empty()
    }

    fn len(&self) -> usize {
        if self.all { 1 } else { self.keys.len() }
    }

    /// The `xkey-purge` header values that carry these keys.
    fn headers(&self) -> Vec<String> {
        if self.all {
            return vec![ALL.to_owned()];
        }
        let mut headers = Vec::new();
        let mut current = String::new();
        for key in &self.keys {
            if !current.is_empty() && current.len() + 1 + key.len() > HEADER_BYTES {
                headers.push(std::mem::take(&mut current));
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(key);
        }
        if !current.is_empty() {
            headers.push(current);
        }
        headers
    }
}

/// What the relay hands over and the purge task takes.
#[derive(Debug, Default)]
struct Pending {
    /// Keys to purge now (the first time).
    now: Keys,
    /// Keys to purge again, each set when it is due.
    again: VecDeque<(Instant, Keys)>,
}

/// The relay's handle on the purge task.
#[derive(Debug)]
pub struct EdgePurger {
    edges: Vec<Target>,
    repurge: Duration,
    pending: Mutex<Pending>,
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl EdgePurger {
    /// A purger of `edges` (base URLs), purging each batch again after `repurge`.
    pub fn new(edges: Vec<Target>, repurge: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            edges,
            repurge,
            pending: Mutex::default(),
            wake: Notify::new(),
            metrics,
        })
    }

    /// Queues `keys` (a published round's) for purging.
    pub fn purge(&self, keys: Keys) {
        if keys.is_empty() {
            return;
        }
        let mut pending = self.lock();
        pending.now.merge(keys);
        self.set_backlog(&pending);
        drop(pending);
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_backlog(&self, pending: &Pending) {
        let waiting = pending.now.len() + pending.again.iter().map(|(_, k)| k.len()).sum::<usize>();
        self.metrics.edge_purge_backlog.set(waiting as i64);
    }

    /// Purges until `stop` fires; what still waits then is left to the edges' TTL.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut connections: Vec<Option<Connection>> = self.edges.iter().map(|_| None).collect();
        loop {
            let next_due = self.lock().again.front().map(|(due, _)| *due);
            let due = async {
                match next_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = due => {}
            }
            let (batch, again) = self.take();
            if batch.is_empty() {
                continue;
            }
            for (edge, connection) in self.edges.iter().zip(&mut connections) {
                self.purge_edge(edge, connection, &batch, &stop).await;
            }
            let mut pending = self.lock();
            if !again.is_empty() {
                pending
                    .again
                    .push_back((Instant::now() + self.repurge, again));
            }
            self.set_backlog(&pending);
        }
    }

    /// What to purge now: the new keys and the re-purges that are due; and which of
    /// them are to be purged once more (the new ones).
    fn take(&self) -> (Keys, Keys) {
        let mut pending = self.lock();
        let fresh = std::mem::take(&mut pending.now);
        let mut batch = fresh.clone();
        let now = Instant::now();
        while pending.again.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, keys)) = pending.again.pop_front() {
                batch.merge(keys);
            }
        }
        (batch, fresh)
    }

    /// One edge: every header's request, each tried up to [`ATTEMPTS`] times.
    async fn purge_edge(
        &self,
        edge: &Target,
        connection: &mut Option<Connection>,
        keys: &Keys,
        stop: &CancellationToken,
    ) {
        for header in keys.headers() {
            let mut backoff = Backoff::default();
            let mut outcome = "failed";
            for attempt in 1..=ATTEMPTS {
                match send(edge, connection, &header).await {
                    Ok(()) => {
                        outcome = "ok";
                        break;
                    }
                    Err(err) => {
                        *connection = None;
                        tracing::debug!(error = %err, attempt, "edge purge failed");
                        if attempt == ATTEMPTS || !backoff.wait(stop).await {
                            tracing::warn!(error = %err, keys = %header, "edge purge given up; the edge keeps what it has until its max-age");
                            break;
                        }
                    }
                }
            }
            self.metrics
                .edge_purges
                .get_or_create(&vec![("outcome", outcome)])
                .inc();
        }
    }
}

/// One purge request on `connection` (opened if there is none).
async fn send(
    edge: &Target,
    connection: &mut Option<Connection>,
    keys: &str,
) -> Result<(), String> {
    let open = match connection.take() {
        Some(open) if open.is_open() => open,
        _ => edge.connect(DEADLINE).await.map_err(|e| e.to_string())?,
    };
    let conn = connection.insert(open);
    let purge = Method::from_bytes(b"PURGE").expect("a valid method");
    let status = conn
        .send(purge, edge.path(), &[("xkey-purge", keys)], DEADLINE)
        .await
        .map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_names_its_product_and_categories() {
        let mut keys = Keys::default();
        keys.add_change(Some(7), &["lamps".into(), "office".into()], false);
        keys.add_change(None, &["lamps".into()], false);
        assert_eq!(keys.headers(), ["c:lamps c:office categories p7"]);
        keys.add_change(Some(8), &[], true);
        assert_eq!(keys.headers(), ["c:lamps c:office categories p7 p8"]);
        keys.add_change(None, &[], true);
        assert_eq!(keys.headers(), [ALL]);
        keys.add_change(Some(9), &[], false);
        assert_eq!(keys.headers(), [ALL], "everything stays everything");
    }

    #[test]
    fn many_keys_are_split_into_bounded_headers_and_too_many_become_all() {
        let mut keys = Keys::default();
        for id in 0..2_000 {
            keys.add_change(Some(id), &[], false);
        }
        let headers = keys.headers();
        assert!(headers.len() > 1);
        assert!(headers.iter().all(|h| h.len() <= HEADER_BYTES));
        let total: usize = headers.iter().map(|h| h.split(' ').count()).sum();
        assert_eq!(total, 2_000);
        for id in 0..=MAX_KEYS as i64 {
            keys.add_change(Some(id), &[], false);
        }
        assert_eq!(keys.headers(), [ALL]);
    }
}
