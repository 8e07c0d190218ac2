//! Making the OP know a verified federated client: the OP issues codes only to clients it
//! knows. Behind [`Provisioner`], so that another OP can be added beside Keycloak.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use url::Url;

use super::FederatedClient;
use crate::clock::now_ms;
use crate::config::KeycloakAdmin;
use crate::http::full;
use crate::protocol::routes::{Endpoint, Routes};
use crate::upstream::{HttpClient, OpClient};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, thiserror::Error)]
#[error("provisioning failed: {0}")]
pub struct ProvisionError(pub String);

/// Creates, updates and disables federated clients at the OP.
pub trait Provisioner: Send + Sync {
    /// Creates the client in `realm`, or brings it up to date (and enables it).
    fn upsert<'a>(&'a self, realm: &'a str, client: &'a FederatedClient) -> BoxFuture<'a, Result<(), ProvisionError>>;
    /// Disables the client: its statement expired or its trust root is gone.
    fn disable<'a>(&'a self, realm: &'a str, client_id: &'a str) -> BoxFuture<'a, Result<(), ProvisionError>>;
}

fn path_segment(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The OIDC client metadata (RFC 7591 names) an OP is given for a federated client.
pub fn client_metadata(client: &FederatedClient, enabled: bool) -> Value {
    json!({
        "client_id": client.client_id,
        "redirect_uris": client.redirect_uris,
        "scope": op_scopes(client).join(" "),
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": client.jwks,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "enabled": enabled,
    })
}

/// The statement's scopes, and `offline_access`: the proxy asks for it on every deferred
/// request (`DTR_OFFLINE_ACCESS`), as the held grant must outlive the login session.
fn op_scopes(client: &FederatedClient) -> Vec<&str> {
    let mut scopes: Vec<&str> = client.scopes.iter().map(String::as_str).collect();
    if !scopes.contains(&"offline_access") {
        scopes.push("offline_access");
    }
    scopes
}

/// Keycloak's Admin REST API, with the least-privilege service account of
/// `DTR_KEYCLOAK_ADMIN_*` (realm-management `manage-clients` for this).
pub struct KeycloakProvisioner {
    op: Arc<dyn OpClient>,
    routes: Routes,
    account: KeycloakAdmin,
    token: Mutex<Option<(String, u64)>>,
}

impl KeycloakProvisioner {
    pub fn new(op: Arc<dyn OpClient>, routes: Routes, account: KeycloakAdmin) -> Self {
        Self {
            op,
            routes,
            account,
            token: Mutex::new(None),
        }
    }

    async fn token(&self, realm: &str) -> Result<String, ProvisionError> {
        if let Some((token, until)) = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            if now_ms() < until {
                return Ok(token);
            }
        }
        let token_realm = self.account.realm.as_deref().unwrap_or(realm);
        let path = self.routes.path(Endpoint::Token, token_realm);
        let encode = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        let basic = STANDARD.encode(format!(
            "{}:{}",
            encode(&self.account.client_id),
            encode(&self.account.client_secret.0)
        ));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {basic}")).map_err(|e| ProvisionError(e.to_string()))?,
        );
        headers.insert(header::CONTENT_TYPE, crate::http::FORM_URLENCODED);
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
            .map_err(|e| ProvisionError(e.to_string()))?;
        if !reply.status.is_success() {
            return Err(ProvisionError(format!(
                "the service account's token request answered {}",
                reply.status
            )));
        }
        let tokens = reply.json().unwrap_or_default();
        let token = tokens
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| ProvisionError("no access_token for the service account".into()))?
            .to_owned();
        let lifetime = tokens.get("expires_in").and_then(Value::as_u64).unwrap_or(60);
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((token.clone(), now_ms() + lifetime.saturating_sub(10) * 1000));
        Ok(token)
    }

    async fn call(
        &self,
        realm: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<crate::upstream::BufferedReply, ProvisionError> {
        let token = self.token(realm).await?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| ProvisionError(e.to_string()))?,
        );
        let body = match body {
            Some(value) => {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        let reply = self
            .op
            .send_own(method, path, headers, body, "admin_clients")
            .await
            .map_err(|e| ProvisionError(e.to_string()))?;
        if matches!(reply.status.as_u16(), 401 | 403) {
            *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        Ok(reply)
    }

    /// The internal id of the client whose `clientId` is `client_id`, if it exists.
    async fn find(&self, realm: &str, client_id: &str) -> Result<Option<String>, ProvisionError> {
        let path = format!(
            "/admin/realms/{}/clients?clientId={}&search=false",
            path_segment(realm),
            path_segment(client_id)
        );
        let reply = self.call(realm, Method::GET, &path, None).await?;
        if !reply.status.is_success() {
            return Err(ProvisionError(format!("listing clients answered {}", reply.status)));
        }
        let found: Vec<Value> = serde_json::from_slice(&reply.body).unwrap_or_default();
        Ok(found
            .iter()
            .find(|c| c.get("clientId").and_then(Value::as_str) == Some(client_id))
            .and_then(|c| c.get("id").and_then(Value::as_str))
            .map(str::to_owned))
    }

    /// Keycloak's representation: `client-jwt` authentication with the statement's keys as a
    /// JWKS string (`use.jwks.string`, OIDCConfigAttributes), the statement's redirect URIs,
    /// the standard flow only, its scopes as optional client scopes, and the nonce mapper.
    fn representation(client: &FederatedClient, enabled: bool) -> Value {
        let scopes: Vec<&str> = op_scopes(client).into_iter().filter(|s| *s != "openid").collect();
        json!({
            "clientId": client.client_id,
            "name": client.client_id,
            "enabled": enabled,
            "protocol": "openid-connect",
            "publicClient": false,
            "bearerOnly": false,
            "clientAuthenticatorType": "client-jwt",
            "standardFlowEnabled": true,
            "implicitFlowEnabled": false,
            "directAccessGrantsEnabled": false,
            "serviceAccountsEnabled": false,
            "redirectUris": client.redirect_uris,
            "optionalClientScopes": scopes,
            // Keycloak 25+ leaves `nonce` out of refreshed ID tokens, and DTR's final tokens
            // are a refresh (docs/keycloak.md): the RP's nonce must survive it.
            "protocolMappers": [{
                "name": "nonce backwards compatible",
                "protocol": "openid-connect",
                "protocolMapper": "oidc-nonce-backwards-compatible-mapper",
                "config": {},
            }],
            "attributes": {
                "use.jwks.url": "false",
                "use.jwks.string": "true",
                "jwks.string": serde_json::to_string(&client.jwks).unwrap_or_default(),
                "dtr.federation": client.federation,
            },
        })
    }
}

impl Provisioner for KeycloakProvisioner {
    fn upsert<'a>(&'a self, realm: &'a str, client: &'a FederatedClient) -> BoxFuture<'a, Result<(), ProvisionError>> {
        Box::pin(async move {
            let representation = Self::representation(client, true);
            let reply = match self.find(realm, &client.client_id).await? {
                Some(id) => {
                    let path = format!("/admin/realms/{}/clients/{}", path_segment(realm), path_segment(&id));
                    self.call(realm, Method::PUT, &path, Some(&representation)).await?
                }
                None => {
                    let path = format!("/admin/realms/{}/clients", path_segment(realm));
                    self.call(realm, Method::POST, &path, Some(&representation)).await?
                }
            };
            if reply.status.is_success() {
                Ok(())
            } else {
                Err(ProvisionError(format!("the Admin API answered {}", reply.status)))
            }
        })
    }

    fn disable<'a>(&'a self, realm: &'a str, client_id: &'a str) -> BoxFuture<'a, Result<(), ProvisionError>> {
        Box::pin(async move {
            let Some(id) = self.find(realm, client_id).await? else {
                return Ok(());
            };
            let path = format!("/admin/realms/{}/clients/{}", path_segment(realm), path_segment(&id));
            let reply = self
                .call(realm, Method::PUT, &path, Some(&json!({ "enabled": false })))
                .await?;
            if reply.status.is_success() {
                Ok(())
            } else {
                Err(ProvisionError(format!("the Admin API answered {}", reply.status)))
            }
        })
    }
}

/// An OP's own provisioning endpoint: `PUT <url>/<realm>/<client_id>` with the RFC 7591
/// metadata of [`client_metadata`] (and `enabled`), authenticated by a bearer secret.
pub struct EndpointProvisioner {
    pub http: HttpClient,
    pub url: Url,
    pub secret: String,
    pub timeout: std::time::Duration,
}

impl EndpointProvisioner {
    async fn put(&self, realm: &str, client_id: &str, body: Value) -> Result<(), ProvisionError> {
        let base = self.url.as_str().trim_end_matches('/');
        let uri = format!("{base}/{}/{}", path_segment(realm), path_segment(client_id));
        let request = Request::builder()
            .method(Method::PUT)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.secret))
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(body.to_string()))
            .map_err(|e| ProvisionError(e.to_string()))?;
        let response = tokio::time::timeout(self.timeout, self.http.request(request))
            .await
            .map_err(|_| ProvisionError("the provisioning endpoint timed out".into()))?
            .map_err(|e| ProvisionError(e.to_string()))?;
        let status = response.status();
        let _ = tokio::time::timeout(self.timeout, response.into_body().collect()).await;
        if status.is_success() || (status == StatusCode::NOT_FOUND && body_is_disable(&body)) {
            Ok(())
        } else {
            Err(ProvisionError(format!("the provisioning endpoint answered {status}")))
        }
    }
}

fn body_is_disable(body: &Value) -> bool {
    body.get("enabled") == Some(&Value::Bool(false))
}

impl Provisioner for EndpointProvisioner {
    fn upsert<'a>(&'a self, realm: &'a str, client: &'a FederatedClient) -> BoxFuture<'a, Result<(), ProvisionError>> {
        Box::pin(self.put(realm, &client.client_id, client_metadata(client, true)))
    }

    fn disable<'a>(&'a self, realm: &'a str, client_id: &'a str) -> BoxFuture<'a, Result<(), ProvisionError>> {
        Box::pin(self.put(realm, client_id, json!({ "client_id": client_id, "enabled": false })))
    }
}
