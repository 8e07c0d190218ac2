//! The DTR vocabulary: wire names, request parameters, OAuth errors, and which path is which
//! endpoint. Plain data and pure functions; every other layer builds on it.

pub mod errors;
pub mod params;
pub mod routes;
pub mod wire;
