//! Where the records live and how the pool is sized.

use std::time::Duration;

/// Where the records live, how the pool is sized, and which certificate authority TLS
/// trusts.
#[derive(Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The schema (created if missing). Default `public`.
    pub schema: String,
    /// The table. Default `eventonce_records`.
    pub table: String,
    /// Connections of the pool [`PostgresStore::connect_with`](crate::PostgresStore::connect_with) opens. Default 10.
    pub max_connections: u32,
    /// How long opening the first connection (at connect) and then waiting for a pooled
    /// connection may take. Default 5 s.
    pub acquire_timeout: Duration,
    /// How long a claim waits for a record another transaction holds before it answers
    /// `InProgress` (the statement's `lock_timeout`; at least 1 ms). Keep it well below the
    /// guard's store timeout. Default 50 ms.
    pub lock_wait: Duration,
    /// A PEM certificate authority to trust for TLS (`sslmode=verify-ca` or `verify-full`),
    /// in addition to the system's roots; takes the place of the URL's `sslrootcert=`.
    /// Needs the `tls` feature. Default none.
    pub tls_root_cert: Option<Vec<u8>>,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("lock_wait", &self.lock_wait)
            .field("tls_root_cert", &self.tls_root_cert.as_ref().map(Vec::len))
            .finish()
    }
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "public".into(),
            table: "eventonce_records".into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            lock_wait: Duration::from_millis(50),
            tls_root_cert: None,
        }
    }
}

impl PostgresOptions {
    /// Sets the schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the table.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Sets the pool size.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets the acquire timeout (the first connection's, then the pool's).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets how long a claim waits for a record another transaction holds.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Trusts this PEM certificate authority for TLS (the `tls` feature), as the URL's
    /// `sslrootcert=FILE` does: for a server whose certificate a private authority signed.
    /// The URL's `sslmode` still decides whether the certificate is checked:
    /// `verify-ca` checks that this authority (or a system root) signed it, `verify-full`
    /// also that it names the URL's host; `require` encrypts without checking.
    ///
    /// ```no_run
    /// # mod eventonce { pub use eventonce_core::*; pub mod postgres { pub use eventonce_postgres::*; } }
    /// use eventonce::postgres::{PostgresOptions, PostgresStore};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/ssl/private-ca.pem")?;
    /// let store = PostgresStore::connect_with(
    ///     "postgres://app@db.internal:5432/app?sslmode=verify-full",
    ///     PostgresOptions::default().tls_root_cert(ca),
    /// )
    /// .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(pem.into());
        self
    }
}
