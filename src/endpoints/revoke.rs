//! Held grants given back. A process that ends without delivery — denied, cancelled, expired,
//! or refused at the exchange — still holds an offline grant at the OP; left alone, such
//! grants pile up in Keycloak as offline sessions for 30 days (its default offline idle time).
//!
//! Two ways, used in this order:
//! - with the RP's own client authentication, when its request is at hand (a cancel, a poll
//!   that meets a denial): RFC 7009 at the OP's revocation endpoint. No credential of ours.
//! - as the operator, when no RP request is at hand (a denial by webhook, an expiry): with an
//!   optional Keycloak service account (`DTR_KEYCLOAK_ADMIN_*`, realm-management role
//!   `manage-users`), Keycloak's Admin API ends the offline session the grant lives in
//!   (`DELETE /admin/realms/{realm}/sessions/{sid}?isOffline=true`). Without that account
//!   such grants end with Keycloak's offline session idle time.
//!
//! After a delivery the grant is the RP's: it is never revoked then (Keycloak would end the
//! session the delivered access token belongs to).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::Method;
use serde_json::Value;

use super::back_channel::forwarded_headers;
use crate::client_auth::AUTH_PARAMS;
use crate::clock::now_ms;
use crate::config::KeycloakAdmin;
use crate::http::FORM_URLENCODED;
use crate::metrics::Metrics;
use crate::protocol::params::{encode, Params};
use crate::protocol::routes::Routes;
use crate::records::ProcessRecord;
use crate::upstream::OpClient;

pub struct Revoker {
    pub op: Arc<dyn OpClient>,
    pub routes: Routes,
    pub metrics: Metrics,
    pub operator: Option<Operator>,
}

/// The service account and its cached access token.
pub struct Operator {
    pub account: KeycloakAdmin,
    token: Mutex<Option<(String, u64)>>,
}

impl Operator {
    pub fn new(account: KeycloakAdmin) -> Self {
        Self {
            account,
            token: Mutex::new(None),
        }
    }
}

fn form_encoded(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl Revoker {
    /// RFC 7009 with the client authentication of the RP's request at hand; whether the OP
    /// took the token back.
    pub async fn with_client(
        &self,
        realm: &str,
        refresh_token: &str,
        headers: &HeaderMap,
        params: &Params,
        peer: IpAddr,
    ) -> bool {
        let form = encode(
            [("token", refresh_token), ("token_type_hint", "refresh_token")]
                .into_iter()
                .chain(params.iter().filter(|(name, _)| AUTH_PARAMS.contains(name))),
        );
        let path = self.routes.revocation(realm);
        // The RP's proof names another endpoint: only its client authentication travels.
        let mut forwarded = forwarded_headers(headers);
        forwarded.remove(crate::protocol::wire::DPOP.clone());
        let revoked = match self.op.post_form(&path, form, &forwarded, peer, "revoke").await {
            Ok(reply) if reply.status.is_success() => true,
            Ok(reply) => {
                tracing::info!(realm, status = %reply.status, "OP refused to revoke a held grant with the client's credentials");
                false
            }
            Err(e) => {
                tracing::info!(realm, error = %e, "could not revoke a held grant");
                false
            }
        };
        self.metrics
            .request("revoke", if revoked { "client" } else { "client_failed" });
        revoked
    }

    pub fn has_operator(&self) -> bool {
        self.operator.is_some()
    }

    /// Ends the offline session a process's grant lives in, with the operator's service
    /// account; whether it is gone.
    pub async fn as_operator(&self, record: &ProcessRecord) -> bool {
        let Some(operator) = &self.operator else {
            return false;
        };
        let Some(sid) = &record.sid else {
            tracing::info!(process_id = %record.process_id, "no session id to end: the OP's ID token had no sid");
            return false;
        };
        let revoked = match self.operator_call(operator, &record.realm, sid).await {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(process_id = %record.process_id, %reason, "could not end a held offline session");
                false
            }
        };
        self.metrics
            .request("revoke", if revoked { "operator" } else { "operator_failed" });
        revoked
    }

    async fn operator_call(&self, operator: &Operator, realm: &str, sid: &str) -> Result<(), String> {
        let token = self.operator_token(operator, realm).await?;
        let mut headers = HeaderMap::new();
        let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
        headers.insert(header::AUTHORIZATION, bearer);
        let path = format!(
            "/admin/realms/{}/sessions/{}?isOffline=true",
            form_encoded(realm),
            form_encoded(sid)
        );
        let reply = self
            .op
            .send_own(Method::DELETE, &path, headers, Bytes::new(), "admin_session")
            .await
            .map_err(|e| e.to_string())?;
        // 404: the session is gone already.
        if reply.status.is_success() || reply.status == http::StatusCode::NOT_FOUND {
            Ok(())
        } else {
            if matches!(reply.status.as_u16(), 401 | 403) {
                *operator.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(format!("Admin API answered {}", reply.status))
        }
    }

    async fn operator_token(&self, operator: &Operator, realm: &str) -> Result<String, String> {
        if let Some((token, until)) = operator.token.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            if now_ms() < until {
                return Ok(token);
            }
        }
        let account = &operator.account;
        let token_realm = account.realm.as_deref().unwrap_or(realm);
        let path = self.routes.path(crate::protocol::routes::Endpoint::Token, token_realm);
        let mut headers = HeaderMap::new();
        let basic = STANDARD.encode(format!(
            "{}:{}",
            form_encoded(&account.client_id),
            form_encoded(&account.client_secret.0)
        ));
        let basic = HeaderValue::from_str(&format!("Basic {basic}")).map_err(|e| e.to_string())?;
        headers.insert(header::AUTHORIZATION, basic);
        headers.insert(header::CONTENT_TYPE, FORM_URLENCODED);
        let reply = self
            .op
            .send_own(
                Method::POST,
                &path,
                headers,
                Bytes::from_static(b"grant_type=client_credentials"),
                "admin_token",
            )
            .await
            .map_err(|e| e.to_string())?;
        if !reply.status.is_success() {
            return Err(format!("the service account's token request answered {}", reply.status));
        }
        let tokens = reply.json().unwrap_or_default();
        let token = tokens
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or("no access_token for the service account")?
            .to_owned();
        let lifetime = tokens.get("expires_in").and_then(Value::as_u64).unwrap_or(60);
        let until = now_ms() + lifetime.saturating_sub(10) * 1000;
        *operator.token.lock().unwrap_or_else(|e| e.into_inner()) = Some((token.clone(), until));
        Ok(token)
    }
}
