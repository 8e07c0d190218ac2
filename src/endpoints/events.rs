//! Process lifecycle events: `deferred.started`, `.approved`, `.denied`, `.cancelled`,
//! `.expired`, `.delivered`. Each is logged (target `dtr::events`, one structured line per
//! event, for log-based pipelines) and counted.
//!
//! With `DTR_EVENTS_URL`, the ones the verification service cannot know by itself —
//! `started`, `cancelled`, `expired`, `delivered` — are also sent to it, signed per Standard
//! Webhooks with `DTR_EVENTS_SECRET`: stored and put on a due queue first, then delivered at
//! least once by any replica's worker, with retries (1 s, 2 s, 4 s … 10 min) for a day, so a
//! replica restart or a receiver outage loses none. `approved` and `denied` come from the
//! service itself and are not sent back.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::now_ms;
use crate::config::EventSinkSettings;
use crate::crypto::random_token;
use crate::http::{full, APPLICATION_JSON};
use crate::metrics::Metrics;
use crate::records::{ProcessRecord, Records};
use crate::store::StoreError;
use crate::telemetry::{self, Telemetry};
use crate::upstream::HttpClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Started,
    Approved,
    Denied,
    Cancelled,
    Expired,
    Delivered,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Started => "deferred.started",
            Event::Approved => "deferred.approved",
            Event::Denied => "deferred.denied",
            Event::Cancelled => "deferred.cancelled",
            Event::Expired => "deferred.expired",
            Event::Delivered => "deferred.delivered",
        }
    }

    /// Whether the verification service hears of it (it decided the other two itself).
    fn is_sent(self) -> bool {
        !matches!(self, Event::Approved | Event::Denied)
    }
}

/// Logs and counts an event that is never sent.
pub fn emit(metrics: &Metrics, event: Event, record: &ProcessRecord) {
    metrics.event(event.name());
    tracing::info!(
        target: "dtr::events",
        event = event.name(),
        process_id = %record.process_id,
        client_id = %record.client_id,
        realm = %record.realm,
        sub = record.sub.as_deref().unwrap_or(""),
    );
}

/// How long an event is retried before it is dead-lettered.
const EVENT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Longest wait between two attempts of one event.
const MAX_BACKOFF: Duration = Duration::from_secs(600);
const BATCH: usize = 32;

/// An event as stored between attempts.
#[derive(Debug, Serialize, Deserialize)]
struct Queued {
    /// The signed payload, as sent every time.
    body: String,
    created_at: u64,
    #[serde(default)]
    attempts: u32,
    /// The process's trace (`traceparent`), continued by the delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace: Option<String>,
}

/// The payload of an event (Standard Webhooks' `type`, `timestamp`, `data`); `timestamp` in
/// Unix seconds.
pub fn payload(event: Event, record: &ProcessRecord, now_ms: u64) -> Value {
    let mut data = json!({
        "process_id": record.process_id,
        "client_id": record.client_id,
        "realm": record.realm,
        "sub": record.sub,
        "sid": record.sid,
        "expires_at": record.expires_at / 1000,
    });
    if event == Event::Started {
        data["acr_values"] = json!(record.requested.acr_values);
        data["claims"] = match record.requested.claims.as_deref().map(serde_json::from_str::<Value>) {
            Some(Ok(claims)) => claims,
            Some(Err(_)) => json!(record.requested.claims),
            None => Value::Null,
        };
    }
    json!({ "type": event.name(), "timestamp": now_ms / 1000, "data": data })
}

/// Where lifecycle events go, and how.
pub struct EventSink {
    pub settings: EventSinkSettings,
    pub http: HttpClient,
    pub timeout: Duration,
    /// Traces: each delivery is a client span in the process's trace.
    pub telemetry: Telemetry,
}

/// The lifecycle events of processes: logged, counted, and sent where configured.
#[derive(Clone)]
pub struct Events {
    pub metrics: Metrics,
    pub records: Records,
    pub sink: Option<Arc<EventSink>>,
}

impl Events {
    /// Logs, counts and, where configured, queues an event for the verification service. A
    /// store failure is logged, never the caller's failure: the process itself is intact.
    pub async fn emit(&self, event: Event, record: &ProcessRecord) {
        emit(&self.metrics, event, record);
        let outcome = match event {
            Event::Delivered => Some("delivered"),
            Event::Denied => Some("denied"),
            Event::Cancelled => Some("cancelled"),
            Event::Expired => Some("expired"),
            Event::Started | Event::Approved => None,
        };
        if let Some(outcome) = outcome {
            let seconds = now_ms().saturating_sub(record.created_at) as f64 / 1000.0;
            self.metrics.observe_process(outcome, seconds);
        }
        let Some(sink) = &self.sink else { return };
        let realms = &sink.settings.realms;
        if !event.is_sent() || !(realms.is_empty() || realms.contains(&record.realm)) {
            return;
        }
        let now = now_ms();
        let queued = Queued {
            body: payload(event, record, now).to_string(),
            created_at: now,
            attempts: 0,
            trace: record.trace.clone(),
        };
        let event_id = format!("evt_{}", random_token(16));
        let bytes = serde_json::to_vec(&queued).unwrap_or_default();
        if let Err(e) = self.records.enqueue_event(&event_id, &bytes, EVENT_LIFETIME, now).await {
            self.metrics.event_delivery("not_queued");
            tracing::warn!(error = %e, event = event.name(), process_id = %record.process_id, "could not queue a lifecycle event");
        }
    }

    /// Sends the events due now, at most one claim of them (called by every replica's
    /// worker); whether the claim was full (more may be due).
    pub async fn send_due(&self) -> Result<bool, StoreError> {
        let Some(sink) = &self.sink else {
            return Ok(false);
        };
        let lease = sink.timeout + Duration::from_secs(5);
        let due = self.records.claim_due_events(now_ms(), lease, BATCH).await?;
        let full = due.len() == BATCH;
        let mut sends = tokio::task::JoinSet::new();
        for event_id in due {
            let (events, sink) = (self.clone(), sink.clone());
            sends.spawn(async move {
                if let Err(e) = events.send_one(&sink, &event_id).await {
                    tracing::warn!(error = %e, "event delivery interrupted; it will be retried");
                }
            });
        }
        while sends.join_next().await.is_some() {}
        Ok(full)
    }

    async fn send_one(&self, sink: &EventSink, event_id: &str) -> Result<(), StoreError> {
        let Some(raw) = self.records.load_event(event_id).await? else {
            return self.records.drop_event(event_id).await;
        };
        let Ok(mut queued) = serde_json::from_slice::<Queued>(&raw) else {
            self.metrics.event_delivery("dead_letter");
            return self.records.drop_event(event_id).await;
        };
        let timestamp = now_ms() / 1000;
        let signature = crate::webhook::sign(&sink.settings.secret, event_id, timestamp, queued.body.as_bytes());
        let mut request = Request::new(full(queued.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = match sink.settings.url.as_str().parse() {
            Ok(uri) => uri,
            Err(_) => {
                self.metrics.event_delivery("dead_letter");
                return self.records.drop_event(event_id).await;
            }
        };
        let headers = request.headers_mut();
        headers.insert(header::CONTENT_TYPE, APPLICATION_JSON);
        for (name, value) in [
            ("webhook-id", event_id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", format!("v1,{signature}")),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        let span = if sink.telemetry.is_on() {
            let parent = sink.telemetry.remote(queued.trace.as_deref());
            let (method, uri) = (request.method().clone(), request.uri().clone());
            sink.telemetry
                .client("event", &method, &uri, request.headers_mut(), parent.as_ref())
        } else {
            None
        };
        let sent = tokio::time::timeout(sink.timeout, sink.http.request(request)).await;
        if span.is_some() {
            match &sent {
                Err(_) => telemetry::end_client(span, Err(&"timeout")),
                Ok(Err(e)) => telemetry::end_client(span, Err(e)),
                Ok(Ok(response)) => telemetry::end_client(span, Ok(response.status())),
            }
        }
        let retry = match sent {
            Err(_) => true,
            Ok(Err(_)) => true,
            Ok(Ok(response)) => match response.status() {
                s if s.is_success() => {
                    self.metrics.event_delivery("delivered");
                    return self.records.drop_event(event_id).await;
                }
                s => s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error(),
            },
        };
        let now = now_ms();
        if !retry || now.saturating_sub(queued.created_at) > EVENT_LIFETIME.as_millis() as u64 {
            self.metrics.event_delivery("dead_letter");
            tracing::warn!(event_id, "lifecycle event refused or undeliverable; dropped");
            return self.records.drop_event(event_id).await;
        }
        self.metrics.event_delivery("retry");
        queued.attempts += 1;
        // 1 s, 2 s, 4 s … as documented (the first retry one second after the first attempt).
        let backoff = Duration::from_secs(1u64 << queued.attempts.saturating_sub(1).min(20)).min(MAX_BACKOFF);
        let bytes = serde_json::to_vec(&queued).unwrap_or_default();
        self.records.replace_event(event_id, &bytes, EVENT_LIFETIME).await?;
        self.records
            .schedule_event(event_id, now + backoff.as_millis() as u64)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Requested;

    #[test]
    fn a_started_event_says_what_is_to_be_verified() {
        let record = ProcessRecord {
            process_id: "p1".into(),
            realm: "acme".into(),
            client_id: "rp".into(),
            sub: Some("user-1".into()),
            sid: Some("s-1".into()),
            expires_at: 86_401_000,
            requested: Requested {
                acr_values: Some("urn:example:loa:high".into()),
                claims: Some(r#"{"id_token":{"birthdate":{"essential":true}}}"#.into()),
            },
            sealed: "secret".into(),
            ..ProcessRecord::sample(61_000)
        };
        let started = payload(Event::Started, &record, 2_000);
        assert_eq!(started["type"], "deferred.started");
        assert_eq!(started["data"]["process_id"], "p1");
        assert_eq!(started["data"]["acr_values"], "urn:example:loa:high");
        assert_eq!(started["data"]["claims"]["id_token"]["birthdate"]["essential"], true);
        assert_eq!(started["data"]["expires_at"], 86_401);
        assert!(!started.to_string().contains("secret"), "no held secret leaves");
        let cancelled = payload(Event::Cancelled, &record, 2_000);
        assert!(cancelled["data"].get("claims").is_none());
    }
}
