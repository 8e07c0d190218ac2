//! The DTR endpoints, each a value built from the handles it uses: the authorization rewrite
//! (step 1), the acknowledgment (step 2), the deferred grant at the token endpoint — exchange
//! (step 3) and poll (step 6) —, the completion webhook (step 4), pings (step 5),
//! cancellation (step 7), discovery, and the operator API. Each decides on plain data and leaves I/O to a thin
//! async shell; none renders, counts or logs its errors (the serving edge does, once).

pub mod acknowledge;
pub mod authorize;
pub mod back_channel;
pub mod cancel;
pub mod checks;
pub mod completion;
pub mod discovery;
pub mod events;
pub mod exchange;
pub mod operator;
pub mod ping;
pub mod poll;
pub mod respond;
pub mod revoke;
pub mod token;
