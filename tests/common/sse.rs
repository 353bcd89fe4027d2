//! A Server-Sent Events client for the change-feed tests: one HTTP/1.1 (or HTTP/2 prior
//! knowledge) request, its body read frame by frame and split into events.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

/// One event: its `id`, `event` name and `data`; a comment has none of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
}

impl Event {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.data.as_deref().unwrap_or("null")).unwrap()
    }
}

/// An open subscription.
pub struct Subscription {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    body: Incoming,
    buffer: BytesMut,
    /// The body of a refusal (a problem document).
    pub refusal: Bytes,
}

impl Subscription {
    /// `GET path` with `headers` on a connection of its own (HTTP/2 when `h2`).
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)], h2: bool) -> Self {
        Self::open_from([127, 0, 0, 1], addr, path, headers, h2).await
    }

    /// As [`Subscription::open`], from the loopback address `source`.
    pub async fn open_from(
        source: [u8; 4],
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        h2: bool,
    ) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(stream);
        let mut request = hyper::Request::builder()
            .uri(format!("http://{addr}{path}"))
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(http_body_util::Empty::<Bytes>::new()).unwrap();
        let response = if h2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut body = response.into_body();
        let refusal = if status == 200 {
            Bytes::new()
        } else {
            (&mut body).collect().await.unwrap().to_bytes()
        };
        Self {
            status,
            headers,
            body,
            buffer: BytesMut::new(),
            refusal,
        }
    }

    /// The next event or comment within `wait`; `None` when the stream ended or nothing
    /// came.
    pub async fn next(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block = self.buffer.split_to(end + 2);
                return Some(parse(&block));
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??;
            if let Ok(data) = frame.ok()?.into_data() {
                self.buffer.extend_from_slice(&data);
            }
        }
    }

    /// The next `change` or `reset` event (heartbeat comments skipped) within `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next(left).await?;
            if event.event.is_some() {
                return Some(event);
            }
        }
    }
}

fn parse(block: &[u8]) -> Event {
    let text = String::from_utf8_lossy(block);
    let mut event = Event {
        id: None,
        event: None,
        data: None,
    };
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            event.id = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("event: ") {
            event.event = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("data: ") {
            event.data = Some(v.to_owned());
        }
    }
    event
}
