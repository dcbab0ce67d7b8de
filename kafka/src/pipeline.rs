//! [`KafkaGuard::process_batches`]: consecutive batches in one store round trip each (a
//! batch's completions carried by the next batch's claim), decided and committed in
//! order.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::pin;

use eventonce_core::EventEnvelope;
use futures_util::future::{Fuse, FusedFuture, FutureExt};
use futures_util::stream::{FuturesOrdered, Stream, StreamExt};
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::message::Message;

use crate::consumer::{Delivery, KafkaGuard};
use crate::message::MessageError;

/// What became of each message of a batch, in order (as [`KafkaGuard::process_batch`]
/// answers).
pub type BatchAnswers<T, E> = Vec<Result<Delivery<T, E>, MessageError>>;

/// How many batches [`KafkaGuard::process_batches`] runs at once, its batches' calls
/// merged: enough that a claim is always ready to carry the completions a batch leaves.
/// In the steady state the oldest batch waits for the answer to its completions, carried
/// by a claim call in flight; the next one's completions wait for a claim; two claim calls
/// are in flight (a chain's limit); and the newest is polled and ready to claim as soon
/// as one of them returns.
const IN_FLIGHT: usize = 5;

/// How many batches [`KafkaGuard::process_batches`] runs at once, its batches' calls not
/// merged (`carry_wait: None`): the oldest one's completion is in flight while the next
/// one is claimed.
const IN_FLIGHT_UNMERGED: usize = 2;

impl KafkaGuard {
    /// Processes the batches `batches` yields (consecutive polls of `consumer`, in the
    /// order the consumer yielded the messages), each as
    /// [`process_batch`](Self::process_batch) would, with the next batch's store claim
    /// sent while the previous batch's completion is still in flight: one batch's store
    /// round trips overlap the next one's, instead of adding up.
    ///
    /// With [`KafkaGuardOptions::carry_wait`](crate::KafkaGuardOptions::carry_wait) set,
    /// the batches take one store round trip each where `process_batch` makes two: they
    /// run through one [`BatchChain`](eventonce_core::BatchChain), so each batch's
    /// completions travel with a later batch's claim call
    /// ([`complete_then_claim_many`](eventonce_core::IdempotencyStore::complete_then_claim_many):
    /// one script on Redis, one statement on PostgreSQL). Up to five batches are then in
    /// flight, with at most two claim calls at once, so that a claim is always ready to
    /// carry the completions a batch leaves: a batch's completions ride on the claim of a
    /// batch polled after its own. They are written alone when no claim takes them within
    /// `carry_wait`, or when no batch will be admitted before the running ones end (after
    /// a seek, while a redelivery is pending, at the end of the stream).
    ///
    /// The guarantees of `process_batch` hold batch by batch: a batch's offsets are
    /// committed only after the store answered for its completions (its run has ended,
    /// whichever call carried them; a completion the store did not take is owed and
    /// retried, as after `process_batch`), and the
    /// batches are decided, committed and sought in the order they were polled, one after
    /// the other, so a partition's commit never passes a message waiting to be
    /// redelivered or one that cannot be identified. `on_batch` gets each batch and its
    /// answers once that batch is committed, in order, before the next batch is decided:
    /// route the unidentifiable messages there (dead-letter and
    /// [`commit_past`](crate::commit_past)) as after `process_batch`.
    /// `ControlFlow::Break` stops: the batches still running are dropped (their claims
    /// settled as for a dropped [`Guard::run_batch`](eventonce_core::Guard::run_batch)) and
    /// nothing more is committed.
    ///
    /// While a batch is decided (its retry backoff, commit and seeks) and while
    /// `on_batch`'s future runs, the batches already running go on: their handlers are
    /// polled and their claims' leases renewed, so a slow `on_batch` (dead-lettering, say)
    /// does not let another consumer take those events over. The librdkafka calls made
    /// meanwhile do not wait for the broker: seeks return at once (see
    /// [`KafkaGuardOptions::seek_timeout`](crate::KafkaGuardOptions::seek_timeout)), the
    /// assignment is read locally, and a commit with `CommitMode::Async` (the default) is
    /// queued. A `CommitMode::Sync` commit waits for the broker's answer and holds up the
    /// running batch that long: keep the client's request timeouts well below the lease,
    /// or commit asynchronously. The group's committed offsets are looked up (at most
    /// `seek_timeout`) only before a batch is admitted while a redelivery is pending, and
    /// such a batch is admitted only once no batch runs. Nothing is polled while a batch
    /// is decided or answered.
    ///
    /// What the overlap adds to `process_batch`'s answers: the next batches have started
    /// when a batch is decided, so a message after one that must come again (its handler
    /// failed, it is in progress elsewhere, it could not be identified) may have run in
    /// the next batch; it is answered `Redeliver(Retry::Rewinding)`, its offset not
    /// committed, its partition sought back (to the message after an unidentifiable one),
    /// and its redelivery is a `Duplicate`, exactly as for a later message of the same
    /// batch. For an unidentifiable message this holds even though `on_batch` has decided
    /// about it by the time the next batch is decided: nothing after it is committed by a
    /// batch that ran before that decision. And a copy of an event whose first copy is
    /// still running in the batch before is answered `Redeliver(Retry::InProgress)` (this
    /// consumer's own claim), where `process_batch` would have answered `Duplicate`; it
    /// comes again after `in_progress_backoff` and is then a duplicate (a copy whose first
    /// copy's completion this batch's claim carries is a duplicate at once: the
    /// completion is written first). After a batch that sought a partition back, the
    /// batches already running are decided before the next poll, so that every later
    /// poll comes after the seek.
    ///
    /// Dropping the returned future (a `select!`, a shutdown) is safe at any point: the
    /// running batches' claims are settled as for a dropped `run_batch`, a batch whose
    /// run ended but that was not committed comes again (its events completed: duplicates),
    /// and a redelivery already decided stays pending in this `KafkaGuard`, so later calls
    /// still hold back what follows it.
    ///
    /// One window remains: a batch polled before its partition was revoked and decided
    /// after the partition came back to this consumer (both between two looks at the
    /// assignment) is committed and sought as if the partition had stayed: the group's
    /// committed offset can go back to it, and the messages after it come again, as
    /// duplicates.
    pub async fn process_batches<K, C, M, S, F, Fut, T, E, A, AFut>(
        &self,
        consumer: &K,
        batches: S,
        handler: F,
        mut on_batch: A,
    ) where
        K: Consumer<C>,
        C: ConsumerContext,
        M: Message,
        S: Stream<Item = Vec<M>>,
        F: Fn(EventEnvelope) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
        A: FnMut(Vec<M>, BatchAnswers<T, E>) -> AFut,
        AFut: Future<Output = ControlFlow<()>>,
    {
        let handler = &handler;
        // Each batch's completions ride on the next batch's claim call (unless the
        // options say otherwise).
        let chain = &self
            .options()
            .carry_wait
            .map(|wait| self.guard().batch_chain().with_carry_wait(wait));
        let in_flight = match chain {
            Some(_) => IN_FLIGHT,
            None => IN_FLIGHT_UNMERGED,
        };
        let mut batches = pin!(batches.fuse());
        let mut running = FuturesOrdered::new();
        // Batches whose run has ended, waiting to be decided, oldest first.
        let mut ran = VecDeque::new();
        // The batch being decided (committed, sought) and then `on_batch`'s future: both
        // polled alongside the batches still running, so that their handlers and lease
        // renewals go on meanwhile.
        let mut settling = pin!(Fuse::terminated());
        let mut answering = pin!(Fuse::<AFut>::terminated());
        let mut ended = false;
        // After a seek, the batches polled before it are settled before the next poll, as
        // `process_batch` would settle a batch fetched ahead of a seek: each later poll
        // then comes after every seek, and commits follow the order of the offsets. And
        // while a redelivery is pending, a batch is admitted only once the batches before
        // it are settled (one of them may end the wait), so that what it holds back is
        // what its own decision holds back.
        let mut draining = false;
        loop {
            if settling.is_terminated() && answering.is_terminated() {
                if let Some((messages, prepared, results)) = ran.pop_front() {
                    settling.set(
                        async move {
                            let (answers, sought) =
                                self.finish_batch(consumer, prepared, results).await;
                            (messages, answers, sought)
                        }
                        .fuse(),
                    );
                }
            }
            // Nothing is polled while a batch is being decided or answered: a poll comes
            // after every decision (and seek) of the batches before it.
            let quiet = settling.is_terminated() && answering.is_terminated() && ran.is_empty();
            // While no batch will be admitted before the running ones end, their
            // completions go out alone, not held for a next claim.
            let admitting =
                !ended && !draining && (running.is_empty() || !self.redelivery_pending());
            if let Some(chain) = chain {
                chain.expect_more(admitting);
            }
            tokio::select! {
                biased;
                flow = &mut answering, if !answering.is_terminated() => {
                    if flow.is_break() {
                        return;
                    }
                }
                (messages, answers, sought) = &mut settling, if !settling.is_terminated() => {
                    draining = (draining || sought) && !(running.is_empty() && ran.is_empty());
                    answering.set(on_batch(messages, answers).fuse());
                }
                Some(done) = running.next(), if !running.is_empty() => ran.push_back(done),
                next = batches.next(), if quiet
                    && admitting
                    && running.len() < in_flight =>
                {
                    let Some(messages) = next else {
                        ended = true;
                        continue;
                    };
                    let prepared = self.prepare_batch(consumer, &messages);
                    running.push_back(async move {
                        let run = |envelope: &EventEnvelope| handler(envelope.clone());
                        let results = match chain {
                            Some(chain) => chain.run_batch(&prepared.to_run, run).await,
                            None => self.guard().run_batch(&prepared.to_run, run).await,
                        };
                        (messages, prepared, results)
                    });
                }
                else => return,
            }
        }
    }
}
