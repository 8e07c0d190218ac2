//! The registry of clients allowed to use DTR: those of the configuration, and federated
//! clients admitted at run time once their statement verified (until it expires).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::config::ClientSettings;
use crate::protocol::errors::OAuthError;

/// Federated clients by (realm, client_id).
type Federated = HashMap<(String, String), Arc<ClientSettings>>;

#[derive(Clone)]
pub struct Clients {
    clients: Arc<[Arc<ClientSettings>]>,
    /// Federated clients by (realm, client_id).
    federated: Arc<RwLock<Federated>>,
    /// `DTR_REQUIRE_DPOP`: every client must use DPoP.
    require_dpop: bool,
}

impl Clients {
    pub fn new(clients: Vec<ClientSettings>, require_dpop: bool) -> Self {
        Self {
            clients: clients.into_iter().map(Arc::new).collect(),
            federated: Arc::default(),
            require_dpop,
        }
    }

    /// The DTR settings of a client in a realm, if it may use DTR at all. A client configured
    /// for a realm wins over one configured for every realm, and a configured client over a
    /// federated one of the same id.
    pub fn find(&self, realm: &str, client_id: &str) -> Option<Arc<ClientSettings>> {
        let mut fallback = None;
        for client in self.clients.iter().filter(|c| c.client_id == client_id) {
            match client.realm.as_deref() {
                Some(r) if r == realm => return Some(client.clone()),
                None => fallback = Some(client.clone()),
                Some(_) => {}
            }
        }
        fallback.or_else(|| {
            let federated = self.federated.read().unwrap_or_else(|e| e.into_inner());
            federated.get(&(realm.to_owned(), client_id.to_owned())).cloned()
        })
    }

    /// Whether the configuration names this client (for any realm): such a client is never
    /// looked up in a federation.
    pub fn is_configured(&self, client_id: &str) -> bool {
        self.clients.iter().any(|c| c.client_id == client_id)
    }

    /// Admits (or updates) a federated client in a realm.
    pub fn admit_federated(&self, realm: &str, settings: ClientSettings) {
        let mut federated = self.federated.write().unwrap_or_else(|e| e.into_inner());
        federated.insert((realm.to_owned(), settings.client_id.clone()), Arc::new(settings));
    }

    /// Forgets a federated client (its statement expired).
    pub fn remove_federated(&self, realm: &str, client_id: &str) {
        let mut federated = self.federated.write().unwrap_or_else(|e| e.into_inner());
        federated.remove(&(realm.to_owned(), client_id.to_owned()));
    }

    /// Like [`Self::find`], for the token and cancellation endpoints: a client without DTR
    /// settings is `unauthorized_client`.
    pub fn deferred(&self, realm: &str, client_id: &str) -> Result<Arc<ClientSettings>, OAuthError> {
        self.find(realm, client_id).ok_or_else(|| {
            OAuthError::unauthorized_client("The client is not authorized to use the deferred grant type.")
        })
    }

    /// Whether every deferred request of this client must carry a DPoP proof.
    pub fn requires_dpop(&self, client: &ClientSettings) -> bool {
        self.require_dpop || client.require_dpop
    }
}
