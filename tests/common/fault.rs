//! A small fault-injecting TCP proxy for the integration tests: faults a process
//! signal cannot make (a peer that stops answering while its sockets stay open, as
//! behind a network black hole) on loopback, without netem or toxiproxy.
//!
//! Every connection accepted on [`FaultProxy::addr`] is forwarded to the target.
//! [`FaultProxy::freeze`] stops moving bytes in both directions on every connection,
//! open or new, until [`FaultProxy::thaw`]; nothing is closed. [`FaultProxy::freeze_on`]
//! freezes the moment a client sends bytes holding a pattern (after forwarding them):
//! a server that goes silent in the middle of a query. A query's text passes only when
//! a connection prepares the statement, the first time it runs it: sqlx sends later
//! executions without it. [`FaultProxy::down`] is a peer
//! that is gone: open connections are closed and new ones are closed at once, until
//! [`FaultProxy::up`]. [`FaultProxy::retarget`] sends new connections elsewhere (a
//! service address that moves to a promoted replica).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy to one target, stopped when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
    down: watch::Sender<bool>,
    target: Arc<Mutex<SocketAddr>>,
    trigger: Trigger,
    accept: tokio::task::JoinHandle<()>,
}

/// A pattern that freezes the proxy when a client sends it.
type Trigger = Arc<Mutex<Option<&'static [u8]>>>;

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, gate) = watch::channel(false);
        let (down, cut) = watch::channel(false);
        let target = Arc::new(Mutex::new(target));
        let trigger: Trigger = Arc::default();
        let (freezer, armed) = (frozen.clone(), Arc::clone(&trigger));
        let current = Arc::clone(&target);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *cut.borrow() {
                    drop(client); // a peer that is gone: closed at once
                    continue;
                }
                let to = *current.lock().unwrap();
                let Ok(upstream) = TcpStream::connect(to).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (upstream_read, upstream_write) = upstream.into_split();
                let watch = Some((Arc::clone(&armed), freezer.clone()));
                let (gate, cut) = (gate.clone(), cut.clone());
                tokio::spawn(pump(
                    client_read,
                    upstream_write,
                    gate.clone(),
                    cut.clone(),
                    watch,
                ));
                tokio::spawn(pump(upstream_read, client_write, gate, cut, None));
            }
        });
        Self {
            addr,
            frozen,
            down,
            target,
            trigger,
            accept,
        }
    }

    /// Stops forwarding: peers see an open connection that says nothing.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Freezes once a client sends bytes holding `pattern`, after they are forwarded.
    pub fn freeze_on(&self, pattern: &'static [u8]) {
        *self.trigger.lock().unwrap() = Some(pattern);
    }

    /// Whether the proxy holds everything back (by [`FaultProxy::freeze`] or a trigger).
    pub fn is_frozen(&self) -> bool {
        *self.frozen.borrow()
    }

    /// Forwards again, what was held back first; disarms any trigger.
    pub fn thaw(&self) {
        *self.trigger.lock().unwrap() = None;
        self.frozen.send_replace(false);
    }

    /// The peer is gone: every open connection is closed, and new ones are closed as
    /// soon as they are accepted, until [`FaultProxy::up`].
    pub fn down(&self) {
        self.down.send_replace(true);
    }

    /// Accepts and forwards connections again (to the current target).
    pub fn up(&self) {
        self.down.send_replace(false);
    }

    /// New connections go to `target` from now on; open ones stay where they are.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to` until `cut` says down (both halves are then dropped, which
/// closes the connection), holding each chunk while the gate says frozen; with a
/// trigger, a chunk holding its pattern freezes the proxy once forwarded.
async fn pump(
    from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    gate: watch::Receiver<bool>,
    mut cut: watch::Receiver<bool>,
    trigger: Option<(Trigger, watch::Sender<bool>)>,
) {
    tokio::select! {
        () = forward(from, to, gate, trigger) => {}
        _ = cut.wait_for(|down| *down) => {}
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
    trigger: Option<(Trigger, watch::Sender<bool>)>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if gate.wait_for(|frozen| !frozen).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if gate.wait_for(|frozen| !frozen).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if let Some((armed, freezer)) = &trigger {
            let mut armed = armed.lock().unwrap();
            if armed.is_some_and(|pattern| buf[..n].windows(pattern.len()).any(|w| w == pattern)) {
                *armed = None;
                freezer.send_replace(true);
            }
        }
    }
}

/// `url` (a `postgres://…@host:port/db` URL) pointed at `addr` instead.
pub fn through(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((credentials, rest)) => (format!("{credentials}@"), rest),
        None => (String::new(), rest),
    };
    let path = rest.find('/').map_or("", |at| &rest[at..]);
    format!("{scheme}://{credentials}{addr}{path}")
}

/// The `host:port` a `postgres://` URL names.
pub fn target(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    let host_port = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().expect("host:port in the URL")
}
