//! The live change feed, `GET /changes`: every change this reader's consumer applies,
//! as Server-Sent Events ([`super::sse`]), to any number of subscribers.
//!
//! One consumer per reader feeds them all (no Redis connection per subscriber): each
//! change is encoded once and handed to a bounded broadcast ring that every subscriber's
//! task reads from its own position. A subscriber that falls a whole ring behind (it
//! reads too slowly) gets a `reset` event and is dropped, counted in
//! `catalog_changes_dropped_total`; nothing is buffered for it without bound.
//!
//! `Last-Event-ID` resumes: the changes after that position are read back from the
//! Redis stream (on the reader's shared client) while the subscriber already holds its
//! place in the ring, then the ring takes over, with no change missed or sent twice. A
//! position from another epoch, one whose next change the stream no longer retains, one
//! more than [`MAX_REPLAY`] changes back, or any position without Redis, gets a `reset`
//! first. A gap or a reset of the stream at the reader, or an operator's purge of
//! everything, sends every subscriber a `reset`.
//!
//! Limits: subscribers per reader and per client address (503 and 429 beyond), filters
//! of at most [`MAX_PRODUCTS`] products and [`MAX_CATEGORIES`] categories, a heartbeat
//! comment every `heartbeat`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::error::ReadError;
use super::sse::{self, EventBody, Position};
use crate::coherence::stream::Invalidation;
use crate::http::parse::{parse_id, percent_decode, query_param};
use crate::metrics::Metrics;

/// Most products one subscription may name.
pub const MAX_PRODUCTS: usize = 100;
/// Most categories one subscription may name.
pub const MAX_CATEGORIES: usize = 20;
/// Most changes a resume reads back from the stream before it gives up with a reset.
pub const MAX_REPLAY: usize = 10_000;
/// Entries per `XRANGE` of a resume.
const REPLAY_PAGE: u64 = 500;
/// While a subscriber's connection takes nothing, how often its task looks whether the
/// ring has run a whole buffer past it.
const BEHIND_CHECK: Duration = Duration::from_millis(50);

/// What became of a frame handed to a subscriber's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Sent,
    /// The client went away.
    Gone,
    /// The client took nothing while the ring ran a whole buffer past it.
    Behind,
}

/// How many subscribers a reader keeps, and how often they hear from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedSettings {
    /// Subscribers at once on this reader (`CATALOG_CHANGES_MAX_SUBSCRIBERS`).
    pub max_subscribers: usize,
    /// Subscribers at once from one client address (`CATALOG_CHANGES_MAX_PER_CLIENT`).
    pub max_per_client: usize,
    /// Changes the ring holds; a subscriber further behind is dropped
    /// (`CATALOG_CHANGES_BUFFER`).
    pub buffer: usize,
    /// Time between heartbeat comments (`CATALOG_CHANGES_HEARTBEAT_MS`).
    pub heartbeat: Duration,
}

/// The Redis stream a resume reads back from.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The reader's shared client (L2's).
    pub client: Client,
    /// `<prefix>{invalidations}`.
    pub stream_key: String,
}

/// What the ring carries.
#[derive(Debug, Clone)]
enum Message {
    Change(Arc<Change>),
    /// Every subscriber refetches: the reader missed changes, or all were purged.
    Reset(&'static str),
}

/// One change, encoded once.
#[derive(Debug)]
struct Change {
    seq: i64,
    product_id: Option<i64>,
    categories: Vec<String>,
    frame: Bytes,
}

impl Change {
    /// `entry`, at stream entry `entry_id`, with its frame.
    fn of(entry: &Invalidation, entry_id: &str) -> Self {
        let position = Position {
            epoch: entry.epoch.clone(),
            seq: entry.seq,
            entry: entry_id.to_owned(),
        };
        Self {
            seq: entry.seq,
            product_id: entry.product_id,
            categories: entry.categories.clone(),
            frame: sse::change(entry, &position),
        }
    }
}

/// What a subscriber asked for: everything, or the changes of some products and/or
/// categories.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    products: Vec<i64>,
    categories: Vec<String>,
}

impl Filter {
    /// From `?products=1,2&categories=a,b`.
    pub fn parse(query: Option<&str>) -> Result<Self, ReadError> {
        let list = |name: &str| -> Result<Vec<String>, ReadError> {
            let Some(raw) = query_param(query, name) else {
                return Ok(Vec::new());
            };
            let raw = percent_decode(raw).ok_or_else(|| {
                ReadError::InvalidFilter(format!("{name}: bad percent-encoding").into())
            })?;
            let mut items: Vec<String> = raw.split(',').map(|s| s.trim().to_owned()).collect();
            items.sort_unstable();
            items.dedup();
            Ok(items)
        };
        let products = list("products")?
            .iter()
            .map(|p| {
                parse_id(p).map_err(|_| {
                    ReadError::InvalidFilter(format!("{p:?} is not a product id").into())
                })
            })
            .collect::<Result<Vec<i64>, _>>()?;
        let categories = list("categories")?;
        if let Some(bad) = categories.iter().find(|c| !is_slug(c)) {
            return Err(ReadError::InvalidFilter(
                format!("{bad:?} is not a category slug").into(),
            ));
        }
        if products.len() > MAX_PRODUCTS || categories.len() > MAX_CATEGORIES {
            return Err(ReadError::InvalidFilter(
                format!("at most {MAX_PRODUCTS} products and {MAX_CATEGORIES} categories").into(),
            ));
        }
        Ok(Self {
            products,
            categories,
        })
    }

    fn matches(&self, change: &Change) -> bool {
        (self.products.is_empty() && self.categories.is_empty())
            || change
                .product_id
                .is_some_and(|id| self.products.binary_search(&id).is_ok())
            || change
                .categories
                .iter()
                .any(|c| self.categories.binary_search(c).is_ok())
    }
}

fn is_slug(raw: &str) -> bool {
    (1..=100).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The reader has as many subscribers as it keeps.
    Full,
    /// This client address has as many as it may.
    TooManyFromClient,
}

/// The feed of one reader.
#[derive(Debug)]
pub struct ChangeFeed {
    ring: broadcast::Sender<Message>,
    settings: FeedSettings,
    subscribers: AtomicUsize,
    clients: Mutex<HashMap<IpAddr, usize>>,
    replay: Option<Replay>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
}

impl ChangeFeed {
    /// A feed with no subscribers yet.
    pub fn new(settings: FeedSettings, replay: Option<Replay>, metrics: Arc<Metrics>) -> Arc<Self> {
        let (ring, _) = broadcast::channel(settings.buffer.max(1));
        Arc::new(Self {
            ring,
            settings,
            subscribers: AtomicUsize::new(0),
            clients: Mutex::default(),
            replay,
            stop: CancellationToken::new(),
            metrics,
        })
    }

    /// Hands an applied change (at stream entry `entry_id`) to the subscribers.
    pub fn publish(&self, entry: &Invalidation, entry_id: &str) {
        if entry.heartbeat || self.ring.receiver_count() == 0 {
            return;
        }
        if entry.product_id.is_none() && entry.categories.is_empty() && entry.purge {
            let _ = self
                .ring
                .send(Message::Reset("every cached product was purged"));
            return;
        }
        let change = Change::of(entry, entry_id);
        let _ = self.ring.send(Message::Change(Arc::new(change)));
    }

    /// Tells every subscriber to refetch: this reader missed changes.
    pub fn reset(&self, reason: &'static str) {
        let _ = self.ring.send(Message::Reset(reason));
    }

    /// Ends every subscription (shutdown): their bodies end, so connections drain.
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// Opens a subscription for `client` with `filter`, resuming after `last_event_id`:
    /// the body its task feeds.
    pub fn subscribe(
        self: &Arc<Self>,
        filter: Filter,
        last_event_id: Option<&str>,
        client: IpAddr,
    ) -> Result<EventBody, Refused> {
        let slot = Slot::take(self, client)?;
        // The ring position is taken now, before any read-back, so nothing published
        // from here on is missed.
        let live = self.ring.subscribe();
        let resume = last_event_id.map(Position::parse);
        let (tx, body) = EventBody::channel();
        let feed = Arc::clone(self);
        tokio::spawn(async move {
            let _slot = slot;
            feed.serve(filter, resume, live, tx).await;
        });
        Ok(body)
    }

    /// One subscriber's task: the read-back, then the ring, heartbeats between.
    async fn serve(
        &self,
        filter: Filter,
        resume: Option<Option<Position>>,
        mut live: broadcast::Receiver<Message>,
        tx: mpsc::Sender<Bytes>,
    ) {
        let mut last_seq = match resume {
            None => None,
            Some(position) => match self.read_back(&filter, position, &tx, &live).await {
                Ok(Some(seq)) => Some(seq),
                Ok(None) => {
                    let reset = sse::reset("the position cannot be resumed");
                    match self.deliver(&tx, reset, &live).await {
                        Delivery::Sent => None,
                        Delivery::Gone => return,
                        Delivery::Behind => return self.fell_behind(&tx),
                    }
                }
                Err(Delivery::Behind) => return self.fell_behind(&tx),
                Err(_) => return,
            },
        };
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.tick().await;
        loop {
            let frame = tokio::select! {
                () = self.stop.cancelled() => return,
                _ = heartbeat.tick() => sse::KEEPALIVE,
                message = live.recv() => match message {
                    Ok(Message::Change(change)) => {
                        if last_seq.is_some_and(|seq| change.seq <= seq) || !filter.matches(&change) {
                            continue;
                        }
                        last_seq = Some(change.seq);
                        change.frame.clone()
                    }
                    Ok(Message::Reset(reason)) => sse::reset(reason),
                    Err(broadcast::error::RecvError::Lagged(_)) => return self.fell_behind(&tx),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            match self.deliver(&tx, frame, &live).await {
                Delivery::Sent => {}
                Delivery::Gone => return,
                Delivery::Behind => return self.fell_behind(&tx),
            }
        }
    }

    /// Hands `frame` to the connection, unless the client takes nothing while the ring
    /// runs a whole buffer past this subscriber.
    async fn deliver(
        &self,
        tx: &mpsc::Sender<Bytes>,
        frame: Bytes,
        live: &broadcast::Receiver<Message>,
    ) -> Delivery {
        let send = tx.send(frame);
        tokio::pin!(send);
        loop {
            tokio::select! {
                sent = &mut send => {
                    return match sent {
                        Ok(()) => {
                            self.metrics.changes_delivered.inc();
                            Delivery::Sent
                        }
                        Err(_) => Delivery::Gone,
                    };
                }
                () = tokio::time::sleep(BEHIND_CHECK) => {
                    if live.len() >= self.settings.buffer {
                        return Delivery::Behind;
                    }
                }
            }
        }
    }

    /// Drops a subscriber that could not keep up: a `reset` if its connection still has
    /// room for one, and the end of its stream.
    fn fell_behind(&self, tx: &mpsc::Sender<Bytes>) {
        self.metrics.changes_dropped.inc();
        let _ = tx.try_send(sse::reset("the subscriber fell behind"));
    }

    /// Sends the changes after `from` that the stream still holds: the last sequence
    /// number sent (or `from`'s), or `None` when `from` cannot be resumed; `Err` when the
    /// client went away or fell behind meanwhile.
    async fn read_back(
        &self,
        filter: &Filter,
        from: Option<Position>,
        tx: &mpsc::Sender<Bytes>,
        live: &broadcast::Receiver<Message>,
    ) -> Result<Option<i64>, Delivery> {
        let (Some(from), Some(replay)) = (from, self.replay.as_ref()) else {
            return Ok(None);
        };
        let mut after = from.entry.clone();
        let mut expected = from.seq + 1;
        let mut read = 0;
        loop {
            let start = format!("({after}");
            let page: Result<Vec<(String, HashMap<String, String>)>, _> = replay
                .client
                .xrange(&replay.stream_key, start.as_str(), "+", Some(REPLAY_PAGE))
                .await;
            let Ok(page) = page else {
                return Ok(None);
            };
            let Some((last_id, _)) = page.last() else {
                return Ok(Some(expected - 1));
            };
            let last_id = last_id.clone();
            for (id, fields) in &page {
                let Some(entry) = Invalidation::parse(fields) else {
                    return Ok(None);
                };
                if entry.epoch != from.epoch || entry.seq > expected {
                    return Ok(None); // another epoch, or changes trimmed away
                }
                if entry.seq < expected {
                    continue; // a duplicate the relay published again
                }
                expected += 1;
                read += 1;
                if read > MAX_REPLAY {
                    return Ok(None);
                }
                if entry.heartbeat || entry.purge && entry.product_id.is_none() {
                    continue;
                }
                let change = Change::of(&entry, id);
                if filter.matches(&change) {
                    match self.deliver(tx, change.frame, live).await {
                        Delivery::Sent => {}
                        other => return Err(other),
                    }
                }
            }
            after = last_id;
        }
    }
}

/// A subscriber's place in the limits, given back when its task ends.
#[derive(Debug)]
struct Slot {
    feed: Arc<ChangeFeed>,
    client: IpAddr,
}

impl Slot {
    fn take(feed: &Arc<ChangeFeed>, client: IpAddr) -> Result<Self, Refused> {
        let mut clients = feed.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if feed.subscribers.load(Ordering::Relaxed) >= feed.settings.max_subscribers {
            return Err(Refused::Full);
        }
        let mine = clients.entry(client).or_insert(0);
        if *mine >= feed.settings.max_per_client {
            return Err(Refused::TooManyFromClient);
        }
        *mine += 1;
        let now = feed.subscribers.fetch_add(1, Ordering::Relaxed) + 1;
        feed.metrics.changes_subscribers.set(now as i64);
        Ok(Self {
            feed: Arc::clone(feed),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut clients = self
            .feed
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(mine) = clients.get_mut(&self.client) {
            *mine -= 1;
            if *mine == 0 {
                clients.remove(&self.client);
            }
        }
        let now = self.feed.subscribers.fetch_sub(1, Ordering::Relaxed) - 1;
        self.feed.metrics.changes_subscribers.set(now as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_bounded_and_match_products_or_categories() {
        let filter = Filter::parse(Some("products=3,1,3&categories=lamps")).unwrap();
        let change = |product_id, categories: &[&str]| Change {
            seq: 1,
            product_id,
            categories: categories.iter().map(|c| c.to_string()).collect(),
            frame: Bytes::new(),
        };
        assert!(filter.matches(&change(Some(1), &[])));
        assert!(filter.matches(&change(Some(9), &["desks", "lamps"])));
        assert!(filter.matches(&change(None, &["lamps"])));
        assert!(!filter.matches(&change(Some(9), &["desks"])));
        assert!(Filter::parse(None).unwrap().matches(&change(Some(9), &[])));
        let many: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
        for bad in [
            "products=0".to_owned(),
            "products=x".to_owned(),
            "categories=Lamps".to_owned(),
            "categories=a%2Fb".to_owned(),
            format!("products={}", many.join(",")),
        ] {
            assert!(
                matches!(Filter::parse(Some(&bad)), Err(ReadError::InvalidFilter(_))),
                "{bad}"
            );
        }
    }
}
