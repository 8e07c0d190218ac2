//! The deferred code exchange (step 3): the RP trades its `deferred_code` for a
//! `deferred_auth_id`; the proxy redeems the OP's code exactly once and holds the grant.
//!
//! The checks follow the draft (§ Deferred Code Exchange Request Validation): the client,
//! the code (issued to it, valid, unused), then the DPoP proof — a code taken for a request
//! whose proof then fails is put back, as the OP never saw it. Once the OP may have seen the
//! code (any failure but a refused connection), it is never put back: Keycloak treats a
//! second redemption as an attack and drops the session.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::HeaderMap;
use http::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::back_channel::{forwarded_headers, id_token_claims, is_request_error, relay, reply_error};
use super::checks::{dpop_error, Checks};
use super::completion::Verdicts;
use super::events::{Event, Events};
use super::revoke::Revoker;
use crate::client_auth::ClientCredentials;
use crate::clock::now_ms;
use crate::crypto::random_token;
use crate::dpop::ValidProof;
use crate::http::{json_no_store, Body};
use crate::metrics::Metrics;
use crate::protocol::errors::{OAuthError, Source};
use crate::protocol::params::{encode, Params};
use crate::protocol::routes::Endpoint;
use crate::protocol::wire::{self, error as code, Profile};
use crate::records::{AuthMethod, HeldSecrets, ProcessRecord, Records, Status, TakenCode};
use crate::telemetry::Telemetry;
use crate::tls::ClientCertificate;
use crate::upstream::{BufferedReply, OpClient, UpstreamError};

/// The settings the exchange applies to a new process.
#[derive(Debug, Clone)]
pub struct ExchangeSettings {
    pub default_interval: u64,
    pub default_expires_in: u64,
    pub interim_id_token: bool,
    pub deferred_code_ttl: Duration,
    /// `DTR_OFFLINE_ACCESS`: the authorization asked the OP for `offline_access`.
    pub offline_access: bool,
}

pub struct Exchange {
    pub checks: Checks,
    pub records: Records,
    pub op: Arc<dyn OpClient>,
    pub metrics: Metrics,
    pub settings: ExchangeSettings,
    /// Clients (by realm) whose refreshed ID tokens were seen to keep the nonce, on this
    /// replica: each is probed once ([`Exchange::probe_nonce`]).
    pub nonce_verified: Mutex<HashSet<(String, String)>>,
    /// Outcomes that arrived before their process are applied as it is created.
    pub verdicts: Verdicts,
    pub revoker: Arc<Revoker>,
    pub events: Events,
    /// Traces: a process keeps the trace of the exchange that made it.
    pub telemetry: Telemetry,
}

const UNKNOWN_CODE: &str = "The deferred_code is invalid, expired, or was issued to another client.";

/// What the OP's answer to the code redemption means for the process.
#[derive(Debug, PartialEq)]
pub enum Redemption<'a> {
    /// The OP failed (5xx) after receiving the code: it may have redeemed it.
    OpFailed(StatusCode),
    /// The OP refused; relay its answer. `restore` when the refusal was about the request (the
    /// client's credentials or proof), not the code, so a corrected retry can succeed.
    Refused { restore: bool },
    /// Tokens, but no refresh token to complete the process with later.
    NoRefreshToken,
    /// A grant that dies before the process can end: no offline access, or a refresh token
    /// that expires first. Says which.
    OnlineGrant(String),
    /// Unreadable answer.
    Malformed,
    Granted {
        refresh_token: &'a str,
        id_token: Option<&'a str>,
    },
}

/// Reads the OP's answer to the code redemption (`tokens` is its body as JSON), for a process
/// of `lifetime` seconds; `offline_requested` when the authorization asked for
/// `offline_access`.
pub fn redemption<'a>(
    reply: &BufferedReply,
    tokens: Option<&'a Map<String, Value>>,
    offline_requested: bool,
    lifetime: u64,
) -> Redemption<'a> {
    if reply.status.is_server_error() {
        return Redemption::OpFailed(reply.status);
    }
    if !reply.status.is_success() {
        return Redemption::Refused {
            restore: is_request_error(reply_error(reply).as_deref()),
        };
    }
    let Some(tokens) = tokens else {
        return Redemption::Malformed;
    };
    let Some(refresh_token) = tokens.get("refresh_token").and_then(Value::as_str) else {
        return Redemption::NoRefreshToken;
    };
    // Keycloak names the granted scope; an online grant lacks offline_access (the client has
    // no such client scope, or the user lacks the offline_access role).
    let scope = tokens.get("scope").and_then(Value::as_str);
    if offline_requested && scope.is_some_and(|s| !s.split(' ').any(|s| s == "offline_access")) {
        return Redemption::OnlineGrant(
            "The OpenID Provider did not grant offline_access, so the grant would end with the \
             login session, before the verification. Keycloak: add the offline_access client \
             scope to this client and give users the offline_access role."
                .into(),
        );
    }
    // 0 or absent: the refresh token does not expire (Keycloak's offline tokens).
    let refresh_expires_in = tokens.get("refresh_expires_in").and_then(Value::as_u64).unwrap_or(0);
    if refresh_expires_in > 0 && refresh_expires_in < lifetime {
        return Redemption::OnlineGrant(format!(
            "The OpenID Provider's refresh token expires in {refresh_expires_in} s, before the \
             deferred authentication can end ({lifetime} s). Grant offline_access, or shorten \
             expires_in for this client."
        ));
    }
    Redemption::Granted {
        refresh_token,
        id_token: tokens.get("id_token").and_then(Value::as_str),
    }
}

/// The exchange's answer for a new process, in the client's profile.
///
/// - OpenID (§ Successful Deferred Code Exchange Response): 200 with `deferred_auth_id`,
///   `expires_in`, `interval` and, when enabled, the `interim_id_token`.
/// - IETF (the deferred response): 400 `authorization_pending` with `deferral_code`,
///   `expires_in` and `interval`; no tokens, so no interim ID token.
pub fn answer(
    profile: Profile,
    id: &str,
    lifetime: u64,
    interval: u64,
    interim_id_token: Option<&str>,
) -> Response<Body> {
    match profile {
        Profile::OpenId => {
            let mut body = json!({
                wire::DEFERRED_AUTH_ID: id,
                "expires_in": lifetime,
                "interval": interval,
            });
            if let Some(id_token) = interim_id_token {
                body[wire::INTERIM_ID_TOKEN] = json!(id_token);
            }
            json_no_store(StatusCode::OK, &body)
        }
        Profile::Ietf => json_no_store(
            StatusCode::BAD_REQUEST,
            &json!({
                "error": code::AUTHORIZATION_PENDING,
                wire::DEFERRAL_CODE: id,
                "expires_in": lifetime,
                "interval": interval,
            }),
        ),
    }
}

impl Exchange {
    #[allow(clippy::too_many_arguments)]
    pub async fn handle(
        &self,
        realm: &str,
        headers: &HeaderMap,
        params: &Params,
        deferred_code: &str,
        profile: Profile,
        peer: IpAddr,
        certificate: Option<&ClientCertificate>,
    ) -> Result<Response<Body>, OAuthError> {
        let now = now_ms();
        let credentials = ClientCredentials::extract(headers, params)?;
        let client = &*self.checks.client_speaking(realm, &credentials, profile)?;
        // 1. The client. Secrets are checked by the OP at the redemption; assertions here.
        self.checks.authenticate(realm, client, &credentials, None).await?;
        // A client registered for certificate-bound tokens (RFC 8705) binds every process to
        // its certificate: without one, nothing is taken.
        if certificate.is_none() && client.tls_client_certificate_bound_access_tokens {
            return Err(OAuthError::invalid_request(
                "This client must present its TLS client certificate, which the deferred authentication is bound to.",
            ));
        }
        // 2, 3. The code: issued to this client, valid, unused. Taken and burnt even when
        // presented by the wrong client (RFC 6749 §10.5 spirit).
        let taken = self
            .records
            .take_code(deferred_code)
            .await?
            .ok_or_else(|| OAuthError::invalid_grant(UNKNOWN_CODE))?;
        let code_record = &taken.record;
        if code_record.client_id != credentials.client_id || code_record.realm != realm {
            return Err(OAuthError::invalid_grant(UNKNOWN_CODE));
        }
        if params
            .get("redirect_uri")
            .is_some_and(|uri| uri != code_record.redirect_uri)
        {
            return Err(OAuthError::invalid_grant(
                "redirect_uri does not match the authorization request.",
            ));
        }
        // 4. The proof. The OP has not seen the code: a refused proof costs the RP nothing.
        let proof = match self.proof(headers, realm, now, &credentials, client).await {
            Ok(proof) => proof,
            Err(e) => {
                self.restore(&taken).await;
                return Err(e);
            }
        };

        let skip = [
            "grant_type",
            "code",
            wire::DEFERRED_CODE,
            wire::DEFERRED_NOTIFICATION_TOKEN,
            wire::CLIENT_NOTIFICATION_TOKEN,
            wire::COMPLETION_MODE,
            "redirect_uri",
        ];
        let form = encode(
            [
                ("grant_type", "authorization_code"),
                ("code", code_record.upstream_code.as_str()),
                ("redirect_uri", code_record.redirect_uri.as_str()),
            ]
            .into_iter()
            .chain(params.iter().filter(|(name, _)| !skip.contains(name))),
        );
        let token_path = self.checks.urls.routes().path(Endpoint::Token, realm);
        let forwarded = forwarded_headers(headers);
        let reply = match self.op.post_form(&token_path, form, &forwarded, peer, "exchange").await {
            Ok(reply) => reply,
            Err(e) if e.may_have_reached_op() => return Err(code_maybe_spent(e)),
            Err(e) => {
                // Never reached the OP: the same code may be tried again.
                self.restore(&taken).await;
                return Err(OAuthError::upstream(e));
            }
        };
        let lifetime = client.expires_in.unwrap_or(self.settings.default_expires_in);
        let tokens = reply.json();
        let (refresh_token, id_token) = match redemption(
            &reply,
            tokens.as_ref(),
            self.settings.offline_access,
            lifetime,
        ) {
            Redemption::Granted {
                refresh_token,
                id_token,
            } => (refresh_token.to_owned(), id_token),
            Redemption::OpFailed(status) => return Err(code_maybe_spent(UpstreamError::Status(status))),
            Redemption::Refused { restore } => {
                if restore {
                    self.restore(&taken).await;
                }
                tracing::info!(client_id = %credentials.client_id, status = %reply.status, error = reply_error(&reply).as_deref().unwrap_or(""), "OP refused the code exchange");
                return Ok(relay(&reply));
            }
            Redemption::Malformed => {
                return Err(OAuthError::internal(
                    "The OP answered the code exchange with invalid JSON.",
                ))
            }
            Redemption::NoRefreshToken => {
                tracing::error!(client_id = %credentials.client_id, realm, "OP issued no refresh token; the process cannot be completed later");
                return Err(OAuthError::new(
                        StatusCode::BAD_REQUEST,
                        code::INVALID_SCOPE,
                        "The OpenID Provider issued no refresh token; enable offline_access (or refresh tokens) for this client.",
                    ));
            }
            Redemption::OnlineGrant(description) => {
                tracing::error!(client_id = %credentials.client_id, realm, %description, "OP granted no offline access; refusing the exchange");
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    code::INVALID_SCOPE,
                    description,
                ));
            }
        };
        let claims = id_token_claims(id_token);
        let refresh_token = match (&code_record.nonce, &proof, credentials.method) {
            (Some(nonce), None, AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost) => {
                self.probe_nonce(
                    realm,
                    &credentials.client_id,
                    nonce,
                    refresh_token,
                    params,
                    &forwarded,
                    peer,
                )
                .await?
            }
            _ => refresh_token,
        };

        let interval = client.poll_interval(self.settings.default_interval);
        let deferred_auth_id = random_token(32);
        let process_hash = self.records.process_hash(&deferred_auth_id);
        let secrets = HeldSecrets {
            deferred_auth_id: deferred_auth_id.clone(),
            refresh_token,
            // The profile's own name only (IETF §6.3: `client_notification_token`); the
            // other profile's is an unrecognised parameter, ignored (RFC 6749 §3.2).
            notification_token: params.get(profile.notification_token_param()).map(str::to_owned),
        };
        let now = now_ms();
        let record = ProcessRecord {
            process_id: random_token(16),
            realm: realm.to_owned(),
            client_id: credentials.client_id.clone(),
            client: self.checks.verifier.binding(&credentials),
            jkt: proof.map(|p| p.jkt),
            x5t: certificate.map(|c| c.thumbprint.clone()),
            status: Status::Pending,
            description: None,
            interaction: None,
            interval,
            strikes: 0,
            last_strike: None,
            created_at: now,
            expires_at: now + lifetime * 1000,
            completed_at: None,
            delivering_since: None,
            sub: claims.sub,
            sid: claims.sid,
            nonce: code_record.nonce.clone(),
            requested: code_record.requested.clone(),
            ping_attempts: 0,
            release_in_doubt: false,
            trace: self.telemetry.current_traceparent(),
            sealed: self.records.seal(&secrets, &process_hash),
        };
        let created = self.records.create(&process_hash, &record).await?;
        self.events.emit(Event::Started, &record).await;
        // The verification may have finished before this exchange: its outcome was held.
        if let Err(e) = self.verdicts.apply_held(created).await {
            tracing::warn!(error = %e, "could not look up held completions; the verification service must resend");
        }

        Ok(answer(
            profile,
            &deferred_auth_id,
            lifetime,
            interval,
            id_token.filter(|_| self.settings.interim_id_token),
        ))
    }

    /// The request's DPoP proof, and the rules on its absence: public clients must bind the
    /// process to a key, and so must every client where DPoP is required.
    async fn proof(
        &self,
        headers: &HeaderMap,
        realm: &str,
        now: u64,
        credentials: &ClientCredentials,
        client: &crate::config::ClientSettings,
    ) -> Result<Option<ValidProof>, OAuthError> {
        let proof = self.checks.proof(headers, Endpoint::Token, realm, now).await?;
        if proof.is_none() && credentials.method == AuthMethod::None {
            return Err(dpop_error(
                "Public clients must bind the deferred authentication to a key: send a DPoP proof.",
            ));
        }
        if proof.is_none() && self.checks.clients.requires_dpop(client) {
            return Err(dpop_error("This server requires a DPoP proof."));
        }
        Ok(proof)
    }

    /// Keycloak ≥ 25 drops `nonce` from refreshed ID tokens unless the client has the "Nonce
    /// backwards compatible" mapper, and the final ID token is a refreshed one: an RP that
    /// follows OIDC Core would reject it days later. So the first exchange of each client on
    /// this replica refreshes once at once and refuses loudly if the nonce is gone. Only where
    /// the refresh can be made with the same credentials (a client secret, no DPoP proof: an
    /// assertion or a proof is single use); the release checks every other case.
    #[allow(clippy::too_many_arguments)]
    async fn probe_nonce(
        &self,
        realm: &str,
        client_id: &str,
        nonce: &str,
        refresh_token: String,
        params: &Params,
        forwarded: &HeaderMap,
        peer: IpAddr,
    ) -> Result<String, OAuthError> {
        let key = (realm.to_owned(), client_id.to_owned());
        if self
            .nonce_verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
        {
            return Ok(refresh_token);
        }
        let form = encode(
            [
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.as_str()),
            ]
            .into_iter()
            .chain(
                params
                    .iter()
                    .filter(|(name, _)| crate::client_auth::AUTH_PARAMS.contains(name)),
            ),
        );
        let token_path = self.checks.urls.routes().path(Endpoint::Token, realm);
        let reply = match self
            .op
            .post_form(&token_path, form, forwarded, peer, "nonce_probe")
            .await
        {
            Ok(reply) if reply.status.is_success() => reply,
            // Inconclusive: the release will check the final ID token itself.
            _ => return Ok(refresh_token),
        };
        let tokens = reply.json().unwrap_or_default();
        // The probe may have rotated the refresh token: hold the newest.
        let held = tokens
            .get("refresh_token")
            .and_then(Value::as_str)
            .map_or(refresh_token, str::to_owned);
        let Some(id_token) = tokens.get("id_token").and_then(Value::as_str) else {
            return Ok(held);
        };
        if id_token_claims(Some(id_token)).nonce.as_deref() != Some(nonce) {
            tracing::error!(client_id, realm, "refreshed ID tokens lack the nonce; enable Keycloak's \"Nonce backwards compatible\" mapper (oidc-nonce-backwards-compatible-mapper) for this client");
            return Err(OAuthError::new(
                StatusCode::BAD_GATEWAY,
                code::SERVER_ERROR,
                "The OpenID Provider drops the nonce from refreshed ID tokens, so the final ID token would fail validation. Keycloak: add the \"Nonce backwards compatible\" mapper to this client.",
            ));
        }
        self.nonce_verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key);
        Ok(held)
    }

    /// Puts the code back when the OP certainly did not see it, so a retry can succeed.
    async fn restore(&self, taken: &TakenCode) {
        let end = taken.record.issued_at + self.settings.deferred_code_ttl.as_millis() as u64;
        let left = Duration::from_millis(end.saturating_sub(now_ms()));
        if let Err(e) = self.records.restore_code(taken, left).await {
            tracing::warn!(error = %e, "could not restore a deferred code after an OP failure");
        }
    }
}

/// The OP may have redeemed the code and its answer is lost: the code cannot be sent again,
/// and the RP must start over. Not retryable, so no `Retry-After`.
fn code_maybe_spent(e: UpstreamError) -> OAuthError {
    let status = match e {
        UpstreamError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    OAuthError {
        source: Source::Op,
        cause: Some(Arc::new(e)),
        ..OAuthError::new(
            status,
            code::SERVER_ERROR,
            "The OpenID Provider failed while redeeming the code, which may be spent; start a new authorization.",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: StatusCode, body: &str) -> BufferedReply {
        BufferedReply {
            status,
            headers: HeaderMap::new(),
            body: bytes::Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn the_ops_answer_decides_what_becomes_of_the_code() {
        let cases: Vec<(&str, BufferedReply, Redemption)> = vec![
            (
                "an OP failure puts the code back",
                reply(StatusCode::BAD_GATEWAY, ""),
                Redemption::OpFailed(StatusCode::BAD_GATEWAY),
            ),
            (
                "bad credentials put the code back",
                reply(StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#),
                Redemption::Refused { restore: true },
            ),
            (
                "a refused proof puts the code back",
                reply(StatusCode::BAD_REQUEST, r#"{"error":"invalid_dpop_proof"}"#),
                Redemption::Refused { restore: true },
            ),
            (
                "a refused code is spent",
                reply(StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#),
                Redemption::Refused { restore: false },
            ),
            (
                "no refresh token cannot be held",
                reply(StatusCode::OK, r#"{"access_token":"a"}"#),
                Redemption::NoRefreshToken,
            ),
            ("garbage", reply(StatusCode::OK, "<html>"), Redemption::Malformed),
            (
                "an online grant",
                reply(StatusCode::OK, r#"{"refresh_token":"r","scope":"openid profile"}"#),
                Redemption::OnlineGrant(String::new()),
            ),
            (
                "a refresh token that dies before the process",
                reply(StatusCode::OK, r#"{"refresh_token":"r","refresh_expires_in":1800}"#),
                Redemption::OnlineGrant(String::new()),
            ),
            (
                "an offline grant (Keycloak: no expiry)",
                reply(
                    StatusCode::OK,
                    r#"{"refresh_token":"r","refresh_expires_in":0,"scope":"openid offline_access","id_token":"i"}"#,
                ),
                Redemption::Granted {
                    refresh_token: "r",
                    id_token: Some("i"),
                },
            ),
            (
                "a grant",
                reply(StatusCode::OK, r#"{"refresh_token":"r","id_token":"i"}"#),
                Redemption::Granted {
                    refresh_token: "r",
                    id_token: Some("i"),
                },
            ),
        ];
        for (name, reply, expected) in cases {
            let tokens = reply.json();
            if let Redemption::OnlineGrant(_) = expected {
                let got = redemption(&reply, tokens.as_ref(), true, 86_400);
                assert!(matches!(got, Redemption::OnlineGrant(_)), "{name}: {got:?}");
                continue;
            }
            assert_eq!(redemption(&reply, tokens.as_ref(), true, 86_400), expected, "{name}");
        }
    }
}
