//! [`BatchChain`]: consecutive batches of one consumer, each batch's completions carried
//! by a later batch's claim call
//! ([`complete_then_claim_many`](crate::IdempotencyStore::complete_then_claim_many)), so
//! that a steady stream of batches costs one store round trip per batch, not two.
//!
//! The batches meet in a [`Link`]: a batch whose handlers ended leaves its completions
//! there (`hand_over`), and a batch about to claim takes the oldest completions waiting
//! (`claim_turn`). Two claim calls are in flight at most, so that one batch's claim goes
//! out while the one before it is answered, and a claim waits, for a short while, for a
//! batch whose handlers are running and whose completions are about to come. Every wait
//! is bounded, so no batch waits for one that cannot come: a claim waits for a claim call
//! (which ends within the store timeout) and at most the chain's wait for completions,
//! and completions wait at most as long for a claim, then are written alone.
//!
//! Completions left for a claim stay their batch's until the store answered: the carrier
//! sends the answer back ([`Handback::Written`]), and a carrier dropped before it answered
//! drops its sender, which tells the batch to write them itself. A batch dropped while it
//! waits has them in its `PendingBatch`, which owes them (kept and retried until written,
//! as a dropped batch's completions are); a write of a completion the carrier already
//! wrote then finds it completed, which is no loss of claim.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::lease::renewal_period;
use super::Guard;
use crate::config::defaults::DEFAULT_CARRY_WAIT;
use crate::error::{GuardError, StoreError};
use crate::identify::Identify;
use crate::store::{saturating_deadline, Completion};
use crate::Outcome;

/// Consecutive batches of one consumer, through one guard, whose store calls are merged:
/// each batch's completions travel with the next batch's claims, in one call
/// ([`IdempotencyStore::complete_then_claim_many`](crate::IdempotencyStore::complete_then_claim_many):
/// one script on Redis, one statement on PostgreSQL). A steady stream of batches then
/// costs one store round trip per batch where [`Guard::run_batch`] costs two.
///
/// [`run_batch`](Self::run_batch) runs a batch as [`Guard::run_batch`] does and answers
/// the same, with two differences in how its store calls go:
///
/// - its claim carries the oldest completions of the chain's other batches waiting for
///   one, waiting for them (at most the chain's [wait](Self::with_carry_wait)) only while
///   none waits and a batch of the chain runs its handlers; at most two claim calls of a
///   chain are in flight at once;
/// - its completions are handed to the next claim of the chain when one waits for them
///   or comes within the wait, and are written alone otherwise.
///
/// Either way a batch returns only once the store has answered for its completions (or
/// they are owed, retried as after any failed write): when its answers are in hand, its
/// `Processed` events are recorded as completed, exactly as after `Guard::run_batch`. A
/// batch dropped at any point settles its claims as a dropped `run_batch` does, and a
/// batch whose completions another batch carries writes them itself if that batch is
/// dropped first.
///
/// The batches must overlap for their calls to merge: start the next batch while the
/// one before it runs (as `KafkaGuard::process_batches` of `eventonce-kafka` does).
/// Batches run one after another still work, each waiting up to the chain's wait for a
/// next claim that does not come: call [`expect_more(false)`](Self::expect_more) when no
/// batch follows soon.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::{EventEnvelope, Guard};
///
/// async fn consume(guard: &Guard, first: &[EventEnvelope], second: &[EventEnvelope]) {
///     let chain = guard.batch_chain();
///     let handler = |_: &EventEnvelope| async { Ok::<_, std::io::Error>(()) };
///     // The second batch's claim carries the first batch's completions.
///     let (a, b) = futures_util::future::join(
///         chain.run_batch(first, handler),
///         chain.run_batch(second, handler),
///     )
///     .await;
///     assert_eq!(a.len() + b.len(), first.len() + second.len());
/// }
/// ```
pub struct BatchChain {
    guard: Guard,
    link: Arc<Link>,
}

impl std::fmt::Debug for BatchChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchChain")
            .field("guard", &self.guard)
            .field("wait", &self.link.wait)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// A new [`BatchChain`] of this guard, waiting [`DEFAULT_CARRY_WAIT`] for a carrier.
    pub fn batch_chain(&self) -> BatchChain {
        BatchChain {
            guard: self.clone(),
            link: Arc::new(Link::new(self.carry_wait(DEFAULT_CARRY_WAIT))),
        }
    }

    /// `wait`, at most half the renewal period of a lease: the claims of a batch whose
    /// completions wait are not renewed meanwhile.
    fn carry_wait(&self, wait: Duration) -> Duration {
        wait.min(renewal_period(self.inner.config.lease()) / 2)
    }
}

impl BatchChain {
    /// The same chain, its batches waiting `wait` for each other (see the type's
    /// documentation; at most a sixth of the lease). Zero merges only the calls of
    /// batches that are already waiting for each other.
    #[must_use]
    pub fn with_carry_wait(self, wait: Duration) -> Self {
        BatchChain {
            link: Arc::new(Link::new(self.guard.carry_wait(wait))),
            guard: self.guard,
        }
    }

    /// The guard.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// Runs `handler` for each event of `events` that was not processed before, as
    /// [`Guard::run_batch`] does, its claim carrying the completions of the chain's batch
    /// before it and its completions carried by the next one's claim where they meet
    /// (see the type's documentation). Returns each event's answer in order, once the
    /// store has answered for the batch's completions.
    ///
    /// # Panics
    ///
    /// Resumes the first handler panic, after every claim of the batch is settled.
    pub async fn run_batch<'a, I, H, F, T, E>(
        &self,
        events: &'a [I],
        handler: H,
    ) -> Vec<Result<Outcome<T>, GuardError<E>>>
    where
        I: Identify,
        H: FnMut(&'a I) -> F,
        F: std::future::Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        self.guard
            .run_batch_traced(events, handler, None, Some(&self.link))
            .await
            .answers
    }

    /// Whether another batch is expected soon (it is, by default). While not, a batch's
    /// completions are written as soon as its handlers end, and completions waiting for
    /// a next claim are handed back to their batch, which writes them now.
    /// `KafkaGuard::process_batches` says so while it will not poll: after a seek, while a
    /// redelivery is pending, at the end of the stream.
    pub fn expect_more(&self, more: bool) {
        let handed_back = {
            let mut state = self.link.lock();
            state.expecting = more;
            if more {
                VecDeque::new()
            } else {
                std::mem::take(&mut state.staged)
            }
        };
        for staged in handed_back {
            staged.carry.hand_back();
        }
    }

    /// How many batches' completions were carried by another batch's claim call, and how
    /// many were written alone (no claim came within the wait, none was expected, or the
    /// claim gave them back), since the chain was made.
    pub fn carried(&self) -> (u64, u64) {
        let state = self.link.lock();
        (state.carried, state.alone)
    }
}

/// What an owner of completions hears back.
#[derive(Debug)]
pub(super) enum Handback {
    /// A claim carried them: the store's answer.
    Written(Result<Vec<bool>, StoreError>),
    /// Nobody carried them: the owner writes them.
    NotCarried,
}

/// Completions a claim carries; the answer goes back to the batch they belong to.
/// Dropped unanswered, the owner hears `NotCarried` (its receiver sees the sender gone)
/// and writes them itself.
pub(super) struct Carry {
    completions: Arc<[Completion]>,
    answer: oneshot::Sender<Handback>,
}

impl Carry {
    pub(super) fn completions(&self) -> &[Completion] {
        &self.completions
    }

    /// Sends the store's answer for the completions to their batch.
    pub(super) fn answer(self, done: Result<Vec<bool>, StoreError>) {
        let _ = self.answer.send(Handback::Written(done));
    }

    /// Gives the completions back unwritten: their batch writes them.
    pub(super) fn hand_back(self) {
        let _ = self.answer.send(Handback::NotCarried);
    }
}

/// Completions waiting in the link for a claim, numbered so that their owner knows
/// whether they are still there.
struct Staged {
    id: u64,
    carry: Carry,
}

/// Where the batches of one chain meet.
pub(super) struct Link {
    state: Mutex<LinkState>,
    /// Told whenever the state changes in a way a waiting batch looks at.
    changed: Notify,
    wait: Duration,
}

struct LinkState {
    /// Completions waiting for a claim, oldest first.
    staged: VecDeque<Staged>,
    staged_id: u64,
    /// Batches whose claim call is in flight.
    claiming: usize,
    /// Batches whose claim has returned and whose completions are not handed over yet.
    handling: usize,
    expecting: bool,
    carried: u64,
    alone: u64,
}

/// How many claim calls of one chain are in flight at once: two, so that one batch's
/// claim (carrying the completions of a batch before) goes out while the one before it is
/// answered, and the completions of the batch answered meanwhile are ready for the next.
const MAX_CLAIMING: usize = 2;

/// Where a batch is in its chain: claiming, running its handlers, or neither. Its count
/// is undone when it moves on or is dropped.
pub(super) struct Turn {
    link: Arc<Link>,
    phase: Phase,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Out,
    Claiming,
    Handling,
}

impl Link {
    fn new(wait: Duration) -> Self {
        Link {
            state: Mutex::new(LinkState {
                staged: VecDeque::new(),
                staged_id: 0,
                claiming: 0,
                handling: 0,
                expecting: true,
                carried: 0,
                alone: 0,
            }),
            changed: Notify::new(),
            wait,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        // Every change is a few plain stores: a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A batch's turn to claim (`claims`: it has keys to claim), with the completions it
    /// carries: the oldest waiting. A batch with keys first waits while
    /// [`MAX_CLAIMING`] claim calls of the chain are in flight (each ends within the store
    /// timeout); then, when no completions wait but a batch of the chain runs its
    /// handlers, it waits for that batch's completions at most the chain's wait. A batch
    /// without keys takes what waits and goes on.
    pub(super) async fn claim_turn(self: &Arc<Self>, claims: bool) -> (Turn, Option<Carry>) {
        let mut deadline: Option<Instant> = None;
        loop {
            let mut notified = pin!(self.changed.notified());
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                let now = Instant::now();
                let go = !claims
                    || (state.claiming < MAX_CLAIMING
                        && (!state.staged.is_empty()
                            || state.handling == 0
                            || now
                                >= *deadline
                                    .get_or_insert_with(|| saturating_deadline(now, self.wait))));
                if go {
                    let carry = state.staged.pop_front().map(|staged| staged.carry);
                    let phase = if claims {
                        state.claiming += 1;
                        Phase::Claiming
                    } else {
                        Phase::Out
                    };
                    let turn = Turn {
                        link: Arc::clone(self),
                        phase,
                    };
                    return (turn, carry);
                }
            }
            match deadline {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// Leaves `completions` for the next claim of the chain and waits for the store's
    /// answer: `NotCarried` when no claim took them within the wait, or when none is
    /// expected (then the caller writes them). Ends `turn`'s handling either way.
    async fn hand_over(&self, turn: &mut Turn, completions: &Arc<[Completion]>) -> Handback {
        let (answer, answered) = oneshot::channel();
        let staged = {
            let mut state = self.lock();
            turn.leave(&mut state);
            let stage = !completions.is_empty() && state.expecting;
            stage.then(|| {
                state.staged_id += 1;
                let carry = Carry {
                    completions: Arc::clone(completions),
                    answer,
                };
                let id = state.staged_id;
                state.staged.push_back(Staged { id, carry });
                id
            })
        };
        self.changed.notify_waiters();
        let handback = match staged {
            Some(id) => self.await_carrier(id, answered).await,
            None => Handback::NotCarried,
        };
        if !completions.is_empty() {
            let mut state = self.lock();
            match handback {
                Handback::Written(_) => state.carried += 1,
                Handback::NotCarried => state.alone += 1,
            }
        }
        handback
    }

    /// The answer for the completions staged as `id`: a carrier's, or `NotCarried` when
    /// none took them within the wait (they are taken back) or the one that took them
    /// was dropped first.
    async fn await_carrier(&self, id: u64, mut answered: oneshot::Receiver<Handback>) -> Handback {
        if let Ok(answer) = tokio::time::timeout(self.wait, &mut answered).await {
            return answer.unwrap_or(Handback::NotCarried);
        }
        {
            let mut state = self.lock();
            if let Some(at) = state.staged.iter().position(|s| s.id == id) {
                state.staged.remove(at);
                return Handback::NotCarried;
            }
        }
        // A claim took them meanwhile: its answer (or, if it was dropped, none).
        answered.await.unwrap_or(Handback::NotCarried)
    }
}

impl Turn {
    /// The batch's claim call returned: its handlers run.
    pub(super) fn claimed(&mut self) {
        if self.phase != Phase::Claiming {
            return;
        }
        {
            let mut state = self.link.lock();
            state.claiming = state.claiming.saturating_sub(1);
            state.handling += 1;
        }
        self.phase = Phase::Handling;
        self.link.changed.notify_waiters();
    }

    /// Ends the batch's handling: its `completions` left for the next claim of the chain
    /// (see [`Link::hand_over`]).
    pub(super) async fn hand_over(&mut self, completions: &Arc<[Completion]>) -> Handback {
        let link = Arc::clone(&self.link);
        link.hand_over(self, completions).await
    }

    fn leave(&mut self, state: &mut LinkState) {
        match std::mem::replace(&mut self.phase, Phase::Out) {
            Phase::Claiming => state.claiming = state.claiming.saturating_sub(1),
            Phase::Handling => state.handling = state.handling.saturating_sub(1),
            Phase::Out => {}
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.phase == Phase::Out {
            return;
        }
        let link = Arc::clone(&self.link);
        self.leave(&mut link.lock());
        link.changed.notify_waiters();
    }
}
