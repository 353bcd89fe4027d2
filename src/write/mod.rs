//! The admin face: authenticate, bound and parse the body, run one transaction on the
//! primary (row + version bump + outbox row), answer the new version.
//!
//! Routes ([`route`]): `PUT`, `PATCH` (JSON merge patch) and `DELETE` on
//! `/admin/products/{id}`; `POST /admin/products/bulk` (NDJSON, [`bulk`]); `PUT` and
//! `DELETE` on `/admin/categories/{slug}`; `POST /admin/purge`; webhook subscriptions
//! under `/admin/webhooks` ([`webhooks`], delivered by every writer); and, without
//! authentication, `GET /healthz`, `/readyz` (the primary answers) and `/metrics` (the
//! relay's figures in a writer-only process).
//! `If-Match: "<version>"` makes a write conditional (412 on another version). Every
//! success answers `{"id":..,"version":..}` with the new `ETag` and a `Catalog-Token`
//! header, the commit's LSN. Bad input gets a problem document and changes nothing.
//! `Idempotency-Key` makes retries safe (see [`idempotency`]). Nothing this face
//! answers may be cached (`Cache-Control: no-store`).

pub mod auth;
pub mod bulk;
pub mod error;
pub mod idempotency;
pub mod payload;
pub mod route;
pub mod sweeper;
pub mod tx;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Body;
use hyper::header::{CONTENT_LENGTH, ETAG, HeaderName, HeaderValue, IF_MATCH, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use sqlx::PgPool;

use crate::config::Secret;
use crate::document::etag;
use crate::http::Draining;
use crate::http::parse::parse_id;
use crate::http::response::{self as plain, JSON, no_store};
use crate::metrics::{HttpMetrics, Metrics};
use crate::store::postgres::within;
use auth::AdminTokens;
use error::WriteError;
use payload::ProductInput;
use route::{AdminRoute, WriteRoute};
use tx::Written;

/// This face's OpenAPI description, served at `GET /openapi.json`.
const OPENAPI: &str = include_str!("../../docs/openapi/admin.json");
/// The header naming a retry-safe request.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The read-your-writes token header: the commit's LSN.
pub const CATALOG_TOKEN: HeaderName = HeaderName::from_static("catalog-token");

/// What an admin request may send and how long its answer is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterLimits {
    /// Largest request body (and bulk line), in bytes.
    pub max_body: usize,
    /// How long a stored `Idempotency-Key` response is replayed.
    pub idempotency_ttl: Duration,
    /// Deadline of each call to the primary: a write's transaction, an idempotency
    /// claim, one batch of a bulk import (`CATALOG_DB_TIMEOUT_MS`).
    pub db_timeout: Duration,
    /// Grace a request body gets before it must keep up [`MIN_BODY_RATE`], and the
    /// longest pause between two of its parts (`CATALOG_HEADER_TIMEOUT_MS`).
    pub body_grace: Duration,
}

/// Slowest a request body may arrive, on average, after its grace: a client that drips
/// a body holds a connection slot, so it is cut (408) instead.
pub const MIN_BODY_RATE: u64 = 64 * 1024;

impl WriterLimits {
    /// By when a body of `len` bytes must have arrived.
    pub fn body_deadline(&self, len: usize) -> Duration {
        self.body_grace + Duration::from_secs_f64(len as f64 / MIN_BODY_RATE as f64)
    }
}

/// Everything the admin face needs.
#[derive(Debug)]
pub struct Writer {
    primary: PgPool,
    tokens: AdminTokens,
    metrics: Arc<Metrics>,
    http: HttpMetrics<WriteRoute>,
    limits: WriterLimits,
    /// Set when shutdown begins: `/readyz` turns 503.
    draining: Draining,
    /// `/metrics` is served by its own listener, not here.
    metrics_elsewhere: bool,
}

impl Writer {
    /// Assembles the face.
    pub fn new(
        primary: PgPool,
        tokens: Vec<Secret>,
        metrics: Arc<Metrics>,
        limits: WriterLimits,
    ) -> Self {
        Self {
            primary,
            tokens: AdminTokens::new(&tokens),
            http: HttpMetrics::new(&metrics),
            metrics,
            limits,
            draining: Draining::default(),
            metrics_elsewhere: false,
        }
    }

    /// Leaves `/metrics` to the metrics listener (`CATALOG_METRICS_ADDR`): 404 here.
    pub fn metrics_elsewhere(mut self) -> Self {
        self.metrics_elsewhere = true;
        self
    }

    /// Set when shutdown begins, to turn readiness off first.
    pub fn draining(&self) -> &Draining {
        &self.draining
    }

    /// Answers one admin request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let (label, result) = match AdminRoute::parse(&path) {
            Some(route) => (route.label(), self.dispatch(route, request).await),
            None => (WriteRoute::Unmatched, Err(WriteError::RouteNotFound)),
        };
        let response = result.unwrap_or_else(|error| {
            match &error {
                WriteError::Database(err) => tracing::warn!(error = %err, "write failed"),
                WriteError::CommitUnknown(err) => {
                    tracing::warn!(error = %err, "a write's commit failed; its outcome is unknown");
                }
                _ => {}
            }
            error.problem().response()
        });
        self.http
            .route(label)
            .record(response.status().as_u16(), started.elapsed());
        response
    }

    async fn dispatch<B>(
        &self,
        route: AdminRoute<'_>,
        request: Request<B>,
    ) -> Result<Response<Full<Bytes>>, WriteError>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        match route {
            AdminRoute::Healthz
            | AdminRoute::Readyz
            | AdminRoute::Metrics
            | AdminRoute::OpenApi
                if request.method() != Method::GET && request.method() != Method::HEAD =>
            {
                Err(WriteError::MethodNotAllowed("GET, HEAD"))
            }
            AdminRoute::Healthz => Ok(plain::healthy()),
            AdminRoute::OpenApi => Ok(plain::openapi(OPENAPI)),
            AdminRoute::Readyz => {
                if self.draining.is_draining() {
                    return Err(WriteError::ShuttingDown);
                }
                let probe = sqlx::query("select 1").execute(&self.primary);
                within(self.limits.db_timeout, probe).await?;
                Ok(plain::ready())
            }
            AdminRoute::Metrics if self.metrics_elsewhere => Err(WriteError::RouteNotFound),
            AdminRoute::Metrics => Ok(plain::metrics(self.metrics.render(None))),
            AdminRoute::Product(raw_id) => self.product(request, raw_id).await,
            AdminRoute::Bulk => {
                self.authorized_post(&request)?;
                Ok(bulk::import(&self.primary, request.into_body(), self.limits).await)
            }
            AdminRoute::Category(slug) => self.category(request, slug).await,
            AdminRoute::Purge => self.purge(request).await,
            AdminRoute::Webhooks(rest) => self.webhooks(request, rest).await,
        }
    }

    /// Everything under `/admin/webhooks` ([`webhooks::admin`]): authenticated first,
    /// then routed and method-checked, then the body read (for a `POST`).
    async fn webhooks<B>(
        &self,
        request: Request<B>,
        rest: &str,
    ) -> Result<Response<Full<Bytes>>, WriteError>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        auth::authorize(request.headers(), &self.tokens)?;
        let call = webhooks::admin::Call::new(request.method(), rest, request.uri().query());
        let body = if call.takes_body() {
            self.body(request).await?
        } else {
            Bytes::new()
        };
        let deadline = self.limits.db_timeout;
        Ok(webhooks::admin::answer(&self.primary, deadline, call, &body).await)
    }

    /// `PUT`, `PATCH` or `DELETE /admin/products/{id}`, replayed for a known
    /// `Idempotency-Key`.
    async fn product<B>(
        &self,
        request: Request<B>,
        raw_id: &str,
    ) -> Result<Response<Full<Bytes>>, WriteError>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        auth::authorize(request.headers(), &self.tokens)?;
        let method = request.method().clone();
        if !matches!(method, Method::PUT | Method::PATCH | Method::DELETE) {
            return Err(WriteError::MethodNotAllowed("PUT, PATCH, DELETE"));
        }
        let id = parse_id(raw_id).map_err(|_| WriteError::InvalidId(raw_id.into()))?;
        let if_match = if_match(request.headers());
        let key = request
            .headers()
            .get(IDEMPOTENCY_KEY)
            .map(idempotency::parse_key)
            .transpose()?;
        let body = self.body(request).await?;
        let Some(key) = key else {
            return self.apply(&method, id, &body, if_match, None).await;
        };
        let print = idempotency::fingerprint(method.as_str(), raw_id, &body);
        let ttl = self.limits.idempotency_ttl;
        let lease = idempotency::lease_for(self.limits.db_timeout);
        let claim = idempotency::claim(&self.primary, &key, &print, ttl, lease);
        let lease = match self.bounded(claim).await? {
            idempotency::Claim::Owned(lease) => lease,
            idempotency::Claim::Replay(response) => return Ok(response),
            idempotency::Claim::InProgress { retry_after } => {
                return Ok(idempotency::in_progress(retry_after));
            }
        };
        match self.apply(&method, id, &body, if_match, Some(&lease)).await {
            // Committed, with its response stored in the same transaction.
            Ok(response) => Ok(response),
            // A retry took the key over: this request's write rolled back.
            Err(WriteError::RequestInProgress) => Ok(idempotency::in_progress(1)),
            Err(error) => {
                let response = error.problem().response();
                let deadline = self.limits.db_timeout;
                Ok(idempotency::finish(&self.primary, &lease, response, deadline).await)
            }
        }
    }

    /// `PUT` or `DELETE /admin/categories/{slug}`.
    async fn category<B>(
        &self,
        request: Request<B>,
        slug: &str,
    ) -> Result<Response<Full<Bytes>>, WriteError>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        auth::authorize(request.headers(), &self.tokens)?;
        if !payload::valid_slug(slug) {
            return Err(WriteError::InvalidSlug);
        }
        let committed = match *request.method() {
            Method::PUT => {
                let body = self.body(request).await?;
                let input = payload::CategoryInput::parse(slug, &body)?;
                self.bounded(tx::category::put(&self.primary, slug, &input))
                    .await?
            }
            Method::DELETE => {
                self.bounded(tx::category::delete(&self.primary, slug))
                    .await?;
                tx::category::CategoryCommitted { created: false }
            }
            _ => return Err(WriteError::MethodNotAllowed("PUT, DELETE")),
        };
        let token = self.token().await;
        let status = if committed.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(accepted(
            status,
            format!("{{\"slug\":\"{slug}\"}}"),
            token.as_deref(),
        ))
    }

    /// An admin `POST`: authenticated, and a `POST`.
    fn authorized_post<B>(&self, request: &Request<B>) -> Result<(), WriteError> {
        auth::authorize(request.headers(), &self.tokens)?;
        if request.method() == Method::POST {
            Ok(())
        } else {
            Err(WriteError::MethodNotAllowed("POST"))
        }
    }

    /// `POST /admin/purge`.
    async fn purge<B>(&self, request: Request<B>) -> Result<Response<Full<Bytes>>, WriteError>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        self.authorized_post(&request)?;
        let body = self.body(request).await?;
        let input = payload::PurgeInput::parse(&body)?;
        let purge = tx::outbox::purge(&self.primary, input.category.as_deref());
        self.bounded(purge).await?;
        let token = self.token().await;
        let scope = input.category.as_deref().unwrap_or("*");
        Ok(accepted(
            StatusCode::ACCEPTED,
            format!("{{\"purged\":\"{scope}\"}}"),
            token.as_deref(),
        ))
    }

    /// Runs one product write; with `lease`, its response is stored in its transaction.
    async fn apply(
        &self,
        method: &Method,
        id: i64,
        body: &[u8],
        if_match: Option<i64>,
        lease: Option<&idempotency::Lease>,
    ) -> Result<Response<Full<Bytes>>, WriteError> {
        let input;
        let op = match *method {
            Method::PUT => {
                input = ProductInput::parse(body)?;
                tx::product::Op::Put(&input)
            }
            Method::PATCH => tx::product::Op::Patch(body),
            _ => tx::product::Op::Delete,
        };
        let write = tx::product::write(&self.primary, id, op, if_match, lease);
        let committed = self.bounded(write).await?;
        let token = self.token().await;
        Ok(written_response(id, committed.written, token.as_deref()))
    }

    /// The token of a write that committed, read within the database deadline; `None`
    /// (answered without `Catalog-Token`) if it cannot be read: the write stays
    /// acknowledged.
    async fn token(&self) -> Option<String> {
        tx::outbox::token(&self.primary, self.limits.db_timeout).await
    }

    /// Runs one call to the primary under the configured deadline.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, WriteError>>,
    ) -> Result<T, WriteError> {
        tokio::time::timeout(self.limits.db_timeout, call)
            .await
            .unwrap_or(Err(WriteError::Timeout))
    }

    /// The whole body, refused with 413 past the configured limit.
    async fn body<B>(&self, request: Request<B>) -> Result<Bytes, WriteError>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let max_body = self.limits.max_body;
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return Err(WriteError::TooLarge(max_body));
        }
        let deadline = self.limits.body_deadline(declared.unwrap_or(max_body));
        let collect = Limited::new(request.into_body(), max_body).collect();
        let Ok(collected) = tokio::time::timeout(deadline, collect).await else {
            return Err(WriteError::BodyTooSlow);
        };
        match collected {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                Err(WriteError::TooLarge(max_body))
            }
            Err(err) => Err(WriteError::MalformedJson(format!(
                "the body could not be read: {err}"
            ))),
        }
    }
}

/// `If-Match: "<version>"`; `*` or absent means unconditional.
fn if_match(headers: &hyper::HeaderMap) -> Option<i64> {
    let value = headers.get(IF_MATCH)?;
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        return None;
    }
    let version = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.parse::<i64>().ok());
    // An ETag we never issued (a weak one included: If-Match compares strongly) matches
    // no version: the transaction answers 412 with the product's current version.
    Some(version.unwrap_or(NO_VERSION))
}

/// A version no product has: what an `If-Match` we never issued asks for.
const NO_VERSION: i64 = -1;

/// A JSON answer with the write's token, when it could be read.
fn accepted(status: StatusCode, body: String, token: Option<&str>) -> Response<Full<Bytes>> {
    let mut response = no_store(status, JSON, body);
    if let Some(Ok(token)) = token.map(HeaderValue::try_from) {
        response.headers_mut().insert(CATALOG_TOKEN, token);
    }
    response
}

/// `{"id":..,"version":..}` with the new `ETag`, the token if known, and `Location` on
/// create; without the token when it is stored before the commit, or could not be read.
fn written_response(id: i64, written: Written, token: Option<&str>) -> Response<Full<Bytes>> {
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = format!("{{\"id\":{id},\"version\":{}}}", written.version);
    let mut response = accepted(status, body, token);
    let headers = response.headers_mut();
    headers.insert(ETAG, etag(written.version));
    if written.created
        && let Ok(location) = HeaderValue::try_from(format!("/products/{id}"))
    {
        headers.insert(LOCATION, location);
    }
    response
}

impl crate::http::Handler for Writer {
    fn respond(
        &self,
        request: Request<hyper::body::Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send {
        // Boxed: the transaction futures are large and admin requests are few.
        Box::pin(self.handle(request))
    }
}
