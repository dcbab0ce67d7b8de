//! A circuit breaker in front of the store, so that an outage costs at most one store
//! timeout instead of one per message.
//!
//! Closed: calls pass; `failure_threshold` consecutive failures, or a single timeout (a
//! timeout is the expensive failure), open it. Open: calls fail at once with
//! `StoreError::CircuitOpen` until the cool-down has passed. Then one call is let through
//! as a probe (half-open): its success closes the breaker, its failure opens it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::StoreError;

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is in flight since then; one lost (its call dropped) is replaced after a
    /// cool-down.
    HalfOpen {
        since: Instant,
    },
}

/// What the breaker says about a call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Make the call.
    Call,
    /// Make the call as the probe of a half-open breaker.
    Probe,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
    /// Whether `state` is closed with no failure counted: the healthy store's state, in
    /// which a permit is `Call` and a success changes nothing. Read without the lock, so
    /// that calls to a healthy store (every task's, several per event) never contend for
    /// it; written under the lock after every change of `state`.
    clean: AtomicBool,
}

impl Breaker {
    /// A breaker opening after `threshold` consecutive failures (0 disables it).
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
            clean: AtomicBool::new(true),
        }
    }

    /// Sets `state` (under its lock) and the clean flag with it.
    fn set(&self, state: &mut State, to: State) {
        *state = to;
        self.clean.store(
            matches!(to, State::Closed { failures: 0 }),
            Ordering::Release,
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks to make a call; `Err(StoreError::CircuitOpen)` while the breaker is open or
    /// its probe is in flight.
    pub(crate) fn permit(&self) -> Result<Permit, StoreError> {
        if self.threshold == 0 || self.clean.load(Ordering::Acquire) {
            return Ok(Permit::Call);
        }
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Ok(Permit::Call),
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    self.set(&mut state, State::HalfOpen { since: now });
                    Ok(Permit::Probe)
                } else {
                    Err(StoreError::CircuitOpen {
                        retry_in: until - now,
                    })
                }
            }
            State::HalfOpen { since } => {
                let now = Instant::now();
                let until = since.checked_add(self.cooldown).unwrap_or(now);
                if now >= until {
                    self.set(&mut state, State::HalfOpen { since: now });
                    Ok(Permit::Probe)
                } else {
                    Err(StoreError::CircuitOpen {
                        retry_in: until - now,
                    })
                }
            }
        }
    }

    /// Records the result of a permitted call.
    pub(crate) fn record(&self, permit: Permit, result: Result<(), &StoreError>) {
        if self.threshold == 0 {
            return;
        }
        let failed = match result {
            Ok(()) => false,
            Err(err) => err.is_outage(),
        };
        // A call permitted while the breaker was clean and that did not fail changes
        // nothing if it is still clean: no lock.
        if !failed && permit == Permit::Call && self.clean.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        if !failed {
            // A success closes the breaker; a refused argument says nothing about health.
            if result.is_ok() || permit == Permit::Probe {
                self.set(&mut state, State::Closed { failures: 0 });
            }
            return;
        }
        let timed_out = matches!(result, Err(StoreError::Timeout { .. }));
        let open = State::Open {
            until: crate::store::saturating_deadline(Instant::now(), self.cooldown),
        };
        let next = match (*state, permit) {
            (_, Permit::Probe) => open,
            (State::Closed { failures }, Permit::Call) => {
                let failures = failures.saturating_add(1);
                if timed_out || failures >= self.threshold {
                    open
                } else {
                    State::Closed { failures }
                }
            }
            // Another call's failure while open or probing changes nothing.
            (other, Permit::Call) => other,
        };
        self.set(&mut state, next);
    }

    /// Whether calls are currently refused.
    pub(crate) fn is_open(&self) -> bool {
        if self.clean.load(Ordering::Acquire) {
            return false;
        }
        !matches!(*self.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> StoreError {
        StoreError::Unavailable {
            message: "down".into(),
            source: None,
        }
    }

    fn timeout() -> StoreError {
        StoreError::Timeout {
            operation: "try_claim",
            timeout: Duration::from_millis(100),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_of_consecutive_failures() {
        let b = Breaker::new(3, Duration::from_secs(1));
        for _ in 0..2 {
            let p = b.permit().expect("closed");
            b.record(p, Err(&unavailable()));
        }
        assert!(!b.is_open());
        let p = b.permit().expect("closed");
        b.record(p, Ok(()));
        for _ in 0..2 {
            let p = b.permit().expect("a success reset the count");
            b.record(p, Err(&unavailable()));
        }
        let p = b.permit().expect("closed");
        b.record(p, Err(&unavailable()));
        assert!(matches!(b.permit(), Err(StoreError::CircuitOpen { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn one_timeout_opens_it_at_once() {
        let b = Breaker::new(3, Duration::from_secs(1));
        let p = b.permit().expect("closed");
        b.record(p, Err(&timeout()));
        assert!(b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn probes_after_the_cooldown_and_closes_on_success() {
        let b = Breaker::new(1, Duration::from_secs(1));
        let p = b.permit().expect("closed");
        b.record(p, Err(&unavailable()));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(b.permit().is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        let probe = b.permit().expect("probe");
        assert_eq!(probe, Permit::Probe);
        assert!(b.permit().is_err(), "one probe at a time");
        b.record(probe, Ok(()));
        assert_eq!(b.permit().expect("closed"), Permit::Call);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_for_another_cooldown() {
        let b = Breaker::new(1, Duration::from_secs(1));
        let p = b.permit().expect("closed");
        b.record(p, Err(&unavailable()));
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.permit().expect("probe");
        b.record(probe, Err(&unavailable()));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.permit().is_err());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(b.permit().expect("probe"), Permit::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_is_replaced_after_a_cooldown() {
        let b = Breaker::new(1, Duration::from_secs(1));
        let p = b.permit().expect("closed");
        b.record(p, Err(&unavailable()));
        tokio::time::advance(Duration::from_secs(1)).await;
        let _lost = b.permit().expect("probe, never recorded");
        assert!(b.permit().is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.permit().expect("a new probe"), Permit::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_of_the_events_data_never_open_it() {
        let b = Breaker::new(1, Duration::from_secs(1));
        let refused = [
            StoreError::Rejected {
                message: "54000: index row too large".into(),
                source: None,
            },
            StoreError::InvalidData {
                key: "k".into(),
                detail: "WRONGTYPE".into(),
            },
            StoreError::InvalidArgument("empty key".into()),
            StoreError::Partial {
                answers: vec![Some(true), None],
                error: Box::new(StoreError::Rejected {
                    message: "too large".into(),
                    source: None,
                }),
            },
        ];
        for err in &refused {
            assert!(!err.is_outage(), "{err}");
            let p = b.permit().expect("closed");
            b.record(p, Err(err));
        }
        assert!(!b.is_open());
        let p = b.permit().expect("closed");
        b.record(p, Err(&unavailable()));
        assert!(b.is_open(), "an outage still opens it");
    }

    #[test]
    fn a_zero_threshold_disables_it() {
        let b = Breaker::new(0, Duration::from_secs(1));
        for _ in 0..10 {
            let p = b.permit().expect("never opens");
            b.record(p, Err(&timeout()));
        }
        assert!(!b.is_open());
    }
}
