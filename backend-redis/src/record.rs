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
    if let Some((owner, at, _)) = decode_result(value) {
        return (RecordState::Completed, Some(owner), at);
    }
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

/// Reads a completed value with a result, `r|<ms>|<owner length>|<owner><result>`: its
/// owner, time and result; `None` for any other value (one not in this form exactly, an
/// owner that is not UTF-8, counts as an older writer's).
pub(crate) fn decode_result(value: &[u8]) -> Option<(String, Option<SystemTime>, Vec<u8>)> {
    let rest = value.strip_prefix(b"r|")?;
    let (ms, rest) = number(rest)?;
    let (len, rest) = number(rest)?;
    let len = usize::try_from(len).ok()?;
    if rest.len() < len {
        return None;
    }
    let (owner, result) = rest.split_at(len);
    let owner = std::str::from_utf8(owner).ok()?.to_owned();
    let at = UNIX_EPOCH.checked_add(Duration::from_millis(ms));
    Some((owner, at, result.to_vec()))
}

/// Digits then `|`: the number and what follows the bar.
fn number(value: &[u8]) -> Option<(u64, &[u8])> {
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || value.get(digits) != Some(&b'|') {
        return None;
    }
    let n = std::str::from_utf8(&value[..digits]).ok()?.parse().ok()?;
    Some((n, &value[digits + 1..]))
}

/// A stored value and its remaining TTL as a record, with the result a completed value
/// carries.
pub(crate) fn record_with_result(value: &[u8], pttl: i64) -> (Record, Option<Vec<u8>>) {
    let result = decode_result(value).map(|(_, _, result)| result);
    (record_of(value, pttl), result)
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

    #[test]
    fn values_with_a_result_decode_to_owner_and_result() {
        let (owner, at, result) = decode_result(b"r|17|7|own|er|\x00{\"a\"|1}").expect("a result");
        assert_eq!(owner, "own|er|");
        assert!(at.is_some());
        assert_eq!(result, b"\x00{\"a\"|1}");
        assert_eq!(
            decode(b"r|17|2|ab"),
            (
                RecordState::Completed,
                Some("ab".to_owned()),
                at.map(|_| UNIX_EPOCH + Duration::from_millis(17))
            )
        );
        assert_eq!(
            decode_result(b"r|17|2|ab"),
            Some((
                "ab".to_owned(),
                Some(UNIX_EPOCH + Duration::from_millis(17)),
                Vec::new()
            ))
        );
        // Malformed forms are an older writer's values: completed, no owner, no result.
        for odd in [
            &b"r|17|9|ab"[..],
            b"r|x|2|ab",
            b"r||2|ab",
            b"r|17|ab",
            b"r|1|99999999999999999999|",
        ] {
            assert_eq!(decode_result(odd), None, "{odd:?}");
            assert_eq!(decode(odd), (RecordState::Completed, None, None));
        }
    }
}
