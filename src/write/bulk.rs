//! `POST /admin/products/bulk`: an NDJSON import, read as it streams in, one product
//! with its `id` per line, written [`BULK_BATCH`] products per transaction. The answer
//! is an NDJSON report: a line per input line (its status and version, or its error),
//! at most [`MAX_REPORTED_WRITTEN`] lines written and [`MAX_REPORTED_REFUSED`] lines
//! refused (the rest are only counted), then a summary. An import that fails after a
//! batch committed still answers its report, ending with the line where it stopped and
//! why.

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
use super::tx::outbox;
use super::{CATALOG_TOKEN, WriterLimits};
use crate::http::response::{NDJSON, no_store};

/// Products written per transaction by a bulk import.
pub const BULK_BATCH: usize = 500;

/// Largest bulk import body; each line is also bounded by `CATALOG_MAX_BODY_BYTES`.
pub const MAX_BULK_BYTES: usize = 256 * 1024 * 1024;

/// Report lines kept for written lines; later ones are counted in the summary only
/// (`omitted`), so a 256 MiB import does not make a report of the same size.
pub const MAX_REPORTED_WRITTEN: usize = 1_000;

/// Report lines kept for refused lines, for the same reason.
pub const MAX_REPORTED_REFUSED: usize = 1_000;

/// Longest `detail` of a report line, in bytes (a refusal can quote its input).
const MAX_DETAIL: usize = 256;

/// Reads `body` to its end, writing as it goes; lines longer than the body limit are
/// refused, and each batch's transaction runs under the database deadline. A failure
/// before any batch committed answers its problem document (nothing was written); a
/// failure after one answers the report so far, with a line saying where and why the
/// import stopped.
pub async fn import<B>(primary: &PgPool, body: B, limits: WriterLimits) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut import = BulkImport {
        deadline: limits.db_timeout,
        ..BulkImport::default()
    };
    let stopped = import.run(primary, body, limits).await.err();
    let token = if import.committed {
        outbox::token(primary, limits.db_timeout).await
    } else {
        None
    };
    match stopped {
        Some((_, error)) if !import.committed => error.problem().response(),
        stopped => import.finish(stopped, token),
    }
}

/// The state of a bulk import in progress.
#[derive(Default)]
struct BulkImport {
    /// Lines read so far.
    lines: usize,
    /// Parsed products waiting for the next transaction, with their line numbers.
    batch: Vec<(usize, BulkItem)>,
    /// The NDJSON report (bounded: see [`MAX_REPORTED_WRITTEN`]).
    report: Vec<u8>,
    written: usize,
    failed: usize,
    /// Report lines left out past the bounds.
    omitted: usize,
    /// Whether a batch committed.
    committed: bool,
    /// Deadline of one batch's transaction.
    deadline: Duration,
}

impl BulkImport {
    /// Reads and writes the whole body; on failure, the line where the import stopped
    /// (the first line not written) and why.
    async fn run<B>(
        &mut self,
        primary: &PgPool,
        body: B,
        limits: WriterLimits,
    ) -> Result<(), (usize, WriteError)>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let max_line = limits.max_body;
        let mut body = std::pin::pin!(body);
        let mut pending: Vec<u8> = Vec::new();
        let mut received = 0usize;
        let started = tokio::time::Instant::now();
        loop {
            // A pause longer than the grace, or a body slower than the minimum rate on
            // average, is cut: a drip would hold a connection slot for as long as it liked.
            let next = tokio::time::timeout(limits.body_grace, body.frame()).await;
            let behind = started.elapsed() > limits.body_deadline(received);
            let (Ok(next), false) = (next, behind) else {
                return Err((self.first_unwritten(), WriteError::BodyTooSlow));
            };
            let Some(frame) = next else {
                break;
            };
            let frame = frame.map_err(|e| {
                let error = WriteError::MalformedJson(format!("the body could not be read: {e}"));
                (self.first_unwritten(), error)
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            received += data.len();
            if received > MAX_BULK_BYTES {
                return Err((self.first_unwritten(), WriteError::TooLarge(MAX_BULK_BYTES)));
            }
            pending.extend_from_slice(&data);
            // Lines are taken by offset and the consumed front dropped once per frame:
            // linear in the frame, however many lines it holds.
            let mut start = 0;
            while let Some(offset) = pending[start..].iter().position(|&b| b == b'\n') {
                let end = start + offset;
                self.line(&pending[start..end], max_line);
                start = end + 1;
                if self.batch.len() == BULK_BATCH {
                    self.flush(primary).await?;
                }
            }
            pending.drain(..start);
            if pending.len() > max_line {
                return Err((self.first_unwritten(), WriteError::TooLarge(max_line)));
            }
        }
        self.line(&pending, max_line);
        self.flush(primary).await
    }

    /// The first line not written yet: the batch's first, or the next line to read.
    fn first_unwritten(&self) -> usize {
        self.batch.first().map_or(self.lines + 1, |(line, _)| *line)
    }

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
    async fn flush(&mut self, primary: &PgPool) -> Result<(), (usize, WriteError)> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let first = self.first_unwritten();
        let batch = std::mem::take(&mut self.batch);
        let (lines, items): (Vec<usize>, Vec<BulkItem>) = batch.into_iter().unzip();
        let committed = tokio::time::timeout(self.deadline, put_batch(primary, &items))
            .await
            .unwrap_or(Err(WriteError::Timeout))
            .map_err(|error| (first, error))?;
        self.committed = true;
        for ((line, item), outcome) in lines.into_iter().zip(&items).zip(committed.outcomes) {
            match outcome {
                Ok(written) => {
                    self.written += 1;
                    if self.written > MAX_REPORTED_WRITTEN {
                        self.omitted += 1;
                        continue;
                    }
                    let status = if written.created { 201 } else { 200 };
                    let entry = serde_json::json!({
                        "line": line, "id": item.id, "status": status, "version": written.version,
                    });
                    self.push(&entry);
                }
                Err(error) => self.refused(line, Some(item.id), &error),
            }
        }
        Ok(())
    }

    fn refused(&mut self, line: usize, id: Option<i64>, error: &WriteError) {
        self.failed += 1;
        if self.failed > MAX_REPORTED_REFUSED {
            self.omitted += 1;
            return;
        }
        self.push(&problem_entry(line, id, error));
    }

    fn push(&mut self, entry: &serde_json::Value) {
        self.report.extend_from_slice(entry.to_string().as_bytes());
        self.report.push(b'\n');
    }

    /// The report, ended by the line where the import stopped (if it did) and the
    /// summary, with `token` when known.
    fn finish(
        mut self,
        stopped: Option<(usize, WriteError)>,
        token: Option<String>,
    ) -> Response<Full<Bytes>> {
        let mut summary = serde_json::json!({
            "lines": self.lines, "written": self.written, "failed": self.failed,
            "omitted": self.omitted,
        });
        if let Some((line, error)) = stopped {
            tracing::warn!(line, error = %error, "bulk import stopped");
            self.push(&problem_entry(line, None, &error));
            summary["stopped_at"] = line.into();
        }
        self.push(&serde_json::json!({ "summary": summary }));
        let mut response = no_store(StatusCode::OK, NDJSON, self.report);
        if let Some(token) = token.and_then(|t| HeaderValue::try_from(t).ok()) {
            response.headers_mut().insert(CATALOG_TOKEN, token);
        }
        response
    }
}

/// A report line for a refused line, or for the line where the import stopped.
fn problem_entry(line: usize, id: Option<i64>, error: &WriteError) -> serde_json::Value {
    let problem = error.problem();
    let mut detail: &str = &problem.detail;
    if detail.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail = &detail[..end];
    }
    serde_json::json!({
        "line": line, "id": id, "status": problem.status.as_u16(),
        "type": format!("/problems/{}", problem.kind), "detail": detail,
    })
}
