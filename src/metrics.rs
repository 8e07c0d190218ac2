//! Prometheus metrics for the admin port.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

/// All metrics; cheap to clone (every metric is shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    requests: Family<RequestLabels, Counter>,
    polls: Family<ResultLabels, Counter>,
    pings: Family<ResultLabels, Counter>,
    events: Family<EventLabels, Counter>,
    upstream: Family<CallLabels, Histogram>,
    pending: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dtr");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests by route and outcome", requests.clone());
        let polls = Family::<ResultLabels, Counter>::default();
        registry.register("polls", "Deferred polls by result", polls.clone());
        let pings = Family::<ResultLabels, Counter>::default();
        registry.register("pings", "Ping deliveries to RPs by result", pings.clone());
        let events = Family::<EventLabels, Counter>::default();
        registry.register("process_events", "Process lifecycle events", events.clone());
        let upstream = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register(
            "upstream_request_duration_seconds",
            "Latency of calls to the OpenID Provider",
            upstream.clone(),
        );
        let pending = Gauge::default();
        registry.register(
            "pending_processes",
            "Processes not yet delivered, cancelled or expired",
            pending.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            requests,
            polls,
            pings,
            events,
            upstream,
            pending,
        }
    }

    pub fn request(&self, route: &'static str, outcome: &'static str) {
        self.requests.get_or_create(&RequestLabels { route, outcome }).inc();
    }

    pub fn poll(&self, result: &'static str) {
        self.polls.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn ping(&self, result: &'static str) {
        self.pings.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn event(&self, event: &'static str) {
        self.events.get_or_create(&EventLabels { event }).inc();
    }

    pub fn observe_upstream(&self, call: &'static str, elapsed: Duration) {
        self.upstream
            .get_or_create(&CallLabels { call })
            .observe(elapsed.as_secs_f64());
    }

    /// The latency histogram of one kind of call, for a caller that observes it often.
    pub fn upstream_histogram(&self, call: &'static str) -> Histogram {
        self.upstream.get_or_create(&CallLabels { call }).clone()
    }

    pub fn set_pending(&self, pending: u64) {
        self.pending.set(pending as i64);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}
