//! The deferred code exchange (step 3): the RP trades its `deferred_code` for a
//! `deferred_auth_id`; the proxy redeems the OP's code exactly once and holds the grant.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderMap;
use http::{Response, StatusCode};
use serde_json::json;

use super::back_channel::{forwarded_headers, id_token_claims, is_request_error, relay, reply_error};
use super::checks::{dpop_error, Checks};
use super::events::{emit, Event};
use crate::client_auth::ClientCredentials;
use crate::clock::now_ms;
use crate::crypto::random_token;
use crate::http::{json_no_store, Body};
use crate::metrics::Metrics;
use crate::protocol::errors::OAuthError;
use crate::protocol::params::{encode, Params};
use crate::protocol::routes::Endpoint;
use crate::protocol::wire::{self, error as code};
use crate::records::{AuthMethod, HeldSecrets, ProcessRecord, Records, Status, TakenCode};
use crate::upstream::{BufferedReply, OpClient, UpstreamError};

/// The settings the exchange applies to a new process.
#[derive(Debug, Clone)]
pub struct ExchangeSettings {
    pub default_interval: u64,
    pub default_expires_in: u64,
    pub interim_id_token: bool,
    pub deferred_code_ttl: Duration,
}

pub struct Exchange {
    pub checks: Checks,
    pub records: Records,
    pub op: Arc<dyn OpClient>,
    pub metrics: Metrics,
    pub settings: ExchangeSettings,
}

const UNKNOWN_CODE: &str = "The deferred_code is invalid, expired, or was issued to another client.";

/// What the OP's answer to the code redemption means for the process.
#[derive(Debug, PartialEq)]
pub enum Redemption<'a> {
    /// The OP failed (5xx): it may not have processed the code; put it back.
    OpFailed(StatusCode),
    /// The OP refused; relay its answer. `restore` when the refusal was about the request (the
    /// client's credentials or proof), not the code, so a corrected retry can succeed.
    Refused { restore: bool },
    /// Tokens, but no refresh token to complete the process with later.
    NoRefreshToken,
    /// Unreadable answer.
    Malformed,
    Granted {
        refresh_token: &'a str,
        id_token: Option<&'a str>,
    },
}

/// Reads the OP's answer to the code redemption (`tokens` is its body as JSON).
pub fn redemption<'a>(
    reply: &BufferedReply,
    tokens: Option<&'a serde_json::Map<String, serde_json::Value>>,
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
    match tokens.get("refresh_token").and_then(|v| v.as_str()) {
        Some(refresh_token) => Redemption::Granted {
            refresh_token,
            id_token: tokens.get("id_token").and_then(|v| v.as_str()),
        },
        None => Redemption::NoRefreshToken,
    }
}

impl Exchange {
    pub async fn handle(
        &self,
        realm: &str,
        headers: &HeaderMap,
        params: &Params,
        deferred_code: &str,
        peer: IpAddr,
    ) -> Result<Response<Body>, OAuthError> {
        let now = now_ms();
        let credentials = ClientCredentials::extract(headers, params)?;
        let client = self.checks.client(realm, &credentials)?;
        // Checked before the code is consumed, so a bad request costs the RP nothing.
        self.checks.authenticate(realm, client, &credentials, None).await?;
        let proof = self.checks.proof(headers, Endpoint::Token, realm, now).await?;
        if proof.is_none() && credentials.method == AuthMethod::None {
            return Err(dpop_error(
                "Public clients must bind the deferred authentication to a key: send a DPoP proof.",
            ));
        }
        if proof.is_none() && self.checks.clients.requires_dpop(client) {
            return Err(dpop_error("This server requires a DPoP proof."));
        }
        let taken = self
            .records
            .take_code(deferred_code)
            .await?
            .ok_or_else(|| OAuthError::invalid_grant(UNKNOWN_CODE))?;
        let code_record = &taken.record;
        // Taken and burnt even when presented by the wrong client (RFC 6749 §10.5 spirit).
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

        let skip = [
            "grant_type",
            wire::DEFERRED_CODE,
            wire::DEFERRED_NOTIFICATION_TOKEN,
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
        let reply = match self
            .op
            .post_form(&token_path, form, &forwarded_headers(headers), peer, "exchange")
            .await
        {
            Ok(reply) => reply,
            Err(e) => {
                self.restore(&taken).await;
                return Err(OAuthError::upstream(e));
            }
        };
        let tokens = reply.json();
        match redemption(&reply, tokens.as_ref()) {
            Redemption::OpFailed(status) => {
                self.restore(&taken).await;
                Err(OAuthError::upstream(UpstreamError::Status(status)))
            }
            Redemption::Refused { restore } => {
                if restore {
                    self.restore(&taken).await;
                }
                tracing::info!(client_id = %credentials.client_id, status = %reply.status, error = reply_error(&reply).as_deref().unwrap_or(""), "OP refused the code exchange");
                Ok(relay(&reply))
            }
            Redemption::Malformed => Err(OAuthError::internal(
                "The OP answered the code exchange with invalid JSON.",
            )),
            Redemption::NoRefreshToken => {
                tracing::error!(client_id = %credentials.client_id, "OP issued no refresh token; the process cannot be completed later");
                Err(OAuthError::new(
                    StatusCode::BAD_GATEWAY,
                    code::SERVER_ERROR,
                    "The OpenID Provider issued no refresh token; enable offline_access (or refresh tokens) for this client.",
                ))
            }
            Redemption::Granted {
                refresh_token,
                id_token,
            } => {
                let claims = id_token_claims(id_token);
                let interval = client.interval.unwrap_or(self.settings.default_interval);
                let expires_in = client.expires_in.unwrap_or(self.settings.default_expires_in);
                let deferred_auth_id = random_token(32);
                let process_hash = self.records.process_hash(&deferred_auth_id);
                let secrets = HeldSecrets {
                    deferred_auth_id: deferred_auth_id.clone(),
                    refresh_token: refresh_token.to_owned(),
                    notification_token: params.get(wire::DEFERRED_NOTIFICATION_TOKEN).map(str::to_owned),
                };
                let now = now_ms();
                let record = ProcessRecord {
                    process_id: random_token(16),
                    realm: realm.to_owned(),
                    client_id: credentials.client_id.clone(),
                    client: self.checks.verifier.binding(&credentials),
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
                    nonce: code_record.nonce.clone(),
                    ping_attempts: 0,
                    sealed: self.records.seal(&secrets, &process_hash),
                };
                self.records.create(&process_hash, &record).await?;
                emit(&self.metrics, Event::Started, &record);

                let mut body = json!({
                    wire::DEFERRED_AUTH_ID: deferred_auth_id,
                    "expires_in": expires_in,
                    "interval": interval,
                });
                if let (true, Some(id_token)) = (self.settings.interim_id_token, id_token) {
                    body[wire::INTERIM_ID_TOKEN] = json!(id_token);
                }
                Ok(json_no_store(StatusCode::OK, &body))
            }
        }
    }

    /// Puts the code back when the OP certainly did not redeem it, so a retry can succeed.
    async fn restore(&self, taken: &TakenCode) {
        let end = taken.record.issued_at + self.settings.deferred_code_ttl.as_millis() as u64;
        let left = Duration::from_millis(end.saturating_sub(now_ms()));
        if let Err(e) = self.records.restore_code(taken, left).await {
            tracing::warn!(error = %e, "could not restore a deferred code after an OP failure");
        }
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
            assert_eq!(redemption(&reply, tokens.as_ref()), expected, "{name}");
        }
    }
}
