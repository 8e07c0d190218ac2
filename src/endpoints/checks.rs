//! The checks every request to the deferred token and cancellation endpoints passes: which
//! client it is, whether it may use DTR, its DPoP proof, and — for a request naming a process —
//! whether the process is this client's and bound to this key.

use http::header::HeaderMap;
use http::StatusCode;

use crate::client_auth::{ClientCredentials, ClientVerifier};
use crate::clients::Clients;
use crate::config::ClientSettings;
use crate::crypto::equal_constant_time;
use crate::dpop::{DpopVerifier, ValidProof};
use crate::protocol::errors::OAuthError;
use crate::protocol::routes::{Endpoint, PublicUrls};
use crate::protocol::wire::error as code;
use crate::records::{AuthMethod, ProcessRecord};

#[derive(Clone)]
pub struct Checks {
    pub clients: Clients,
    pub verifier: ClientVerifier,
    pub dpop: DpopVerifier,
    pub urls: PublicUrls,
}

pub fn dpop_error(description: &'static str) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, code::INVALID_DPOP_PROOF, description)
}

/// Whether a process may be opened by this request, decided on data alone: the id belongs to
/// this client (in this realm), and a DPoP-bound process gets a proof — by the bound key for
/// public clients and wherever DPoP is required. Unknown and foreign ids answer alike.
pub fn owner_decision(
    record: &ProcessRecord,
    realm: &str,
    client_id: &str,
    proof: Option<&ValidProof>,
    requires_dpop: bool,
) -> Result<(), OAuthError> {
    if record.client_id != client_id || record.realm != realm {
        return Err(OAuthError::unknown_deferred_auth_id());
    }
    let same_key = record.client.method == AuthMethod::None || requires_dpop;
    match (&record.jkt, proof) {
        (Some(_), None) => Err(dpop_error(
            "This deferred_auth_id is bound to a DPoP key; send a DPoP proof.",
        )),
        (Some(bound), Some(proof)) if same_key && !equal_constant_time(bound, &proof.jkt) => Err(dpop_error(
            "The DPoP proof is not signed by the key this deferred_auth_id is bound to.",
        )),
        (None, None) if requires_dpop => Err(dpop_error("This server requires a DPoP proof.")),
        _ => Ok(()),
    }
}

impl Checks {
    /// The client's DTR settings; a client without them is `unauthorized_client`.
    pub fn client(&self, realm: &str, credentials: &ClientCredentials) -> Result<&ClientSettings, OAuthError> {
        self.clients.deferred(realm, &credentials.client_id)
    }

    /// The request's DPoP proof for this endpoint, validated; `None` when it carries none.
    pub async fn proof(
        &self,
        headers: &HeaderMap,
        endpoint: Endpoint,
        realm: &str,
        now_ms: u64,
    ) -> Result<Option<ValidProof>, OAuthError> {
        let url = self.urls.endpoint(endpoint, realm);
        self.dpop.verify(headers, &url, now_ms / 1000).await
    }

    /// Authenticates the client locally: against what the exchange bound to the process
    /// (`record`), and an assertion in full, addressed to the issuer or a DTR endpoint.
    pub async fn authenticate(
        &self,
        realm: &str,
        client: &ClientSettings,
        credentials: &ClientCredentials,
        record: Option<&ProcessRecord>,
    ) -> Result<(), OAuthError> {
        // Only an assertion is checked against them: a poll with a secret or none (the most
        // frequent request of all) builds no URL.
        let audiences = if credentials.method == AuthMethod::JwtAssertion {
            vec![
                self.urls.issuer(realm),
                self.urls.endpoint(Endpoint::Token, realm),
                self.urls.endpoint(Endpoint::Cancellation, realm),
            ]
        } else {
            Vec::new()
        };
        self.verifier
            .authenticate(credentials, client, &audiences, record.map(|r| &r.client))
            .await
    }

    /// Checks shared by polls and cancels, in order: the id is this client's, the client
    /// proves it is that client (no OP call), and the DPoP binding holds.
    pub async fn owner(
        &self,
        realm: &str,
        client: &ClientSettings,
        credentials: &ClientCredentials,
        record: &ProcessRecord,
        proof: Option<&ValidProof>,
    ) -> Result<(), OAuthError> {
        if record.client_id != credentials.client_id || record.realm != realm {
            return Err(OAuthError::unknown_deferred_auth_id());
        }
        self.authenticate(realm, client, credentials, Some(record)).await?;
        owner_decision(
            record,
            realm,
            &credentials.client_id,
            proof,
            self.clients.requires_dpop(client),
        )
    }
}
