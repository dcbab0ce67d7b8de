//! Helpers for store implementations: the argument checks every backend runs first, so
//! that they all reject the same input the same way, and the small pieces they share.
//!
//! ```
//! # mod eventonce { pub use eventonce_core::*; }
//! use std::time::Duration;
//! use eventonce::backend::{check_arguments, check_many};
//!
//! assert!(check_arguments("k", "owner-1", Some(Duration::from_secs(60))).is_ok());
//! assert!(check_arguments("", "owner-1", None).is_err());
//! assert!(check_many(["a", "b", "a"]).is_err());
//! ```

use std::time::Duration;

use crate::config::defaults::MAX_TTL;
use crate::error::StoreError;
use crate::identity::seeded_hasher;
pub use crate::redact::{password_of, redact_unparsable_url, redact_url, unescaped_password};
use crate::store::Completion;
#[cfg(doc)]
use crate::store::IdempotencyStore;

/// `now + duration`, or the latest representable instant not before it: never panics.
pub fn saturating_deadline(now: tokio::time::Instant, duration: Duration) -> tokio::time::Instant {
    now.checked_add(duration)
        .or_else(|| now.checked_add(MAX_TTL))
        .unwrap_or(now)
}

/// Checks the arguments every store receives; backends call it first so that they reject
/// the same inputs the same way.
///
/// # Errors
///
/// [`StoreError::InvalidArgument`] if `key` or `owner` is empty, or if `ttl` is shorter
/// than one millisecond or longer than [`MAX_TTL`].
pub fn check_arguments(key: &str, owner: &str, ttl: Option<Duration>) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument("key must not be empty".into()));
    }
    if owner.is_empty() {
        return Err(StoreError::InvalidArgument(
            "owner must not be empty".into(),
        ));
    }
    if let Some(ttl) = ttl {
        if ttl < Duration::from_millis(1) {
            return Err(StoreError::InvalidArgument(format!(
                "ttl must be at least one millisecond, got {ttl:?}"
            )));
        }
        if ttl > MAX_TTL {
            return Err(StoreError::InvalidArgument(format!(
                "ttl must be at most {} days, got {ttl:?}",
                MAX_TTL.as_secs() / 86_400
            )));
        }
    }
    Ok(())
}

/// Checks the arguments of a batch call on `keys`: each as [`check_arguments`] does, and
/// that they are distinct ([`check_many`]).
///
/// # Errors
///
/// [`StoreError::InvalidArgument`] if any key fails [`check_arguments`] (with `owner` and
/// `ttl`), or if a key appears twice.
pub fn check_batch(keys: &[String], owner: &str, ttl: Option<Duration>) -> Result<(), StoreError> {
    for key in keys {
        check_arguments(key, owner, ttl)?;
    }
    check_many(keys.iter().map(String::as_str))
}

/// Checks the completions of a batch call: each as [`check_arguments`] does, and that
/// their keys are distinct ([`check_many`]).
///
/// # Errors
///
/// [`StoreError::InvalidArgument`] if any completion fails [`check_arguments`] (its key,
/// owner and ttl), or if a key appears twice.
pub fn check_completions(completions: &[Completion]) -> Result<(), StoreError> {
    for c in completions {
        check_arguments(&c.key, &c.owner, Some(c.ttl))?;
    }
    check_many(completions.iter().map(|c| c.key.as_str()))
}

/// Checks the arguments of [`IdempotencyStore::complete_then_claim`]: the claim as
/// [`check_arguments`] does, the completions as [`check_completions`] does, and that the
/// claimed key is not one of theirs.
///
/// # Errors
///
/// [`StoreError::InvalidArgument`] if the claim (`key`, `owner`, `lease`) or a completion
/// fails [`check_arguments`], if two completions share a key, or if `key` is one of the
/// completions' keys.
pub fn check_complete_then_claim(
    completions: &[Completion],
    key: &str,
    owner: &str,
    lease: Duration,
) -> Result<(), StoreError> {
    check_arguments(key, owner, Some(lease))?;
    check_completions(completions)?;
    check_many(completions.iter().map(|c| c.key.as_str()).chain([key]))
}

/// Checks the arguments of [`IdempotencyStore::complete_then_claim_many`]: the claims as
/// [`check_batch`] does, the completions as [`check_completions`] does, and that no key
/// is both completed and claimed.
///
/// # Errors
///
/// [`StoreError::InvalidArgument`] if a claim (its key, `owner`, `lease`) or a completion
/// fails [`check_arguments`], or if a key appears twice among the completions and the
/// claims together.
pub fn check_complete_then_claim_many(
    completions: &[Completion],
    keys: &[String],
    owner: &str,
    lease: Duration,
) -> Result<(), StoreError> {
    for key in keys {
        check_arguments(key, owner, Some(lease))?;
    }
    for c in completions {
        check_arguments(&c.key, &c.owner, Some(c.ttl))?;
    }
    check_many(
        completions
            .iter()
            .map(|c| c.key.as_str())
            .chain(keys.iter().map(String::as_str)),
    )
}

/// Checks that the keys of a batch call are distinct: a key twice in one call has no
/// well-defined answer (and one SQL statement cannot touch a row twice). Backends call it
/// first so that they all reject the same input the same way.
///
/// # Errors
///
/// [`StoreError::InvalidArgument`] naming the first repeated key (in sorted order) if a key
/// appears more than once.
pub fn check_many<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<(), StoreError> {
    // Hashing each key once (foldhash, randomly seeded) beats sorting: keys share long
    // prefixes, and sorting 1,000 of them compared each prefix some 10,000 times.
    let keys: Vec<&str> = keys.into_iter().collect();
    let mut seen = std::collections::HashSet::with_capacity_and_hasher(keys.len(), seeded_hasher());
    if keys.iter().all(|key| seen.insert(*key)) {
        return Ok(());
    }
    // A repeated key: the sorted keys name the same one as always.
    let mut sorted = keys;
    sorted.sort_unstable();
    match sorted.windows(2).find(|w| w[0] == w[1]) {
        Some(twice) => Err(StoreError::InvalidArgument(format!(
            "key {:?} appears twice in one batch",
            twice[0]
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_key_is_named_first_in_sorted_order() {
        assert!(check_many(["c", "a", "b"]).is_ok());
        assert!(check_many(std::iter::empty()).is_ok());
        let many: Vec<String> = (0..1000).map(|i| format!("prefix:{i}")).collect();
        assert!(check_many(many.iter().map(String::as_str)).is_ok());
        match check_many(["d", "b", "d", "b", "c"]) {
            Err(StoreError::InvalidArgument(message)) => {
                assert!(message.contains("\"b\""), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
