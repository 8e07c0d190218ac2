//! What every request on the public port cost: a latency histogram by route and status class
//! (pass-through included), and — when `DTR_ACCESS_LOG` is on — one structured line per
//! request (target `dtr::access`: method, route, status, duration, never a query or a
//! header, so never a secret).

use std::time::Instant;

use http::{Method, StatusCode};
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::Metrics;
use crate::protocol::routes::Endpoint;

/// The routes of the public port, as labelled.
const ROUTES: [&str; 7] = [
    "passthrough",
    "authorize",
    "par",
    "token",
    "cancel",
    "discovery",
    "revocation",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub struct AccessLog {
    /// One histogram per (route, status class), looked up by index: no hashing per request.
    histograms: Vec<Histogram>,
    log: bool,
}

impl AccessLog {
    pub fn new(metrics: &Metrics, log: bool) -> Self {
        let mut histograms = Vec::with_capacity(ROUTES.len() * CLASSES.len());
        for route in ROUTES {
            for class in CLASSES {
                histograms.push(metrics.http_request_histogram(route, class));
            }
        }
        Self { histograms, log }
    }

    /// The label index of the endpoint the public service classified the request as.
    fn route(endpoint: Option<Endpoint>) -> usize {
        match endpoint {
            None => 0,
            Some(Endpoint::Authorization) => 1,
            Some(Endpoint::PushedAuthorization) => 2,
            Some(Endpoint::Token) => 3,
            Some(Endpoint::Cancellation) => 4,
            Some(Endpoint::Discovery) => 5,
            Some(Endpoint::Revocation) => 6,
        }
    }

    /// Starts timing a request; the method is kept only when requests are logged.
    pub fn begin(&self, method: &Method) -> Timing {
        Timing {
            started: Instant::now(),
            method: self.log.then(|| method.clone()),
        }
    }

    /// Records a request's latency under the route `PublicService::handle_routed` found.
    pub fn end(&self, timing: Timing, endpoint: Option<Endpoint>, status: StatusCode) {
        let elapsed = timing.started.elapsed();
        let route = Self::route(endpoint);
        let class = (usize::from(status.as_u16() / 100)).clamp(1, 5) - 1;
        if let Some(histogram) = self.histograms.get(route * CLASSES.len() + class) {
            histogram.observe(elapsed.as_secs_f64());
        }
        if let Some(method) = timing.method {
            tracing::info!(
                target: "dtr::access",
                method = %method,
                route = ROUTES[route],
                status = status.as_u16(),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
            );
        }
    }
}

pub struct Timing {
    started: Instant,
    /// `Some` when `DTR_ACCESS_LOG` is on.
    method: Option<Method>,
}
