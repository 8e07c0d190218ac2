//! Everything a request handler needs, built once from the configuration.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::client_keys::ClientKeys;
use crate::config::{ClientSettings, Config, StoreSettings};
use crate::dpop::{Expected, Nonces, ValidProof};
use crate::metrics::Metrics;
use crate::protocol::errors::OAuthError;
use crate::protocol::routes::{Endpoint, Routes};
use crate::protocol::state::Processes;
use crate::store::{MemoryStore, RedisStore, Store, StoreError};
use crate::upstream::{http_client, HttpClient, Upstream};

pub struct App {
    pub config: Config,
    pub routes: Routes,
    pub upstream: Upstream,
    pub processes: Processes,
    pub metrics: Metrics,
    /// Client for pings to RPs (separate pool from the OP's).
    pub ping_client: HttpClient,
    /// Wakes the ping worker when this replica schedules a ping.
    pub ping_wakeup: Notify,
    /// Clients' key sets for verifying their assertions locally.
    pub client_keys: ClientKeys,
    /// DPoP server nonces, when `DTR_DPOP_NONCE` is on.
    pub dpop_nonces: Option<Nonces>,
}

impl App {
    pub fn new(config: Config) -> Result<Arc<Self>, StoreError> {
        let store = match &config.store {
            StoreSettings::Embedded => Store::Memory(MemoryStore::new()),
            StoreSettings::Redis {
                url,
                cluster,
                key_prefix,
            } => Store::Redis(RedisStore::connect(url, *cluster, key_prefix, config.upstream_timeout)?),
        };
        let metrics = Metrics::new();
        let upstream = Upstream::new(
            &config.upstream_url,
            &config.public_url,
            config.trusted_proxies.clone(),
            config.upstream_timeout,
            metrics.clone(),
        );
        let processes = Processes {
            store,
            hash_key: config.hash_key.clone(),
            sealer: config.sealer.clone(),
        };
        Ok(Arc::new(Self {
            routes: Routes::new(&config.paths),
            upstream,
            processes,
            metrics,
            ping_client: http_client(),
            ping_wakeup: Notify::new(),
            client_keys: ClientKeys::new(http_client(), config.jwks_cache_ttl, config.upstream_timeout),
            dpop_nonces: config.dpop_nonce.then(|| Nonces::new(config.hash_key.clone())),
            config,
        }))
    }

    pub fn store(&self) -> &Store {
        &self.processes.store
    }

    /// The DTR settings of a client in a realm, if it may use DTR at all.
    pub fn client(&self, realm: &str, client_id: &str) -> Option<&ClientSettings> {
        let mut fallback = None;
        for client in self.config.clients.iter().filter(|c| c.client_id == client_id) {
            match client.realm.as_deref() {
                Some(r) if r == realm => return Some(client),
                None => fallback = Some(client),
                Some(_) => {}
            }
        }
        fallback
    }

    /// Like [`Self::client`], for the token and cancellation endpoints: a client without DTR
    /// settings is `unauthorized_client`.
    pub fn deferred_client(&self, realm: &str, client_id: &str) -> Result<&ClientSettings, OAuthError> {
        self.client(realm, client_id).ok_or_else(|| {
            OAuthError::unauthorized_client("The client is not authorized to use the deferred grant type.")
        })
    }

    pub fn issuer(&self, realm: &str) -> String {
        self.routes.issuer(&self.config.public_origin(), realm)
    }

    /// Validates the request's DPoP proof for a DTR endpoint (RFC 9449 §4.3, replay cache,
    /// optional server nonce). `Ok(None)` when the request carries none.
    pub async fn dpop_proof(
        &self,
        headers: &http::HeaderMap,
        endpoint: Endpoint,
        realm: &str,
    ) -> Result<Option<ValidProof>, OAuthError> {
        if !headers.contains_key(&crate::dpop::DPOP) {
            return Ok(None);
        }
        let url = self.public_url(endpoint, realm);
        let url = crate::dpop::normalize_htu(&url).unwrap_or(url);
        let expected = Expected {
            method: "POST",
            url: &url,
            now_seconds: crate::http::now_ms() / 1000,
        };
        crate::dpop::validate(
            headers,
            &expected,
            self.store(),
            &self.config.hash_key,
            self.dpop_nonces.as_ref(),
        )
        .await
    }

    /// Whether every deferred request of this client must carry a DPoP proof.
    pub fn requires_dpop(&self, client: &ClientSettings) -> bool {
        self.config.require_dpop || client.require_dpop
    }

    pub fn public_url(&self, endpoint: Endpoint, realm: &str) -> String {
        format!("{}{}", self.config.public_origin(), self.routes.path(endpoint, realm))
    }
}
