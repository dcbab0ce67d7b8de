//! The per-partition decisions of [`KafkaGuard`](crate::KafkaGuard), one pure function
//! shared by [`process`](crate::KafkaGuard::process) (one message a call) and
//! [`process_batch`](crate::KafkaGuard::process_batch) (a batch a call): which messages
//! may run, what each is answered, which offset of each partition is committed, where
//! each partition is sought back to, and which redeliveries later calls must wait for.
//! No consumer and no store here: the callers do the I/O.

use std::collections::{BTreeMap, HashMap};

use eventonce_core::{GuardError, Outcome};

use crate::consumer::Retry;
use crate::message::{MessageError, MessagePosition};

/// A partition: topic and partition number.
pub(crate) type Partition = (String, i32);

fn partition_of(position: &MessagePosition) -> Partition {
    (position.topic.clone(), position.partition)
}

/// What a message came to before its decision.
#[derive(Debug)]
pub(crate) enum Input<T, E> {
    /// It is not an identifiable event (found before running).
    Unidentifiable(MessageError),
    /// What the guard answered.
    Ran(Result<Outcome<T>, GuardError<E>>),
    /// It was not run: [`Rewinds::admit`] held it back.
    NotRun,
}

/// What a message is answered (before the commit's own result is known).
#[derive(Debug)]
pub(crate) enum Answer<T, E> {
    /// The outcome is final: the partition's commit covers it.
    Final(Outcome<T>),
    /// It must come again.
    Redeliver(Retry<E>),
    /// Not an identifiable event: the caller dead-letters it or stops.
    Unidentifiable(MessageError),
}

/// The decisions of one call.
#[derive(Debug)]
pub(crate) struct Plan<T, E> {
    /// One answer per message, in the order given.
    pub(crate) answers: Vec<Answer<T, E>>,
    /// The offset to commit (the next one to consume), per partition that moved.
    pub(crate) commits: BTreeMap<Partition, i64>,
    /// The offset to seek back to, per partition that must be consumed again from there.
    pub(crate) seeks: BTreeMap<Partition, i64>,
}

/// A partition that waits: messages after `after` are held back, and it is consumed again
/// from `resume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hold {
    after: i64,
    resume: i64,
    /// Whether the partition was (or is to be) sought to `resume`: a hold that nothing
    /// sought (an unidentifiable message, alone in its call) ends with the call.
    sought: bool,
}

/// One partition's state during a call.
#[derive(Debug, Clone)]
struct Lane {
    hold: Option<Hold>,
    commit: Option<i64>,
    seek: Option<i64>,
}

impl Lane {
    /// A lane that waits for the redelivery at `pending`, or else, when `fenced`, holds
    /// back what follows the unidentifiable message at that offset (decided by a later
    /// call than the one that admitted this call's messages).
    fn new(pending: Option<i64>, fenced: Option<i64>) -> Self {
        let waiting = pending.map(|at| Hold {
            after: at,
            resume: at,
            sought: true,
        });
        Lane {
            hold: waiting.or(fenced.map(|at| Hold {
                after: at,
                resume: at + 1,
                sought: false,
            })),
            commit: None,
            seek: None,
        }
    }

    /// Whether the message at `offset` is decided now (`false`: held back behind an
    /// earlier message of its partition, which must come first). A message at or before
    /// the held offset (the redelivery itself, or a replay from an earlier offset) ends
    /// the hold.
    fn admits(&mut self, offset: i64) -> bool {
        match &mut self.hold {
            Some(hold) if offset > hold.after => {
                hold.sought = true;
                self.seek = Some(hold.resume);
                false
            }
            Some(_) => {
                self.hold = None;
                self.seek = None;
                true
            }
            None => true,
        }
    }

    /// An unidentifiable message at `offset`: the caller decides about it after the call,
    /// so nothing after it is decided in this call; later messages of the partition, if
    /// the call has any, come again from the next offset.
    fn unidentifiable(&mut self, offset: i64) {
        self.hold = Some(Hold {
            after: offset,
            resume: offset + 1,
            sought: false,
        });
    }

    /// A message at `offset` that must come again: seek back to it.
    fn redeliver(&mut self, offset: i64) {
        self.hold = Some(Hold {
            after: offset,
            resume: offset,
            sought: true,
        });
        self.seek = Some(offset);
    }

    fn decide<T, E>(&mut self, position: &MessagePosition, input: Input<T, E>) -> Answer<T, E> {
        let offset = position.offset;
        if !self.admits(offset) {
            return Answer::Redeliver(Retry::Rewinding);
        }
        match input {
            Input::NotRun => {
                // `admit` holds back a subset of what is held back here; should that ever
                // not be so, the message still comes again rather than being passed over.
                debug_assert!(false, "{position}: not run, yet not held back");
                self.redeliver(offset);
                Answer::Redeliver(Retry::Rewinding)
            }
            Input::Unidentifiable(error) => {
                self.unidentifiable(offset);
                Answer::Unidentifiable(error)
            }
            Input::Ran(Ok(outcome)) => {
                self.commit = Some(offset + 1);
                Answer::Final(outcome)
            }
            Input::Ran(Err(GuardError::InvalidEvent(source))) => {
                self.unidentifiable(offset);
                Answer::Unidentifiable(MessageError::Unidentifiable {
                    position: position.clone(),
                    source,
                })
            }
            // Final refusals: handled as an unidentifiable message is, for the caller to
            // dead-letter (or pass) and commit past; never retried.
            Input::Ran(Err(error @ (GuardError::Conflict { .. } | GuardError::Stale { .. }))) => {
                self.unidentifiable(offset);
                let skipped = matches!(error, GuardError::Stale { skipped: true, .. });
                Answer::Unidentifiable(MessageError::Refused {
                    position: position.clone(),
                    reason: refusal_text(&error),
                    skipped,
                })
            }
            Input::Ran(Err(error)) => {
                self.redeliver(offset);
                Answer::Redeliver(match error {
                    GuardError::Handler(e) => Retry::Handler(e),
                    GuardError::InProgress => Retry::InProgress,
                    GuardError::Store(e) => Retry::Store(e),
                    other => Retry::Other(other),
                })
            }
        }
    }

    /// The redelivery later calls wait for.
    fn pending(&self) -> Option<i64> {
        self.hold.filter(|h| h.sought).map(|h| h.resume)
    }
}

/// The partitions waiting for a redelivery, and the offset each waits for, carried from
/// call to call.
#[derive(Debug, Default)]
pub(crate) struct Rewinds {
    pending: HashMap<Partition, i64>,
    /// How many calls were settled: the epoch of a call admitted now.
    settled: u64,
    /// Per partition, the unidentifiable message the latest call that found one left for
    /// the caller to decide about, and the epoch that call's settlement began: a call
    /// admitted before that (its messages ran alongside) must not decide anything of the
    /// partition after the message.
    fences: HashMap<Partition, (i64, u64)>,
}

impl Rewinds {
    /// The epoch of a call admitted now: calls admitted earlier and settled later are
    /// held back behind the unidentifiable messages the calls settled in between found.
    pub(crate) fn epoch(&self) -> u64 {
        self.settled
    }

    /// Whether no partition waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The offset `partition` waits to be consumed again from.
    pub(crate) fn pending(&self, partition: &Partition) -> Option<i64> {
        self.pending.get(partition).copied()
    }

    /// The partitions that wait.
    pub(crate) fn partitions(&self) -> Vec<Partition> {
        self.pending.keys().cloned().collect()
    }

    /// Forgets what `partition` waits for.
    pub(crate) fn forget(&mut self, partition: &Partition) -> Option<i64> {
        self.pending.remove(partition)
    }

    /// The lanes of `positions`' partitions, for a call admitted at `epoch`.
    fn lanes<'a>(&self, positions: impl Iterator<Item = &'a MessagePosition>, epoch: u64) -> Lanes {
        let mut lanes = HashMap::new();
        for position in positions {
            let partition = partition_of(position);
            let pending = self.pending(&partition);
            let fenced = self
                .fences
                .get(&partition)
                .filter(|(_, set)| *set > epoch)
                .map(|(at, _)| *at);
            lanes
                .entry(partition)
                .or_insert_with(|| Lane::new(pending, fenced));
        }
        Lanes(lanes)
    }

    /// Before running: which of the messages are decided in this call (the identifiable
    /// ones among them run), given which are identifiable events. A message is held back
    /// (`false`, not run) when an earlier message of its partition must come first: one
    /// this partition waits for since an earlier call, or an unidentifiable message
    /// earlier in `messages`, about which the caller decides after the call.
    pub(crate) fn admit(&self, messages: &[(&MessagePosition, bool)]) -> Vec<bool> {
        let mut lanes = self.lanes(messages.iter().map(|(p, _)| *p), self.settled);
        messages
            .iter()
            .map(|&(position, identifiable)| {
                let lane = lanes.get(position);
                let admitted = lane.admits(position.offset);
                if admitted && !identifiable {
                    lane.unidentifiable(position.offset);
                }
                admitted
            })
            .collect()
    }

    /// After running: the answers, commits and seeks for the messages (in the order the
    /// consumer yielded them), and what later calls wait for. Per partition:
    ///
    /// - a final outcome moves the commit to the offset after its message;
    /// - a message that must come again (the handler failed, `InProgress`, the store
    ///   refused) is answered why, and its partition is sought back to it;
    /// - the messages of the partition after it are answered `Rewinding`, whatever they
    ///   came to (they come again after it), and so are messages after an earlier call's
    ///   pending redelivery;
    /// - an unidentifiable message is returned for the caller to decide about; the
    ///   messages of its partition after it in the same call are answered `Rewinding`,
    ///   and the partition is sought to the next offset after it;
    /// - a message at or before the offset its partition waits for ends the wait.
    pub(crate) fn settle<T, E>(
        &mut self,
        messages: Vec<(&MessagePosition, Input<T, E>)>,
    ) -> Plan<T, E> {
        self.settle_admitted_at(self.settled, messages)
    }

    /// [`settle`](Self::settle) for a call admitted at `epoch` (see [`epoch`](Self::epoch)),
    /// whose messages may have run alongside calls settled since. Besides the rules of
    /// `settle`: the messages of a partition after an unidentifiable message that one of
    /// those calls found are answered `Rewinding`, and the partition is sought to the
    /// message after the unidentifiable one, as for a later message of that call; so none
    /// of them is committed before the caller has decided about it.
    pub(crate) fn settle_admitted_at<T, E>(
        &mut self,
        epoch: u64,
        messages: Vec<(&MessagePosition, Input<T, E>)>,
    ) -> Plan<T, E> {
        let mut lanes = self.lanes(messages.iter().map(|(p, _)| *p), epoch);
        let answers = messages
            .into_iter()
            .map(|(position, input)| lanes.get(position).decide(position, input))
            .collect();
        let mut plan = Plan {
            answers,
            commits: BTreeMap::new(),
            seeks: BTreeMap::new(),
        };
        // Calls admitted from now on follow every fence set so far; those admitted
        // before this one's settlement only follow the fences set since.
        self.settled += 1;
        let set = self.settled;
        self.fences.retain(|_, (_, at)| *at > epoch);
        for (partition, lane) in lanes.0 {
            if let Some(Hold {
                after,
                sought: false,
                ..
            }) = lane.hold
            {
                self.fences.insert(partition.clone(), (after, set));
            }
            if let Some(offset) = lane.commit {
                plan.commits.insert(partition.clone(), offset);
            }
            if let Some(offset) = lane.seek {
                plan.seeks.insert(partition.clone(), offset);
            }
            match lane.pending() {
                Some(offset) => self.pending.insert(partition, offset),
                None => self.pending.remove(&partition),
            };
        }
        plan
    }
}

struct Lanes(HashMap<Partition, Lane>);

impl Lanes {
    fn get(&mut self, position: &MessagePosition) -> &mut Lane {
        self.0
            .entry(partition_of(position))
            .or_insert_with(|| Lane::new(None, None))
    }
}

#[cfg(test)]
mod tests;

/// The text of a final refusal (the handler's error type needs no `Display` for it).
fn refusal_text<E>(error: &GuardError<E>) -> String {
    match error {
        GuardError::Conflict { key, stored, given } => format!(
            "payload conflict: {key} was recorded with fingerprint {stored}, this message has {given}"
        ),
        GuardError::Stale {
            age,
            max_age,
            skipped,
            ..
        } => format!(
            "stale: {age:?} old, past its maximum age {max_age:?} ({})",
            if *skipped { "skipped" } else { "refused" }
        ),
        _ => "refused".to_owned(),
    }
}
