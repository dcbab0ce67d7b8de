//! # eventonce-http
//!
//! An `Idempotency-Key` layer for HTTP services, after the IETF draft
//! `draft-ietf-httpapi-idempotency-key-header`, on the eventonce [`Guard`]: the same leases,
//! renewals, fencing owner tokens and payload conflict detection as for events, on every
//! store (memory, Redis, PostgreSQL).
//!
//! A request with an `Idempotency-Key` header runs the inner service once per key; a retry
//! with the same key gets the first response back (status, headers without the hop-by-hop
//! ones, body), marked `Idempotent-Replayed: true`. The request's fingerprint (method,
//! path, query and body) is recorded with the key:
//!
//! - no key on a route that requires one: `400 Bad Request`;
//! - a retry while the first request with that key is still running: `409 Conflict`;
//! - the key reused with another fingerprint: `422 Unprocessable Content`;
//! - a request body over the limit: `413 Content Too Large`;
//! - which responses are stored is [configurable](IdempotencyLayer::store_when): by
//!   default 2xx and 4xx, never 5xx; a response not stored releases the claim, so a retry
//!   runs again.
//!
//! ```
//! # mod eventonce { pub use eventonce_core::*; pub mod http { pub use eventonce_http::*; } }
//! use eventonce::{Guard, IdempotencyConfig};
//! use eventonce::http::IdempotencyLayer;
//!
//! # fn layer(store: impl eventonce::IdempotencyStore + 'static) -> Result<(), Box<dyn std::error::Error>> {
//! let guard = Guard::new(store, IdempotencyConfig::builder("orders-api").build()?);
//! let layer = IdempotencyLayer::new(guard).require_key(true);
//! // axum: Router::new().route("/orders", post(create)).layer(layer)
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod fingerprint;
mod layer;
mod service;
mod stored;

pub use eventonce_core::Guard;
pub use layer::{
    default_store_when, IdempotencyLayer, DEFAULT_EVENT_TYPE, DEFAULT_MAX_BODY_BYTES,
    MAX_KEY_LENGTH,
};
pub use service::{Idempotency, ResponseFuture};

/// The request header carrying the key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header marking a replayed response.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
