//! The storefront face: route → L1 → L2 → replicas → response bytes.
//!
//! A hit on `GET /products/{id}` is answered synchronously, before the handler returns
//! its future ([`Reader::hit`]): it parses the path, finds the document in L1, compares
//! `If-None-Match` with its pre-built `ETag`, and answers with a clone of the cached
//! `Bytes`: no serialization, no lock, no formatting, no allocation beyond the response's
//! header map. Everything else runs in one boxed future ([`Reader::handle`]).
//!
//! The parts, in the order a request meets them:
//!
//! - [`route`]: the path → a [`route::Route`] and its metric label;
//! - this file: the [`Reader`], its dispatch, and the handlers of `GET /products/{id}`,
//!   of the change feed's subscriptions and of the operational routes;
//! - `batch.rs` and `categories.rs`: the handlers of `GET /products?ids=`,
//!   `GET /categories` and `GET /categories/{slug}/products`;
//! - [`token`]: what a read with `Min-Catalog-Token` must include
//!   ([`token::Consistency`]), and the reads that serve it around the caches;
//! - [`sku`]: by-SKU lookups;
//! - [`fill`]: the read through the tiers: L1, one coalesced fill per key from L2 or
//!   a replica, never older than the product's freshness floor;
//! - `db.rs`: the queries on a replica or the primary, retried elsewhere when a
//!   replica fails, with concurrent fills' rows read together in one query;
//! - [`listing`]: `ids=`, `limit=`, cursors, and bodies assembled by concatenation;
//! - [`encoding`]: whether a request's `Accept-Encoding` lets it have gzip;
//! - [`response`]: documents and listings as responses (`ETag`, 304, `Cache-Control`,
//!   `Content-Encoding`);
//! - [`cors`]: the headers browsers need, for configured origins;
//! - [`error`], [`limits`]: what a request can fail with, and its bounds.

mod batch;
mod categories;
pub mod changes;
pub mod cors;
mod db;
pub mod encoding;
pub mod error;
pub mod fill;
pub mod limits;
pub mod listing;
pub mod response;
pub mod route;
pub mod singleflight;
pub mod sku;
pub mod sse;
pub mod token;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response};
use tokio_util::either::Either;

use crate::cache::L1;
use crate::coherence::feed::Feed;
use crate::coherence::floors::Floors;
use crate::document::{Lookup, Tick};
use crate::http::response as plain;
use crate::http::{Draining, StreamBody};
use crate::metrics::{HttpMetrics, Metrics};
use crate::store::redis::L2;
use crate::store::replicas::Databases;
use changes::ChangeFeed;
use cors::Cors;
use db::DbReads;
use error::ReadError;
use http_body_util::BodyExt as _;
use limits::MAX_URI_BYTES;
use route::{ReadRoute, Route};
use singleflight::SingleFlight;
use std::net::IpAddr;
use token::Consistency;

/// This face's OpenAPI description, served at `GET /openapi.json`.
const OPENAPI: &str = include_str!("../../docs/openapi/storefront.json");

/// `text/event-stream`.
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");

/// The read-your-writes header: a `Catalog-Token` a write answered.
pub const MIN_CATALOG_TOKEN: HeaderName = HeaderName::from_static("min-catalog-token");

/// What a request came to, with the metric label of its route.
type Outcome = Result<(ReadRoute, Response<Full<Bytes>>), (ReadRoute, ReadError)>;

/// What the invalidation consumer shares with the read path.
#[derive(Debug, Clone)]
pub struct Freshness {
    /// Per-product freshness floors.
    pub floors: Floors,
    /// WAL position up to which every write's invalidation has been applied here.
    pub applied: tokio::sync::watch::Receiver<u64>,
    /// Whether the invalidation feed is alive; while it is silent, fills skip L2.
    pub feed: Feed,
}

/// How the reader bounds its work and describes its answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderSettings {
    /// `Cache-Control` of documents and listings.
    pub caching: HttpCaching,
    /// Deadline of each database call (`CATALOG_DB_TIMEOUT_MS`).
    pub db_timeout: Duration,
    /// Deadline of a request from head to answer (`CATALOG_REQUEST_TIMEOUT_MS`).
    pub request_timeout: Duration,
    /// Token reads that may go around the caches at once (`CATALOG_TOKEN_BYPASS_MAX`).
    pub token_bypass_max: usize,
    /// When a cached document is refreshed in the background, and when it stops being
    /// served but for errors.
    pub ttl: DocumentTtl,
    /// Which browser origins may read the API (`CATALOG_CORS_ORIGINS`); `None`: no CORS.
    pub cors: Option<Cors>,
}

/// The two ages of a cached document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentTtl {
    /// Past this, a hit is served and the document refreshed in the background
    /// (`CATALOG_L1_SOFT_TTL_SECS`).
    pub soft: Duration,
    /// Past this, it is refilled before it is served; the old copy is served (with an
    /// `Age` header) only when no database answers (`CATALOG_L1_TTL_SECS`).
    pub hard: Duration,
}

/// Documents queued for a refresh-ahead; more are dropped until the queue drains.
const REFRESH_QUEUE: usize = 1024;

/// How documents and listings may be cached downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpCaching {
    /// `Cache-Control: max-age`, seconds.
    pub max_age_secs: u32,
    /// `Cache-Control: stale-while-revalidate`, seconds.
    pub stale_while_revalidate_secs: u32,
    /// `Cache-Control: stale-if-error`, seconds: as long as this reader keeps a copy
    /// to serve when no database answers.
    pub stale_if_error_secs: u64,
    /// Whether documents and listings carry surrogate keys (`CATALOG_SURROGATE_KEYS`).
    pub surrogate_keys: bool,
    /// Whether documents and listings are sent in gzip to clients that accept it
    /// (`CATALOG_GZIP`).
    pub gzip: bool,
}

/// Everything the storefront face needs; shared by all connections.
#[derive(Debug)]
pub struct Reader {
    l1: L1,
    l2: Option<L2>,
    floors: Floors,
    /// WAL position up to which every write's invalidation has been applied here.
    applied: tokio::sync::watch::Receiver<u64>,
    feed: Feed,
    flight: SingleFlight<Result<Lookup, ReadError>>,
    db: Arc<Databases>,
    /// The queries that read products and listings from a replica (or the primary).
    reads: DbReads,
    metrics: Arc<Metrics>,
    http: HttpMetrics<ReadRoute>,
    /// `Cache-Control` of documents and listings, built once from the configuration.
    cache_control: HeaderValue,
    /// Whether documents and listings carry surrogate keys for an edge cache.
    surrogate_keys: bool,
    /// Whether documents and listings are sent in gzip to clients that accept it.
    gzip: bool,
    /// Deadline of each request that is not an L1 hit.
    request_timeout: Duration,
    /// Permits for token reads around the caches, so tokens cannot pile reads onto
    /// the primary.
    bypasses: tokio::sync::Semaphore,
    /// Permits for background write-backs to L2.
    write_backs: Arc<tokio::sync::Semaphore>,
    ttl: DocumentTtl,
    cors: Option<Cors>,
    /// Set when shutdown begins: `/readyz` turns 503.
    draining: Draining,
    /// `/metrics` is served by its own listener, not here.
    metrics_elsewhere: bool,
    /// The live change feed (`GET /changes`), if this reader has one.
    changes: Option<Arc<ChangeFeed>>,
    /// Where hits queue documents past the soft TTL for [`Reader::refresh_ahead_loop`].
    refresh_queue: tokio::sync::mpsc::Sender<i64>,
    /// The queue's other end, taken by the refresh task.
    refresh_rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<i64>>>,
}

impl Reader {
    /// Assembles the face from its tiers.
    pub fn new(
        l1: L1,
        l2: Option<L2>,
        freshness: Freshness,
        db: Arc<Databases>,
        metrics: Arc<Metrics>,
        settings: ReaderSettings,
    ) -> Self {
        let (refresh_queue, refresh_rx) = tokio::sync::mpsc::channel(REFRESH_QUEUE);
        Self {
            l1,
            l2,
            floors: freshness.floors,
            applied: freshness.applied,
            feed: freshness.feed,
            flight: SingleFlight::default(),
            reads: DbReads::new(Arc::clone(&db), Arc::clone(&metrics), settings.db_timeout),
            db,
            http: HttpMetrics::new(&metrics),
            metrics,
            cache_control: response::cache_control(settings.caching),
            surrogate_keys: settings.caching.surrogate_keys,
            gzip: settings.caching.gzip,
            request_timeout: settings.request_timeout,
            bypasses: tokio::sync::Semaphore::new(settings.token_bypass_max),
            write_backs: Arc::new(tokio::sync::Semaphore::new(fill::WRITE_BACKS)),
            ttl: settings.ttl,
            cors: settings.cors,
            draining: Draining::default(),
            metrics_elsewhere: false,
            changes: None,
            refresh_queue,
            refresh_rx: std::sync::Mutex::new(Some(refresh_rx)),
        }
    }

    /// This reader with the rows of concurrent single-product fills read in shared
    /// queries of at most `max_batch` ids (`CATALOG_DB_COALESCE`; 0: one query each).
    /// Spawns the batch task, so it is called within the runtime.
    #[must_use]
    pub fn coalescing_db_reads(mut self, max_batch: usize) -> Self {
        self.reads = self.reads.coalescing(max_batch);
        self
    }

    /// Serves `feed` at `GET /changes`.
    pub fn with_changes(mut self, feed: Arc<ChangeFeed>) -> Self {
        self.changes = Some(feed);
        self
    }

    /// `GET /changes`: a subscription's head, through [`Reader::finish`] like every
    /// answer (counted, CORS), with the feed's body; or the problem that refused it.
    fn changes(
        &self,
        request: &Request<hyper::body::Incoming>,
        client: IpAddr,
    ) -> Response<StreamBody> {
        let started = Instant::now();
        let subscribed = match (&self.changes, request.method()) {
            (None, _) => Err(ReadError::RouteNotFound),
            (Some(_), method) if method != Method::GET => Err(ReadError::FeedMethodNotAllowed),
            (Some(_), _)
                if request
                    .uri()
                    .path_and_query()
                    .map_or(0, |pq| pq.as_str().len())
                    > MAX_URI_BYTES =>
            {
                Err(ReadError::UriTooLong)
            }
            (Some(feed), _) => changes::Filter::parse(request.uri().query()).and_then(|filter| {
                let last = request
                    .headers()
                    .get("last-event-id")
                    .and_then(|v| v.to_str().ok());
                feed.subscribe(filter, last, client)
                    .map_err(|refused| match refused {
                        changes::Refused::Full => ReadError::FeedFull,
                        changes::Refused::TooManyFromClient => ReadError::FeedClientLimit,
                    })
            }),
        };
        let (outcome, body) = match subscribed {
            Ok(body) => {
                let head = plain::no_store(hyper::StatusCode::OK, EVENT_STREAM, Bytes::new());
                (Ok((ReadRoute::Changes, head)), Some(body))
            }
            Err(error) => (Err((ReadRoute::Changes, error)), None),
        };
        let response = self.finish(started, request.headers(), outcome);
        match body {
            Some(events) => {
                let (parts, _) = response.into_parts();
                Response::from_parts(parts, events.boxed())
            }
            None => response.map(|full| full.map_err(|never| match never {}).boxed()),
        }
    }

    /// Leaves `/metrics` to the metrics listener (`CATALOG_METRICS_ADDR`): 404 here.
    pub fn metrics_elsewhere(mut self) -> Self {
        self.metrics_elsewhere = true;
        self
    }

    /// The L1 this reader serves from (for the metrics listener's exposition).
    pub fn l1(&self) -> &L1 {
        &self.l1
    }

    /// Set when shutdown begins, to turn readiness off first.
    pub fn draining(&self) -> &Draining {
        &self.draining
    }

    /// Answers one request (the body of a GET is never read).
    pub async fn handle<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        if let Some(cors) = &self.cors
            && let Some(preflight) = cors.preflight(request.method(), request.headers())
        {
            let route =
                Route::parse(request.uri().path()).map_or(ReadRoute::Unmatched, Route::label);
            self.http
                .route(route)
                .record(preflight.status().as_u16(), started.elapsed());
            return preflight;
        }
        let outcome = match Self::accept(request) {
            Ok(route) => tokio::time::timeout(self.request_timeout, self.dispatch(route, request))
                .await
                .unwrap_or(Err(ReadError::Timeout))
                .map(|response| (route.label(), response))
                .map_err(|error| (route.label(), error)),
            Err(refused) => Err(refused),
        };
        self.finish(started, request.headers(), outcome)
    }

    /// The hit path, synchronous: a `GET /products/{id}` without a token, answered
    /// from L1; `None` (nothing done, nothing counted) when L1 does not hold the id or
    /// the request is anything else.
    pub fn hit<B>(&self, request: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let started = Instant::now();
        let Ok(Route::Product(id)) = Self::accept(request) else {
            return None;
        };
        if request.headers().contains_key(MIN_CATALOG_TOKEN) {
            return None;
        }
        let now = Tick::of(started);
        let fill::InL1::Fresh(lookup) = self.in_l1(id, now) else {
            return None;
        };
        let outcome = self
            .product_response(id, lookup, request.headers(), now)
            .map(|response| (ReadRoute::Product, response))
            .map_err(|error| (ReadRoute::Product, error));
        Some(self.finish(started, request.headers(), outcome))
    }

    /// The route of a request, if its method and size are allowed.
    fn accept<B>(request: &Request<B>) -> Result<Route<'_>, (ReadRoute, ReadError)> {
        let uri = request.uri();
        let route = Route::parse(uri.path()).map_err(|e| (ReadRoute::Unmatched, e))?;
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Err((route.label(), ReadError::MethodNotAllowed));
        }
        if uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > MAX_URI_BYTES {
            return Err((route.label(), ReadError::UriTooLong));
        }
        Ok(route)
    }

    /// Turns an outcome into the response, counting it under its route.
    fn finish(
        &self,
        started: Instant,
        request: &HeaderMap,
        outcome: Outcome,
    ) -> Response<Full<Bytes>> {
        let (route, mut response) = match outcome {
            Ok(answered) => answered,
            Err((route, error)) => {
                if let ReadError::Database(_) | ReadError::Render(_) = &error {
                    tracing::warn!(%error, "read failed");
                }
                (route, error.problem().response())
            }
        };
        if let Some(cors) = &self.cors {
            cors.decorate(request, &mut response);
        }
        self.http
            .route(route)
            .record(response.status().as_u16(), started.elapsed());
        response
    }

    async fn dispatch<B>(
        &self,
        route: Route<'_>,
        request: &Request<B>,
    ) -> Result<Response<Full<Bytes>>, ReadError> {
        let headers = request.headers();
        // A token read that goes around the caches holds a bypass permit until it ends.
        let (at, _bypass) = match headers.get(MIN_CATALOG_TOKEN) {
            None => (Consistency::Cached, None),
            Some(token) => Box::pin(self.consistency_for(token)).await?,
        };
        let mut answer = self.route(route, request, at).await;
        if let Ok(response) = &mut answer
            && headers.contains_key(MIN_CATALOG_TOKEN)
        {
            response::not_stored(response);
        }
        answer
    }

    async fn route<B>(
        &self,
        route: Route<'_>,
        request: &Request<B>,
        at: Consistency,
    ) -> Result<Response<Full<Bytes>>, ReadError> {
        let headers = request.headers();
        let query = request.uri().query();
        match route {
            Route::Product(id) => self.product(id, headers, at).await,
            // The other routes are boxed to keep the product route's future small.
            Route::ProductBySku(sku) => Box::pin(self.product_by_sku(sku, headers, at)).await,
            Route::Batch => Box::pin(self.batch(query, headers, at)).await,
            Route::Categories => Box::pin(self.categories(headers)).await,
            Route::CategoryProducts(slug) => {
                Box::pin(self.category_products(slug, query, headers, at)).await
            }
            Route::Healthz => Ok(plain::healthy()),
            Route::Readyz => self.readyz(),
            Route::Metrics if self.metrics_elsewhere => Err(ReadError::RouteNotFound),
            Route::Metrics => Ok(self.metrics_text()),
            Route::OpenApi => Ok(plain::openapi(OPENAPI)),
            // Answered by `Handler::stream` before a request gets here.
            Route::Changes => Err(ReadError::RouteNotFound),
        }
    }

    fn metrics_text(&self) -> Response<Full<Bytes>> {
        self.l1.sync();
        plain::metrics(self.metrics.render(Some(self.l1.usage())))
    }

    /// Ready while some database can serve; a silent invalidation feed is said in the
    /// body (the reader still serves, with caching reduced).
    fn readyz(&self) -> Result<Response<Full<Bytes>>, ReadError> {
        if self.draining.is_draining() {
            return Err(ReadError::ShuttingDown);
        }
        if !self.db.ready() {
            return Err(ReadError::NoDatabase);
        }
        if !self.feed.is_silent() {
            return Ok(plain::ready());
        }
        let detail = match self.feed.catching_up_to() {
            Some(position) => format!(
                "ready; invalidation feed heard again, catching up to the primary's position \
                 {}: entries live at most {} ms, Redis skipped\n",
                crate::store::replicas::format_lsn(position),
                self.feed.limit().as_millis()
            ),
            None => format!(
                "ready; invalidation feed silent for {} ms (limit {} ms): L1 flushed, entries \
                 live at most the limit, Redis skipped\n",
                self.feed.quiet_for().as_millis(),
                self.feed.limit().as_millis()
            ),
        };
        Ok(plain::no_store(hyper::StatusCode::OK, plain::TEXT, detail))
    }

    async fn product(
        &self,
        id: i64,
        headers: &HeaderMap,
        at: Consistency,
    ) -> Result<Response<Full<Bytes>>, ReadError> {
        let lookup = match at {
            Consistency::Cached => self.l1_or_fill(id).await?,
            Consistency::AtLeast(_) => Box::pin(self.product_at(id, at)).await?,
        };
        self.product_response(id, lookup, headers, Tick::now())
    }

    fn product_response(
        &self,
        id: i64,
        lookup: Lookup,
        headers: &HeaderMap,
        now: Tick,
    ) -> Result<Response<Full<Bytes>>, ReadError> {
        match lookup {
            Lookup::Found(doc) => Ok(self.document_response(&doc, headers, now)),
            Lookup::Gone { .. } | Lookup::Unknown => Err(ReadError::ProductNotFound(id)),
        }
    }
}

impl crate::http::Handler for Reader {
    /// A hit is answered before this returns, in a ready future of a few words; anything
    /// else gets one boxed future, so the hit path neither allocates nor moves the
    /// machinery of misses (Redis, sqlx, single-flight).
    fn respond(
        &self,
        request: Request<hyper::body::Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send {
        match self.hit(&request) {
            Some(response) => Either::Left(std::future::ready(response)),
            None => Either::Right(Box::pin(async move { self.handle(&request).await })),
        }
    }

    fn stream(
        &self,
        request: &Request<hyper::body::Incoming>,
        client: IpAddr,
    ) -> Option<Response<StreamBody>> {
        // With CORS on, a preflight of the feed is answered like any other (by `respond`).
        let preflight = request.method() == Method::OPTIONS && self.cors.is_some();
        (request.uri().path() == "/changes" && !preflight).then(|| self.changes(request, client))
    }
}
