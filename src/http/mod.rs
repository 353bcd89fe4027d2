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
//!   once per `header_read_timeout` and closes the connection if in that period no
//!   request began, none is in flight and no response is still being written (hyper
//!   writes a body after its handler returned; a write that waits for a slow reader to
//!   make room keeps the connection): a client too slow to send a head, or silent, is
//!   cut off after one to two periods, for two relaxed atomic increments per request
//!   and a relaxed store per write. A response whose client takes none of it for
//!   `write_stall` (it stopped reading) is cut too: one more relaxed increment per write.
//! - hyper's `max_headers` option initialises a heap vector of that many header slots
//!   for every request; its default (100, on the stack, uninitialised) is used instead.

pub mod client;
pub mod parse;
pub mod problem;
pub mod rate;
pub mod response;
pub mod surrogate;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use rate::RateLimit;

/// The bounds a listener enforces on its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent connections; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Period in which a connection must begin a request (or have one in flight);
    /// a client too slow to send a head, or idle, is closed after one to two periods
    /// (slow-loris protection and idle keep-alive timeout).
    pub header_read_timeout: Duration,
    /// Longest time a response may wait for its client to take any more of it; past it
    /// the connection is closed (a client that stopped reading holds nothing for long).
    pub write_stall: Duration,
    /// Time in-flight requests get to finish after shutdown begins.
    pub drain: Duration,
}

/// Set when shutdown begins, before the listeners stop: a face's `/readyz` answers
/// 503 from then on, so a balancer takes the instance out while it still serves.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    /// Shutdown has begun.
    pub fn begin(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a listener does to every request before its face sees it.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The per-client rate limit, if any.
    pub rate: Option<Arc<RateLimit>>,
}

/// The request id header: passed through when a client (or a proxy) sends a usable
/// one, generated otherwise, and always echoed on the response.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id passed through.
const MAX_REQUEST_ID: usize = 128;

/// How often a rate limiter forgets clients whose buckets are full again.
const FORGET_IDLE_CLIENTS: Duration = Duration::from_secs(60);

/// Largest request head, in bytes (hyper's read buffer); a larger head is answered 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// The body of a response that streams (Server-Sent Events) instead of being whole.
pub type StreamBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A face of the service: answers every request, errors included, with a response.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn respond(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;

    /// A response whose body streams, when `request` asks for one (from `client`): it
    /// is answered instead of [`Handler::respond`], and counts as in flight for the
    /// connection's watchdog until its body ends.
    fn stream(
        &self,
        _request: &Request<Incoming>,
        _client: std::net::IpAddr,
    ) -> Option<Response<StreamBody>> {
        None
    }
}

/// A streaming body that tells its connection's watchdog when it ends (or is dropped).
struct InFlight {
    body: StreamBody,
    activity: Arc<Activity>,
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

/// Serves `handler` on `listener` until `stop` fires, then drains for at most
/// `limits.drain`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: Limits,
    policy: Policy,
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
    if let Some(rate) = policy.rate.clone() {
        let stop = stop.clone();
        connections.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(FORGET_IDLE_CLIENTS) => rate.forget_idle(),
                }
            }
        });
    }
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
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        let state = Arc::new(Connection {
            handler: Arc::clone(&handler),
            activity: Arc::new(Activity::default()),
            rate: policy.rate.clone(),
            client: peer.ip(),
        });
        let service = {
            let state = Arc::clone(&state);
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let state = Arc::clone(&state);
                state.activity.begun.fetch_add(1, Ordering::Relaxed);
                async move {
                    let id = request_id(request.headers());
                    let refused = state
                        .rate
                        .as_ref()
                        .filter(|_| !is_operational(request.uri().path()))
                        .and_then(|r| r.check(state.client));
                    let streaming = match refused {
                        None => state.handler.stream(&request, state.client),
                        Some(_) => None,
                    };
                    let mut response = match (refused, streaming) {
                        (Some(refused), _) => refused.map(Either::Left),
                        (None, Some(streaming)) => streaming.map(|body| {
                            // Answered when the body ends: the drop of `InFlight`.
                            let activity = Arc::clone(&state.activity);
                            Either::Right(InFlight { body, activity })
                        }),
                        (None, None) => state.handler.respond(request).await.map(Either::Left),
                    };
                    if response.status().is_server_error() {
                        tracing::warn!(request_id = ?id, status = %response.status(), "request failed");
                    }
                    response.headers_mut().insert(X_REQUEST_ID, id);
                    if matches!(response.body(), Either::Left(_)) {
                        state.activity.answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let (h1, h2, stop) = (h1.clone(), h2.clone(), stop.clone());
        let (period, stall) = (limits.header_read_timeout, limits.write_stall);
        connections.spawn(async move {
            let prior_knowledge = tokio::select! {
                () = stop.cancelled() => return,
                sent = tokio::time::timeout(period, sends_h2_preface(&stream)) => match sent {
                    Ok(sent) => sent,
                    Err(_) => return,
                },
            };
            let io = TokioIo::new(Counted {
                stream,
                activity: Arc::clone(&state.activity),
            });
            let watch = Watch {
                activity: &state.activity,
                period,
                stall,
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

/// `/healthz`, `/readyz` and `/metrics`: never rate limited, so a balancer's health
/// checks and Prometheus' scrapes, which share addresses with the traffic they watch,
/// are not refused when that traffic is.
fn is_operational(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The request's own id if it sent a usable one (1 to 128 visible ASCII characters),
/// else a new one: this process's random tag and a counter, unique per process.
fn request_id(headers: &hyper::HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get(X_REQUEST_ID)
        && (1..=MAX_REQUEST_ID).contains(&given.len())
        && given.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return given.clone();
    }
    static TAG: std::sync::OnceLock<[u8; 8]> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tag = TAG.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut tag = [0; 8];
        hex(
            u64::from(nanos ^ std::process::id().rotate_left(16)),
            &mut tag,
        );
        tag
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // `<tag>-<n>`, both in hex, written by hand: this runs on every hit of a client that
    // sends no id, where `format!` cost a few hundred instructions.
    let mut id = [0; 8 + 1 + 16];
    id[..8].copy_from_slice(tag);
    id[8] = b'-';
    let digits = (u64::BITS - n.leading_zeros()).div_ceil(4).max(1) as usize;
    hex(n, &mut id[9..9 + digits]);
    HeaderValue::from_bytes(&id[..9 + digits]).expect("hex digits form a header value")
}

/// Writes the low `out.len()` hex digits of `n` into `out`, most significant first.
fn hex(mut n: u64, out: &mut [u8]) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// Whether a client opened with HTTP/2's connection preface (h2c with prior knowledge);
/// the bytes stay in the socket for the protocol's own parser. The caller bounds the
/// wait (a client that sends a prefix of the preface and stops is cut by the header
/// timeout).
async fn sends_h2_preface(stream: &TcpStream) -> bool {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut head = [0u8; 24];
    let Ok(mut n) = stream.peek(&mut head).await else {
        return false;
    };
    loop {
        if n == 0 || head[..n] != PREFACE[..n] {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        // A prefix of the preface. `peek` answers at once while bytes wait, so wait
        // for the socket to report new bytes instead: look again, and if no more bytes
        // came, clear its readiness in the same step (`try_io` clears only the
        // readiness seen before the look, so a later arrival is never missed), then
        // sleep until the next arrival.
        let seen = n;
        let more = stream.try_io(Interest::READABLE, || {
            let mut buf = ReadBuf::new(&mut head);
            let mut cx = Context::from_waker(Waker::noop());
            match stream.poll_peek(&mut cx, &mut buf) {
                Poll::Ready(Ok(got)) if got > seen => Ok(got),
                Poll::Ready(Ok(_)) | Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
                Poll::Ready(Err(err)) => Err(err),
            }
        });
        match more {
            Ok(got) => n = got,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                if stream.readable().await.is_err() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

/// A connection's socket, telling the [`watchdog`] whether a write is waiting for the
/// client to make room (so a response is still being written).
struct Counted {
    stream: TcpStream,
    activity: Arc<Activity>,
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

/// What one connection's requests share: the face, and the requests' progress.
struct Connection<H> {
    handler: Arc<H>,
    activity: Arc<Activity>,
    /// The listener's rate limit, if any.
    rate: Option<Arc<RateLimit>>,
    /// The peer's address: the rate limit's key.
    client: std::net::IpAddr,
}

/// What a connection's requests have done, for its [`watchdog`].
#[derive(Debug, Default)]
struct Activity {
    /// Requests whose head has been read.
    begun: AtomicU64,
    /// Requests whose handler returned (hyper may still be writing the body).
    answered: AtomicU64,
    /// Whether the last write to the socket waited for room: a response (its body
    /// perhaps long after its handler returned) is still being written.
    writing: AtomicBool,
    /// Writes to the socket that went through: a stalled response's count stands still.
    writes: AtomicU64,
}

/// The watchdog of one connection: cuts off clients too slow to send a request head
/// (or idle), and asks the connection to finish gracefully when the server stops.
struct Watch<'a> {
    activity: &'a Activity,
    period: Duration,
    /// How long a response may wait for its client to take more of it.
    stall: Duration,
    stop: &'a CancellationToken,
}

impl Watch<'_> {
    /// Drives `connection` to its end, closing it when a whole period passes in which
    /// no request began while none was in flight and no response was being written; on
    /// stop, `shut_down` lets the requests in flight finish first. A response still being
    /// written that made no progress for `stall` (checked once a period) closes it too.
    async fn run<C, E>(&self, connection: C, shut_down: impl Fn(Pin<&mut C>))
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::AsyncWriteExt as _;

    use super::*;

    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[test]
    fn request_ids_are_the_process_tag_and_a_hex_counter_unless_the_client_sent_one() {
        let none = hyper::HeaderMap::new();
        let ids: Vec<String> = (0..40)
            .map(|_| request_id(&none).to_str().unwrap().to_owned())
            .collect();
        let (tag, _) = ids[0].split_once('-').unwrap();
        let counters: Vec<u64> = ids
            .iter()
            .map(|id| {
                let (t, n) = id.split_once('-').expect("tag-counter");
                assert_eq!(t, tag, "{id}");
                assert_eq!(t.len(), 8, "{id}");
                assert!(!n.starts_with('0') || n == "0", "no leading zero: {id}");
                u64::from_str_radix(n, 16).expect("hex")
            })
            .collect();
        // Other tests draw ids too: increasing, not always consecutive.
        assert!(counters.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let mut digits = [0; 16];
        hex(u64::MAX, &mut digits);
        assert_eq!(&digits, b"ffffffffffffffff");
        hex(0x1a, &mut digits[..3]);
        assert_eq!(&digits[..3], b"01a");

        let mut given = hyper::HeaderMap::new();
        given.insert(X_REQUEST_ID, HeaderValue::from_static("trace-42"));
        assert_eq!(request_id(&given), "trace-42");
        given.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&given), "has space", "not visible ASCII only");
    }

    /// A future that counts how often it is polled.
    struct Polls<F> {
        inner: Pin<Box<F>>,
        polls: usize,
    }

    impl<F: Future> Future for Polls<F> {
        type Output = F::Output;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            self.polls += 1;
            self.inner.as_mut().poll(cx)
        }
    }

    #[tokio::test]
    async fn a_preface_in_two_parts_is_awaited_without_busy_polling() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(&PREFACE[..10]).await.unwrap();
        let mut check = Polls {
            inner: Box::pin(sends_h2_preface(&server)),
            polls: 0,
        };
        // A prefix, then silence: still undecided, and woken only by arrivals.
        let waited = tokio::time::timeout(Duration::from_millis(300), &mut check).await;
        assert!(waited.is_err(), "decided on a prefix of the preface");
        assert!(
            check.polls <= 3,
            "polled {} times in 300 ms while no byte came",
            check.polls
        );
        client.write_all(&PREFACE[10..]).await.unwrap();
        let sent = tokio::time::timeout(Duration::from_secs(5), &mut check).await;
        assert_eq!(sent, Ok(true), "the rest of the preface was not seen");

        // Anything else is HTTP/1.1 as soon as it differs.
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"PRI * HTTP/1.1").await.unwrap();
        assert!(!sends_h2_preface(&server).await);
    }
}
