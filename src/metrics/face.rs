//! The metrics listener (`CATALOG_METRICS_ADDR`): `GET /metrics` (and `/healthz`) on an
//! address of its own, so the exposition need not be reachable on the public ports;
//! the faces then answer `/metrics` 404.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};

use super::Metrics;
use crate::cache::L1;
use crate::http::problem::Problem;
use crate::http::response;

/// What the metrics listener serves.
#[derive(Debug)]
pub struct MetricsFace {
    metrics: Arc<Metrics>,
    /// The reader's L1, whose size the exposition reports (none in a writer).
    l1: Option<L1>,
}

impl MetricsFace {
    /// The exposition of `metrics`, with `l1`'s size when this process has one.
    pub fn new(metrics: Arc<Metrics>, l1: Option<L1>) -> Self {
        Self { metrics, l1 }
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Problem::method_not_allowed("GET, HEAD", "the metrics listener is read-only")
                .response();
        }
        match request.uri().path() {
            "/metrics" => {
                let usage = self.l1.as_ref().map(|l1| {
                    l1.sync();
                    l1.usage()
                });
                response::metrics(self.metrics.render(usage))
            }
            "/healthz" => response::healthy(),
            _ => Problem::no_route("this listener serves /metrics and /healthz").response(),
        }
    }
}

impl crate::http::Handler for MetricsFace {
    fn respond(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send {
        std::future::ready(self.answer(&request))
    }
}
