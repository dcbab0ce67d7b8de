//! The fault matrix: a pair of guards (fail open, fail closed) talking to a real store
//! through a [`FaultProxy`], taken through latency, dropped connections, a black hole and a
//! server restart. Every phase asserts its outcome and adds a row to the printed table.

use std::time::{Duration, Instant};

use eventonce_core::{EventEnvelope, Guard, GuardError, Outcome, StoreError};
use serde_json::json;

use crate::proxy::{FaultProxy, ProxyMode};

/// The matrix's pair of guards over `store`: fail open and fail closed, with a short store
/// timeout, breaker cool-down and lease.
pub fn guards<S>(store: S, service: &str, timeout: Duration, cooldown: Duration) -> (Guard, Guard)
where
    S: eventonce_core::IdempotencyStore + Clone + 'static,
{
    let build = |mode| {
        let config = eventonce_core::IdempotencyConfig::builder(service)
            .store_timeout(timeout)
            .circuit_breaker(3, cooldown)
            .lease(Duration::from_secs(2))
            .on_store_error(mode)
            .build()
            .expect("config");
        Guard::new(store.clone(), config)
    };
    (
        build(eventonce_core::FailMode::Open),
        build(eventonce_core::FailMode::Closed),
    )
}

/// Counts of one phase for one guard.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub processed: u32,
    pub duplicates: u32,
    pub unprotected: u32,
    pub refused: u32,
    pub timeouts: u32,
    pub circuit_open: u32,
    pub slow: u32,
    pub max: Duration,
    /// Events refused by a fail-closed guard: the broker redelivers them.
    pub refused_events: Vec<u32>,
}

/// The guards and the proxy of a matrix run.
pub struct Matrix<'a> {
    pub backend: &'a str,
    pub open: &'a Guard,
    pub closed: &'a Guard,
    pub proxy: &'a FaultProxy,
    pub timeout: Duration,
    pub cooldown: Duration,
}

fn event(n: u32) -> EventEnvelope {
    EventEnvelope::new("faults.matrix.v1", json!({"n": n})).with_event_id(format!("fault-{n}"))
}

pub const HEADER: &str = "| backend  | phase                       | guard  | processed | dup | unprotected | refused | timeouts | slow | max ms |\n|----------|-----------------------------|--------|-----------|-----|-------------|---------|----------|------|--------|";

/// Delivers events `n` (fresh envelopes built from the number) through `g` and counts the
/// outcomes; a call longer than `timeout / 2` counts as slow.
pub async fn deliver(g: &Guard, events: impl IntoIterator<Item = u32>, timeout: Duration) -> Tally {
    let mut t = Tally::default();
    for n in events {
        let start = Instant::now();
        let r = g.run(&event(n), async { Ok::<_, String>(()) }).await;
        let took = start.elapsed();
        t.max = t.max.max(took);
        if took > timeout / 2 {
            t.slow += 1;
        }
        match r {
            Ok(Outcome::Processed(())) => t.processed += 1,
            Ok(Outcome::Duplicate) => t.duplicates += 1,
            Ok(Outcome::Unprotected(())) => t.unprotected += 1,
            Err(GuardError::Store(e)) => {
                t.refused += 1;
                t.refused_events.push(n);
                match e {
                    StoreError::Timeout { .. } => t.timeouts += 1,
                    StoreError::CircuitOpen { .. } => t.circuit_open += 1,
                    _ => {}
                }
            }
            Err(GuardError::InProgress) => t.refused_events.push(n),
            Err(other) => panic!("event {n}: unexpected {other}"),
        }
    }
    t
}

/// Delivers fresh events through `g`, from `*next` on, until one is protected again;
/// returns how long that took. Panics past `limit`.
pub async fn until_protected(g: &Guard, next: &mut u32, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = g.run(&event(*next), async { Ok::<_, String>(()) }).await;
        *next += 1;
        if matches!(r, Ok(Outcome::Processed(()))) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "protection did not resume within {limit:?}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Matrix<'_> {
    async fn deliver(&self, g: &Guard, events: impl IntoIterator<Item = u32>) -> Tally {
        deliver(g, events, self.timeout).await
    }

    fn row(&self, phase: &str, guard: &str, t: &Tally) -> String {
        format!(
            "| {:<8} | {phase:<27} | {guard:<6} | {:>9} | {:>3} | {:>11} | {:>7} | {:>8} | {:>4} | {:>6.1} |",
            self.backend,
            t.processed,
            t.duplicates,
            t.unprotected,
            t.refused,
            t.timeouts,
            t.slow,
            t.max.as_secs_f64() * 1000.0
        )
    }

    /// Delivers fresh events until both guards are protected again; returns how long it took.
    async fn until_protected(&self, next: &mut u32, limit: Duration) -> Duration {
        let start = Instant::now();
        for g in [self.open, self.closed] {
            until_protected(g, next, limit.saturating_sub(start.elapsed())).await;
        }
        start.elapsed()
    }

    /// Runs every phase; `down` and `up` stop and restart the server behind the proxy.
    pub async fn run(&self, down: impl FnOnce(), up: impl FnOnce()) -> Vec<String> {
        let mut run = Run {
            m: self,
            rows: Vec::new(),
            next: 1_000,
            refused: Vec::new(),
        };
        run.healthy().await;
        run.latency_under_timeout().await;
        run.latency_over_timeout().await;
        run.connections_dropped().await;
        run.black_hole().await;
        run.server_restart(down, up).await;
        run.redeliver_refused().await;
        run.rows
    }
}

/// The state of one matrix run: its rows, the next fresh event number and the events the
/// fail-closed guard refused (redelivered at the end).
struct Run<'m, 'a> {
    m: &'m Matrix<'a>,
    rows: Vec<String>,
    next: u32,
    refused: Vec<u32>,
}

impl Run<'_, '_> {
    fn fresh(&mut self, n: u32) -> std::ops::Range<u32> {
        let start = self.next;
        self.next += n;
        start..start + n
    }

    /// Delivers `n` fresh events through each guard (the same events twice when `same`).
    async fn pair(&mut self, n: u32, same: bool) -> (Tally, Tally) {
        let events = self.fresh(n);
        let a = self.m.deliver(self.m.open, events.clone()).await;
        let other = if same { events } else { self.fresh(n) };
        let b = self.m.deliver(self.m.closed, other).await;
        (a, b)
    }

    fn rows(&mut self, phase: &str, a: &Tally, b: &Tally) {
        self.rows.push(self.m.row(phase, "open", a));
        self.rows.push(self.m.row(phase, "closed", b));
    }

    async fn recovered(&mut self, limit: Duration) {
        let took = self.m.until_protected(&mut self.next, limit).await;
        self.rows.push(format!("|          | recovered after {:>6.0} ms   |        |           |     |             |         |          |      |        |", took.as_secs_f64() * 1000.0));
    }

    async fn healthy(&mut self) {
        let (a, b) = self.pair(10, true).await;
        assert_eq!((a.processed, b.duplicates), (10, 10), "{a:?} {b:?}");
        self.rows("healthy", &a, &b);
    }

    /// Latency under the timeout: slower, still protected. Small enough that a fresh
    /// connection (several round trips) still fits the timeout.
    async fn latency_under_timeout(&mut self) {
        let slow = self.m.timeout / 20;
        self.m.proxy.set(ProxyMode::Latency(slow));
        let (a, b) = self.pair(10, true).await;
        assert_eq!((a.processed, b.duplicates), (10, 10), "{a:?} {b:?}");
        self.rows(&format!("latency {} ms", slow.as_millis()), &a, &b);
    }

    /// Latency over the timeout: one timeout, then the breaker answers at once.
    async fn latency_over_timeout(&mut self) {
        let slow = self.m.timeout * 3;
        self.m.proxy.set(ProxyMode::Latency(slow));
        let (a, b) = self.pair(20, false).await;
        assert_eq!(a.unprotected, 20, "{a:?}");
        assert_eq!(b.refused, 20, "{b:?}");
        assert!(
            a.slow <= 1 && b.slow <= 1,
            "more than one timeout paid: {a:?} {b:?}"
        );
        self.rows(&format!("latency {} ms", slow.as_millis()), &a, &b);
        self.refused.extend(b.refused_events);
        self.m.proxy.set(ProxyMode::Pass);
        self.recovered(Duration::from_secs(15)).await;
    }

    /// Every open connection dropped.
    async fn connections_dropped(&mut self) {
        self.m.proxy.drop_connections();
        let (a, b) = self.pair(20, false).await;
        assert_eq!(a.processed + a.unprotected, 20, "{a:?}");
        assert_eq!(
            b.processed + b.refused + b.refused_events.len() as u32 - b.refused,
            20,
            "{b:?}"
        );
        assert!(a.slow <= 1 && b.slow <= 1, "{a:?} {b:?}");
        self.rows("connections dropped", &a, &b);
        self.refused.extend(b.refused_events);
        self.recovered(Duration::from_secs(15)).await;
    }

    /// A black hole: at most one timeout each, then at once.
    async fn black_hole(&mut self) {
        self.m.proxy.set(ProxyMode::BlackHole);
        self.m.proxy.drop_connections();
        let (a, b) = self.pair(20, false).await;
        assert_eq!(a.unprotected, 20, "{a:?}");
        assert_eq!(b.refused, 20, "{b:?}");
        assert!(a.slow <= 1 && b.slow <= 1, "{a:?} {b:?}");
        assert!(b.timeouts <= 1, "{b:?}");
        self.rows("black hole", &a, &b);
        self.refused.extend(b.refused_events);
        self.m.proxy.set(ProxyMode::Pass);
        self.recovered(Duration::from_secs(15)).await;
    }

    /// The server restarts on the same port.
    async fn server_restart(&mut self, down: impl FnOnce(), up: impl FnOnce()) {
        down();
        let (a, b) = self.pair(20, false).await;
        assert_eq!(a.unprotected + a.processed, 20, "{a:?}");
        assert_eq!(b.processed + b.refused, 20, "{b:?}");
        assert!(
            a.unprotected >= 15 && b.refused >= 15,
            "the server was down: {a:?} {b:?}"
        );
        assert!(a.slow <= 1 && b.slow <= 1, "{a:?} {b:?}");
        self.rows("server down", &a, &b);
        self.refused.extend(b.refused_events);
        up();
        self.recovered(Duration::from_secs(20)).await;
    }

    /// Nothing lost: every event the closed guard refused is processed on redelivery
    /// (after the lease, for a claim that reached the server while its reply was lost).
    async fn redeliver_refused(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut redelivered = Tally::default();
        for n in self.refused.iter().copied() {
            loop {
                let t = self.m.deliver(self.m.closed, [n]).await;
                if t.processed + t.duplicates == 1 {
                    redelivered.processed += t.processed;
                    redelivered.duplicates += t.duplicates;
                    redelivered.max = redelivered.max.max(t.max);
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "event {n} was never processed: {t:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert_eq!(
            redelivered.processed as usize + redelivered.duplicates as usize,
            self.refused.len(),
            "{redelivered:?}"
        );
        let phase = format!("redelivery of {} refused", self.refused.len());
        self.rows.push(self.m.row(&phase, "closed", &redelivered));
    }
}
