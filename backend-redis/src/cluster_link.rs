//! The connection of a Redis Cluster store opened by URL: made on first use (so a
//! consumer can start while the cluster is down), shared by concurrent calls, and never
//! holding on to a failed attempt. Once made, the cluster connection follows the cluster
//! by itself (slots, failovers, reconnection to a node).

use std::sync::Arc;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::RedisResult;
use tokio::sync::Mutex;

use crate::server::{self, Evictions};

/// A lazily opened cluster connection. Cheap to clone: clones share it.
#[derive(Clone)]
pub(crate) struct ClusterLink(Arc<Inner>);

struct Inner {
    client: ClusterClient,
    conn: Mutex<Option<ClusterConnection>>,
    /// The fitness check of a new connection: whether eviction is allowed, the eviction
    /// count to update, the target for messages.
    vet: (bool, Arc<Evictions>, String),
}

impl ClusterLink {
    /// A link that has not connected yet (no I/O here).
    pub(crate) fn new(client: ClusterClient, vet: (bool, Arc<Evictions>, String)) -> Self {
        ClusterLink(Arc::new(Inner {
            client,
            conn: Mutex::new(None),
            vet,
        }))
    }

    /// The connection, made now if there is none yet. Calls that arrive during an
    /// attempt wait for it; a failed attempt leaves nothing behind, so the next call tries
    /// again (each attempt bounded by the client's connection timeout).
    pub(crate) async fn get(&self) -> RedisResult<ClusterConnection> {
        let mut slot = self.0.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let mut conn = self.0.client.get_async_connection().await?;
        // Every primary is checked before the connection is used (an evicting or
        // read-only server is refused); a refused connection is not kept.
        let (allow_eviction, evictions, target) = &self.0.vet;
        server::vet(&mut conn, *allow_eviction, evictions, target).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }
}
