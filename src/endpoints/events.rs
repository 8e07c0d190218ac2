//! Process lifecycle events: `deferred.started`, `.approved`, `.denied`, `.cancelled`,
//! `.expired`, `.delivered`. Each is logged (target `dtr::events`, one structured line per
//! event, for log-based pipelines) and counted.

use crate::metrics::Metrics;
use crate::records::ProcessRecord;

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
}

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
