//! `feed`: the change feed under load. Opens `FEED_SUBSCRIBERS` subscriptions to a
//! reader's `GET /changes` (no filter: each must see every change), lets them sit idle,
//! then `PATCH`es `FEED_WRITES` products through a writer, one every
//! `FEED_WRITE_INTERVAL_MS`, and reports:
//!
//! - missed events: per subscriber, acknowledged writes whose event never arrived (must
//!   be 0; the tool exits 1 otherwise), and subscribers that got a `reset`;
//! - commit → delivered latency, p50 / p99 / max over every delivery (`committed_at` of
//!   the event against the time this process read it);
//! - with `FEED_READER_PID` (the reader's process id, on this machine): the reader's
//!   resident memory per idle subscriber, and its CPU time per delivered event.
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `FEED_READER` | 127.0.0.1:8080 | the reader's address |
//! | `FEED_WRITER` | 127.0.0.1:8081 | the writer's address |
//! | `FEED_TOKEN` | dev-admin-token | admin bearer token |
//! | `FEED_SUBSCRIBERS` | 1000 | subscriptions (spread over 127.0.0.1–127.0.0.255 as sources, for the per-client limit) |
//! | `FEED_WRITES` | 200 | writes made while they listen |
//! | `FEED_WRITE_INTERVAL_MS` | 20 | pause between writes |
//! | `FEED_PRODUCTS` | 100 | products written, ids 1..=N |
//! | `FEED_READER_PID` | unset | the reader's pid, for its memory and CPU |

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Empty, Full};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one subscriber saw: (product, version) of each change, its latencies, resets.
#[derive(Default)]
struct Seen {
    changes: HashSet<(i64, i64)>,
    latencies_us: Vec<u64>,
    resets: usize,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// `2026-11-27T02:59:47.408123Z` → microseconds since the Unix epoch.
fn parse_rfc3339_us(s: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, frac) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    // Days from civil (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + frac)
}

async fn subscribe(
    source: [u8; 4],
    reader: SocketAddr,
    opened: Arc<AtomicUsize>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<Seen> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind((source, 0).into()).ok()?;
    let stream = socket.connect(reader).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/changes")
        .header("host", reader.to_string())
        .body(Empty::<Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    if response.status() != 200 {
        eprintln!("feed: subscription refused: {}", response.status());
        return None;
    }
    opened.fetch_add(1, Ordering::Relaxed);
    let mut body = response.into_body();
    let (mut buffer, mut seen) = (BytesMut::new(), Seen::default());
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = stop.changed() => break,
        };
        let Some(Ok(frame)) = frame else { break };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let received = now_us();
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let block = buffer.split_to(end + 2);
            let text = String::from_utf8_lossy(&block);
            if text.contains("event: reset") {
                seen.resets += 1;
            }
            let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            if let (Some(id), Some(version)) =
                (json["product_id"].as_i64(), json["version"].as_i64())
            {
                seen.changes.insert((id, version));
                if let Some(committed) = json["committed_at"].as_str().and_then(parse_rfc3339_us) {
                    seen.latencies_us
                        .push(u64::try_from(received - committed).unwrap_or(0));
                }
            }
        }
    }
    Some(seen)
}

/// `(resident bytes, CPU ticks)` of a process.
fn usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((rss_kb * 1024, ticks))
}

async fn patch(writer: SocketAddr, token: &str, id: i64, stock: i64) -> Option<(i64, i64)> {
    let stream = tokio::net::TcpStream::connect(writer).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    let request = hyper::Request::patch(format!("/admin/products/{id}"))
        .header("host", writer.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(r#"{{"stock": {stock}}}"#))))
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    if response.status() != 200 {
        return None;
    }
    let body = response.into_body().collect().await.ok()?.to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some((id, json["version"].as_i64()?))
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    let last = sorted.len().saturating_sub(1);
    sorted.get((last as f64 * q) as usize).copied().unwrap_or(0) as f64 / 1000.0
}

#[tokio::main]
async fn main() -> ExitCode {
    let reader: SocketAddr = env("FEED_READER", "127.0.0.1:8080".parse().unwrap());
    let writer: SocketAddr = env("FEED_WRITER", "127.0.0.1:8081".parse().unwrap());
    let token: String = env("FEED_TOKEN", "dev-admin-token".to_owned());
    let subscribers: usize = env("FEED_SUBSCRIBERS", 1000);
    let writes: i64 = env("FEED_WRITES", 200);
    let interval = Duration::from_millis(env("FEED_WRITE_INTERVAL_MS", 20));
    let products: i64 = env("FEED_PRODUCTS", 100i64).max(1);
    let pid: Option<u32> = std::env::var("FEED_READER_PID")
        .ok()
        .and_then(|p| p.parse().ok());

    let before = pid.and_then(usage);
    let opened = Arc::new(AtomicUsize::new(0));
    let (stop, listening) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..subscribers)
        .map(|i| {
            let source = [127, 0, (i / 250 % 250) as u8, (i % 250 + 1) as u8];
            tokio::spawn(subscribe(
                source,
                reader,
                Arc::clone(&opened),
                listening.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while opened.load(Ordering::Relaxed) < subscribers && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open = opened.load(Ordering::Relaxed);
    // Idle for a moment: what the subscribers cost at rest.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = pid.and_then(usage);

    let mut acked = Vec::new();
    let started = Instant::now();
    for n in 0..writes {
        let id = n % products + 1;
        match patch(writer, &token, id, n).await {
            Some(ack) => acked.push(ack),
            None => eprintln!("feed: a write failed"),
        }
        tokio::time::sleep(interval).await;
    }
    let writing = started.elapsed();
    // The last events' time to arrive, then the end of every subscription.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = pid.and_then(usage);
    let _ = stop.send(true);
    let mut seens = Vec::new();
    for task in tasks {
        if let Ok(Some(seen)) = task.await {
            seens.push(seen);
        }
    }
    let missed: usize = seens
        .iter()
        .map(|seen| {
            acked
                .iter()
                .filter(|ack| !seen.changes.contains(ack))
                .count()
        })
        .sum();
    let resets: usize = seens.iter().map(|s| s.resets).sum();
    let mut latencies: Vec<u64> = seens
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    latencies.sort_unstable();
    let delivered = latencies.len();
    println!(
        "feed: {open} of {subscribers} subscribed, {} acknowledged writes in {:.1} s, {delivered} \
         change events delivered, {missed} missed, {resets} resets",
        acked.len(),
        writing.as_secs_f64()
    );
    println!(
        "feed: commit -> delivered p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        quantile(&latencies, 1.0)
    );
    if let (Some(before), Some(idle), Some(after)) = (before, idle, after) {
        let per_subscriber = idle.0.saturating_sub(before.0) as f64 / open.max(1) as f64;
        // /proc's CPU ticks are 1/100 s.
        let cpu_us = after.1.saturating_sub(idle.1) as f64 * 10_000.0;
        println!(
            "feed: reader resident memory per idle subscriber {per_subscriber:.0} bytes; reader \
             CPU per delivered event {:.2} µs ({:.1} s of CPU for the writing phase)",
            cpu_us / delivered.max(1) as f64,
            cpu_us / 1e6
        );
    }
    if missed == 0 && resets == 0 && open == subscribers {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
