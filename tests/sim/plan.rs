//! What a seed decides before the run starts: the consumers and their settings, the
//! events and their deliveries (duplicates included), the fault windows, the crashes.
//! Everything decided during the run (transient faults, handler durations and failures,
//! redeliveries) is drawn from a generator forked from the same seed.

use std::fmt::Write as _;
use std::time::Duration;

use eventonce::FailMode;

use crate::rng::Rng;

const MS: Duration = Duration::from_millis(1);

/// The scale of a run: the memory store runs on Tokio's paused clock, so its leases and
/// its chaos can be long; the real stores run on the real clock, so theirs are short.
#[derive(Clone, Debug)]
pub(crate) struct Params {
    /// `lease`.
    pub lease: Duration,
    pub store_timeout: Duration,
    pub cooldown: Duration,
    /// Faults and crashes happen in `[0, chaos)`; then they stop.
    pub chaos: Duration,
    pub events: (usize, usize),
    pub consumers: (usize, usize),
    /// The longest handler.
    pub long_work: Duration,
    /// Slack of the checks that compare the guard's clock with the store's (the real
    /// stores judge expiry by their own clock, a few milliseconds away).
    pub slack: Duration,
    /// Whether a seed may run on a small store (the memory store's capacity).
    pub small_stores: bool,
    /// Whether deliveries keep the handler's answer (`run_stored`, `run_batch_stored`):
    /// the `stored` seeds.
    pub stored: bool,
}

impl Params {
    pub(crate) fn memory() -> Params {
        Params {
            lease: Duration::from_secs(6),
            store_timeout: 100 * MS,
            cooldown: 100 * MS,
            chaos: Duration::from_secs(40),
            events: (8, 32),
            consumers: (2, 4),
            long_work: Duration::from_secs(15),
            slack: Duration::ZERO,
            small_stores: true,
            stored: false,
        }
    }

    /// The memory seeds' settings, every delivery keeping its handler's answer.
    pub(crate) fn stored() -> Params {
        Params {
            stored: true,
            ..Params::memory()
        }
    }

    pub(crate) fn real() -> Params {
        Params {
            lease: Duration::from_secs(5),
            store_timeout: 200 * MS,
            cooldown: 100 * MS,
            chaos: Duration::from_secs(6),
            events: (6, 14),
            consumers: (2, 3),
            long_work: Duration::from_secs(6),
            slack: 50 * MS,
            small_stores: false,
            stored: false,
        }
    }

    /// A fault on a consumer at least this long may cost it a claim (and its event a second
    /// run): the guard renews every third of the lease and retries a failed renewal or
    /// completion until the lease is over, so only a fault covering the last two thirds of a
    /// lease (less a retry, a store timeout and a breaker cooldown) can; half the lease is
    /// below that. Shorter faults must never cost a second run.
    pub(crate) fn long_fault(&self) -> Duration {
        self.lease / 2
    }

    /// Faults closer than this count as one: the guard's longest pause between retries
    /// (of a renewal: a thirtieth of the lease; of a completion: a twentieth), a store
    /// timeout and a breaker cooldown, so a retry may miss a shorter gap.
    pub(crate) fn bridge(&self) -> Duration {
        self.lease / 20 + self.store_timeout + self.cooldown
    }
}

/// The store's size and the completed records' TTL. Most seeds: a store far larger than
/// their events and a day's TTL. A small store (a fifth of the memory seeds): a capacity
/// below the number of events, completed records kept a few leases, twice the events and
/// more long handlers, so that live claims, completed and expired records compete for
/// room.
#[derive(Clone, Debug)]
pub(crate) struct StorePlan {
    pub capacity: Option<u64>,
    pub ttl: Duration,
}

/// The store part of seed `seed`'s plan, drawn from a generator of its own so that the rest
/// of the plan is the same whatever it draws.
pub(crate) fn draw_store(seed: u64, p: &Params) -> StorePlan {
    let large = StorePlan {
        capacity: None,
        ttl: Duration::from_secs(86_400),
    };
    let mut r = Rng::new(seed ^ 0x5354_4f52_4531_u64);
    if !p.small_stores || !r.chance(0.2) {
        return large;
    }
    StorePlan {
        capacity: Some(r.range(4, 16) as u64),
        ttl: r.between(p.lease / 2, p.lease * 3),
    }
}

/// One consumer's settings (kept across its restarts).
#[derive(Clone, Debug)]
pub(crate) struct ConsumerPlan {
    pub fail_mode: FailMode,
    pub deferred: Option<Duration>,
    pub cached: bool,
    pub in_progress_wait: Duration,
    pub batch_concurrency: usize,
    pub breaker_threshold: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WindowKind {
    /// Every call fails at once.
    Fail,
    /// Every call hangs (never answers).
    Hang,
    /// Every call answers after the store timeout (applied before or after the answer).
    Slow,
    /// Renewals (`extend`, `extend_many`) fail.
    RenewFail,
}

/// A fault on one consumer (`slot`) or on all of them (`None`), over `[start, end)`.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    pub slot: Option<usize>,
    pub kind: WindowKind,
    pub start: Duration,
    pub end: Duration,
}

impl Window {
    pub(crate) fn hits(&self, slot: usize) -> bool {
        self.slot.is_none_or(|s| s == slot)
    }
}

/// A consumer process dying at `at` (its in-flight runs dropped, its guard gone with its
/// owed completions, nothing it sends afterwards reaching the store), back after a while.
#[derive(Clone, Debug)]
pub(crate) struct CrashPlan {
    pub slot: usize,
    pub at: Duration,
    pub restart_after: Duration,
}

/// One delivery: `events` (several: a batch through `run_batch`; one: `run` or a batch
/// of one) to consumer `slot` at `at`; dropped by the consumer after `cancel_after`.
#[derive(Clone, Debug)]
pub(crate) struct DeliveryPlan {
    pub at: Duration,
    pub slot: usize,
    pub events: Vec<usize>,
    pub batch: bool,
    pub cancel_after: Option<Duration>,
}

pub(crate) struct Plan {
    pub consumers: Vec<ConsumerPlan>,
    pub events: usize,
    pub deliveries: Vec<DeliveryPlan>,
    pub windows: Vec<Window>,
    pub crashes: Vec<CrashPlan>,
    /// The probability that a call meets a transient fault.
    pub transient: f64,
    pub store: StorePlan,
    /// The generator of the run's own draws.
    pub rng: Rng,
}

pub(crate) fn draw(seed: u64, p: &Params) -> Plan {
    // The draws happen in this order, always: a seed's plan never changes.
    let mut r = Rng::new(seed);
    let consumers = draw_consumers(&mut r, p);
    let n = consumers.len();
    let store = draw_store(seed, p);
    let events = if store.capacity.is_some() {
        r.range(p.events.0 * 2, p.events.1 * 2)
    } else {
        r.range(p.events.0, p.events.1)
    };
    let late = p.chaos * 4 / 5;
    let sends = draw_sends(&mut r, p, events, late);
    let deliveries = draw_deliveries(&mut r, p, &sends, n);
    let windows = draw_windows(&mut r, p, n);
    let crashes = draw_crashes(&mut r, p, n, late);
    let transient = [0.0, 0.01, 0.03, 0.08][r.below(4)];
    Plan {
        consumers,
        events,
        deliveries,
        windows,
        crashes,
        transient,
        store,
        rng: r.fork(),
    }
}

fn draw_consumers(r: &mut Rng, p: &Params) -> Vec<ConsumerPlan> {
    let n = r.range(p.consumers.0, p.consumers.1);
    (0..n)
        .map(|_| ConsumerPlan {
            fail_mode: if r.chance(0.6) {
                FailMode::Open
            } else {
                FailMode::Closed
            },
            deferred: r.chance(0.3).then(|| r.between(20 * MS, p.lease / 2)),
            cached: r.chance(0.3),
            in_progress_wait: if r.chance(0.3) {
                r.between(50 * MS, p.lease / 3)
            } else {
                Duration::ZERO
            },
            batch_concurrency: r.range(1, 4),
            breaker_threshold: if r.chance(0.1) {
                0
            } else {
                r.range(1, 5) as u32
            },
        })
        .collect()
}

/// Each event once at a random time, some again (a producer retry, a redelivery after a
/// rebalance): soon after (concurrently) or any time later. Sorted by time.
fn draw_sends(r: &mut Rng, p: &Params, events: usize, late: Duration) -> Vec<(Duration, usize)> {
    let mut sends: Vec<(Duration, usize)> = Vec::new();
    for e in 0..events {
        let first = r.between(Duration::ZERO, late);
        sends.push((first, e));
        let extra = match r.below(20) {
            0..=9 => 0,
            10..=15 => 1,
            16..=18 => 2,
            _ => 3,
        };
        for _ in 0..extra {
            let at = if r.chance(0.5) {
                first + r.between(Duration::ZERO, 300 * MS)
            } else {
                r.between(Duration::ZERO, p.chaos)
            };
            sends.push((at, e));
        }
    }
    sends.sort();
    sends
}

/// The sends grouped into deliveries (single events or batches) to consumer slots.
fn draw_deliveries(
    r: &mut Rng,
    p: &Params,
    sends: &[(Duration, usize)],
    n: usize,
) -> Vec<DeliveryPlan> {
    let mut deliveries = Vec::new();
    let mut i = 0;
    while i < sends.len() {
        let (at, _) = sends[i];
        let size = if r.chance(0.4) { r.range(2, 6) } else { 1 };
        let mut batch: Vec<usize> = sends[i..(i + size).min(sends.len())]
            .iter()
            .map(|&(_, e)| e)
            .collect();
        i += batch.len();
        if batch.len() > 1 && r.chance(0.1) {
            let again = batch[r.below(batch.len())];
            batch.push(again); // the same event twice in one batch
        }
        deliveries.push(DeliveryPlan {
            at,
            slot: r.below(n),
            batch: batch.len() > 1 || r.chance(0.3),
            events: batch,
            // Dropped by the consumer (a timeout, a shutdown): soon (mid-claim, often) or
            // any time in the run.
            cancel_after: r.chance(0.08).then(|| {
                if r.chance(0.5) {
                    r.between(Duration::ZERO, 10 * MS)
                } else {
                    r.between(Duration::ZERO, p.lease / 3)
                }
            }),
        });
    }
    deliveries
}

fn draw_windows(r: &mut Rng, p: &Params, n: usize) -> Vec<Window> {
    let mut windows = Vec::new();
    for _ in 0..r.range(0, 6) {
        let kind = match r.below(20) {
            0..=6 => WindowKind::Fail,
            7..=11 => WindowKind::Hang,
            12..=15 => WindowKind::Slow,
            _ => WindowKind::RenewFail,
        };
        let length = if r.chance(0.6) {
            r.between(20 * MS, p.lease * 2 / 5)
        } else {
            r.between(p.lease * 3 / 5, p.lease * 8 / 5)
        };
        let start = r.between(Duration::ZERO, p.chaos);
        windows.push(Window {
            slot: if r.chance(0.3) {
                None
            } else {
                Some(r.below(n))
            },
            kind,
            start,
            end: (start + length).min(p.chaos),
        });
    }
    windows
}

fn draw_crashes(r: &mut Rng, p: &Params, n: usize, late: Duration) -> Vec<CrashPlan> {
    let mut crashes = Vec::new();
    let count = match r.below(20) {
        0..=11 => 0,
        12..=17 => 1,
        _ => 2,
    };
    for _ in 0..count {
        crashes.push(CrashPlan {
            slot: r.below(n),
            at: r.between(Duration::ZERO, late),
            restart_after: r.between(100 * MS, p.lease / 2),
        });
    }
    crashes.sort_by_key(|c| c.at);
    crashes
}

impl Plan {
    /// The plan in a few lines, printed with a failing seed.
    pub(crate) fn describe(&self) -> String {
        let mut s = String::new();
        for (i, c) in self.consumers.iter().enumerate() {
            let _ = writeln!(
                s,
                "  consumer {i}: {:?}, deferred {:?}, cached {}, in_progress_wait {:?}, batch_concurrency {}, breaker {}",
                c.fail_mode, c.deferred, c.cached, c.in_progress_wait, c.batch_concurrency, c.breaker_threshold
            );
        }
        let _ = writeln!(
            s,
            "  {} events, {} planned deliveries, transient fault rate {}",
            self.events,
            self.deliveries.len(),
            self.transient
        );
        if let Some(capacity) = self.store.capacity {
            let _ = writeln!(
                s,
                "  small store: capacity {capacity}, completed records kept {:?}",
                self.store.ttl
            );
        }
        for w in &self.windows {
            let _ = writeln!(
                s,
                "  fault {:?} on {} over [{:?}, {:?}) ({:?})",
                w.kind,
                w.slot
                    .map_or("every consumer".to_owned(), |c| format!("consumer {c}")),
                w.start,
                w.end,
                w.end.saturating_sub(w.start)
            );
        }
        for c in &self.crashes {
            let _ = writeln!(
                s,
                "  crash of consumer {} at {:?}, back {:?} later",
                c.slot, c.at, c.restart_after
            );
        }
        s
    }
}
