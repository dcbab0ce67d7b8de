//! The check of every handler run against the others of its event, after the run.
//!
//! A protected run (its delivery was granted the claim) that starts while an earlier
//! protected run of the same event had applied its effect, or was still running, is a
//! second run. It is allowed only when the earlier run's claim was lost in one of the
//! windows docs/guarantees.md names:
//!
//! - its consumer crashed after the effect, before the completion was written;
//! - its claim lapsed, not completed, after a fault of at least `Params::long_fault` hit
//!   its consumer within the lease before the lapse (renewals failing while the handler
//!   ran, or a completion retried until its lease ended and abandoned);
//! - on a small store: its completed record's TTL had ended, or the store counted an
//!   eviction of a completed record (never of a live claim) before the second run.
//!
//! Unprotected runs (fail open) may repeat anything and are counted. Every other second
//! run is a violation (P1).

use std::time::Duration;

use crate::plan::Window;
use crate::world::{Inv, State, World};

/// The longest stretch of `[from, to)` covered by fault windows hitting `slot`, windows
/// less than `bridge` apart counting as one.
fn longest_fault(
    windows: &[Window],
    slot: usize,
    from: Duration,
    to: Duration,
    bridge: Duration,
) -> Duration {
    let mut spans: Vec<(Duration, Duration)> = windows
        .iter()
        .filter(|w| w.hits(slot))
        .map(|w| (w.start.max(from), w.end.min(to)))
        .filter(|(a, b)| a < b)
        .collect();
    spans.sort();
    let mut longest = Duration::ZERO;
    let mut current: Option<(Duration, Duration)> = None;
    for (a, b) in spans {
        current = match current {
            Some((s, e)) if a <= e + bridge => Some((s, e.max(b))),
            Some((s, e)) => {
                longest = longest.max(e - s);
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((s, e)) = current {
        longest = longest.max(e - s);
    }
    longest
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Why {
    Crash,
    LeaseLost,
    CompletionLost,
    Expired,
    Evicted,
}

/// Why `second` may run after `first` (both protected), if it may.
fn explain(w: &World, st: &State, first: &Inv, second: &Inv) -> Result<Why, String> {
    let effect = first.effect();
    let crashed = st
        .crashes
        .iter()
        .find(|&&(inc, at)| inc == first.inc && at >= first.start && at <= second.start);
    if let (Some(&(_, at)), Some(effect)) = (crashed, effect) {
        if at >= effect {
            return Ok(Why::Crash);
        }
    }
    let owner = first.owner.clone().unwrap_or_default();
    let Some(rec) = st.recs.get(&(first.event, owner.clone())) else {
        return Err(format!("its claim {owner} never reached the store"));
    };
    if let (Some(done), None, Some(_)) = (rec.done, rec.released, w.store_plan.capacity) {
        if second.start >= done + w.store_plan.ttl {
            return Ok(Why::Expired);
        }
        if w.evictions() > 0 {
            return Ok(Why::Evicted);
        }
    }
    if rec.done.is_some() || rec.released.is_some() {
        return Err(format!(
            "its claim {owner} was completed ({:?}) or released ({:?}), yet the event was claimed again",
            rec.done, rec.released
        ));
    }
    // The guard gives a claim up when its own view of the lease ends, which a renewal
    // that reached the store without its answer may put before the store's.
    let lapse = rec.exp.min(rec.confirmed + w.p.lease);
    let from = lapse.saturating_sub(w.p.lease);
    let longest = longest_fault(&w.windows, first.slot, from, lapse, w.p.bridge());
    if longest >= w.p.long_fault() {
        return Ok(match effect {
            Some(t) if t <= lapse => Why::CompletionLost,
            _ => Why::LeaseLost,
        });
    }
    Err(format!(
        "its claim {owner} lapsed at {lapse:?} without a completion, but the longest fault on consumer {} in the lease before was {longest:?} (a claim may be lost only to one of {:?} or more){}",
        first.slot,
        w.p.long_fault(),
        if crashed.is_some() { "; its consumer crashed before the effect" } else { "" }
    ))
}

/// P1: every second protected run of an event is explained; counts the reruns by window.
pub(crate) fn check_reruns(w: &World) {
    let mut st = w.state();
    let mut by_event: Vec<Vec<usize>> = vec![Vec::new(); st.effects.len()];
    for (i, inv) in st.invs.iter().enumerate() {
        by_event[inv.event].push(i); // in start order
    }
    let mut violations = Vec::new();
    let mut whys = Vec::new();
    let mut unprotected = 0;
    for (event, runs) in by_event.iter().enumerate() {
        let protected: Vec<&Inv> = runs
            .iter()
            .map(|&i| &st.invs[i])
            .filter(|r| r.owner.is_some())
            .collect();
        for (j, second) in protected.iter().enumerate() {
            for first in &protected[..j] {
                let relevant = first.effect().is_some_and(|t| t <= second.start)
                    || first.running_at(second.start);
                if !relevant {
                    continue;
                }
                if let Err(reason) = explain(w, &st, first, second) {
                    violations.push(format!(
                        "P1 event {event} ran twice under protection: first on consumer {}#{} (delivery {}, started {:?}, ended {:?}), then on consumer {}#{} (delivery {}, started {:?}); {reason}",
                        first.slot, first.inc, first.delivery, first.start, first.end,
                        second.slot, second.inc, second.delivery, second.start
                    ));
                }
            }
        }
        // Count each effect after the first by the window that allowed it.
        let effects: Vec<&Inv> = runs
            .iter()
            .map(|&i| &st.invs[i])
            .filter(|r| r.effect().is_some())
            .collect();
        for pair in effects.windows(2) {
            let (first, second) = (pair[0], pair[1]);
            if first.owner.is_none() || second.owner.is_none() {
                unprotected += 1;
            } else if let Ok(why) = explain(w, &st, first, second) {
                whys.push(why);
            }
        }
    }
    st.stats.reruns_unprotected += unprotected;
    for why in whys {
        match why {
            Why::Crash => st.stats.reruns_crash += 1,
            Why::LeaseLost => st.stats.reruns_lease_lost += 1,
            Why::CompletionLost => st.stats.reruns_completion_lost += 1,
            Why::Expired => st.stats.reruns_expired += 1,
            Why::Evicted => st.stats.reruns_evicted += 1,
        }
    }
    drop(st);
    for v in violations {
        w.violation(v);
    }
}
