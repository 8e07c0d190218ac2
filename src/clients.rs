//! The registry of clients allowed to use DTR, from the configuration.

use std::sync::Arc;

use crate::config::{ClientSettings, Profile};
use crate::protocol::errors::OAuthError;

#[derive(Clone)]
pub struct Clients {
    clients: Arc<[ClientSettings]>,
    /// `DTR_REQUIRE_DPOP`: every client must use DPoP.
    require_dpop: bool,
    /// `DTR_IETF_REALMS`: realms whose clients speak the IETF profile by default.
    ietf_realms: Arc<[String]>,
}

impl Clients {
    pub fn new(clients: Vec<ClientSettings>, require_dpop: bool, ietf_realms: Vec<String>) -> Self {
        Self {
            clients: clients.into(),
            require_dpop,
            ietf_realms: ietf_realms.into(),
        }
    }

    /// The profile a client speaks in a realm: its own setting, else the realm's.
    pub fn profile(&self, realm: &str, client: &ClientSettings) -> Profile {
        client.profile.unwrap_or_else(|| self.realm_profile(realm))
    }

    /// The profile of a realm's clients that do not name one.
    pub fn realm_profile(&self, realm: &str) -> Profile {
        if self.ietf_realms.iter().any(|r| r == realm) {
            Profile::Ietf
        } else {
            Profile::OpenId
        }
    }

    /// Every profile some client may speak in a realm, for its discovery metadata.
    pub fn profiles_in(&self, realm: &str) -> Vec<Profile> {
        Profile::ALL
            .into_iter()
            .filter(|profile| {
                self.realm_profile(realm) == *profile
                    || self
                        .clients
                        .iter()
                        .filter(|c| c.realm.as_deref().is_none_or(|r| r == realm))
                        .any(|c| c.profile == Some(*profile))
            })
            .collect()
    }

    /// Like [`Self::deferred`], for a request in `spoken`'s wire names: a client registered
    /// for the other profile is `unauthorized_client` (RFC 6749 §5.2: not authorized to use
    /// this grant type), so each client is held to one vocabulary.
    pub fn speaking(&self, realm: &str, client_id: &str, spoken: Profile) -> Result<&ClientSettings, OAuthError> {
        let client = self.deferred(realm, client_id)?;
        if self.profile(realm, client) != spoken {
            return Err(OAuthError::unauthorized_client(format!(
                "This client uses the {} profile of the deferred token response, not the {} one.",
                self.profile(realm, client).as_str(),
                spoken.as_str()
            )));
        }
        Ok(client)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client(client_id: &str, realm: Option<&str>, profile: Option<Profile>) -> ClientSettings {
        serde_json::from_value(serde_json::json!({
            "client_id": client_id,
            "realm": realm,
            "profile": profile,
        }))
        .unwrap()
    }

    #[test]
    fn a_clients_profile_is_its_own_else_its_realms_else_openid() {
        let clients = Clients::new(
            vec![
                client("plain", None, None),
                client("oauth", None, Some(Profile::Ietf)),
                client("oidc", None, Some(Profile::OpenId)),
            ],
            false,
            vec!["ietf-realm".into()],
        );
        let profile = |realm: &str, id: &str| clients.profile(realm, clients.find(realm, id).unwrap());
        assert_eq!(profile("any", "plain"), Profile::OpenId);
        assert_eq!(profile("ietf-realm", "plain"), Profile::Ietf);
        assert_eq!(profile("any", "oauth"), Profile::Ietf);
        assert_eq!(profile("ietf-realm", "oidc"), Profile::OpenId);
        assert_eq!(clients.profiles_in("any"), vec![Profile::OpenId, Profile::Ietf]);
    }

    #[test]
    fn a_request_in_the_other_profiles_names_is_unauthorized_client() {
        let clients = Clients::new(vec![client("oauth", Some("r"), Some(Profile::Ietf))], false, vec![]);
        assert!(clients.speaking("r", "oauth", Profile::Ietf).is_ok());
        let refused = clients.speaking("r", "oauth", Profile::OpenId).err().unwrap();
        assert_eq!(refused.error, crate::protocol::wire::error::UNAUTHORIZED_CLIENT);
        assert_eq!(clients.profiles_in("r"), vec![Profile::OpenId, Profile::Ietf]);
        assert_eq!(clients.profiles_in("elsewhere"), vec![Profile::OpenId]);
    }
}
