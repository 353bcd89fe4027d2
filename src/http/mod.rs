//! HTTP server plumbing shared by both faces: a bounded accept loop over raw hyper 1.x
//! connections (HTTP/1.1 keep-alive, and HTTP/2 cleartext with prior knowledge), limits
//! on connections, header size and count and header read time, and a graceful drain.
//!
//! It knows nothing of routes: a face implements [`Handler`].
//!
//! Two of hyper's own limits cost more per request than the rest of a cache hit, so
//! they are replaced (measured with `bench/profile.sh`, instructions per request):
//!
//! - hyper's header read timeout arms a boxed timer in tokio's wheel for every request
//!   and cancels it once the head is parsed. Here one [`watchdog`] per connection wakes
//!   once per `header_read_timeout` and closes the connection if no request began in
//!   that period and none is in flight: a slow or silent client is cut off after one to
//!   two periods, for two relaxed atomic increments per request.
//! - hyper's `max_headers` option initialises a heap vector of that many header slots
//!   for every request; its default (100, on the stack, uninitialised) is used instead.

pub mod parse;
pub mod problem;
pub mod response;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The bounds a listener enforces on its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent connections; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Period in which a connection must begin a request (or have one in flight);
    /// a client too slow to send a head, or idle, is closed after one to two periods
    /// (slow-loris protection and idle keep-alive timeout).
    pub header_read_timeout: Duration,
    /// Time in-flight requests get to finish after shutdown begins.
    pub drain: Duration,
}

/// Largest request head, in bytes (hyper's read buffer); a larger head is answered 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Pause between looks at a connection's first bytes while they are a prefix of
/// HTTP/2's preface.
const PREFACE_PAUSE: Duration = Duration::from_millis(1);

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// A face of the service: answers every request, errors included, with a response.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn respond(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// Serves `handler` on `listener` until `stop` fires, then drains for at most
/// `limits.drain`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: Limits,
    stop: CancellationToken,
) {
    let mut h1 = http1::Builder::new();
    h1.header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::new(Connection {
            handler: Arc::clone(&handler),
            activity: Activity::default(),
        });
        let service = {
            let state = Arc::clone(&state);
            hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                state.activity.begun.fetch_add(1, Ordering::Relaxed);
                async move {
                    let response = state.handler.respond(request).await;
                    state.activity.answered.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let (h1, h2, stop) = (h1.clone(), h2.clone(), stop.clone());
        let period = limits.header_read_timeout;
        connections.spawn(async move {
            let prior_knowledge = tokio::select! {
                () = stop.cancelled() => return,
                sent = tokio::time::timeout(period, sends_h2_preface(&stream)) => match sent {
                    Ok(sent) => sent,
                    Err(_) => return,
                },
            };
            let io = TokioIo::new(stream);
            let watch = Watch {
                activity: &state.activity,
                period,
                stop: &stop,
            };
            if prior_knowledge {
                let connection = h2.serve_connection(io, service);
                watch.run(connection, |c| c.graceful_shutdown()).await;
            } else {
                let connection = h1.serve_connection(io, service);
                watch.run(connection, |c| c.graceful_shutdown()).await;
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?limits.drain, "connections still open after the drain period");
    }
}

/// Whether a client opened with HTTP/2's connection preface (h2c with prior knowledge);
/// the bytes stay in the socket for the protocol's own parser.
async fn sends_h2_preface(stream: &TcpStream) -> bool {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut head = [0u8; 24];
    loop {
        let Ok(n) = stream.peek(&mut head).await else {
            return false;
        };
        if n == 0 || head[..n] != PREFACE[..n] {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        // A prefix of the preface: peek answers at once while bytes wait, so pause.
        tokio::time::sleep(PREFACE_PAUSE).await;
    }
}

/// What one connection's requests share: the face, and the requests' progress.
struct Connection<H> {
    handler: Arc<H>,
    activity: Activity,
}

/// What a connection's requests have done, for its [`watchdog`].
#[derive(Debug, Default)]
struct Activity {
    /// Requests whose head has been read.
    begun: AtomicU64,
    /// Requests answered.
    answered: AtomicU64,
}

/// The watchdog of one connection: cuts off clients too slow to send a request head
/// (or idle), and asks the connection to finish gracefully when the server stops.
struct Watch<'a> {
    activity: &'a Activity,
    period: Duration,
    stop: &'a CancellationToken,
}

impl Watch<'_> {
    /// Drives `connection` to its end, closing it when a whole period passes in which
    /// no request began while none was in flight; on stop, `shut_down` lets the
    /// requests in flight finish first.
    async fn run<C, E>(&self, connection: C, shut_down: impl Fn(Pin<&mut C>))
    where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let mut connection = std::pin::pin!(connection);
        let mut seen = 0;
        let mut stopping = false;
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
                    if begun == seen && self.activity.answered.load(Ordering::Relaxed) == begun {
                        tracing::debug!(period = ?self.period, "closing a connection that sent no request head in time");
                        return;
                    }
                    seen = begun;
                }
            }
        }
    }
}
