//! Serving: the public port (pass-through and the DTR endpoints), the internal admin port, and
//! the listeners under both.

pub mod access;
pub mod admin;
pub mod drain;
pub mod linger;
pub mod proxy;
pub mod server;
