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
    pub async fn run(&self, mut down: impl FnMut(), mut up: impl FnMut()) -> Vec<String> {
        let mut rows = Vec::new();
        let mut next = 1_000u32;
        let mut refused = Vec::new();
        let fresh = |next: &mut u32, n: u32| {
            let start = *next;
            *next += n;
            start..start + n
        };

        // Baseline.
        let events = fresh(&mut next, 10);
        let a = self.deliver(self.open, events.clone()).await;
        let b = self.deliver(self.closed, events).await;
        assert_eq!((a.processed, b.duplicates), (10, 10), "{a:?} {b:?}");
        rows.push(self.row("healthy", "open", &a));
        rows.push(self.row("healthy", "closed", &b));

        // Latency under the timeout: slower, still protected.
        // Small enough that a fresh connection (several round trips) still fits the timeout.
        let slow = self.timeout / 20;
        self.proxy.set(ProxyMode::Latency(slow));
        let events = fresh(&mut next, 10);
        let a = self.deliver(self.open, events.clone()).await;
        let b = self.deliver(self.closed, events).await;
        assert_eq!((a.processed, b.duplicates), (10, 10), "{a:?} {b:?}");
        rows.push(self.row(&format!("latency {} ms", slow.as_millis()), "open", &a));
        rows.push(self.row(&format!("latency {} ms", slow.as_millis()), "closed", &b));

        // Latency over the timeout: one timeout, then the breaker answers at once.
        self.proxy.set(ProxyMode::Latency(self.timeout * 3));
        let a = self.deliver(self.open, fresh(&mut next, 20)).await;
        let b = self.deliver(self.closed, fresh(&mut next, 20)).await;
        assert_eq!(a.unprotected, 20, "{a:?}");
        assert_eq!(b.refused, 20, "{b:?}");
        assert!(
            a.slow <= 1 && b.slow <= 1,
            "more than one timeout paid: {a:?} {b:?}"
        );
        rows.push(self.row(
            &format!("latency {} ms", (self.timeout * 3).as_millis()),
            "open",
            &a,
        ));
        rows.push(self.row(
            &format!("latency {} ms", (self.timeout * 3).as_millis()),
            "closed",
            &b,
        ));
        refused.extend(b.refused_events);
        self.proxy.set(ProxyMode::Pass);
        let took = self
            .until_protected(&mut next, Duration::from_secs(15))
            .await;
        rows.push(format!("|          | recovered after {:>6.0} ms   |        |           |     |             |         |          |      |        |", took.as_secs_f64() * 1000.0));

        // Every open connection dropped.
        self.proxy.drop_connections();
        let a = self.deliver(self.open, fresh(&mut next, 20)).await;
        let b = self.deliver(self.closed, fresh(&mut next, 20)).await;
        assert_eq!(a.processed + a.unprotected, 20, "{a:?}");
        assert_eq!(
            b.processed + b.refused + b.refused_events.len() as u32 - b.refused,
            20,
            "{b:?}"
        );
        assert!(a.slow <= 1 && b.slow <= 1, "{a:?} {b:?}");
        rows.push(self.row("connections dropped", "open", &a));
        rows.push(self.row("connections dropped", "closed", &b));
        refused.extend(b.refused_events);
        let took = self
            .until_protected(&mut next, Duration::from_secs(15))
            .await;
        rows.push(format!("|          | recovered after {:>6.0} ms   |        |           |     |             |         |          |      |        |", took.as_secs_f64() * 1000.0));

        // A black hole: at most one timeout each, then at once.
        self.proxy.set(ProxyMode::BlackHole);
        self.proxy.drop_connections();
        let a = self.deliver(self.open, fresh(&mut next, 20)).await;
        let b = self.deliver(self.closed, fresh(&mut next, 20)).await;
        assert_eq!(a.unprotected, 20, "{a:?}");
        assert_eq!(b.refused, 20, "{b:?}");
        assert!(a.slow <= 1 && b.slow <= 1, "{a:?} {b:?}");
        assert!(b.timeouts <= 1, "{b:?}");
        rows.push(self.row("black hole", "open", &a));
        rows.push(self.row("black hole", "closed", &b));
        refused.extend(b.refused_events);
        self.proxy.set(ProxyMode::Pass);
        let took = self
            .until_protected(&mut next, Duration::from_secs(15))
            .await;
        rows.push(format!("|          | recovered after {:>6.0} ms   |        |           |     |             |         |          |      |        |", took.as_secs_f64() * 1000.0));

        // The server restarts on the same port.
        down();
        let a = self.deliver(self.open, fresh(&mut next, 20)).await;
        let b = self.deliver(self.closed, fresh(&mut next, 20)).await;
        assert_eq!(a.unprotected + a.processed, 20, "{a:?}");
        assert_eq!(b.processed + b.refused, 20, "{b:?}");
        assert!(
            a.unprotected >= 15 && b.refused >= 15,
            "the server was down: {a:?} {b:?}"
        );
        assert!(a.slow <= 1 && b.slow <= 1, "{a:?} {b:?}");
        rows.push(self.row("server down", "open", &a));
        rows.push(self.row("server down", "closed", &b));
        refused.extend(b.refused_events);
        up();
        let took = self
            .until_protected(&mut next, Duration::from_secs(20))
            .await;
        rows.push(format!("|          | recovered after {:>6.0} ms   |        |           |     |             |         |          |      |        |", took.as_secs_f64() * 1000.0));

        // Nothing lost: every event the closed guard refused is processed on redelivery
        // (after the lease, for a claim that reached the server while its reply was lost).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut redelivered = Tally::default();
        for n in refused.iter().copied() {
            loop {
                let t = self.deliver(self.closed, [n]).await;
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
            refused.len(),
            "{redelivered:?}"
        );
        rows.push(self.row(
            &format!("redelivery of {} refused", refused.len()),
            "closed",
            &redelivered,
        ));
        rows
    }
}
