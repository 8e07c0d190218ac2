//! The registry of clients allowed to use DTR, from the configuration.

use std::sync::Arc;

use crate::config::ClientSettings;
use crate::protocol::errors::OAuthError;

#[derive(Clone)]
pub struct Clients {
    clients: Arc<[ClientSettings]>,
    /// `DTR_REQUIRE_DPOP`: every client must use DPoP.
    require_dpop: bool,
}

impl Clients {
    pub fn new(clients: Vec<ClientSettings>, require_dpop: bool) -> Self {
        Self {
            clients: clients.into(),
            require_dpop,
        }
    }

    /// The DTR settings of a client in a realm, if it may use DTR at all. A client configured
    /// for a realm wins over one configured for every realm.
    pub fn find(&self, realm: &str, client_id: &str) -> Option<&ClientSettings> {
        let mut fallback = None;
        for client in self.clients.iter().filter(|c| c.client_id == client_id) {
            match client.realm.as_deref() {
                Some(r) if r == realm => return Some(client),
                None => fallback = Some(client),
                Some(_) => {}
            }
        }
        fallback
    }

    /// Like [`Self::find`], for the token and cancellation endpoints: a client without DTR
    /// settings is `unauthorized_client`.
    pub fn deferred(&self, realm: &str, client_id: &str) -> Result<&ClientSettings, OAuthError> {
        self.find(realm, client_id).ok_or_else(|| {
            OAuthError::unauthorized_client("The client is not authorized to use the deferred grant type.")
        })
    }

    /// Whether every deferred request of this client must carry a DPoP proof.
    pub fn requires_dpop(&self, client: &ClientSettings) -> bool {
        self.require_dpop || client.require_dpop
    }
}
