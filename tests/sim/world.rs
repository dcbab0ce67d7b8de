//! One seed's world: consumers (guards over their own fault-injected view of one shared
//! store), a broker that delivers events with duplicates and redelivers every answer that
//! is not final, crashes and restarts, handlers that log their effects; then, once the
//! faults stop, a last delivery of every event and the checks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use eventonce::{
    CachedStore, Claim, EventEnvelope, Guard, GuardError, GuardStats, IdempotencyConfig,
    IdempotencyStore, MemoryStore, Outcome, RecordState, StoredOutcome,
};
use serde_json::json;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::faulty::{Act, Faulty, Op};
use crate::plan::{
    self, ConsumerPlan, CrashPlan, DeliveryPlan, Params, StorePlan, Window, WindowKind,
};
use crate::rng::Rng;

const MS: Duration = Duration::from_millis(1);

tokio::task_local! {
    /// The delivery a store call is made for (none: a guard's background task).
    pub static DELIVERY: u64;
}

thread_local! {
    /// The world whose trace the guard's log lines join (`SIM_LOG=1`).
    static LOG_SINK: std::cell::RefCell<std::sync::Weak<World>> =
        const { std::cell::RefCell::new(std::sync::Weak::new()) };
}

/// Writes the guard's log lines into the trace of this thread's world.
pub(crate) struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf).trim_end().to_owned();
        let world = LOG_SINK.with(|s| s.borrow().upgrade());
        if let Some(w) = world {
            w.trace(|| format!("log: {line}"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The payload of a handler's deliberate panic.
pub(crate) struct SimPanic;

/// A handler's deliberate failure.
#[derive(Debug)]
pub(crate) struct SimError(u64);

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "run {} failed on purpose", self.0)
    }
}

/// How a handler run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// It applied its effect and returned `Ok`.
    Effect,
    Failed,
    Panicked,
    /// Its future was dropped (a cancelled delivery, a crash).
    Dropped,
}

/// One handler run, as the handler logged it.
pub(crate) struct Inv {
    pub event: usize,
    pub slot: usize,
    pub inc: u32,
    pub delivery: u64,
    /// The claim its delivery was granted for its event; `None`: an unprotected run.
    pub owner: Option<String>,
    pub start: Duration,
    pub end: Option<(Duration, End)>,
}

impl Inv {
    pub(crate) fn effect(&self) -> Option<Duration> {
        match self.end {
            Some((t, End::Effect)) => Some(t),
            _ => None,
        }
    }

    pub(crate) fn running_at(&self, t: Duration) -> bool {
        self.start <= t && self.end.is_none_or(|(end, _)| end > t)
    }
}

/// A claim as the store holds it, from the calls that reached the store.
pub(crate) struct Rec {
    pub exp: Duration,
    /// When the last claim or renewal whose success reached the guard was sent: the
    /// guard counts the lease from there (a renewal that reached the store but whose
    /// answer was lost extends the claim without the guard knowing).
    pub confirmed: Duration,
    pub done: Option<Duration>,
    pub released: Option<Duration>,
    /// The result a completion of this claim wrote (a run's id, as JSON), when it had one.
    pub result: Option<Vec<u8>>,
}

/// Counts shown in the summary.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub deliveries: u64,
    pub runs: u64,
    pub effects: u64,
    pub unprotected_runs: u64,
    pub reruns_unprotected: u64,
    pub reruns_crash: u64,
    pub reruns_lease_lost: u64,
    pub reruns_completion_lost: u64,
    pub reruns_expired: u64,
    pub reruns_evicted: u64,
    pub small_stores: u64,
    pub evictions: u64,
    pub refused_claims: u64,
    pub faulted_calls: u64,
    pub crashes: u64,
    pub cancels: u64,
    /// `Replayed` answers (the `stored` seeds).
    pub replays: u64,
    pub completions_retried: u64,
    pub completions_abandoned: u64,
    pub claims_lost: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.deliveries += o.deliveries;
        self.runs += o.runs;
        self.effects += o.effects;
        self.unprotected_runs += o.unprotected_runs;
        self.reruns_unprotected += o.reruns_unprotected;
        self.reruns_crash += o.reruns_crash;
        self.reruns_lease_lost += o.reruns_lease_lost;
        self.reruns_completion_lost += o.reruns_completion_lost;
        self.reruns_expired += o.reruns_expired;
        self.reruns_evicted += o.reruns_evicted;
        self.small_stores += o.small_stores;
        self.evictions += o.evictions;
        self.refused_claims += o.refused_claims;
        self.faulted_calls += o.faulted_calls;
        self.crashes += o.crashes;
        self.cancels += o.cancels;
        self.replays += o.replays;
        self.completions_retried += o.completions_retried;
        self.completions_abandoned += o.completions_abandoned;
        self.claims_lost += o.claims_lost;
    }

    fn add_guard(&mut self, g: &GuardStats) {
        self.completions_retried += g.completions_retried;
        self.completions_abandoned += g.completions_abandoned;
        self.claims_lost += g.claims_lost;
    }
}

/// What the oracle learned during the run.
pub(crate) struct State {
    pub invs: Vec<Inv>,
    /// (delivery, event) → the owner token of the claim that delivery was granted.
    granted: HashMap<(u64, usize), String>,
    /// (delivery, event) of every handler run.
    ran: std::collections::HashSet<(u64, usize)>,
    /// (event, owner) → that claim in the store.
    pub recs: HashMap<(usize, String), Rec>,
    /// (incarnation, time) of each crash.
    pub crashes: Vec<(u32, Duration)>,
    pub effects: Vec<u32>,
    pub violations: Vec<String>,
    pub stats: Stats,
    trace: Option<Vec<String>>,
}

/// One seed's result.
pub struct Report {
    pub seed: u64,
    pub violations: Vec<String>,
    pub stats: Stats,
    pub plan: String,
    pub trace: Vec<String>,
}

/// One delivery's answer for one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Processed(u64),
    Unprotected(u64),
    Duplicate,
    /// A duplicate answered with the stored result: a run's id.
    Replayed(u64),
    InProgress,
    Handler,
    Store,
    Invalid,
    /// The consumer dropped the delivery.
    Cancelled,
    /// The delivery panicked or its consumer crashed: no answer.
    Lost,
}

impl Answer {
    fn of(result: Result<Outcome<u64>, GuardError<SimError>>) -> Answer {
        match result {
            Ok(Outcome::Processed(id)) => Answer::Processed(id),
            Ok(Outcome::Unprotected(id)) => Answer::Unprotected(id),
            Ok(Outcome::Duplicate) => Answer::Duplicate,
            Err(GuardError::InProgress) => Answer::InProgress,
            Err(GuardError::Handler(_)) => Answer::Handler,
            Err(GuardError::Store(_)) => Answer::Store,
            Err(_) => Answer::Invalid,
        }
    }

    fn of_stored(result: Result<StoredOutcome<u64>, GuardError<SimError>>) -> Answer {
        match result {
            Ok(StoredOutcome::Processed(id)) => Answer::Processed(id),
            Ok(StoredOutcome::Unprotected(id)) => Answer::Unprotected(id),
            Ok(StoredOutcome::Replayed(id)) => Answer::Replayed(id),
            Ok(StoredOutcome::Duplicate) => Answer::Duplicate,
            Err(err) => Answer::of(Err(err)),
        }
    }

    /// Whether a consumer commits the message after this answer (no redelivery).
    fn is_final(self) -> bool {
        matches!(
            self,
            Answer::Processed(_) | Answer::Unprotected(_) | Answer::Duplicate | Answer::Replayed(_)
        )
    }
}

struct Incarnation {
    inc: u32,
    guard: Guard,
    tasks: Vec<AbortHandle>,
}

pub(crate) struct World {
    pub p: Params,
    t0: Instant,
    pub ns: String,
    pub keys: Vec<String>,
    key_index: HashMap<String, usize>,
    id_index: HashMap<String, usize>,
    envelopes: Vec<EventEnvelope>,
    pub windows: Vec<Window>,
    transient: f64,
    rng: Mutex<Rng>,
    faults_off: AtomicBool,
    black_holed: Mutex<Vec<u32>>,
    pub st: Mutex<State>,
    pub store: Arc<dyn IdempotencyStore>,
    /// The same store when it is a `MemoryStore`, for its counts.
    memory: Option<MemoryStore>,
    pub store_plan: StorePlan,
    service: String,
    consumers: Vec<ConsumerPlan>,
    slots: Mutex<Vec<Option<Incarnation>>>,
    next_delivery: AtomicU64,
    next_inc: AtomicU32,
    outstanding: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl World {
    pub(crate) fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.t0)
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.st)
    }

    pub(crate) fn violation(&self, message: String) {
        let at = self.now();
        self.state().violations.push(format!("[{at:?}] {message}"));
    }

    pub(crate) fn trace(&self, line: impl FnOnce() -> String) {
        let at = self.now();
        if let Some(trace) = self.state().trace.as_mut() {
            trace.push(format!("{at:>10.3?} {}", line()));
        }
    }

    /// How many completed records the store evicted before their TTL so far.
    pub(crate) fn evictions(&self) -> u64 {
        self.memory.as_ref().map_or(0, |m| m.stats().evictions)
    }

    pub(crate) fn event_of_key(&self, key: &str) -> Option<usize> {
        self.key_index.get(key).copied()
    }

    fn event_of(&self, envelope: &EventEnvelope) -> usize {
        envelope
            .event_id
            .as_deref()
            .and_then(|id| self.id_index.get(id).copied())
            .expect("every delivered event is one of the run's")
    }

    /// Every key a store call names must be one of this run's, inside its namespace.
    pub(crate) fn check_keys(&self, keys: &[&str]) {
        for key in keys {
            if !key.starts_with(&self.ns) {
                self.violation(format!(
                    "P6 a store call named {key:?}, outside the namespace {:?}",
                    self.ns
                ));
            } else if self.event_of_key(key).is_none() {
                self.violation(format!(
                    "P6 a store call named {key:?}, not the key of any event"
                ));
            }
        }
    }

    pub(crate) fn draw<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut lock(&self.rng))
    }

    pub(crate) fn is_black_holed(&self, inc: u32) -> bool {
        lock(&self.black_holed).contains(&inc)
    }

    /// The fault a call of consumer `slot` (incarnation `inc`) meets now; without one, a
    /// network's few milliseconds (so that a consumer can drop a run in the middle of a
    /// call).
    pub(crate) fn decide(&self, slot: usize, inc: u32, op: Op) -> Act {
        if self.is_black_holed(inc) {
            return Act::Hang;
        }
        let latency = |w: &World| {
            w.draw(|r| {
                let d = r.between(Duration::ZERO, 3 * MS);
                if r.chance(0.5) {
                    Act::Before(d)
                } else {
                    Act::After(d)
                }
            })
        };
        if self.faults_off.load(Ordering::SeqCst) {
            return latency(self);
        }
        let now = self.now();
        let timeout = self.p.store_timeout;
        let window = self.windows.iter().find(|w| {
            w.hits(slot)
                && w.start <= now
                && now < w.end
                && (w.kind != WindowKind::RenewFail || op.renews())
        });
        let act = self.draw(|r| {
            let past = |r: &mut Rng| timeout + r.between(10 * MS, 300 * MS);
            if let Some(w) = window {
                return match w.kind {
                    WindowKind::Fail | WindowKind::RenewFail => Act::Fail,
                    WindowKind::Hang => Act::Hang,
                    WindowKind::Slow if r.chance(0.5) => Act::Before(past(r)),
                    WindowKind::Slow => Act::After(past(r)),
                };
            }
            if !r.chance(self.transient) {
                return Act::Pass; // latency below
            }
            match r.below(20) {
                0..=7 => Act::Fail,
                8..=9 => Act::Before(past(r)),
                10..=12 => Act::After(past(r)),
                13 => Act::Hang,
                14..=15 => Act::Before(r.between(MS, timeout / 2)),
                16..=17 => Act::After(r.between(MS, timeout / 2)),
                _ if op.batch() => Act::Partial,
                _ => Act::Fail,
            }
        });
        if matches!(act, Act::Pass) {
            return latency(self);
        }
        self.state().stats.faulted_calls += 1;
        self.trace(|| format!("consumer {slot}#{inc} {op:?}: {act:?}"));
        act
    }

    /// Claims that reached the store.
    pub(crate) fn landed_claims(
        &self,
        keys: &[&str],
        owner: &str,
        lease: Duration,
        claims: &[Claim],
    ) {
        let now = self.now();
        let mut st = self.state();
        for (key, claim) in keys.iter().zip(claims) {
            if let (Some(e), Claim::Acquired) = (self.event_of_key(key), claim) {
                st.recs.insert(
                    (e, owner.to_owned()),
                    Rec {
                        exp: now + lease,
                        confirmed: now,
                        done: None,
                        released: None,
                        result: None,
                    },
                );
            }
        }
    }

    /// The result a completion of `owner`'s claim on `key` wrote with it (the completion
    /// itself is logged by [`World::landed`]).
    pub(crate) fn landed_result(&self, key: &str, owner: &str, result: &[u8]) {
        let Some(e) = self.event_of_key(key) else {
            return;
        };
        if let Some(rec) = self.state().recs.get_mut(&(e, owner.to_owned())) {
            rec.result = Some(result.to_vec());
        }
    }

    /// Completions (`Some(true)`: written), renewals (`lease`) or releases that reached
    /// the store.
    pub(crate) fn landed(&self, op: Op, keys: &[&str], owners: &[&str], flags: &[Option<bool>]) {
        let now = self.now();
        let lease = self.p.lease;
        let mut st = self.state();
        for ((key, owner), flag) in keys.iter().zip(owners).zip(flags) {
            let Some(e) = self.event_of_key(key) else {
                continue;
            };
            if *flag != Some(true) {
                continue;
            }
            if let Some(rec) = st.recs.get_mut(&(e, (*owner).to_owned())) {
                match op {
                    Op::Extend | Op::ExtendMany => rec.exp = now + lease,
                    Op::Release | Op::ReleaseMany => rec.released = Some(now),
                    _ => {
                        rec.done.get_or_insert(now);
                    }
                }
            }
        }
    }

    /// A claim answer (sent at `asked`) that reached the guard: its delivery now holds the
    /// claim.
    pub(crate) fn granted(&self, keys: &[&str], owner: &str, claims: &[Claim], asked: Duration) {
        let delivery = DELIVERY.try_with(|d| *d).ok();
        let mut st = self.state();
        for (key, claim) in keys.iter().zip(claims) {
            if let (Some(e), Claim::Acquired) = (self.event_of_key(key), claim) {
                if let Some(rec) = st.recs.get_mut(&(e, owner.to_owned())) {
                    rec.confirmed = asked;
                }
                if let Some(delivery) = delivery {
                    st.granted.insert((delivery, e), owner.to_owned());
                }
            }
        }
    }

    /// Renewals (sent at `asked`) whose success reached the guard.
    pub(crate) fn confirmed(&self, keys: &[&str], owner: &str, renewed: &[bool], asked: Duration) {
        let mut st = self.state();
        for (key, renewed) in keys.iter().zip(renewed) {
            if let (Some(e), true) = (self.event_of_key(key), renewed) {
                if let Some(rec) = st.recs.get_mut(&(e, owner.to_owned())) {
                    rec.confirmed = rec.confirmed.max(asked);
                }
            }
        }
    }

    fn start_incarnation(self: &Arc<Self>, slot: usize) {
        let inc = self.next_inc.fetch_add(1, Ordering::SeqCst);
        let plan = &self.consumers[slot];
        let mut builder = IdempotencyConfig::builder(self.service.clone())
            .default_ttl(self.store_plan.ttl)
            .lease(self.p.lease)
            .store_timeout(self.p.store_timeout)
            .on_store_error(plan.fail_mode)
            .in_progress_wait(plan.in_progress_wait)
            .circuit_breaker(plan.breaker_threshold, self.p.cooldown)
            .batch_concurrency(plan.batch_concurrency);
        if let Some(delay) = plan.deferred {
            builder = builder.defer_completion(delay);
        }
        let config = builder
            .build()
            .expect("the simulation's settings are valid");
        let faulty = Faulty::new(Arc::clone(self), slot, inc);
        let guard = if plan.cached {
            Guard::new(
                CachedStore::new(faulty, 10_000, Duration::from_secs(3_600)),
                config,
            )
        } else {
            Guard::new(faulty, config)
        };
        self.trace(|| format!("consumer {slot}#{inc} starts"));
        lock(&self.slots)[slot] = Some(Incarnation {
            inc,
            guard,
            tasks: Vec::new(),
        });
    }

    /// A live consumer, `slot` if it is up.
    fn pick(&self, slot: usize) -> Option<(usize, u32, Guard)> {
        let slots = lock(&self.slots);
        let n = slots.len();
        (0..n)
            .map(|k| (slot + k) % n)
            .find_map(|s| slots[s].as_ref().map(|c| (s, c.inc, c.guard.clone())))
    }

    fn spawn_delivery(self: &Arc<Self>, plan: DeliveryPlan) {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        let w = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(w.t0 + plan.at).await;
            let answers = w.deliver(&plan).await;
            for (&e, answer) in plan.events.iter().zip(answers) {
                if answer.is_final() {
                    continue;
                }
                let chaos = w.now() < w.p.chaos;
                let (delay, slot, batch, cancel) = w.draw(|r| {
                    (
                        r.between(100 * MS, 2_000 * MS),
                        r.below(w.consumers.len()),
                        r.chance(0.3),
                        (chaos && r.chance(0.05)).then(|| r.between(Duration::ZERO, 500 * MS)),
                    )
                });
                w.spawn_delivery(DeliveryPlan {
                    at: w.now() + delay,
                    slot,
                    events: vec![e],
                    batch,
                    cancel_after: cancel,
                });
            }
            w.outstanding.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Delivers `plan.events` to a live consumer (its task registered with the consumer,
    /// so that a crash drops it) and checks the answers.
    async fn deliver(self: &Arc<Self>, plan: &DeliveryPlan) -> Vec<Answer> {
        let (slot, inc, guard) = loop {
            if let Some(consumer) = self.pick(plan.slot) {
                break consumer;
            }
            tokio::time::sleep(100 * MS).await;
        };
        let id = self.next_delivery.fetch_add(1, Ordering::SeqCst);
        self.state().stats.deliveries += 1;
        let n = plan.events.len();
        self.trace(|| {
            format!(
                "delivery {id}: events {:?} to consumer {slot}#{inc} ({}{})",
                plan.events,
                if plan.batch { "run_batch" } else { "run" },
                plan.cancel_after
                    .map_or(String::new(), |c| format!(", dropped after {c:?}"))
            )
        });
        let attempt = Attempt {
            w: Arc::clone(self),
            guard,
            slot,
            inc,
            id,
            events: plan.events.clone(),
            batch: plan.batch,
            cancel: plan.cancel_after,
        };
        let mut handle = tokio::spawn(DELIVERY.scope(id, attempt.run()));
        if let Some(c) = lock(&self.slots)[slot].as_mut() {
            c.tasks.retain(|t| !t.is_finished());
            c.tasks.push(handle.abort_handle());
        }
        // No answer within this bound is a hang: every store call is bounded.
        let bound = self.consumers[slot].in_progress_wait
            + self.p.long_work * 2 * n as u32
            + self.p.store_timeout * 60
            + Duration::from_secs(2);
        let answers = match tokio::time::timeout(bound, &mut handle).await {
            Ok(Ok(answers)) => answers,
            Ok(Err(err)) if err.is_cancelled() => vec![Answer::Lost; n],
            Ok(Err(err)) => {
                let payload = err.into_panic();
                if payload.downcast_ref::<SimPanic>().is_none() {
                    let what = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    self.violation(format!("P7 delivery {id} panicked: {what}"));
                }
                vec![Answer::Lost; n]
            }
            Err(_) => {
                handle.abort();
                self.violation(format!(
                    "P5 delivery {id} (events {:?}, consumer {slot}#{inc}) did not answer within {bound:?}",
                    plan.events
                ));
                vec![Answer::Lost; n]
            }
        };
        self.trace(|| format!("delivery {id}: {answers:?}"));
        self.check_answers(id, &plan.events, &answers);
        answers
    }

    fn check_answers(&self, delivery: u64, events: &[usize], answers: &[Answer]) {
        let mut st = self.state();
        st.stats.replays += answers
            .iter()
            .filter(|a| matches!(a, Answer::Replayed(_)))
            .count() as u64;
        let mut bad = Vec::new();
        for (&e, &answer) in events.iter().zip(answers) {
            match answer {
                Answer::Processed(id) | Answer::Unprotected(id) => {
                    let protected = matches!(answer, Answer::Processed(_));
                    let ok = st.invs.get(id as usize).is_some_and(|inv| {
                        inv.event == e
                            && inv.delivery == delivery
                            && inv.effect().is_some()
                            && inv.owner.is_some() == protected
                    });
                    if !ok {
                        bad.push(format!(
                            "P8 delivery {delivery} answered {answer:?} for event {e}, which its run does not bear out"
                        ));
                    }
                }
                Answer::Duplicate if st.effects[e] == 0 => bad.push(format!(
                    "P3 delivery {delivery} answered Duplicate for event {e}, which never ran"
                )),
                Answer::Replayed(id) => {
                    // The value of a protected run of this event with an effect, that a
                    // completion of that run's own claim wrote to the store, or, for a
                    // later copy of the event in the same batch, its first copy's run.
                    let run = st.invs.get(id as usize);
                    let written = run.and_then(|inv| {
                        let owner = inv.owner.clone()?;
                        let rec = st.recs.get(&(e, owner))?;
                        Some(rec.done.is_some() && rec.result == Some(id.to_string().into_bytes()))
                    });
                    let ok = run.is_some_and(|inv| {
                        inv.event == e
                            && inv.effect().is_some()
                            && inv.owner.is_some()
                            && (written == Some(true) || inv.delivery == delivery)
                    });
                    if !ok {
                        bad.push(format!(
                            "P11 delivery {delivery} answered Replayed({id}) for event {e}, which no completion of that run of that event wrote (run {:?})",
                            run.map(|inv| (inv.event, inv.owner.clone(), inv.end))
                        ));
                    }
                }
                Answer::Invalid => bad.push(format!(
                    "P8 delivery {delivery} answered InvalidEvent for event {e}"
                )),
                _ => {}
            }
        }
        drop(st);
        for message in bad {
            self.violation(message);
        }
    }

    /// Records a handler run starting; checks that a protected one starts on a live claim.
    fn start_run(&self, event: usize, slot: usize, inc: u32, delivery: u64) -> Handling {
        let long = self.p.long_work;
        let lease = self.p.lease;
        // A small store's seeds have more long handlers: a fifth of them outlive a lease.
        let (short, medium) = if self.store_plan.capacity.is_some() {
            (49, 74)
        } else {
            (69, 91)
        };
        let handling = self.draw(|r| Handling {
            id: 0,
            work: match r.below(100) {
                n if n <= short => r.between(Duration::ZERO, 300 * MS),
                n if n <= medium => r.between(300 * MS, 2_000 * MS),
                _ => r.between(lease / 3, long),
            },
            fail: r.chance(0.1),
            panic: r.chance(0.02),
        });
        let now = self.now();
        let slack = self.p.slack;
        let mut st = self.state();
        let owner = st.granted.get(&(delivery, event)).cloned();
        let mut bad = Vec::new();
        if let Some(o) = &owner {
            match st.recs.get(&(event, o.clone())) {
                Some(rec) => {
                    let lapsed = if slack.is_zero() {
                        now >= rec.exp
                    } else {
                        now > rec.exp + slack
                    };
                    if lapsed || rec.done.is_some() || rec.released.is_some() {
                        bad.push(format!(
                            "P2 the handler of event {event} started on consumer {slot}#{inc} (delivery {delivery}) on a claim that was no longer held (lapsed at {:?}, completed {:?}, released {:?})",
                            rec.exp, rec.done, rec.released
                        ));
                    }
                }
                None => {
                    bad.push(format!(
                        "P2 delivery {delivery} was granted a claim on event {event} that never reached the store"
                    ));
                }
            }
        }
        if !st.ran.insert((delivery, event)) {
            bad.push(format!(
                "P9 delivery {delivery} ran the handler of event {event} twice"
            ));
        }
        let id = st.invs.len() as u64;
        st.invs.push(Inv {
            event,
            slot,
            inc,
            delivery,
            owner: owner.clone(),
            start: now,
            end: None,
        });
        st.stats.runs += 1;
        if owner.is_none() {
            st.stats.unprotected_runs += 1;
        }
        drop(st);
        for message in bad {
            self.violation(message);
        }
        self.trace(|| {
            format!(
                "run {id}: event {event} on consumer {slot}#{inc} (delivery {delivery}, {}), {:?}{}{}",
                owner.as_deref().map_or("unprotected".to_owned(), |o| format!("claim {o}")),
                handling.work,
                if handling.fail { ", fails" } else { "" },
                if handling.panic { ", panics" } else { "" },
            )
        });
        Handling { id, ..handling }
    }

    fn end_run(&self, id: u64, end: End) {
        let now = self.now();
        let mut st = self.state();
        let inv = &mut st.invs[id as usize];
        inv.end = Some((now, end));
        let event = inv.event;
        if end == End::Effect {
            st.effects[event] += 1;
            st.stats.effects += 1;
        }
        drop(st);
        self.trace(|| format!("run {id}: {end:?}"));
    }

    /// A consumer process dies: nothing it sends reaches the store any more, its in-flight
    /// deliveries are dropped, its guard (and the completions it owes) with them.
    async fn crash(self: Arc<Self>, c: CrashPlan) {
        tokio::time::sleep_until(self.t0 + c.at).await;
        let gone = lock(&self.slots)[c.slot].take();
        if let Some(incarnation) = gone {
            let now = self.now();
            lock(&self.black_holed).push(incarnation.inc);
            {
                let mut st = self.state();
                st.crashes.push((incarnation.inc, now));
                st.stats.crashes += 1;
                st.stats.add_guard(&incarnation.guard.stats());
            }
            self.trace(|| format!("consumer {}#{} crashes", c.slot, incarnation.inc));
            for task in &incarnation.tasks {
                task.abort();
            }
        }
        tokio::time::sleep(c.restart_after).await;
        if lock(&self.slots)[c.slot].is_none() {
            self.start_incarnation(c.slot);
        }
    }

    /// After the faults: delivers `event` until its answer is final and recorded.
    async fn sweep(self: &Arc<Self>, event: usize) {
        for _ in 0..100 {
            let slot = self.draw(|r| r.below(self.consumers.len()));
            let plan = DeliveryPlan {
                at: self.now(),
                slot,
                events: vec![event],
                batch: false,
                cancel_after: None,
            };
            match self.deliver(&plan).await[0] {
                Answer::Processed(_) | Answer::Duplicate | Answer::Replayed(_) => return,
                Answer::Unprotected(_) => {
                    self.violation(format!(
                        "P4 event {event} ran unprotected after the faults had stopped"
                    ));
                    return;
                }
                _ => {
                    let pause = self.draw(|r| r.between(100 * MS, 1_000 * MS));
                    tokio::time::sleep(pause).await;
                }
            }
        }
        self.violation(format!(
            "P4 event {event} got no final answer in 100 deliveries after the faults had stopped"
        ));
    }
}

/// A handler run's draws.
#[derive(Clone, Copy)]
struct Handling {
    id: u64,
    work: Duration,
    fail: bool,
    panic: bool,
}

/// Ends a run as dropped if its future goes before it ended.
struct Running {
    w: Arc<World>,
    id: u64,
    ended: bool,
}

impl Running {
    fn end(&mut self, end: End) {
        self.ended = true;
        self.w.end_run(self.id, end);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.ended {
            self.w.end_run(self.id, End::Dropped);
        }
    }
}

/// The handler: works a while, then fails, panics, or applies its effect and returns its
/// run's id (the effect and the return happen in the same poll).
async fn handler(
    w: Arc<World>,
    slot: usize,
    inc: u32,
    delivery: u64,
    event: usize,
) -> Result<u64, SimError> {
    let h = w.start_run(event, slot, inc, delivery);
    let mut running = Running {
        w: Arc::clone(&w),
        id: h.id,
        ended: false,
    };
    tokio::time::sleep(h.work).await;
    if h.panic {
        running.end(End::Panicked);
        std::panic::panic_any(SimPanic);
    }
    if h.fail {
        running.end(End::Failed);
        return Err(SimError(h.id));
    }
    running.end(End::Effect);
    Ok(h.id)
}

/// One delivery on one consumer.
struct Attempt {
    w: Arc<World>,
    guard: Guard,
    slot: usize,
    inc: u32,
    id: u64,
    events: Vec<usize>,
    batch: bool,
    cancel: Option<Duration>,
}

impl Attempt {
    async fn run(self) -> Vec<Answer> {
        let n = self.events.len();
        let (w, slot, inc, id) = (Arc::clone(&self.w), self.slot, self.inc, self.id);
        let work = async {
            if self.batch {
                let envelopes: Vec<EventEnvelope> = self
                    .events
                    .iter()
                    .map(|&e| w.envelopes[e].clone())
                    .collect();
                let hw = Arc::clone(&w);
                let handle = move |envelope: &EventEnvelope| {
                    let event = hw.event_of(envelope);
                    handler(Arc::clone(&hw), slot, inc, id, event)
                };
                if w.p.stored {
                    let answers = self.guard.run_batch_stored(&envelopes, handle).await;
                    answers.into_iter().map(Answer::of_stored).collect()
                } else {
                    let answers = self.guard.run_batch(&envelopes, handle).await;
                    answers.into_iter().map(Answer::of).collect()
                }
            } else {
                let e = self.events[0];
                let run = handler(Arc::clone(&w), slot, inc, id, e);
                if w.p.stored {
                    let answer = self.guard.run_stored(&w.envelopes[e], run).await;
                    vec![Answer::of_stored(answer)]
                } else {
                    vec![Answer::of(self.guard.run(&w.envelopes[e], run).await)]
                }
            }
        };
        match self.cancel {
            None => work.await,
            Some(after) => match tokio::time::timeout(after, work).await {
                Ok(answers) => answers,
                Err(_) => {
                    w.state().stats.cancels += 1;
                    vec![Answer::Cancelled; n]
                }
            },
        }
    }
}

/// Runs one seed on `store` (shared by every consumer) under service `service`.
pub(crate) async fn simulate(
    seed: u64,
    p: Params,
    store: Arc<dyn IdempotencyStore>,
    memory: Option<MemoryStore>,
    service: String,
    trace: bool,
) -> Report {
    let mut plan = plan::draw(seed, &p);
    let described = plan.describe();
    let deliveries = std::mem::take(&mut plan.deliveries);
    let crashes = std::mem::take(&mut plan.crashes);
    let w = world(seed, &p, plan, (store, memory), service, trace);
    if trace {
        LOG_SINK.with(|s| *s.borrow_mut() = Arc::downgrade(&w));
    }
    for slot in 0..w.consumers.len() {
        w.start_incarnation(slot);
    }
    for delivery in deliveries {
        w.spawn_delivery(delivery);
    }
    for crash in crashes {
        tokio::spawn(Arc::clone(&w).crash(crash));
    }
    w.chaos_then_answers(&p).await;
    let guards = w.reset_and_check(&p).await;

    crate::oracle::check_reruns(&w);
    let mut st = w.state();
    for guard in &guards {
        st.stats.add_guard(&guard.stats());
    }
    if let Some(memory) = &w.memory {
        let counted = memory.stats();
        st.stats.evictions += counted.evictions;
        st.stats.refused_claims += counted.refused_claims;
    }
    st.stats.small_stores += u64::from(w.store_plan.capacity.is_some());
    let report = Report {
        seed,
        violations: std::mem::take(&mut st.violations),
        stats: st.stats.clone(),
        plan: described,
        trace: st.trace.take().unwrap_or_default(),
    };
    drop(st);
    drop(guards);
    // The consumers hold the world (through their stores): let them go.
    lock(&w.slots).iter_mut().for_each(|s| *s = None);
    report
}

/// The world of one seed: its events, their keys and the plan's consumers and faults.
fn world(
    seed: u64,
    p: &Params,
    plan: plan::Plan,
    (store, memory): (Arc<dyn IdempotencyStore>, Option<MemoryStore>),
    service: String,
    trace: bool,
) -> Arc<World> {
    let config = IdempotencyConfig::builder(service.clone())
        .build()
        .expect("a valid service name");
    let mut envelopes = Vec::new();
    let mut keys = Vec::new();
    for e in 0..plan.events {
        let event_type = ["sim.order.placed.v1", "sim.payment.captured.v1"][e % 2];
        let envelope = EventEnvelope::new(event_type, json!({ "n": e, "seed": seed }))
            .with_event_id(format!("{seed}-{e}"));
        let hash = envelope
            .deterministic_hash()
            .expect("the simulation's events have an identity");
        keys.push(config.generate_key(event_type, &hash));
        envelopes.push(envelope);
    }
    Arc::new(World {
        ns: config.service_namespace(),
        key_index: keys.iter().cloned().zip(0..).collect(),
        id_index: envelopes
            .iter()
            .filter_map(|e| e.event_id.clone())
            .zip(0..)
            .collect(),
        keys,
        envelopes,
        windows: plan.windows.clone(),
        transient: plan.transient,
        rng: Mutex::new(plan.rng),
        faults_off: AtomicBool::new(false),
        black_holed: Mutex::new(Vec::new()),
        st: Mutex::new(State {
            invs: Vec::new(),
            granted: HashMap::new(),
            ran: std::collections::HashSet::new(),
            recs: HashMap::new(),
            crashes: Vec::new(),
            effects: vec![0; plan.events],
            violations: Vec::new(),
            stats: Stats::default(),
            trace: trace.then(Vec::new),
        }),
        store,
        memory,
        store_plan: plan.store.clone(),
        service,
        slots: Mutex::new((0..plan.consumers.len()).map(|_| None).collect()),
        consumers: plan.consumers,
        next_delivery: AtomicU64::new(1),
        next_inc: AtomicU32::new(0),
        outstanding: AtomicUsize::new(0),
        t0: Instant::now(),
        p: p.clone(),
    })
}

impl World {
    /// The chaos, then no more faults; every delivery is retried until its answer is final.
    async fn chaos_then_answers(&self, p: &Params) {
        tokio::time::sleep(p.chaos).await;
        self.faults_off.store(true, Ordering::SeqCst);
        self.trace(|| "faults stop".to_owned());
        let give_up = p.chaos + p.lease * 10 + p.long_work * 4;
        while self.outstanding.load(Ordering::SeqCst) > 0 {
            if self.now() > give_up {
                self.violation(format!(
                    "P4 {} deliveries still had no final answer {:?} after the faults stopped",
                    self.outstanding.load(Ordering::SeqCst),
                    give_up - p.chaos
                ));
                break;
            }
            tokio::time::sleep(50 * MS).await;
        }
    }

    /// Every event once more (a consumer group reset): each must end processed and
    /// recorded. Returns the consumers' guards (flushed).
    async fn reset_and_check(self: &Arc<Self>, p: &Params) -> Vec<Guard> {
        // (After a breaker opened by a call timing out as the faults stopped has closed.)
        tokio::time::sleep(p.store_timeout + p.cooldown).await;
        for event in 0..self.keys.len() {
            self.sweep(event).await;
        }
        let guards: Vec<Guard> = lock(&self.slots)
            .iter()
            .flatten()
            .map(|c| c.guard.clone())
            .collect();
        for guard in &guards {
            if let Err(err) = guard.flush().await {
                self.violation(format!(
                    "P4 flush failed after the faults had stopped: {err}"
                ));
            }
        }
        for (event, key) in self.keys.iter().enumerate() {
            let record = self.store.get(key).await;
            let completed = matches!(&record, Ok(Some(r)) if r.state == RecordState::Completed);
            // A small store's completed records may have expired (a TTL of a few leases) or
            // been evicted (counted) since the event's last delivery.
            let gone = self.store_plan.capacity.is_some() && matches!(&record, Ok(None));
            if !completed && !gone {
                self.violation(format!(
                    "P4 event {event} is not recorded completed at the end: {record:?}"
                ));
            }
            if self.state().effects[event] == 0 {
                self.violation(format!("P4 event {event} never ran"));
            }
        }
        guards
    }
}
