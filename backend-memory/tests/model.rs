//! A random sequence of operations on a small `MemoryStore` agrees with a simple model,
//! under Tokio's paused clock (so leases and TTLs expire exactly when the model says).
//!
//! The model's capacity rules: a new record fits while fewer live records than the
//! capacity are held (expired ones make room unseen); else the least recently used live
//! completed record is evicted (and counted); else the claim is refused. A live claim is
//! never evicted.

use std::collections::HashMap;
use std::time::Duration;

use eventonce_core::{Claim, IdempotencyStore, RecordState};
use eventonce_memory::MemoryStore;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Claim { key: u8, owner: u8, ms: u64 },
    Complete { key: u8, owner: u8, ms: u64 },
    Release { key: u8, owner: u8 },
    Extend { key: u8, owner: u8, ms: u64 },
    Get { key: u8 },
    Advance { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..6;
    let owner = 0u8..3;
    // Durations of a second or more: the cache's own eviction runs on the real clock and
    // must not act while the paused test clock stands still. Multiples of 500 ms make
    // records expire exactly at the instant the model checks them.
    let ms = (2u64..8).prop_map(|n| n * 500);
    prop_oneof![
        3 => (key.clone(), owner.clone(), ms.clone()).prop_map(|(key, owner, ms)| Op::Claim { key, owner, ms }),
        2 => (key.clone(), owner.clone(), ms.clone()).prop_map(|(key, owner, ms)| Op::Complete { key, owner, ms }),
        1 => (key.clone(), owner.clone()).prop_map(|(key, owner)| Op::Release { key, owner }),
        1 => (key.clone(), owner.clone(), ms).prop_map(|(key, owner, ms)| Op::Extend { key, owner, ms }),
        1 => key.prop_map(|key| Op::Get { key }),
        2 => (0u64..10).prop_map(|n| Op::Advance { ms: n * 500 }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct ModelEntry {
    completed: bool,
    owner: u8,
    expires_at: u64,
    /// When the record was last used (completed, or answered `Completed`): the least
    /// recently used completed record is the one evicted.
    used: u64,
}

struct Model {
    now: u64,
    capacity: usize,
    entries: HashMap<u8, ModelEntry>,
    uses: u64,
    evictions: u64,
    refused: u64,
}

impl Model {
    fn live(&self, key: u8) -> Option<ModelEntry> {
        self.entries
            .get(&key)
            .copied()
            .filter(|e| e.expires_at > self.now)
    }

    fn held(&self, key: u8, owner: u8) -> bool {
        self.live(key)
            .is_some_and(|e| !e.completed && e.owner == owner)
    }

    fn next_use(&mut self) -> u64 {
        self.uses += 1;
        self.uses
    }

    /// Makes room for a new record of `key`: `false` when every live record is a claim.
    fn make_room(&mut self, key: u8) -> bool {
        let now = self.now;
        self.entries.retain(|k, e| *k != key && e.expires_at > now);
        if self.entries.len() < self.capacity {
            return true;
        }
        let lru = self
            .entries
            .iter()
            .filter(|(_, e)| e.completed)
            .min_by_key(|(_, e)| e.used)
            .map(|(k, _)| *k);
        match lru {
            Some(k) => {
                self.entries.remove(&k);
                self.evictions += 1;
                true
            }
            None => false,
        }
    }
}

fn key_name(k: u8) -> String {
    format!("model:key:{k}")
}

fn owner_name(o: u8) -> String {
    format!("owner-{o}")
}

async fn check(capacity: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = MemoryStore::with_capacity(capacity as u64);
    let mut model = Model {
        now: 0,
        capacity,
        entries: HashMap::new(),
        uses: 0,
        evictions: 0,
        refused: 0,
    };
    for op in ops {
        match op {
            Op::Claim { key, owner, ms } => check_claim(&store, &mut model, key, owner, ms).await?,
            Op::Complete { key, owner, ms } => {
                let got = store
                    .complete(
                        &key_name(key),
                        &owner_name(owner),
                        Duration::from_millis(ms),
                    )
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let want = model.held(key, owner);
                if want {
                    let (expires_at, used) = (model.now + ms, model.next_use());
                    model.entries.insert(
                        key,
                        ModelEntry {
                            completed: true,
                            owner,
                            expires_at,
                            used,
                        },
                    );
                }
                prop_assert_eq!(got, want, "{:?}", op);
            }
            Op::Release { key, owner } => {
                let got = store
                    .release(&key_name(key), &owner_name(owner))
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let want = model.held(key, owner);
                if want {
                    model.entries.remove(&key);
                }
                prop_assert_eq!(got, want, "{:?}", op);
            }
            Op::Extend { key, owner, ms } => {
                let got = store
                    .extend(
                        &key_name(key),
                        &owner_name(owner),
                        Duration::from_millis(ms),
                    )
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let want = model.held(key, owner);
                if want {
                    if let Some(e) = model.entries.get_mut(&key) {
                        e.expires_at = model.now + ms;
                    }
                }
                prop_assert_eq!(got, want, "{:?}", op);
            }
            Op::Get { key } => check_get(&store, &model, key).await?,
            Op::Advance { ms } => {
                tokio::time::advance(Duration::from_millis(ms)).await;
                model.now += ms;
            }
        }
        let stats = store.stats();
        prop_assert_eq!(stats.evictions, model.evictions, "evictions");
        prop_assert_eq!(stats.refused_claims, model.refused, "refused claims");
    }
    Ok(())
}

/// A claim of `key` by `owner` for `ms`: the store's answer is the model's.
async fn check_claim(
    store: &MemoryStore,
    model: &mut Model,
    key: u8,
    owner: u8,
    ms: u64,
) -> Result<(), TestCaseError> {
    let got = store
        .try_claim(
            &key_name(key),
            &owner_name(owner),
            Duration::from_millis(ms),
        )
        .await;
    let want = match model.live(key) {
        Some(e) if e.completed => {
            let used = model.next_use();
            if let Some(e) = model.entries.get_mut(&key) {
                e.used = used;
            }
            Some(Claim::Completed)
        }
        Some(_) => Some(Claim::InProgress),
        None if model.make_room(key) => {
            let (expires_at, used) = (model.now + ms, model.next_use());
            model.entries.insert(
                key,
                ModelEntry {
                    completed: false,
                    owner,
                    expires_at,
                    used,
                },
            );
            Some(Claim::Acquired)
        }
        None => {
            model.refused += 1;
            None
        }
    };
    prop_assert_eq!(
        got.as_ref().ok(),
        want.as_ref(),
        "claim {} by {} for {}ms: {:?}",
        key,
        owner,
        ms,
        got
    );
    Ok(())
}

/// A read of `key`: the record the store gives is the model's live entry.
async fn check_get(store: &MemoryStore, model: &Model, key: u8) -> Result<(), TestCaseError> {
    let got = store
        .get(&key_name(key))
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let want = model.live(key);
    prop_assert_eq!(got.is_some(), want.is_some(), "get {}", key);
    if let (Some(r), Some(e)) = (got, want) {
        let state = if e.completed {
            RecordState::Completed
        } else {
            RecordState::Processing
        };
        prop_assert_eq!(r.state, state);
        prop_assert_eq!(r.owner, Some(owner_name(e.owner)));
        prop_assert_eq!(
            r.ttl_left,
            Some(Duration::from_millis(e.expires_at - model.now))
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn memory_store_agrees_with_the_model(
        capacity in 1usize..5,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        runtime.block_on(check(capacity, ops))?;
    }
}
