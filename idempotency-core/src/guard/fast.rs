//! The cheap paths of a guarded run, for a store that answers at once (the in-memory one,
//! a cache): a renewal timer only for a handler that waits, a store call given a timer
//! only when it does not answer in its first poll, owner tokens written without the
//! formatting machinery.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The lease renewal timer of a running handler, registered with the runtime only when
/// first polled: a handler that finishes in its first poll never sets one (a timer costs
/// a clock read, the runtime's timer wheel and its removal again).
pub(crate) struct LazyTick {
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl LazyTick {
    /// A timer that fires at `deadline`, once polled.
    pub(crate) fn new(deadline: Instant) -> Self {
        LazyTick {
            deadline,
            sleep: None,
        }
    }

    /// Polls the timer, setting it on the first poll.
    pub(crate) fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        self.sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)))
            .as_mut()
            .poll(cx)
    }

    /// Moves the timer to `deadline`.
    pub(crate) fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if let Some(sleep) = self.sleep.as_mut() {
            sleep.as_mut().reset(deadline);
        }
    }
}

/// `call`, sent at `sent`, bounded by `timeout` from then, as `tokio::time::timeout`
/// bounds it, but polled once before any timer is set: a call that answers in its first
/// poll never needs one, and the deadline needs no clock read of its own.
pub(crate) async fn within<F: Future>(
    sent: Instant,
    timeout: Duration,
    call: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut call = pin!(call);
    if let Poll::Ready(out) = poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
        return Ok(out);
    }
    tokio::time::timeout_at(crate::store::saturating_deadline(sent, timeout), call).await
}

/// `{pid:x}-{nonce:016x}-{n:x}`, the owner token of one claim, in one allocation.
pub(crate) fn owner_token(pid: u32, nonce: u64, n: u64) -> String {
    let mut out = String::with_capacity(8 + 1 + 16 + 1 + 16);
    push_hex(&mut out, u64::from(pid), 1);
    out.push('-');
    push_hex(&mut out, nonce, 16);
    out.push('-');
    push_hex(&mut out, n, 1);
    out
}

/// Appends `v` in lowercase hex, at least `width` digits (zero-padded).
fn push_hex(out: &mut String, v: u64, width: u32) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - v.leading_zeros()).div_ceil(4).max(width);
    for i in (0..digits).rev() {
        out.push(char::from(DIGITS[((v >> (i * 4)) & 0xf) as usize]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_tokens_are_written_as_format_writes_them() {
        for (pid, nonce, n) in [
            (0, 0, 0),
            (1, 0xabc, 15),
            (u32::MAX, u64::MAX, u64::MAX),
            (4242, 0x0123_4567_89ab_cdef, 16),
        ] {
            assert_eq!(
                owner_token(pid, nonce, n),
                format!("{pid:x}-{nonce:016x}-{n:x}")
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_answers_at_once_needs_no_timer_and_a_slow_one_times_out() {
        let now = Instant::now();
        assert_eq!(
            within(now, Duration::from_millis(5), async { 7 }).await,
            Ok(7)
        );
        let slow = tokio::time::sleep(Duration::from_secs(1));
        let sent = Instant::now();
        assert!(within(sent, Duration::from_millis(5), slow).await.is_err());
        assert_eq!(Instant::now() - sent, Duration::from_millis(5));
    }
}
