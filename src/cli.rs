//! The `catalogd` command line: one binary, one subcommand per role or tool.

use clap::{Args, Parser, Subcommand};

/// High-throughput cached product-catalog service.
///
/// Configuration comes from `CATALOG_*` environment variables (see `docs/configuration.md`).
#[derive(Debug, Parser)]
#[command(name = "catalogd", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending schema migrations to the primary (safe to repeat).
    Migrate,
    /// Fill the database with a deterministic synthetic catalog.
    Seed(SeedArgs),
    /// Serve the storefront (read) API on CATALOG_READER_ADDR, with the invalidation consumer.
    Reader,
    /// Serve the admin (write) API on CATALOG_WRITER_ADDR, with the outbox relay.
    Writer,
    /// Run the reader and the writer in one process, for a single machine.
    All,
    /// Exit 0 if `GET <url>` answers 2xx within 2 s, else 1: a container's health check
    /// (reads no configuration).
    Probe {
        /// An `http://host:port/path` URL, such as `http://127.0.0.1:8080/healthz`.
        url: String,
    },
}

/// Options of `catalogd seed`.
#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Number of products to create (ids 1..=N).
    #[arg(long, value_name = "N", default_value_t = 10_000, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u64).range(0..=50_000_000))]
    pub products: u64,
    /// Number of categories to create.
    #[arg(long, value_name = "M", default_value_t = 50, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub categories: u32,
    /// Seed of the generator: the same seed gives the same catalog.
    #[arg(
        long,
        value_name = "S",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    pub seed: u64,
    /// Replace an existing catalog (products, categories, outbox) instead of refusing.
    #[arg(long)]
    pub replace: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("catalogd").chain(args.iter().copied()))
    }

    #[test]
    fn seed_takes_counts_and_a_seed() {
        let cli = parse(&[
            "seed",
            "--products",
            "10",
            "--categories",
            "3",
            "--seed",
            "9",
        ])
        .unwrap();
        let Command::Seed(args) = cli.command else {
            panic!("not seed")
        };
        assert_eq!((args.products, args.categories, args.seed), (10, 3, 9));
        assert!(!args.replace);
    }

    #[test]
    fn bad_counts_are_refused_with_the_flag_named() {
        for bad in [
            &["seed", "--products", "-5"][..],
            &["seed", "--products", "ten"],
            &["seed", "--products", "1.5"],
            &["seed", "--categories", "0"],
            &["seed", "--categories", "-1"],
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad[1]), "{bad:?}: {err}");
        }
    }
}
