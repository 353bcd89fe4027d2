//! The live change feed (`GET /changes`) against the real stack, with a real SSE client:
//! every acknowledged write for a subscriber's filter arrives in order; a subscriber that
//! disconnects resumes with `Last-Event-ID` and misses nothing; positions the stream no
//! longer holds, or from another epoch, get a `reset`; a subscriber that stops reading is
//! dropped without hurting others; limits answer 429 and 503; HTTP/2 works too.

mod common;

use std::time::Duration;

use catalog::startup::Role;
use common::admin::patch_stock;
use common::sse::{Event, Subscription};
use common::{TestApp, poll, seeded};

/// How long a test waits for one event.
const WAIT: Duration = Duration::from_secs(10);

/// The change events of `subscription` until `count` of them arrived.
async fn changes(subscription: &mut Subscription, count: usize) -> Vec<Event> {
    let mut events = Vec::new();
    while events.len() < count {
        let event = subscription
            .next_event(WAIT)
            .await
            .unwrap_or_else(|| panic!("only {} of {count} events: {events:?}", events.len()));
        assert_eq!(event.event.as_deref(), Some("change"), "{event:?}");
        events.push(event);
    }
    events
}

/// `(product, version)` of each event.
fn versions(events: &[Event]) -> Vec<(i64, i64)> {
    events
        .iter()
        .map(|e| {
            let data = e.json();
            (
                data["product_id"].as_i64().unwrap(),
                data["version"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_subscriber_sees_its_changes_in_order_and_resumes_without_missing_any() {
    let db = seeded(10, 3).await;
    let config = TestApp::config(&db);
    let reader = TestApp::spawn_as(&config, Role::Reader).await;
    let writer = TestApp::spawn_as(&config, Role::Writer).await;

    let mut feed = Subscription::open(reader.addr, "/changes?products=1,2", &[], false).await;
    assert_eq!(feed.status, 200);
    assert_eq!(
        feed.headers.get("content-type").unwrap(),
        "text/event-stream"
    );
    assert_eq!(feed.headers.get("cache-control").unwrap(), "no-store");
    // Writes to products 1, 2 and 3; the filter keeps 1 and 2, in commit order.
    let mut expected = Vec::new();
    for (i, id) in [1, 3, 2, 1, 3, 2].into_iter().enumerate() {
        let reply = patch_stock(&writer, id, 100 + i as i64).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        if id != 3 {
            expected.push((id, reply.json()["version"].as_i64().unwrap()));
        }
    }
    let seen = changes(&mut feed, 4).await;
    assert_eq!(versions(&seen), expected);
    let first = seen[0].json();
    assert_eq!(first["deleted"], false);
    assert!(first["committed_at"].as_str().unwrap().ends_with('Z'));
    let resume_from = seen.last().unwrap().id.clone().expect("an id");
    drop(feed);

    // Away: more writes, a delete among them.
    let mut missed = Vec::new();
    for id in [2, 1] {
        let reply = patch_stock(&writer, id, 7).await;
        missed.push((id, reply.json()["version"].as_i64().unwrap()));
    }
    let deleted = writer.admin("DELETE", "/admin/products/2", &[], "").await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    missed.push((2, deleted.json()["version"].as_i64().unwrap()));

    // Back with Last-Event-ID: exactly what was missed, then live changes.
    let mut resumed = Subscription::open(
        reader.addr,
        "/changes?products=1,2",
        &[("last-event-id", &resume_from)],
        false,
    )
    .await;
    let again = changes(&mut resumed, 3).await;
    assert_eq!(versions(&again), missed);
    assert_eq!(again[2].json()["deleted"], true);
    let live = patch_stock(&writer, 1, 8).await.json()["version"]
        .as_i64()
        .unwrap();
    assert_eq!(versions(&changes(&mut resumed, 1).await), [(1, live)]);

    // A category filter sees every change touching the category.
    let slug: String = sqlx::query_scalar(
        "select c.slug from categories c join product_categories pc on pc.category_id = c.id \
         where pc.product_id = 1",
    )
    .fetch_one(&db.primary)
    .await
    .unwrap();
    let mut by_category = Subscription::open(
        reader.addr,
        &format!("/changes?categories={slug}"),
        &[],
        false,
    )
    .await;
    let version = patch_stock(&writer, 1, 9).await.json()["version"]
        .as_i64()
        .unwrap();
    let event = changes(&mut by_category, 1).await;
    assert_eq!(versions(&event), [(1, version)]);
    assert!(
        event[0].json()["categories"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == &slug)
    );
    writer.shutdown().await;
    reader.shutdown().await;
}

#[tokio::test]
async fn positions_the_stream_lost_or_from_another_epoch_get_a_reset() {
    let db = seeded(10, 3).await;
    let mut config = TestApp::config(&db);
    config.stream_max_len = 100;
    let reader = TestApp::spawn_as(&config, Role::Reader).await;
    let writer = TestApp::spawn_as(&config, Role::Writer).await;
    let mut feed = Subscription::open(reader.addr, "/changes", &[], false).await;
    patch_stock(&writer, 1, 1).await;
    let old = changes(&mut feed, 1).await[0].id.clone().unwrap();
    drop(feed);
    // Far more changes than the stream keeps: the position's successor is trimmed.
    let lines: String = (1..=400)
        .map(|i| {
            format!(
                "{{\"id\":{},\"sku\":\"T-{i}\",\"name\":\"t\",\"price\":{{\"amount\":1,\"currency\":\"EUR\"}}}}\n",
                900_000 + i
            )
        })
        .collect();
    let bulk = writer
        .admin("POST", "/admin/products/bulk", &[], &lines)
        .await;
    assert_eq!(bulk.status, 200, "{}", bulk.text());
    common::admin::outbox_drained(&db.primary).await;
    for position in [
        old.clone(),
        old.replacen(|_: char| true, "x", 1),
        "garbage".into(),
    ] {
        let mut resumed = Subscription::open(
            reader.addr,
            "/changes",
            &[("last-event-id", &position)],
            false,
        )
        .await;
        let first = resumed.next_event(WAIT).await.expect("an event");
        assert_eq!(
            first.event.as_deref(),
            Some("reset"),
            "{position}: {first:?}"
        );
        // Live changes follow the reset.
        let version = patch_stock(&writer, 3, 5).await.json()["version"]
            .as_i64()
            .unwrap();
        loop {
            let event = resumed.next_event(WAIT).await.expect("the live change");
            if versions(std::slice::from_ref(&event)) == [(3, version)] {
                break;
            }
        }
    }
    writer.shutdown().await;
    reader.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_dropped_and_others_keep_everything() {
    let db = seeded(10, 3).await;
    let mut config = TestApp::config(&db);
    config.read.changes.buffer = 1024;
    let reader = TestApp::spawn_as(&config, Role::Reader).await;
    let writer = TestApp::spawn_as(&config, Role::Writer).await;
    // The slow one: a tiny receive window, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let mut slow = socket.connect(reader.addr).await.unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        slow.write_all(b"GET /changes HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
    }
    let mut fast = Subscription::open(reader.addr, "/changes", &[], false).await;
    poll(|| async { (reader.metric("catalog_changes_subscribers").await == 2.0).then_some(()) })
        .await;
    let dropped_before = reader.metric("catalog_changes_dropped_total").await;

    const LINES: i64 = 20_000;
    let lines: String = (1..=LINES)
        .map(|i| {
            format!(
                "{{\"id\":{},\"sku\":\"S-{i}\",\"name\":\"s\",\"price\":{{\"amount\":1,\"currency\":\"EUR\"}}}}\n",
                800_000 + i
            )
        })
        .collect();
    let reading = tokio::spawn(async move {
        let mut ids = std::collections::BTreeSet::new();
        while (ids.len() as i64) < LINES {
            let event = fast
                .next_event(Duration::from_secs(60))
                .await
                .expect("an event");
            assert_eq!(event.event.as_deref(), Some("change"), "{event:?}");
            ids.insert(event.json()["product_id"].as_i64().unwrap());
        }
        ids
    });
    let bulk = writer
        .admin("POST", "/admin/products/bulk", &[], &lines)
        .await;
    assert_eq!(bulk.status, 200, "{}", bulk.text());
    let ids = reading.await.unwrap();
    assert_eq!(ids.len() as i64, LINES);
    // The slow one was dropped, and only it.
    poll(|| async {
        (reader.metric("catalog_changes_dropped_total").await == dropped_before + 1.0).then_some(())
    })
    .await;
    poll(|| async { (reader.metric("catalog_changes_subscribers").await == 1.0).then_some(()) })
        .await;
    drop(slow);
    writer.shutdown().await;
    reader.shutdown().await;
}

#[tokio::test]
async fn subscriptions_are_limited_filtered_and_served_over_http2() {
    let db = seeded(10, 3).await;
    let mut config = TestApp::config(&db);
    config.read.changes.max_per_client = 2;
    config.read.changes.max_subscribers = 3;
    let reader = TestApp::spawn_as(&config, Role::Reader).await;
    let writer = TestApp::spawn_as(&config, Role::Writer).await;

    for bad in [
        "/changes?products=0",
        "/changes?products=a",
        "/changes?categories=Bad",
        "/changes?categories=a%2Fb",
    ] {
        let refused = Subscription::open(reader.addr, bad, &[], false).await;
        assert_eq!(refused.status, 400, "{bad}");
        let problem: serde_json::Value = serde_json::from_slice(&refused.refusal).unwrap();
        assert_eq!(problem["type"], "/problems/invalid-filter", "{bad}");
    }
    let post = common::http_request(reader.addr, "POST", "/changes", &[]).await;
    post.assert_problem(405, "method-not-allowed");

    // Over HTTP/2, like over HTTP/1.1.
    let mut h2 = Subscription::open(reader.addr, "/changes?products=4", &[], true).await;
    assert_eq!(h2.status, 200);
    let second = Subscription::open(reader.addr, "/changes", &[], false).await;
    assert_eq!(second.status, 200);
    let version = patch_stock(&writer, 4, 3).await.json()["version"]
        .as_i64()
        .unwrap();
    assert_eq!(versions(&changes(&mut h2, 1).await), [(4, version)]);

    // Two per client address: the third from 127.0.0.1 is 429.
    let third = Subscription::open(reader.addr, "/changes", &[], false).await;
    assert_eq!(third.status, 429);
    assert_eq!(third.headers.get("retry-after").unwrap(), "1");
    let problem: serde_json::Value = serde_json::from_slice(&third.refusal).unwrap();
    assert_eq!(problem["type"], "/problems/too-many-subscriptions");
    // Three per reader: one more from 127.0.0.2 fits, the next is 503.
    let other = Subscription::open_from([127, 0, 0, 2], reader.addr, "/changes", &[], false).await;
    assert_eq!(other.status, 200);
    let full = Subscription::open_from([127, 0, 0, 2], reader.addr, "/changes", &[], false).await;
    assert_eq!(full.status, 503);
    assert_eq!(full.headers.get("retry-after").unwrap(), "1");
    // A subscription that ends gives its place back.
    drop(second);
    poll(|| async { (reader.metric("catalog_changes_subscribers").await == 2.0).then_some(()) })
        .await;
    let again = Subscription::open(reader.addr, "/changes", &[], false).await;
    assert_eq!(again.status, 200);
    drop(h2);
    writer.shutdown().await;
    reader.shutdown().await;
}
