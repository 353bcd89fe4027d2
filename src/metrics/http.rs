//! The metrics' building blocks: a lock-free histogram, and the HTTP metrics of a face
//! (requests by route and status, latency by route) resolved once per route, so a
//! request touches pre-built handles only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::{MetricType, TypedMetric};

use super::Metrics;

/// Upper bounds (seconds) of the latency buckets: 50 µs to 2.5 s, finest around the
/// few milliseconds propagation is expected to take.
pub(super) const LATENCY_BUCKETS: [f64; 18] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025,
    0.05, 0.1, 0.25, 1.0, 2.5,
];

/// A histogram of durations made of atomics, safe to record from every core at once.
/// Clones share the same counters.
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    /// One counter per bound, plus one for `+Inf`.
    counts: Arc<[AtomicU64]>,
    sum_nanos: Arc<AtomicU64>,
}

impl AtomicHistogram {
    pub(super) fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = self.bounds.partition_point(|&b| b < secs);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

/// Status codes counted individually; anything else is counted as `other`. Every
/// status either face answers on purpose is here.
pub(super) const STATUSES: [u16; 19] = [
    200, 201, 202, 304, 400, 401, 403, 404, 405, 408, 409, 412, 413, 414, 415, 422, 429, 500, 503,
];
pub(super) const STATUS_LABELS: [&str; 20] = [
    "200", "201", "202", "304", "400", "401", "403", "404", "405", "408", "409", "412", "413",
    "414", "415", "422", "429", "500", "503", "other",
];

/// The routes of one face, as metric labels: an enum whose variants index
/// [`RouteLabel::ALL`].
pub trait RouteLabel: Copy + Send + Sync + 'static {
    /// Every route, in index order.
    const ALL: &'static [Self];
    /// The `route` label.
    fn name(self) -> &'static str;
    /// The route's position in [`RouteLabel::ALL`].
    fn index(self) -> usize;
}

/// One route's pre-resolved handles: a counter per status, a latency histogram.
#[derive(Debug)]
pub struct RouteMetrics {
    requests: Box<[Counter]>,
    latency: AtomicHistogram,
}

impl RouteMetrics {
    /// Records one answered request.
    pub fn record(&self, status: u16, elapsed: Duration) {
        let index = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        self.requests[index].inc();
        self.latency.observe(elapsed);
    }
}

/// The HTTP metrics of one face: requests by route and status, latency by route.
#[derive(Debug)]
pub struct HttpMetrics<R> {
    routes: Box<[RouteMetrics]>,
    face: std::marker::PhantomData<fn(R)>,
}

impl<R: RouteLabel> HttpMetrics<R> {
    /// Resolves the handles of every route of `R` in `metrics`' families.
    pub fn new(metrics: &Metrics) -> Self {
        let routes = R::ALL
            .iter()
            .map(|&route| {
                let name = route.name();
                RouteMetrics {
                    requests: STATUS_LABELS
                        .iter()
                        .map(|&status| {
                            metrics
                                .http_requests
                                .get_or_create(&vec![("route", name), ("status", status)])
                                .clone()
                        })
                        .collect(),
                    latency: metrics
                        .http_latency
                        .get_or_create(&vec![("route", name)])
                        .clone(),
                }
            })
            .collect();
        Self {
            routes,
            face: std::marker::PhantomData,
        }
    }

    /// The handles of `route`.
    pub fn route(&self, route: R) -> &RouteMetrics {
        &self.routes[route.index()]
    }
}

/// Label set of the HTTP families.
pub(super) type Labels = Vec<(&'static str, &'static str)>;
