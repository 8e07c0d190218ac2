//! The authentication cancellation endpoint (step 7). Always 200 for a well-formed,
//! authenticated request, whether or not the id was known (like RFC 7009 §2.2), so it is no
//! oracle; a cancelled process answers later polls with `access_denied` and sends no ping.

use std::net::IpAddr;

use http::header::HeaderMap;
use http::{Response, StatusCode};
use serde_json::json;

use super::errors::OAuthError;
use super::params::Params;
use super::routes::Endpoint;
use super::state::{Change, Status, ACTIVE_QUEUE, PING_QUEUE};
use super::token::{check_owner, offer_dpop_nonce};
use super::wire;
use crate::app::App;
use crate::client_auth::ClientCredentials;
use crate::events::{emit, Event};
use crate::http::{json_no_store, media_type, now_ms, Body};

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

pub async fn cancel(app: &App, realm: &str, headers: &HeaderMap, params: &Params, _peer: IpAddr) -> Response<Body> {
    let mut response = match run(app, realm, headers, params).await {
        Ok(()) => {
            app.metrics.request("cancel", "ok");
            json_no_store(StatusCode::OK, &json!({}))
        }
        Err(e) => {
            app.metrics.request("cancel", e.fault.label());
            e.into_response()
        }
    };
    offer_dpop_nonce(app, &mut response);
    response
}

async fn run(app: &App, realm: &str, headers: &HeaderMap, params: &Params) -> Result<(), OAuthError> {
    let credentials = ClientCredentials::extract(headers, params)?;
    let client = app.deferred_client(realm, &credentials.client_id)?;
    let proof = app.dpop_proof(headers, Endpoint::Cancellation, realm).await?;
    let deferred_auth_id = params
        .get(wire::DEFERRED_AUTH_ID)
        .ok_or_else(|| OAuthError::invalid_request("deferred_auth_id is required."))?;
    let process_hash = app.processes.process_hash(deferred_auth_id);
    let Some(loaded) = app.processes.load(&process_hash).await? else {
        return Ok(());
    };
    match check_owner(app, realm, client, &credentials, &loaded.record, proof.as_ref()).await {
        Ok(()) => {}
        // Someone else's or an unknown id: nothing to do, and nothing to reveal.
        Err(e) if e.error == wire::error::INVALID_GRANT => return Ok(()),
        Err(e) => return Err(e),
    }
    let now = now_ms();
    let changed = app
        .processes
        .modify(&process_hash, Some(loaded), |r| {
            if matches!(r.status, Status::Pending | Status::Approved) && now < r.expires_at {
                r.status = Status::Cancelled;
                r.completed_at = Some(now);
                r.sealed.clear();
                Change::Write(true)
            } else {
                Change::Keep(false)
            }
        })
        .await?;
    if let Some((true, record)) = changed {
        let store = app.store();
        store.unschedule(&store.key(PING_QUEUE), &process_hash).await?;
        store.unschedule(&store.key(ACTIVE_QUEUE), &process_hash).await?;
        emit(&app.metrics, Event::Cancelled, &record);
    }
    Ok(())
}
