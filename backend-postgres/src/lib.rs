//! A PostgreSQL [`IdempotencyStore`](eventonce_core::IdempotencyStore) for eventonce, on
//! sqlx — and the one store that can commit the idempotency record in the same transaction
//! as the handler's own writes ([`TransactionalStore`](eventonce_core::TransactionalStore),
//! used by `Guard::run_in_transaction`).
//!
//! Every trait method is one SQL statement. Expiry is judged by the database clock
//! (`now()`), never the client's. Records live in one table (default
//! `public.eventonce_records`; schema and table are configurable), created by the migration
//! shipped with this crate ([`PostgresStore::migrate`], run by [`PostgresStore::connect`]).
//! Expired records are ignored by every statement and removed by a background reaper
//! ([`PostgresStore::spawn_reaper`]) that sweeps the table's pages, a range and a batch at
//! a time, skipping locked rows, so it never waits for a claim.
//!
//! A record is its key (as written), a one-byte state, the owner token, two timestamps, an
//! optional stored result, and the key's 8-byte digest, under the table's one index
//! (unique): about 225 bytes with the index for keys of 90 bytes. A completion changes no
//! indexed column.
//!
//! Statements that lock several records lock them in key order, so two of them sharing
//! keys never deadlock. A claim never waits long for a record another transaction holds (a
//! claim inside `Guard::run_in_transaction`, a batch being completed): after at most
//! [`PostgresOptions::lock_wait`] it answers `InProgress` for that key, and a batch claim
//! answers its other keys as usual.
//!
//! The `tls` feature (`postgres-tls` of `eventonce`) connects over TLS through rustls:
//! `sslmode=require`, `verify-ca` or `verify-full` in the URL, trusting the system's roots
//! and a private authority given as `sslrootcert=FILE` or
//! [`PostgresOptions::tls_root_cert`].
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod admin;
mod connection;
mod error;
mod options;
mod probe;
mod reaper;
mod sql;
mod store;
mod transaction;

pub use connection::PostgresStore;
pub use options::PostgresOptions;
pub use reaper::ReaperHandle;
pub use transaction::PgTx;
