//! Making the OP know a verified federated client: the OP issues codes only to clients it
//! knows. Behind [`Provisioner`], so that another OP can be added beside Keycloak.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The value of the ownership marker on every client the proxy provisions.
pub const OWNER: &str = "dtr-proxy";

/// A client the proxy provisioned, as the OP records it: the OP is the record of what was
/// provisioned, so that a restarted replica (or another one) knows it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub client_id: String,
    /// The trust root its statement was verified with.
    pub federation: String,
    /// The earliest `exp` of its statement's chain (seconds).
    pub expires_at: u64,
    pub enabled: bool,
}

impl Owned {
    pub fn of(client: &FederatedClient) -> Self {
        Self {
            client_id: client.client_id.clone(),
            federation: client.federation.clone(),
            expires_at: client.expires_at,
            enabled: true,
        }
    }
}

/// Creates, updates, lists and disables federated clients at the OP.
pub trait Provisioner: Send + Sync {
    /// Creates the client in `realm`, or brings it up to date (and enables it), marked as
    /// the proxy's with its trust root and expiry.
    fn upsert<'a>(&'a self, realm: &'a str, client: &'a FederatedClient) -> BoxFuture<'a, Result<(), ProvisionError>>;
    /// Disables the client — its statement expired or its trust root is gone — if the OP
    /// still records it as `seen` (same trust root and expiry): a replica that provisioned a
    /// fresh statement in the meantime wins. `Ok(false)`: nothing to disable.
    fn disable<'a>(&'a self, realm: &'a str, seen: &'a Owned) -> BoxFuture<'a, Result<bool, ProvisionError>>;
    /// Every client of `realm` that carries the proxy's ownership marker, enabled or not;
    /// clients the proxy does not own are never listed.
    fn owned<'a>(&'a self, realm: &'a str) -> BoxFuture<'a, Result<Vec<Owned>, ProvisionError>>;
}

/// Clients listed per Admin API (or provisioning endpoint) page.
const PAGE: usize = 100;

/// What a path segment must encode: everything but the unreserved characters (RFC 3986
/// §2.3). Encoding those too (`-` in a client's UUID) makes Keycloak refuse the path as not
/// normalized.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn path_segment(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, SEGMENT).to_string()
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
        "dtr_owner": OWNER,
        "dtr_federation": client.federation,
        "dtr_expires_at": client.expires_at,
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

/// An Admin API refusal, with the start of what Keycloak said (its `error`/`errorMessage`).
fn admin_api_error(reply: &crate::upstream::BufferedReply) -> ProvisionError {
    let said = String::from_utf8_lossy(&reply.body);
    let said: String = said.chars().take(200).collect();
    ProvisionError(format!("the Admin API answered {}: {said}", reply.status))
}

/// Keycloak client attributes that mark a client as the proxy's (searched with the Admin
/// API's `q=` query), name its trust root and its statement's expiry.
const OWNER_ATTRIBUTE: &str = "dtr.owner";
const FEDERATION_ATTRIBUTE: &str = "dtr.federation";
const EXPIRES_ATTRIBUTE: &str = "dtr.expires_at";

/// Keycloak's Admin REST API, with the least-privilege service account of
/// `DTR_KEYCLOAK_ADMIN_*` (realm-management `manage-clients` for this).
pub struct KeycloakProvisioner {
    op: Arc<dyn OpClient>,
    routes: Routes,
    account: KeycloakAdmin,
    token: Mutex<Option<(String, u64)>>,
    /// Whether the `q=` attribute search is accepted (until Keycloak refuses it once).
    searchable: AtomicBool,
}

impl KeycloakProvisioner {
    pub fn new(op: Arc<dyn OpClient>, routes: Routes, account: KeycloakAdmin) -> Self {
        Self {
            op,
            routes,
            account,
            token: Mutex::new(None),
            searchable: AtomicBool::new(true),
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

    /// The representation of the client whose `clientId` is `client_id`, if it exists.
    async fn find(&self, realm: &str, client_id: &str) -> Result<Option<Value>, ProvisionError> {
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
            .into_iter()
            .find(|c| c.get("clientId").and_then(Value::as_str) == Some(client_id)))
    }

    /// What the ownership attributes of a client representation say, if the proxy owns it.
    fn owned_of(representation: &Value) -> Option<Owned> {
        let attributes = representation.get("attributes")?;
        let attribute = |name: &str| attributes.get(name).and_then(Value::as_str);
        if attribute(OWNER_ATTRIBUTE) != Some(OWNER) {
            return None;
        }
        Some(Owned {
            client_id: representation.get("clientId")?.as_str()?.to_owned(),
            federation: attribute(FEDERATION_ATTRIBUTE).unwrap_or_default().to_owned(),
            // A marked client without a readable expiry counts as expired.
            expires_at: attribute(EXPIRES_ATTRIBUTE).and_then(|s| s.parse().ok()).unwrap_or(0),
            enabled: representation.get("enabled").and_then(Value::as_bool).unwrap_or(true),
        })
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
                OWNER_ATTRIBUTE: OWNER,
                FEDERATION_ATTRIBUTE: client.federation,
                EXPIRES_ATTRIBUTE: client.expires_at.to_string(),
            },
        })
    }
}

impl Provisioner for KeycloakProvisioner {
    fn upsert<'a>(&'a self, realm: &'a str, client: &'a FederatedClient) -> BoxFuture<'a, Result<(), ProvisionError>> {
        Box::pin(async move {
            let representation = Self::representation(client, true);
            let found = self.find(realm, &client.client_id).await?;
            let id = found.as_ref().and_then(|c| c.get("id")).and_then(Value::as_str);
            let reply = match id {
                Some(id) => {
                    let path = format!("/admin/realms/{}/clients/{}", path_segment(realm), path_segment(id));
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
                Err(admin_api_error(&reply))
            }
        })
    }

    fn disable<'a>(&'a self, realm: &'a str, seen: &'a Owned) -> BoxFuture<'a, Result<bool, ProvisionError>> {
        Box::pin(async move {
            // Read again just before writing: what was listed may have been refreshed since.
            let Some(found) = self.find(realm, &seen.client_id).await? else {
                return Ok(false);
            };
            let current = Self::owned_of(&found);
            let unchanged = current
                .as_ref()
                .is_some_and(|c| c.enabled && c.federation == seen.federation && c.expires_at == seen.expires_at);
            let Some(id) = found.get("id").and_then(Value::as_str).filter(|_| unchanged) else {
                return Ok(false);
            };
            let path = format!("/admin/realms/{}/clients/{}", path_segment(realm), path_segment(id));
            // The whole representation just read, disabled: Keycloak refuses a partial one.
            let mut disabled = found.clone();
            disabled["enabled"] = Value::Bool(false);
            let reply = self.call(realm, Method::PUT, &path, Some(&disabled)).await?;
            if reply.status.is_success() {
                Ok(true)
            } else {
                Err(admin_api_error(&reply))
            }
        })
    }

    fn owned<'a>(&'a self, realm: &'a str) -> BoxFuture<'a, Result<Vec<Owned>, ProvisionError>> {
        Box::pin(async move {
            if self.searchable.load(Ordering::Relaxed) {
                let query = format!("q={}", path_segment(&format!("{OWNER_ATTRIBUTE}:{OWNER}")));
                match self.list(realm, &query).await {
                    Err(ListError::Refused) => {
                        // Keycloak searches only the client attributes it is told to
                        // (the jpa client provider's searchableAttributes); without
                        // dtr.owner among them it answers 400: list every client instead.
                        tracing::info!(
                            realm,
                            "Keycloak does not search the dtr.owner attribute; listing every client instead"
                        );
                        self.searchable.store(false, Ordering::Relaxed);
                    }
                    other => return other.map_err(ListError::into_provision),
                }
            }
            self.list(realm, "briefRepresentation=false")
                .await
                .map_err(ListError::into_provision)
        })
    }
}

enum ListError {
    /// A 400: the query is not accepted.
    Refused,
    Failed(ProvisionError),
}

impl ListError {
    fn into_provision(self) -> ProvisionError {
        match self {
            ListError::Refused => ProvisionError("the client search was refused".into()),
            ListError::Failed(e) => e,
        }
    }
}

impl KeycloakProvisioner {
    /// Every client of `realm` that `query` selects, page by page, that the proxy owns.
    async fn list(&self, realm: &str, query: &str) -> Result<Vec<Owned>, ListError> {
        let mut owned = Vec::new();
        for page in 0.. {
            let path = format!(
                "/admin/realms/{}/clients?{query}&first={}&max={PAGE}",
                path_segment(realm),
                page * PAGE
            );
            let reply = self
                .call(realm, Method::GET, &path, None)
                .await
                .map_err(ListError::Failed)?;
            if reply.status == StatusCode::BAD_REQUEST {
                return Err(ListError::Refused);
            }
            if !reply.status.is_success() {
                return Err(ListError::Failed(ProvisionError(format!(
                    "listing clients answered {}",
                    reply.status
                ))));
            }
            let found: Vec<Value> = serde_json::from_slice(&reply.body)
                .map_err(|e| ListError::Failed(ProvisionError(format!("the client list is not a JSON list: {e}"))))?;
            // Whatever the query, the mark is checked here: only owned clients are listed.
            owned.extend(found.iter().filter_map(Self::owned_of));
            if found.len() < PAGE {
                break;
            }
        }
        Ok(owned)
    }
}

/// An OP's own provisioning endpoint: `PUT <url>/<realm>/<client_id>` with the RFC 7591
/// metadata of [`client_metadata`] (and `enabled`), `GET <url>/<realm>?first=&max=` to list
/// what it holds, authenticated by a bearer secret.
pub struct EndpointProvisioner {
    pub http: HttpClient,
    pub url: Url,
    pub secret: String,
    pub timeout: std::time::Duration,
}

impl EndpointProvisioner {
    async fn send(
        &self,
        method: Method,
        uri: String,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), ProvisionError> {
        let builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.secret));
        let request = match body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(full(body.to_string())),
            None => builder.body(full(String::new())),
        }
        .map_err(|e| ProvisionError(e.to_string()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| ProvisionError(e.to_string()))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), 4 * 1024 * 1024)
                .collect()
                .await
                .map_err(|e| ProvisionError(format!("reading the provisioning endpoint's answer: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ProvisionError("the provisioning endpoint timed out".into()))?
    }

    fn client_uri(&self, realm: &str, client_id: &str) -> String {
        let base = self.url.as_str().trim_end_matches('/');
        format!("{base}/{}/{}", path_segment(realm), path_segment(client_id))
    }
}

/// An entry of the provisioning endpoint's list, if the proxy owns it.
fn endpoint_owned(entry: &Value) -> Option<Owned> {
    if entry.get("dtr_owner").and_then(Value::as_str) != Some(OWNER) {
        return None;
    }
    Some(Owned {
        client_id: entry.get("client_id")?.as_str()?.to_owned(),
        federation: entry
            .get("dtr_federation")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        expires_at: entry.get("dtr_expires_at").and_then(Value::as_u64).unwrap_or(0),
        enabled: entry.get("enabled").and_then(Value::as_bool).unwrap_or(true),
    })
}

impl Provisioner for EndpointProvisioner {
    fn upsert<'a>(&'a self, realm: &'a str, client: &'a FederatedClient) -> BoxFuture<'a, Result<(), ProvisionError>> {
        Box::pin(async move {
            let uri = self.client_uri(realm, &client.client_id);
            let (status, _) = self
                .send(Method::PUT, uri, Some(&client_metadata(client, true)))
                .await?;
            if status.is_success() {
                Ok(())
            } else {
                Err(ProvisionError(format!("the provisioning endpoint answered {status}")))
            }
        })
    }

    /// A conditional disable: the endpoint disables the client only while it records the
    /// same trust root and expiry (`409` otherwise, `404` for an unknown client).
    fn disable<'a>(&'a self, realm: &'a str, seen: &'a Owned) -> BoxFuture<'a, Result<bool, ProvisionError>> {
        Box::pin(async move {
            let uri = self.client_uri(realm, &seen.client_id);
            let body = json!({
                "client_id": seen.client_id,
                "enabled": false,
                "dtr_owner": OWNER,
                "dtr_federation": seen.federation,
                "dtr_expires_at": seen.expires_at,
            });
            let (status, _) = self.send(Method::PUT, uri, Some(&body)).await?;
            match status {
                status if status.is_success() => Ok(true),
                StatusCode::NOT_FOUND | StatusCode::CONFLICT => Ok(false),
                status => Err(ProvisionError(format!("the provisioning endpoint answered {status}"))),
            }
        })
    }

    fn owned<'a>(&'a self, realm: &'a str) -> BoxFuture<'a, Result<Vec<Owned>, ProvisionError>> {
        Box::pin(async move {
            let base = self.url.as_str().trim_end_matches('/');
            let mut owned = Vec::new();
            for page in 0.. {
                let uri = format!("{base}/{}?first={}&max={PAGE}", path_segment(realm), page * PAGE);
                let (status, body) = self.send(Method::GET, uri, None).await?;
                if status == StatusCode::NOT_FOUND {
                    // The OP does not know the realm (any more): nothing of it to disable.
                    break;
                }
                if !status.is_success() {
                    return Err(ProvisionError(format!("listing clients answered {status}")));
                }
                let listed: Value = serde_json::from_slice(&body)
                    .map_err(|e| ProvisionError(format!("the client list is not JSON: {e}")))?;
                let clients = listed
                    .get("clients")
                    .and_then(Value::as_array)
                    .ok_or_else(|| ProvisionError("the client list has no clients array".into()))?;
                owned.extend(clients.iter().filter_map(endpoint_owned));
                if clients.len() < PAGE {
                    break;
                }
            }
            Ok(owned)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_keep_unreserved_characters() {
        assert_eq!(
            path_segment("3f2c-41d0_a.b~c"),
            "3f2c-41d0_a.b~c",
            "a client's UUID stays as it is"
        );
        assert_eq!(
            path_segment("https://sp.example.com/app?x"),
            "https%3A%2F%2Fsp.example.com%2Fapp%3Fx"
        );
    }
}
