//! The ceiling of the comparison script (`bench/compare.sh`): the least a hyper server
//! can do to answer a product request. It answers every request with the same JSON
//! document and the headers the reader sends (`Content-Type`, `ETag`,
//! `Cache-Control`), over HTTP/1.1 keep-alive on a multi-threaded tokio runtime, with
//! no routing, cache or metrics. The reader's hit path is measured against it.
//!
//! Usage: `ceiling [ADDR] [BODY_FILE] [REDIS_URL REDIS_KEY]` (default `127.0.0.1:18080`,
//! and a built-in ~1 KB document; `compare.sh` passes a document the reader serves, so
//! both send the same bytes, or a batch of 50 of them). With `REDIS_URL` and
//! `REDIS_KEY`, each request instead answers the value of `GET REDIS_KEY` (one command
//! per request, on one multiplexed `fred` client with `TCP_NODELAY`, as the reader's
//! L2): the least an L1 miss answered from Redis can cost.

use std::convert::Infallible;

use bytes::Bytes;
use fred::prelude::{Builder, ClientLike, Config, KeysInterface, TcpConfig};
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A product document of the demo catalog's size.
fn document() -> Bytes {
    let description = "x".repeat(640);
    Bytes::from(format!(
        "{{\"id\":1,\"sku\":\"ACM-BEN-0000001\",\"name\":\"Acme Wireless Headphones Pro 300\",\
         \"description\":\"{description}\",\"brand\":\"Acme\",\"price\":{{\"amount\":2999,\
         \"currency\":\"USD\"}},\"stock\":12,\"attributes\":{{\"color\": \"black\"}},\
         \"images\":[\"https://img.example.com/p/1/1.jpg\"],\"categories\":[\"electronics\"],\
         \"version\":1,\"updated_at\":\"2026-11-23T12:00:00.000000Z\"}}"
    ))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18080".to_owned());
    let body = match args.next() {
        Some(path) => Bytes::from(std::fs::read(path)?),
        None => document(),
    };
    let redis = match (args.next(), args.next()) {
        (Some(url), Some(key)) => Some((redis(&url).await?, fred::types::Key::from(key))),
        _ => None,
    };
    let listener = TcpListener::bind(&addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let redis = redis.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_request: Request<hyper::body::Incoming>| {
                let (body, redis) = (body.clone(), redis.clone());
                async move {
                    let body = match redis {
                        Some((client, key)) => client
                            .get::<Option<Bytes>, _>(key)
                            .await
                            .ok()
                            .flatten()
                            .unwrap_or_default(),
                        None => body,
                    };
                    Ok::<_, Infallible>(respond(body))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A connected Redis client, as the reader configures its own.
async fn redis(url: &str) -> std::io::Result<fred::clients::Client> {
    let client = Config::from_url(url)
        .and_then(|config| {
            Builder::from_config(config)
                .with_connection_config(|conn| {
                    conn.tcp = TcpConfig {
                        nodelay: Some(true),
                        ..TcpConfig::default()
                    };
                })
                .build()
        })
        .map_err(std::io::Error::other)?;
    client.init().await.map_err(std::io::Error::other)?;
    Ok(client)
}

/// The answer: `body` with the reader's headers.
fn respond(body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(ETAG, HeaderValue::from_static("\"1\""));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=5, stale-while-revalidate=30"),
    );
    response
}
