//! Everything a request handler needs, built once from the configuration.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::{ClientSettings, Config, StoreSettings};
use crate::metrics::Metrics;
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

    pub fn issuer(&self, realm: &str) -> String {
        self.routes.issuer(&self.config.public_origin(), realm)
    }

    pub fn public_url(&self, endpoint: Endpoint, realm: &str) -> String {
        format!("{}{}", self.config.public_origin(), self.routes.path(endpoint, realm))
    }
}
