//! Hostile input against a real reader and writer (`catalogd all` in-process): deep and
//! huge JSON, invalid UTF-8, ambiguous framing, slow drips, path tricks, bad NDJSON
//! lines, forged cursors and tokens. Each must get a 4xx problem document or a closed
//! connection (each case says which), never a 5xx or a panic, and must change nothing on
//! the primary.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use catalog::startup::Role;
use common::admin::{lamp, primary_state, product_in_category};
use common::{ADMIN_TOKEN, Reply, TestApp, TestDb, catalog_checksum, seeded};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Everything a refused request must leave alone: the catalog's content, the outbox and
/// the stored idempotency keys.
async fn primary_snapshot(db: &TestDb) -> (String, i64, i64) {
    let count = |table: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
            .fetch_one(&db.primary)
            .await
            .unwrap()
    };
    (
        catalog_checksum(&db.primary).await,
        count("outbox").await,
        count("idempotency_keys").await,
    )
}

/// A reader and a writer in one process, on a small seeded catalog with a small body
/// limit and a short header timeout.
async fn hostile_app() -> (TestDb, TestApp) {
    let db = seeded(10, 2).await;
    let mut config = TestApp::config(&db);
    config.max_body_bytes = 4096;
    config.read.header_read_timeout = Duration::from_millis(300);
    let app = TestApp::spawn_as(&config, Role::All).await;
    (db, app)
}

/// `{"k":{"k":...1...}}`, `depth` objects deep.
fn nested_objects(depth: usize) -> String {
    format!("{}1{}", r#"{"k":"#.repeat(depth), "}".repeat(depth))
}

/// `[[...]]`, `depth` arrays deep.
fn nested_arrays(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// A valid product whose `field` is the JSON text `raw` (spliced in as text: serde_json
/// could not build a value nested deeper than 128 levels).
fn product_with(field: &str, raw: &str) -> String {
    let mut product: serde_json::Value = serde_json::from_str(&lamp("Lamp", &[])).unwrap();
    product.as_object_mut().unwrap().remove(field);
    let rest = product.to_string();
    format!(r#"{{"{field}":{raw},{}"#, &rest[1..])
}

/// `text` as a JSON string.
fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// One request on a fresh HTTP/1.1 connection, written as raw bytes, and what came back
/// within `wait`: the first response, anything after it, and whether the server closed.
#[derive(Debug)]
struct Raw {
    status: Option<u16>,
    head: String,
    body: Vec<u8>,
    /// Bytes after the first response (a second response means the request was split).
    after: Vec<u8>,
    /// The server closed the connection within `wait`.
    closed: bool,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn assert_problem(&self, status: u16, kind: &str) {
        assert_eq!(self.status, Some(status), "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let json: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(json["type"], format!("/problems/{kind}"), "{json}");
    }

    /// hyper's own refusal of a request it cannot parse: a bare 4xx, no problem
    /// document (the request never reached a face), and the connection closed.
    fn assert_refused_by_hyper(&self, status: u16) {
        assert_eq!(self.status, Some(status), "{self:?}");
        assert_ne!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        assert!(self.closed, "the connection stayed open: {self:?}");
        assert!(self.after.is_empty(), "a second response: {self:?}");
    }
}

async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> Raw {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let deadline = tokio::time::Instant::now() + wait;
    let mut received = Vec::new();
    let mut closed = false;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Raw {
            status: None,
            head: String::from_utf8_lossy(&received).into_owned(),
            body: Vec::new(),
            after: Vec::new(),
            closed,
        };
    };
    let head = String::from_utf8_lossy(&received[..end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
    let mut raw = Raw {
        status,
        head,
        body: Vec::new(),
        after: Vec::new(),
        closed,
    };
    let length = raw
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let rest = &received[end + 4..];
    let length = length.min(rest.len());
    raw.body = rest[..length].to_vec();
    raw.after = rest[length..].to_vec();
    raw
}

fn bearer() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

#[tokio::test]
async fn deep_and_huge_json_is_refused_with_problems_and_changes_nothing() {
    let (db, app) = hostile_app().await;
    let (id, _) = product_in_category(&db).await;
    let path = format!("/admin/products/{id}");
    let before = primary_snapshot(&db).await;
    let row_before = primary_state(&db, id).await;

    // Deep nesting, in attributes, as a whole body, in a patch, a category and a purge.
    // 100,000 levels need a larger body limit than the rest of this test: a writer of
    // its own, on the same database.
    let mut roomy = TestApp::config(&db);
    roomy.max_body_bytes = 1024 * 1024;
    let big = TestApp::spawn_as(&roomy, Role::Writer).await;
    for depth in [100, 1_000, 100_000] {
        let writer = if depth > 500 { &big } else { &app };
        for deep in [nested_objects(depth), nested_arrays(depth)] {
            let kind = |reply: &Reply| {
                assert!(
                    reply.status == 400,
                    "{depth} levels: {} {}",
                    reply.status,
                    reply.text()
                );
                reply.json()["type"].as_str().unwrap().to_owned()
            };
            let attributes = format!(r#"{{"list":{deep}}}"#);
            let in_attributes = writer
                .admin("PUT", &path, &[], &product_with("attributes", &attributes))
                .await;
            in_attributes.assert_problem(400, "invalid-product");
            let detail = in_attributes.json()["detail"].as_str().unwrap().to_owned();
            assert!(detail.contains("32 levels"), "{depth}: {detail}");
            for (method, route) in [
                ("PUT", path.as_str()),
                ("PATCH", path.as_str()),
                ("PUT", "/admin/categories/deep"),
                ("POST", "/admin/purge"),
            ] {
                let reply = writer.admin(method, route, &[], &deep).await;
                let kind = kind(&reply);
                assert!(
                    kind == "/problems/invalid-product" || kind == "/problems/malformed-json",
                    "{method} {route} with {depth} levels: {kind}"
                );
                reply.assert_problem(400, &kind["/problems/".len()..]);
            }
            let patch = format!(r#"{{"attributes":{deep}}}"#);
            let reply = writer.admin("PATCH", &path, &[], &patch).await;
            reply.assert_problem(400, "invalid-product");
            let detail = reply.json()["detail"].as_str().unwrap().to_owned();
            assert!(detail.contains("32 levels"), "{depth}: {detail}");
        }
    }
    big.shutdown().await;

    // A body past the limit: refused from Content-Length, and when streamed without one.
    let huge = product_with("description", &quoted(&"x".repeat(5_000)));
    app.admin("PUT", &path, &[], &huge)
        .await
        .assert_problem(413, "payload-too-large");
    let chunked = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{huge}\r\n0\r\n\r\n",
        bearer(),
        huge.len()
    );
    raw(
        app.writer.unwrap(),
        chunked.as_bytes(),
        Duration::from_secs(2),
    )
    .await
    .assert_problem(413, "payload-too-large");

    // A 900 KB string field, within a body limit that lets it through to validation.
    let mut roomy = TestApp::config(&db);
    roomy.max_body_bytes = 1024 * 1024;
    let big = TestApp::spawn_as(&roomy, Role::Writer).await;
    let long = "x".repeat(900 * 1024);
    for field in ["name", "description", "brand", "sku"] {
        big.admin("PUT", &path, &[], &product_with(field, &quoted(&long)))
            .await
            .assert_problem(400, "invalid-product");
    }
    let in_attributes = format!(r#"{{"note":"{long}"}}"#);
    big.admin(
        "PUT",
        &path,
        &[],
        &product_with("attributes", &in_attributes),
    )
    .await
    .assert_problem(400, "invalid-product");
    big.admin("PATCH", &path, &[], &format!(r#"{{"name":"{long}"}}"#))
        .await
        .assert_problem(400, "invalid-product");
    big.shutdown().await;

    assert_eq!(primary_state(&db, id).await, row_before);
    assert_eq!(primary_snapshot(&db).await, before);
    assert_eq!(app.get("/healthz").await.status, 200);
    app.shutdown().await;
}

#[tokio::test]
async fn invalid_utf8_in_bodies_paths_skus_and_headers_is_refused() {
    let (db, app) = hostile_app().await;
    let (id, _) = product_in_category(&db).await;
    let writer = app.writer.unwrap();
    let before = primary_snapshot(&db).await;

    // Bodies: a string with bytes that are not UTF-8 is malformed JSON.
    let valid = lamp("Lamp", &[]);
    for bad in [
        &b"\xff"[..],
        b"\xc3\x28",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
    ] {
        let mut body = valid.as_bytes().to_vec();
        let at = body.windows(4).position(|w| w == b"Lamp").unwrap();
        body.splice(at..at + 4, bad.iter().copied());
        let head = format!(
            "PUT /admin/products/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            bearer(),
            body.len()
        );
        let request = [head.as_bytes(), &body].concat();
        raw(writer, &request, Duration::from_secs(2))
            .await
            .assert_problem(400, "malformed-json");
    }
    let bulk = b"{\"id\":1,\"sku\":\"\xff\"}\n";
    let head = format!(
        "POST /admin/products/bulk HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        bearer(),
        bulk.len()
    );
    let reply = raw(
        writer,
        &[head.as_bytes(), bulk].concat(),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(reply.status, Some(200), "{reply:?}");
    let report = String::from_utf8(reply.body).unwrap();
    assert!(
        report.contains(r#""status":400"#) && report.contains("malformed-json"),
        "{report}"
    );

    // SKUs: escapes that decode to invalid UTF-8.
    for sku in ["%FF", "%C3%28", "A%ED%A0%80", "%F4%90%80%80"] {
        app.get(&format!("/products/by-sku/{sku}"))
            .await
            .assert_problem(400, "invalid-sku");
    }
    // Paths: raw bytes that are not UTF-8 (nor URI characters) never reach a face.
    for path in [
        &b"/products/\xff"[..],
        b"/products/by-sku/\xc3\x28",
        b"/admin/products/\xff",
    ] {
        for addr in [app.addr, writer] {
            let request = [b"GET ", path, b" HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
            raw(addr, &request, Duration::from_secs(2))
                .await
                .assert_refused_by_hyper(400);
        }
    }
    // Headers: values that are not UTF-8.
    let header = |name: &str, value: &[u8], method: &str, path: &str| {
        let head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{name}: ");
        let auth = format!("\r\nAuthorization: {}", bearer());
        let auth = if name.eq_ignore_ascii_case("authorization") {
            ""
        } else {
            auth.as_str()
        }
        .to_owned();
        let body = r#"{"stock": 1}"#;
        [
            head.as_bytes(),
            value,
            auth.as_bytes(),
            format!(
                "\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        ]
        .concat()
    };
    let product = format!("/products/{id}");
    let admin = format!("/admin/products/{id}");
    raw(
        app.addr,
        &header("Min-Catalog-Token", b"0/\xff", "GET", &product),
        Duration::from_secs(2),
    )
    .await
    .assert_problem(400, "invalid-token");
    for (name, value, kind, status) in [
        ("Authorization", &b"Bearer \xff\xfe"[..], "forbidden", 403),
        ("If-Match", b"\"\xff\xfe\"", "version-mismatch", 412),
        (
            "Idempotency-Key",
            b"\xff\xfe",
            "invalid-idempotency-key",
            400,
        ),
    ] {
        raw(
            writer,
            &header(name, value, "PATCH", &admin),
            Duration::from_secs(2),
        )
        .await
        .assert_problem(status, kind);
    }

    assert_eq!(primary_snapshot(&db).await, before);
    assert_eq!(app.get("/healthz").await.status, 200);
    app.shutdown().await;
}

#[tokio::test]
async fn conflicting_content_length_and_transfer_encoding_are_refused() {
    let (db, app) = hostile_app().await;
    let (id, _) = product_in_category(&db).await;
    let writer = app.writer.unwrap();
    let before = primary_snapshot(&db).await;
    let patch = r#"{"stock": 77}"#;
    let smuggled = "GET /admin/products/bulk HTTP/1.1\r\nHost: x\r\n\r\n";

    // Two different Content-Lengths: hyper refuses the request and closes.
    let two = format!(
        "PATCH /admin/products/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\nContent-Length: {}\r\n\r\n{patch}{smuggled}",
        bearer(),
        patch.len(),
        patch.len() + smuggled.len(),
    );
    raw(writer, two.as_bytes(), Duration::from_secs(2))
        .await
        .assert_refused_by_hyper(400);

    // Both Content-Length and chunked Transfer-Encoding, with a Content-Length that
    // would cover a second request: read as chunked (Transfer-Encoding wins, RFC 9112
    // 6.3), answered, and the connection closed, so the rest never becomes a request.
    let both = format!(
        "PATCH /admin/products/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        bearer(),
        5 + smuggled.len(),
    );
    let reply = raw(writer, both.as_bytes(), Duration::from_secs(2)).await;
    reply.assert_problem(400, "malformed-json");
    assert!(reply.closed, "the connection stayed open: {reply:?}");
    assert!(reply.after.is_empty(), "a second response: {reply:?}");

    // A Transfer-Encoding hyper does not know, and one that is not chunked last.
    for te in [
        "gzip",
        "chunked, gzip",
        "chunked\r\nTransfer-Encoding: gzip",
    ] {
        let request = format!(
            "PATCH /admin/products/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nTransfer-Encoding: {te}\r\n\r\n{:x}\r\n{patch}\r\n0\r\n\r\n",
            bearer(),
            patch.len()
        );
        raw(writer, request.as_bytes(), Duration::from_secs(2))
            .await
            .assert_refused_by_hyper(400);
    }

    assert_eq!(primary_snapshot(&db).await, before);
    assert_eq!(app.get("/healthz").await.status, 200);
    app.shutdown().await;
}

/// Writes `bytes` one at a time, `pause` apart, until the server closes or `limit`
/// passes; how long the server took to close, `None` if it never did.
async fn drip(
    addr: SocketAddr,
    head: &[u8],
    bytes: &[u8],
    pause: Duration,
    limit: Duration,
) -> Option<Duration> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    for byte in bytes.iter().cycle() {
        if started.elapsed() > limit {
            return None;
        }
        if stream.write_all(&[*byte]).await.is_err() {
            return Some(started.elapsed());
        }
        // Anything the server sends (a 408 or its close) ends the drip.
        match tokio::time::timeout(pause, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {
                // An answer: wait for the close that must follow.
                let close = tokio::time::timeout(limit, stream.read(&mut buf)).await;
                return close.ok().map(|_| started.elapsed());
            }
            Err(_) => {}
        }
    }
    None
}

#[tokio::test]
async fn a_header_drip_is_cut_by_the_watchdog_on_both_faces() {
    let (db, app) = hostile_app().await;
    let before = primary_snapshot(&db).await;
    let headers = b"X-Drip: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    for addr in [app.addr, app.writer.unwrap()] {
        let cut = drip(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
            headers,
            Duration::from_millis(50),
            Duration::from_secs(3),
        )
        .await;
        // One to two periods of 300 ms.
        let cut = cut.expect("a header drip was never cut");
        assert!(cut < Duration::from_millis(1_500), "cut after {cut:?}");
    }
    assert_eq!(primary_snapshot(&db).await, before);
    app.shutdown().await;
}

#[tokio::test]
async fn a_body_drip_to_the_reader_is_cut_after_its_answer() {
    let (db, app) = hostile_app().await;
    let before = primary_snapshot(&db).await;
    // The reader never reads a GET's body: it answers, then the watchdog sees no new
    // request and closes the connection.
    let cut = drip(
        app.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
        b"x",
        Duration::from_millis(50),
        Duration::from_secs(3),
    )
    .await;
    assert!(cut.is_some(), "a body drip to the reader was never cut");
    assert_eq!(primary_snapshot(&db).await, before);
    app.shutdown().await;
}

#[tokio::test]
async fn a_body_drip_to_the_writer_is_cut() {
    let (db, app) = hostile_app().await;
    let (id, _) = product_in_category(&db).await;
    let before = primary_snapshot(&db).await;
    let limit = Duration::from_secs(3);
    for (path, method) in [
        (format!("/admin/products/{id}"), "PATCH"),
        ("/admin/products/bulk".to_owned(), "POST"),
    ] {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 4000\r\n\r\n",
            bearer()
        );
        let cut = drip(
            app.writer.unwrap(),
            head.as_bytes(),
            b" ",
            Duration::from_millis(50),
            limit,
        )
        .await;
        assert!(
            cut.is_some(),
            "{method} {path}: a body drip lasted {limit:?} uncut"
        );
    }
    assert_eq!(primary_snapshot(&db).await, before);
    app.shutdown().await;
}

#[tokio::test]
async fn path_tricks_in_ids_and_skus_are_refused() {
    let (db, app) = hostile_app().await;
    let (id, _) = product_in_category(&db).await;
    let writer = app.writer.unwrap();
    let before = primary_snapshot(&db).await;

    for path in [
        "/products/%31",
        "/products/1%2F2",
        "/products/+1",
        "/products/%2B1",
        "/products/1%00",
        "/products/1%20",
        "/products/0x1",
        "/products/1e3",
    ] {
        app.get(path).await.assert_problem(400, "invalid-id");
    }
    // Dot segments are not resolved: they are text that matches no route.
    for path in [
        "/products/../admin",
        "/products/../admin/products/1",
        "/products/by-sku/../../admin",
        "/products/1/..",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        raw(app.addr, request.as_bytes(), Duration::from_secs(2))
            .await
            .assert_problem(404, "not-found");
    }
    for sku in ["..%2F..", "..%2F..%2Fadmin", "A+B", "A%20B", "%2B", "%25"] {
        app.get(&format!("/products/by-sku/{sku}"))
            .await
            .assert_problem(404, "product-not-found");
    }
    for sku in [
        "A%00B".to_owned(),
        "%0A".to_owned(),
        "A%0D%0AX-Injected:%201".to_owned(),
        "%7F".to_owned(),
        "%C2%85".to_owned(),
        "%".to_owned(),
        "%4".to_owned(),
        "%+1".to_owned(),
        "%+A".to_owned(),
        "A".repeat(65),
        "%C3%A9".repeat(65),
        "A".repeat(4_000),
    ] {
        app.get(&format!("/products/by-sku/{sku}"))
            .await
            .assert_problem(400, "invalid-sku");
    }
    app.get(&format!("/products/by-sku/{}", "A".repeat(5_000)))
        .await
        .assert_problem(414, "uri-too-long");
    // Raw control bytes and spaces in a request line never reach a face.
    for path in [
        &b"/products/by-sku/A\x00B"[..],
        b"/products/by-sku/A\x01",
        b"/products/1 2",
    ] {
        let request = [b"GET ", path, b" HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
        raw(app.addr, &request, Duration::from_secs(2))
            .await
            .assert_refused_by_hyper(400);
    }
    // Batches: a malformed escape is refused, even one that decodes to whitespace.
    for ids in ["1%2", "1%+C", "%+C1", "1,%+9", "1%00", "1,,2"] {
        app.get(&format!("/products?ids={ids}"))
            .await
            .assert_problem(400, "invalid-ids");
    }

    // The admin face: the same tricks in ids and slugs.
    let valid = lamp("Lamp", &[]);
    for path in [
        "/admin/products/%31",
        "/admin/products/1%2F2",
        "/admin/products/../admin",
        "/admin/products/+1",
        "/admin/products/1%00",
    ] {
        let request = format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{valid}",
            bearer(),
            valid.len()
        );
        raw(writer, request.as_bytes(), Duration::from_secs(2))
            .await
            .assert_problem(400, "invalid-id");
    }
    for slug in [
        "..%2F..",
        "../purge",
        "Lamps",
        "a%00b",
        "a+b",
        "-a",
        &"a".repeat(65),
    ] {
        app.admin(
            "PUT",
            &format!("/admin/categories/{slug}"),
            &[],
            r#"{"name":"x"}"#,
        )
        .await
        .assert_problem(400, "invalid-slug");
    }
    // SKUs in bodies: NUL, control bytes, '+', spaces, path characters, too long.
    for sku in [
        "A\u{0}B",
        "A\nB",
        "A+B",
        "A B",
        "../x",
        "A/B",
        "%41",
        &"A".repeat(65),
    ] {
        app.admin(
            "PUT",
            &format!("/admin/products/{id}"),
            &[],
            &product_with("sku", &quoted(sku)),
        )
        .await
        .assert_problem(400, "invalid-product");
    }

    assert_eq!(primary_snapshot(&db).await, before);
    assert_eq!(app.get("/healthz").await.status, 200);
    app.shutdown().await;
}

#[tokio::test]
async fn bad_ndjson_lines_are_refused_one_by_one_and_change_nothing() {
    let (db, app) = hostile_app().await;
    let before = primary_snapshot(&db).await;
    let over_limit = format!(r#"{{"id":7,"name":"{}"}}"#, "x".repeat(5_000));
    // CRLF endings, a line over the limit, and a last line without a newline.
    let body = [
        "not json",
        "[1,2,3]",
        r#"[{"id":1}]"#,
        "\"a string\"",
        "null",
        r#"{"id":0,"sku":"A","name":"x","price":{"amount":1,"currency":"EUR"}}"#,
        r#"{"id":"1","sku":"A","name":"x","price":{"amount":1,"currency":"EUR"}}"#,
        r#"{"id":9223372036854775808,"sku":"A","name":"x","price":{"amount":1,"currency":"EUR"}}"#,
        r#"{"id":3,"sku":"A B","name":"x","price":{"amount":1,"currency":"EUR"}}"#,
        &format!(r#"{{"id":3,"sku":"A","name":"x","price":{{"amount":1,"currency":"EUR"}},"attributes":{}}}"#, nested_objects(40)),
        &over_limit,
        r#"{"id":4,"sku":"A","name":"x","price":{"amount":1,"currency":"EUR"}"#,
    ]
    .join("\r\n");
    let reply = app.admin("POST", "/admin/products/bulk", &[], &body).await;
    if reply.status == 413 {
        // The line over the limit arrived without its newline in one read: the import
        // stops there (docs/api.md allows either answer).
        reply.assert_problem(413, "payload-too-large");
    } else {
        assert_eq!(reply.status, 200, "{}", reply.text());
        let lines: Vec<serde_json::Value> = reply
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let (summary, entries) = lines.split_last().unwrap();
        assert_eq!(summary["summary"]["written"], 0, "{summary}");
        assert_eq!(summary["summary"]["failed"], 12, "{summary}");
        let kinds: Vec<(u64, &str)> = entries
            .iter()
            .map(|e| (e["status"].as_u64().unwrap(), e["type"].as_str().unwrap()))
            .collect();
        let expected = [
            (400, "/problems/malformed-json"),
            (400, "/problems/invalid-product"),
            (400, "/problems/invalid-product"),
            (400, "/problems/invalid-product"),
            (400, "/problems/invalid-product"),
            (400, "/problems/invalid-product"),
            (400, "/problems/invalid-product"),
            (400, "/problems/invalid-product"),
            (400, "/problems/invalid-product"),
            (400, "/problems/invalid-product"),
            (413, "/problems/payload-too-large"),
            (400, "/problems/malformed-json"),
        ];
        assert_eq!(kinds, expected, "{}", reply.text());
        for (n, entry) in entries.iter().enumerate() {
            assert_eq!(entry["line"], n + 1);
        }
    }
    // A body of blank lines and CRs alone writes nothing.
    let reply = app
        .admin("POST", "/admin/products/bulk", &[], "\r\n\n \t\r\n\n")
        .await;
    assert_eq!(reply.status, 200);
    let summary: serde_json::Value = serde_json::from_str(reply.text().trim()).unwrap();
    let summary = &summary["summary"];
    assert_eq!(
        (&summary["lines"], &summary["written"], &summary["failed"]),
        (&5.into(), &0.into(), &0.into()),
        "{summary}"
    );

    assert_eq!(primary_snapshot(&db).await, before);
    app.shutdown().await;
}

#[tokio::test]
async fn forged_cursors_and_tokens_are_refused() {
    let (db, app) = hostile_app().await;
    let before = primary_snapshot(&db).await;
    let slugs: Vec<String> = sqlx::query_scalar(
        "select c.slug from categories c where exists \
         (select 1 from product_categories pc where pc.category_id = c.id) order by c.slug",
    )
    .fetch_all(&db.primary)
    .await
    .unwrap();
    let (a, b) = (&slugs[0], &slugs[1]);
    let page = app
        .get(&format!("/categories/{a}/products?limit=1"))
        .await
        .json();
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();

    // Another category's cursor, and random hex of the right length.
    let mut forged = vec![cursor.clone()];
    forged.extend(
        [
            "0123456789abcdef0123",
            "ffffffffffffffffffff",
            "00000000000000000000",
            "9e3779b97f4a7c150000",
            "deadbeefdeadbeefbeef",
        ]
        .map(str::to_owned),
    );
    for (n, forged) in forged.iter().enumerate() {
        let path = format!("/categories/{b}/products?cursor={forged}");
        app.get(&path).await.assert_problem(400, "invalid-cursor");
        if n > 0 {
            let path = format!("/categories/{a}/products?cursor={forged}");
            app.get(&path).await.assert_problem(400, "invalid-cursor");
        }
    }
    let mut tampered = cursor.clone().into_bytes();
    tampered[3] = if tampered[3] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [
        tampered.as_str(),
        &cursor[..19],
        &format!("{cursor}0"),
        &format!("+{}", &cursor[1..]),
        "%30%30",
        "",
    ] {
        app.get(&format!("/categories/{a}/products?cursor={bad}"))
            .await
            .assert_problem(400, "invalid-cursor");
    }

    // Token garbage, and positions beyond the primary's.
    let current: String = sqlx::query_scalar("select pg_current_wal_lsn()::text")
        .fetch_one(&db.primary)
        .await
        .unwrap();
    let (high, low) = current.split_once('/').unwrap();
    let beyond = format!("{:X}/{low}", u64::from_str_radix(high, 16).unwrap() + 1);
    for token in [
        "garbage",
        "0",
        "0/",
        "/0",
        "0/0/0",
        "G/0",
        "-1/0",
        "0x0/0",
        "100000000/0",
        "0/100000000",
        "0/16B3F28 extra",
        "FFFFFFFF/FFFFFFFF",
        beyond.as_str(),
    ] {
        for path in [
            "/products/1".to_owned(),
            "/products?ids=1,2".to_owned(),
            "/products/by-sku/x".to_owned(),
            format!("/categories/{a}/products"),
            "/healthz".to_owned(),
        ] {
            let reply = app
                .request("GET", &path, &[("min-catalog-token", token)])
                .await;
            reply.assert_problem(400, "invalid-token");
        }
    }
    // An empty value.
    let request =
        "GET /products/1 HTTP/1.1\r\nHost: x\r\nMin-Catalog-Token:\r\nConnection: close\r\n\r\n";
    raw(app.addr, request.as_bytes(), Duration::from_secs(2))
        .await
        .assert_problem(400, "invalid-token");

    assert_eq!(primary_snapshot(&db).await, before);
    app.shutdown().await;
}

#[tokio::test]
async fn a_token_with_signs_is_not_an_lsn() {
    let (_db, app) = hostile_app().await;
    for token in ["+0/+0", "+0/0", "0/+16B3F28"] {
        app.request("GET", "/healthz", &[("min-catalog-token", token)])
            .await
            .assert_problem(400, "invalid-token");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_bulk_report_is_bounded_whatever_the_input() {
    let (db, app) = hostile_app().await;
    let before = primary_snapshot(&db).await;
    let body = "x\n".repeat(128 * 1024);
    let reply = app.admin("POST", "/admin/products/bulk", &[], &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.body.len() <= 1024 * 1024,
        "{} bytes of report for {} bytes of body",
        reply.body.len(),
        body.len()
    );
    assert_eq!(primary_snapshot(&db).await, before);
    app.shutdown().await;
}

#[tokio::test]
async fn blank_lines_are_split_in_linear_time() {
    let (db, app) = hostile_app().await;
    let before = primary_snapshot(&db).await;
    // 8 MiB of blank lines: every one counted, nothing written. (Quadratic splitting
    // made this take 6.5 s in a debug build; it is linear now. Speed itself is not
    // asserted here.)
    let body = "\n".repeat(8 * 1024 * 1024);
    let reply = app.admin("POST", "/admin/products/bulk", &[], &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let summary = reply.text().lines().last().unwrap().to_owned();
    assert!(summary.contains("\"written\":0"), "{summary}");
    assert_eq!(primary_snapshot(&db).await, before);
    app.shutdown().await;
}
