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
    /// Progress only: updates the description pending polls see, and sets or clears the
    /// `interaction_uri` where the end-user must act.
    Pending,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Completion {
    outcome: Verdict,
    #[serde(default)]
    error_description: Option<String>,
    /// With `pending` only: the verification waits for the end-user to act at this URL
    /// (absolute https, no fragment); a later progress update without it, or the outcome,
    /// clears it.
    #[serde(default)]
    interaction_uri: Option<String>,
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

/// Longest `interaction_uri` taken, in bytes: the OpenID profile carries it inside an
/// `error_description`, which is at most [`crate::protocol::errors::MAX_DESCRIPTION`].
pub const MAX_INTERACTION_URI: usize = 480;

/// Checks an `interaction_uri` from the verification service as IETF §6.4 wants it: an
/// absolute `https` URL without a fragment. It is passed to clients as given, so it must be
/// plain RFC 3986 characters already (no spaces, quotes, backslashes or non-ASCII), carry no
/// user information, and fit [`MAX_INTERACTION_URI`].
pub fn check_interaction_uri(uri: &str) -> Result<(), &'static str> {
    if uri.is_empty() || uri.len() > MAX_INTERACTION_URI {
        return Err("interaction_uri must be 1 to 480 characters.");
    }
    let rfc3986 = |c: char| c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c);
    if !uri.chars().all(rfc3986) {
        return Err("interaction_uri must be a URL of RFC 3986 characters (percent-encode the rest).");
    }
    let Ok(url) = url::Url::parse(uri) else {
        return Err("interaction_uri must be an absolute URL.");
    };
    // The URL parser is lenient with special schemes (`https:host`, `https:///host`); the text
    // handed to clients must be the plain form.
    let plain_https = uri.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("https://")) && !uri[8..].starts_with('/');
    if url.scheme() != "https" || !plain_https || url.host_str().is_none_or(str::is_empty) {
        return Err("interaction_uri must be an https URL with a host.");
    }
    if uri.contains('#') {
        return Err("interaction_uri must not have a fragment.");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("interaction_uri must not carry user information.");
    }
    Ok(())
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
    /// `interaction_uri` goes with `Pending` only; any update without it clears it.
    pub async fn apply(
        &self,
        outcome: Verdict,
        description: Option<&str>,
        interaction_uri: Option<&str>,
        process: StoredProcess,
    ) -> Result<(bool, ProcessRecord), StoreError> {
        let process_hash = process.process_hash.clone();
        let now = now_ms();
        let interaction = interaction_uri
            .filter(|_| outcome == Verdict::Pending)
            .map(|uri| self.records.seal_interaction(uri, &process_hash));
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
                r.interaction = interaction.clone();
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
                    .apply(held.outcome, held.error_description.as_deref(), None, process)
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
        if let Some(uri) = &completion.interaction_uri {
            if completion.outcome != Verdict::Pending {
                metrics.request("completion", "bad_body");
                return problem(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "interaction_uri goes with pending only; the outcome clears it.",
                );
            }
            if let Err(why) = check_interaction_uri(uri) {
                metrics.request("completion", "bad_body");
                return problem(StatusCode::BAD_REQUEST, "invalid_body", why);
            }
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
                .apply(
                    completion.outcome,
                    completion.error_description.as_deref(),
                    completion.interaction_uri.as_deref(),
                    process,
                )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interaction_uri_is_a_plain_absolute_https_url_without_a_fragment() {
        for good in [
            "https://idv.example/slot",
            "https://idv.example:8443/s/AbC-123_~.?t=x%20y&u=1",
            "HTTPS://idv.example/",
            "https://[2001:db8::1]/upload",
        ] {
            assert_eq!(check_interaction_uri(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "http://idv.example/slot",
            "/slot",
            "idv.example/slot",
            "https:idv.example/slot",
            "https:/idv.example/slot",
            "https:///slot",
            "https://idv.example/slot#step2",
            "https://idv.example/slot#",
            "https://user:pw@idv.example/slot",
            "https://user@idv.example/slot",
            "https://idv.example/a b",
            "https://idv.example/\"q\"",
            "https://idv.example\\slot",
            "https://idv.example/\u{e4}",
            "https://idv.example/<script>",
            "javascript:alert(1)",
            "data:text/html,hi",
        ] {
            assert!(check_interaction_uri(bad).is_err(), "{bad:?} was taken");
        }
        let long = format!("https://idv.example/{}", "a".repeat(MAX_INTERACTION_URI));
        assert!(check_interaction_uri(&long).is_err());
        assert!(check_interaction_uri(&long[..MAX_INTERACTION_URI]).is_ok());
    }
}
