//! Where the records live and how the pool is sized.

use std::time::Duration;

/// Where the records live and how the pool is sized.
#[derive(Debug, Clone)]
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
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "public".into(),
            table: "eventonce_records".into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            lock_wait: Duration::from_millis(50),
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
}
