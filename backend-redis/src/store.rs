//! The [`IdempotencyStore`] implementation: one script call per transition, batches in
//! one round trip on a single server and key by key on a cluster.

use std::time::Duration;

use async_trait::async_trait;
use eventonce_core::backend::{
    check_arguments, check_batch, check_complete_then_claim, check_completions,
};
use eventonce_core::{Claim, Completion, IdempotencyStore, Record, StoreError};
use futures_util::future::join_all;
use redis::Script;

use crate::connection::RedisStore;
use crate::record::{millis, now_ms, record_of};
use crate::scripts::{CLAIM, COMPLETE, EXTEND, EXTEND_MANY, GET, RELEASE, RELEASE_MANY, SETTLE};

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn try_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        check_arguments(key, owner, Some(lease))?;
        let mut conn = self.connection().await?;
        let code: i64 = CLAIM
            .key(key)
            .arg(owner)
            .arg(millis(lease))
            .arg(now_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        claim_from_code(key, code)
    }

    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(ttl))?;
        self.flag(&COMPLETE, key, owner, Some(millis(ttl))).await
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        check_arguments(key, owner, None)?;
        self.flag(&RELEASE, key, owner, None).await
    }

    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(lease))?;
        self.flag(&EXTEND, key, owner, Some(millis(lease))).await
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidArgument("key must not be empty".into()));
        }
        let mut conn = self.connection().await?;
        let reply: Option<(Vec<u8>, i64)> = GET
            .key(key)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(reply.map(|(value, pttl)| record_of(&value, pttl)))
    }

    async fn try_claim_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        check_batch(keys, owner, Some(lease))?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_cluster() {
            return self.cluster_claim_many(keys, owner, lease).await;
        }
        let claims: Vec<&str> = keys.iter().map(String::as_str).collect();
        let codes = self.settle(&[], &claims, owner, lease).await?;
        keys.iter()
            .zip(codes)
            .map(|(key, code)| claim_from_code(key, code))
            .collect()
    }

    async fn complete_many(&self, completions: &[Completion]) -> Result<Vec<bool>, StoreError> {
        check_completions(completions)?;
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_cluster() {
            // Every key's call is sent and answered, whatever another shard does.
            return per_key(
                join_all(
                    completions
                        .iter()
                        .map(|c| self.complete(&c.key, &c.owner, c.ttl)),
                )
                .await,
            );
        }
        let codes = self.settle(completions, &[], "", Duration::ZERO).await?;
        Ok(codes.into_iter().map(|c| c == 1).collect())
    }

    async fn release_many(&self, keys: &[String], owner: &str) -> Result<Vec<bool>, StoreError> {
        check_batch(keys, owner, None)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_cluster() {
            return per_key(join_all(keys.iter().map(|k| self.release(k, owner))).await);
        }
        self.flags_many(&RELEASE_MANY, keys, owner, None).await
    }

    async fn extend_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        check_batch(keys, owner, Some(lease))?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_cluster() {
            return per_key(join_all(keys.iter().map(|k| self.extend(k, owner, lease))).await);
        }
        self.flags_many(&EXTEND_MANY, keys, owner, Some(lease))
            .await
    }

    async fn complete_then_claim(
        &self,
        completions: &[Completion],
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<(Result<Vec<bool>, StoreError>, Claim), StoreError> {
        check_complete_then_claim(completions, key, owner, lease)?;
        if self.is_cluster() {
            // Different slots: the completions and the claim go out at once, on their
            // own nodes; the claim's key is not among the completions, so order is moot.
            // Each half's answer stands on its own: a claim acquired is returned even when
            // a completion failed.
            let done = join_all(
                completions
                    .iter()
                    .map(|c| self.complete(&c.key, &c.owner, c.ttl)),
            );
            let (done, claim) =
                futures_util::future::join(done, self.try_claim(key, owner, lease)).await;
            return Ok((per_key(done), claim?));
        }
        let mut codes = self.settle(completions, &[key], owner, lease).await?;
        let claim = claim_from_code(key, codes.pop().unwrap_or_default())?;
        Ok((Ok(codes.into_iter().map(|c| c == 1).collect()), claim))
    }

    fn backend_name(&self) -> &'static str {
        "redis"
    }
}
impl RedisStore {
    async fn flag(
        &self,
        script: &Script,
        key: &str,
        owner: &str,
        ms: Option<u64>,
    ) -> Result<bool, StoreError> {
        let mut invocation = script.key(key);
        invocation.arg(owner);
        if let Some(ms) = ms {
            invocation.arg(ms).arg(now_ms());
        }
        let mut conn = self.connection().await?;
        let result: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(result == 1)
    }

    /// `try_claim_many` on a cluster: every key claimed on its own node, all answered
    /// (none cancelled by another's failure). When one fails, the claims acquired on the
    /// healthy nodes are released before the failure is reported, so no claim of a batch
    /// that answered with an error is left to block redeliveries for a lease.
    async fn cluster_claim_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        let results = join_all(keys.iter().map(|k| self.try_claim(k, owner, lease))).await;
        if results.iter().all(Result::is_ok) {
            return Ok(results.into_iter().flatten().collect());
        }
        let acquired: Vec<&String> = keys
            .iter()
            .zip(&results)
            .filter(|(_, r)| matches!(r, Ok(Claim::Acquired)))
            .map(|(k, _)| k)
            .collect();
        // Owner-checked: only this call's own claims go. One that cannot be released (its
        // node failed meanwhile) expires after the lease.
        join_all(acquired.into_iter().map(|k| self.release(k, owner))).await;
        let mut failures = results.into_iter().filter_map(Result::err);
        Err(failures.next().unwrap_or(StoreError::InvalidArgument(
            "no failure in a failed batch".into(),
        )))
    }

    /// One `SETTLE` call: completions, then claims, in one round trip.
    async fn settle(
        &self,
        completions: &[Completion],
        claims: &[&str],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<i64>, StoreError> {
        let mut invocation = SETTLE.prepare_invoke();
        for c in completions {
            invocation.key(&c.key);
        }
        for key in claims {
            invocation.key(*key);
        }
        invocation.arg(now_ms()).arg(completions.len());
        for c in completions {
            invocation.arg(&c.owner).arg(millis(c.ttl));
        }
        if !claims.is_empty() {
            invocation.arg(owner).arg(millis(lease));
        }
        let mut conn = self.connection().await?;
        let codes: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        if codes.len() != completions.len() + claims.len() {
            return Err(StoreError::InvalidData {
                key: claims
                    .first()
                    .map(|k| (*k).to_owned())
                    .or_else(|| completions.first().map(|c| c.key.clone()))
                    .unwrap_or_default(),
                detail: format!(
                    "batch script answered {} codes for {} keys",
                    codes.len(),
                    completions.len() + claims.len()
                ),
            });
        }
        Ok(codes)
    }

    /// A per-key batch script (`RELEASE_MANY`, `EXTEND_MANY`) in one round trip.
    async fn flags_many(
        &self,
        script: &Script,
        keys: &[String],
        owner: &str,
        lease: Option<Duration>,
    ) -> Result<Vec<bool>, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        invocation.arg(owner);
        if let Some(lease) = lease {
            invocation.arg(millis(lease)).arg(now_ms());
        }
        let mut conn = self.connection().await?;
        let flags: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        if flags.len() != keys.len() {
            return Err(StoreError::InvalidData {
                key: keys[0].clone(),
                detail: format!(
                    "batch script answered {} flags for {} keys",
                    flags.len(),
                    keys.len()
                ),
            });
        }
        Ok(flags.into_iter().map(|f| f == 1).collect())
    }
}

/// A claim script's answer.
fn claim_from_code(key: &str, code: i64) -> Result<Claim, StoreError> {
    match code {
        1 => Ok(Claim::Acquired),
        2 => Ok(Claim::InProgress),
        3 => Ok(Claim::Completed),
        other => Err(StoreError::InvalidData {
            key: key.to_owned(),
            detail: format!("claim script answered {other}"),
        }),
    }
}

/// Per-key answers of a batch sent key by key (a cluster): all of them, or
/// [`StoreError::Partial`] with the answers that came and the first failure.
fn per_key(results: Vec<Result<bool, StoreError>>) -> Result<Vec<bool>, StoreError> {
    if results.iter().all(Result::is_ok) {
        return Ok(results.into_iter().flatten().collect());
    }
    let mut error = None;
    let answers = results
        .into_iter()
        .map(|r| match r {
            Ok(answer) => Some(answer),
            Err(err) => {
                error.get_or_insert(err);
                None
            }
        })
        .collect();
    Err(StoreError::Partial {
        answers,
        error: Box::new(error.unwrap_or(StoreError::InvalidArgument(
            "no failure in a failed batch".into(),
        ))),
    })
}
