//! [`KafkaGuard`]: one consumed message through [`Guard::run`], and its offset committed
//! only once the outcome is final.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use eventonce_core::{EventEnvelope, Guard, GuardError, Outcome, StoreError};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::message::{envelope_from_message, MessageError, MessagePosition};

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
    /// How long a seek may wait for the fetcher to drop the messages it fetched ahead.
    /// Default 5 s.
    pub seek_timeout: Duration,
}

impl Default for KafkaGuardOptions {
    fn default() -> Self {
        KafkaGuardOptions {
            commit_mode: CommitMode::Async,
            retry_backoff: Duration::from_millis(100),
            in_progress_backoff: Duration::from_millis(250),
            seek_timeout: Duration::from_secs(5),
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
    /// The outcome is final, but committing the offset failed: the event is recorded, so
    /// a redelivery will be a [`Outcome::Duplicate`].
    CommitFailed {
        /// The final outcome.
        outcome: Outcome<T>,
        /// The commit's error.
        error: KafkaError,
    },
    /// Not final: nothing was committed and the partition was sought back to this
    /// message, which will be consumed again after a backoff.
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
    /// An earlier message of this partition is waiting to be redelivered: this one's
    /// offset was not committed, so that nothing after that message is committed first.
    /// [`KafkaGuard::process`] did not run its handler; in
    /// [`KafkaGuard::process_batch`] it may have run, and then its redelivery is a
    /// duplicate, skipped.
    Rewinding,
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
/// 1. turns it into an [`EventEnvelope`] ([`envelope_from_message`]); a message that is
///    not an identifiable event is returned as [`MessageError`], nothing committed;
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
/// (`processing_ttl`); until then the redelivery sees `InProgress` and is retried with
/// `in_progress_backoff`, after it the event runs again.
///
/// Process the messages of one consumer one at a time, in the order the consumer yields
/// them (the consumer loop of `examples/kafka_consumer.rs`). The consumer must not commit
/// by itself: create it with `enable.auto.commit=false` (as [`consumer_config`] does).
///
/// A message that cannot be identified is never skipped here; but committing a later
/// offset of the same partition commits past it too. Decide before going on: write it
/// to a dead-letter topic and [`commit_past`] it, or stop consuming.
#[derive(Debug)]
pub struct KafkaGuard {
    guard: Guard,
    options: KafkaGuardOptions,
    /// Partitions waiting for a redelivery: the offset they were sought back to.
    rewinds: Mutex<Rewinds>,
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
    /// or stop on. Seeking and committing block the calling thread briefly (librdkafka
    /// calls, at most `seek_timeout`).
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
        let position = MessagePosition::of(message);
        let rewound_to = self.lock_rewinds().rewound_to(&position);
        if let Some(offset) = rewound_to {
            // An earlier message of this partition must come first: seek back to it again.
            self.seek_back(consumer, &position.at(offset));
            return Ok(Delivery::Redeliver(Retry::Rewinding));
        }
        let envelope = envelope_from_message(message)?;
        let result = self.guard.run(&envelope, handler(envelope.clone())).await;
        let (retry, backoff) = match result {
            Ok(outcome) => return Ok(self.commit(consumer, &position, outcome)),
            Err(GuardError::Handler(e)) => (Retry::Handler(e), self.options.retry_backoff),
            Err(GuardError::InProgress) => (Retry::InProgress, self.options.in_progress_backoff),
            Err(GuardError::Store(e)) => (Retry::Store(e), self.options.retry_backoff),
            Err(GuardError::InvalidEvent(source)) => {
                return Err(MessageError::Unidentifiable { position, source })
            }
            Err(other) => (Retry::Other(other), self.options.retry_backoff),
        };
        self.lock_rewinds().set(&position);
        tokio::time::sleep(backoff).await;
        self.seek_back(consumer, &position);
        Ok(Delivery::Redeliver(retry))
    }

    /// Processes a batch of consumed messages (in the order the consumer yielded them)
    /// with one [`Guard::run_batch`]: two store round trips for the batch instead of two
    /// per message, the new events' handlers run concurrently. Returns what became of each
    /// message, in order.
    ///
    /// Offsets, per partition: the offset after the longest run of messages whose outcome
    /// is final, from the batch's first message of that partition, is committed (one commit
    /// for the batch). The first message that is not final (handler failed, in progress
    /// elsewhere, store refused) is redelivered: after the backoff its partition is sought
    /// back to it. Messages of that partition after it are answered
    /// `Redeliver(Retry::Rewinding)`, even when their handler ran: their offsets are not
    /// committed, and their redelivery finds them completed (a duplicate, skipped). A
    /// message that cannot be identified is returned as `Err` and nothing of its partition
    /// from it on is committed: dead-letter it and [`commit_past`] it, or stop.
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
        let positions: Vec<MessagePosition> = messages.iter().map(MessagePosition::of).collect();
        let mut answers: Vec<Option<Result<Delivery<T, E>, MessageError>>> =
            messages.iter().map(|_| None).collect();
        let mut seeks: HashMap<(String, i32), i64> = HashMap::new();
        let mut envelopes = Vec::new();
        let mut slots = Vec::new();
        {
            let mut rewinds = self.lock_rewinds();
            for (i, (message, position)) in messages.iter().zip(&positions).enumerate() {
                if let Some(offset) = rewinds.rewound_to(position) {
                    seeks.insert((position.topic.clone(), position.partition), offset);
                    answers[i] = Some(Ok(Delivery::Redeliver(Retry::Rewinding)));
                    continue;
                }
                match envelope_from_message(message) {
                    Ok(envelope) => {
                        envelopes.push(envelope);
                        slots.push(i);
                    }
                    Err(err) => answers[i] = Some(Err(err)),
                }
            }
        }
        let results = self
            .guard
            .run_batch(&envelopes, |envelope| handler(envelope.clone()))
            .await;
        let mut results: Vec<Option<_>> = results.into_iter().map(Some).collect();
        // Message index → its envelope's result, for the identifiable messages.
        let mut result_of: Vec<Option<usize>> = vec![None; messages.len()];
        for (r, &i) in slots.iter().enumerate() {
            result_of[i] = Some(r);
        }

        // Walk the batch in order, partition by partition.
        let mut blocked: HashSet<(String, i32)> = HashSet::new();
        let mut commit_to: HashMap<(String, i32), i64> = HashMap::new();
        let mut finals: Vec<(usize, Outcome<T>)> = Vec::new();
        let mut backoff = Duration::ZERO;
        for (i, position) in positions.iter().enumerate() {
            let partition = (position.topic.clone(), position.partition);
            let Some(r) = result_of[i] else {
                // Held back, or not identifiable: nothing of this partition from here on.
                blocked.insert(partition);
                continue;
            };
            let Some(result) = results[r].take() else {
                continue;
            };
            if blocked.contains(&partition) {
                answers[i] = Some(Ok(Delivery::Redeliver(Retry::Rewinding)));
                continue;
            }
            let (retry, wait) = match result {
                Ok(outcome) => {
                    commit_to.insert(partition, position.offset + 1);
                    finals.push((i, outcome));
                    continue;
                }
                Err(GuardError::Handler(e)) => (Retry::Handler(e), self.options.retry_backoff),
                Err(GuardError::InProgress) => {
                    (Retry::InProgress, self.options.in_progress_backoff)
                }
                Err(GuardError::Store(e)) => (Retry::Store(e), self.options.retry_backoff),
                Err(GuardError::InvalidEvent(source)) => {
                    answers[i] = Some(Err(MessageError::Unidentifiable {
                        position: position.clone(),
                        source,
                    }));
                    blocked.insert(partition);
                    continue;
                }
                Err(other) => (Retry::Other(other), self.options.retry_backoff),
            };
            backoff = backoff.max(wait);
            self.lock_rewinds().set(position);
            seeks.insert(partition.clone(), position.offset);
            blocked.insert(partition);
            answers[i] = Some(Ok(Delivery::Redeliver(retry)));
        }

        // One commit for every partition that moved.
        let committed = if commit_to.is_empty() {
            Ok(())
        } else {
            let mut tpl = TopicPartitionList::new();
            let added = commit_to
                .iter()
                .try_for_each(|((topic, partition), offset)| {
                    tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                });
            added.and_then(|()| consumer.commit(&tpl, self.options.commit_mode))
        };
        if let Err(error) = &committed {
            tracing::warn!(error = %error, "KAFKA_COMMIT_FAILED: batch outcomes final, offsets not committed; redeliveries will be duplicates");
        }
        for (i, outcome) in finals {
            answers[i] = Some(Ok(match &committed {
                Ok(()) => Delivery::Committed(outcome),
                Err(error) => Delivery::CommitFailed {
                    outcome,
                    error: error.clone(),
                },
            }));
        }
        if !seeks.is_empty() {
            tokio::time::sleep(backoff).await;
            for ((topic, partition), offset) in &seeks {
                let position = MessagePosition {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                };
                self.seek_back(consumer, &position);
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or(Ok(Delivery::Redeliver(Retry::Rewinding))))
            .collect()
    }

    fn lock_rewinds(&self) -> std::sync::MutexGuard<'_, Rewinds> {
        // The map is never left half-updated, so a poisoned lock is still consistent.
        self.rewinds.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn commit<K, C, T, E>(
        &self,
        consumer: &K,
        position: &MessagePosition,
        outcome: Outcome<T>,
    ) -> Delivery<T, E>
    where
        K: Consumer<C>,
        C: ConsumerContext,
    {
        match commit_offset(
            consumer,
            position,
            position.offset + 1,
            self.options.commit_mode,
        ) {
            Ok(()) => Delivery::Committed(outcome),
            Err(error) => {
                tracing::warn!(message = %position, error = %error, "KAFKA_COMMIT_FAILED: outcome final, offset not committed; a redelivery will be a duplicate");
                Delivery::CommitFailed { outcome, error }
            }
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
        let result = added
            .and_then(|()| consumer.seek_partitions(tpl, self.options.seek_timeout))
            .and_then(
                |tpl| match tpl.elements().iter().find_map(|e| e.error().err()) {
                    Some(e) => Err(e),
                    None => Ok(()),
                },
            );
        if let Err(error) = result {
            tracing::warn!(message = %position, error = %error, "KAFKA_SEEK_FAILED: could not seek back to a message to redeliver; later messages of its partition are held back");
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
/// automatic commit or offset store, and `auto.offset.reset=earliest` so that a new group
/// starts at the beginning. Add your own settings (security, timeouts) to it.
///
/// ```
/// let config = eventonce_kafka::consumer_config("127.0.0.1:9092", "billing");
/// assert_eq!(config.get("enable.auto.commit"), Some("false"));
/// ```
pub fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    config
}

/// The partitions waiting for a redelivery, and the offset each was sought back to.
#[derive(Debug, Default)]
struct Rewinds {
    pending: HashMap<(String, i32), i64>,
}

impl Rewinds {
    fn set(&mut self, position: &MessagePosition) {
        self.pending.insert(
            (position.topic.clone(), position.partition),
            position.offset,
        );
    }

    /// Whether `position` must not be processed yet: a message before it in its
    /// partition waits for its redelivery. A message at or before the rewound offset (the
    /// redelivery itself, or a replay from an earlier committed offset after a
    /// rebalance) ends the rewind.
    #[cfg(test)]
    fn holds_back(&mut self, position: &MessagePosition) -> bool {
        self.rewound_to(position).is_some()
    }

    /// The offset `position`'s partition waits to be redelivered from, when `position`
    /// comes after it (see [`holds_back`](Self::holds_back)).
    fn rewound_to(&mut self, position: &MessagePosition) -> Option<i64> {
        let key = (position.topic.clone(), position.partition);
        match self.pending.get(&key) {
            Some(&at) if position.offset > at => Some(at),
            Some(_) => {
                self.pending.remove(&key);
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> MessagePosition {
        MessagePosition {
            topic: "t".into(),
            partition,
            offset,
        }
    }

    #[test]
    fn later_messages_of_a_rewound_partition_are_held_back() {
        let mut r = Rewinds::default();
        assert!(!r.holds_back(&at(0, 5)));
        r.set(&at(0, 5));
        assert!(r.holds_back(&at(0, 6)), "fetched ahead: held back");
        assert!(r.holds_back(&at(0, 9)));
        assert!(!r.holds_back(&at(1, 6)), "other partitions go on");
        assert!(!r.holds_back(&at(0, 5)), "the redelivery itself ends it");
        assert!(!r.holds_back(&at(0, 6)), "and what follows it runs");
    }

    #[test]
    fn a_replay_from_an_earlier_offset_ends_the_rewind() {
        let mut r = Rewinds::default();
        r.set(&at(2, 40));
        assert!(!r.holds_back(&at(2, 31)));
        assert!(!r.holds_back(&at(2, 41)));
    }

    #[test]
    fn the_consumer_config_never_commits_by_itself() {
        let c = consumer_config("127.0.0.1:1", "g");
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("group.id"), Some("g"));
    }
}
