//! The fault injector: one consumer's view of the shared store. Each call meets the fault
//! the seed decides (a fault window on this consumer or on all, else a transient fault):
//! an error, a hang, an answer past the store timeout (the call dropped before it reaches
//! the store, or applied and its answer lost), latency within the timeout, or a batch call
//! that reaches the store for some keys only (`StoreError::Partial`). Without a fault a
//! call takes up to 3 ms, before or after it reaches the store, so that a consumer may drop
//! a run in the middle of one. A crashed consumer's calls hang forever, so nothing it still
//! sends reaches the store. Every call that reaches the store is logged for the oracle.

use std::sync::Arc;
use std::time::Duration;

use eventonce::{async_trait, Claim, Completion, IdempotencyStore, Record, StoreError};

use crate::world::World;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Claim,
    Complete,
    Release,
    Extend,
    Get,
    ClaimMany,
    CompleteMany,
    ReleaseMany,
    ExtendMany,
    CompleteThenClaim,
}

impl Op {
    pub(crate) fn batch(self) -> bool {
        matches!(
            self,
            Op::ClaimMany
                | Op::CompleteMany
                | Op::ReleaseMany
                | Op::ExtendMany
                | Op::CompleteThenClaim
        )
    }

    pub(crate) fn renews(self) -> bool {
        matches!(self, Op::Extend | Op::ExtendMany)
    }
}

/// What happens to one call.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Act {
    Pass,
    Fail,
    Hang,
    /// Wait, then make the call.
    Before(Duration),
    /// Make the call, then wait before answering.
    After(Duration),
    /// A batch call reaches the store for some keys only.
    Partial,
}

fn injected(what: &str) -> StoreError {
    StoreError::Unavailable {
        message: format!("injected fault: {what}"),
        source: None,
    }
}

pub(crate) struct Faulty {
    w: Arc<World>,
    slot: usize,
    inc: u32,
}

impl Faulty {
    pub(crate) fn new(w: Arc<World>, slot: usize, inc: u32) -> Self {
        Faulty { w, slot, inc }
    }

    /// Checks the keys and applies the fault up to the call.
    async fn enter(&self, op: Op, keys: &[&str]) -> Result<Act, StoreError> {
        self.w.check_keys(keys);
        let act = self.w.decide(self.slot, self.inc, op);
        match act {
            Act::Fail => return Err(injected("connection refused")),
            Act::Hang => std::future::pending::<()>().await,
            Act::Before(delay) => tokio::time::sleep(delay).await,
            _ => {}
        }
        if self.w.is_black_holed(self.inc) {
            std::future::pending::<()>().await; // crashed while waiting
        }
        Ok(act)
    }

    /// Applies the fault after the call.
    async fn leave(&self, act: Act) {
        if let Act::After(delay) = act {
            tokio::time::sleep(delay).await;
        }
    }

    fn coin(&self) -> bool {
        self.w.draw(|r| r.chance(0.5))
    }

    /// Completions reaching the store one by one for some keys only.
    async fn complete_some(&self, completions: &[Completion]) -> Result<Vec<bool>, StoreError> {
        let mut answers = Vec::with_capacity(completions.len());
        for c in completions {
            if self.coin() {
                let done = match &c.result {
                    Some(result) => self
                        .w
                        .store
                        .complete_with_result(&c.key, &c.owner, c.ttl, result),
                    None => self.w.store.complete(&c.key, &c.owner, c.ttl),
                };
                let done = done.await.ok();
                self.w.landed(
                    Op::Complete,
                    &[c.key.as_str()],
                    &[c.owner.as_str()],
                    &[done],
                );
                if let (Some(true), Some(result)) = (done, &c.result) {
                    self.w.landed_result(&c.key, &c.owner, result);
                }
                answers.push(done);
            } else {
                answers.push(None);
            }
        }
        partial(answers)
    }

    fn landed_completions(&self, completions: &[Completion], done: &Result<Vec<bool>, StoreError>) {
        let flags: Vec<Option<bool>> = match done {
            Ok(flags) => flags.iter().copied().map(Some).collect(),
            Err(err) => err.answers(completions.len()),
        };
        let keys: Vec<&str> = completions.iter().map(|c| c.key.as_str()).collect();
        let owners: Vec<&str> = completions.iter().map(|c| c.owner.as_str()).collect();
        self.w.landed(Op::CompleteMany, &keys, &owners, &flags);
        for (c, flag) in completions.iter().zip(&flags) {
            if let (Some(true), Some(result)) = (flag, &c.result) {
                self.w.landed_result(&c.key, &c.owner, result);
            }
        }
    }
}

/// A batch's answers: all there, or `StoreError::Partial`.
fn partial(answers: Vec<Option<bool>>) -> Result<Vec<bool>, StoreError> {
    if answers.iter().all(Option::is_some) {
        return Ok(answers.into_iter().flatten().collect());
    }
    Err(StoreError::Partial {
        answers,
        error: Box::new(injected("one shard refused")),
    })
}

fn strs(keys: &[String]) -> Vec<&str> {
    keys.iter().map(String::as_str).collect()
}

#[async_trait]
impl IdempotencyStore for Faulty {
    async fn try_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let asked = self.w.now();
        let act = self.enter(Op::Claim, &[key]).await?;
        let claim = self.w.store.try_claim(key, owner, lease).await?;
        self.w.landed_claims(&[key], owner, lease, &[claim]);
        self.leave(act).await;
        self.w.granted(&[key], owner, &[claim], asked);
        Ok(claim)
    }

    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let act = self.enter(Op::Complete, &[key]).await?;
        let done = self.w.store.complete(key, owner, ttl).await?;
        self.w.landed(Op::Complete, &[key], &[owner], &[Some(done)]);
        self.leave(act).await;
        Ok(done)
    }

    async fn complete_with_result(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        result: &[u8],
    ) -> Result<bool, StoreError> {
        let act = self.enter(Op::Complete, &[key]).await?;
        let done = self
            .w
            .store
            .complete_with_result(key, owner, ttl, result)
            .await?;
        self.w.landed(Op::Complete, &[key], &[owner], &[Some(done)]);
        if done {
            self.w.landed_result(key, owner, result);
        }
        self.leave(act).await;
        Ok(done)
    }

    async fn get_with_result(
        &self,
        key: &str,
    ) -> Result<Option<(Record, Option<Vec<u8>>)>, StoreError> {
        let act = self.enter(Op::Get, &[key]).await?;
        let found = self.w.store.get_with_result(key).await?;
        self.leave(act).await;
        Ok(found)
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        let act = self.enter(Op::Release, &[key]).await?;
        let released = self.w.store.release(key, owner).await?;
        self.w
            .landed(Op::Release, &[key], &[owner], &[Some(released)]);
        self.leave(act).await;
        Ok(released)
    }

    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        let asked = self.w.now();
        let act = self.enter(Op::Extend, &[key]).await?;
        let renewed = self.w.store.extend(key, owner, lease).await?;
        self.w
            .landed(Op::Extend, &[key], &[owner], &[Some(renewed)]);
        self.leave(act).await;
        self.w.confirmed(&[key], owner, &[renewed], asked);
        Ok(renewed)
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let act = self.enter(Op::Get, &[key]).await?;
        let record = self.w.store.get(key).await?;
        self.leave(act).await;
        Ok(record)
    }

    async fn try_claim_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        let refs = strs(keys);
        let asked = self.w.now();
        let act = self.enter(Op::ClaimMany, &refs).await?;
        if let Act::Partial = act {
            // Some keys claimed, then the call fails: the caller never learns which.
            let reached = self.w.draw(|r| r.below(keys.len() + 1));
            for key in &refs[..reached] {
                let claim = self.w.store.try_claim(key, owner, lease).await?;
                self.w.landed_claims(&[key], owner, lease, &[claim]);
            }
            return Err(injected("the batch claim failed half way"));
        }
        let claims = self.w.store.try_claim_many(keys, owner, lease).await?;
        self.w.landed_claims(&refs, owner, lease, &claims);
        self.leave(act).await;
        self.w.granted(&refs, owner, &claims, asked);
        Ok(claims)
    }

    async fn complete_many(&self, completions: &[Completion]) -> Result<Vec<bool>, StoreError> {
        let keys: Vec<&str> = completions.iter().map(|c| c.key.as_str()).collect();
        let act = self.enter(Op::CompleteMany, &keys).await?;
        if let Act::Partial = act {
            return self.complete_some(completions).await;
        }
        let done = self.w.store.complete_many(completions).await;
        self.landed_completions(completions, &done);
        self.leave(act).await;
        done
    }

    async fn release_many(&self, keys: &[String], owner: &str) -> Result<Vec<bool>, StoreError> {
        let refs = strs(keys);
        let act = self.enter(Op::ReleaseMany, &refs).await?;
        let owners = vec![owner; keys.len()];
        if let Act::Partial = act {
            let mut answers = Vec::with_capacity(keys.len());
            for key in &refs {
                let answer = if self.coin() {
                    self.w.store.release(key, owner).await.ok()
                } else {
                    None
                };
                self.w.landed(Op::Release, &[key], &[owner], &[answer]);
                answers.push(answer);
            }
            return partial(answers);
        }
        let released = self.w.store.release_many(keys, owner).await?;
        let flags: Vec<Option<bool>> = released.iter().copied().map(Some).collect();
        self.w.landed(Op::ReleaseMany, &refs, &owners, &flags);
        self.leave(act).await;
        Ok(released)
    }

    async fn extend_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let refs = strs(keys);
        let asked = self.w.now();
        let act = self.enter(Op::ExtendMany, &refs).await?;
        let owners = vec![owner; keys.len()];
        if let Act::Partial = act {
            let mut answers = Vec::with_capacity(keys.len());
            for key in &refs {
                let answer = if self.coin() {
                    self.w.store.extend(key, owner, lease).await.ok()
                } else {
                    None
                };
                self.w.landed(Op::Extend, &[key], &[owner], &[answer]);
                if let Some(renewed) = answer {
                    // A key that reached the store was renewed like any other.
                    self.w.confirmed(&[key], owner, &[renewed], asked);
                }
                answers.push(answer);
            }
            return partial(answers);
        }
        let renewed = self.w.store.extend_many(keys, owner, lease).await?;
        let flags: Vec<Option<bool>> = renewed.iter().copied().map(Some).collect();
        self.w.landed(Op::ExtendMany, &refs, &owners, &flags);
        self.leave(act).await;
        self.w.confirmed(&refs, owner, &renewed, asked);
        Ok(renewed)
    }

    async fn complete_then_claim(
        &self,
        completions: &[Completion],
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<(Result<Vec<bool>, StoreError>, Claim), StoreError> {
        let mut keys: Vec<&str> = completions.iter().map(|c| c.key.as_str()).collect();
        keys.push(key);
        let asked = self.w.now();
        let act = self.enter(Op::CompleteThenClaim, &keys).await?;
        if let Act::Partial = act {
            if self.coin() {
                // The completions are written, then the claim fails.
                let done = self.w.store.complete_many(completions).await;
                self.landed_completions(completions, &done);
                return Err(injected("the claim after the completions failed"));
            }
            // Some completions fail, the claim goes through.
            let done = self.complete_some(completions).await;
            let claim = self.w.store.try_claim(key, owner, lease).await?;
            self.w.landed_claims(&[key], owner, lease, &[claim]);
            self.w.granted(&[key], owner, &[claim], asked);
            return Ok((done, claim));
        }
        let (done, claim) = self
            .w
            .store
            .complete_then_claim(completions, key, owner, lease)
            .await?;
        self.landed_completions(completions, &done);
        self.w.landed_claims(&[key], owner, lease, &[claim]);
        self.leave(act).await;
        self.w.granted(&[key], owner, &[claim], asked);
        Ok((done, claim))
    }

    fn backend_name(&self) -> &'static str {
        self.w.store.backend_name()
    }

    /// Small chunks (2 to 4 keys, by consumer), so that a batch spans several store calls
    /// and a fault can hit one chunk of it and not the others.
    fn max_batch_chunk(&self) -> usize {
        2 + self.slot % 3
    }
}
