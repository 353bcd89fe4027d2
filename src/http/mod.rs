//! HTTP server plumbing shared by both faces: a bounded accept loop over raw hyper 1.x
//! connections (HTTP/1.1 keep-alive, and HTTP/2 cleartext with prior knowledge), limits
//! on connections, header size and count and header read time, and a graceful drain.
//!
//! It knows nothing of routes: a face implements [`Handler`]. Each request's
//! `X-Request-Id` is made in `request_id.rs`.
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
mod request_id;
pub mod response;
pub mod surrogate;
mod watchdog;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::HeaderName;
use hyper::server::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use rate::RateLimit;
use request_id::request_id;
use watchdog::{Activity, Counted, InFlight, Watch};

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

/// What one connection's requests share: the face, and the requests' progress.
struct Connection<H> {
    handler: Arc<H>,
    activity: Arc<Activity>,
    /// The listener's rate limit, if any.
    rate: Option<Arc<RateLimit>>,
    /// The peer's address: the rate limit's key.
    client: std::net::IpAddr,
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::AsyncWriteExt as _;

    use super::*;

    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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
