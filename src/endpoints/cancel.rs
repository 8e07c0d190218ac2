//! The authentication cancellation endpoint (step 7). Always 200 for a well-formed,
//! authenticated request, whether or not the id was known (like RFC 7009 §2.2), so it is no
//! oracle; a cancelled process answers later polls with `access_denied` and sends no ping.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::HeaderMap;
use http::{Response, StatusCode};
use serde_json::json;

use super::checks::{owner_check, Checks};
use super::events::{Event, Events};
use super::revoke::Revoker;
use crate::client_auth::ClientCredentials;
use crate::clock::now_ms;
use crate::http::{json_no_store, media_type, Body};
use crate::metrics::Metrics;
use crate::protocol::errors::OAuthError;
use crate::protocol::params::Params;
use crate::protocol::routes::Endpoint;
use crate::protocol::wire;
use crate::records::{Change, ProcessRecord, Records, Status};

/// Parses a cancellation body: form-encoded (the draft's rule) or JSON (its example).
pub fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Params, OAuthError> {
    let media = media_type(headers);
    if media.eq_ignore_ascii_case("application/json") {
        Ok(Params::parse_json(body)?)
    } else if media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Ok(Params::parse(body)?)
    } else {
        Err(OAuthError::invalid_request(
            "Send application/x-www-form-urlencoded or application/json.",
        ))
    }
}

/// Whether a process can still be cancelled at `now`; cancelling it drops its held grant.
pub fn cancel_record(record: &mut ProcessRecord, now: u64) -> bool {
    if matches!(record.status, Status::Pending | Status::Approved) && now < record.expires_at {
        record.status = Status::Cancelled;
        record.completed_at = Some(now);
        record.sealed.clear();
        true
    } else {
        false
    }
}

pub struct Cancel {
    pub checks: Checks,
    pub records: Records,
    pub metrics: Metrics,
    pub revoker: Arc<Revoker>,
    pub events: Events,
}

impl Cancel {
    pub async fn handle(
        &self,
        realm: &str,
        headers: &HeaderMap,
        params: &Params,
        peer: IpAddr,
    ) -> Result<Response<Body>, OAuthError> {
        let now = now_ms();
        let credentials = ClientCredentials::extract(headers, params)?;
        let client = self.checks.client(realm, &credentials)?;
        // The process is named in the client's profile: `deferred_auth_id` or `deferral_code`.
        let name = self.checks.clients.profile(realm, client).process_param();
        let deferred_auth_id = params
            .get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("{name} is required.")))?;
        let process_hash = self.records.process_hash(deferred_auth_id);
        let done = || json_no_store(StatusCode::OK, &json!({}));
        let Some(process) = self.records.load(&process_hash).await? else {
            return Ok(done());
        };
        let facts = self
            .checks
            .owner_facts(
                realm,
                client,
                &credentials,
                &process.record,
                headers,
                Endpoint::Cancellation,
                now,
                false,
            )
            .await;
        match owner_check(&process.record, facts) {
            Ok(_) => {}
            // Someone else's or an unknown id: nothing to do, and nothing to reveal.
            Err(e) if e.error == wire::error::INVALID_GRANT => return Ok(done()),
            Err(e) => return Err(e),
        }
        // Read before the cancel drops it: the held grant, to give back.
        let held = self.records.open(&process).ok();
        let changed = self
            .records
            .modify(&process_hash, Some(process), |r| {
                if cancel_record(r, now) {
                    Change::Write(true)
                } else {
                    Change::Keep(false)
                }
            })
            .await?;
        if let Some((true, record)) = changed {
            self.records.unschedule_ping(&process_hash).await?;
            self.records.retire(&process_hash).await?;
            self.events.emit(Event::Cancelled, &record).await;
            if let Some(held) = held {
                let revoker = self.revoker.clone();
                let (realm, headers, params) = (realm.to_owned(), headers.clone(), params.clone());
                tokio::spawn(async move {
                    if !revoker
                        .with_client(&realm, &held.refresh_token, &headers, &params, peer)
                        .await
                    {
                        revoker.as_operator(&record).await;
                    }
                });
            }
        }
        Ok(done())
    }
}
