//! The token endpoint's deferred grant: the deferred code exchange (step 3) and polling
//! (step 6). Every other grant passes through to the OP untouched.

use std::net::IpAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::errors::OAuthError;
use super::params::{encode, Params};
use super::routes::Endpoint;
use super::state::{
    code_key, Change, CodeRecord, HeldSecrets, Loaded, ProcessRecord, Status, ACTIVE_QUEUE, PING_QUEUE,
};
use super::wire::{self, error as code};
use crate::app::App;
use crate::client_auth::{AuthMethod, ClientCredentials, AUTH_PARAMS};
use crate::config::ClientSettings;
use crate::crypto::{equal_constant_time, random_token};
use crate::dpop::ValidProof;
use crate::events::{emit, Event};
use crate::http::{json_no_store, now_ms, Body};
use crate::upstream::BufferedReply;

/// `slow_down` adds this much to the interval (RFC 8628 §3.5, the draft: "at least 5 seconds").
const SLOW_DOWN_STEP: u64 = 5;
/// Consecutive too-fast polls after which the id is revoked (`invalid_request`).
const MAX_STRIKES: u32 = 10;
/// A delivery claimed this long ago by a replica that never finished is up for grabs again.
const STALE_DELIVERY_MS: u64 = 60_000;

use crate::dpop::{DPOP, DPOP_NONCE};

/// Headers of the RP's request that travel with it to the OP: its own client authentication,
/// its DPoP proof (so a DPoP-capable OP binds the tokens to the RP's key), and its
/// `X-Forwarded-For` chain (kept only when the peer is a trusted proxy, like pass-through).
fn forwarded_headers(headers: &HeaderMap) -> HeaderMap {
    static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
    let mut out = HeaderMap::new();
    for name in [&header::AUTHORIZATION, &DPOP] {
        if let Some(value) = headers.get(name) {
            out.insert(name.clone(), value.clone());
        }
    }
    for value in headers.get_all(&X_FORWARDED_FOR) {
        out.append(X_FORWARDED_FOR.clone(), value.clone());
    }
    out
}

/// Handles a token request with the deferred grant.
pub async fn deferred_grant(
    app: &App,
    realm: &str,
    headers: &HeaderMap,
    params: &Params,
    peer: IpAddr,
) -> Response<Body> {
    let (route, result) = match (params.get(wire::DEFERRED_CODE), params.get(wire::DEFERRED_AUTH_ID)) {
        (Some(_), Some(_)) => (
            "token_exchange",
            Err(OAuthError::invalid_request(
                "Send either deferred_code or deferred_auth_id, not both.",
            )),
        ),
        (Some(deferred_code), None) => (
            "token_exchange",
            exchange(app, realm, headers, params, deferred_code, peer).await,
        ),
        (None, Some(deferred_auth_id)) => (
            "token_poll",
            poll(app, realm, headers, params, deferred_auth_id, peer).await,
        ),
        (None, None) => (
            "token_exchange",
            Err(OAuthError::invalid_request(
                "The deferred grant needs deferred_code or deferred_auth_id.",
            )),
        ),
    };
    let mut response = match result {
        Ok(response) => {
            app.metrics.request(route, "ok");
            response
        }
        Err(e) => {
            app.metrics.request(route, e.fault.label());
            if route == "token_poll" {
                app.metrics.poll(e.error);
            }
            e.into_response()
        }
    };
    offer_dpop_nonce(app, &mut response);
    response
}

/// With server nonces on, every DTR answer carries the current nonce (RFC 9449 §8.2), so
/// clients never need an extra round trip to learn a new one.
pub fn offer_dpop_nonce(app: &App, response: &mut Response<Body>) {
    if let Some(nonces) = &app.dpop_nonces {
        if let Ok(value) = HeaderValue::from_str(&nonces.current(now_ms() / 1000)) {
            response.headers_mut().entry(DPOP_NONCE.clone()).or_insert(value);
        }
    }
}

#[derive(Deserialize, Default)]
struct IdTokenClaims {
    sub: Option<String>,
    sid: Option<String>,
    nonce: Option<String>,
}

/// Claims of an ID token the OP just handed us over the back channel; its signature is the
/// RP's to check, ours only to read who it is about.
fn id_token_claims(id_token: Option<&str>) -> IdTokenClaims {
    id_token
        .and_then(|t| jsonwebtoken::dangerous::insecure_decode::<IdTokenClaims>(t).ok())
        .map(|data| data.claims)
        .unwrap_or_default()
}

/// Passes the OP's answer on to the RP: status, JSON body, and the headers that matter to it.
fn relay(reply: &BufferedReply) -> Response<Body> {
    let mut response = Response::new(crate::http::full(reply.body.clone()));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    for name in [&header::CONTENT_TYPE, &header::WWW_AUTHENTICATE, &DPOP_NONCE] {
        for value in reply.headers.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::CACHE_CONTROL, crate::http::NO_STORE);
    headers.insert(header::PRAGMA, crate::http::NO_CACHE);
    response
}

fn reply_error(reply: &BufferedReply) -> Option<String> {
    reply.json()?.get("error")?.as_str().map(str::to_owned)
}

/// OP errors that say nothing about the grant itself: the request may be retried as is or
/// with corrected credentials, so nothing is consumed.
fn is_request_error(error: Option<&str>) -> bool {
    matches!(
        error,
        Some("invalid_client" | "unauthorized_client" | "invalid_request" | "invalid_dpop_proof" | "use_dpop_nonce")
    )
}

const UNKNOWN_CODE: &str = "The deferred_code is invalid, expired, or was issued to another client.";

async fn exchange(
    app: &App,
    realm: &str,
    headers: &HeaderMap,
    params: &Params,
    deferred_code: &str,
    peer: IpAddr,
) -> Result<Response<Body>, OAuthError> {
    let credentials = ClientCredentials::extract(headers, params)?;
    let client = app.deferred_client(realm, &credentials.client_id)?;
    // Checked before the code is consumed, so a bad request costs the RP nothing.
    credentials.authenticate(app, realm, client, None).await?;
    let proof = app.dpop_proof(headers, Endpoint::Token, realm).await?;
    if proof.is_none() && credentials.method == AuthMethod::None {
        return Err(dpop_error(
            "Public clients must bind the deferred authentication to a key: send a DPoP proof.",
        ));
    }
    if proof.is_none() && app.requires_dpop(client) {
        return Err(dpop_error("This server requires a DPoP proof."));
    }
    let store = app.store();
    let key = store.key(&code_key(&app.config.hash_key.hash("deferred_code", deferred_code)));
    let raw = store
        .take(&key)
        .await?
        .ok_or_else(|| OAuthError::invalid_grant(UNKNOWN_CODE))?;
    let record: CodeRecord =
        serde_json::from_slice(&raw).map_err(|_| OAuthError::internal("Unreadable deferred code record."))?;
    // Taken and burnt even when presented by the wrong client (RFC 6749 §10.5 spirit).
    if record.client_id != credentials.client_id || record.realm != realm {
        return Err(OAuthError::invalid_grant(UNKNOWN_CODE));
    }
    if params.get("redirect_uri").is_some_and(|uri| uri != record.redirect_uri) {
        return Err(OAuthError::invalid_grant(
            "redirect_uri does not match the authorization request.",
        ));
    }
    let upstream_code = app
        .config
        .sealer
        .open(&record.upstream_code, &key)
        .map_err(|e| OAuthError::internal(format!("Cannot open the deferred code record: {e}")))?;
    let upstream_code = String::from_utf8(upstream_code).map_err(|_| OAuthError::internal("Corrupt code record."))?;

    // Put the code back when the OP certainly did not redeem it, so a retry can succeed.
    let restore = || async {
        let left = (record.issued_at + app.config.deferred_code_ttl.as_millis() as u64).saturating_sub(now_ms());
        if left > 0 {
            if let Err(e) = store.put_new(&key, &raw, Duration::from_millis(left)).await {
                tracing::warn!(error = %e, "could not restore a deferred code after an OP failure");
            }
        }
    };

    let skip = [
        "grant_type",
        wire::DEFERRED_CODE,
        wire::DEFERRED_NOTIFICATION_TOKEN,
        "redirect_uri",
    ];
    let form = encode(
        [
            ("grant_type", "authorization_code"),
            ("code", upstream_code.as_str()),
            ("redirect_uri", record.redirect_uri.as_str()),
        ]
        .into_iter()
        .chain(params.iter().filter(|(name, _)| !skip.contains(name))),
    );
    let token_path = app.routes.path(Endpoint::Token, realm);
    let reply = match app
        .upstream
        .post_form(&token_path, form, &forwarded_headers(headers), peer, "exchange")
        .await
    {
        Ok(reply) => reply,
        Err(e) => {
            restore().await;
            return Err(OAuthError::upstream(&e));
        }
    };
    if reply.status.is_server_error() {
        restore().await;
        return Err(OAuthError::upstream(&crate::upstream::UpstreamError::Failed(format!(
            "token endpoint answered {}",
            reply.status
        ))));
    }
    if !reply.status.is_success() {
        let error = reply_error(&reply);
        if is_request_error(error.as_deref()) {
            restore().await;
        }
        tracing::info!(client_id = %credentials.client_id, status = %reply.status, error = error.as_deref().unwrap_or(""), "OP refused the code exchange");
        return Ok(relay(&reply));
    }
    let tokens = reply
        .json()
        .ok_or_else(|| OAuthError::internal("The OP answered the code exchange with invalid JSON."))?;
    let Some(refresh_token) = tokens.get("refresh_token").and_then(|v| v.as_str()) else {
        tracing::error!(client_id = %credentials.client_id, "OP issued no refresh token; the process cannot be completed later");
        return Err(OAuthError::new(
            StatusCode::BAD_GATEWAY,
            code::SERVER_ERROR,
            "The OpenID Provider issued no refresh token; enable offline_access (or refresh tokens) for this client.",
        ));
    };
    let id_token = tokens.get("id_token").and_then(|v| v.as_str());
    let claims = id_token_claims(id_token);

    let now = now_ms();
    let interval = client.interval.unwrap_or(app.config.default_interval);
    let expires_in = client.expires_in.unwrap_or(app.config.default_expires_in);
    let deferred_auth_id = random_token(32);
    let process_hash = app.processes.process_hash(&deferred_auth_id);
    let secrets = HeldSecrets {
        deferred_auth_id: deferred_auth_id.clone(),
        refresh_token: refresh_token.to_owned(),
        notification_token: params.get(wire::DEFERRED_NOTIFICATION_TOKEN).map(str::to_owned),
    };
    let record = ProcessRecord {
        process_id: random_token(16),
        realm: realm.to_owned(),
        client_id: credentials.client_id.clone(),
        client: credentials.binding(&app.config.hash_key),
        jkt: proof.map(|p| p.jkt),
        status: Status::Pending,
        description: None,
        interval,
        strikes: 0,
        created_at: now,
        expires_at: now + expires_in * 1000,
        completed_at: None,
        delivering_since: None,
        sub: claims.sub,
        sid: claims.sid,
        nonce: record.nonce.clone(),
        ping_attempts: 0,
        sealed: app.processes.seal(&secrets, &process_hash),
    };
    app.processes.create(&process_hash, &record).await?;
    emit(&app.metrics, Event::Started, &record);

    let mut body = json!({
        wire::DEFERRED_AUTH_ID: deferred_auth_id,
        "expires_in": expires_in,
        "interval": interval,
    });
    if let (true, Some(id_token)) = (app.config.interim_id_token, id_token) {
        body[wire::INTERIM_ID_TOKEN] = json!(id_token);
    }
    Ok(json_no_store(StatusCode::OK, &body))
}

fn dpop_error(description: &'static str) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, code::INVALID_DPOP_PROOF, description)
}

/// Checks shared by polls and cancels: the id belongs to this client (in this realm), the
/// client proves it is that client (locally, no OP call), and a DPoP-bound process gets a
/// proof — by the bound key for public clients and wherever DPoP is required. Unknown and
/// foreign ids answer alike.
pub async fn check_owner(
    app: &App,
    realm: &str,
    client: &ClientSettings,
    credentials: &ClientCredentials,
    record: &ProcessRecord,
    proof: Option<&ValidProof>,
) -> Result<(), OAuthError> {
    if record.client_id != credentials.client_id || record.realm != realm {
        return Err(OAuthError::unknown_deferred_auth_id());
    }
    credentials
        .authenticate(app, realm, client, Some(&record.client))
        .await?;
    let same_key = record.client.method == AuthMethod::None || app.requires_dpop(client);
    match (&record.jkt, proof) {
        (Some(_), None) => Err(dpop_error(
            "This deferred_auth_id is bound to a DPoP key; send a DPoP proof.",
        )),
        (Some(bound), Some(proof)) if same_key && !equal_constant_time(bound, &proof.jkt) => Err(dpop_error(
            "The DPoP proof is not signed by the key this deferred_auth_id is bound to.",
        )),
        (None, None) if app.requires_dpop(client) => Err(dpop_error("This server requires a DPoP proof.")),
        _ => Ok(()),
    }
}

async fn poll(
    app: &App,
    realm: &str,
    headers: &HeaderMap,
    params: &Params,
    deferred_auth_id: &str,
    peer: IpAddr,
) -> Result<Response<Body>, OAuthError> {
    let credentials = ClientCredentials::extract(headers, params)?;
    let client = app.deferred_client(realm, &credentials.client_id)?;
    let proof = app.dpop_proof(headers, Endpoint::Token, realm).await?;
    let process_hash = app.processes.process_hash(deferred_auth_id);
    let now = now_ms();
    let (loaded, last_poll) = app.processes.load_for_poll(&process_hash).await?;
    let loaded = loaded.ok_or_else(OAuthError::unknown_deferred_auth_id)?;
    let record = &loaded.record;
    check_owner(app, realm, client, &credentials, record, proof.as_ref()).await?;
    app.processes.stamp_poll(&process_hash, now);
    if record.status == Status::Revoked {
        return Err(OAuthError::invalid_request(
            "This deferred_auth_id was revoked for polling too fast.",
        ));
    }
    if record.status == Status::Delivered {
        return Err(OAuthError::unknown_deferred_auth_id());
    }
    if now >= record.expires_at {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            code::EXPIRED_TOKEN,
            "The deferred_auth_id has expired; start a new authentication.",
        ));
    }
    let interval_ms = record.interval * 1000;
    // Requests spaced exactly `interval` apart arrive with jitter; allow a little.
    let slack = (interval_ms / 5).min(1000);
    if let Some(last) = last_poll {
        if now.saturating_sub(last) + slack < interval_ms {
            return Err(slow_down(app, &loaded).await?);
        }
    }
    if record.strikes > 0 {
        app.processes
            .modify(&loaded.process_hash, None, |r| {
                r.strikes = 0;
                Change::Write(())
            })
            .await?;
    }
    match record.status {
        Status::Approved => deliver(app, realm, headers, params, loaded, peer).await,
        Status::Delivering
            if record
                .delivering_since
                .is_some_and(|t| now.saturating_sub(t) > STALE_DELIVERY_MS) =>
        {
            deliver(app, realm, headers, params, loaded, peer).await
        }
        status => Err(status_error(record, status)),
    }
}

/// The answer for a process that has no tokens to give (yet).
fn status_error(record: &ProcessRecord, status: Status) -> OAuthError {
    match status {
        Status::Pending => OAuthError::new(
            StatusCode::BAD_REQUEST,
            code::AUTHORIZATION_PENDING,
            record
                .description
                .clone()
                .unwrap_or_else(|| "The identity verification is still in progress.".into()),
        ),
        Status::Delivering => OAuthError::new(
            StatusCode::BAD_REQUEST,
            code::AUTHORIZATION_PENDING,
            "The tokens are being issued to a concurrent request for this deferred_auth_id.",
        ),
        Status::Denied => OAuthError::new(
            StatusCode::BAD_REQUEST,
            code::ACCESS_DENIED,
            record
                .description
                .clone()
                .unwrap_or_else(|| "The identity could not be verified.".into()),
        ),
        Status::Cancelled => OAuthError::new(
            StatusCode::BAD_REQUEST,
            code::ACCESS_DENIED,
            "The authentication process was cancelled.",
        ),
        Status::Revoked => OAuthError::invalid_request("This deferred_auth_id was revoked for polling too fast."),
        Status::Approved | Status::Delivered => OAuthError::unknown_deferred_auth_id(),
    }
}

async fn slow_down(app: &App, loaded: &Loaded) -> Result<OAuthError, OAuthError> {
    let outcome = app
        .processes
        .modify(&loaded.process_hash, None, |r| {
            r.strikes += 1;
            if r.strikes >= MAX_STRIKES && r.status.is_open() {
                r.status = Status::Revoked;
                r.completed_at = Some(now_ms());
            } else {
                r.interval += SLOW_DOWN_STEP;
            }
            Change::Write(())
        })
        .await?;
    Ok(match outcome {
        Some((_, record)) if record.status == Status::Revoked => {
            tracing::warn!(process_id = %record.process_id, client_id = %record.client_id, "deferred_auth_id revoked after sustained fast polling");
            OAuthError::invalid_request("This deferred_auth_id was revoked for polling too fast.")
        }
        Some((_, record)) => OAuthError::new(
            StatusCode::BAD_REQUEST,
            code::SLOW_DOWN,
            format!(
                "Polling too fast; wait at least {} seconds between requests.",
                record.interval
            ),
        ),
        None => OAuthError::unknown_deferred_auth_id(),
    })
}

/// Obtains the final tokens for an approved process. Exactly one concurrent poll wins the
/// claim; the OP is asked by refresh at this moment, so the tokens are fresh and carry the
/// claims of the finished verification.
async fn deliver(
    app: &App,
    realm: &str,
    headers: &HeaderMap,
    params: &Params,
    loaded: Loaded,
    peer: IpAddr,
) -> Result<Response<Body>, OAuthError> {
    let process_hash = loaded.process_hash.clone();
    let now = now_ms();
    let claimed = app
        .processes
        .modify(&process_hash, Some(loaded), |r| {
            let stale = r
                .delivering_since
                .is_some_and(|t| now.saturating_sub(t) > STALE_DELIVERY_MS);
            if r.status == Status::Approved || (r.status == Status::Delivering && stale) {
                r.status = Status::Delivering;
                r.delivering_since = Some(now);
                Change::Write(true)
            } else {
                Change::Keep(false)
            }
        })
        .await?;
    let record = match claimed {
        Some((true, record)) => record,
        Some((false, record)) => return Err(status_error(&record, record.status)),
        None => return Err(OAuthError::unknown_deferred_auth_id()),
    };
    let secrets = app
        .processes
        .open(&Loaded::detached(&process_hash, record.clone()))
        .map_err(|e| {
            tracing::error!(process_id = %record.process_id, error = %e, "cannot open held tokens (key rotated away?)");
            OAuthError::internal("The held grant cannot be read.")
        });
    let secrets = match secrets {
        Ok(secrets) => secrets,
        Err(e) => {
            release(app, &process_hash).await;
            return Err(e);
        }
    };

    let auth = params.iter().filter(|(name, _)| AUTH_PARAMS.contains(name));
    let form = encode(
        [
            ("grant_type", "refresh_token"),
            ("refresh_token", secrets.refresh_token.as_str()),
        ]
        .into_iter()
        .chain(auth),
    );
    let token_path = app.routes.path(Endpoint::Token, realm);
    let reply = match app
        .upstream
        .post_form(&token_path, form, &forwarded_headers(headers), peer, "refresh")
        .await
    {
        Ok(reply) if !reply.status.is_server_error() => reply,
        Ok(reply) => {
            release(app, &process_hash).await;
            return Err(OAuthError::upstream(&crate::upstream::UpstreamError::Failed(format!(
                "token endpoint answered {}",
                reply.status
            ))));
        }
        Err(e) => {
            release(app, &process_hash).await;
            return Err(OAuthError::upstream(&e));
        }
    };

    if !reply.status.is_success() {
        let error = reply_error(&reply);
        if is_request_error(error.as_deref()) {
            // The client's fault (credentials, DPoP): the grant is intact, let it retry.
            release(app, &process_hash).await;
            return Ok(relay(&reply));
        }
        // The OP no longer honours the held grant (revoked, expired, user disabled).
        let description = "The OpenID Provider no longer honours this authentication; start a new one.";
        let finished = app
            .processes
            .modify(&process_hash, None, |r| {
                r.status = Status::Denied;
                r.description = Some(description.into());
                r.completed_at = Some(now_ms());
                r.sealed.clear();
                Change::Write(())
            })
            .await?;
        tracing::warn!(process_id = %record.process_id, error = error.as_deref().unwrap_or(""), "OP refused the held grant");
        if let Some((_, record)) = finished {
            emit(&app.metrics, Event::Denied, &record);
        }
        let _ = app
            .store()
            .unschedule(&app.store().key(ACTIVE_QUEUE), &process_hash)
            .await;
        app.metrics.poll(code::ACCESS_DENIED);
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            code::ACCESS_DENIED,
            description,
        ));
    }

    if let Some(expected) = &record.nonce {
        let claims = id_token_claims(reply.json().as_ref().and_then(|t| t.get("id_token")?.as_str()));
        if claims.nonce.as_deref() != Some(expected) {
            // Keycloak ≥ 25 drops nonce from refreshed ID tokens unless the client has the
            // "Nonce backwards compatible" mapper.
            tracing::warn!(client_id = %record.client_id, "final ID token lacks the requested nonce; enable Keycloak's \"Nonce backwards compatible\" mapper for this client");
        }
    }
    let delivered = app
        .processes
        .modify(&process_hash, None, |r| {
            r.status = Status::Delivered;
            r.completed_at = Some(now_ms());
            r.delivering_since = None;
            r.sealed.clear();
            Change::Write(())
        })
        .await;
    match delivered {
        Ok(Some((_, record))) => emit(&app.metrics, Event::Delivered, &record),
        Ok(None) => {}
        // The tokens are issued and the OP has rotated the refresh token: hand them over even
        // if we cannot note it; a retry would fail at the OP anyway.
        Err(e) => tracing::warn!(error = %e, "could not mark the process delivered"),
    }
    let store = app.store();
    let _ = store.unschedule(&store.key(ACTIVE_QUEUE), &process_hash).await;
    let _ = store.unschedule(&store.key(PING_QUEUE), &process_hash).await;
    app.metrics.poll("delivered");
    Ok(relay(&reply))
}

/// Gives a claimed delivery back (the OP failed): the next poll may try again.
async fn release(app: &App, process_hash: &str) {
    let released = app
        .processes
        .modify(process_hash, None, |r| {
            if r.status == Status::Delivering {
                r.status = Status::Approved;
                r.delivering_since = None;
                Change::Write(())
            } else {
                Change::Keep(())
            }
        })
        .await;
    if let Err(e) = released {
        tracing::warn!(error = %e, "could not release a delivery claim; it frees itself after a minute");
    }
}

/// A header value for `Retry-After`-style integers.
pub fn seconds_header(seconds: u64) -> HeaderValue {
    HeaderValue::from(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_credentials_proof_and_client_chain_travel_to_the_op() {
        let mut incoming = HeaderMap::new();
        incoming.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic YTpi"));
        incoming.insert(DPOP.clone(), HeaderValue::from_static("proof"));
        incoming.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        incoming.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        incoming.insert(header::COOKIE, HeaderValue::from_static("kc=secret"));
        incoming.insert("x-forwarded-host", HeaderValue::from_static("attacker.example"));
        let out = forwarded_headers(&incoming);
        assert_eq!(out.len(), 4);
        assert_eq!(out.get_all("x-forwarded-for").iter().count(), 2);
        assert!(out.get(header::COOKIE).is_none() && out.get("x-forwarded-host").is_none());
    }
}
