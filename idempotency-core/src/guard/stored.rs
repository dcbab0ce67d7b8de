//! `Guard::run_stored`: a run whose handler's answer is kept in the completed record, so
//! that a duplicate answers with the first run's value.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::batch::Encode;
use super::outcome::{Decision, Outcome, Scope};
use super::Guard;
use crate::error::GuardError;
use crate::identify::Identify;

/// What [`Guard::run_stored`] answers: [`Outcome`] with the first run's value for a
/// duplicate whose record keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum StoredOutcome<T> {
    /// The event was new: the handler ran once, and its value is recorded with the
    /// completion (unless over [`max_result_bytes`](crate::ConfigBuilder::max_result_bytes)).
    Processed(T),
    /// The event was completed before, with a result: the first run's value, decoded from
    /// the record. The handler was never polled.
    Replayed(T),
    /// The event was completed before without a result (a record written by
    /// [`Guard::run`], by an older version, by `KeyScheme::PythonV2`, a result over the
    /// size bound, or one that no longer decodes as `T`). The handler was never polled.
    Duplicate,
    /// The store failed and the configuration is `FailMode::Open`: the handler ran without
    /// protection (and nothing was recorded), so this may be a second run.
    Unprotected(T),
}

impl<T> StoredOutcome<T> {
    /// The value: the handler's, or the first run's for a replay; `None` for a
    /// [`Duplicate`](StoredOutcome::Duplicate) without a result.
    pub fn into_value(self) -> Option<T> {
        match self {
            StoredOutcome::Processed(v)
            | StoredOutcome::Replayed(v)
            | StoredOutcome::Unprotected(v) => Some(v),
            StoredOutcome::Duplicate => None,
        }
    }

    /// Whether the handler did not run this time (a replay or a plain duplicate).
    pub fn is_duplicate(&self) -> bool {
        matches!(self, StoredOutcome::Replayed(_) | StoredOutcome::Duplicate)
    }
}

/// What `run_stored` adds to a run: how to encode the handler's value, and the result the
/// record of a duplicate kept.
pub(super) struct Keep<T> {
    pub(super) encode: Encode<T>,
    pub(super) found: Option<Vec<u8>>,
}

impl Guard {
    /// [`run`](Self::run), keeping the handler's `Ok` value in the completed record (as
    /// JSON, in the same atomic write as the completion), so that a duplicate answers with
    /// it: [`StoredOutcome::Replayed`] with the first run's value, where `run` answers
    /// `Duplicate`. For a request/reply consumer or a saga step that must re-send the reply
    /// the first run computed, not compute a new one.
    ///
    /// - A value whose JSON is over [`max_result_bytes`](crate::ConfigBuilder::max_result_bytes)
    ///   (or that does not serialize) is not an error: the event is completed without it,
    ///   logged as `result_too_large` and counted in
    ///   [`GuardStats::results_dropped`](super::GuardStats::results_dropped); a duplicate
    ///   then answers [`StoredOutcome::Duplicate`].
    /// - A record without a result (written by `run`, an older version, `KeyScheme::PythonV2`)
    ///   answers [`StoredOutcome::Duplicate`]; so does one whose result no longer decodes
    ///   as `T` (counted in [`GuardStats::results_unreadable`](super::GuardStats::results_unreadable)).
    /// - The result travels with the completion wherever it goes: with
    ///   [`defer_completion`](crate::ConfigBuilder::defer_completion) it is written with the
    ///   next claim (or after the deferral delay), and a completion the store did not take
    ///   at once is retried with it. Until it is written, a duplicate finds the claim
    ///   processing and answers `InProgress`, as for any deferred completion.
    /// - A store that keeps no results (one not overriding
    ///   [`complete_with_result`](crate::IdempotencyStore::complete_with_result)) answers
    ///   duplicates as `Duplicate`.
    ///
    /// A replay reads the record once more after the claim found it completed (one
    /// `get_with_result`, which also serves the payload conflict check).
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::{Guard, IdempotencyConfig, IdempotencyStore, Identity, StoredOutcome};
    ///
    /// async fn reply(guard: &Guard, request_id: &str) -> Result<String, Box<dyn std::error::Error>> {
    ///     let event = Identity::new("quote.requested.v1", request_id);
    ///     match guard.run_stored(&event, async { Ok::<_, std::io::Error>("quote-17".to_owned()) }).await? {
    ///         StoredOutcome::Processed(reply) | StoredOutcome::Replayed(reply) | StoredOutcome::Unprotected(reply) => Ok(reply),
    ///         StoredOutcome::Duplicate => Err("answered before, reply not kept".into()),
    ///     }
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// Those of [`run`](Self::run).
    ///
    /// # Panics
    ///
    /// Resumes the handler's panic, after its claim is released.
    pub async fn run_stored<I, F, T, E>(
        &self,
        event: &I,
        handler: F,
    ) -> Result<StoredOutcome<T>, GuardError<E>>
    where
        I: Identify + ?Sized,
        F: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: std::fmt::Display,
    {
        let view = event.view();
        let mut keep = Keep {
            encode: |value: &T| serde_json::to_vec(value),
            found: None,
        };
        let run = || self.run_untraced(event, &view, handler, Some(&mut keep));
        let outcome = self.traced(&view, run).await?;
        Ok(match outcome {
            Outcome::Processed(value) => StoredOutcome::Processed(value),
            Outcome::Unprotected(value) => StoredOutcome::Unprotected(value),
            Outcome::Duplicate => self.replayed(keep.found),
        })
    }

    /// [`run_stored`](Self::run_stored) for each of `events`, as
    /// [`run_batch`](Self::run_batch) runs them: one claim call and one completion call
    /// per chunk of the batch, each handler's value kept with its completion in that call,
    /// and each event answered in order. A duplicate's stored result is read while the
    /// batch's handlers run (one `get_with_result` per duplicate, at most
    /// [`batch_concurrency`](crate::ConfigBuilder::batch_concurrency) at once). An event
    /// that appears twice in the batch runs once: a later copy answers `Replayed` with the
    /// first copy's value when that was kept (or what the first copy's record held),
    /// `Duplicate` when it was not, `InProgress` when the first did not complete.
    /// `handler` is called only for an event that runs.
    ///
    /// # Panics
    ///
    /// Resumes the first handler panic, after every claim of the batch is settled.
    pub async fn run_batch_stored<'a, I, H, F, T, E>(
        &self,
        events: &'a [I],
        handler: H,
    ) -> Vec<Result<StoredOutcome<T>, GuardError<E>>>
    where
        I: Identify,
        H: FnMut(&'a I) -> F,
        F: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: std::fmt::Display,
    {
        let encode: Encode<T> = |value: &T| serde_json::to_vec(value);
        let run = self
            .run_batch_traced(events, handler, Some(encode), None)
            .await;
        let max = self.inner.config.max_result_bytes();
        let mut found = run.found;
        // A later copy answers with what its first copy left: the first's kept value (as
        // the store would replay it), or the result its first's record held.
        for &(copy, first) in &run.copies {
            found[copy] = match &run.answers[first] {
                Ok(Outcome::Processed(value)) => encode(value).ok().filter(|b| b.len() <= max),
                Ok(Outcome::Duplicate) => found[first].clone(),
                _ => None,
            };
        }
        run.answers
            .into_iter()
            .zip(found)
            .map(|(answer, found)| {
                answer.map(|outcome| match outcome {
                    Outcome::Processed(value) => StoredOutcome::Processed(value),
                    Outcome::Unprotected(value) => StoredOutcome::Unprotected(value),
                    Outcome::Duplicate => self.replayed(found),
                })
            })
            .collect()
    }

    /// A duplicate's answer: the stored result decoded, or a plain duplicate when there is
    /// none or it no longer decodes as `T` (observed).
    fn replayed<T: DeserializeOwned>(&self, found: Option<Vec<u8>>) -> StoredOutcome<T> {
        match found.map(|bytes| serde_json::from_slice(&bytes)) {
            Some(Ok(value)) => StoredOutcome::Replayed(value),
            Some(Err(error)) => {
                self.observe(Scope::Guard, Decision::ResultUnreadable { error: &error });
                StoredOutcome::Duplicate
            }
            None => StoredOutcome::Duplicate,
        }
    }

    /// The encoded result of `value` to keep with the completion, or `None` (observed) when
    /// it does not encode or is over `max_result_bytes`.
    pub(super) fn encode_result<'s, T>(
        &self,
        scope: impl Into<Scope<'s>>,
        encode: Encode<T>,
        value: &T,
    ) -> Option<Vec<u8>> {
        let max = self.inner.config.max_result_bytes();
        let text = match encode(value) {
            Ok(bytes) if bytes.len() <= max => return Some(bytes),
            Ok(bytes) => format!(
                "result of {} bytes is over max_result_bytes ({max})",
                bytes.len()
            ),
            Err(error) => format!("result does not serialize: {error}"),
        };
        self.observe(scope, Decision::ResultDropped { error: &text });
        None
    }
}
