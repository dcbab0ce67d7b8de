//! Peer rows: the `idempotent` crate (crates.io), version 0.3, doing the work the guard
//! does for one event, through the crate's own store API (it has no "run this handler"
//! entry point in 0.3, so the few lines below are what a user of it writes).
//!
//! Why 0.3.0 and not the current 2.0.0: 1.0.0 and later declare `rust-version = 1.98`,
//! so they do not build on the stable 1.95 toolchain here; 0.3.0 (`rust-version = 1.94`)
//! is the newest release that does. Its Valkey/Redis store uses `redis = "1"`, the same
//! crate version as the workspace.
//!
//! Per event, as the guard does it:
//! - key: the event id (the crate's keys are opaque strings of at most 255 bytes);
//!   fingerprint: the crate's default (xxh3 of event type and payload bytes);
//! - new event: `try_insert` (claim) → handler → `complete` with an empty cached
//!   response. Redis: two `EVALSHA` round trips (a Lua claim that `HGET`s, `HSET`s and
//!   `PEXPIRE`s a hash; a Lua completion that checks the fencing token).
//! - duplicate: `try_insert` finds the completed entry (one `EVALSHA`; the entry is
//!   decoded from postcard) and the handler is skipped.
//! - handler failure: `try_insert` → failing handler → `remove` (a plain `DEL`, not
//!   fenced in 0.3). Redis: two round trips.
//!
//! Differences a reader of the table should know: the claim holds the key for the full
//! TTL (0.3 has one TTL per entry, no shorter processing lease), the memory store is an
//! actor task behind a channel, and its map is swept on an interval rather than bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::BenchmarkGroup;
use idempotent::fingerprint::{DefaultFingerprintStrategy, FingerprintStrategy};
use idempotent::store::{IdempotencyStore, InsertResult};
use idempotent::{CachedResponse, IdempotencyEntry, IdempotencyKey, Metadata};

/// The guard's default TTL for a completed event.
const TTL: Duration = Duration::from_secs(86_400);
const EVENT_TYPE: &str = "bench.order.placed.v1";

static N: AtomicU64 = AtomicU64::new(0);

fn unique() -> u64 {
    N.fetch_add(1, Ordering::Relaxed)
}

/// What the guard runs for one event, done with the crate's store: claim, run the handler,
/// then complete (success) or remove (failure). Returns whether the handler ran.
async fn run_once<S, F>(store: &S, n: u64, handler: F) -> bool
where
    S: IdempotencyStore,
    F: std::future::Future<Output = Result<(), String>>,
{
    let payload =
        serde_json::to_vec(&serde_json::json!({"order": n, "lines": [1, 2, 3]})).expect("payload");
    let key = IdempotencyKey::new(format!("{EVENT_TYPE}:bench-{n}")).expect("key");
    let fingerprint = DefaultFingerprintStrategy.compute(EVENT_TYPE, &payload);
    let entry = IdempotencyEntry::new(fingerprint, TTL);
    let claim = store.try_insert(&key, entry.clone()).await.expect("claim");
    let fencing_token = match claim {
        InsertResult::Claimed { fencing_token } => fencing_token,
        // Completed, or still processing elsewhere: the handler is skipped either way.
        InsertResult::Exists(_) => return false,
    };
    match handler.await {
        Ok(()) => {
            let response = CachedResponse {
                status_code: 200,
                metadata: Metadata::default(),
                body: Vec::new().into(),
            };
            store
                .complete(&key, entry.complete(response), fencing_token)
                .await
                .expect("complete");
        }
        Err(_) => store.remove(&key).await.expect("remove"),
    }
    true
}

/// The three rows on one store: new event, duplicate, handler failure; then each paired
/// with the guard's same work (`guard`, in `group`), alternating event by event.
fn rows<S: IdempotencyStore>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    store: &S,
    group: &str,
    guard: &eventonce::Guard,
) {
    g.bench_function("peer idempotent: new event", |b| {
        b.to_async(rt).iter(|| async {
            assert!(run_once(store, unique(), async { Ok(()) }).await);
        });
    });
    let dup = u64::MAX;
    rt.block_on(run_once(store, dup, async { Ok(()) }));
    g.bench_function("peer idempotent: duplicate", |b| {
        b.to_async(rt).iter(|| async {
            assert!(!run_once(store, dup, async { Ok(()) }).await);
        });
    });
    g.bench_function("peer idempotent: handler failure", |b| {
        b.to_async(rt).iter(|| async {
            assert!(run_once(store, unique(), async { Err("failed".to_owned()) }).await);
        });
    });
    let dup_event = super::event(u64::MAX - super::unique());
    let _ = rt.block_on(guard.run(&dup_event, async { Ok::<_, String>(()) }));
    super::paired(
        rt,
        group,
        "guard: new event / peer idempotent",
        || async {
            assert!(run_once(store, unique(), async { Ok(()) }).await);
        },
        || super::guard_new(guard),
    );
    super::paired(
        rt,
        group,
        "guard: duplicate / peer idempotent",
        || async {
            assert!(!run_once(store, dup, async { Ok(()) }).await);
        },
        || super::guard_dup(guard, &dup_event),
    );
    super::paired(
        rt,
        group,
        "guard: handler failure / peer idempotent",
        || async {
            assert!(run_once(store, unique(), async { Err("failed".to_owned()) }).await);
        },
        || super::guard_fail(guard),
    );
}

/// Rows on the crate's in-memory store (`idempotent::store::memory::MemoryStore`).
pub(crate) fn memory_rows(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    guard: &eventonce::Guard,
) {
    // The store spawns its actor task, so it is built inside the runtime.
    let store = {
        let _entered = rt.enter();
        idempotent::store::memory::MemoryStore::new(1024, Duration::from_secs(60))
    };
    rows(g, rt, &store, "memory", guard);
}

/// Rows on the crate's Valkey/Redis store (`idempotent::store::valkey::ValkeyStore`) at
/// `url`, under a key prefix of this run's own. Skipped with a message when it cannot
/// connect.
pub(crate) fn redis_rows(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    url: &str,
    guard: &eventonce::Guard,
) {
    let prefix = format!(
        "huleedu:idempotency:bench:peer-idempotent:{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    );
    let store = rt.block_on(async {
        let client = redis::Client::open(url).ok()?;
        idempotent::store::valkey::ValkeyStore::with_prefix(client, Some(&prefix))
            .await
            .ok()
    });
    let Some(store) = store else {
        eprintln!("peer idempotent (redis) skipped: cannot connect to {url}");
        return;
    };
    rows(g, rt, &store, "redis", guard);
}
