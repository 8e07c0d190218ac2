//! The DTR protocol: wire names, the authorization rewrite, the acknowledgment, the deferred
//! grant at the token endpoint, cancellation and discovery.

pub mod authorize;
pub mod cancel;
pub mod discovery;
pub mod errors;
pub mod params;
pub mod redirect;
pub mod respond;
pub mod routes;
pub mod state;
pub mod token;
pub mod wire;
