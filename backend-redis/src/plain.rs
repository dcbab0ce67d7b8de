//! The claim as one plain command: `SET key p|<ms>|<owner> NX GET PX <lease>` (Redis 7 and
//! later, Valkey). It sets the claim when the key is absent and answers the value it found
//! otherwise, atomically, like the `CLAIM` script, without running Lua: on Redis 7 a script
//! call costs the server several times a bare `SET`. The value found is read here as the
//! script's `state_of` reads it; a value only the script can judge (an older writer's
//! JSON), a server that refuses `NX` with `GET` (before 7.0) and any other refusal go to
//! the `CLAIM` script, which answers as it always did.

use eventonce_core::Claim;
use redis::{Cmd, ErrorKind, RedisError, ServerErrorKind};

/// `SET key p|<now>|<owner> NX GET PX <lease_ms>`: the claim `CLAIM` writes, in one command.
pub(crate) fn claim_command(key: &str, owner: &str, lease_ms: u64, now: u64) -> Cmd {
    let mut value = Vec::with_capacity(owner.len() + 24);
    value.extend_from_slice(b"p|");
    push_decimal(&mut value, now);
    value.push(b'|');
    value.extend_from_slice(owner.as_bytes());
    let mut cmd = Cmd::with_capacity(7, key.len() + value.len() + 32);
    cmd.arg("SET")
        .arg(key)
        .arg(value)
        .arg("NX")
        .arg("GET")
        .arg("PX")
        .arg(lease_ms);
    cmd
}

/// The claim answered by `SET ... NX GET`: nothing found is a claim acquired; a record of
/// ours is in progress (`p|<digits>|`) or completed (`c|<digits>|`); any other value is an
/// older writer's and counts as completed, except one starting with `{` (JSON, possibly
/// another consumer's claim), which the script judges: `None`.
pub(crate) fn claim_of(found: Option<&[u8]>) -> Option<Claim> {
    let Some(value) = found else {
        return Some(Claim::Acquired);
    };
    if is_record(value, b'p') {
        Some(Claim::InProgress)
    } else if is_record(value, b'c') || value.first() != Some(&b'{') {
        Some(Claim::Completed)
    } else {
        None
    }
}

/// Whether `value` starts with `<state>|<one or more digits>|` (Lua's `^p|%d+|`).
fn is_record(value: &[u8], state: u8) -> bool {
    let [first, b'|', rest @ ..] = value else {
        return false;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    *first == state && digits > 0 && rest.get(digits) == Some(&b'|')
}

/// Whether the server refused the plain claim for good (a server before 7.0 answers `ERR
/// syntax error` to `NX` with `GET`; an ACL user without `SET` gets `NOPERM`): the store then
/// claims by script only. Other refusals (a key holding another type, no memory left, any
/// other `ERR`, such as a proxy's or a passing limit's) go to the script for that call
/// alone, which reports them as it always did.
pub(crate) fn refused_for_good(err: &RedisError) -> bool {
    match err.kind() {
        ErrorKind::Server(ServerErrorKind::NoPerm) => true,
        ErrorKind::Server(ServerErrorKind::ResponseError) => err
            .detail()
            .is_some_and(|detail| detail.trim().eq_ignore_ascii_case("syntax error")),
        _ => false,
    }
}

/// Whether `err` is the server's answer to the command (rather than a failed connection
/// or a timeout): the script is then asked instead.
pub(crate) fn is_refusal(err: &RedisError) -> bool {
    err.code().is_some()
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_values_are_read_as_the_claim_script_reads_them() {
        assert_eq!(claim_of(None), Some(Claim::Acquired));
        let cases: &[(&[u8], Option<Claim>)] = &[
            (b"p|1764640000000|owner", Some(Claim::InProgress)),
            (b"p|1||", Some(Claim::InProgress)),
            (b"c|1764640000000|owner", Some(Claim::Completed)),
            (b"c|0|", Some(Claim::Completed)),
            // Not our form: an older writer's value, completed...
            (b"p||owner", Some(Claim::Completed)),
            (b"p|12", Some(Claim::Completed)),
            (b"p|x1|owner", Some(Claim::Completed)),
            (b"P|1|owner", Some(Claim::Completed)),
            (b"1", Some(Claim::Completed)),
            (b"completed", Some(Claim::Completed)),
            (b"", Some(Claim::Completed)),
            (b"\xff\xfe", Some(Claim::Completed)),
            // ...unless it may be JSON: the script judges it.
            (b"{\"status\": \"processing\"}", None),
            (b"{\"status\": \"completed\"}", None),
            (b"{", None),
        ];
        for (value, claim) in cases {
            assert_eq!(claim_of(Some(value)), *claim, "{value:?}");
        }
    }

    #[test]
    fn the_claim_command_writes_the_value_the_claim_script_writes() {
        let cmd = claim_command("k", "o-1", 30_000, 1_764_640_000_123);
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => b.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        let expected: Vec<&[u8]> = vec![
            b"SET",
            b"k",
            b"p|1764640000123|o-1",
            b"NX",
            b"GET",
            b"PX",
            b"30000",
        ];
        assert_eq!(args, expected);
        for n in [0, 9, 10, 99, 100, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
