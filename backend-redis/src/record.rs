//! Record values: the clock and TTL arguments written, and the stored values read back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventonce_core::{Record, RecordState};

/// The wall clock in milliseconds, for the informational timestamp of a record.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Milliseconds of a duration, at least 1 (`PX 0` is an error).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Reads a stored value: our `p|ms|owner` / `c|ms|owner`, or an older writer's value.
pub(crate) fn decode(value: &[u8]) -> (RecordState, Option<String>, Option<SystemTime>) {
    let text = String::from_utf8_lossy(value);
    let mut parts = text.splitn(3, '|');
    if let (Some(state @ ("p" | "c")), Some(ms), Some(owner)) =
        (parts.next(), parts.next(), parts.next())
    {
        if let Ok(ms) = ms.parse::<u64>() {
            let state = if state == "p" {
                RecordState::Processing
            } else {
                RecordState::Completed
            };
            let at = UNIX_EPOCH.checked_add(Duration::from_millis(ms));
            return (state, Some(owner.to_owned()), at);
        }
    }
    let legacy_processing = text.starts_with('{')
        && (text.contains("\"status\": \"processing\"")
            || text.contains("\"status\":\"processing\"")
            || text.contains("\"state\": \"processing\"")
            || text.contains("\"state\":\"processing\""));
    let state = if legacy_processing {
        RecordState::Processing
    } else {
        RecordState::Completed
    };
    (state, None, None)
}

/// A stored value and its remaining TTL as a record.
pub(crate) fn record_of(value: &[u8], pttl: i64) -> Record {
    let (state, owner, updated_at) = decode(value);
    Record {
        state,
        owner,
        ttl_left: u64::try_from(pttl).ok().map(Duration::from_millis),
        updated_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_to_states() {
        let (s, o, t) = decode(b"p|1732712345678|owner|with|bars");
        assert_eq!(
            (s, o.as_deref()),
            (RecordState::Processing, Some("owner|with|bars"))
        );
        assert!(t.is_some());
        assert_eq!(decode(b"c|1|o").0, RecordState::Completed);
        for legacy in [&b"1"[..], b"completed", b"{\"processed_at\": 1}", b"p|x|y"] {
            assert_eq!(decode(legacy), (RecordState::Completed, None, None));
        }
        assert_eq!(
            decode(b"{\"status\": \"processing\"}").0,
            RecordState::Processing
        );
    }
}
