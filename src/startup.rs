//! Builds the process from its configuration: pools, caches, background tasks and
//! listeners; then runs until a shutdown token fires.
//!
//! [`Application::build`] binds the listeners (port 0 works, for tests) and exposes the
//! bound addresses; [`Application::run_until_stopped`] serves until the token is
//! cancelled, then drains connections for a bounded time. Every background task gets a
//! child token; a task that exits early is logged and stops the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cache::{L1, L1Config};
use crate::config::Config;
use crate::http::{self, Limits};
use crate::metrics::Metrics;
use crate::read::{Reader, route::ROUTE_NAMES};
use crate::store::postgres;
use crate::store::redis::{L2, L2Config};
use crate::store::replicas::{self, Databases, Replica};

/// How long in-flight requests get to finish after shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

/// How long start-up waits for Redis before going on without it (it keeps reconnecting).
const REDIS_STARTUP_WAIT: Duration = Duration::from_secs(2);

/// The running service, built but not yet serving.
#[derive(Debug)]
pub struct Application {
    reader: Arc<Reader>,
    reader_listener: TcpListener,
    databases: Arc<Databases>,
    metrics: Arc<Metrics>,
    limits: Limits,
    check_interval: Duration,
}

impl Application {
    /// Connects to the stores and binds the reader's listener.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let primary = postgres::connect(&config.database_url, config.db_pool_size)
            .await
            .context("cannot connect to the primary (CATALOG_DATABASE_URL)")?;
        let replicas = config
            .replica_urls
            .iter()
            .map(|url| {
                let options = url.parse().context("CATALOG_REPLICA_URLS")?;
                Ok(Replica {
                    name: replicas::display_name(url),
                    pool: PgPoolOptions::new()
                        .max_connections(config.db_pool_size)
                        .acquire_timeout(Duration::from_secs(2))
                        .connect_lazy_with(options),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let metrics = Arc::new(Metrics::new(&ROUTE_NAMES));
        let databases = Arc::new(Databases::new(
            primary,
            replicas,
            config.read.primary_fallback,
            config.read.replica_max_lag_bytes,
        ));
        databases.check(&metrics).await;

        let l2 = match &config.redis_url {
            Some(url) => {
                let l2 = L2::connect(&L2Config {
                    url: url.clone(),
                    prefix: config.redis_prefix.clone(),
                    ttl: config.l2_ttl,
                    command_timeout: config.redis_timeout,
                })
                .context("CATALOG_REDIS_URL")?;
                if let Err(err) = l2.wait_connected(REDIS_STARTUP_WAIT).await {
                    tracing::warn!(error = %err, "Redis is not reachable yet; serving without L2 until it is");
                }
                Some(l2)
            }
            None => None,
        };
        let l1 = L1::new(L1Config {
            budget_bytes: config.read.l1_budget_bytes,
            max_ttl: config.read.l1_max_ttl,
            negative_ttl: config.read.negative_ttl,
        });
        let reader = Arc::new(Reader::new(
            l1,
            l2,
            Arc::clone(&databases),
            Arc::clone(&metrics),
            config.read.http_max_age_secs,
            config.read.http_stale_while_revalidate_secs,
        ));
        let reader_listener = TcpListener::bind(config.reader_addr)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (CATALOG_READER_ADDR)",
                    config.reader_addr
                )
            })?;
        Ok(Self {
            reader,
            reader_listener,
            databases,
            metrics,
            limits: Limits {
                max_connections: config.read.max_connections,
                header_read_timeout: config.read.header_read_timeout,
                drain: DRAIN,
            },
            check_interval: config.read.replica_check_interval,
        })
    }

    /// The address the reader listens on.
    pub fn reader_addr(&self) -> SocketAddr {
        self.reader_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `stop` is cancelled (or a task fails), then drains.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(reader = %self.reader_addr(), "serving");
        let mut tasks = JoinSet::new();
        tasks.spawn({
            let stop = stop.child_token();
            let checks = Arc::clone(&self.databases).run_checks(
                Arc::clone(&self.metrics),
                self.check_interval,
                stop,
            );
            async move {
                checks.await;
                "replica checks"
            }
        });
        tasks.spawn({
            let service = Arc::clone(&self.reader).service();
            let serve = http::serve(
                self.reader_listener,
                service,
                self.limits,
                stop.child_token(),
            );
            async move {
                serve.await;
                "reader listener"
            }
        });
        let mut failure = None;
        while let Some(finished) = tasks.join_next().await {
            let name = finished.context("a task panicked")?;
            if stop.is_cancelled() {
                tracing::info!(task = name, "stopped");
            } else {
                tracing::error!(task = name, "stopped unexpectedly; shutting down");
                failure.get_or_insert(name);
                stop.cancel();
            }
        }
        match failure {
            Some(name) => anyhow::bail!("{name} stopped unexpectedly"),
            None => Ok(()),
        }
    }
}
