//! A small HTTP/1.1 client for the calls `catalogd` makes itself: `catalogd probe` (a
//! container's health check), the edge purger's `PURGE` requests and webhook
//! deliveries (a `POST` with a body, [`Connection::send_body`]). Plain `http://` only:
//! this build has no TLS, so `https://` webhook receivers are refused at registration.
//! One connection at a time, and every call bounded by a deadline.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;

/// Why a call got no status.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host[:port][/path]`.
    #[error("not an http:// URL: {0}")]
    Url(String),
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The HTTP exchange failed.
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Where requests go: the `host:port` of an `http://` URL, and its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, as connected to and sent in `Host`.
    authority: String,
    /// The URL's path and query, `/` when it has none.
    path: String,
}

impl Target {
    /// Parses `http://host[:port][/path]` (port 80 when absent).
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::Url(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("http") {
            return Err(bad());
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        let port = uri.port_u16().unwrap_or(80);
        let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
        Ok(Self {
            authority: format!("{host}:{port}"),
            path: if path.is_empty() {
                "/".to_owned()
            } else {
                path.to_owned()
            },
        })
    }

    /// The URL's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Opens a connection within `deadline`.
    pub async fn connect(&self, deadline: Duration) -> Result<Connection, ClientError> {
        let connect = async {
            let stream = tokio::net::TcpStream::connect(&self.authority).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "client connection ended");
                }
            });
            Ok::<_, ClientError>(sender)
        };
        let sender = tokio::time::timeout(deadline, connect)
            .await
            .map_err(|_| ClientError::Timeout(deadline))??;
        Ok(Connection {
            sender,
            host: self.authority.clone(),
            closed: false,
        })
    }
}

/// Most bytes of an answer's body [`Connection::send_body`] reads.
pub const ANSWER_BODY_LIMIT: usize = 64 * 1024;

/// One open connection; requests on it go one after another.
#[derive(Debug)]
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    /// An answer's body was left unread: the connection cannot carry another request.
    closed: bool,
}

impl Connection {
    /// Whether the connection can carry another request.
    pub fn is_open(&self) -> bool {
        !self.closed && !self.sender.is_closed()
    }

    /// Sends a bodiless request with `headers` and reads the whole answer within
    /// `deadline`; its status.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        deadline: Duration,
    ) -> Result<StatusCode, ClientError> {
        self.send_body(method, path, headers, Bytes::new(), deadline)
            .await
    }

    /// Sends a request with `headers` and `body` (with its `Content-Length`), and reads
    /// the answer within `deadline`; its status. Of the answer's body at most
    /// [`ANSWER_BODY_LIMIT`] bytes are read: past that the connection is closed (the
    /// status stands).
    pub async fn send_body(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        deadline: Duration,
    ) -> Result<StatusCode, ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|err| ClientError::Url(err.to_string()))?;
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let limited = Limited::new(response.into_body(), ANSWER_BODY_LIMIT);
            match limited.collect().await {
                Ok(_) => {}
                Err(err) => match err.downcast::<hyper::Error>() {
                    Ok(err) => return Err(ClientError::Http(*err)),
                    // Too long: the status is all we wanted; the rest is not read.
                    Err(_) => self.closed = true,
                },
            }
            Ok::<_, ClientError>(status)
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| ClientError::Timeout(deadline))?
    }
}

/// `GET url` on a connection of its own, within `deadline` in all: its status.
pub async fn get(url: &str, deadline: Duration) -> Result<StatusCode, ClientError> {
    let target = Target::parse(url)?;
    let exchange = async {
        let mut connection = target.connect(deadline).await?;
        connection
            .send(Method::GET, target.path(), &[], deadline)
            .await
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| ClientError::Timeout(deadline))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_plain_http_urls() {
        let t = Target::parse("http://varnish:6081").unwrap();
        assert_eq!((t.authority.as_str(), t.path()), ("varnish:6081", "/"));
        let t = Target::parse("http://127.0.0.1/readyz?x=1").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path()),
            ("127.0.0.1:80", "/readyz?x=1")
        );
        for bad in ["https://h", "varnish:80", "http://", "ftp://h/", ""] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_silent_server_costs_the_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/healthz", listener.local_addr().unwrap());
        let result = get(&url, Duration::from_millis(100)).await;
        assert!(matches!(result, Err(ClientError::Timeout(_))), "{result:?}");
        drop(listener);
    }
}
