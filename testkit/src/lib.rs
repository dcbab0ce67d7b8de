//! Test support shared by eventonce's backend tests: a fault-injecting TCP proxy, throwaway
//! `redis-server` processes, and the fault matrix every networked backend runs.
//!
//! Everything here panics when a test's setup fails (a port that cannot be bound, a
//! `redis-server` that does not start), and every phase of the fault matrix panics when
//! the store breaks its contract: a panic is a failed test, so nothing carries a
//! `# Panics` section.
#![allow(missing_docs)]
#![allow(
    clippy::missing_panics_doc,
    reason = "test support: a panic is a failed setup or a failed check, which fails the test"
)]

pub mod faults;
pub mod kafka;
pub mod large_batch;
pub mod postgres_tls;
pub mod proxy;
pub mod redis_process;

pub use kafka::{kafka_bootstrap, unique_name};
pub use postgres_tls::{postgres_tls, PostgresTls};
pub use proxy::{FaultProxy, ProxyMode};
pub use redis_process::RedisProcess;
