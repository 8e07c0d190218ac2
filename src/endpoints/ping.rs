//! Pings to the RP's `deferred_client_notification_endpoint` (step 5) and expiry of processes
//! (step 8), worked off the store's due queues by every replica. A claimed ping is leased, not
//! removed, so a replica that dies mid-delivery loses nothing: the ping falls due again.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use serde_json::json;
use tokio::sync::watch;

use tokio::sync::Notify;

use super::events::{Event, Events};
use super::revoke::Revoker;
use crate::clients::Clients;
use crate::clock::now_ms;
use crate::http::{full, APPLICATION_JSON};
use crate::metrics::Metrics;
use crate::records::{Change, Records, Status};
use crate::store::{MemoryStore, Store, StoreError};
use crate::telemetry::{self, Telemetry};
use crate::upstream::HttpClient;

const TICK: Duration = Duration::from_millis(500);
const BATCH: usize = 32;
/// Longest wait between two attempts of one ping.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Delay before attempt `attempts + 1`: 1 s, 2 s, 4 s … capped.
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(20)).min(MAX_BACKOFF)
}

/// The worker behind the due queues, one per replica.
pub struct Pinger {
    pub records: Records,
    pub clients: Clients,
    pub metrics: Metrics,
    /// Client for pings to RPs (a pool apart from the OP's).
    pub http: HttpClient,
    /// `DTR_PING_TIMEOUT`.
    pub timeout: Duration,
    /// Rung when this replica schedules a ping.
    pub wakeup: Arc<Notify>,
    /// Ends the offline sessions of expired processes, when the operator's account allows.
    pub revoker: Arc<Revoker>,
    /// Lifecycle events: expiries are announced here, and queued events are sent.
    pub events: Events,
    /// Traces: each ping is a client span in the trace of the exchange that made the process.
    pub telemetry: Telemetry,
}

/// Runs until `shutdown` flips: delivers due pings, expires due processes, sweeps the
/// embedded store.
pub async fn run(pinger: Arc<Pinger>, mut shutdown: watch::Receiver<bool>) {
    let mut sweeps = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = pinger.wakeup.notified() => {}
            _ = shutdown.changed() => return,
        }
        // A full claim means more may be due: claim again at once, until every queue is
        // drained (a backlog, or a burst of completions, is not held to one claim per tick).
        loop {
            let mut more = false;
            match send_due_pings(&pinger).await {
                Ok(claimed) => more |= claimed == BATCH,
                Err(e) => tracing::warn!(error = %e, "ping queue unavailable"),
            }
            match expire_due(&pinger).await {
                Ok(claimed) => more |= claimed == BATCH,
                Err(e) => tracing::warn!(error = %e, "expiry queue unavailable"),
            }
            match pinger.events.send_due().await {
                Ok(full) => more |= full,
                Err(e) => tracing::warn!(error = %e, "event queue unavailable"),
            }
            if !more || shutdown.has_changed().unwrap_or(true) {
                break;
            }
        }
        sweeps = sweeps.wrapping_add(1);
        if sweeps.is_multiple_of(60) {
            if let Store::Memory(memory) = pinger.records.store() {
                MemoryStore::sweep(memory);
            }
        }
    }
}

/// Claims the pings due now (at most [`BATCH`]) and sends them; how many were claimed.
async fn send_due_pings(pinger: &Arc<Pinger>) -> Result<usize, StoreError> {
    let lease = pinger.timeout + Duration::from_secs(5);
    let due = pinger.records.claim_due_pings(now_ms(), lease, BATCH).await?;
    let claimed = due.len();
    let mut deliveries = tokio::task::JoinSet::new();
    for process_hash in due {
        let pinger = pinger.clone();
        deliveries.spawn(async move {
            if let Err(e) = send_ping(&pinger, &process_hash).await {
                tracing::warn!(error = %e, "ping delivery interrupted; it will be retried");
            }
        });
    }
    while deliveries.join_next().await.is_some() {}
    Ok(claimed)
}

enum Attempt {
    Done,
    Retry(String),
    DeadLetter(String),
}

async fn send_ping(pinger: &Pinger, process_hash: &str) -> Result<(), StoreError> {
    let Some(loaded) = pinger.records.load(process_hash).await? else {
        return pinger.records.unschedule_ping(process_hash).await;
    };
    let record = &loaded.record;
    let now = now_ms();
    // Only finished processes are announced; not after delivery, cancel or expiry.
    let client = pinger.clients.find(&record.realm, &record.client_id);
    let endpoint = client.as_ref().and_then(|c| c.notification_endpoint.clone());
    // The ping names the process as the client's profile does (`deferred_auth_id` or
    // `deferral_code`).
    let id_param = client.as_ref().map_or(crate::protocol::wire::DEFERRED_AUTH_ID, |c| {
        pinger.clients.profile(&record.realm, c).process_param()
    });
    let (Some(endpoint), true, true) = (
        endpoint,
        matches!(record.status, Status::Approved | Status::Denied),
        now < record.expires_at,
    ) else {
        return pinger.records.unschedule_ping(process_hash).await;
    };
    let secrets = match pinger.records.open(&loaded) {
        Ok(secrets) => secrets,
        Err(e) => {
            tracing::error!(process_id = %record.process_id, error = %e, "cannot open held secrets for a ping");
            pinger.metrics.ping("dead_letter");
            return pinger.records.unschedule_ping(process_hash).await;
        }
    };

    let body = json!({ id_param: secrets.deferred_auth_id }).to_string();
    let attempt = match Request::builder()
        .method(Method::POST)
        .uri(endpoint.as_str())
        .body(full(body))
    {
        Err(e) => Attempt::DeadLetter(format!("bad endpoint: {e}")),
        Ok(mut request) => {
            let headers = request.headers_mut();
            headers.insert(header::CONTENT_TYPE, APPLICATION_JSON);
            if let Some(token) = &secrets.notification_token {
                match HeaderValue::from_str(&format!("Bearer {token}")) {
                    Ok(value) => {
                        headers.insert(header::AUTHORIZATION, value);
                    }
                    Err(_) => {
                        tracing::warn!(process_id = %record.process_id, "notification token is not a valid header value")
                    }
                }
            }
            let span = if pinger.telemetry.is_on() {
                let parent = pinger.telemetry.remote(record.trace.as_deref());
                let (method, uri) = (request.method().clone(), request.uri().clone());
                pinger
                    .telemetry
                    .client("ping", &method, &uri, request.headers_mut(), parent.as_ref())
            } else {
                None
            };
            // The client never follows redirects: the draft forbids it.
            let sent = tokio::time::timeout(pinger.timeout, pinger.http.request(request)).await;
            if span.is_some() {
                match &sent {
                    Err(_) => telemetry::end_client(span, Err(&"timeout")),
                    Ok(Err(e)) => telemetry::end_client(span, Err(e)),
                    Ok(Ok(response)) => telemetry::end_client(span, Ok(response.status())),
                }
            }
            match sent {
                Err(_) => Attempt::Retry("timeout".into()),
                Ok(Err(e)) => Attempt::Retry(e.to_string()),
                Ok(Ok(response)) => match response.status() {
                    s if s.is_success() => Attempt::Done,
                    s if s == StatusCode::REQUEST_TIMEOUT
                        || s == StatusCode::TOO_MANY_REQUESTS
                        || s.is_server_error() =>
                    {
                        Attempt::Retry(format!("status {s}"))
                    }
                    s => Attempt::DeadLetter(format!("status {s}")),
                },
            }
        }
    };
    match attempt {
        Attempt::Done => {
            pinger.metrics.ping("delivered");
            tracing::info!(process_id = %record.process_id, "ping delivered");
            pinger.records.unschedule_ping(process_hash).await
        }
        Attempt::DeadLetter(reason) => {
            pinger.metrics.ping("dead_letter");
            tracing::warn!(process_id = %record.process_id, %reason, "ping refused by the RP; not retried");
            pinger.records.unschedule_ping(process_hash).await
        }
        Attempt::Retry(reason) => {
            pinger.metrics.ping("retry");
            let updated = pinger
                .records
                .modify(process_hash, None, |r| {
                    r.ping_attempts += 1;
                    Change::Write(r.ping_attempts)
                })
                .await?;
            let attempts = updated.map(|(a, _)| a).unwrap_or(1);
            let next = now_ms() + backoff(attempts.saturating_sub(1)).as_millis() as u64;
            tracing::info!(process_id = %record.process_id, %reason, attempts, "ping failed; retrying");
            pinger.records.schedule_ping(process_hash, next).await
        }
    }
}

/// Claims the processes whose lifetime is over (at most [`BATCH`]) and ends them; how many
/// were claimed.
async fn expire_due(pinger: &Pinger) -> Result<usize, StoreError> {
    let due = pinger
        .records
        .claim_expired(now_ms(), Duration::from_secs(60), BATCH)
        .await?;
    let claimed = due.len();
    for process_hash in due {
        if let Some(loaded) = pinger.records.load(&process_hash).await? {
            let open = matches!(loaded.record.status, Status::Pending | Status::Approved);
            if open && loaded.record.expires_at > now_ms() {
                // Extended by an operator since it fell due: not over yet.
                pinger
                    .records
                    .keep_active(&process_hash, loaded.record.expires_at)
                    .await?;
                continue;
            }
            if open {
                pinger.events.emit(Event::Expired, &loaded.record).await;
                pinger.revoker.as_operator(&loaded.record).await;
            }
        }
        pinger.records.retire(&process_hash).await?;
    }
    Ok(claimed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
