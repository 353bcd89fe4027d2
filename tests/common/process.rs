//! Real processes for the fault tests: `catalogd` children (reader, writer) configured
//! only through the environment they are given, a test's own Redis restarted on its
//! port, and a test's own PostgreSQL primary + replica started with `ops/dev.sh`.
//!
//! Every child is killed when its handle drops, so a failing test leaves nothing
//! running. The test process's own environment is never changed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{DEADLINE, OwnRedis, redis_pid};

/// A `catalogd` child process. Its log (JSON lines) goes to a file of its own, so the
/// listener addresses can be read from its `serving` line and a failure can show it.
#[derive(Debug)]
pub struct Catalogd {
    child: Child,
    pub role: &'static str,
    pub log: PathBuf,
    /// The storefront listener, for a reader.
    pub reader: Option<SocketAddr>,
    /// The admin listener, for a writer.
    pub writer: Option<SocketAddr>,
}

impl Catalogd {
    /// Starts `catalogd <role>` with exactly `env` as its `CATALOG_*` configuration
    /// (plus listeners on port 0 and JSON logs), and waits for its `serving` line.
    pub async fn start(role: &'static str, env: &[(&str, String)]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let log = std::env::temp_dir().join(format!(
            "catalogd-faults-{}-{}-{role}.log",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_catalogd"));
        command.arg(role);
        // Nothing of the test process's own configuration leaks into the child.
        for (name, _) in std::env::vars() {
            if name.starts_with("CATALOG_") {
                command.env_remove(name);
            }
        }
        command
            .env("CATALOG_READER_ADDR", "127.0.0.1:0")
            .env("CATALOG_WRITER_ADDR", "127.0.0.1:0")
            .env("CATALOG_LOG_FORMAT", "json")
            .env("CATALOG_LOG", "info,sqlx=warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        let child = command.spawn().expect("spawn catalogd");
        let mut process = Self {
            child,
            role,
            log,
            reader: None,
            writer: None,
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some((reader, writer)) = serving_line(&process.log) {
                process.reader = reader;
                process.writer = writer;
                return process;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "catalogd {role} exited ({status}) before serving:\n{}",
                    process.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "catalogd {role} not serving after {DEADLINE:?}:\n{}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no drain, no last relay round.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last 40 lines of the log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// How many log lines hold `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }
}

impl Drop for Catalogd {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("catalogd {} log kept at {}", self.role, self.log.display());
        }
    }
}

/// The addresses of the `serving` line of a JSON log, once it is there.
fn serving_line(log: &Path) -> Option<(Option<SocketAddr>, Option<SocketAddr>)> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|line| {
        let json: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = &json["fields"];
        (fields["message"] == "serving").then(|| {
            // `?Option<SocketAddr>`: "Some(127.0.0.1:4567)" or "None"
            let addr = |name: &str| {
                fields[name]
                    .as_str()?
                    .strip_prefix("Some(")?
                    .strip_suffix(')')?
                    .parse()
                    .ok()
            };
            (addr("reader"), addr("writer"))
        })
    })
}

impl OwnRedis {
    /// Starts a new, empty server on the same port after [`OwnRedis::stop`] (a Redis
    /// restarted without persistence).
    pub async fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server");
            self.child = child;
            loop {
                if self.child.try_wait().ok().flatten().is_some() {
                    break; // the port is not free yet: try again
                }
                if let Some(pid) = redis_pid(self.port).await {
                    assert_eq!(
                        pid,
                        self.child.id(),
                        "another server took port {}",
                        self.port
                    );
                    return;
                }
                assert!(Instant::now() < deadline, "redis-server did not restart");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(Instant::now() < deadline, "redis-server did not restart");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A PostgreSQL primary + streaming replica + Redis of this test's own, run by
/// `ops/dev.sh` with a state directory and ports of their own; `ops/dev.sh clean`
/// when dropped.
#[derive(Debug)]
pub struct OwnStack {
    pub dir: PathBuf,
    pub pg_port: u16,
    pub replica_port: u16,
    pub redis_port: u16,
}

impl OwnStack {
    /// `ops/dev.sh up` on three ports between 12000 and 15000: below Linux's ephemeral
    /// range (32768 up, where outgoing connections take ports), clear of the dev stack's
    /// (15432, 15433, 16379) and of the tests' own Redis servers (20000 to 29999).
    /// Ports found taken (its preflight refuses them) are retried elsewhere, a few times.
    pub fn up() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let mut refused = String::new();
        for _ in 0..5 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let base = 12_000 + ((std::process::id() * 13 + n * 101) % 1_000) as u16 * 3;
            let stack = Self {
                dir: std::env::temp_dir()
                    .join(format!("catalog-faults-{}-{n}", std::process::id())),
                pg_port: base,
                replica_port: base + 1,
                redis_port: base + 2,
            };
            let output = stack.dev(&["up"]);
            if output.status.success() {
                return stack;
            }
            refused = String::from_utf8_lossy(&output.stderr).into_owned();
            drop(stack); // cleans what it started
            assert!(
                refused.contains("already in use"),
                "ops/dev.sh up failed:\n{refused}"
            );
        }
        panic!("no free ports for a test's own stack after 5 tries; the last refusal:\n{refused}");
    }

    /// `ops/dev.sh <args>` on this stack, bounded by its own waits.
    pub fn dev(&self, args: &[&str]) -> std::process::Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/dev.sh");
        Command::new(script)
            .args(args)
            .env("CATALOG_DEV_DIR", &self.dir)
            .env("CATALOG_DEV_PG_PORT", self.pg_port.to_string())
            .env("CATALOG_DEV_REPLICA_PORT", self.replica_port.to_string())
            .env("CATALOG_DEV_REDIS_PORT", self.redis_port.to_string())
            .env("CATALOG_DEV_TIMEOUT", "30")
            .stdin(Stdio::null())
            .output()
            .expect("ops/dev.sh")
    }

    /// `ops/dev.sh <args>`, which must succeed.
    pub fn dev_ok(&self, args: &[&str]) {
        let output = self.dev(args);
        assert!(
            output.status.success(),
            "ops/dev.sh {args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn primary_url(&self) -> String {
        format!("postgres://catalog@127.0.0.1:{}/catalog", self.pg_port)
    }

    pub fn replica_url(&self) -> String {
        format!("postgres://catalog@127.0.0.1:{}/catalog", self.replica_port)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }
}

impl Drop for OwnStack {
    fn drop(&mut self) {
        let output = self.dev(&["clean"]);
        if !output.status.success() {
            eprintln!(
                "ops/dev.sh clean of {} failed:\n{}",
                self.dir.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
