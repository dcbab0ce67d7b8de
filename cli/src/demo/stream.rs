//! The demo's producer and broker: a stream of events with a share sent twice, and the
//! deliveries sent again after a failure, generated as they are consumed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use eventonce::EventEnvelope;
use serde_json::json;

/// A producer's second copy of an event is sent at most this many events after the first.
pub(super) const DUPLICATE_SPREAD: usize = 50;

/// One sending of an event by the producer: which event, and whether it is the second copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sent {
    pub(super) index: usize,
    pub(super) duplicate: bool,
}

/// The producer's stream, generated as it is consumed: every event once, in order, and a
/// share of them a second time, from right after the first copy to [`DUPLICATE_SPREAD`]
/// events later (as a producer's retry would). It holds only the second copies not yet sent
/// (at most [`DUPLICATE_SPREAD`]), whatever the number of events; the same seed gives the
/// same stream.
pub(super) struct Stream {
    events: usize,
    duplicate_rate: f64,
    rng: u64,
    /// The next event to send for the first time.
    next: usize,
    /// Second copies waiting: (sent before the first copy of this event, event).
    pending: BinaryHeap<Reverse<(usize, usize)>>,
    /// Second copies produced so far.
    pub(super) resent: usize,
}

impl Stream {
    pub(super) fn new(events: usize, duplicate_rate: f64, seed: u64) -> Stream {
        Stream {
            events,
            duplicate_rate,
            rng: seed.wrapping_mul(6364136223846793005).wrapping_add(1),
            next: 0,
            pending: BinaryHeap::new(),
            resent: 0,
        }
    }
}

impl Iterator for Stream {
    type Item = Sent;

    fn next(&mut self) -> Option<Sent> {
        if let Some(&Reverse((due, index))) = self.pending.peek() {
            if due <= self.next || self.next == self.events {
                self.pending.pop();
                return Some(Sent {
                    index,
                    duplicate: true,
                });
            }
        }
        if self.next == self.events {
            return None;
        }
        let index = self.next;
        self.next += 1;
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if ((self.rng >> 33) as f64 / (1u64 << 31) as f64) < self.duplicate_rate {
            let due = index + 1 + (self.rng as usize % DUPLICATE_SPREAD);
            self.pending.push(Reverse((due, index)));
            self.resent += 1;
        }
        Some(Sent {
            index,
            duplicate: false,
        })
    }
}

/// What the consumers pull from: the producer's stream, and the deliveries the broker sends
/// again (their handler failed, or another consumer held them) once their delay is over.
pub(super) struct Feed {
    pub(super) stream: Stream,
    again: BinaryHeap<Reverse<(Instant, usize)>>,
    in_flight: usize,
    pub(super) redeliveries: usize,
}

/// A consumer's next step.
pub(super) enum Next {
    Deliver(Sent),
    Wait(Duration),
    Done,
}

impl Feed {
    pub(super) fn new(stream: Stream) -> Feed {
        Feed {
            stream,
            again: BinaryHeap::new(),
            in_flight: 0,
            redeliveries: 0,
        }
    }

    pub(super) fn next(&mut self, now: Instant) -> Next {
        if let Some(&Reverse((due, index))) = self.again.peek() {
            if due <= now {
                self.again.pop();
                self.in_flight += 1;
                self.redeliveries += 1;
                return Next::Deliver(Sent {
                    index,
                    duplicate: false,
                });
            }
        }
        if let Some(sent) = self.stream.next() {
            self.in_flight += 1;
            return Next::Deliver(sent);
        }
        match self.again.peek() {
            Some(&Reverse((due, _))) => Next::Wait(due.saturating_duration_since(now)),
            // A delivery still running may be sent again.
            None if self.in_flight > 0 => Next::Wait(Duration::from_millis(1)),
            None => Next::Done,
        }
    }

    /// A delivery is acknowledged, or to be sent again at `again`.
    pub(super) fn settle(&mut self, index: usize, again: Option<Instant>) {
        self.in_flight -= 1;
        if let Some(at) = again {
            self.again.push(Reverse((at, index)));
        }
    }
}

/// The demo's events, built when they are sent: event `i` is the same every time.
pub(super) struct Events {
    pub(super) run_id: String,
}

impl Events {
    pub(super) fn event(&self, i: usize) -> EventEnvelope {
        EventEnvelope::new(
            EVENT_TYPES[i % EVENT_TYPES.len()],
            json!({"essay_id": format!("essay-{i}"), "batch": i / 100}),
        )
        .with_event_id(format!("evt-{}{i:06}", self.run_id))
        .with_correlation_id(format!("corr-{}", i / 10))
    }

    /// The envelope a consumer receives. A second copy is re-serialized (pretty-printed)
    /// and parsed again, as a producer's retry through another client would send it: its
    /// bytes differ, its identity does not.
    pub(super) fn delivery(&self, sent: Sent) -> EventEnvelope {
        let event = self.event(sent.index);
        if !sent.duplicate {
            return event;
        }
        serde_json::to_vec_pretty(&event)
            .ok()
            .and_then(|bytes| EventEnvelope::from_slice(&bytes).ok())
            .unwrap_or(event)
    }
}

const EVENT_TYPES: &[&str] = &[
    "huleedu.essay.spellcheck.requested.v1",
    "huleedu.batch.essays.registered.v1",
    "huleedu.cj_assessment.completed.v1",
    "huleedu.result_aggregator.batch.completed.v1",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_sends_every_event_once_and_its_second_copy_soon_after() {
        let events = 200_000;
        let mut stream = Stream::new(events, 0.3, 7);
        let mut first_at = vec![None; events];
        let mut second_at = vec![None; events];
        let (mut originals, mut position, mut most_pending) = (0, 0, 0);
        while let Some(sent) = stream.next() {
            most_pending = most_pending.max(stream.pending.len());
            if sent.duplicate {
                let first = first_at[sent.index].expect("the first copy comes first");
                assert!(
                    originals - first <= DUPLICATE_SPREAD,
                    "event {} resent {} events after",
                    sent.index,
                    originals - first
                );
                assert_eq!(second_at[sent.index].replace(position), None);
            } else {
                assert_eq!(sent.index, originals, "first copies come in order");
                first_at[sent.index] = Some(originals);
                originals += 1;
            }
            position += 1;
        }
        assert_eq!(originals, events);
        let resent = second_at.iter().flatten().count();
        assert_eq!(resent, stream.resent);
        assert!((55_000..65_000).contains(&resent), "{resent}");
        // The look-ahead stays small, whatever the number of events.
        assert!(most_pending <= DUPLICATE_SPREAD, "{most_pending}");
    }

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        let a: Vec<Sent> = Stream::new(5000, 0.5, 11).collect();
        let b: Vec<Sent> = Stream::new(5000, 0.5, 11).collect();
        let c: Vec<Sent> = Stream::new(5000, 0.5, 12).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(Stream::new(100, 0.0, 1).filter(|s| s.duplicate).count(), 0);
        assert_eq!(
            Stream::new(100, 1.0, 1).filter(|s| s.duplicate).count(),
            100
        );
    }

    #[test]
    fn the_feed_sends_failed_deliveries_again_after_their_delay_and_then_ends() {
        let mut feed = Feed::new(Stream::new(2, 0.0, 1));
        let now = Instant::now();
        let Next::Deliver(first) = feed.next(now) else {
            panic!("the first event")
        };
        feed.settle(first.index, Some(now + Duration::from_millis(50)));
        let Next::Deliver(second) = feed.next(now) else {
            panic!("the second event")
        };
        assert_eq!(second.index, 1);
        // The second is still running, the first not due yet.
        assert!(matches!(feed.next(now), Next::Wait(d) if d == Duration::from_millis(50)));
        feed.settle(second.index, None);
        let later = now + Duration::from_millis(50);
        let Next::Deliver(again) = feed.next(later) else {
            panic!("the redelivery")
        };
        assert_eq!(again.index, 0);
        assert!(matches!(feed.next(later), Next::Wait(_)), "still running");
        feed.settle(again.index, None);
        assert!(matches!(feed.next(later), Next::Done));
        assert_eq!(feed.redeliveries, 1);
    }
}
