//! The federated-client tests of `keycloak_federation.rs` against a Keycloak that searches the
//! `dtr.owner` client attribute (`--spi-client--jpa--searchable-attributes`, as
//! docs/federation.md advises for a realm with many clients): the proxy finds the clients it
//! owns with the Admin API's `q=` search and never lists the realm's clients.

mod common;

/// Keycloak searching the attribute that marks the clients the proxy provisioned.
fn bed() -> &'static common::keycloak::Keycloak {
    common::keycloak::keycloak_searching("dtr.owner")
}

const SEARCHABLE: bool = true;

include!("cases/keycloak_federation.rs");
