use std::collections::{BTreeSet, VecDeque};

use eventonce_core::{IdentityError, StoreError};
use proptest::prelude::*;

use super::*;

fn at(partition: i32, offset: i64) -> MessagePosition {
    MessagePosition {
        topic: "t".into(),
        partition,
        offset,
    }
}

fn bad(position: &MessagePosition) -> MessageError {
    MessageError::NoPayload {
        position: position.clone(),
    }
}

type Result1 = Result<Outcome<()>, GuardError<String>>;

fn ok() -> Input<(), String> {
    Input::Ran(Ok(Outcome::Processed(())))
}

fn failed() -> Input<(), String> {
    Input::Ran(Err(GuardError::Handler("boom".into())))
}

/// Decides `messages` one call each, as `process` does: admit, then settle.
fn one_by_one(
    rewinds: &mut Rewinds,
    messages: Vec<(MessagePosition, Input<(), String>)>,
) -> Vec<Plan<(), String>> {
    messages
        .into_iter()
        .map(|(position, input)| {
            let identifiable = !matches!(input, Input::Unidentifiable(_));
            let admitted = rewinds.admit(&[(&position, identifiable)])[0];
            let input = if admitted { input } else { Input::NotRun };
            rewinds.settle(vec![(&position, input)])
        })
        .collect()
}

fn is_rewinding<T, E>(answer: &Answer<T, E>) -> bool {
    matches!(answer, Answer::Redeliver(Retry::Rewinding))
}

#[test]
fn later_messages_of_a_rewound_partition_are_held_back() {
    let mut r = Rewinds::default();
    let plans = one_by_one(
        &mut r,
        vec![
            (at(0, 5), failed()),
            (at(0, 6), ok()),
            (at(0, 9), ok()),
            (at(1, 6), ok()),
        ],
    );
    assert_eq!(plans[0].seeks.get(&("t".into(), 0)), Some(&5));
    assert!(plans[0].commits.is_empty());
    for plan in &plans[1..3] {
        assert!(is_rewinding(&plan.answers[0]), "fetched ahead: held back");
        assert_eq!(plan.seeks.get(&("t".into(), 0)), Some(&5), "sought again");
        assert!(plan.commits.is_empty());
    }
    assert!(
        matches!(plans[3].answers[0], Answer::Final(_)),
        "other partitions go on"
    );
    assert_eq!(r.pending(&("t".into(), 0)), Some(5));
    // The redelivery itself ends it, and what follows it runs.
    let plans = one_by_one(&mut r, vec![(at(0, 5), ok()), (at(0, 6), ok())]);
    assert_eq!(plans[0].commits.get(&("t".into(), 0)), Some(&6));
    assert_eq!(plans[1].commits.get(&("t".into(), 0)), Some(&7));
    assert!(r.is_empty());
}

#[test]
fn a_replay_from_an_earlier_offset_ends_the_wait() {
    let mut r = Rewinds::default();
    one_by_one(&mut r, vec![(at(2, 40), failed())]);
    let plans = one_by_one(&mut r, vec![(at(2, 31), ok()), (at(2, 41), ok())]);
    assert!(matches!(plans[0].answers[0], Answer::Final(_)));
    assert!(matches!(plans[1].answers[0], Answer::Final(_)));
    assert!(r.is_empty());
}

#[test]
fn an_unidentifiable_message_alone_leaves_nothing_pending() {
    let mut r = Rewinds::default();
    let position = at(0, 3);
    let plans = one_by_one(
        &mut r,
        vec![(position.clone(), Input::Unidentifiable(bad(&position)))],
    );
    assert!(matches!(plans[0].answers[0], Answer::Unidentifiable(_)));
    assert!(plans[0].seeks.is_empty() && plans[0].commits.is_empty());
    assert!(
        r.is_empty(),
        "process: the caller decides, then the next message runs"
    );
}

/// The scenario of a batch with @0 ok, @1 not json, @2 failing, @3 ok: @2 and @3 are not
/// run, the partition is sought to 2 and waits for it; nothing past @1 is committed.
#[test]
fn a_batch_stops_a_partition_at_an_unidentifiable_message_and_resumes_after_it() {
    let mut r = Rewinds::default();
    let positions: Vec<MessagePosition> = (0..4).map(|o| at(0, o)).collect();
    let admitted = r.admit(&[
        (&positions[0], true),
        (&positions[1], false),
        (&positions[2], true),
        (&positions[3], true),
        // Another partition goes on.
    ]);
    assert_eq!(admitted, vec![true, true, false, false]);
    let plan = r.settle(vec![
        (&positions[0], ok()),
        (&positions[1], Input::Unidentifiable(bad(&positions[1]))),
        (&positions[2], Input::NotRun),
        (&positions[3], Input::NotRun),
    ]);
    assert!(matches!(plan.answers[0], Answer::Final(_)));
    assert!(matches!(plan.answers[1], Answer::Unidentifiable(_)));
    assert!(is_rewinding(&plan.answers[2]) && is_rewinding(&plan.answers[3]));
    let partition: Partition = ("t".into(), 0);
    assert_eq!(plan.commits.get(&partition), Some(&1));
    assert_eq!(plan.seeks.get(&partition), Some(&2));
    assert_eq!(r.pending(&partition), Some(2));
    // The redelivery from 2 runs.
    assert_eq!(
        r.admit(&[(&positions[2], true), (&positions[3], true)]),
        vec![true, true]
    );
}

/// A message the guard found unidentifiable after running (`InvalidEvent`) stops its
/// partition like one found before: what ran after it is answered `Rewinding`.
#[test]
fn an_invalid_event_after_running_stops_its_partition_too() {
    let mut r = Rewinds::default();
    let positions: Vec<MessagePosition> = (0..3).map(|o| at(0, o)).collect();
    let plan = r.settle(vec![
        (
            &positions[0],
            Input::Ran(Err(GuardError::InvalidEvent(IdentityError::EmptyEventType))),
        ),
        (&positions[1], ok()),
        (&positions[2], failed()),
    ]);
    assert!(matches!(
        plan.answers[0],
        Answer::Unidentifiable(MessageError::Unidentifiable { .. })
    ));
    assert!(is_rewinding(&plan.answers[1]) && is_rewinding(&plan.answers[2]));
    assert!(plan.commits.is_empty());
    assert_eq!(plan.seeks.get(&("t".into(), 0)), Some(&1));
}

// ---------------------------------------------------------------------------------------
// `process` message by message against `process_batch`, on a simulated consumer.
// ---------------------------------------------------------------------------------------

/// What the guard answers for an event, one entry per time its message is decided (the
/// last repeats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Processed,
    Duplicate,
    Unprotected,
    Handler,
    InProgress,
    Store,
    /// The guard's `InvalidEvent`: identifiable as a message, not as an event.
    Invalid,
}

impl Kind {
    fn result(self) -> Result1 {
        match self {
            Kind::Processed => Ok(Outcome::Processed(())),
            Kind::Duplicate => Ok(Outcome::Duplicate),
            Kind::Unprotected => Ok(Outcome::Unprotected(())),
            Kind::Handler => Err(GuardError::Handler("handler failed".into())),
            Kind::InProgress => Err(GuardError::InProgress),
            Kind::Store => Err(GuardError::Store(StoreError::Timeout {
                operation: "claim",
                timeout: std::time::Duration::from_millis(1),
            })),
            Kind::Invalid => Err(GuardError::InvalidEvent(IdentityError::EmptyEventType)),
        }
    }
}

/// A message of the log.
#[derive(Debug, Clone)]
enum Msg {
    /// Not an identifiable event (bad JSON, no payload, ...).
    Bad,
    /// An event, and what the guard answers each time it is decided.
    Event(Vec<Kind>),
}

/// What a message was answered, as the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Final(&'static str),
    Retry(&'static str),
    Rewinding,
    Unidentifiable,
}

fn seen<T, E>(answer: &Answer<T, E>) -> Seen {
    match answer {
        Answer::Final(Outcome::Processed(_)) => Seen::Final("processed"),
        Answer::Final(Outcome::Duplicate) => Seen::Final("duplicate"),
        Answer::Final(Outcome::Unprotected(_)) => Seen::Final("unprotected"),
        Answer::Redeliver(Retry::Rewinding) => Seen::Rewinding,
        Answer::Redeliver(Retry::Handler(_)) => Seen::Retry("handler"),
        Answer::Redeliver(Retry::InProgress) => Seen::Retry("in progress"),
        Answer::Redeliver(Retry::Store(_)) => Seen::Retry("store"),
        Answer::Redeliver(_) => Seen::Retry("other"),
        Answer::Unidentifiable(_) => Seen::Unidentifiable,
    }
}

/// A consumer of several partitions: it fetches `ahead` messages of a partition at a
/// time and yields partitions in turn; a seek moves the fetch position and, unless
/// `purge`, leaves what was fetched before it to be yielded first (stale messages, as a
/// consumer may still hold when the seek lands).
struct Consumer {
    logs: Vec<Vec<Msg>>,
    position: Vec<i64>,
    fetched: Vec<VecDeque<i64>>,
    ahead: i64,
    purge: bool,
    turn: usize,
}

impl Consumer {
    fn new(logs: &[Vec<Msg>], ahead: i64, purge: bool) -> Self {
        Consumer {
            logs: logs.to_vec(),
            position: vec![0; logs.len()],
            fetched: vec![VecDeque::new(); logs.len()],
            ahead,
            purge,
            turn: 0,
        }
    }

    fn recv(&mut self) -> Option<(usize, i64)> {
        let n = self.logs.len();
        for k in 0..n {
            let p = (self.turn + k) % n;
            if self.fetched[p].is_empty() {
                let end = (self.position[p] + self.ahead).min(self.logs[p].len() as i64);
                self.fetched[p].extend(self.position[p]..end);
                self.position[p] = end.max(self.position[p]);
            }
            if let Some(offset) = self.fetched[p].pop_front() {
                self.turn = p + 1;
                return Some((p, offset));
            }
        }
        None
    }

    fn seek(&mut self, partition: usize, offset: i64) {
        self.position[partition] = offset;
        if self.purge {
            self.fetched[partition].clear();
        }
    }
}

/// What one run through the consumer saw.
#[derive(Debug)]
struct Run {
    /// Per partition, per offset: every answer, in order.
    answers: Vec<Vec<Vec<Seen>>>,
    dead_letters: BTreeSet<(usize, i64)>,
    committed: Vec<i64>,
}

impl Run {
    /// Per message, its answers other than `Rewinding`.
    fn decided(&self) -> Vec<Vec<Vec<Seen>>> {
        self.answers
            .iter()
            .map(|p| {
                p.iter()
                    .map(|a| {
                        a.iter()
                            .filter(|s| **s != Seen::Rewinding)
                            .cloned()
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }
}

/// Consumes `logs` to the end, `batch` messages a call (1: `process`), the caller
/// dead-lettering and committing past each unidentifiable message after the call, as
/// documented. Checks on the way that commits never go back and never pass a message
/// that has not been answered finally.
#[allow(
    clippy::too_many_lines,
    reason = "one consumer loop, read top to bottom"
)]
fn consume(logs: &[Vec<Msg>], batches: &[usize], ahead: i64, purge: bool) -> Run {
    let mut consumer = Consumer::new(logs, ahead, purge);
    let mut rewinds = Rewinds::default();
    let mut run = Run {
        answers: logs.iter().map(|l| vec![Vec::new(); l.len()]).collect(),
        dead_letters: BTreeSet::new(),
        committed: vec![0; logs.len()],
    };
    let mut decisions: Vec<Vec<usize>> = logs.iter().map(|l| vec![0; l.len()]).collect();
    let mut finished: Vec<Vec<bool>> = logs.iter().map(|l| vec![false; l.len()]).collect();
    let mut calls = 0usize;
    loop {
        let size = batches[calls % batches.len()].max(1);
        calls += 1;
        assert!(calls < 5_000, "no end: {:?}", run.answers);
        let mut taken = Vec::new();
        while taken.len() < size {
            match consumer.recv() {
                Some(m) => taken.push(m),
                None => break,
            }
        }
        if taken.is_empty() {
            break;
        }
        let positions: Vec<MessagePosition> = taken.iter().map(|&(p, o)| at(p as i32, o)).collect();
        let asked: Vec<(&MessagePosition, bool)> = positions
            .iter()
            .zip(&taken)
            .map(|(position, &(p, o))| (position, !matches!(logs[p][o as usize], Msg::Bad)))
            .collect();
        let admitted = rewinds.admit(&asked);
        let inputs: Vec<(&MessagePosition, Input<(), String>)> = positions
            .iter()
            .zip(&taken)
            .zip(&admitted)
            .map(|((position, &(p, o)), &admitted)| {
                let input = match &logs[p][o as usize] {
                    _ if !admitted => Input::NotRun,
                    Msg::Bad => Input::Unidentifiable(bad(position)),
                    Msg::Event(script) => {
                        let k = decisions[p][o as usize].min(script.len() - 1);
                        Input::Ran(script[k].result())
                    }
                };
                (position, input)
            })
            .collect();
        let dead_before = run.dead_letters.clone();
        let plan = rewinds.settle(inputs);
        let mut unidentifiable = Vec::new();
        for (&(p, o), answer) in taken.iter().zip(&plan.answers) {
            let s = seen(answer);
            if s != Seen::Rewinding {
                assert!(
                    !finished[p][o as usize],
                    "{p}@{o} decided again after its final answer: {:?}",
                    run.answers[p][o as usize]
                );
                decisions[p][o as usize] += 1;
            }
            match s {
                Seen::Final(_) => finished[p][o as usize] = true,
                Seen::Unidentifiable => {
                    finished[p][o as usize] = true;
                    unidentifiable.push((p, o));
                }
                _ => {}
            }
            run.answers[p][o as usize].push(s);
        }
        for ((_, partition), &offset) in &plan.commits {
            let p = *partition as usize;
            assert!(
                offset >= run.committed[p],
                "partition {p}: commit went back from {} to {offset}",
                run.committed[p]
            );
            for o in 0..offset {
                // Final, or unidentifiable and dead-lettered before this call.
                let dealt_with = dead_before.contains(&(p, o))
                    || matches!(run.answers[p][o as usize].last(), Some(Seen::Final(_)));
                assert!(
                    dealt_with,
                    "partition {p}: committed {offset} past {o}, not dealt with: {:?}",
                    run.answers[p][o as usize]
                );
            }
            run.committed[p] = offset;
        }
        for ((_, partition), &offset) in &plan.seeks {
            consumer.seek(*partition as usize, offset);
        }
        // The caller: dead-letter, then commit past.
        for (p, o) in unidentifiable {
            assert!(
                run.dead_letters.insert((p, o)),
                "{p}@{o} dead-lettered twice"
            );
            assert!(
                o + 1 >= run.committed[p],
                "partition {p}: commit_past({o}) after a commit of {}",
                run.committed[p]
            );
            run.committed[p] = o + 1;
        }
    }
    for (p, log) in logs.iter().enumerate() {
        assert_eq!(
            run.committed[p],
            log.len() as i64,
            "partition {p} not committed to its end: {:?}",
            run.answers[p]
        );
        for (o, answers) in run.answers[p].iter().enumerate() {
            assert!(
                matches!(answers.last(), Some(Seen::Final(_) | Seen::Unidentifiable)),
                "{p}@{o} never answered finally: {answers:?}"
            );
        }
    }
    run
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Processed),
        Just(Kind::Duplicate),
        Just(Kind::Unprotected),
        Just(Kind::Handler),
        Just(Kind::InProgress),
        Just(Kind::Store),
        Just(Kind::Invalid),
    ]
}

fn final_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::Processed),
        2 => Just(Kind::Duplicate),
        1 => Just(Kind::Unprotected),
        1 => Just(Kind::Invalid),
    ]
}

fn message() -> impl Strategy<Value = Msg> {
    prop_oneof![
        1 => Just(Msg::Bad),
        5 => (prop::collection::vec(kind(), 0..3), final_kind()).prop_map(|(mut steps, last)| {
            // What precedes the final answer is retried, so a final among it is only an
            // earlier, stale answer: keep the retries.
            steps.retain(|k| matches!(k, Kind::Handler | Kind::InProgress | Kind::Store));
            steps.push(last);
            Msg::Event(steps)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random outcome sequences in one to three partitions, through `process` message by
    /// message and through `process_batch` in random batch sizes: every message gets the
    /// same answers (other than `Rewinding`: a batch answers it for messages after a
    /// failure of their partition, where `process` holds them back the same way, and for
    /// messages after an unidentifiable one, which `process` decides only once the
    /// caller has dealt with it), the same messages are dead-lettered, and both end with
    /// every partition committed to its end, commits never going back nor past a message
    /// not dealt with.
    #[test]
    fn batches_answer_and_redeliver_as_process_does(
        logs in prop::collection::vec(prop::collection::vec(message(), 0..8), 1..4),
        batches in prop::collection::vec(1usize..8, 1..5),
        ahead in 1i64..6,
        purge in any::<bool>(),
    ) {
        let single = consume(&logs, &[1], ahead, purge);
        let batched = consume(&logs, &batches, ahead, purge);
        prop_assert_eq!(single.decided(), batched.decided());
        prop_assert_eq!(&single.dead_letters, &batched.dead_letters);
        prop_assert_eq!(&single.committed, &batched.committed);
    }
}

/// `process_batches`: a call admitted before an earlier call found an unidentifiable
/// message (its messages ran alongside) decides nothing of that partition after it: those
/// messages are `Rewinding`, nothing is committed, the partition is sought to the message
/// after the unidentifiable one, and a call admitted after that is not held back by it.
#[test]
fn a_call_admitted_before_an_unidentifiable_message_was_decided_holds_back_what_follows_it() {
    let mut r = Rewinds::default();
    let (m0, m1, m2, m3) = (at(0, 0), at(0, 1), at(0, 2), at(0, 3));
    let first = r.epoch();
    assert_eq!(r.admit(&[(&m0, true), (&m1, false)]), [true, true]);
    let second = r.epoch();
    assert_eq!(r.admit(&[(&m2, true), (&m3, true)]), [true, true]);
    let plan = r.settle_admitted_at(
        first,
        vec![(&m0, ok()), (&m1, Input::Unidentifiable(bad(&m1)))],
    );
    assert_eq!(plan.commits.get(&("t".into(), 0)), Some(&1));
    assert!(plan.seeks.is_empty());
    let plan = r.settle_admitted_at(second, vec![(&m2, ok()), (&m3, ok())]);
    assert!(plan.answers.iter().all(is_rewinding), "{:?}", plan.answers);
    assert!(plan.commits.is_empty(), "{:?}", plan.commits);
    assert_eq!(plan.seeks.get(&("t".into(), 0)), Some(&2));
    // After the seek: @2 comes again and is decided.
    let third = r.epoch();
    assert_eq!(r.admit(&[(&m2, true)]), [true]);
    let plan = r.settle_admitted_at(third, vec![(&m2, ok())]);
    assert!(
        matches!(plan.answers[..], [Answer::Final(_)]),
        "{:?}",
        plan.answers
    );
    assert_eq!(plan.commits.get(&("t".into(), 0)), Some(&3));
}
