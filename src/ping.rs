//! Pings to the RP's `deferred_client_notification_endpoint` (step 5) and expiry of processes
//! (step 8), worked off the store's due queues by every replica. A claimed ping is leased, not
//! removed, so a replica that dies mid-delivery loses nothing: the ping falls due again.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use serde_json::json;
use tokio::sync::watch;

use crate::app::App;
use crate::events::{emit, Event};
use crate::http::{full, now_ms, APPLICATION_JSON};
use crate::protocol::state::{Change, Status, ACTIVE_QUEUE, PING_QUEUE};
use crate::store::{MemoryStore, Store, StoreError};

const TICK: Duration = Duration::from_millis(500);
const BATCH: usize = 32;
/// Longest wait between two attempts of one ping.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Delay before attempt `attempts + 1`: 1 s, 2 s, 4 s … capped.
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(20)).min(MAX_BACKOFF)
}

/// Runs until `shutdown` flips: delivers due pings, expires due processes, sweeps the
/// embedded store.
pub async fn run(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut sweeps = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = app.ping_wakeup.notified() => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = deliver_due(&app).await {
            tracing::warn!(error = %e, "ping queue unavailable");
        }
        if let Err(e) = expire_due(&app).await {
            tracing::warn!(error = %e, "expiry queue unavailable");
        }
        sweeps = sweeps.wrapping_add(1);
        if sweeps.is_multiple_of(60) {
            if let Store::Memory(memory) = app.store() {
                MemoryStore::sweep(memory);
            }
        }
    }
}

async fn deliver_due(app: &Arc<App>) -> Result<(), StoreError> {
    let store = app.store();
    let lease = app.config.ping_timeout + Duration::from_secs(5);
    let due = store.claim_due(&store.key(PING_QUEUE), now_ms(), lease, BATCH).await?;
    let mut deliveries = tokio::task::JoinSet::new();
    for process_hash in due {
        let app = app.clone();
        deliveries.spawn(async move {
            if let Err(e) = deliver(&app, &process_hash).await {
                tracing::warn!(error = %e, "ping delivery interrupted; it will be retried");
            }
        });
    }
    while deliveries.join_next().await.is_some() {}
    Ok(())
}

enum Attempt {
    Done,
    Retry(String),
    DeadLetter(String),
}

async fn deliver(app: &App, process_hash: &str) -> Result<(), StoreError> {
    let store = app.store();
    let queue = store.key(PING_QUEUE);
    let Some(loaded) = app.processes.load(process_hash).await? else {
        return store.unschedule(&queue, process_hash).await;
    };
    let record = &loaded.record;
    let now = now_ms();
    // Only finished processes are announced; not after delivery, cancel or expiry.
    let endpoint = app
        .client(&record.realm, &record.client_id)
        .and_then(|c| c.notification_endpoint.clone());
    let (Some(endpoint), true, true) = (
        endpoint,
        matches!(record.status, Status::Approved | Status::Denied),
        now < record.expires_at,
    ) else {
        return store.unschedule(&queue, process_hash).await;
    };
    let secrets = match app.processes.open(&loaded) {
        Ok(secrets) => secrets,
        Err(e) => {
            tracing::error!(process_id = %record.process_id, error = %e, "cannot open held secrets for a ping");
            app.metrics.ping("dead_letter");
            return store.unschedule(&queue, process_hash).await;
        }
    };

    let body = json!({ crate::protocol::wire::DEFERRED_AUTH_ID: secrets.deferred_auth_id }).to_string();
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
            // The client never follows redirects: the draft forbids it.
            match tokio::time::timeout(app.config.ping_timeout, app.ping_client.request(request)).await {
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
            app.metrics.ping("delivered");
            tracing::info!(process_id = %record.process_id, "ping delivered");
            store.unschedule(&queue, process_hash).await
        }
        Attempt::DeadLetter(reason) => {
            app.metrics.ping("dead_letter");
            tracing::warn!(process_id = %record.process_id, %reason, "ping refused by the RP; not retried");
            store.unschedule(&queue, process_hash).await
        }
        Attempt::Retry(reason) => {
            app.metrics.ping("retry");
            let updated = app
                .processes
                .modify(process_hash, None, |r| {
                    r.ping_attempts += 1;
                    Change::Write(r.ping_attempts)
                })
                .await?;
            let attempts = updated.map(|(a, _)| a).unwrap_or(1);
            let next = now_ms() + backoff(attempts.saturating_sub(1)).as_millis() as u64;
            tracing::info!(process_id = %record.process_id, %reason, attempts, "ping failed; retrying");
            store.schedule(&queue, process_hash, next).await
        }
    }
}

async fn expire_due(app: &App) -> Result<(), StoreError> {
    let store = app.store();
    let queue = store.key(ACTIVE_QUEUE);
    for process_hash in store
        .claim_due(&queue, now_ms(), Duration::from_secs(60), BATCH)
        .await?
    {
        if let Some(loaded) = app.processes.load(&process_hash).await? {
            if matches!(loaded.record.status, Status::Pending | Status::Approved) {
                emit(&app.metrics, Event::Expired, &loaded.record);
            }
        }
        store.unschedule(&queue, &process_hash).await?;
    }
    Ok(())
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
