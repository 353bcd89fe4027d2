//! The watchdog of each connection, in place of hyper's header read timeout: it closes
//! a connection in which a whole `header_read_timeout` period passed with no request
//! begun, none in flight and no response being written, or whose client took none of a
//! response for `write_stall`; on shutdown it lets the connection finish gracefully.
//! Requests, streamed bodies and socket writes tell it their progress with relaxed
//! atomics.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::StreamBody;

/// A streaming body that tells its connection's watchdog when it ends (or is dropped).
pub(super) struct InFlight {
    pub(super) body: StreamBody,
    pub(super) activity: Arc<Activity>,
}

impl hyper::body::Body for InFlight {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection's socket, telling its watchdog ([`Watch`]) whether a write is waiting
/// for the client to make room (so a response is still being written).
pub(super) struct Counted {
    pub(super) stream: TcpStream,
    pub(super) activity: Arc<Activity>,
}

impl Counted {
    fn wrote<T>(&self, written: &Poll<T>) {
        let pending = written.is_pending();
        self.activity.writing.store(pending, Ordering::Relaxed);
        if !pending {
            self.activity.writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = Pin::new(&mut self.stream).poll_flush(cx);
        self.wrote(&flushed);
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// What a connection's requests have done, for its watchdog ([`Watch`]).
#[derive(Debug, Default)]
pub(super) struct Activity {
    /// Requests whose head has been read.
    pub(super) begun: AtomicU64,
    /// Requests whose handler returned (hyper may still be writing the body).
    pub(super) answered: AtomicU64,
    /// Whether the last write to the socket waited for room: a response (its body
    /// perhaps long after its handler returned) is still being written.
    writing: AtomicBool,
    /// Writes to the socket that went through: a stalled response's count stands still.
    writes: AtomicU64,
}

/// The watchdog of one connection: cuts off clients too slow to send a request head
/// (or idle), and asks the connection to finish gracefully when the server stops.
pub(super) struct Watch<'a> {
    pub(super) activity: &'a Activity,
    pub(super) period: Duration,
    /// How long a response may wait for its client to take more of it.
    pub(super) stall: Duration,
    pub(super) stop: &'a CancellationToken,
}

impl Watch<'_> {
    /// Drives `connection` to its end, closing it when a whole period passes in which
    /// no request began while none was in flight and no response was being written; on
    /// stop, `shut_down` lets the requests in flight finish first. A response still being
    /// written that made no progress for `stall` (checked once a period) closes it too.
    pub(super) async fn run<C, E>(&self, connection: C, shut_down: impl Fn(Pin<&mut C>))
    where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let mut connection = std::pin::pin!(connection);
        let mut seen = 0;
        let mut stopping = false;
        let (mut writes_seen, mut stalled) = (0, Duration::ZERO);
        loop {
            tokio::select! {
                biased;
                ended = &mut connection => {
                    if let Err(err) = ended {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    return;
                }
                () = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                    shut_down(connection.as_mut());
                }
                () = tokio::time::sleep(self.period) => {
                    let begun = self.activity.begun.load(Ordering::Relaxed);
                    if begun == seen
                        && self.activity.answered.load(Ordering::Relaxed) == begun
                        && !self.activity.writing.load(Ordering::Relaxed)
                    {
                        tracing::debug!(period = ?self.period, "closing a connection idle for a whole period");
                        return;
                    }
                    seen = begun;
                    let writes = self.activity.writes.load(Ordering::Relaxed);
                    if self.activity.writing.load(Ordering::Relaxed) && writes == writes_seen {
                        stalled += self.period;
                        if stalled >= self.stall {
                            tracing::debug!(stalled = ?stalled, "closing a connection whose client stopped reading its response");
                            return;
                        }
                    } else {
                        stalled = Duration::ZERO;
                    }
                    writes_seen = writes;
                }
            }
        }
    }
}
