//! What every request on the public port cost: a latency histogram by route and status class
//! (pass-through included), and — when `DTR_ACCESS_LOG` is on — one structured line per
//! request (target `dtr::access`: method, route, status, duration, never a query or a
//! header, so never a secret).

use std::time::Instant;

use http::{Method, StatusCode};
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::Metrics;
use crate::protocol::routes::{Endpoint, Routes};

/// The routes of the public port, as labelled.
const ROUTES: [&str; 6] = ["passthrough", "authorize", "par", "token", "cancel", "discovery"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub struct AccessLog {
    routes: Routes,
    /// One histogram per (route, status class), looked up by index: no hashing per request.
    histograms: Vec<Histogram>,
    log: bool,
}

impl AccessLog {
    pub fn new(routes: Routes, metrics: &Metrics, log: bool) -> Self {
        let mut histograms = Vec::with_capacity(ROUTES.len() * CLASSES.len());
        for route in ROUTES {
            for class in CLASSES {
                histograms.push(metrics.http_request_histogram(route, class));
            }
        }
        Self {
            routes,
            histograms,
            log,
        }
    }

    fn route(&self, path: &str) -> usize {
        match self.routes.classify(path) {
            None => 0,
            Some((Endpoint::Authorization, _)) => 1,
            Some((Endpoint::PushedAuthorization, _)) => 2,
            Some((Endpoint::Token, _)) => 3,
            Some((Endpoint::Cancellation, _)) => 4,
            Some((Endpoint::Discovery, _)) => 5,
        }
    }

    /// Starts timing a request.
    pub fn begin(&self, method: &Method, path: &str) -> Timing {
        Timing {
            started: Instant::now(),
            route: self.route(path),
            method: method.clone(),
        }
    }

    pub fn end(&self, timing: Timing, status: StatusCode) {
        let elapsed = timing.started.elapsed();
        let class = (usize::from(status.as_u16() / 100)).clamp(1, 5) - 1;
        if let Some(histogram) = self.histograms.get(timing.route * CLASSES.len() + class) {
            histogram.observe(elapsed.as_secs_f64());
        }
        if self.log {
            tracing::info!(
                target: "dtr::access",
                method = %timing.method,
                route = ROUTES[timing.route],
                status = status.as_u16(),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
            );
        }
    }
}

pub struct Timing {
    started: Instant,
    route: usize,
    method: Method,
}
