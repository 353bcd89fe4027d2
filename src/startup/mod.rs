//! Builds the process from its configuration: pools, caches, background tasks and
//! listeners; then runs until a shutdown token fires.
//!
//! [`Application::build`] binds the listeners of the chosen [`Role`] (port 0 works, for
//! tests) and exposes the bound addresses; [`Application::run_until_stopped`] serves
//! until the token is cancelled, then drains connections for a bounded time. Every
//! background task gets a child token; a task that exits early, or panics, is logged
//! and stops the process, after the listeners drained.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cache::{L1, L1Config};
use crate::coherence::auditor::{AuditSettings, Auditor};
use crate::coherence::consumer::{Consumer, Source, Targets};
use crate::coherence::feed::{Feed, Watchdog};
use crate::coherence::floors::Floors;
use crate::coherence::purger::EdgePurger;
use crate::coherence::relay::{Relay, Sink};
use crate::coherence::stream::Invalidation;
use crate::config::Config;
use crate::http::rate::{Rate, RateLimit};
use crate::http::{self, Draining, Limits, Policy};
use crate::metrics::Metrics;
use crate::metrics::face::MetricsFace;
use crate::read::changes::{ChangeFeed, Replay};
use crate::read::cors::Cors;
use crate::read::{DocumentTtl, Freshness, HttpCaching, Reader, ReaderSettings};
use crate::store::postgres::{self, PoolSettings};
use crate::store::redis::{L2, L2Config};
use crate::store::replicas::{self, Databases, Replica};
use crate::write::sweeper::{SweepSettings, Sweeper};
use crate::write::webhooks::deliverer::Deliverer;
use crate::write::{Writer, WriterLimits};

mod supervisor;

use supervisor::{Supervisor, shut_down_in_order};

/// How long in-flight requests get to finish after shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

/// How long start-up waits for Redis before going on without it (it keeps reconnecting).
const REDIS_STARTUP_WAIT: Duration = Duration::from_secs(2);

/// Most freshness floors kept; each is a few dozen bytes.
const FLOORS_CAPACITY: u64 = 1_000_000;

/// Invalidations the in-process bus holds for a slow consumer before it must flush.
const BUS_CAPACITY: usize = 16_384;

/// Which faces this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The storefront API and the invalidation consumer.
    Reader,
    /// The admin API and the outbox relay.
    Writer,
    /// Both, in one process.
    All,
}

/// What a face's listener does before the face: its rate limit, counted by face.
fn policy(rate: Option<Rate>, metrics: &Metrics, face: &'static str) -> Policy {
    Policy {
        rate: rate.map(|rate| {
            let rejected = metrics
                .rate_limited
                .get_or_create(&vec![("face", face)])
                .clone();
            Arc::new(RateLimit::new(rate, rejected))
        }),
    }
}

/// How every service pool connects: its size and the database calls' deadline.
fn pool_settings(config: &Config, synchronous_commit: Option<String>) -> PoolSettings {
    PoolSettings {
        max_connections: config.db_pool_size,
        statement_timeout: config.db_timeout,
        synchronous_commit,
    }
}

/// The reader's parts.
#[derive(Debug)]
struct ReadSide {
    reader: Arc<Reader>,
    listener: TcpListener,
    databases: Arc<Databases>,
    consumer: Option<(Consumer, Source)>,
    /// The feed's watchdog.
    feed: Watchdog,
    /// The consistency auditor, unless turned off.
    auditor: Option<Auditor>,
    check_interval: Duration,
    /// The live change feed, closed at shutdown so its connections can drain.
    changes: Arc<ChangeFeed>,
}

/// The writer's parts.
#[derive(Debug)]
struct WriteSide {
    writer: Arc<Writer>,
    listener: TcpListener,
    relay: Option<Relay>,
    purger: Option<Arc<EdgePurger>>,
    sweeper: Sweeper,
    /// Delivers webhooks (every writer, with or without Redis).
    deliverer: Arc<Deliverer>,
}

/// The running service, built but not yet serving.
#[derive(Debug)]
pub struct Application {
    read: Option<ReadSide>,
    write: Option<WriteSide>,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// Per-client rate limits of the storefront and admin faces.
    read_rate: Option<Rate>,
    write_rate: Option<Rate>,
    /// How long readiness is off before the listeners stop.
    shutdown_delay: Duration,
    /// The metrics listener (`CATALOG_METRICS_ADDR`), if any.
    metrics_listener: Option<TcpListener>,
}

impl Application {
    /// Connects to the stores and binds the listeners of `role`.
    pub async fn build(config: &Config, role: Role) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let l2 = match &config.redis_url {
            Some(url) => {
                let l2 = L2::connect(&L2Config {
                    url: url.clone(),
                    prefix: config.redis_prefix.clone(),
                    ttl: config.l2_ttl,
                    command_timeout: config.redis_timeout,
                    breaker_trips: metrics.l2_breaker_trips.clone(),
                })
                .context("CATALOG_REDIS_URL")?;
                if let Err(err) = l2.wait_connected(REDIS_STARTUP_WAIT).await {
                    tracing::warn!(error = %err, "Redis is not reachable yet; serving without it until it is");
                }
                Some(l2)
            }
            None => None,
        };
        // `all` without Redis: the relay and the consumer share an in-process bus.
        let (bus, bus_rx) = if role == Role::All && l2.is_none() {
            let (tx, rx) = tokio::sync::broadcast::channel::<Invalidation>(BUS_CAPACITY);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let read = match role {
            Role::Reader | Role::All => {
                let source = match (&config.redis_url, bus_rx) {
                    (Some(url), _) => Some(
                        Source::redis(url, &config.redis_prefix).context("CATALOG_REDIS_URL")?,
                    ),
                    (None, Some(rx)) => Some(Source::Local(rx)),
                    (None, None) => None,
                };
                let l2 = l2.clone().map(|l2| l2.coalescing(config.read.l2_coalesce));
                Some(Self::read_side(config, l2, source, &metrics).await?)
            }
            Role::Writer => None,
        };
        let write = match role {
            Role::Writer | Role::All => {
                let sink = match (l2, bus) {
                    (Some(l2), _) => {
                        Some(Sink::redis(l2, &config.redis_prefix, config.stream_max_len))
                    }
                    (None, Some(bus)) => Some(Sink::local(bus)),
                    (None, None) => None,
                };
                Some(Self::write_side(config, sink, &metrics).await?)
            }
            Role::Reader => None,
        };
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (CATALOG_METRICS_ADDR)"))?,
            ),
            None => None,
        };
        Ok(Self {
            read,
            write,
            metrics,
            limits: Limits {
                max_connections: config.read.max_connections,
                header_read_timeout: config.read.header_read_timeout,
                write_stall: config.read.write_stall,
                drain: DRAIN,
            },
            read_rate: config.read_rate,
            write_rate: config.write_rate,
            shutdown_delay: config.shutdown_delay,
            metrics_listener,
        })
    }

    /// The reader's pools: its own (the writer's stays the writer's), connected on
    /// first use, so a reader starts, and serves its caches, while a database is down.
    async fn read_side(
        config: &Config,
        l2: Option<L2>,
        source: Option<Source>,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<ReadSide> {
        let settings = pool_settings(config, None);
        let primary = postgres::connect_lazy(&config.database_url, &settings)
            .context("CATALOG_DATABASE_URL")?;
        let replicas = config
            .replica_urls
            .iter()
            .map(|url| {
                let pool =
                    postgres::connect_lazy(url, &settings).context("CATALOG_REPLICA_URLS")?;
                Ok(Replica::new(replicas::display_name(url), pool))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let databases = Arc::new(Databases::new(
            primary,
            replicas,
            config.read.primary_fallback,
            config.read.replica_max_lag_bytes,
        ));
        databases.check(metrics).await;
        let l1 = L1::new(L1Config {
            budget_bytes: config.read.l1_budget_bytes,
            max_ttl: config.read.l1_max_ttl,
            negative_ttl: config.read.negative_ttl,
            stale_if_error: config.read.stale_if_error,
        });
        // Floors outlive what they guard: L1 entries and L2 documents alike.
        let floors = Floors::new(FLOORS_CAPACITY, config.read.l1_max_ttl.max(config.l2_ttl));
        let (watermark, applied) = tokio::sync::watch::channel(0);
        let feed = Feed::new(config.feed_silence);
        let replay = l2.as_ref().map(|l2| Replay {
            client: l2.client().clone(),
            stream_key: crate::coherence::relay::stream_key(&config.redis_prefix),
        });
        let changes = ChangeFeed::new(config.read.changes, replay, Arc::clone(metrics));
        let consumer = source.map(|source| {
            let targets = Targets {
                l1: l1.clone(),
                floors: floors.clone(),
                watermark,
                feed: feed.clone(),
                metrics: Arc::clone(metrics),
                changes: Some(Arc::clone(&changes)),
            };
            (Consumer::new(targets), source)
        });
        let watchdog = Watchdog {
            feed: feed.clone(),
            l1: l1.clone(),
            applied: applied.clone(),
            databases: Arc::clone(&databases),
            metrics: Arc::clone(metrics),
        };
        let auditor = config.read.audit_interval.map(|interval| {
            let settings = AuditSettings {
                interval,
                sample: config.read.audit_sample,
                db_timeout: config.db_timeout,
            };
            Auditor::new(
                l1.clone(),
                databases.primary().clone(),
                Arc::clone(metrics),
                settings,
            )
        });
        let reader = Reader::new(
            l1,
            l2,
            Freshness {
                floors,
                applied,
                feed,
            },
            Arc::clone(&databases),
            Arc::clone(metrics),
            ReaderSettings {
                caching: HttpCaching {
                    max_age_secs: config.read.http_max_age_secs,
                    stale_while_revalidate_secs: config.read.http_stale_while_revalidate_secs,
                    stale_if_error_secs: config.read.stale_if_error.as_secs(),
                    surrogate_keys: config.read.surrogate_keys,
                    gzip: config.read.gzip,
                },
                db_timeout: config.db_timeout,
                request_timeout: config.read.request_timeout,
                token_bypass_max: config.read.token_bypass_max,
                ttl: DocumentTtl {
                    soft: config.read.l1_soft_ttl,
                    hard: config.read.l1_max_ttl,
                },
                cors: Cors::new(&config.read.cors_origins),
            },
        );
        let reader = reader
            .with_changes(Arc::clone(&changes))
            .coalescing_db_reads(config.read.db_coalesce);
        let reader = Arc::new(match config.metrics_addr {
            Some(_) => reader.metrics_elsewhere(),
            None => reader,
        });
        let listener = TcpListener::bind(config.reader_addr)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (CATALOG_READER_ADDR)",
                    config.reader_addr
                )
            })?;
        Ok(ReadSide {
            reader,
            listener,
            databases,
            consumer,
            feed: watchdog,
            auditor,
            check_interval: config.read.replica_check_interval,
            changes,
        })
    }

    /// The writer's pool, connected at once: a writer cannot work without the primary.
    async fn write_side(
        config: &Config,
        sink: Option<Sink>,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<WriteSide> {
        let settings = pool_settings(config, config.synchronous_commit.clone());
        let primary = postgres::connect(&config.database_url, &settings)
            .await
            .context("cannot connect to the primary (CATALOG_DATABASE_URL)")?;
        if config.admin_tokens.is_empty() {
            tracing::warn!("CATALOG_ADMIN_TOKENS is empty: every admin request will be refused");
        }
        let purger = (!config.edge_purge_urls.is_empty()).then(|| {
            EdgePurger::new(
                config.edge_purge_urls.clone(),
                config.edge_repurge,
                Arc::clone(metrics),
            )
        });
        let relay = match sink {
            Some(sink) => {
                let relay =
                    Relay::new(primary.clone(), sink, Arc::clone(metrics), config.heartbeat);
                Some(match &purger {
                    Some(purger) => relay.with_purger(Arc::clone(purger)),
                    None => relay,
                })
            }
            None => {
                tracing::warn!(
                    "writer without CATALOG_REDIS_URL: writes are not broadcast to other \
                     processes; their readers see them when L1 entries expire"
                );
                None
            }
        };
        let sweeper = Sweeper::new(
            primary.clone(),
            SweepSettings {
                interval: config.sweep_interval,
                outbox_retention: config.outbox_retention,
                deadline: config.db_timeout,
            },
            Arc::clone(metrics),
        );
        let deliverer = Deliverer::new(primary.clone(), config.webhooks, Arc::clone(metrics));
        let writer = Writer::new(
            primary,
            config.admin_tokens.clone(),
            Arc::clone(metrics),
            WriterLimits {
                max_body: config.max_body_bytes,
                idempotency_ttl: config.idempotency_ttl,
                db_timeout: config.db_timeout,
                body_grace: config.read.header_read_timeout,
            },
        );
        let writer = Arc::new(match config.metrics_addr {
            Some(_) => writer.metrics_elsewhere(),
            None => writer,
        });
        let listener = TcpListener::bind(config.writer_addr)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (CATALOG_WRITER_ADDR)",
                    config.writer_addr
                )
            })?;
        Ok(WriteSide {
            writer,
            listener,
            relay,
            purger,
            sweeper,
            deliverer,
        })
    }

    /// The address the reader listens on, if this process runs one.
    pub fn reader_addr(&self) -> Option<SocketAddr> {
        self.read
            .as_ref()
            .and_then(|r| r.listener.local_addr().ok())
    }

    /// The address the writer listens on, if this process runs one.
    pub fn writer_addr(&self) -> Option<SocketAddr> {
        self.write
            .as_ref()
            .and_then(|w| w.listener.local_addr().ok())
    }

    /// The address the metrics listener listens on, if this process runs one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` is cancelled (or a task fails), then stops: readiness
    /// turns false first, the listeners keep serving for the shutdown delay (so a
    /// balancer notices), then they stop accepting and drain in-flight requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(reader = ?self.reader_addr(), writer = ?self.writer_addr(), "serving");
        let stop = CancellationToken::new();
        let draining: Vec<Draining> = self
            .read
            .iter()
            .map(|read| read.reader.draining().clone())
            .chain(
                self.write
                    .iter()
                    .map(|write| write.writer.draining().clone()),
            )
            .collect();
        let sequencer = tokio::spawn(shut_down_in_order(
            shutdown,
            stop.clone(),
            draining,
            self.shutdown_delay,
        ));
        let mut tasks = Supervisor::default();
        if let Some(listener) = self.metrics_listener {
            let l1 = self.read.as_ref().map(|read| read.reader.l1().clone());
            let face = Arc::new(MetricsFace::new(Arc::clone(&self.metrics), l1));
            let serve = http::serve(
                listener,
                face,
                self.limits,
                Policy::default(),
                stop.child_token(),
            );
            tasks.spawn("metrics listener", serve);
        }
        if let Some(read) = self.read {
            let checks = Arc::clone(&read.databases).run_checks(
                Arc::clone(&self.metrics),
                read.check_interval,
                stop.child_token(),
            );
            tasks.spawn("replica checks", checks);
            let (changes, closing) = (Arc::clone(&read.changes), stop.child_token());
            tasks.spawn("change feed", async move {
                closing.cancelled().await;
                changes.close();
            });
            if let Some((consumer, source)) = read.consumer {
                let run = consumer.run(source, stop.child_token());
                tasks.spawn_on_own_thread("invalidation consumer", run);
            }
            tasks.spawn("feed watchdog", read.feed.run(stop.child_token()));
            if let Some(auditor) = read.auditor {
                tasks.spawn("consistency auditor", auditor.run(stop.child_token()));
            }
            let refresh = Arc::clone(&read.reader).refresh_ahead_loop(stop.child_token());
            tasks.spawn("refresh-ahead", refresh);
            let policy = policy(self.read_rate, &self.metrics, "storefront");
            let serve = http::serve(
                read.listener,
                read.reader,
                self.limits,
                policy,
                stop.child_token(),
            );
            tasks.spawn("reader listener", serve);
        }
        if let Some(write) = self.write {
            if let Some(relay) = write.relay {
                tasks.spawn("outbox relay", relay.run(stop.child_token()));
            }
            if let Some(purger) = write.purger {
                tasks.spawn("edge purger", purger.run(stop.child_token()));
            }
            tasks.spawn("sweeper", write.sweeper.run(stop.child_token()));
            let deliver = write.deliverer.run(stop.child_token());
            tasks.spawn("webhook deliverer", deliver);
            let policy = policy(self.write_rate, &self.metrics, "admin");
            let serve = http::serve(
                write.listener,
                write.writer,
                self.limits,
                policy,
                stop.child_token(),
            );
            tasks.spawn("writer listener", serve);
        }
        let result = tasks.wait(&stop).await;
        sequencer.abort();
        result
    }
}
