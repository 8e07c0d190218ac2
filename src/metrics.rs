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
struct HttpLabels {
    route: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
}

/// The store's own figures (Redis): latency and failures by command, scripts as `eval`.
#[derive(Clone)]
pub struct StoreMetrics {
    durations: Family<CommandLabels, Histogram>,
    errors: Family<CommandLabels, Counter>,
}

impl StoreMetrics {
    pub fn observe(&self, command: &'static str, elapsed: Duration, failed: bool) {
        let labels = CommandLabels { command };
        self.durations.get_or_create(&labels).observe(elapsed.as_secs_f64());
        if failed {
            self.errors.get_or_create(&labels).inc();
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsReloadLabels {
    listener: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
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
    event_deliveries: Family<ResultLabels, Counter>,
    events: Family<EventLabels, Counter>,
    upstream: Family<CallLabels, Histogram>,
    store: StoreMetrics,
    pending: Gauge,
    process_durations: Family<OutcomeLabels, Histogram>,
    http: Family<HttpLabels, Histogram>,
    tls_reloads: Family<TlsReloadLabels, Counter>,
    federation_disabled: Family<ReasonLabels, Counter>,
    federation_reconciles: Family<ResultLabels, Counter>,
    process: ProcessGauges,
}

/// See [`Metrics::answer_counters`].
#[derive(Clone)]
pub struct AnswerCounters {
    request: Counter,
    poll: Counter,
}

impl AnswerCounters {
    pub fn inc(&self) {
        self.request.inc();
        self.poll.inc();
    }
}

/// This OS process's own figures, read from `/proc` at each scrape (Linux; zero elsewhere).
#[derive(Clone, Default)]
struct ProcessGauges {
    resident_memory_bytes: Gauge,
    open_fds: Gauge,
    cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    start_time_seconds: Gauge,
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
        let event_deliveries = Family::<ResultLabels, Counter>::default();
        registry.register(
            "event_deliveries",
            "Lifecycle event deliveries to the verification service by result",
            event_deliveries.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register("process_events", "Process lifecycle events", events.clone());
        let federation_disabled = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "federation_clients_disabled",
            "Federated clients disabled at the OP, by reason (statement_expired, trust_root_removed)",
            federation_disabled.clone(),
        );
        let federation_reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "federation_reconciles",
            "Reconciliations of the OP's federated clients per realm, by result",
            federation_reconciles.clone(),
        );
        let upstream = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register(
            "upstream_request_duration_seconds",
            "Latency of calls to the OpenID Provider",
            upstream.clone(),
        );
        // From a tenth of a millisecond to past the store timeout (DTR_REDIS_TIMEOUT, 2 s).
        let store = StoreMetrics {
            durations: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16))),
            errors: Family::default(),
        };
        registry.register(
            "store_request_duration_seconds",
            "Latency of store (Redis) commands, by command; scripts as eval",
            store.durations.clone(),
        );
        registry.register(
            "store_errors",
            "Store (Redis) commands that failed (unreachable, timed out, refused), by command",
            store.errors.clone(),
        );
        let tls_reloads = Family::<TlsReloadLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Certificate files read again after a change, by listener and result (replaced, failed)",
            tls_reloads.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register("build_info", "The dtr-proxy build", build_info.clone());
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                revision: option_env!("DTR_BUILD_REVISION").unwrap_or("unknown"),
            })
            .set(1);
        // Minutes to weeks: a verification takes hours to days.
        let process_durations = Family::<OutcomeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(60.0, 2.0, 16))
        });
        registry.register(
            "deferred_process_duration_seconds",
            "Time from the exchange to the end of a process, by how it ended",
            process_durations.clone(),
        );
        // From half a millisecond to past every timeout (the upstream's defaults to 10 s).
        let http = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 18))
        });
        registry.register(
            "http_request_duration_seconds",
            "Requests on the public port by route and status class, pass-through included",
            http.clone(),
        );
        let process = ProcessGauges::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the dtr-proxy process",
            process.resident_memory_bytes.clone(),
        );
        registry.register("process_open_fds", "Open file descriptors", process.open_fds.clone());
        registry.register(
            "process_cpu_seconds",
            "CPU time used by the dtr-proxy process (user + system)",
            process.cpu_seconds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start of the dtr-proxy process, Unix seconds",
            process.start_time_seconds.clone(),
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
            event_deliveries,
            events,
            upstream,
            store,
            pending,
            process_durations,
            http,
            tls_reloads,
            federation_disabled,
            federation_reconciles,
            process,
        }
    }

    /// The latency histogram of one (route, status class), to keep and observe directly.
    pub fn http_request_histogram(&self, route: &'static str, status_class: &'static str) -> Histogram {
        self.http.get_or_create(&HttpLabels { route, status_class }).clone()
    }

    /// A process ended (`delivered`, `denied`, `cancelled`, `expired`) `seconds` after its
    /// exchange.
    pub fn observe_process(&self, outcome: &'static str, seconds: f64) {
        self.process_durations
            .get_or_create(&OutcomeLabels { outcome })
            .observe(seconds);
    }

    pub fn request(&self, route: &'static str, outcome: &'static str) {
        self.requests.get_or_create(&RequestLabels { route, outcome }).inc();
    }

    /// The counters that [`Self::request`] and [`Self::poll`] move for one kind of answer,
    /// looked up once: for the answer most requests get (a pending poll), where a lookup per
    /// request would hash the labels under a lock twice.
    pub fn answer_counters(&self, route: &'static str, outcome: &'static str, result: &'static str) -> AnswerCounters {
        AnswerCounters {
            request: self.requests.get_or_create(&RequestLabels { route, outcome }).clone(),
            poll: self.polls.get_or_create(&ResultLabels { result }).clone(),
        }
    }

    pub fn poll(&self, result: &'static str) {
        self.polls.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn ping(&self, result: &'static str) {
        self.pings.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn event_delivery(&self, result: &'static str) {
        self.event_deliveries.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn federation_disabled(&self, reason: &'static str) {
        self.federation_disabled.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn federation_reconcile(&self, result: &'static str) {
        self.federation_reconciles.get_or_create(&ResultLabels { result }).inc();
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
    /// The store's figures, for the Redis store to record into.
    pub fn store(&self) -> StoreMetrics {
        self.store.clone()
    }

    pub fn upstream_histogram(&self, call: &'static str) -> Histogram {
        self.upstream.get_or_create(&CallLabels { call }).clone()
    }

    pub fn tls_reload(&self, listener: &'static str, result: &'static str) {
        self.tls_reloads
            .get_or_create(&TlsReloadLabels { listener, result })
            .inc();
    }

    pub fn set_pending(&self, pending: u64) {
        self.pending.set(pending as i64);
    }

    pub fn render(&self) -> String {
        self.process.refresh();
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

impl ProcessGauges {
    fn refresh(&self) {
        #[cfg(target_os = "linux")]
        {
            // /proc/self/statm: sizes in pages; the second is the resident set.
            const PAGE: i64 = 4096;
            if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
            {
                self.resident_memory_bytes.set(pages * PAGE);
            }
            if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
                self.open_fds.set(fds.count() as i64);
            }
            // /proc/self/stat: fields after the command name; utime and stime are the 14th
            // and 15th, starttime the 22nd, in clock ticks (100 per second on Linux).
            const TICKS: f64 = 100.0;
            if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map(|(_, rest)| rest.split_whitespace().collect())
                    .unwrap_or_default();
                let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
                if let (Some(user), Some(system)) = (field(14), field(15)) {
                    self.cpu_seconds.set((user + system) / TICKS);
                }
                let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("btime "))
                        .and_then(|b| b.trim().parse::<f64>().ok())
                });
                if let (Some(start), Some(boot)) = (field(22), boot) {
                    self.start_time_seconds.set((boot + start / TICKS) as i64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_process_figures_are_exposed() {
        let metrics = Metrics::new();
        metrics.observe_process("delivered", 3600.0);
        let text = metrics.render();
        assert!(text.contains("dtr_build_info{version=\""), "{text}");
        assert!(
            text.contains("dtr_deferred_process_duration_seconds_count{outcome=\"delivered\"} 1"),
            "{text}"
        );
        #[cfg(target_os = "linux")]
        {
            let rss = text
                .lines()
                .find_map(|l| l.strip_prefix("dtr_process_resident_memory_bytes "))
                .and_then(|v| v.parse::<i64>().ok())
                .expect("rss");
            assert!(rss > 1024 * 1024, "{rss}");
            assert!(text.contains("dtr_process_open_fds "), "{text}");
        }
    }

    /// Every `dtr_*` series the chart's alerts and dashboard query is one this process exports,
    /// with the suffix its type gives it (`_total`, `_bucket`, `_count`, `_sum`).
    #[test]
    fn the_chart_alerts_and_dashboard_query_only_exported_series() {
        // A family renders its type once it has a series.
        let metrics = Metrics::new();
        metrics.request("token", "ok");
        metrics.poll("pending");
        metrics.ping("delivered");
        metrics.event_delivery("delivered");
        metrics.event("started");
        metrics.observe_upstream("token", Duration::from_millis(1));
        metrics.observe_process("delivered", 60.0);
        metrics.http_request_histogram("passthrough", "2xx").observe(0.001);
        metrics.store().observe("GET", Duration::from_millis(1), true);
        metrics.tls_reload("redis", "failed");
        let text = metrics.render();
        let mut exported = std::collections::BTreeSet::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    exported.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_count", "_sum"] {
                        exported.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    exported.insert(name.to_string());
                }
            }
        }
        let files = [
            (
                "prometheusrule.yaml",
                include_str!("../deploy/helm/dtr-proxy/templates/prometheusrule.yaml"),
            ),
            ("alerts-test.yaml", include_str!("../deploy/test/alerts-test.yaml")),
            (
                "dtr-proxy.json",
                include_str!("../deploy/helm/dtr-proxy/dashboards/dtr-proxy.json"),
            ),
        ];
        let mut used = 0;
        for (file, content) in files {
            let mut rest = content;
            while let Some(at) = rest.find("dtr_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                // `dtr_proxy`-style words (names, not series) have no second underscore.
                if name.matches('_').count() < 2 && !exported.contains(&name) {
                    continue;
                }
                used += 1;
                assert!(
                    exported.contains(&name),
                    "{file} queries {name}, which is not exported: {exported:?}"
                );
            }
        }
        assert!(used > 20, "{used}");
    }
}
