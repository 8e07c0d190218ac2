//! The completion webhook (step 4) on the internal port: the verification service reports an
//! outcome for a process, signed per Standard Webhooks ([`crate::webhook`]), addressed by
//! `process_id`, `sub` or `sid`. Idempotent by webhook id.
//!
//! A verification may finish before the RP has exchanged its code (the process does not exist
//! yet): a final outcome for a named client is then held for `DTR_COMPLETION_HOLD` and applied
//! by the exchange that creates the process. By `sub` or `sid` alone an outcome never reaches
//! a process of another client than the one meant: when processes of several clients match,
//! the webhook must name `client_id` (or say `all_clients`).

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderMap;
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;

use super::events::{emit, Event};
use super::revoke::Revoker;
use crate::clients::Clients;
use crate::clock::now_ms;
use crate::http::{json_no_store, Body};
use crate::metrics::Metrics;
use crate::records::{Change, ProcessRecord, Records, Status, StoredProcess};
use crate::store::StoreError;
use crate::webhook::verify;

/// How long a webhook id is remembered for idempotency (beyond the tolerance window, after
/// which a replay is refused for its timestamp anyway).
const REMEMBER_IDS: Duration = Duration::from_secs(24 * 3600);
/// Pings go out no sooner than this after the exchange response: the draft requires the RP to
/// hold its `deferred_auth_id` before the ping names it.
pub const PING_GRACE_MS: u64 = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approved,
    Denied,
    /// Progress only: updates the description pending polls see.
    Pending,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Completion {
    outcome: Verdict,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    process_id: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    realm: Option<String>,
    /// By `sub`/`sid` without `client_id`: also when processes of several clients match.
    #[serde(default)]
    all_clients: bool,
}

/// An outcome waiting for its process, kept under its selector (`sub` or `sid`, and the
/// client, or any client).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldOutcome {
    pub outcome: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
}

pub fn problem(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    json_no_store(status, &json!({ "error": error, "error_description": description }))
}

pub fn store_problem(e: StoreError) -> Response<Body> {
    tracing::warn!(error = %e, "store unavailable for a completion webhook");
    let mut response = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "The store is unavailable; retry.",
    );
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(5));
    response
}

/// Applies verification outcomes to processes: status, lifecycle event, ping.
#[derive(Clone)]
pub struct Verdicts {
    pub records: Records,
    pub clients: Clients,
    pub metrics: Metrics,
    /// Wakes this replica's ping worker when a ping is scheduled.
    pub ping_wakeup: Arc<Notify>,
    /// Gives a denied process's grant back at once when the operator's account allows.
    pub revoker: Arc<Revoker>,
}

impl Verdicts {
    /// Sets an open process's outcome; `(changed, record)`.
    pub async fn apply(
        &self,
        outcome: Verdict,
        description: Option<&str>,
        process: StoredProcess,
    ) -> Result<(bool, ProcessRecord), StoreError> {
        let process_hash = process.process_hash.clone();
        let now = now_ms();
        let result = self
            .records
            .modify(&process_hash, Some(process), |r| {
                if !r.status.is_open() || now >= r.expires_at {
                    return Change::Keep(false);
                }
                match outcome {
                    Verdict::Approved => r.status = Status::Approved,
                    Verdict::Denied => r.status = Status::Denied,
                    Verdict::Pending => {}
                }
                r.description = description.map(str::to_owned);
                if r.status != Status::Pending {
                    r.completed_at = Some(now);
                }
                Change::Write(true)
            })
            .await?;
        let Some((changed, record)) = result else {
            return Err(StoreError::Unavailable("process vanished during the update".into()));
        };
        if changed && record.status != Status::Pending {
            let event = if record.status == Status::Approved {
                Event::Approved
            } else {
                Event::Denied
            };
            emit(&self.metrics, event, &record);
            if record.status == Status::Denied && self.revoker.has_operator() {
                self.give_back(&process_hash, &record);
            }
            let has_endpoint = self
                .clients
                .find(&record.realm, &record.client_id)
                .is_some_and(|c| c.notification_endpoint.is_some());
            if has_endpoint {
                let due = now.max(record.created_at + PING_GRACE_MS);
                self.records.schedule_ping(&process_hash, due).await?;
                self.ping_wakeup.notify_one();
            }
        }
        Ok((changed, record))
    }

    /// Ends a denied process's offline session with the operator's account, then drops the
    /// grant from the record (else the RP's next poll gives it back). Not waited for.
    fn give_back(&self, process_hash: &str, record: &ProcessRecord) {
        let (revoker, records) = (self.revoker.clone(), self.records.clone());
        let (process_hash, record) = (process_hash.to_owned(), record.clone());
        tokio::spawn(async move {
            if revoker.as_operator(&record).await {
                let dropped = records
                    .modify(&process_hash, None, |r| {
                        r.sealed.clear();
                        Change::Write(())
                    })
                    .await;
                if let Err(e) = dropped {
                    tracing::debug!(error = %e, "could not drop a revoked grant from its record");
                }
            }
        });
    }

    /// Applies an outcome held for a process that did not exist yet, if there is one: looked
    /// up by the new process's `sub` and `sid`, for its client first, then for any client.
    pub async fn apply_held(&self, process: StoredProcess) -> Result<Option<ProcessRecord>, StoreError> {
        let record = &process.record;
        let client = record.client_id.clone();
        let selectors = [("sub", record.sub.clone()), ("sid", record.sid.clone())];
        for client_id in [Some(client.as_str()), None] {
            for (kind, value) in &selectors {
                let Some(value) = value else { continue };
                let Some(raw) = self.records.take_held_outcome(kind, value, client_id).await? else {
                    continue;
                };
                let Ok(held) = serde_json::from_slice::<HeldOutcome>(&raw) else {
                    continue;
                };
                if held.realm.as_ref().is_some_and(|r| *r != record.realm) {
                    continue;
                }
                let (_, record) = self
                    .apply(held.outcome, held.error_description.as_deref(), process)
                    .await?;
                tracing::info!(process_id = %record.process_id, client_id = %record.client_id, "held completion applied at the exchange");
                return Ok(Some(record));
            }
        }
        Ok(None)
    }
}

pub struct Completions {
    pub verdicts: Verdicts,
    /// `DTR_WEBHOOK_SECRET`, decoded; `None` refuses every completion.
    pub secret: Option<Vec<u8>>,
    /// `DTR_COMPLETION_HOLD`: how long an outcome waits for its process.
    pub hold: Duration,
}

impl Completions {
    /// `POST /v1/completions`.
    pub async fn handle(&self, headers: &HeaderMap, body: &[u8]) -> Response<Body> {
        let metrics = &self.verdicts.metrics;
        let records = &self.verdicts.records;
        let Some(secret) = self.secret.as_deref() else {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_configured",
                "DTR_WEBHOOK_SECRET is not set.",
            );
        };
        let webhook_id = match verify(secret, headers, body, now_ms() / 1000) {
            Ok(id) => id,
            Err(e) => {
                metrics.request("completion", "bad_signature");
                tracing::warn!(reason = %e, "completion webhook rejected");
                return problem(StatusCode::UNAUTHORIZED, "invalid_signature", &e.to_string());
            }
        };
        let completion: Completion = match serde_json::from_slice(body) {
            Ok(completion) => completion,
            Err(e) => {
                metrics.request("completion", "bad_body");
                return problem(StatusCode::BAD_REQUEST, "invalid_body", &e.to_string());
            }
        };
        let selectors = [&completion.process_id, &completion.sub, &completion.sid]
            .iter()
            .filter(|s| s.is_some())
            .count();
        if selectors != 1 {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "Name exactly one of process_id, sub, sid.",
            );
        }
        if matches!(completion.outcome, Verdict::Approved) && completion.error_description.is_some() {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "error_description goes with denied or pending.",
            );
        }

        match records.webhook_answer(&webhook_id).await {
            Ok(Some(previous)) => {
                // Same delivery again (a sender's retry): same answer, no second effect.
                metrics.request("completion", "duplicate");
                let mut reply: serde_json::Value = serde_json::from_slice(&previous).unwrap_or_else(|_| json!({}));
                reply["duplicate"] = json!(true);
                return json_no_store(StatusCode::OK, &reply);
            }
            Ok(None) => {}
            Err(e) => return store_problem(e),
        }

        let found = match self.find(&completion).await {
            Ok(found) => found,
            Err(e) => return store_problem(e),
        };
        let clients: std::collections::BTreeSet<&str> = found.iter().map(|p| p.record.client_id.as_str()).collect();
        if clients.len() > 1 && completion.client_id.is_none() && !completion.all_clients {
            metrics.request("completion", "ambiguous");
            return problem(
                StatusCode::CONFLICT,
                "ambiguous",
                "Processes of several clients match; name client_id, or set all_clients.",
            );
        }
        if found.is_empty() {
            return self.hold_or_refuse(&completion, &webhook_id).await;
        }
        let mut changed = Vec::new();
        let mut unchanged = Vec::new();
        for process in found {
            match self
                .verdicts
                .apply(completion.outcome, completion.error_description.as_deref(), process)
                .await
            {
                Ok((true, record)) => {
                    changed.push(json!({"process_id": record.process_id, "status": record.status.name()}))
                }
                Ok((false, record)) => {
                    unchanged.push(json!({"process_id": record.process_id, "status": record.status.name()}))
                }
                Err(e) => return store_problem(e),
            }
        }
        let reply = json!({ "changed": changed, "unchanged": unchanged });
        self.remember(&webhook_id, &reply).await;
        metrics.request("completion", "ok");
        json_no_store(StatusCode::OK, &reply)
    }

    /// No process matches yet. A final outcome by `sub`/`sid` for a named client (or for any
    /// client, when asked) waits for the exchange; everything else is `404`.
    async fn hold_or_refuse(&self, completion: &Completion, webhook_id: &str) -> Response<Body> {
        let metrics = &self.verdicts.metrics;
        let selector = match (&completion.sub, &completion.sid) {
            (Some(sub), _) => Some(("sub", sub)),
            (None, Some(sid)) => Some(("sid", sid)),
            _ => None,
        };
        let holdable = completion.outcome != Verdict::Pending
            && (completion.client_id.is_some() || completion.all_clients)
            && !self.hold.is_zero();
        let Some((kind, value)) = selector.filter(|_| holdable) else {
            metrics.request("completion", "not_found");
            let description = if selector.is_some() && completion.outcome != Verdict::Pending {
                "No deferred process matches. Name client_id to have the outcome held until the RP's exchange."
            } else {
                "No deferred process matches."
            };
            return problem(StatusCode::NOT_FOUND, "not_found", description);
        };
        let held = HeldOutcome {
            outcome: completion.outcome,
            error_description: completion.error_description.clone(),
            realm: completion.realm.clone(),
        };
        let bytes = serde_json::to_vec(&held).unwrap_or_default();
        if let Err(e) = self
            .verdicts
            .records
            .hold_outcome(kind, value, completion.client_id.as_deref(), &bytes, self.hold)
            .await
        {
            return store_problem(e);
        }
        let reply = json!({ "changed": [], "unchanged": [], "held": true, "hold_seconds": self.hold.as_secs() });
        self.remember(webhook_id, &reply).await;
        metrics.request("completion", "held");
        json_no_store(StatusCode::ACCEPTED, &reply)
    }

    async fn remember(&self, webhook_id: &str, reply: &serde_json::Value) {
        if let Err(e) = self
            .verdicts
            .records
            .remember_webhook(webhook_id, reply.to_string().as_bytes(), REMEMBER_IDS)
            .await
        {
            tracing::warn!(error = %e, "could not remember a webhook id");
        }
    }

    async fn find(&self, completion: &Completion) -> Result<Vec<StoredProcess>, StoreError> {
        let processes = &self.verdicts.records;
        let mut found = if let Some(process_id) = &completion.process_id {
            processes.find_by_process_id(process_id).await?.into_iter().collect()
        } else if let Some(sub) = &completion.sub {
            processes.find_by_subject(sub).await?
        } else if let Some(sid) = &completion.sid {
            processes.find_by_session(sid).await?
        } else {
            Vec::new()
        };
        found.retain(|l| {
            completion.client_id.as_ref().is_none_or(|c| *c == l.record.client_id)
                && completion.realm.as_ref().is_none_or(|r| *r == l.record.realm)
        });
        // By subject or session, a finished process is history: only open ones are addressed.
        if completion.process_id.is_none() {
            found.retain(|l| l.record.status.is_open());
        }
        Ok(found)
    }
}
