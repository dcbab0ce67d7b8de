//! The claim's lease while its handler runs: the heartbeat that renews it every third of
//! the lease, for one run and for a batch.

use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use super::fast::LazyTick;
use super::outcome::{Ctx, Decision, Scope};
use super::Guard;
use crate::error::StoreError;
use crate::store::saturating_deadline;

/// A handler's end: its result, or the panic it raised.
pub(super) type Ended<T, E> = Result<Result<T, E>, Box<dyn std::any::Any + Send>>;

/// A boxed store call in flight.
type StoreCall<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// How often a claim is renewed while its handler runs: every third of the lease.
pub(super) fn renewal_period(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(1))
}

/// How soon a failed renewal is tried again: a tenth of the renewal period (a third of
/// the lease), at most a second. A claim is then lost only when every renewal fails from
/// a period after the last one that succeeded until the lease ends: a fault lasting most
/// of the lease's last two thirds.
pub(super) fn renewal_retry(period: Duration) -> Duration {
    (period / 10).clamp(Duration::from_millis(1), Duration::from_secs(1))
}

/// The heartbeat of one claim: the renewal in flight and when the next is due.
struct Heartbeat<'a> {
    tick: LazyTick,
    period: Duration,
    renewal: Option<StoreCall<'a, bool>>,
    /// When the renewal in flight was sent.
    asked: Instant,
    /// Whether the claim is still ours to renew.
    renewing: bool,
}

impl Guard {
    /// Polls the handler to completion, catching a panic, and renews the lease every third
    /// of it while the handler runs; `confirmed` is set to when the last renewal the store
    /// confirmed was sent.
    pub(super) async fn drive<F: Future>(
        &self,
        ctx: &Ctx<'_>,
        owner: &str,
        handler: F,
        confirmed: &mut Instant,
    ) -> Result<F::Output, Box<dyn std::any::Any + Send>> {
        let period = renewal_period(self.inner.config.lease());
        let mut handler = pin!(handler);
        let tick = LazyTick::new(saturating_deadline(ctx.claimed, period));
        let mut beat = Heartbeat {
            tick,
            period,
            renewal: None,
            asked: ctx.claimed,
            renewing: true,
        };
        poll_fn(|cx| {
            match catch_unwind(AssertUnwindSafe(|| handler.as_mut().poll(cx))) {
                Ok(Poll::Ready(out)) => return Poll::Ready(Ok(out)),
                Err(panic) => return Poll::Ready(Err(panic)),
                Ok(Poll::Pending) => {}
            }
            self.heartbeat(cx, ctx, owner, &mut beat, confirmed);
            Poll::Pending
        })
        .await
    }

    /// Polls the renewal in flight and the timer; sends a renewal when one is due.
    fn heartbeat<'a>(
        &'a self,
        cx: &mut Context<'_>,
        ctx: &'a Ctx<'_>,
        owner: &'a str,
        beat: &mut Heartbeat<'a>,
        confirmed: &mut Instant,
    ) {
        loop {
            if let Some(r) = beat.renewal.as_mut() {
                if let Poll::Ready(result) = r.as_mut().poll(cx) {
                    beat.renewal = None;
                    self.renewal_answered(ctx, result, beat, confirmed);
                }
            }
            if !beat.renewing || beat.tick.poll_tick(cx).is_pending() {
                return;
            }
            beat.tick
                .reset(saturating_deadline(Instant::now(), beat.period));
            if beat.renewal.is_none() {
                beat.asked = Instant::now();
                let lease = self.inner.config.lease();
                let extend = self.inner.store.extend(ctx.key, owner, lease);
                beat.renewal = Some(Box::pin(self.store_call("extend", extend)));
            }
        }
    }

    /// Observes the store's answer to a renewal of one claim.
    fn renewal_answered(
        &self,
        ctx: &Ctx<'_>,
        result: Result<bool, StoreError>,
        beat: &mut Heartbeat<'_>,
        confirmed: &mut Instant,
    ) {
        match result {
            Ok(true) => {
                *confirmed = beat.asked;
                self.observe(ctx, Decision::LeaseRenewed);
            }
            Ok(false) => {
                beat.renewing = false;
                self.observe(ctx, Decision::LeaseLost);
            }
            Err(error) => {
                self.observe(ctx, Decision::LeaseRenewalFailed { error: &error });
                // Soon, not a period later: two failed renewals a period apart would lose
                // the claim to a fault of a third of it.
                beat.tick.reset(saturating_deadline(
                    Instant::now(),
                    renewal_retry(beat.period),
                ));
            }
        }
    }

    /// Renews the claims of the batch whose handlers have not ended: for each key, whether
    /// it is still ours, or `None` where its renewal failed (nothing learned).
    pub(super) async fn renew_batch(
        &self,
        keys: Vec<String>,
        owner: &str,
        lease: Duration,
    ) -> Vec<Option<bool>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let store = &self.inner.store;
        let renewed = self
            .chunked("extend_many", &keys, false, |chunk| {
                store.extend_many(chunk, owner, lease)
            })
            .await;
        let answers = match renewed {
            Ok(flags) => flags.into_iter().map(Some).collect(),
            Err(error) => {
                let failed = Decision::BatchRenewalFailed { error: &error };
                self.observe(Scope::Claims(keys.len()), failed);
                error.answers(keys.len())
            }
        };
        for (key, renewed) in keys.iter().zip(&answers) {
            if *renewed == Some(false) {
                self.observe(key.as_str(), Decision::LeaseLost);
            }
        }
        answers
    }
}
