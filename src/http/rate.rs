//! Per-client rate limits: a token bucket per client IP address (GCRA, `governor`),
//! checked before a request reaches its face. Over the limit, a request is answered
//! 429 `rate-limited` with `Retry-After`, and counted.
//!
//! The key is the TCP peer's address: behind a load balancer or CDN every request
//! shares the balancer's address, so there the limit belongs at the edge (or is set
//! high enough for the whole edge), as `docs/operations.md` says.

use std::net::IpAddr;
use std::num::NonZeroU32;

use bytes::Bytes;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body_util::Full;
use hyper::{Response, StatusCode};
use prometheus_client::metrics::counter::Counter;

use super::problem::Problem;

/// A rate and a burst, per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per second, sustained.
    pub per_second: NonZeroU32,
    /// Requests a client may send at once after a quiet spell.
    pub burst: NonZeroU32,
}

/// The limiter of one face.
#[derive(Debug)]
pub struct RateLimit {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    rejected: Counter,
}

impl RateLimit {
    /// A limiter allowing `rate` per client, counting refusals in `rejected`.
    pub fn new(rate: Rate, rejected: Counter) -> Self {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        Self {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            rejected,
        }
    }

    /// `None` if `client` may send this request now, else the refusal to answer.
    pub fn check(&self, client: IpAddr) -> Option<Response<Full<Bytes>>> {
        let not_until = self.limiter.check_key(&client).err()?;
        self.rejected.inc();
        let wait = not_until.wait_time_from(self.clock.now());
        // Whole seconds, rounded up: a client that waits that long gets through.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Some(too_many_requests(
            u32::try_from(seconds.max(1)).unwrap_or(u32::MAX),
        ))
    }

    /// Forgets clients whose buckets are full again, so memory follows the clients
    /// active lately, not every address ever seen.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// 429 `rate-limited` with `Retry-After`.
fn too_many_requests(retry_after: u32) -> Response<Full<Bytes>> {
    Problem {
        retry_after: Some(retry_after),
        ..Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            "this client sent more requests than its rate allows; retry after the given time",
        )
    }
    .response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_past_its_burst_is_refused_with_retry_after_and_others_are_not() {
        let rejected = Counter::default();
        let limit = RateLimit::new(
            Rate {
                per_second: NonZeroU32::new(1).unwrap(),
                burst: NonZeroU32::new(3).unwrap(),
            },
            rejected.clone(),
        );
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limit.check(one).is_none());
        }
        let refused = limit.check(one).expect("past the burst");
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()[hyper::header::RETRY_AFTER], "1");
        assert!(
            limit.check(two).is_none(),
            "another client has its own bucket"
        );
        assert_eq!(rejected.get(), 1);
        limit.forget_idle();
    }
}
