//! dtr-proxy: a reverse-proxy sidecar that adds the OpenID Connect Deferred Token Response
//! flow to an unmodified code-flow OpenID Provider (Keycloak first).

pub mod admin;
pub mod app;
pub mod client_auth;
pub mod client_keys;
pub mod config;
pub mod crypto;
pub mod dpop;
pub mod events;
pub mod http;
pub mod metrics;
pub mod ping;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod store;
pub mod upstream;
pub mod webhook;

pub use config::Config;
pub use server::{start, start_on, Running};
