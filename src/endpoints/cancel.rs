//! Cancellation (step 7): the OpenID profile's authentication cancellation endpoint (OID §9)
//! and, for the IETF profile, a deferral code revoked at the revocation endpoint (IETF §8,
//! RFC 7009). Always 200 for a well-formed, authenticated request, whether or not the id was
//! known (RFC 7009 §2.2), so it is no oracle; a cancelled process answers later polls with
//! `access_denied` and sends no ping (IETF §8.2: pending callbacks are suppressed).

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
use crate::config::ClientSettings;
use crate::http::{json_no_store, media_type, Body};
use crate::metrics::Metrics;
use crate::protocol::errors::OAuthError;
use crate::protocol::params::Params;
use crate::protocol::routes::Endpoint;
use crate::protocol::wire;
use crate::protocol::wire::Profile;
use crate::records::{Change, ProcessRecord, Records, Status, StoredProcess};
use crate::tls::ClientCertificate;

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
        record.interaction = None;
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
    /// The cancellation endpoint (OID §9): the OpenID profile's. An IETF-profile client
    /// cancels at the revocation endpoint instead ([`Self::revoke`], IETF §8).
    pub async fn handle(
        &self,
        realm: &str,
        headers: &HeaderMap,
        params: &Params,
        peer: IpAddr,
        certificate: Option<&ClientCertificate>,
    ) -> Result<Response<Body>, OAuthError> {
        let credentials = ClientCredentials::extract(headers, params)?;
        let client = &*self.checks.client(realm, &credentials)?;
        let profile = self.checks.clients.profile(realm, client);
        if profile == Profile::Ietf {
            return Err(OAuthError::invalid_request(
                "Cancel a deferral_code at the revocation endpoint (RFC 7009), with token_type_hint=urn:ietf:params:oauth:token-type:deferral-code.",
            ));
        }
        let name = profile.process_param();
        let deferred_auth_id = params
            .get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("{name} is required.")))?;
        let process_hash = self.records.process_hash(deferred_auth_id);
        if let Some(process) = self.records.load(&process_hash).await? {
            let target = Target {
                credentials: &credentials,
                client,
                endpoint: Endpoint::Cancellation,
                profile,
                certificate,
            };
            self.cancel(realm, headers, params, target, process_hash, process, peer)
                .await?;
        }
        Ok(cancelled())
    }

    /// The revocation endpoint (RFC 7009) for a deferral code (IETF §8.1, §8.2): the process
    /// is cancelled as at the cancellation endpoint, and the answer is 200 whether or not the
    /// code was known, someone else's, spent, cancelled or expired. `Ok(None)`: not a deferral
    /// code of an IETF-profile client, for the OP to answer — a `token_type_hint` naming
    /// another type, a client that is not a DTR client of the IETF profile here, or (without
    /// a hint) a token the proxy does not know.
    pub async fn revoke(
        &self,
        realm: &str,
        headers: &HeaderMap,
        params: &Params,
        peer: IpAddr,
        certificate: Option<&ClientCertificate>,
    ) -> Result<Option<Response<Body>>, OAuthError> {
        let hinted = match params.get("token_type_hint") {
            None => false,
            Some(wire::TOKEN_TYPE_DEFERRAL_CODE) => true,
            Some(_) => return Ok(None),
        };
        let Some(token) = params.get("token") else {
            return Ok(None);
        };
        let Ok(credentials) = ClientCredentials::extract(headers, params) else {
            return Ok(None);
        };
        let Ok(client) = self.checks.client(realm, &credentials) else {
            return Ok(None);
        };
        if self.checks.clients.profile(realm, &client) != Profile::Ietf {
            return Ok(None);
        }
        let process_hash = self.records.process_hash(token);
        let Some(process) = self.records.load(&process_hash).await? else {
            // A deferral code the proxy does not know is revoked already (§8.2, item 2); an
            // unhinted token may be the OP's own.
            return Ok(hinted.then(cancelled));
        };
        let target = Target {
            credentials: &credentials,
            client: &client,
            endpoint: Endpoint::Revocation,
            profile: Profile::Ietf,
            certificate,
        };
        self.cancel(realm, headers, params, target, process_hash, process, peer)
            .await?;
        Ok(Some(cancelled()))
    }

    /// Cancels a process its owner names; someone else's is left alone, without a word.
    #[allow(clippy::too_many_arguments)]
    async fn cancel(
        &self,
        realm: &str,
        headers: &HeaderMap,
        params: &Params,
        target: Target<'_>,
        process_hash: String,
        process: StoredProcess,
        peer: IpAddr,
    ) -> Result<(), OAuthError> {
        let now = now_ms();
        let facts = self
            .checks
            .owner_facts(
                realm,
                target.client,
                target.credentials,
                &process.record,
                headers,
                target.certificate.map(|c| c.thumbprint.as_str()),
                target.endpoint,
                target.profile,
                now,
                false,
            )
            .await;
        match owner_check(&process.record, facts) {
            Ok(_) => {}
            // Someone else's or an unknown id: nothing to do, and nothing to reveal.
            Err(e) if e.error == wire::error::INVALID_GRANT => return Ok(()),
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
        Ok(())
    }
}

/// Who cancels, where, and in which profile's names.
struct Target<'a> {
    credentials: &'a ClientCredentials,
    client: &'a ClientSettings,
    endpoint: Endpoint,
    profile: Profile,
    /// The request's client certificate, for a process bound to one.
    certificate: Option<&'a ClientCertificate>,
}

/// The answer to a cancellation or a revocation, whatever became of the process (RFC 7009
/// §2.2: no oracle).
fn cancelled() -> Response<Body> {
    json_no_store(StatusCode::OK, &json!({}))
}
