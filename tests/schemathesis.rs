//! Both faces against their OpenAPI descriptions, with schemathesis: `catalogd all` (the
//! binary cargo built) on a database, a Redis prefix and an admin token of its own, and
//! `ops/check/schemathesis.sh` run against it (it loads each face's description from
//! the face's own `GET /openapi.json`, so what is checked is what this build serves).
//! The admin run writes random products, categories and webhooks and purges caches:
//! nothing else uses this database.
//!
//! `MAX_EXAMPLES` (below) bounds the run to 40 to 80 s on a busy 2-core machine. The
//! script's variables in the test's environment pass through (`MAX_EXAMPLES` too), so
//! `SEED=<n>` repeats a run's generation (the output prints its seed). Needs Python 3
//! (the script installs schemathesis into `.dev/venv` from PyPI on first use).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::process::Catalogd;
use common::{Stack, seeded};

/// Examples per operation and phase (the script's default is 100). The coverage phase
/// is not bounded by it: it sends its boundary cases whatever this is.
const MAX_EXAMPLES: &str = "50";
/// Seconds each face's run may take before the script stops it and fails.
const MAX_SECONDS: &str = "300";
/// The writer's admin token.
const TOKEN: &str = "schemathesis-admin-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_faces_answer_as_their_openapi_descriptions_say() {
    // The hooks fold product ids into 1..1200: most writes meet a seeded product.
    let db = seeded(1_000, 20).await;
    let stack = Stack::from_env();
    let env = [
        ("CATALOG_DATABASE_URL", db.primary_url.clone()),
        ("CATALOG_REPLICA_URLS", db.replica_url.clone()),
        ("CATALOG_REDIS_URL", stack.redis_url),
        ("CATALOG_REDIS_PREFIX", format!("{}:", db.name)),
        ("CATALOG_ADMIN_TOKENS", TOKEN.to_owned()),
        ("CATALOG_DB_POOL_SIZE", "8".to_owned()),
        // Deliveries to the run's webhooks (all pointed at 127.0.0.1:9 by the script's
        // hooks: refused at once) die within a few seconds, so listings of dead
        // letters have some to show and replays some to replay.
        ("CATALOG_WEBHOOK_RETRY_SECS", "1".to_owned()),
        ("CATALOG_WEBHOOK_BACKOFF_MS", "2000".to_owned()),
        ("CATALOG_WEBHOOK_BACKOFF_MAX_MS", "2000".to_owned()),
        ("CATALOG_WEBHOOK_TIMEOUT_MS", "1000".to_owned()),
    ];
    let all = Catalogd::start("all", &env).await;
    let storefront = format!("http://{}", all.reader.expect("a reader listener"));
    let admin = format!("http://{}", all.writer.expect("a writer listener"));

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let started = Instant::now();
    let mut command = Command::new("bash");
    command
        .arg(root.join("ops/check/schemathesis.sh"))
        .args([&storefront, &admin, TOKEN])
        .current_dir(root)
        .stdin(Stdio::null());
    let max_examples = std::env::var("MAX_EXAMPLES").unwrap_or_else(|_| MAX_EXAMPLES.to_owned());
    command.env("MAX_EXAMPLES", &max_examples);
    if std::env::var_os("MAX_SECONDS").is_none() {
        command.env("MAX_SECONDS", MAX_SECONDS);
    }
    // Its stdout and stderr in one pipe, so the output reads in the order it was written.
    let (status, output) = tokio::task::spawn_blocking(move || {
        let (mut pipe, writer) = std::io::pipe().expect("a pipe");
        command
            .stdout(writer.try_clone().expect("a pipe"))
            .stderr(writer);
        let mut child = command.spawn().expect("run bash ops/check/schemathesis.sh");
        drop(command); // its copies of the pipe's writer: the read below ends with the child
        let mut output = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut output).expect("the script's output");
        (child.wait().expect("the script's status"), output)
    })
    .await
    .expect("the script's thread");
    let elapsed = started.elapsed();
    assert!(
        status.success(),
        "ops/check/schemathesis.sh {storefront} {admin} failed ({status}) after {elapsed:.0?}:\n\
         {output}\n--- catalogd all, the last lines of its log:\n{}",
        all.log_tail()
    );
    // The figures of the run: cases per face, and how long it took.
    for line in output.lines() {
        if line.contains(" generated, ")
            || line.starts_with("schemathesis.sh:")
            || line.starts_with("Seed:")
        {
            eprintln!("{}", line.trim());
        }
    }
    eprintln!("schemathesis: both faces passed in {elapsed:.1?} (MAX_EXAMPLES={max_examples})");
}
