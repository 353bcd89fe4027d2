//! L2: versioned product documents in Redis, shared by every reader.
//!
//! A key `<prefix>p:<id>` holds `F<version>|<sku length>|<sku><body>` for a live product or
//! `G<version>` for a tombstone. Writes go through a Lua script that compares versions,
//! so an older document can never overwrite a newer one, whoever writes last. Every
//! command has a short timeout: a slow or absent Redis costs a read a few milliseconds
//! and a counted error, never a failed request; and a Redis that keeps failing opens a
//! [`Breaker`], so reads stop waiting on it at all until it answers again.
//!
//! Redis is one server (`redis://`), a Redis Cluster (`redis-cluster://`, seed nodes) or
//! a primary found through sentinels (`redis-sentinel://`): see [`redis_config`]. On a
//! cluster, documents spread over every master by their own keys: each command names
//! one key (the script included), and a batch is a pipeline that fred sends to each
//! key's node, never a multi-key command.
//!
//! A reader's L2 coalesces the lookups of concurrent misses ([`L2::coalescing`]): a
//! miss's `GET` joins the misses that arrived meanwhile in one `MGET` (a pipeline on a
//! cluster), so fred's per-command work and the round trip's system calls are shared.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use fred::prelude::*;
use fred::types::CustomCommand;
use fred::types::scripts::Script;
use fred::util::redis_keyslot;
use prometheus_client::metrics::counter::Counter;

use super::breaker::Breaker;
use super::coalesce::Coalescer;

use crate::document::{Document, Lookup};

/// Sets the key unless it already holds a version at least as new.
/// KEYS[1] key; ARGV[1] version, ARGV[2] value, ARGV[3] ttl in seconds. Returns 1 if set.
const PUT_IF_NEWER: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local v = tonumber(string.match(cur, '^%a(%d+)'))
  if v and v >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
";

/// How to reach Redis and how long documents live there.
#[derive(Debug, Clone)]
pub struct L2Config {
    /// `redis://`, `redis-cluster://` or `redis-sentinel://` URL ([`redis_config`]).
    pub url: String,
    /// Prefix of every key, so deployments (and tests) can share one Redis.
    pub prefix: String,
    /// Lifetime of a stored document; versions keep it coherent, this bounds memory.
    pub ttl: Duration,
    /// Timeout of each command.
    pub command_timeout: Duration,
    /// Counts the openings of the circuit breaker.
    pub breaker_trips: Counter,
}

/// The Redis tier.
#[derive(Clone)]
pub struct L2 {
    client: Client,
    prefix: Arc<str>,
    ttl_secs: u64,
    put_if_newer: Script,
    /// Whether `put_if_newer` was loaded for [`L2::put_many`]'s pipelines (cleared when
    /// Redis answers that it lost it).
    put_script_loaded: Arc<AtomicBool>,
    breaker: Arc<Breaker>,
    /// The deadline of each command, and of a lookup waiting for its batch.
    timeout: Duration,
    /// Where single lookups are batched, when this L2 coalesces them.
    lookups: Option<Coalescer<i64, Option<Lookup>, fred::error::Error>>,
}

/// Batches of coalesced lookups in flight at once: a few, so one slow answer does not
/// hold every miss back, and few enough that busy misses gather into batches.
const BATCHES_IN_FLIGHT: usize = 4;

impl std::fmt::Debug for L2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2").field("prefix", &self.prefix).finish()
    }
}

impl L2 {
    /// A client that connects in the background and reconnects forever with backoff:
    /// the service starts (and serves from L1 and the databases) even while Redis is down.
    pub fn connect(config: &L2Config) -> Result<Self, fred::error::Error> {
        let timeout = config.command_timeout;
        let client = Builder::from_config(redis_config(&config.url)?)
            .with_performance_config(|perf| perf.default_command_timeout = timeout)
            .with_connection_config(|conn| {
                conn.connection_timeout = Duration::from_secs(1);
                conn.max_command_attempts = 1;
                conn.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..TcpConfig::default()
                };
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .build()?;
        client.connect();
        Ok(Self {
            client,
            prefix: config.prefix.as_str().into(),
            ttl_secs: config.ttl.as_secs().max(1),
            put_if_newer: Script::from_lua(PUT_IF_NEWER),
            put_script_loaded: Arc::default(),
            breaker: Arc::new(Breaker::new(config.breaker_trips.clone())),
            timeout,
            lookups: None,
        })
    }

    /// This L2 with its single lookups ([`L2::get`]) coalesced into batches of at most
    /// `max_batch` keys ([`Coalescer`]); `max_batch` 0 leaves one command per lookup.
    /// Spawns the batch task, which ends when the last clone of the returned L2 is gone.
    #[must_use]
    pub fn coalescing(self, max_batch: usize) -> Self {
        if max_batch == 0 {
            return self;
        }
        let plain = self.clone();
        let lookups = Coalescer::start(
            move |ids: Vec<i64>| {
                let l2 = plain.clone();
                // Boxed where it is made: `get_many`'s future holds fred's command
                // futures (kilobytes), and the batch task moves it twice more (into
                // its own future, then into the set of batches in flight).
                Box::pin(async move { l2.get_many(&ids).await })
            },
            max_batch,
            BATCHES_IN_FLIGHT,
        );
        Self {
            lookups: Some(lookups),
            ..self
        }
    }

    /// Waits (bounded) for the first connection; an error means Redis is not there yet.
    pub async fn wait_connected(&self, within: Duration) -> Result<(), fred::error::Error> {
        match tokio::time::timeout(within, self.client.wait_for_connect()).await {
            Ok(result) => result,
            Err(_) => Err(fred::error::Error::new(
                fred::error::ErrorKind::Timeout,
                "Redis did not answer in time",
            )),
        }
    }

    /// How long a stored document lives.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }

    /// The underlying client, for the relay's stream commands.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn key(&self, id: i64) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 24);
        key.push_str(&self.prefix);
        key.push_str("p:");
        key.push_str(itoa::Buffer::new().format(id));
        key
    }

    /// Runs one command, made by `command`, unless the breaker is open, and tells the
    /// breaker how it went. It takes a maker rather than the command's future: a future
    /// passed in is stored twice in this one (as an argument and while awaited), and
    /// fred's are about 5 KB, which a fill's future then copies into its box.
    async fn guarded<T, F>(&self, command: impl FnOnce() -> F) -> Result<T, fred::error::Error>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        if !self.breaker.allows() {
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                "circuit open: Redis kept failing",
            ));
        }
        let result = command().await;
        self.breaker.record(result.is_ok());
        result
    }

    /// What L2 holds for `id`: `Ok(None)` when nothing. Coalesced with concurrent
    /// lookups when this L2 coalesces ([`L2::coalescing`]), within one command's
    /// deadline in all; alone when the batch queue is full.
    pub async fn get(&self, id: i64) -> Result<Option<Lookup>, fred::error::Error> {
        if let Some(lookups) = &self.lookups {
            match tokio::time::timeout(self.timeout, lookups.get(id)).await {
                Ok(Ok(answer)) => return answer,
                Ok(Err(_)) => {}
                Err(_) => {
                    return Err(fred::error::Error::new(
                        fred::error::ErrorKind::Timeout,
                        "a coalesced lookup was not answered in time",
                    ));
                }
            }
        }
        let raw: Option<Bytes> = self.guarded(|| self.client.get(self.key(id))).await?;
        Ok(raw.and_then(|raw| decode(id, raw)))
    }

    /// What L2 holds for each of `ids`, in order.
    pub async fn get_many(&self, ids: &[i64]) -> Result<Vec<Option<Lookup>>, fred::error::Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|&id| self.key(id)).collect();
        let raw: Vec<Option<Bytes>> = if self.client.is_clustered() {
            // MGET needs all its keys in one slot, and documents are spread over the
            // cluster. A pipeline of GETs instead: fred writes each to the node that owns
            // its key's slot (one round trip per node, all at once) and answers in order.
            let pipeline = self.client.pipeline();
            for key in keys {
                let _: () = pipeline.get(key).await?;
            }
            self.guarded(|| pipeline.all()).await?
        } else {
            self.guarded(|| self.client.mget(keys)).await?
        };
        if raw.len() != ids.len() {
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::Protocol,
                "Redis answered a batch with a different number of values",
            ));
        }
        Ok(ids
            .iter()
            .zip(raw)
            .map(|(&id, raw)| raw.and_then(|raw| decode(id, raw)))
            .collect())
    }

    /// Drops what L2 holds for `id` (an operator's purge).
    pub async fn remove(&self, id: i64) -> Result<(), fred::error::Error> {
        let _: i64 = self.guarded(|| self.client.del(self.key(id))).await?;
        Ok(())
    }

    /// Stores each document unless L2 already holds its version or a newer one, in one
    /// pipeline (one round trip for the whole batch: the relay's write-through). The
    /// script is loaded by the first call, and again when Redis answers that it lost it
    /// (a restart, a failover, `SCRIPT FLUSH`); the pipeline is then sent again whole,
    /// which is harmless since every put compares versions.
    pub async fn put_many(&self, lookups: &[(i64, Lookup)]) -> Result<(), fred::error::Error> {
        let values: Vec<(i64, i64, Bytes)> = lookups
            .iter()
            .filter_map(|(id, lookup)| Some((*id, lookup.version(), encode(lookup)?)))
            .collect();
        if values.is_empty() {
            return Ok(());
        }
        let sha: Value = self.put_if_newer.sha1().clone().into();
        let ttl: Value = i64::try_from(self.ttl_secs).unwrap_or(i64::MAX).into();
        let pipeline = self.client.pipeline();
        for (id, version, value) in values {
            let key = self.key(id);
            // The key's slot, said explicitly: fred would otherwise hash the first
            // string argument, the script's digest, and send it to the wrong node.
            let slot = redis_keyslot(key.as_bytes());
            let args: Vec<Value> = vec![
                sha.clone(),
                1.into(),
                key.into(),
                version.into(),
                value.into(),
                ttl.clone(),
            ];
            let _: () = pipeline
                .custom(
                    CustomCommand::new_static("EVALSHA", Some(slot), false),
                    args,
                )
                .await?;
        }
        if !self.put_script_loaded.load(Ordering::Relaxed) {
            self.load_put_script().await?;
        }
        match self.guarded(|| pipeline.all::<Vec<Value>>()).await {
            Err(error) if error.details().starts_with("NOSCRIPT") => {
                self.load_put_script().await?;
                let _: Vec<Value> = self.guarded(|| pipeline.all()).await?;
                Ok(())
            }
            result => result.map(drop),
        }
    }

    /// Loads `put_if_newer` (on a cluster fred loads it on every master: `SCRIPT LOAD`
    /// to each).
    async fn load_put_script(&self) -> Result<(), fred::error::Error> {
        self.put_script_loaded.store(false, Ordering::Relaxed);
        self.guarded(|| self.put_if_newer.load(&self.client))
            .await?;
        self.put_script_loaded.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Stores `lookup` for `id` unless L2 already holds that version or a newer one.
    /// Returns whether it was stored. `Unknown` is never stored.
    pub async fn put(&self, id: i64, lookup: &Lookup) -> Result<bool, fred::error::Error> {
        let Some(value) = encode(lookup) else {
            return Ok(false);
        };
        let args: Vec<Value> = vec![
            lookup.version().into(),
            value.into(),
            i64::try_from(self.ttl_secs).unwrap_or(i64::MAX).into(),
        ];
        let stored: i64 = self
            .guarded(|| {
                self.put_if_newer
                    .evalsha_with_reload(&self.client, vec![self.key(id)], args)
            })
            .await?;
        Ok(stored == 1)
    }
}

/// The fred configuration of `CATALOG_REDIS_URL`:
///
/// - `redis://[user:password@]host[:port][/db]`: one server.
/// - `redis-cluster://[user:password@]host:port[,host:port...]`: a Redis Cluster, by
///   seed nodes (any masters or replicas; the rest is discovered, and followed through
///   resharding and failover).
/// - `redis-sentinel://[user:password@]host:port[,host:port...][/db]?sentinelServiceName=name`:
///   the primary that these sentinels name, followed across failovers.
///
/// The comma-separated node list is this service's form; it becomes fred's own
/// `?node=host:port` parameters, which are accepted as they are too.
pub fn redis_config(url: &str) -> Result<Config, fred::error::Error> {
    Config::from_url(&seed_nodes_as_params(url))
}

/// For the cluster and sentinel schemes, `scheme://[auth@]a:1,b:2,c:3[/path][?query]` as
/// `scheme://[auth@]a:1[/path]?node=b:2&node=c:3[&query]`; any other URL as it is.
fn seed_nodes_as_params(url: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Cow::Borrowed(url);
    };
    if !(scheme.ends_with("-cluster") || scheme.ends_with("-sentinel")) {
        return Cow::Borrowed(url);
    }
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    // The user information ends at the last `@` (a password may hold one).
    let (auth, hosts_and_path) = before_query
        .rfind('@')
        .map_or(("", before_query), |at| before_query.split_at(at + 1));
    let (hosts, path) = hosts_and_path
        .find('/')
        .map_or((hosts_and_path, ""), |slash| hosts_and_path.split_at(slash));
    let mut nodes = hosts
        .split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty());
    let (Some(first), others) = (nodes.next(), nodes.collect::<Vec<_>>()) else {
        return Cow::Borrowed(url);
    };
    if others.is_empty() {
        return Cow::Borrowed(url);
    }
    let params: Vec<String> = others
        .iter()
        .map(|node| format!("node={node}"))
        .chain((!query.is_empty()).then(|| query.to_owned()))
        .collect();
    Cow::Owned(format!(
        "{scheme}://{auth}{first}{path}?{}",
        params.join("&")
    ))
}

/// The stored form of a lookup; `None` for `Unknown`.
pub fn encode(lookup: &Lookup) -> Option<Bytes> {
    let mut digits = itoa::Buffer::new();
    match lookup {
        Lookup::Found(doc) => {
            let version = digits.format(doc.version);
            let mut sku_len = itoa::Buffer::new();
            let sku = doc.sku();
            let sku_len = sku_len.format(sku.len());
            let mut out = BytesMut::with_capacity(
                version.len() + sku_len.len() + sku.len() + doc.body().len() + 3,
            );
            out.put_u8(b'F');
            out.put_slice(version.as_bytes());
            out.put_u8(b'|');
            out.put_slice(sku_len.as_bytes());
            out.put_u8(b'|');
            out.put_slice(sku.as_bytes());
            out.put_slice(doc.body());
            Some(out.freeze())
        }
        Lookup::Gone { version } => {
            let mut out = Vec::with_capacity(21);
            out.push(b'G');
            out.extend_from_slice(digits.format(*version).as_bytes());
            Some(Bytes::from(out))
        }
        Lookup::Unknown => None,
    }
}

/// Parses a stored value (the document copies what it keeps). `None` if malformed.
pub fn decode(id: i64, raw: Bytes) -> Option<Lookup> {
    let (&kind, rest) = raw.split_first()?;
    let (version, rest) = leading_number(rest)?;
    match kind {
        b'G' if rest.is_empty() => Some(Lookup::Gone { version }),
        b'F' => {
            let (sku_len, rest) = leading_number(rest.strip_prefix(b"|")?)?;
            let rest = rest.strip_prefix(b"|")?;
            let sku_len = usize::try_from(sku_len).ok()?;
            let sku = std::str::from_utf8(rest.get(..sku_len)?).ok()?;
            let body_start = raw.len() - rest.len() + sku_len;
            Some(Lookup::Found(Arc::new(Document::new(
                id,
                version,
                sku,
                &raw[body_start..],
            ))))
        }
        _ => None,
    }
}

/// Splits a leading decimal number off `bytes`.
fn leading_number(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let end = bytes
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(bytes.len());
    let number = std::str::from_utf8(&bytes[..end]).ok()?.parse().ok()?;
    Some((number, &bytes[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        for sku in ["ACM-1", "odd|sku", ""] {
            let doc = Lookup::Found(Arc::new(Document::new(5, 12, sku, b"{\"a\":\"x|y\"}")));
            assert_eq!(decode(5, encode(&doc).unwrap()), Some(doc));
        }
        let gone = Lookup::Gone { version: 3 };
        assert_eq!(decode(5, encode(&gone).unwrap()), Some(gone));
        assert_eq!(encode(&Lookup::Unknown), None);
    }

    #[test]
    fn seed_node_lists_become_node_parameters() {
        for plain in [
            "redis://127.0.0.1:6379",
            "redis://:pw@h:1/2",
            "redis-cluster://h:1",
            "redis-cluster://h:1?node=h:2",
        ] {
            assert_eq!(seed_nodes_as_params(plain), plain);
        }
        assert_eq!(
            seed_nodes_as_params(
                "redis-cluster://127.0.0.1:17000,127.0.0.1:17001, 127.0.0.1:17002"
            ),
            "redis-cluster://127.0.0.1:17000?node=127.0.0.1:17001&node=127.0.0.1:17002"
        );
        assert_eq!(
            seed_nodes_as_params("redis-cluster://u:p@ss@a:1,b:2"),
            "redis-cluster://u:p@ss@a:1?node=b:2"
        );
        assert_eq!(
            seed_nodes_as_params("redis-sentinel://s1:26379,s2:26380/1?sentinelServiceName=main"),
            "redis-sentinel://s1:26379/1?node=s2:26380&sentinelServiceName=main"
        );
        let hosts = |url: &str| {
            let server = redis_config(url).unwrap().server;
            let kind = if server.is_clustered() {
                "cluster"
            } else if server.is_sentinel() {
                "sentinel"
            } else {
                "centralized"
            };
            (server.hosts().len(), kind)
        };
        assert_eq!(
            hosts("redis-cluster://127.0.0.1:17000,127.0.0.1:17001,127.0.0.1:17002"),
            (3, "cluster")
        );
        assert_eq!(
            hosts("redis-sentinel://127.0.0.1:26379,127.0.0.1:26380?sentinelServiceName=m"),
            (2, "sentinel")
        );
        assert_eq!(hosts("redis://127.0.0.1:6379"), (1, "centralized"));
        assert!(
            redis_config("redis-sentinel://127.0.0.1:26379").is_err(),
            "no service name"
        );
    }

    #[test]
    fn malformed_values_are_ignored() {
        for raw in [
            &b""[..],
            b"X1",
            b"F",
            b"Fx|1|a",
            b"F1",
            b"F1|9|short",
            b"F1|x|",
            b"G1|x",
            b"G",
        ] {
            assert_eq!(decode(1, Bytes::from_static(raw)), None, "{raw:?}");
        }
    }
}
