//! Test support shared by eventonce's backend tests: a fault-injecting TCP proxy, throwaway
//! `redis-server` processes, and the fault matrix every networked backend runs.
#![allow(missing_docs)]

pub mod faults;
pub mod proxy;
pub mod redis_process;

pub use proxy::{FaultProxy, ProxyMode};
pub use redis_process::RedisProcess;
