//! [`KafkaGuard`]: one consumed message through [`Guard::run`], and its offset committed
//! only once the outcome is final.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use eventonce_core::{EventEnvelope, Guard, GuardError, Identify, Identity, Outcome, StoreError};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::message::{envelope_from_message_within, MessageError, MessagePosition};
use crate::plan::{Answer, Input, Partition, Plan, Rewinds};

/// How [`KafkaGuard`] commits and redelivers.
#[derive(Debug, Clone)]
pub struct KafkaGuardOptions {
    /// How offsets are committed: `Async` (the default) queues the commit and returns;
    /// `Sync` waits for the broker's answer.
    pub commit_mode: CommitMode,
    /// Pause before a message whose handler failed (or whose store refused, with
    /// `FailMode::Closed`) is consumed again. Default 100 ms.
    pub retry_backoff: Duration,
    /// Pause before a message another consumer is processing (`InProgress`) is consumed
    /// again. Default 250 ms.
    pub in_progress_backoff: Duration,
    /// How long the group's committed offset of a partition may take to look up before
    /// a seek back to a pending redelivery (one broker round trip). Default 5 s.
    ///
    /// Seeks themselves do not wait: librdkafka marks the messages it fetched ahead of a
    /// seek as outdated in the seeking call itself and drops them at the next poll, so
    /// waiting for its fetcher's answer adds nothing but a block of the calling thread.
    pub seek_timeout: Duration,
    /// Whether [`KafkaGuard::process_batches`] merges its batches' store calls. `None`
    /// (the default): every batch completes in a call of its own, two batches in flight
    /// (the next one's claim overlapping the previous one's completion). `Some(wait)`
    /// (say [`DEFAULT_CARRY_WAIT`](eventonce_core::config::defaults::DEFAULT_CARRY_WAIT),
    /// 10 ms): each batch's completions travel with a later batch's claim, one store call
    /// per batch, a batch's completions waiting at most `wait` for that claim (and a claim
    /// as long for a batch running its handlers); see
    /// [`BatchChain`](eventonce_core::BatchChain). Merged calls halve the store's calls,
    /// not its work per key; measured on one machine with Redis and the broker on
    /// loopback (benches/RESULTS.md), they did not raise throughput and tripled the time
    /// from a batch's poll to its commit (five batches in flight instead of two).
    pub carry_wait: Option<Duration>,
}

impl Default for KafkaGuardOptions {
    fn default() -> Self {
        KafkaGuardOptions {
            commit_mode: CommitMode::Async,
            retry_backoff: Duration::from_millis(100),
            in_progress_backoff: Duration::from_millis(250),
            seek_timeout: Duration::from_secs(5),
            carry_wait: None,
        }
    }
}

/// What became of a message that [`KafkaGuard::process`] handled.
#[derive(Debug)]
#[must_use]
pub enum Delivery<T, E> {
    /// The outcome is final and the offset after the message was committed (queued, with
    /// `CommitMode::Async`).
    Committed(Outcome<T>),
    /// The outcome is final, but its offset was not committed: the commit failed, or (in
    /// [`KafkaGuard::process_batch`]) the partition was no longer assigned to this
    /// consumer when the batch was committed (error `AssignmentLost`). The message will
    /// be delivered again, to this consumer or to the partition's new owner. What that
    /// redelivery finds depends on the outcome: after `Processed` or `Duplicate` the event
    /// is normally recorded as completed and the redelivery is an [`Outcome::Duplicate`];
    /// but after [`Outcome::Unprotected`] (the store was down and the guard ran the
    /// handler without it) nothing was recorded, and after a `Processed` whose completion
    /// could not be written (logged `STORE_ERROR` or `CLAIM_LOST`) the record is not
    /// completed: in both cases the redelivery may run the handler again (for the
    /// latter, once the claim's lease has expired; `InProgress` until then).
    CommitFailed {
        /// The final outcome.
        outcome: Outcome<T>,
        /// The commit's error.
        error: KafkaError,
    },
    /// Not final: nothing was committed for this message and it will be consumed again:
    /// the partition was sought back to it (or to an earlier message of its partition
    /// that must come first) after a backoff, or, with [`Retry::Revoked`], the partition
    /// now belongs to another consumer, which consumes it from the group's committed
    /// offset.
    Redeliver(Retry<E>),
}

impl<T, E> Delivery<T, E> {
    /// The final outcome, if there is one.
    pub fn outcome(&self) -> Option<&Outcome<T>> {
        match self {
            Delivery::Committed(o) | Delivery::CommitFailed { outcome: o, .. } => Some(o),
            Delivery::Redeliver(_) => None,
        }
    }
}

/// Why a message will be consumed again.
#[derive(Debug)]
#[non_exhaustive]
pub enum Retry<E> {
    /// The handler failed; the guard released its claim.
    Handler(E),
    /// Another consumer holds a live claim on the event (or its claim has not expired
    /// yet, after that consumer died).
    InProgress,
    /// The store failed and the guard is configured `FailMode::Closed`.
    Store(StoreError),
    /// An earlier message of this partition is waiting to be redelivered (or, in a
    /// batch, was not an identifiable event, and the caller decides about it first): this
    /// one's offset was not committed, so that nothing after that message is committed
    /// first. [`KafkaGuard::process`] did not run its handler; in
    /// [`KafkaGuard::process_batch`] it may have run (when the earlier message failed in
    /// the same batch), and then its redelivery is a duplicate, skipped.
    Rewinding,
    /// [`KafkaGuard::process_batch`]: the message's partition is no longer assigned to
    /// this consumer (the batch was gathered across a rebalance). Its handler did not run
    /// and nothing was committed or sought for it; the partition's new owner consumes it
    /// from the group's committed offset.
    Revoked,
    /// A guard error this version does not know (`GuardError` may grow); retried like a
    /// store refusal.
    Other(GuardError<E>),
}

/// A guard for Kafka consumers: [`Guard::run`] on consumed messages, with the offset
/// committed only after the outcome is final.
///
/// # How offsets and the guard interact
///
/// For each message, [`process`](Self::process):
///
/// 1. turns it into an [`EventEnvelope`] ([`envelope_from_message_within`] with the
///    guard's payload limit and [key scheme](eventonce_core::KeyScheme): a value over
///    the limit is refused unparsed; under `PythonV2` the value alone, headers
///    unread, as the Python decorator reads it); a message that is not an identifiable
///    event is returned as [`MessageError`], nothing committed;
/// 2. runs the handler through [`Guard::run`];
/// 3. on a final outcome (`Processed`, `Duplicate`, `Unprotected`) commits the offset
///    after the message;
/// 4. otherwise (the handler failed, another consumer holds the event, the store refused
///    with `FailMode::Closed`) commits nothing, waits a short backoff and seeks the
///    partition back to the message, so that it is consumed again, in order: messages of
///    that partition fetched ahead of it are dropped by the seek and consumed again after
///    it. Other partitions are not rewound.
///
/// The commit comes after `run` returns, so a consumer that dies between the handler and
/// the commit has its message delivered again (to itself after a restart, or to another
/// member after the rebalance); the store already records the event as completed, so the
/// redelivery is a `Duplicate` and the handler does not run twice. A consumer that dies
/// in the middle of the handler leaves a claim that expires after the lease
/// (`lease`); until then the redelivery sees `InProgress` and is retried with
/// `in_progress_backoff`, after it the event runs again.
///
/// # Rebalances
///
/// A redelivery the guard waits for (and the holding back of the later messages of its
/// partition) belongs to the partition's assignment. While one is pending, each call
/// looks up the consumer's assignment and forgets those of partitions no longer
/// assigned; and before holding back a message it looks up the group's committed offset
/// of the partition (one broker round trip, at most `seek_timeout`): this consumer never
/// commits past a redelivery it waits for, so an offset past it means another member
/// owned the partition meanwhile and processed the message, and the redelivery is
/// forgotten. A partition that comes back to this consumer (after a rebalance, say at
/// the offset another member committed) goes on from there, never back to an old
/// redelivery. [`process_batch`], whose batch may span a rebalance, runs and commits
/// only the partitions still assigned.
///
/// Process the messages of one consumer one at a time, in the order the consumer yields
/// them (the consumer loop of `examples/kafka_consumer.rs`). The consumer must not commit
/// by itself: create it with `enable.auto.commit=false` (as [`consumer_config`] does).
///
/// A message that cannot be identified is never skipped here; but committing a later
/// offset of the same partition commits past it too. Decide before going on: write it
/// to a dead-letter topic and [`commit_past`] it, or stop consuming.
///
/// [`process_batch`]: Self::process_batch
#[derive(Debug)]
pub struct KafkaGuard {
    guard: Guard,
    options: KafkaGuardOptions,
    /// Partitions waiting for a redelivery: the offset they are consumed again from.
    rewinds: Mutex<Rewinds>,
}

/// A batch of [`KafkaGuard::process_batch`] between its preparation and its run's end.
pub(crate) struct PreparedBatch<T, E, X = EventEnvelope> {
    /// How many messages the batch has.
    count: usize,
    /// Each message's position, in order.
    positions: Vec<MessagePosition>,
    /// The indices of the messages of partitions still assigned.
    live: Vec<usize>,
    /// Per live message: its input when known before running (`None`: it runs).
    known: Vec<Option<Input<T, E>>>,
    /// The events that run (envelopes, or identities), in order.
    pub(crate) to_run: Vec<X>,
    /// When it was admitted (see `Rewinds::epoch`).
    epoch: u64,
}

impl KafkaGuard {
    /// A Kafka guard over `guard`, with the default options.
    pub fn new(guard: Guard) -> Self {
        Self::with_options(guard, KafkaGuardOptions::default())
    }

    /// A Kafka guard over `guard`, with `options`.
    pub fn with_options(guard: Guard, options: KafkaGuardOptions) -> Self {
        KafkaGuard {
            guard,
            options,
            rewinds: Mutex::new(Rewinds::default()),
        }
    }

    /// The guard.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The options.
    pub fn options(&self) -> &KafkaGuardOptions {
        &self.options
    }

    /// Processes one consumed message: envelope, [`Guard::run`] with the future `handler`
    /// returns for it, then commit or redelivery (see the type's documentation).
    ///
    /// `Ok` carries what became of the message; `Err` is a message that is not an
    /// identifiable event, which the caller must route (dead-letter and [`commit_past`])
    /// or stop on. A `CommitMode::Sync` commit blocks the calling thread until the broker
    /// answers, and the look-up of the group's committed offset before a seek back to a
    /// pending redelivery for at most `seek_timeout`; seeks do not wait.
    ///
    /// # Errors
    ///
    /// A [`MessageError`] if the message is not an identifiable event: it has no value, is
    /// not a valid envelope or has a bad or mismatched `event_id` or `event_type` header
    /// (see [`envelope_from_message_within`]), or the guard cannot key it
    /// ([`MessageError::Unidentifiable`]). Its offset is not committed.
    pub async fn process<K, C, M, F, Fut, T, E>(
        &self,
        consumer: &K,
        message: &M,
        handler: F,
    ) -> Result<Delivery<T, E>, MessageError>
    where
        K: Consumer<C>,
        C: ConsumerContext,
        M: Message,
        F: FnOnce(EventEnvelope) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        self.process_one(consumer, message, handler, |message| {
            let config = self.guard.config();
            envelope_from_message_within(message, config.key_scheme(), config.max_payload_bytes())
                .map(|envelope| self.stamped(envelope, message))
        })
        .await
    }

    /// One message through the guard: its event made by `identify` (an envelope or an
    /// identity), admitted behind any redelivery its partition waits for, run, settled,
    /// and committed or sought back.
    async fn process_one<K, C, M, X, F, Fut, T, E>(
        &self,
        consumer: &K,
        message: &M,
        handler: F,
        identify: impl FnOnce(&M) -> Result<X, MessageError>,
    ) -> Result<Delivery<T, E>, MessageError>
    where
        K: Consumer<C>,
        C: ConsumerContext,
        M: Message,
        X: Identify + Clone,
        F: FnOnce(X) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let position = MessagePosition::of(message);
        self.forget_stale(consumer, std::slice::from_ref(&position), None);
        let event = identify(message);
        let admitted = self
            .lock_rewinds()
            .admit(&[(&position, event.is_ok())])
            .first()
            .copied()
            .unwrap_or(false);
        let input = match event {
            _ if !admitted => Input::NotRun,
            Ok(event) => Input::Ran(self.guard.run(&event, handler(event.clone())).await),
            Err(error) => Input::Unidentifiable(error),
        };
        let plan = self.lock_rewinds().settle(vec![(&position, input)]);
        let mut answers = self.carry_out(consumer, plan, &[&position], false).await;
        answers
            .pop()
            .unwrap_or(Ok(Delivery::Redeliver(Retry::Rewinding)))
    }

    /// `envelope` with the message's own timestamp (create or log-append time) as its
    /// `event_timestamp` when it has none and a maximum age applies to its type, so that
    /// the stale-event check can tell its age.
    fn stamped(&self, mut envelope: EventEnvelope, message: &impl Message) -> EventEnvelope {
        let config = self.guard.config();
        if envelope.event_timestamp.is_none()
            && config.max_event_age_for(&envelope.event_type).is_some()
        {
            envelope.event_timestamp = message_time(message).and_then(rfc3339);
        }
        envelope
    }

    /// Processes one consumed message of any format: `identify` builds its
    /// [`Identity`] (from headers, the key, or the body through any deserializer), then
    /// [`Guard::run`] runs `handler` with it, and the offset is committed or the message
    /// redelivered as [`process`](Self::process) does. An identity without a timestamp
    /// gets the message's own (create or log-append time), for the stale-event check.
    ///
    /// ```no_run
    /// # mod eventonce { pub use eventonce_core::*; pub mod kafka { pub use eventonce_kafka::*; } pub mod memory { pub use eventonce_memory::*; } }
    /// use eventonce::kafka::rdkafka::consumer::{Consumer, StreamConsumer};
    /// use eventonce::kafka::rdkafka::message::{Headers, Message};
    /// use eventonce::kafka::{consumer_config, Delivery, KafkaGuard};
    /// use eventonce::memory::MemoryStore;
    /// use eventonce::{Guard, IdempotencyConfig, Identity};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let consumer: StreamConsumer = consumer_config("127.0.0.1:9092", "billing").create()?;
    /// consumer.subscribe(&["orders-avro"])?;
    /// let kafka = KafkaGuard::new(Guard::new(MemoryStore::new(), IdempotencyConfig::builder("billing").build()?));
    /// loop {
    ///     let message = consumer.recv().await?;
    ///     // The id travels in a header; the body (Avro, Protobuf, ...) is the fingerprint.
    ///     let identify = |m: &_| {
    ///         let m: &eventonce::kafka::rdkafka::message::BorrowedMessage<'_> = m;
    ///         let id = m
    ///             .headers()
    ///             .and_then(|h| h.iter().find(|h| h.key == "message-id"))
    ///             .and_then(|h| h.value)
    ///             .ok_or("no message-id header")?;
    ///         Ok::<_, &str>(Identity::new("orders.placed.v1", id).with_fingerprint(m.payload().unwrap_or_default()))
    ///     };
    ///     match kafka.process_identified(&consumer, &message, identify, |_identity| async {
    ///         Ok::<_, std::io::Error>(()) // decode the body and apply its effect
    ///     }).await {
    ///         Ok(Delivery::Committed(_) | Delivery::CommitFailed { .. }) => {} // final
    ///         Ok(Delivery::Redeliver(_)) => {} // it comes again
    ///         Err(refused) => eprintln!("dead-letter, then commit_past: {refused}"),
    ///     }
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`MessageError::NotIdentified`] when `identify` fails, [`MessageError::Unidentifiable`]
    /// when the guard cannot key the identity, [`MessageError::Refused`] for a payload
    /// conflict or a stale event: the offset is not committed, route the message and
    /// [`commit_past`] it.
    pub async fn process_identified<K, C, M, I, D, F, Fut, T, E>(
        &self,
        consumer: &K,
        message: &M,
        identify: I,
        handler: F,
    ) -> Result<Delivery<T, E>, MessageError>
    where
        K: Consumer<C>,
        C: ConsumerContext,
        M: Message,
        I: FnOnce(&M) -> Result<Identity, D>,
        D: std::fmt::Display,
        F: FnOnce(Identity) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        self.process_one(consumer, message, handler, |message| {
            identified(identify(message), message)
        })
        .await
    }

    /// Processes a batch of consumed messages (in the order the consumer yielded them)
    /// with one [`Guard::run_batch`]: two store round trips for the batch instead of two
    /// per message, the new events' handlers run concurrently. Returns what became of each
    /// message, in order.
    ///
    /// The decisions are those of [`process`](Self::process), the same function of the
    /// guard's outcomes applied to the batch: given the same outcomes, each message gets
    /// the answers `process` gives it message by message, apart from extra `Rewinding`
    /// answers for messages that come again (below), and each partition ends committed at
    /// the same offset. One difference the outcomes themselves show: a handler that ran
    /// in the batch after an earlier message of its partition failed makes its message's
    /// redelivery a `Duplicate` where `process` would have answered `Processed`. Per
    /// partition: the
    /// offset after the longest run of messages whose outcome is final, from the batch's
    /// first message of that partition, is committed (one commit for the batch). The first
    /// message that is not final (handler failed, in progress elsewhere, store refused) is
    /// redelivered: after the backoff its partition is sought back to it. Messages of that
    /// partition after it are answered `Redeliver(Retry::Rewinding)`, even when their
    /// handler ran (they ran concurrently): their offsets are not committed, and their
    /// redelivery finds them completed (a duplicate, skipped).
    ///
    /// A message that cannot be identified is returned as `Err`, and nothing of its
    /// partition from it on is committed: dead-letter it and [`commit_past`] it, or stop.
    /// The messages of its partition after it in the batch are not run: they are answered
    /// `Rewinding` and the partition is sought to the message after the unidentifiable
    /// one, so that they come again once the caller has decided (where `process`, called
    /// after that decision, would have run them).
    ///
    /// A batch gathered over several polls can span a rebalance. Messages of a partition
    /// that is no longer assigned to the consumer are not run and are answered
    /// [`Retry::Revoked`]; the partition's new owner consumes them from the group's
    /// committed offset. Only partitions still assigned when the batch is committed are
    /// committed: a final outcome of a partition lost in between is answered
    /// [`Delivery::CommitFailed`], and the new owner's redelivery of it is a duplicate
    /// (see there for the outcomes where it is not).
    pub async fn process_batch<K, C, M, F, Fut, T, E>(
        &self,
        consumer: &K,
        messages: &[M],
        mut handler: F,
    ) -> Vec<Result<Delivery<T, E>, MessageError>>
    where
        K: Consumer<C>,
        C: ConsumerContext,
        M: Message,
        F: FnMut(EventEnvelope) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let prepared = self.prepare_batch(consumer, messages);
        let results = self
            .guard
            .run_batch(&prepared.to_run, |envelope| handler(envelope.clone()))
            .await;
        self.finish_batch(consumer, prepared, results).await.0
    }

    /// [`process_batch`](Self::process_batch) for messages of any format: `identify`
    /// builds each message's [`Identity`] (as in
    /// [`process_identified`](Self::process_identified), the message's timestamp filling
    /// in a missing one), then the batch runs through [`Guard::run_batch`] and is decided,
    /// committed and sought as `process_batch` does. A message `identify` refuses is
    /// answered [`MessageError::NotIdentified`], as an unidentifiable envelope is.
    ///
    /// # Errors
    ///
    /// Each message's answer is `Err` as in [`process_identified`](Self::process_identified).
    pub async fn process_batch_identified<K, C, M, I, D, F, Fut, T, E>(
        &self,
        consumer: &K,
        messages: &[M],
        mut identify: I,
        mut handler: F,
    ) -> Vec<Result<Delivery<T, E>, MessageError>>
    where
        K: Consumer<C>,
        C: ConsumerContext,
        M: Message,
        I: FnMut(&M) -> Result<Identity, D>,
        D: std::fmt::Display,
        F: FnMut(Identity) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let prepared = self.prepare_batch_with(consumer, messages, |message| {
            identified(identify(message), message)
        });
        let results = self
            .guard
            .run_batch(&prepared.to_run, |identity| handler(identity.clone()))
            .await;
        self.finish_batch(consumer, prepared, results).await.0
    }

    /// The part of [`process_batch`](Self::process_batch) before running: the messages'
    /// positions, which partitions are still assigned, and which messages run.
    pub(crate) fn prepare_batch<K, C, M, T, E>(
        &self,
        consumer: &K,
        messages: &[M],
    ) -> PreparedBatch<T, E>
    where
        K: Consumer<C>,
        C: ConsumerContext,
        M: Message,
    {
        self.prepare_batch_with(consumer, messages, |message| {
            let config = self.guard.config();
            envelope_from_message_within(message, config.key_scheme(), config.max_payload_bytes())
                .map(|envelope| self.stamped(envelope, message))
        })
    }

    /// [`prepare_batch`](Self::prepare_batch) with the event of each message made by
    /// `identify` (an envelope, or an identity).
    pub(crate) fn prepare_batch_with<K, C, M, X, T, E>(
        &self,
        consumer: &K,
        messages: &[M],
        mut identify: impl FnMut(&M) -> Result<X, MessageError>,
    ) -> PreparedBatch<T, E, X>
    where
        K: Consumer<C>,
        C: ConsumerContext,
        M: Message,
    {
        let positions: Vec<MessagePosition> = messages.iter().map(MessagePosition::of).collect();
        let assigned = assignment(consumer);
        let owned = |p: &MessagePosition| {
            assigned
                .as_ref()
                .is_none_or(|a| a.contains(&(p.topic.clone(), p.partition)))
        };
        self.forget_stale(consumer, &positions, assigned.as_ref());

        // The messages of partitions still assigned; which of them are decided now, and
        // which of those run (`None` below: its result comes from the batch run).
        let live: Vec<usize> = (0..messages.len())
            .filter(|&i| owned(&positions[i]))
            .collect();
        let events: Vec<Result<X, MessageError>> =
            live.iter().map(|&i| identify(&messages[i])).collect();
        let (admitted, epoch) = {
            let asked: Vec<(&MessagePosition, bool)> = live
                .iter()
                .zip(&events)
                .map(|(&i, e)| (&positions[i], e.is_ok()))
                .collect();
            let rewinds = self.lock_rewinds();
            (rewinds.admit(&asked), rewinds.epoch())
        };
        let mut to_run = Vec::new();
        let known: Vec<Option<Input<T, E>>> = events
            .into_iter()
            .zip(&admitted)
            .map(|(event, &admitted)| match event {
                _ if !admitted => Some(Input::NotRun),
                Ok(event) => {
                    to_run.push(event);
                    None
                }
                Err(error) => Some(Input::Unidentifiable(error)),
            })
            .collect();
        PreparedBatch {
            count: messages.len(),
            positions,
            live,
            known,
            to_run,
            epoch,
        }
    }

    /// The part of [`process_batch`](Self::process_batch) after running: the decisions,
    /// the commit and the seeks, and each message's answer in order; `true` when a
    /// partition was sought.
    pub(crate) async fn finish_batch<K, C, X, T, E>(
        &self,
        consumer: &K,
        prepared: PreparedBatch<T, E, X>,
        results: Vec<Result<Outcome<T>, GuardError<E>>>,
    ) -> (Vec<Result<Delivery<T, E>, MessageError>>, bool)
    where
        K: Consumer<C>,
        C: ConsumerContext,
    {
        let PreparedBatch {
            count,
            positions,
            live,
            known,
            to_run: _,
            epoch,
        } = prepared;
        let mut results = results.into_iter();
        let inputs: Vec<(&MessagePosition, Input<T, E>)> = live
            .iter()
            .zip(known)
            .map(|(&i, input)| {
                let input = input.unwrap_or_else(|| match results.next() {
                    Some(result) => Input::Ran(result),
                    None => Input::NotRun,
                });
                (&positions[i], input)
            })
            .collect();
        let decided: Vec<&MessagePosition> = inputs.iter().map(|(p, _)| *p).collect();
        let plan = self.lock_rewinds().settle_admitted_at(epoch, inputs);
        let sought = !plan.seeks.is_empty();
        let answers = self.carry_out(consumer, plan, &decided, true).await;

        let mut answers = answers.into_iter();
        let mut live = live.into_iter().peekable();
        let answers = (0..count)
            .map(|i| {
                if live.peek() == Some(&i) {
                    live.next();
                    answers
                        .next()
                        .unwrap_or(Ok(Delivery::Redeliver(Retry::Rewinding)))
                } else {
                    Ok(Delivery::Redeliver(Retry::Revoked))
                }
            })
            .collect();
        (answers, sought)
    }

    /// Whether a partition waits for a redelivery.
    pub(crate) fn redelivery_pending(&self) -> bool {
        !self.lock_rewinds().is_empty()
    }

    fn lock_rewinds(&self) -> std::sync::MutexGuard<'_, Rewinds> {
        // The map is never left half-updated, so a poisoned lock is still consistent.
        self.rewinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets the redeliveries that no longer apply before `positions` are decided: those
    /// of partitions no longer assigned to the consumer (`assigned`, looked up when not
    /// given), and those whose partition's committed offset has moved past them. This
    /// consumer never commits past a redelivery it waits for, so the latter means another
    /// member owned the partition meanwhile and processed the message; going back to it
    /// would replay what that member committed. Looked up only while a redelivery is
    /// pending, and the committed offset only for a partition with a message after it.
    fn forget_stale<K, C>(
        &self,
        consumer: &K,
        positions: &[MessagePosition],
        assigned: Option<&HashSet<Partition>>,
    ) where
        K: Consumer<C>,
        C: ConsumerContext,
    {
        if self.lock_rewinds().is_empty() {
            return;
        }
        let looked_up;
        let assigned = match assigned {
            Some(a) => Some(a),
            None => {
                looked_up = assignment(consumer);
                looked_up.as_ref()
            }
        };
        let mut ahead: BTreeMap<Partition, i64> = BTreeMap::new();
        {
            let mut rewinds = self.lock_rewinds();
            if let Some(assigned) = assigned {
                for partition in rewinds.partitions() {
                    if !assigned.contains(&partition) {
                        let at = rewinds.forget(&partition);
                        tracing::info!(topic = %partition.0, partition = partition.1, offset = ?at, "KAFKA_REDELIVERY_DROPPED: partition no longer assigned; its new owner consumes it from the group's committed offset");
                    }
                }
            }
            for p in positions {
                let partition = (p.topic.clone(), p.partition);
                if let Some(at) = rewinds.pending(&partition) {
                    if p.offset > at {
                        ahead.insert(partition, at);
                    }
                }
            }
        }
        if ahead.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in ahead.keys() {
            tpl.add_partition(topic, *partition);
        }
        let committed = match consumer.committed_offsets(tpl, self.options.seek_timeout) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(error = %error, "KAFKA_COMMITTED_UNKNOWN: could not look up the committed offsets before a seek back; the pending redeliveries stay");
                return;
            }
        };
        let mut rewinds = self.lock_rewinds();
        for ((topic, partition), at) in ahead {
            let moved = committed
                .find_partition(&topic, partition)
                .map(|e| e.offset());
            if let Some(Offset::Offset(c)) = moved {
                if c > at && rewinds.pending(&(topic.clone(), partition)) == Some(at) {
                    rewinds.forget(&(topic.clone(), partition));
                    tracing::info!(topic = %topic, partition, offset = at, committed = c, "KAFKA_REDELIVERY_DROPPED: the group's committed offset moved past the pending redelivery (another member processed it); going on from there");
                }
            }
        }
    }

    /// Commits, seeks and answers as `plan` says; `positions` are the plan's messages, in
    /// its order. `recheck`: commit only the partitions still assigned (a batch can span
    /// a rebalance); the final outcomes of the others are answered `CommitFailed` with
    /// `AssignmentLost`.
    async fn carry_out<K, C, T, E>(
        &self,
        consumer: &K,
        plan: Plan<T, E>,
        positions: &[&MessagePosition],
        recheck: bool,
    ) -> Vec<Result<Delivery<T, E>, MessageError>>
    where
        K: Consumer<C>,
        C: ConsumerContext,
    {
        let Plan {
            answers,
            mut commits,
            seeks,
        } = plan;
        let mut lost: HashSet<Partition> = HashSet::new();
        if recheck && !commits.is_empty() {
            if let Some(assigned) = assignment(consumer) {
                commits.retain(|partition, offset| {
                    let keep = assigned.contains(partition);
                    if !keep {
                        tracing::warn!(topic = %partition.0, partition = partition.1, offset = *offset, "KAFKA_COMMIT_SKIPPED: partition no longer assigned; its new owner consumes it again from the group's committed offset, where these messages are duplicates");
                        lost.insert(partition.clone());
                    }
                    keep
                });
            }
        }
        let committed = if commits.is_empty() {
            Ok(())
        } else {
            let mut tpl = TopicPartitionList::new();
            let added = commits.iter().try_for_each(|((topic, partition), offset)| {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            });
            added.and_then(|()| consumer.commit(&tpl, self.options.commit_mode))
        };
        if let Err(error) = &committed {
            tracing::warn!(error = %error, offsets = ?commits, "KAFKA_COMMIT_FAILED: outcomes final, offsets not committed; a redelivery is a duplicate where the event was recorded as completed");
        }
        let mut backoff = Duration::ZERO;
        let answers: Vec<_> = answers
            .into_iter()
            .zip(positions)
            .map(|(answer, position)| match answer {
                Answer::Final(outcome) => {
                    let partition = (position.topic.clone(), position.partition);
                    Ok(match &committed {
                        _ if lost.contains(&partition) => Delivery::CommitFailed {
                            outcome,
                            error: KafkaError::ConsumerCommit(RDKafkaErrorCode::AssignmentLost),
                        },
                        Ok(()) => Delivery::Committed(outcome),
                        Err(error) => Delivery::CommitFailed {
                            outcome,
                            error: error.clone(),
                        },
                    })
                }
                Answer::Redeliver(retry) => {
                    backoff = backoff.max(self.backoff(&retry));
                    Ok(Delivery::Redeliver(retry))
                }
                Answer::Unidentifiable(error) => Err(error),
            })
            .collect();
        if !seeks.is_empty() {
            if !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
            }
            for ((topic, partition), offset) in &seeks {
                if lost.contains(&(topic.clone(), *partition)) {
                    continue;
                }
                let position = MessagePosition {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                };
                self.seek_back(consumer, &position);
            }
        }
        answers
    }

    fn backoff<E>(&self, retry: &Retry<E>) -> Duration {
        match retry {
            Retry::InProgress => self.options.in_progress_backoff,
            Retry::Rewinding | Retry::Revoked => Duration::ZERO,
            Retry::Handler(_) | Retry::Store(_) | Retry::Other(_) => self.options.retry_backoff,
        }
    }

    /// Seeks the message's partition back to it. A failure (the partition was revoked
    /// meanwhile, say) is logged; the rewind stays pending, so later messages of the
    /// partition are held back and the seek is tried again.
    fn seek_back<K, C>(&self, consumer: &K, position: &MessagePosition)
    where
        K: Consumer<C>,
        C: ConsumerContext,
    {
        let mut tpl = TopicPartitionList::new();
        let added = tpl.add_partition_offset(
            &position.topic,
            position.partition,
            Offset::Offset(position.offset),
        );
        // Without a timeout the seek does not wait for the fetcher: librdkafka bumps the
        // partition's fetch version at once, in this call, and drops every message
        // fetched before it at the next poll, so nothing fetched ahead is consumed after
        // the seek; the fetcher's own answer (`InProgress` here) is not awaited.
        let result = added
            .and_then(|()| consumer.seek_partitions(tpl, Duration::ZERO))
            .and_then(|tpl| {
                let failed = tpl.elements().iter().find_map(|e| match e.error() {
                    Err(KafkaError::OffsetFetch(RDKafkaErrorCode::InProgress)) | Ok(()) => None,
                    Err(error) => Some(error),
                });
                failed.map_or(Ok(()), Err)
            });
        if let Err(error) = result {
            tracing::warn!(message = %position, error = %error, "KAFKA_SEEK_FAILED: could not seek back to a message to redeliver; later messages of its partition are held back");
        }
    }
}

/// The partitions assigned to `consumer`; `None` when the look-up failed (then nothing is
/// taken as revoked).
fn assignment<K, C>(consumer: &K) -> Option<HashSet<Partition>>
where
    K: Consumer<C>,
    C: ConsumerContext,
{
    match consumer.assignment() {
        Ok(tpl) => Some(
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect(),
        ),
        Err(error) => {
            tracing::warn!(error = %error, "KAFKA_ASSIGNMENT_UNKNOWN: could not look up the consumer's assignment");
            None
        }
    }
}

/// Commits `offset` (the next one to consume) for the message's partition.
fn commit_offset<K, C>(
    consumer: &K,
    position: &MessagePosition,
    offset: i64,
    mode: CommitMode,
) -> Result<(), KafkaError>
where
    K: Consumer<C>,
    C: ConsumerContext,
{
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&position.topic, position.partition, Offset::Offset(offset))?;
    consumer.commit(&tpl, mode)
}

/// Commits the offset after `position`: for a message the caller has dealt with itself,
/// such as one that [`KafkaGuard::process`] could not identify and the caller wrote to a
/// dead-letter topic.
///
/// # Errors
///
/// The [`KafkaError`] of building the offset list or of the consumer's commit (for
/// example, when the partition is no longer assigned or the broker cannot be reached).
pub fn commit_past<K, C>(
    consumer: &K,
    position: &MessagePosition,
    mode: CommitMode,
) -> Result<(), KafkaError>
where
    K: Consumer<C>,
    C: ConsumerContext,
{
    commit_offset(consumer, position, position.offset + 1, mode)
}

/// A consumer configuration for [`KafkaGuard`]: `bootstrap.servers`, `group.id`, no
/// automatic commit or offset store, `auto.offset.reset=earliest` so that a new group
/// starts at the beginning, and `session.timeout.ms=10000`. Add your own settings
/// (security, timeouts) to it.
///
/// The session timeout is Kafka's default before 3.0 (librdkafka's is 45 s): a consumer
/// that died hands its partitions on within 10 s, and a new group gets its first
/// assignment within seconds (the project's test broker holds the first join for half the
/// session timeout: 23 s at 45 s, 5 s at 10 s). librdkafka heartbeats from its own thread,
/// so a slow handler does not lose its partitions; raise it (`config.set(..)`) where the
/// network between consumers and brokers is slow.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; pub mod kafka { pub use eventonce_kafka::*; } pub mod memory { pub use eventonce_memory::*; } }
/// let config = eventonce::kafka::consumer_config("127.0.0.1:9092", "billing");
/// assert_eq!(config.get("enable.auto.commit"), Some("false"));
/// assert_eq!(config.get("session.timeout.ms"), Some("10000"));
/// ```
pub fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000");
    config
}

/// What the caller's identify function made of `message`: its identity (the message's
/// timestamp filling in a missing one), or why not, as a [`MessageError`].
fn identified<D: std::fmt::Display>(
    identity: Result<Identity, D>,
    message: &impl Message,
) -> Result<Identity, MessageError> {
    match identity {
        Ok(identity) => Ok(match (identity.timestamp(), message_time(message)) {
            (None, Some(at)) => identity.with_timestamp(at),
            _ => identity,
        }),
        Err(reason) => Err(MessageError::NotIdentified {
            position: MessagePosition::of(message),
            reason: eventonce_core::bounded(&reason.to_string()).into_owned(),
        }),
    }
}

/// `at` in RFC 3339, UTC.
fn rfc3339(at: std::time::SystemTime) -> Option<String> {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// When the message was created or appended to its log, if the broker says.
fn message_time(message: &impl Message) -> Option<std::time::SystemTime> {
    let millis = message.timestamp().to_millis()?;
    let millis = u64::try_from(millis).ok()?;
    std::time::UNIX_EPOCH.checked_add(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_config_never_commits_by_itself() {
        let c = consumer_config("127.0.0.1:1", "g");
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("group.id"), Some("g"));
    }
}
