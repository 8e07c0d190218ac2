//! dtr-proxy: a reverse-proxy sidecar that adds the OpenID Connect Deferred Token Response
//! flow to an unmodified code-flow OpenID Provider (Keycloak first).
//!
//! Layers, each depending only on those before it (`docs/architecture.md`):
//! 1. vocabulary: [`protocol`] (wire names, parameters, errors, routes), [`clock`], [`crypto`],
//!    [`http`], [`metrics`], [`store`], [`timers`], [`tls`], [`webhook`] (signatures), [`config`],
//!    [`telemetry`] (traces), [`upstream`];
//! 2. protocol state and checks: [`records`], [`clients`], [`dpop`], [`client_auth`],
//!    [`client_keys`];
//! 3. [`endpoints`]: authorize, acknowledge, exchange, poll, cancel, discovery, completion,
//!    ping;
//! 4. [`serve`]: the public and admin services and their listeners;
//! 5. composition: [`app`] (and `main`).
// The effective-settings document (`config::effective`) is one large `json!` literal.
#![recursion_limit = "256"]

pub mod clock;
pub mod config;
pub mod crypto;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod statements;
pub mod store;
pub mod telemetry;
pub mod timers;
pub mod tls;
pub mod upstream;
pub mod webhook;

pub mod client_auth;
pub mod client_keys;
pub mod clients;
pub mod dpop;
pub mod federation;
pub mod records;

pub mod endpoints;

pub mod serve;

pub mod app;

pub use app::{start, start_on, Running};
pub use config::Config;
