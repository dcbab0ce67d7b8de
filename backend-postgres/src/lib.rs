//! The Postgres store of eventonce. Not implemented yet: this crate is a placeholder so that
//! the workspace and the facade's `postgres` feature compile while the backend is built.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

/// The name this backend will report in logs.
pub const BACKEND_NAME: &str = "postgres";
