//! Zipf figures for `bench/compare.sh`, from the same sampler the demo catalog and the
//! load test use (`catalog::seed::zipf`).
//!
//! Usage:
//! - `zipf ids --products N --exponent S --count C --seed X`: C product ids in
//!   `1..=N` drawn from Zipf(S), one per line (id = rank: low ids are popular);
//! - `zipf oracle --products N --exponent S --entries K`: the hit ratio of a cache
//!   that holds the K most popular of the N products.

use std::io::Write as _;

use catalog::seed::zipf::Zipf;
use rand::SeedableRng as _;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(message) = run(&args) {
        eprintln!("zipf: {message}");
        eprintln!(
            "usage: zipf ids --products N --exponent S --count C --seed X\n       \
             zipf oracle --products N --exponent S --entries K"
        );
        std::process::exit(2);
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let (command, options) = args.split_first().ok_or("no command")?;
    let products: usize = option(options, "--products")?;
    let exponent: f64 = option(options, "--exponent")?;
    let zipf = Zipf::new(products, exponent);
    match command.as_str() {
        "ids" => {
            let count: u64 = option(options, "--count")?;
            let seed: u64 = option(options, "--seed")?;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for _ in 0..count {
                writeln!(out, "{}", zipf.sample(&mut rng)).map_err(|e| e.to_string())?;
            }
            out.flush().map_err(|e| e.to_string())
        }
        "oracle" => {
            let entries: usize = option(options, "--entries")?;
            println!("{:.4}", zipf.top_share(entries));
            Ok(())
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

/// The value after `name`, parsed.
fn option<T: std::str::FromStr>(options: &[String], name: &str) -> Result<T, String> {
    let at = options
        .iter()
        .position(|o| o == name)
        .ok_or_else(|| format!("{name} is required"))?;
    let raw = options
        .get(at + 1)
        .ok_or_else(|| format!("{name} needs a value"))?;
    raw.parse()
        .map_err(|_| format!("{name}: invalid value {raw:?}"))
}
