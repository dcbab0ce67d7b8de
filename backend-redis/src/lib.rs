//! A Redis [`IdempotencyStore`](eventonce_core::IdempotencyStore) for eventonce: the production store for consumers that
//! share a topic.
//!
//! Every transition is one round trip: a Lua script, loaded once and run by `EVALSHA`
//! (reloaded on `NOSCRIPT`), that checks the owner token and writes atomically; a claim on
//! Redis 7 and later is the plain `SET ... NX GET` (set if absent, answering what was
//! there), the `CLAIM` script on an older server. There is no unconditional `SET` or
//! `DEL`. Expiry is judged by the Redis server's clock (`PX`
//! TTLs). Keys written by an older writer (a bare `"1"`, `"completed"`, JSON metadata)
//! count as completed, except a JSON object whose `status` (or `state`) is `"processing"`,
//! which counts as another consumer's claim; so a service can switch to eventonce on a
//! live Redis without reprocessing.
//!
//! Works with a single Redis (`redis://`, `rediss://` with the `tls` feature, user and
//! password in the URL) and with Redis Cluster ([`RedisStore::connect_cluster`]): each
//! script touches one key, so it runs on the key's node.
//!
//! Failure handling is the guard's: every call is bounded by the store timeout, and a
//! circuit breaker answers at once during an outage. The store itself never retries a
//! command. Its connection is opened on demand ([`RedisStore::connect`] opens it at once
//! and reports why it cannot, [`RedisStore::connect_lazy`] at the first call), replaced in
//! the background once it breaks, and a failed attempt leaves nothing behind: the first
//! call after an outage connects afresh.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod admin;
mod connection;
mod error;
mod link;
mod plain;
mod record;
mod scripts;
mod server;
mod store;

pub use connection::{ExistingConnection, RedisOptions, RedisStore, DEFAULT_TIMEOUT};
pub use eventonce_core::backend::redact_url;
pub use server::{ServerReport, EVICTED_KEYS_TOTAL, NO_EVICTION};
