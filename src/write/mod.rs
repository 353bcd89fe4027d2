//! The admin face: authenticate, bound and parse the body, run one transaction on the
//! primary (row + version bump + outbox row), answer the new version.
//!
//! Routes: `PUT`, `PATCH` (JSON merge patch) and `DELETE` on `/admin/products/{id}`;
//! `PUT` and `DELETE` on `/admin/categories/{slug}`; `POST /admin/purge`;
//! and, without authentication, `GET /healthz`, `/readyz` (the primary answers) and
//! `/metrics` (the relay's figures in a writer-only process).
//! `If-Match: "<version>"` makes a write conditional (412 on another version). Every
//! success answers `{"id":..,"version":..}` with the new `ETag` and a `Catalog-Token`
//! header, the commit's LSN. Bad input gets a problem document and changes nothing.
//! `Idempotency-Key` makes retries safe (see [`idempotency`]).

pub mod auth;
pub mod error;
pub mod idempotency;
pub mod payload;
pub mod tx;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Body;
use hyper::header::{
    CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderName, HeaderValue, IF_MATCH, LOCATION,
};
use hyper::{Method, Request, Response, StatusCode};
use sqlx::PgPool;

use crate::config::Secret;
use crate::document::etag;
use crate::metrics::Metrics;
use error::WriteError;
use payload::ProductInput;
use tx::Committed;

/// The header naming a retry-safe request.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The read-your-writes token header: the commit's LSN.
pub const CATALOG_TOKEN: HeaderName = HeaderName::from_static("catalog-token");

/// Metric labels of the admin routes.
pub const ROUTE_NAMES: [&str; 6] = [
    "admin_product",
    "admin_unmatched",
    "admin_operations",
    "admin_category",
    "admin_purge",
    "admin_bulk",
];

/// Products written per transaction by a bulk import.
const BULK_BATCH: usize = 500;

/// Largest bulk import body; each line is also bounded by `CATALOG_MAX_BODY_BYTES`.
const MAX_BULK_BYTES: usize = 256 * 1024 * 1024;

/// Everything the admin face needs.
#[derive(Debug)]
pub struct Writer {
    primary: PgPool,
    tokens: Vec<Secret>,
    metrics: Arc<Metrics>,
    /// Index of this face's first route in the metrics' route list.
    route_base: usize,
    max_body: usize,
    idempotency_ttl: std::time::Duration,
}

impl Writer {
    /// Assembles the face; its routes are recorded from `route_base` on.
    pub fn new(
        primary: PgPool,
        tokens: Vec<Secret>,
        metrics: Arc<Metrics>,
        route_base: usize,
        limits: (usize, std::time::Duration),
    ) -> Self {
        let (max_body, idempotency_ttl) = limits;
        Self {
            primary,
            tokens,
            metrics,
            route_base,
            max_body,
            idempotency_ttl,
        }
    }

    /// Answers one admin request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let (route, result) = self.dispatch(request).await;
        let response = result.unwrap_or_else(|error| {
            if let WriteError::Database(err) = &error {
                tracing::warn!(error = %err, "write failed");
            }
            error.problem().response()
        });
        self.metrics.http.record(
            self.route_base + route,
            response.status().as_u16(),
            started.elapsed(),
        );
        response
    }

    async fn dispatch<B>(
        &self,
        request: Request<B>,
    ) -> (usize, Result<Response<Full<Bytes>>, WriteError>)
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/healthz") => return (2, Ok(text("text/plain", "ok\n".into()))),
            (&Method::GET, "/readyz") => {
                let ready = sqlx::query("select 1").execute(&self.primary).await;
                return match ready {
                    Ok(_) => (2, Ok(text("text/plain", "ready\n".into()))),
                    Err(err) => (2, Err(WriteError::Database(err))),
                };
            }
            (&Method::GET, "/metrics") => {
                let body = self.metrics.render(None);
                return (2, Ok(text("text/plain; version=0.0.4", body)));
            }
            _ => {}
        }
        let path = request.uri().path().to_owned();
        if let Some(slug) = path.strip_prefix("/admin/categories/") {
            return (3, self.category(request, slug).await);
        }
        if path == "/admin/purge" {
            return (4, self.purge(request).await);
        }
        if path == "/admin/products/bulk" {
            return (5, self.bulk(request).await);
        }
        let Some(raw_id) = request
            .uri()
            .path()
            .strip_prefix("/admin/products/")
            .map(str::to_owned)
        else {
            return (1, Err(WriteError::RouteNotFound));
        };
        let raw_id = raw_id.as_str();
        let result = async {
            auth::authorize(request.headers(), &self.tokens)?;
            let id = crate::read::route::parse_id(raw_id)
                .map_err(|_| WriteError::InvalidId(raw_id.into()))?;
            let if_match = if_match(request.headers())?;
            let method = request.method().clone();
            if !matches!(method, Method::PUT | Method::PATCH | Method::DELETE) {
                return Err(WriteError::MethodNotAllowed("PUT, PATCH, DELETE"));
            }
            let key = request
                .headers()
                .get(IDEMPOTENCY_KEY)
                .map(idempotency::parse_key)
                .transpose()?;
            let body = self.body(request).await?;
            let Some(key) = key else {
                return self.apply(&method, id, &body, if_match).await;
            };
            let print = idempotency::fingerprint(method.as_str(), raw_id, &body);
            match idempotency::claim(&self.primary, &key, &print, self.idempotency_ttl).await? {
                idempotency::Claim::Replay(response) => Ok(response),
                idempotency::Claim::Owned => {
                    let response = self
                        .apply(&method, id, &body, if_match)
                        .await
                        .unwrap_or_else(|error| error.problem().response());
                    idempotency::store(&self.primary, &key, response).await
                }
            }
        }
        .await;
        (0, result)
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
        let (created, token) = match *request.method() {
            Method::PUT => {
                let body = self.body(request).await?;
                let input = payload::CategoryInput::parse(slug, &body)?;
                tx::put_category(&self.primary, slug, &input).await?
            }
            Method::DELETE => (false, tx::delete_category(&self.primary, slug).await?),
            _ => return Err(WriteError::MethodNotAllowed("PUT, DELETE")),
        };
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(accepted(status, format!("{{\"slug\":\"{slug}\"}}"), &token))
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
        let token = tx::purge(&self.primary, input.category.as_deref()).await?;
        let scope = input.category.as_deref().unwrap_or("*");
        Ok(accepted(
            StatusCode::ACCEPTED,
            format!("{{\"purged\":\"{scope}\"}}"),
            &token,
        ))
    }

    /// `POST /admin/products/bulk`: NDJSON, one product with its `id` per line, read as
    /// it streams in and written [`BULK_BATCH`] products per transaction. Answers an NDJSON
    /// report: one line per input line (its status, version or error), then a summary.
    async fn bulk<B>(&self, request: Request<B>) -> Result<Response<Full<Bytes>>, WriteError>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        self.authorized_post(&request)?;
        let mut body = std::pin::pin!(request.into_body());
        let mut import = BulkImport::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut received = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                WriteError::MalformedJson(format!("the body could not be read: {e}"))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            received += data.len();
            if received > MAX_BULK_BYTES {
                return Err(WriteError::TooLarge(MAX_BULK_BYTES));
            }
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                import.line(&line[..end], self.max_body);
                if import.batch.len() == BULK_BATCH {
                    import.flush(&self.primary).await?;
                }
            }
            if pending.len() > self.max_body {
                return Err(WriteError::TooLarge(self.max_body));
            }
        }
        import.line(&pending, self.max_body);
        import.flush(&self.primary).await?;
        Ok(import.finish())
    }

    /// Runs one admin write.
    async fn apply(
        &self,
        method: &Method,
        id: i64,
        body: &[u8],
        if_match: Option<i64>,
    ) -> Result<Response<Full<Bytes>>, WriteError> {
        let committed = match *method {
            Method::PUT => {
                let input = ProductInput::parse(body)?;
                tx::put_product(&self.primary, id, &input, if_match).await?
            }
            Method::PATCH => tx::patch_product(&self.primary, id, body, if_match).await?,
            _ => tx::delete_product(&self.primary, id, if_match).await?,
        };
        Ok(committed_response(id, &committed))
    }

    /// The whole body, refused with 413 past the configured limit.
    async fn body<B>(&self, request: Request<B>) -> Result<Bytes, WriteError>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            return Err(WriteError::TooLarge(self.max_body));
        }
        match Limited::new(request.into_body(), self.max_body)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                Err(WriteError::TooLarge(self.max_body))
            }
            Err(err) => Err(WriteError::MalformedJson(format!(
                "the body could not be read: {err}"
            ))),
        }
    }
}

/// The state of a bulk import in progress.
#[derive(Default)]
struct BulkImport {
    /// Lines read so far.
    lines: usize,
    /// Parsed products waiting for the next transaction, with their line numbers.
    batch: Vec<(usize, tx::BulkItem)>,
    /// The NDJSON report.
    report: Vec<u8>,
    written: usize,
    failed: usize,
    token: Option<String>,
}

impl BulkImport {
    /// Takes one line (blank lines are skipped but counted).
    fn line(&mut self, line: &[u8], max_line: usize) {
        self.lines += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let parsed = if line.len() > max_line {
            Err(WriteError::TooLarge(max_line))
        } else {
            payload::parse_bulk_line(line)
        };
        match parsed {
            Ok((id, input)) => self.batch.push((self.lines, tx::BulkItem { id, input })),
            Err(error) => self.refused(self.lines, None, &error),
        }
    }

    /// Writes the batch in one transaction and reports each line.
    async fn flush(&mut self, primary: &PgPool) -> Result<(), WriteError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let (lines, items): (Vec<usize>, Vec<tx::BulkItem>) = batch.into_iter().unzip();
        let (outcomes, token) = tx::bulk_put(primary, &items).await?;
        for ((line, item), outcome) in lines.into_iter().zip(&items).zip(outcomes) {
            match outcome {
                Ok((version, created)) => {
                    self.written += 1;
                    let status = if created { 201 } else { 200 };
                    let entry = serde_json::json!({
                        "line": line, "id": item.id, "status": status, "version": version,
                    });
                    self.push(&entry);
                }
                Err(error) => self.refused(line, Some(item.id), &error),
            }
        }
        self.token = Some(token);
        Ok(())
    }

    fn refused(&mut self, line: usize, id: Option<i64>, error: &WriteError) {
        self.failed += 1;
        let problem = error.problem();
        let entry = serde_json::json!({
            "line": line, "id": id, "status": problem.status.as_u16(),
            "type": format!("/problems/{}", problem.kind), "detail": problem.detail,
        });
        self.push(&entry);
    }

    fn push(&mut self, entry: &serde_json::Value) {
        self.report.extend_from_slice(entry.to_string().as_bytes());
        self.report.push(b'\n');
    }

    fn finish(mut self) -> Response<Full<Bytes>> {
        let summary = serde_json::json!({
            "summary": {"lines": self.lines, "written": self.written, "failed": self.failed},
        });
        self.push(&summary);
        let mut response = text("application/x-ndjson", String::new());
        *response.body_mut() = Full::new(Bytes::from(self.report));
        if let Some(token) = self.token.and_then(|t| HeaderValue::try_from(t).ok()) {
            response.headers_mut().insert(CATALOG_TOKEN, token);
        }
        response
    }
}

/// `If-Match: "<version>"`; `*` or absent means unconditional.
fn if_match(headers: &hyper::HeaderMap) -> Result<Option<i64>, WriteError> {
    let Some(value) = headers.get(IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    let version = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.parse::<i64>().ok());
    match version {
        Some(version) => Ok(Some(version)),
        // An ETag we never issued cannot match any version.
        None => Err(WriteError::PreconditionFailed { current: 0 }),
    }
}

fn text(content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

/// A JSON answer with the write's token.
fn accepted(status: StatusCode, body: String, token: &str) -> Response<Full<Bytes>> {
    let mut response = text("application/json", body);
    *response.status_mut() = status;
    if let Ok(token) = HeaderValue::try_from(token) {
        response.headers_mut().insert(CATALOG_TOKEN, token);
    }
    response
}

fn committed_response(id: i64, committed: &Committed) -> Response<Full<Bytes>> {
    let body = format!("{{\"id\":{id},\"version\":{}}}", committed.version);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if committed.created {
        *response.status_mut() = StatusCode::CREATED;
    }
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(ETAG, etag(committed.version));
    if let Ok(token) = HeaderValue::try_from(committed.token.as_str()) {
        headers.insert(CATALOG_TOKEN, token);
    }
    if committed.created
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
