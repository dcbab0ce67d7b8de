//! The connection of a store opened by URL: made on demand, shared by concurrent calls,
//! replaced once it breaks, and never holding on to a failed attempt.
//!
//! redis' `ConnectionManager` starts a new connection attempt as soon as a call fails and
//! keeps that attempt's result for the next call. While the server is down the attempt
//! fails, and its error stays there: the first call after the server is back gets the
//! old "Connection refused" (and, as the circuit breaker's probe, opens the breaker for
//! another cool-down). Here an attempt's result goes only to the calls that waited for it;
//! a failed attempt leaves no connection behind, so the next call makes a new attempt.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, RedisResult};

type Attempt = Shared<BoxFuture<'static, RedisResult<MultiplexedConnection>>>;

/// The check of every new connection before any call uses it (see `server`): its error
/// is the attempt's.
pub(crate) type Vet =
    Arc<dyn Fn(MultiplexedConnection) -> BoxFuture<'static, RedisResult<()>> + Send + Sync>;

/// A lazily opened, replaceable connection. Cheap to clone: clones share it.
#[derive(Clone)]
pub(crate) struct Link(Arc<Inner>);

struct Inner {
    client: Client,
    config: AsyncConnectionConfig,
    vet: Vet,
    slot: Mutex<Slot>,
}

struct Slot {
    /// Numbers the attempts, so that a late result or report about an older connection
    /// never replaces a newer one.
    generation: u64,
    state: State,
}

enum State {
    /// No connection and no attempt: the next call opens one.
    Idle,
    /// An attempt in flight, driven by a task of its own.
    Connecting(Attempt),
    Ready(MultiplexedConnection),
}

impl Link {
    /// A link that has not connected yet (no I/O here); every connection it opens passes
    /// `vet` first.
    pub(crate) fn new(client: Client, config: AsyncConnectionConfig, vet: Vet) -> Self {
        Link(Arc::new(Inner {
            client,
            config,
            vet,
            slot: Mutex::new(Slot {
                generation: 0,
                state: State::Idle,
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.0
            .slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The connection and its generation: the current one, else the attempt in flight,
    /// else a new attempt. A failed attempt's error goes to the calls that waited for it.
    pub(crate) async fn get(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        let (id, attempt) = {
            let mut slot = self.lock();
            match &slot.state {
                State::Ready(conn) => return Ok((slot.generation, conn.clone())),
                State::Connecting(attempt) => (slot.generation, attempt.clone()),
                State::Idle => self.start(&mut slot),
            }
        };
        let result = attempt.await;
        settle(&self.0, id, &result);
        result.map(|conn| (id, conn))
    }

    /// Starts an attempt. It runs in a task of its own: it finishes, and is forgotten if
    /// it failed, even when every call waiting for it gave up (a guard's store timeout is
    /// usually shorter than the connection timeout). Must run inside a Tokio runtime.
    fn start(&self, slot: &mut Slot) -> (u64, Attempt) {
        slot.generation += 1;
        let id = slot.generation;
        let client = self.0.client.clone();
        let config = self.0.config.clone();
        let vet = Arc::clone(&self.0.vet);
        let attempt: Attempt = async move {
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            vet(conn.clone()).await?;
            Ok(conn)
        }
        .boxed()
        .shared();
        slot.state = State::Connecting(attempt.clone());
        let driven = attempt.clone();
        let inner: Weak<Inner> = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            let result = driven.await;
            if let Some(inner) = inner.upgrade() {
                settle(&inner, id, &result);
            }
        });
        (id, attempt)
    }

    /// A command on connection `id` failed with `err`. When the error means the
    /// connection is gone (dropped, reset, a garbled reply), the connection is dropped and
    /// a new attempt starts at once in the background.
    fn failed(&self, id: u64, err: &RedisError) {
        if !err.is_unrecoverable_error() {
            return;
        }
        let mut slot = self.lock();
        if slot.generation == id && matches!(slot.state, State::Ready(_)) {
            // Driven by its task; the next call waits for it.
            let _ = self.start(&mut slot);
        }
    }

    /// `result` of a command on connection `id`, after [`failed`](Self::failed) has seen
    /// its error.
    pub(crate) fn noted<T>(&self, id: u64, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(err) = &result {
            self.failed(id, err);
        }
        result
    }
}

/// The end of attempt `id`: its connection becomes the current one, or, when it failed,
/// nothing is kept.
fn settle(inner: &Inner, id: u64, result: &RedisResult<MultiplexedConnection>) {
    let mut slot = inner
        .slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if slot.generation == id && matches!(slot.state, State::Connecting(_)) {
        slot.state = match result {
            Ok(conn) => State::Ready(conn.clone()),
            Err(_) => State::Idle,
        };
    }
}
