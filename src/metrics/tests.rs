//! Unit tests of the metrics: what the exposition shows for recorded requests, and the
//! HTTP status labels.

use std::time::Duration;

use super::http::{STATUS_LABELS, STATUSES};
use super::*;

#[derive(Debug, Clone, Copy)]
enum Face {
    Product,
    Batch,
}

impl RouteLabel for Face {
    const ALL: &'static [Self] = &[Self::Product, Self::Batch];
    fn name(self) -> &'static str {
        match self {
            Self::Product => "product",
            Self::Batch => "batch",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

#[test]
fn requests_and_latency_are_exposed_by_route_and_status() {
    let metrics = Metrics::new();
    let http = HttpMetrics::<Face>::new(&metrics);
    http.route(Face::Product)
        .record(200, Duration::from_micros(70));
    http.route(Face::Product)
        .record(200, Duration::from_millis(3));
    http.route(Face::Batch).record(418, Duration::from_secs(9));
    for status in [201, 202, 414, 500] {
        http.route(Face::Batch)
            .record(status, Duration::from_millis(1));
    }
    metrics.l1_hits.inc();
    let text = metrics.render(Some((3, 4096)));
    assert!(
        text.contains(r#"catalog_http_requests_total{route="product",status="200"} 2"#),
        "{text}"
    );
    assert!(text.contains(r#"catalog_http_requests_total{route="batch",status="other"} 1"#));
    for status in [201, 202, 414, 500] {
        let line = format!(r#"catalog_http_requests_total{{route="batch",status="{status}"}} 1"#);
        assert!(text.contains(&line), "{line}");
    }
    assert!(
        text.contains(
            r#"catalog_http_request_duration_seconds_bucket{le="0.0001",route="product"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"catalog_http_request_duration_seconds_count{route="product"} 2"#));
    assert!(
        text.contains(r#"catalog_http_request_duration_seconds_bucket{le="+Inf",route="batch"} 5"#)
    );
    assert!(text.contains("catalog_l1_hits_total 1"));
    assert!(text.contains("catalog_l1_bytes 4096"));
    assert!(text.contains("catalog_l1_entries 3"));
}

#[test]
fn statuses_and_their_labels_agree() {
    assert_eq!(STATUS_LABELS.len(), STATUSES.len() + 1);
    for (status, label) in STATUSES.iter().zip(STATUS_LABELS) {
        assert_eq!(status.to_string(), label);
    }
}
