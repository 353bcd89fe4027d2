//! The storefront face: route → L1 → L2 → replicas → response bytes.
//!
//! A hit on `GET /products/{id}` is answered synchronously, before the handler returns
//! its future ([`Reader::hit`]): it parses the path, finds the document in L1, compares
//! `If-None-Match` with its pre-built `ETag`, and answers with a clone of the cached
//! `Bytes`: no serialization, no lock, no formatting, no allocation beyond the response's
//! header map. Everything else runs in one boxed future ([`Reader::handle`]). A miss
//! goes through one fill per key (concurrent misses wait on it): Redis first, then a
//! healthy replica (or the primary); the result is cached in L1 and written back to
//! Redis by version. Unknown ids are cached briefly as negative entries. Batches and
//! category pages are assembled by concatenating cached bodies.
//!
//! Every fill respects the product's freshness floor (raised by the invalidation
//! consumer): a Redis value or replica row older than the floor is not used, the row is
//! read from the primary instead, and L1 stores a fill only if the floor still allows it.
//!
//! A read carrying `Min-Catalog-Token: T` (the `Catalog-Token` of a write) is served
//! only from state that includes that commit: from the caches when this reader's
//! watermark (published by the invalidation consumer) has passed T, after waiting up
//! to [`TOKEN_WAIT`] for it; otherwise from a replica that has replayed T, or the primary.

pub mod error;
pub mod listing;
pub mod route;
pub mod singleflight;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderMap, HeaderName, HeaderValue, IF_NONE_MATCH,
};
use hyper::{Method, Request, Response, StatusCode};
use sqlx::PgPool;
use tokio_util::either::Either;

use crate::cache::{Key, L1};
use crate::coherence::floors::Floors;
use crate::document::{Document, Lookup, ProductRow};
use crate::metrics::Metrics;
use crate::store::catalog;
use crate::store::redis::L2;
use crate::store::replicas::{Databases, Target};
use error::ReadError;
use route::Route;
use singleflight::SingleFlight;

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const PROMETHEUS: HeaderValue = HeaderValue::from_static("text/plain; version=0.0.4");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// The read-your-writes header: a `Catalog-Token` a write answered.
pub const MIN_CATALOG_TOKEN: HeaderName = HeaderName::from_static("min-catalog-token");

/// How long a token read waits for the watermark before going around the caches.
pub const TOKEN_WAIT: Duration = Duration::from_millis(50);

/// What a request came to, with the metric index of its route.
type Outcome = Result<(usize, Response<Full<Bytes>>), (usize, ReadError)>;

/// A boxed query future, so one retry loop can run any query on any pool.
type Query<'p, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'p>>;

/// What the invalidation consumer shares with the read path.
#[derive(Debug, Clone)]
pub struct Freshness {
    /// Per-product freshness floors.
    pub floors: Floors,
    /// WAL position up to which every write's invalidation has been applied here.
    pub applied: tokio::sync::watch::Receiver<u64>,
}

/// Everything the storefront face needs; shared by all connections.
#[derive(Debug)]
pub struct Reader {
    l1: L1,
    l2: Option<L2>,
    floors: Floors,
    /// WAL position up to which every write's invalidation has been applied here.
    applied: tokio::sync::watch::Receiver<u64>,
    flight: SingleFlight<Result<Lookup, ReadError>>,
    db: Arc<Databases>,
    metrics: Arc<Metrics>,
    /// `Cache-Control` of documents and listings, built once from the configuration.
    cache_control: HeaderValue,
}

impl Reader {
    /// Assembles the face from its tiers.
    pub fn new(
        l1: L1,
        l2: Option<L2>,
        freshness: Freshness,
        db: Arc<Databases>,
        metrics: Arc<Metrics>,
        max_age_secs: u32,
        stale_while_revalidate_secs: u32,
    ) -> Self {
        let cache_control = HeaderValue::try_from(format!(
            "public, max-age={max_age_secs}, stale-while-revalidate={stale_while_revalidate_secs}"
        ))
        .expect("digits form a valid header value");
        Self {
            l1,
            l2,
            floors: freshness.floors,
            applied: freshness.applied,
            flight: SingleFlight::default(),
            db,
            metrics,
            cache_control,
        }
    }

    /// Answers one request (the body of a GET is never read).
    pub async fn handle<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let outcome = match Self::accept(request) {
            Ok((route, index)) => self
                .dispatch(route, request)
                .await
                .map(|response| (index, response))
                .map_err(|error| (index, error)),
            Err(refused) => Err(refused),
        };
        self.finish(started, outcome)
    }

    /// The hit path, synchronous: a `GET /products/{id}` without a token, answered
    /// from L1; `None` (nothing done, nothing counted) when L1 does not hold the id or
    /// the request is anything else.
    pub fn hit<B>(&self, request: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let started = Instant::now();
        let Ok((Route::Product(id), index)) = Self::accept(request) else {
            return None;
        };
        if request.headers().contains_key(MIN_CATALOG_TOKEN) {
            return None;
        }
        let lookup = self.cached(id)?;
        let outcome = self
            .product_response(id, lookup, request.headers())
            .map(|response| (index, response))
            .map_err(|error| (index, error));
        Some(self.finish(started, outcome))
    }

    /// The route of a request, with its metric index, if its method and size are allowed.
    fn accept<B>(request: &Request<B>) -> Result<(Route<'_>, usize), (usize, ReadError)> {
        let uri = request.uri();
        let route = Route::parse(uri.path()).map_err(|e| (route::UNMATCHED, e))?;
        let index = route.index();
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Err((index, ReadError::MethodNotAllowed));
        }
        if uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > route::MAX_URI_BYTES {
            return Err((index, ReadError::UriTooLong));
        }
        Ok((route, index))
    }

    /// Turns an outcome into the response, counting it under its route.
    fn finish(&self, started: Instant, outcome: Outcome) -> Response<Full<Bytes>> {
        let (route, response) = match outcome {
            Ok((route, response)) => (route, response),
            Err((route, error)) => {
                if let ReadError::Database(detail) | ReadError::Render(detail) = &error {
                    tracing::warn!(%detail, "read failed");
                }
                (route, error.problem().response())
            }
        };
        self.metrics
            .http
            .record(route, response.status().as_u16(), started.elapsed());
        response
    }

    async fn dispatch<B>(
        &self,
        route: Route<'_>,
        request: &Request<B>,
    ) -> Result<Response<Full<Bytes>>, ReadError> {
        let headers = request.headers();
        let query = request.uri().query();
        let at = match headers.get(MIN_CATALOG_TOKEN) {
            None => None,
            Some(token) => Box::pin(self.token_target(token)).await?,
        };
        match route {
            Route::Product(id) => self.product(id, headers, at).await,
            // The other routes are boxed to keep the product route's future small.
            Route::ProductBySku(sku) => Box::pin(self.product_by_sku(sku, headers, at)).await,
            Route::Batch => Box::pin(self.batch(query, at)).await,
            Route::Categories => Box::pin(self.categories()).await,
            Route::CategoryProducts(slug) => {
                Box::pin(self.category_products(slug, query, at)).await
            }
            Route::Healthz => Ok(plain(StatusCode::OK, TEXT, Bytes::from_static(b"ok\n"))),
            Route::Readyz => self.readyz(),
            Route::Metrics => Box::pin(self.metrics_text()).await,
        }
    }

    async fn metrics_text(&self) -> Result<Response<Full<Bytes>>, ReadError> {
        self.l1.sync();
        let text = self.metrics.render(Some(self.l1.usage()));
        Ok(plain(StatusCode::OK, PROMETHEUS, Bytes::from(text)))
    }

    /// For a read with `Min-Catalog-Token`: `None` when the caches include the token's
    /// commit (now or after a short wait), else the position to read at, around them.
    async fn token_target(&self, token: &HeaderValue) -> Result<Option<u64>, ReadError> {
        let lsn = token
            .to_str()
            .ok()
            .and_then(crate::store::replicas::parse_lsn)
            .ok_or(ReadError::InvalidToken)?;
        // Strictly past: a watermark equal to the token may predate the commit's visibility.
        if *self.applied.borrow() > lsn {
            return Ok(None);
        }
        let mut applied = self.applied.clone();
        match tokio::time::timeout(TOKEN_WAIT, applied.wait_for(|w| *w > lsn)).await {
            Ok(Ok(_)) => Ok(None),
            Ok(Err(_)) | Err(_) => {
                self.metrics.token_bypasses.inc();
                Ok(Some(lsn))
            }
        }
    }

    /// The state of one product: through the caches, or (`at`) as of a token.
    async fn lookup_at(&self, id: i64, at: Option<u64>) -> Result<Lookup, ReadError> {
        match at {
            None => self.lookup(id).await,
            Some(_) => {
                let mut lookups = self.lookup_many_at(&[id], at).await?;
                Ok(lookups.pop().unwrap_or(Lookup::Unknown))
            }
        }
    }

    /// The state of each of `ids`: through the caches, or (`at`) as of a token.
    async fn lookup_many_at(&self, ids: &[i64], at: Option<u64>) -> Result<Vec<Lookup>, ReadError> {
        let Some(lsn) = at else {
            return self.lookup_many(ids).await;
        };
        let mut loaded = self.load_at(ids.to_vec(), lsn).await?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let lookup = take(&mut loaded, id);
            self.l1
                .insert_fresh(id, lookup.clone(), || self.floors.get(id));
            out.push(lookup);
        }
        Ok(out)
    }

    /// Reads `ids` from a replica that has replayed `lsn`, or the primary.
    async fn load_at(&self, ids: Vec<i64>, lsn: u64) -> Result<Vec<(i64, Lookup)>, ReadError> {
        let target = self.db.pick_covering(lsn);
        let rows = match catalog::products_by_ids(target.pool(), &ids).await {
            Ok(rows) => {
                self.count_read(target);
                rows
            }
            Err(err) => {
                self.metrics.db_errors.inc();
                let Target::Replica(index, _) = target else {
                    return Err(err.into());
                };
                self.db.mark_failed(index, &self.metrics);
                let rows = catalog::products_by_ids(self.db.primary(), &ids).await?;
                self.metrics.db_reads_primary.inc();
                rows
            }
        };
        rows.into_iter()
            .map(|row| Ok((row.id, row.into_lookup()?)))
            .collect()
    }

    fn count_read(&self, target: Target<'_>) {
        let counter = match target {
            Target::Replica(..) => &self.metrics.db_reads_replica,
            Target::Primary(_) => &self.metrics.db_reads_primary,
        };
        counter.inc();
    }

    fn readyz(&self) -> Result<Response<Full<Bytes>>, ReadError> {
        if self.db.ready() {
            Ok(plain(StatusCode::OK, TEXT, Bytes::from_static(b"ready\n")))
        } else {
            Err(ReadError::NoDatabase)
        }
    }

    async fn product(
        &self,
        id: i64,
        headers: &HeaderMap,
        at: Option<u64>,
    ) -> Result<Response<Full<Bytes>>, ReadError> {
        let lookup = match at {
            None => self.lookup(id).await?,
            Some(_) => Box::pin(self.lookup_at(id, at)).await?,
        };
        self.product_response(id, lookup, headers)
    }

    fn product_response(
        &self,
        id: i64,
        lookup: Lookup,
        headers: &HeaderMap,
    ) -> Result<Response<Full<Bytes>>, ReadError> {
        match lookup {
            Lookup::Found(doc) => Ok(self.document_response(&doc, headers)),
            Lookup::Gone { .. } | Lookup::Unknown => Err(ReadError::ProductNotFound(id)),
        }
    }

    async fn product_by_sku(
        &self,
        raw: &str,
        headers: &HeaderMap,
        at: Option<u64>,
    ) -> Result<Response<Full<Bytes>>, ReadError> {
        let sku = route::percent_decode(raw).ok_or(ReadError::InvalidSku)?;
        if sku.is_empty() || sku.chars().count() > 64 || sku.chars().any(char::is_control) {
            return Err(ReadError::InvalidSku);
        }
        let key: Arc<str> = Arc::from(&*sku);
        // The SKU → id mapping is cached; the document's own SKU confirms it, and a
        // mismatch (the SKU moved to another product) re-resolves it once.
        let cached = self.l1.sku(&key);
        let resolved_now = cached.is_none();
        let id = match cached {
            Some(id) => id,
            None => self.resolve_sku(&key).await?,
        };
        let Some(id) = id else {
            return Err(ReadError::SkuNotFound);
        };
        match self.lookup_at(id, at).await? {
            Lookup::Found(doc) if doc.sku() == &*sku => Ok(self.document_response(&doc, headers)),
            _ if resolved_now => Err(ReadError::SkuNotFound),
            _ => match self.resolve_sku(&key).await? {
                Some(id) => match self.lookup_at(id, at).await? {
                    Lookup::Found(doc) if doc.sku() == &*sku => {
                        Ok(self.document_response(&doc, headers))
                    }
                    _ => Err(ReadError::SkuNotFound),
                },
                None => Err(ReadError::SkuNotFound),
            },
        }
    }

    async fn resolve_sku(&self, sku: &Arc<str>) -> Result<Option<i64>, ReadError> {
        let owned = Arc::clone(sku);
        let id = self
            .query(move |pool| {
                let sku = Arc::clone(&owned);
                Box::pin(async move { catalog::product_id_by_sku(pool, &sku).await })
            })
            .await?;
        self.l1.insert_sku(Arc::clone(sku), id);
        Ok(id)
    }

    /// The state of one product: L1, else one coalesced fill.
    pub async fn lookup(&self, id: i64) -> Result<Lookup, ReadError> {
        if let Some(lookup) = self.cached(id) {
            return Ok(lookup);
        }
        self.metrics.l1_misses.inc();
        self.fill_once(id).await
    }

    /// The state of one product if L1 holds it, counted as a hit.
    fn cached(&self, id: i64) -> Option<Lookup> {
        let lookup = self.l1.product(id)?;
        self.metrics.l1_hits.inc();
        if lookup == Lookup::Unknown {
            self.metrics.negative_hits.inc();
        }
        Some(lookup)
    }

    async fn fill_once(&self, id: i64) -> Result<Lookup, ReadError> {
        let (lookup, ran) = self.flight.run(id, Box::pin(self.fill(id))).await;
        if !ran {
            self.metrics.coalesced.inc();
        }
        lookup
    }

    /// Loads one product from L2, else the databases, never older than its floor;
    /// caches it in L1 and writes it back to L2.
    async fn fill(&self, id: i64) -> Result<Lookup, ReadError> {
        let floor = self.floors.get(id);
        if let Some(l2) = &self.l2 {
            match l2.get(id).await {
                Ok(Some(lookup)) if lookup.version() >= floor => {
                    self.metrics.l2_hits.inc();
                    return self.cache_fill(id, lookup).await;
                }
                Ok(_) => {
                    self.metrics.l2_misses.inc();
                }
                Err(err) => self.l2_failed(&err),
            }
        }
        let mut loaded = self.load(vec![id]).await?;
        self.settle(id, take(&mut loaded, id)).await
    }

    /// Finishes a database fill: a row older than the product's floor is read again
    /// from the primary; the result is written back to L2 and cached in L1.
    async fn settle(&self, id: i64, lookup: Lookup) -> Result<Lookup, ReadError> {
        let lookup = if lookup.version() < self.floors.get(id) {
            self.load_from_primary(id).await?
        } else {
            lookup
        };
        self.write_back(id, &lookup).await;
        self.cache_fill(id, lookup).await
    }

    /// Stores a fill in L1 if its floor allows; if the floor rose while it was being
    /// read (an invalidation arrived), the primary's row is used instead.
    async fn cache_fill(&self, id: i64, lookup: Lookup) -> Result<Lookup, ReadError> {
        if self
            .l1
            .insert_fresh(id, lookup.clone(), || self.floors.get(id))
            || lookup.version() >= self.floors.get(id)
        {
            return Ok(lookup);
        }
        let fresh = self.load_from_primary(id).await?;
        self.write_back(id, &fresh).await;
        self.l1
            .insert_fresh(id, fresh.clone(), || self.floors.get(id));
        Ok(fresh)
    }

    /// Reads one product from the primary, after a replica or Redis was older than the
    /// product's floor.
    async fn load_from_primary(&self, id: i64) -> Result<Lookup, ReadError> {
        self.metrics.stale_fills.inc();
        let rows = catalog::products_by_ids(self.db.primary(), &[id]).await?;
        self.metrics.db_reads_primary.inc();
        match rows.into_iter().next() {
            Some(row) => Ok(row.into_lookup()?),
            None => Ok(Lookup::Unknown),
        }
    }

    /// The state of each of `ids`, in order: L1, then L2 and the databases for the rest
    /// (one `MGET`, one query), caching what was loaded.
    pub async fn lookup_many(&self, ids: &[i64]) -> Result<Vec<Lookup>, ReadError> {
        let mut out: Vec<Option<Lookup>> = Vec::with_capacity(ids.len());
        let mut misses: Vec<usize> = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let cached = self.l1.product(id);
            if cached.is_none() {
                misses.push(i);
            }
            out.push(cached);
        }
        self.metrics
            .l1_hits
            .inc_by((ids.len() - misses.len()) as u64);
        self.metrics.l1_misses.inc_by(misses.len() as u64);
        if !misses.is_empty() {
            let mut from_db: Vec<i64> = Vec::new();
            let l2_answers = match &self.l2 {
                Some(l2) => {
                    let miss_ids: Vec<i64> = misses.iter().map(|&i| ids[i]).collect();
                    l2.get_many(&miss_ids).await.unwrap_or_else(|err| {
                        self.l2_failed(&err);
                        vec![None; miss_ids.len()]
                    })
                }
                None => vec![None; misses.len()],
            };
            for (&i, answer) in misses.iter().zip(l2_answers) {
                match answer {
                    Some(lookup) if lookup.version() >= self.floors.get(ids[i]) => {
                        self.metrics.l2_hits.inc();
                        out[i] = Some(self.cache_fill(ids[i], lookup).await?);
                    }
                    _ => from_db.push(ids[i]),
                }
            }
            if self.l2.is_some() {
                self.metrics.l2_misses.inc_by(from_db.len() as u64);
            }
            if !from_db.is_empty() {
                let mut loaded = self.load(from_db.clone()).await?;
                for id in from_db {
                    let lookup = self.settle(id, take(&mut loaded, id)).await?;
                    if let Some(i) = ids.iter().position(|&x| x == id) {
                        out[i] = Some(lookup);
                    }
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|l| l.unwrap_or(Lookup::Unknown))
            .collect())
    }

    /// Reads and renders the rows of `ids` that exist.
    async fn load(&self, ids: Vec<i64>) -> Result<Vec<(i64, Lookup)>, ReadError> {
        let ids = Arc::new(ids);
        let rows: Vec<ProductRow> = self
            .query(move |pool| {
                let ids = Arc::clone(&ids);
                Box::pin(async move { catalog::products_by_ids(pool, &ids).await })
            })
            .await?;
        rows.into_iter()
            .map(|row| Ok((row.id, row.into_lookup()?)))
            .collect()
    }

    async fn write_back(&self, id: i64, lookup: &Lookup) {
        if let Some(l2) = &self.l2
            && let Err(err) = l2.put(id, lookup).await
        {
            self.l2_failed(&err);
        }
    }

    fn l2_failed(&self, err: &fred::error::Error) {
        self.metrics.l2_errors.inc();
        tracing::debug!(error = %err, "Redis command failed; reading on without L2");
    }

    /// Runs a query on a healthy replica (or the primary); a replica that fails is taken
    /// out of the healthy set and the query is retried once elsewhere.
    async fn query<T, F>(&self, run: F) -> Result<T, ReadError>
    where
        F: for<'p> Fn(&'p PgPool) -> Query<'p, T>,
    {
        let mut last_error = ReadError::NoDatabase;
        for _ in 0..2 {
            let target = self.db.pick().ok_or(ReadError::NoDatabase)?;
            match run(target.pool()).await {
                Ok(value) => {
                    self.count_read(target);
                    return Ok(value);
                }
                Err(err) => {
                    self.metrics.db_errors.inc();
                    match target {
                        Target::Replica(index, _) => {
                            tracing::warn!(error = %err, replica = index, "replica query failed");
                            self.db.mark_failed(index, &self.metrics);
                            last_error = ReadError::from(err);
                        }
                        Target::Primary(_) => return Err(err.into()),
                    }
                }
            }
        }
        Err(last_error)
    }

    async fn batch(
        &self,
        query: Option<&str>,
        at: Option<u64>,
    ) -> Result<Response<Full<Bytes>>, ReadError> {
        let ids = listing::parse_ids(route::query_param(query, "ids"))?;
        let lookups = self.lookup_many_at(&ids, at).await?;
        let mut docs: Vec<&Document> = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for (id, lookup) in ids.iter().zip(&lookups) {
            match lookup {
                Lookup::Found(doc) => docs.push(doc),
                Lookup::Gone { .. } | Lookup::Unknown => missing.push(*id),
            }
        }
        Ok(self.json(listing::batch_body(&docs, &missing)))
    }

    async fn categories(&self) -> Result<Response<Full<Bytes>>, ReadError> {
        if let Some(body) = self.l1.body(&Key::Categories) {
            return Ok(self.json(body));
        }
        let rows = self
            .query(|pool| Box::pin(catalog::categories(pool)))
            .await?;
        #[derive(serde::Serialize)]
        struct Items<'a> {
            items: &'a [catalog::CategoryRow],
        }
        let body = Bytes::from(serde_json::to_vec(&Items { items: &rows })?);
        self.l1.insert_body(Key::Categories, body.clone());
        Ok(self.json(body))
    }

    async fn category_products(
        &self,
        raw_slug: &str,
        query: Option<&str>,
        at: Option<u64>,
    ) -> Result<Response<Full<Bytes>>, ReadError> {
        let limit = listing::parse_limit(route::query_param(query, "limit"))?;
        let after = listing::decode_cursor(raw_slug, route::query_param(query, "cursor"))?;
        let slug: Arc<str> = Arc::from(raw_slug);
        let page = match at {
            None => {
                self.query(move |pool| {
                    let slug = Arc::clone(&slug);
                    Box::pin(
                        async move { catalog::category_page(pool, &slug, after, limit + 1).await },
                    )
                })
                .await?
            }
            Some(lsn) => {
                let target = self.db.pick_covering(lsn);
                let page = catalog::category_page(target.pool(), &slug, after, limit + 1).await?;
                self.count_read(target);
                page
            }
        };
        let mut ids = page.ok_or(ReadError::CategoryNotFound)?;
        let more = ids.len() as i64 > limit;
        ids.truncate(limit as usize);
        let lookups = self.lookup_many_at(&ids, at).await?;
        let docs: Vec<&Document> = lookups
            .iter()
            .filter_map(|lookup| match lookup {
                Lookup::Found(doc) => Some(&**doc),
                Lookup::Gone { .. } | Lookup::Unknown => None,
            })
            .collect();
        let cursor = match ids.last() {
            Some(&last) if more => Some(listing::encode_cursor(raw_slug, last)),
            _ => None,
        };
        Ok(self.json(listing::page_body(&docs, cursor.as_deref())))
    }

    /// 200 with the document, or 304 when `If-None-Match` names its ETag.
    fn document_response(&self, doc: &Document, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let not_modified = headers
            .get(IF_NONE_MATCH)
            .is_some_and(|value| etag_matches(value, &doc.etag));
        let mut response = if not_modified {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            let mut response = Response::new(Full::new(doc.body.clone()));
            response.headers_mut().insert(CONTENT_TYPE, JSON);
            response
        };
        let headers = response.headers_mut();
        headers.insert(ETAG, doc.etag.clone());
        headers.insert(CACHE_CONTROL, self.cache_control.clone());
        response
    }

    fn json(&self, body: Bytes) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(body));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, JSON);
        headers.insert(CACHE_CONTROL, self.cache_control.clone());
        response
    }
}

fn plain(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CACHE_CONTROL, NO_STORE);
    response
}

/// Removes and returns `id`'s state from rows just loaded; `Unknown` if no row had it.
fn take(loaded: &mut Vec<(i64, Lookup)>, id: i64) -> Lookup {
    match loaded.iter().position(|(found, _)| *found == id) {
        Some(at) => loaded.swap_remove(at).1,
        None => Lookup::Unknown,
    }
}

/// Whether an `If-None-Match` value names `etag` (weak comparison, lists, `*`).
fn etag_matches(value: &HeaderValue, etag: &HeaderValue) -> bool {
    let value = value.as_bytes();
    if value == etag.as_bytes() || value == b"*" {
        return true;
    }
    value.split(|&b| b == b',').any(|candidate| {
        let candidate = candidate.trim_ascii();
        let candidate = candidate.strip_prefix(b"W/").unwrap_or(candidate);
        candidate == etag.as_bytes()
    })
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_understands_lists_weak_tags_and_star() {
        let etag = HeaderValue::from_static("\"5\"");
        for matching in ["\"5\"", "*", "\"4\", \"5\"", "W/\"5\"", " \"5\" ,\"6\""] {
            assert!(
                etag_matches(&HeaderValue::from_static(matching), &etag),
                "{matching}"
            );
        }
        for other in ["\"4\"", "5", "\"55\"", ""] {
            assert!(
                !etag_matches(&HeaderValue::from_static(other), &etag),
                "{other}"
            );
        }
    }
}
