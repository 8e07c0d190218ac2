//! Federated clients against the real Keycloak: a URL client, never registered by hand, is
//! provisioned through Keycloak's Admin REST API by the realm's service account (granted
//! realm-management `manage-clients` here, as docs/federation.md asks of operators) and
//! completes a plain code flow and a DTR flow.
//!
//! The bed's Keycloak has the bed proxy's URL as its hostname; the federated proxy is a replica
//! of it (same store and keys), so the browser follows Keycloak's pages on the bed's origin and
//! the RP talks to the federated replica.
//!
//! Here Keycloak runs as it comes: it searches no custom client attribute, so it refuses the
//! proxy's `q=dtr.owner` search and the proxy lists the realm's clients instead.
//! `keycloak_federation_search.rs` runs the same tests against a Keycloak that searches it.

mod common;

/// Keycloak with its default settings.
fn bed() -> &'static common::keycloak::Keycloak {
    common::keycloak::keycloak()
}

const SEARCHABLE: bool = false;

include!("cases/keycloak_federation.rs");
