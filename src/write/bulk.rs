//! `POST /admin/products/bulk`: an NDJSON import, read as it streams in, one product
//! with its `id` per line, written [`BULK_BATCH`] products per transaction. The answer
//! is an NDJSON report: one line per input line (its status and version, or its
//! error), then a summary.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Body;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use sqlx::PgPool;

use super::error::WriteError;
use super::payload;
use super::tx::bulk::{BulkItem, put_batch};
use super::{CATALOG_TOKEN, WriterLimits};
use crate::http::response::{NDJSON, no_store};

/// Products written per transaction by a bulk import.
pub const BULK_BATCH: usize = 500;

/// Largest bulk import body; each line is also bounded by `CATALOG_MAX_BODY_BYTES`.
pub const MAX_BULK_BYTES: usize = 256 * 1024 * 1024;

/// Reads `body` to its end, writing as it goes; lines longer than the body limit are
/// refused, and each batch's transaction runs under the database deadline.
pub async fn import<B>(
    primary: &PgPool,
    body: B,
    limits: WriterLimits,
) -> Result<Response<Full<Bytes>>, WriteError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let max_line = limits.max_body;
    let mut body = std::pin::pin!(body);
    let mut import = BulkImport {
        deadline: limits.db_timeout,
        ..BulkImport::default()
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| WriteError::MalformedJson(format!("the body could not be read: {e}")))?;
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
            import.line(&line[..end], max_line);
            if import.batch.len() == BULK_BATCH {
                import.flush(primary).await?;
            }
        }
        if pending.len() > max_line {
            return Err(WriteError::TooLarge(max_line));
        }
    }
    import.line(&pending, max_line);
    import.flush(primary).await?;
    Ok(import.finish())
}

/// The state of a bulk import in progress.
#[derive(Default)]
struct BulkImport {
    /// Lines read so far.
    lines: usize,
    /// Parsed products waiting for the next transaction, with their line numbers.
    batch: Vec<(usize, BulkItem)>,
    /// The NDJSON report.
    report: Vec<u8>,
    written: usize,
    failed: usize,
    token: Option<String>,
    /// Deadline of one batch's transaction.
    deadline: Duration,
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
            Ok((id, input)) => self.batch.push((self.lines, BulkItem { id, input })),
            Err(error) => self.refused(self.lines, None, &error),
        }
    }

    /// Writes the batch in one transaction and reports each line.
    async fn flush(&mut self, primary: &PgPool) -> Result<(), WriteError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let (lines, items): (Vec<usize>, Vec<BulkItem>) = batch.into_iter().unzip();
        let committed = tokio::time::timeout(self.deadline, put_batch(primary, &items))
            .await
            .unwrap_or(Err(WriteError::Timeout))?;
        for ((line, item), outcome) in lines.into_iter().zip(&items).zip(committed.outcomes) {
            match outcome {
                Ok(written) => {
                    self.written += 1;
                    let status = if written.created { 201 } else { 200 };
                    let entry = serde_json::json!({
                        "line": line, "id": item.id, "status": status, "version": written.version,
                    });
                    self.push(&entry);
                }
                Err(error) => self.refused(line, Some(item.id), &error),
            }
        }
        self.token = Some(committed.token);
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
        let mut response = no_store(StatusCode::OK, NDJSON, self.report);
        if let Some(token) = self.token.and_then(|t| HeaderValue::try_from(t).ok()) {
            response.headers_mut().insert(CATALOG_TOKEN, token);
        }
        response
    }
}
