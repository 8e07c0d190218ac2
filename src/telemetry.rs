//! OpenTelemetry traces, off by default (`OTEL_EXPORTER_OTLP_ENDPOINT`). When on, every request
//! to the public port is a server span, child of the request's W3C `traceparent` if it has one;
//! every call the proxy makes on its behalf — to the OP, to an RP's notification endpoint, to
//! the event sink, to Keycloak's admin API — is a client span whose `traceparent` travels with
//! the call. Spans are batched and sent over OTLP/HTTP (protobuf) from a thread of the SDK.
//!
//! When off, a [`Telemetry`] is `None` inside: every entry point returns at its first branch,
//! nothing is extracted, allocated or sent.

use std::collections::HashMap;
use std::sync::Arc;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::{RootSampler, SamplerSetting, TraceSettings};

pub use opentelemetry::context::FutureExt;
pub use opentelemetry::Context as TraceContext;
pub use opentelemetry::KeyValue;

/// The W3C trace context header.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The proxy's tracer, or nothing when traces are off. Cheap to clone.
#[derive(Clone, Default)]
pub struct Telemetry(Option<Arc<Inner>>);

struct Inner {
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

/// The exporting side, kept by the running proxy to flush buffered spans when it stops.
pub struct SpanExport {
    provider: SdkTracerProvider,
}

impl SpanExport {
    /// Sends what is buffered and stops the exporter. Blocks: call it off the runtime's workers
    /// (the export itself runs on the runtime).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace export did not shut down cleanly");
        }
    }
}

impl Telemetry {
    pub fn off() -> Self {
        Self(None)
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Builds the exporter and the tracer from the settings; spans are posted with `client`.
    pub fn start(settings: &TraceSettings, client: Arc<dyn HttpClient>) -> Result<(Self, SpanExport), String> {
        let headers: HashMap<String, String> = settings.headers.iter().cloned().collect();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_shared_http_client(client)
            .with_endpoint(settings.endpoint.as_str())
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(settings.timeout)
            .with_headers(headers)
            .build()
            .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
        // OTEL_SERVICE_NAME wins over a service.name in OTEL_RESOURCE_ATTRIBUTES.
        let resource = Resource::builder_empty()
            .with_attributes(
                settings
                    .resource
                    .iter()
                    .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
            )
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_service_name(settings.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler(settings.sampler))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("dtr-proxy");
        let telemetry = Self(Some(Arc::new(Inner {
            tracer,
            propagator: TraceContextPropagator::new(),
        })));
        Ok((telemetry, SpanExport { provider }))
    }

    /// The server span of an incoming request, child of its `traceparent` (if any and valid):
    /// the context to run the request in. `None` when off.
    pub fn server(&self, headers: &HeaderMap, method: &Method, path: &str, route: &'static str) -> Option<Context> {
        let inner = self.0.as_ref()?;
        let parent = inner.propagator.extract(&HeaderExtractor(headers));
        let span = inner
            .tracer
            .span_builder(format!("{method} {route}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.as_str().to_owned()),
                // The path only: a query may carry codes and tokens.
                KeyValue::new("url.path", path.to_owned()),
                KeyValue::new("dtr.route", route),
            ])
            .start_with_context(&inner.tracer, &parent);
        Some(parent.with_span(span))
    }

    /// Adds attributes to the span the current request runs in (its server span).
    pub fn note(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if self.0.is_some() {
            let attributes = attributes();
            Context::map_current(|cx| cx.span().set_attributes(attributes));
        }
    }

    /// A client span for an outgoing call, child of `parent` or else of the current context
    /// (the request being served), whose `traceparent` is written into `headers` in place of
    /// any the caller had. `None` when off.
    pub fn client(
        &self,
        name: &'static str,
        method: &Method,
        uri: &Uri,
        headers: &mut HeaderMap,
        parent: Option<&Context>,
    ) -> Option<Context> {
        let inner = self.0.as_ref()?;
        let parent = parent.cloned().unwrap_or_else(Context::current);
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.as_str().to_owned()),
            KeyValue::new("url.path", uri.path().to_owned()),
            KeyValue::new("dtr.call", name),
        ];
        if let Some(host) = uri.host() {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
        }
        if let Some(port) = uri.port_u16() {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        let span = inner
            .tracer
            .span_builder(format!("{method} {name}"))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&inner.tracer, &parent);
        let cx = parent.with_span(span);
        inner.propagator.inject_context(&cx, &mut HeaderInjector(headers));
        Some(cx)
    }

    /// The `traceparent` of the current context (the request being served), to keep with
    /// what outlives the request: a process remembers the trace of the exchange that made it.
    pub fn current_traceparent(&self) -> Option<String> {
        let inner = self.0.as_ref()?;
        let cx = Context::current();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut headers = HeaderMap::new();
        inner.propagator.inject_context(&cx, &mut HeaderInjector(&mut headers));
        headers.get(&TRACEPARENT)?.to_str().ok().map(str::to_owned)
    }

    /// The context a kept `traceparent` names, as the parent of a later call.
    pub fn remote(&self, traceparent: Option<&str>) -> Option<Context> {
        let inner = self.0.as_ref()?;
        let mut headers = HeaderMap::new();
        if let Some(value) = traceparent.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(TRACEPARENT.clone(), value);
        }
        Some(inner.propagator.extract(&HeaderExtractor(&headers)))
    }
}

/// Ends a server span with the status of the answer.
pub fn end_server(cx: &Context, status: StatusCode) {
    let span = cx.span();
    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
    if status.is_server_error() {
        span.set_status(Status::error(status.canonical_reason().unwrap_or("server error")));
    }
    span.end();
}

/// Ends a client span with the status of the answer, or the failure that stood in for one.
pub fn end_client(cx: Option<Context>, outcome: Result<StatusCode, &dyn std::fmt::Display>) {
    let Some(cx) = cx else {
        return;
    };
    let span = cx.span();
    match outcome {
        Ok(status) => {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
            if status.is_server_error() {
                span.set_status(Status::error(status.canonical_reason().unwrap_or("server error")));
            }
        }
        Err(e) => span.set_status(Status::error(e.to_string())),
    }
    span.end();
}

fn sampler(setting: SamplerSetting) -> Sampler {
    let root = |root: RootSampler| match root {
        RootSampler::AlwaysOn => Sampler::AlwaysOn,
        RootSampler::AlwaysOff => Sampler::AlwaysOff,
        RootSampler::Ratio(r) => Sampler::TraceIdRatioBased(r),
    };
    match setting {
        SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
        SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
        SamplerSetting::Ratio(r) => Sampler::TraceIdRatioBased(r),
        SamplerSetting::ParentBased(inner) => Sampler::ParentBased(Box::new(root(inner))),
    }
}
