//! `catalogd`: parses the command line and configuration, then hands over to the library.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;

use catalog::cli::{Cli, Command};
use catalog::config::Config;
use catalog::seed::{self, SeedSpec};
use catalog::startup::{Application, Role};
use catalog::store::postgres;
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc's malloc: a response's allocations cost a few dozen
/// instructions instead of a few hundred, and a million cached documents allocated on
/// one thread and freed on another fragment far less (`bench/memory.sh`, `docs/performance.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Probe { url } = &cli.command {
        return probe(url);
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("catalogd: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    catalog::telemetry::init(&config.log_filter, config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("catalogd: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("catalogd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `catalogd probe <url>`: 0 when the URL answers 2xx within its deadline, 1 otherwise
/// (said on stderr), 2 for a URL that is not `http://`.
fn probe(url: &str) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let answer = match runtime {
        Ok(runtime) => runtime.block_on(catalog::http::client::get(url, PROBE_DEADLINE)),
        Err(err) => {
            eprintln!("catalogd probe: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match answer {
        Ok(status) if status.is_success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("catalogd probe: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(err @ catalog::http::client::ClientError::Url(_)) => {
            eprintln!("catalogd probe: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("catalogd probe: {url}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// How long `catalogd probe` waits for its answer.
const PROBE_DEADLINE: Duration = Duration::from_secs(2);

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Reader => return serve(&config, Role::Reader).await,
        Command::Writer => return serve(&config, Role::Writer).await,
        Command::All => return serve(&config, Role::All).await,
        Command::Migrate | Command::Seed(_) | Command::Probe { .. } => {}
    }
    let settings = postgres::PoolSettings {
        max_connections: 2,
        statement_timeout: Duration::ZERO,
        synchronous_commit: None,
    };
    let pool = postgres::connect(&config.database_url, &settings)
        .await
        .context("cannot connect to the primary (CATALOG_DATABASE_URL)")?;
    match command {
        Command::Migrate => {
            postgres::migrate(&pool).await.context("migration failed")?;
            tracing::info!("migrations applied");
        }
        Command::Seed(args) => {
            let spec = SeedSpec {
                products: args.products,
                categories: args.categories,
                seed: args.seed,
                replace: args.replace,
            };
            let report = seed::seed(&pool, spec).await?;
            tracing::info!(
                products = report.products,
                categories = report.categories,
                memberships = report.memberships,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "catalog seeded"
            );
        }
        Command::Reader | Command::Writer | Command::All | Command::Probe { .. } => {
            unreachable!("answered above")
        }
    }
    Ok(())
}

/// Runs the service until SIGINT or SIGTERM.
async fn serve(config: &Config, role: Role) -> anyhow::Result<()> {
    let app = Application::build(config, role).await?;
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested; draining");
            stop.cancel();
        }
    });
    app.run_until_stopped(stop).await
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = interrupt => {}
        () = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}
