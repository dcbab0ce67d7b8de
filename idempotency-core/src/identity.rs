//! Event identity: a deterministic hash over a tagged, canonical encoding.
//!
//! The hash input names its form first: a tag byte for "event id and data" and another for
//! "data alone", each component following with its length. So an event without an id can
//! never take the key of an event with one, whatever its data (an id-less event whose data
//! is `{"data": D, "event_id": X}` is not event `X`), and the forms still to come (the
//! event id alone, chosen fields, an identity given by the caller) get tags of their own.
//!
//! The data is written in its canonical JSON encoding, which writes object keys sorted (by their UTF-8 bytes) at every depth,
//! no insignificant whitespace, strings escaped as `serde_json` escapes them and numbers by
//! their exact decimal value (see [`canonical_number`]). The same event therefore hashes
//! the same whatever the key order, whitespace or number spelling of the JSON it arrived
//! in, and two events whose numbers differ in any digit hash differently.

use serde_json::Value;
use xxhash_rust::xxh3::xxh3_128;

use crate::error::IdentityError;
use crate::walk::{self, Data, Style};

/// The deepest nesting of `data` the canonical encoder accepts. JSON parsed by
/// `serde_json` is at most 128 levels deep; values built in code may be deeper.
pub const MAX_DEPTH: usize = 512;

/// xxh3-128, as 32 lowercase hex digits, of the event's tagged hash input: the tag of the
/// form "event id and data" (`0x02`), the id's length (8 bytes, little endian) and its UTF-8
/// bytes, then the length and bytes of [`canonical_json`] of `data`; or, when `event_id`
/// is `None`, the tag of the form "data alone" (`0x01`) and the length and bytes of the
/// canonical data. No data can make one form's input equal to the other's.
///
/// `data`'s numbers are hashed as the [`Value`] holds them (64-bit integers, `f64`s);
/// [`EventEnvelope::deterministic_hash`](crate::EventEnvelope::deterministic_hash) of a
/// parsed payload hashes them as the payload spells them, every digit kept.
///
/// # Errors
///
/// - [`IdentityError::TooDeep`] if `data` is nested 512 levels deep or more.
/// - [`IdentityError::BadNumber`] or [`IdentityError::NumberOutOfRange`] if a number in
///   `data` cannot be written canonically (see [`canonical_number`]).
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::deterministic_hash;
/// use serde_json::json;
/// let a = deterministic_hash(Some("e-1"), &json!({"x": 1, "y": 2}))?;
/// let b = deterministic_hash(Some("e-1"), &json!({"y": 2, "x": 1}))?;
/// assert_eq!(a, b);
/// assert_eq!(a.len(), 32);
/// # Ok::<(), eventonce::IdentityError>(())
/// ```
pub fn deterministic_hash(event_id: Option<&str>, data: &Value) -> Result<String, IdentityError> {
    // The encoding is written into a buffer kept per thread and hashed in one call: xxh3's
    // one-shot form is several times cheaper than feeding its streaming state piece by
    // piece, and gives the same digest.
    hash_of(event_id, Data::Value(data))
}

/// [`deterministic_hash`] of `data` (a value, or a value with its text).
pub(crate) fn hash_of(event_id: Option<&str>, data: Data<'_>) -> Result<String, IdentityError> {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buf) => hash_encoding(&mut buf, event_id, data),
        // Only reached if encoding ever re-entered this function: a buffer of its own.
        Err(_) => hash_encoding(&mut Vec::new(), event_id, data),
    })
}

/// The largest buffer a thread keeps between two hashes (a bigger one is freed after use).
const SCRATCH_KEPT: usize = 64 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What a hash input identifies an event by: each form of key material has its own tag
/// byte, written first, so that no two forms can ever produce the same input.
///
/// After the tag, every component is written with its length first (8 bytes, little
/// endian), so that within one form no two sequences of components produce the same input
/// either. Tags not listed here are reserved for forms still to come (the event id alone,
/// chosen fields of the data, an identity the caller gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Form {
    /// The canonical JSON of `data` alone: an event without an id.
    Content = 0x01,
    /// The event id (its UTF-8 bytes), then the canonical JSON of `data`.
    IdAndData = 0x02,
}

/// Appends `bytes` with its length first (8 bytes, little endian).
fn put_component(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// Appends the component `write` produces, its length first: 8 bytes are set aside and
/// filled in once the component is written.
fn put_written_component(
    buf: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), IdentityError>,
) -> Result<(), IdentityError> {
    let at = buf.len();
    buf.extend_from_slice(&[0; 8]);
    write(buf)?;
    let len = (buf.len() - at - 8) as u64;
    buf[at..at + 8].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// The hash input of an event with `event_id` (none when `None`) and the data `write_data`
/// writes canonically, into `buf` (emptied first): the [`Form`] tag, then each component
/// with its length.
pub(crate) fn write_hash_input(
    buf: &mut Vec<u8>,
    event_id: Option<&str>,
    write_data: impl FnOnce(&mut Vec<u8>) -> Result<(), IdentityError>,
) -> Result<(), IdentityError> {
    buf.clear();
    match event_id {
        Some(id) => {
            buf.push(Form::IdAndData as u8);
            put_component(buf, id.as_bytes());
        }
        None => buf.push(Form::Content as u8),
    }
    put_written_component(buf, write_data)
}

/// [`deterministic_hash`] with `buf` (emptied first) for the encoding.
fn hash_encoding(
    buf: &mut Vec<u8>,
    event_id: Option<&str>,
    data: Data<'_>,
) -> Result<String, IdentityError> {
    let written = write_hash_input(buf, event_id, |buf| {
        walk::write_data::<Canonical>(buf, data, 0)
    });
    let digest = written.map(|()| xxh3_128(buf));
    if buf.capacity() > SCRATCH_KEPT {
        *buf = Vec::new();
    }
    Ok(hex128(digest?))
}

/// 32 lowercase hex digits of `v` (what `format!("{v:032x}")` writes), in one allocation
/// and without the formatting machinery.
pub(crate) fn hex128(v: u128) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[((v >> ((31 - i) * 4)) & 0xf) as usize];
    }
    // Hex digits are ASCII: never the empty fallback.
    std::str::from_utf8(&out).unwrap_or_default().to_owned()
}

/// The canonical encoding of a JSON value, as bytes (what [`deterministic_hash`] hashes
/// after its tag and lengths). A [`Value`] holds each number as a 64-bit integer or an
/// `f64`, written here through the literal serde_json prints for it.
///
/// # Errors
///
/// The errors of [`deterministic_hash`]: [`IdentityError::TooDeep`] for a value nested
/// 512 levels deep or more, [`IdentityError::BadNumber`] or
/// [`IdentityError::NumberOutOfRange`] for a number that cannot be written canonically.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::canonical_json;
/// let v: serde_json::Value = serde_json::from_str(r#"{ "b": [1, {"d": 1, "c": 2}], "a": null }"#)?;
/// assert_eq!(canonical_json(&v).unwrap(), br#"{"a":null,"b":[1,{"c":2,"d":1}]}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn canonical_json(value: &Value) -> Result<Vec<u8>, IdentityError> {
    let mut out = Vec::new();
    walk::write_value::<Canonical>(&mut out, value, 0)?;
    Ok(out)
}

/// The canonical encoding's style: no whitespace, serde_json's string escaping, numbers by
/// [`canonical_number`].
pub(crate) struct Canonical;

impl Style for Canonical {
    const ITEM_SEPARATOR: &'static [u8] = b",";
    const KEY_SEPARATOR: &'static [u8] = b":";

    fn number(out: &mut Vec<u8>, literal: &str) -> Result<(), IdentityError> {
        write_number(out, literal)
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        write_string(out, s);
    }
}

/// The canonical spelling of a JSON number literal: one spelling per exact decimal value.
///
/// The hash of a parsed payload reads its numbers from the payload's own text (see
/// [`EventEnvelope`](crate::EventEnvelope)), so integers beyond 64 bits and decimals with
/// more digits than an `f64` holds keep every digit. The value is then written in one form per value, the form `serde_json` gives an
/// `f64` whenever that is exact, so ordinary numbers keep the keys they always had:
///
/// - zero, whatever its sign or spelling (`-0`, `0.0`, `0e7`): `0`;
/// - an integer of at most 64 digits (`100`, `100.0`, `1e2`, `1000e-1`): its digits, `100`;
/// - another number whose decimal point falls within 16 digits: positional, `1.5`,
///   `-0.00125`, `123456789.123456789`;
/// - anything else: one digit, the rest after a point, and the exponent: `1e-7`,
///   `1.2345e80`, `1.23456789012345678901e-30`.
///
/// # Errors
///
/// - [`IdentityError::BadNumber`] if `literal` is not a decimal number: an optional `-`,
///   digits, optionally `.` and more digits, optionally `e` or `E`, a sign and digits.
/// - [`IdentityError::NumberOutOfRange`] if the number is not zero and its exponent is
///   2^48 or more in magnitude.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::canonical_number;
/// assert_eq!(canonical_number("1.50e1").unwrap(), "15");
/// assert_eq!(canonical_number("-0.0").unwrap(), "0");
/// assert_eq!(canonical_number("0.000001").unwrap(), "1e-6");
/// assert_eq!(canonical_number("12345678901234567890123").unwrap(), "12345678901234567890123");
/// assert!(canonical_number("1 ").is_err());
/// ```
pub fn canonical_number(literal: &str) -> Result<String, IdentityError> {
    let (negative, rest) = match literal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, literal),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    if int_part.is_empty()
        || !digits_only(int_part)
        || (mantissa.contains('.') && frac_part.is_empty())
        || !digits_only(frac_part)
    {
        return Err(bad_number(literal));
    }
    // value = 0.{significant} x 10^point, `significant` without leading or trailing zeros.
    let all = [int_part, frac_part].concat();
    let leading = all.len() - all.trim_start_matches('0').len();
    let significant = all.trim_matches('0');
    let written_exponent = match exponent {
        None => 0,
        Some(e) => written_exponent(literal, e, !significant.is_empty())?,
    };
    if significant.is_empty() {
        return Ok("0".to_owned());
    }
    let point = written_exponent + int_part.len() as i64 - leading as i64;
    Ok(spell_decimal(negative, significant, point))
}

/// Whether `s` holds ASCII digits only (the empty string does).
fn digits_only(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// [`IdentityError::BadNumber`] for `literal` (at most 64 characters of it).
fn bad_number(literal: &str) -> IdentityError {
    IdentityError::BadNumber {
        literal: literal.chars().take(64).collect(),
    }
}

/// The exponent `e` (what follows the `e` or `E` of `literal`) as written, with its sign.
/// Its magnitude is bounded so that the arithmetic on it is exact: a magnitude of 2^48 or
/// more is an error when the number is not zero (`nonzero`), and reads as 2^48 when it is.
fn written_exponent(literal: &str, e: &str, nonzero: bool) -> Result<i64, IdentityError> {
    const EXPONENT_LIMIT: i64 = 1 << 48;
    let (minus, digits) = match e.as_bytes().first() {
        Some(b'-') => (true, &e[1..]),
        Some(b'+') => (false, &e[1..]),
        _ => (false, e),
    };
    if digits.is_empty() || !digits_only(digits) {
        return Err(bad_number(literal));
    }
    let digits = digits.trim_start_matches('0');
    let magnitude: i64 = if digits.is_empty() {
        0
    } else if digits.len() > 15 {
        EXPONENT_LIMIT
    } else {
        digits.parse().map_err(|_| bad_number(literal))?
    };
    if magnitude >= EXPONENT_LIMIT && nonzero {
        return Err(IdentityError::NumberOutOfRange {
            literal: literal.chars().take(64).collect(),
        });
    }
    Ok(if minus { -magnitude } else { magnitude })
}

/// The canonical spelling of the non-zero value `0.{significant} x 10^point` (negated when
/// `negative`), `significant` being its digits without leading or trailing zeros.
fn spell_decimal(negative: bool, significant: &str, point: i64) -> String {
    let n = significant.len() as i64;
    let mut out = String::with_capacity(significant.len() + 24);
    if negative {
        out.push('-');
    }
    if point >= n && point <= 64 {
        // An integer: its digits.
        out.push_str(significant);
        out.extend(std::iter::repeat_n('0', (point - n) as usize));
    } else if point < n && point > 0 && point <= 16 {
        let (whole, fraction) = significant.split_at(point as usize);
        out.push_str(whole);
        out.push('.');
        out.push_str(fraction);
    } else if point < n && point > -5 && point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-point) as usize));
        out.push_str(significant);
    } else {
        let (first, others) = significant.split_at(1);
        out.push_str(first);
        if !others.is_empty() {
            out.push('.');
            out.push_str(others);
        }
        out.push('e');
        out.push_str(&(point - 1).to_string());
    }
    out
}

/// Writes a number's canonical spelling: an integer already in it (no sign on zero, no
/// leading zero, at most 64 digits) as it is, without allocating; anything else through
/// [`canonical_number`].
fn write_number(out: &mut Vec<u8>, literal: &str) -> Result<(), IdentityError> {
    let digits = literal.strip_prefix('-').unwrap_or(literal);
    let canonical_integer = !digits.is_empty()
        && digits.len() <= 64
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits.len() == 1 || !digits.starts_with('0'))
        && literal != "-0";
    if canonical_integer {
        out.extend_from_slice(literal.as_bytes());
    } else {
        out.extend_from_slice(canonical_number(literal)?.as_bytes());
    }
    Ok(())
}

/// Writes a JSON string literal with `serde_json`'s escaping.
fn write_string(out: &mut Vec<u8>, s: &str) {
    // serde_json escapes only `"`, `\` and control characters: a string without them is
    // written as it is.
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Serializing a `str` into a Vec cannot fail (and on failure writes nothing).
    let start = out.len();
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.truncate(start);
    }
}

/// A hasher for in-process maps keyed by store keys: foldhash (SipHash showed in the batch
/// profile, and xxh3's streaming `Hasher` costs several times more on short keys), randomly
/// seeded so that crafted keys cannot aim at one bucket.
pub(crate) fn seeded_hasher() -> foldhash::quality::RandomState {
    foldhash::quality::RandomState::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_large_encoding_is_hashed_whole_and_its_buffer_not_kept() {
        let big = json!({"blob": "x".repeat(200_000)});
        let a = deterministic_hash(Some("e"), &big).unwrap();
        SCRATCH.with(|s| assert!(s.borrow().capacity() <= SCRATCH_KEPT));
        let mut other = big.clone();
        other["blob"] = json!(format!("{}y", "x".repeat(199_999)));
        assert_ne!(a, deterministic_hash(Some("e"), &other).unwrap());
        assert_eq!(a, deterministic_hash(Some("e"), &big).unwrap());
    }

    #[test]
    fn id_and_data_hash_differs_from_data_alone() {
        let data = json!({"a": 1});
        assert_ne!(
            deterministic_hash(Some("x"), &data).ok(),
            deterministic_hash(None, &data).ok()
        );
    }

    #[test]
    fn data_shaped_like_an_id_and_data_is_not_that_event() {
        // Before the forms were tagged, the hash with an id was the hash of data alone of
        // this object, so an event without an id could take another event's key.
        let data = json!({"z": [true, null], "a": "\u{e9}"});
        let wrapped = json!({"event_id": "id-1", "data": data});
        assert_ne!(
            deterministic_hash(Some("id-1"), &data).ok(),
            deterministic_hash(None, &wrapped).ok()
        );
    }

    #[test]
    fn the_hash_input_is_a_tag_then_components_with_their_lengths() {
        let mut buf = Vec::new();
        write_hash_input(&mut buf, Some("e-1"), |b| {
            walk::write_value::<Canonical>(b, &json!([1]), 0)
        })
        .unwrap();
        let mut expected = vec![0x02];
        expected.extend(3u64.to_le_bytes());
        expected.extend(b"e-1");
        expected.extend(3u64.to_le_bytes());
        expected.extend(b"[1]");
        assert_eq!(buf, expected);
        write_hash_input(&mut buf, None, |b| {
            walk::write_value::<Canonical>(b, &json!("x"), 0)
        })
        .unwrap();
        let mut expected = vec![0x01];
        expected.extend(3u64.to_le_bytes());
        expected.extend(b"\"x\"");
        assert_eq!(buf, expected);
    }

    #[test]
    fn nesting_beyond_the_limit_is_an_error_not_a_stack_overflow() {
        let mut v = json!(1);
        for _ in 0..(MAX_DEPTH + 10) {
            v = Value::Array(vec![v]);
        }
        assert_eq!(
            deterministic_hash(None, &v),
            Err(IdentityError::TooDeep { limit: MAX_DEPTH })
        );
        // Dropping a deep value is recursive in serde_json; keep it shallow enough.
    }

    /// The hash of an event without an id whose data is `text`, parsed from a payload.
    fn hash_text(text: &str) -> String {
        let payload = format!(r#"{{"event_type":"t","data":{text}}}"#);
        crate::EventEnvelope::from_slice(payload.as_bytes())
            .map(|e| e.deterministic_hash().unwrap_or_default())
            .unwrap_or_default()
    }

    #[test]
    fn numbers_beyond_64_bits_and_f64_keep_every_digit() {
        // Reduced to f64 these were one key: the second event was answered Duplicate.
        assert_ne!(
            hash_text(r#"{"account":12345678901234567890123}"#),
            hash_text(r#"{"account":12345678901234567890124}"#)
        );
        assert_ne!(
            hash_text(r#"{"amount":0.10000000000000000001}"#),
            hash_text(r#"{"amount":0.1}"#)
        );
        assert_ne!(
            hash_text(r#"{"n":123456789.123456789}"#),
            hash_text(r#"{"n":123456789.12345679}"#)
        );
        assert_ne!(hash_text("1e400"), hash_text("1e401"));
    }

    #[test]
    fn equal_values_hash_equal_whatever_their_spelling() {
        for zero in ["0", "-0", "0.0", "-0.0", "0e5", "-0E-3", "0.000"] {
            assert_eq!(hash_text(zero), hash_text("0"), "{zero}");
        }
        for hundred in ["100", "100.0", "1e2", "1E+2", "1000e-1", "0.1e3", "100.000"] {
            assert_eq!(hash_text(hundred), hash_text("100"), "{hundred}");
        }
        assert_eq!(hash_text("-1.50"), hash_text("-15e-1"));
    }

    #[test]
    fn numbers_are_written_as_serde_json_writes_an_exact_f64() {
        let cases = [
            ("1.5", "1.5"),
            ("0.1", "0.1"),
            ("-0.00125", "-0.00125"),
            ("0.00001", "0.00001"),
            ("0.000001", "1e-6"),
            ("1e-7", "1e-7"),
            ("12.75", "12.75"),
            ("1234567890123456.5", "1234567890123456.5"),
            ("12345678901234567.5", "1.23456789012345675e16"),
            ("18446744073709551616", "18446744073709551616"),
            ("-9223372036854775809", "-9223372036854775809"),
            ("1e64", "1e64"),
            (
                "1e63",
                "1000000000000000000000000000000000000000000000000000000000000000",
            ),
            ("1E400", "1e400"),
            ("-2.5e-300", "-2.5e-300"),
        ];
        for (literal, canonical) in cases {
            assert_eq!(
                canonical_number(literal).as_deref(),
                Ok(canonical),
                "{literal}"
            );
        }
        // Where the value is an exact f64 that is not an integer, the form is the one
        // serde_json gives the f64, so such events keep their keys.
        for f in [
            1.5f64,
            0.1,
            12.75,
            -3.25e-9,
            6.02214076e-23,
            0.30000000000000004,
        ] {
            let printed = serde_json::Value::from(f).to_string();
            assert_eq!(canonical_number(&printed).as_deref(), Ok(printed.as_str()));
        }
    }

    #[test]
    fn malformed_and_unbounded_numbers_are_errors() {
        for bad in [
            "", "-", "1.", ".5", "1e", "1e+", "+1", "0x10", "1 ", "NaN", "1.2.3",
        ] {
            assert!(
                matches!(canonical_number(bad), Err(IdentityError::BadNumber { .. })),
                "{bad:?}"
            );
        }
        for huge in [
            "1e281474976710656",
            "1e-99999999999999999999",
            "5e9999999999999999",
        ] {
            assert!(
                matches!(
                    canonical_number(huge),
                    Err(IdentityError::NumberOutOfRange { .. })
                ),
                "{huge}"
            );
        }
        // Just inside the bound, and zero with any exponent, are fine.
        assert_eq!(
            canonical_number("1e281474976710655").as_deref(),
            Ok("1e281474976710655")
        );
        assert_eq!(
            canonical_number("0e99999999999999999999").as_deref(),
            Ok("0")
        );
    }

    proptest::proptest! {
        #[test]
        fn the_unallocated_paths_write_what_the_general_ones_would(
            s in "\\PC{0,12}|[\"\\\\\u{0}-\u{1f}a-z]{0,8}",
            n in proptest::num::i128::ANY,
            zeros in 0usize..3,
        ) {
            let mut fast = Vec::new();
            write_string(&mut fast, &s);
            let general = serde_json::to_vec(&s).unwrap_or_default();
            proptest::prop_assert_eq!(fast, general);
            for literal in [n.to_string(), format!("{}{n}", "0".repeat(zeros)), format!("-0{}", n.unsigned_abs())] {
                let mut fast = Vec::new();
                let written = write_number(&mut fast, &literal).map(|()| fast);
                let general = canonical_number(&literal).map(String::into_bytes);
                proptest::prop_assert_eq!(written, general, "{}", literal);
            }
        }
    }

    #[test]
    fn hash_is_32_lowercase_hex_digits() {
        let h = deterministic_hash(None, &json!("x")).unwrap_or_default();
        assert_eq!(h.len(), 32);
        assert!(h
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
}

#[cfg(test)]
mod one_shot_tests {
    use serde_json::json;
    use xxhash_rust::xxh3::Xxh3;

    use super::*;

    /// The hash written out piece by piece: the form's tag, then each component with its
    /// length (8 bytes, little endian), streamed into a hasher.
    fn streamed(event_id: Option<&str>, data: &Value) -> String {
        let mut hasher = Xxh3::new();
        let canonical = canonical_json(data).expect("canonical");
        match event_id {
            Some(id) => {
                hasher.update(&[0x02]);
                hasher.update(&(id.len() as u64).to_le_bytes());
                hasher.update(id.as_bytes());
            }
            None => hasher.update(&[0x01]),
        }
        hasher.update(&(canonical.len() as u64).to_le_bytes());
        hasher.update(&canonical);
        format!("{:032x}", hasher.digest128())
    }

    /// One event's digests, pinned: keys already in stores stay valid. (Changed once, on
    /// purpose, when the two forms were given their tags: see the changelog.)
    #[test]
    fn the_hash_is_pinned() {
        let data = json!({"y": [1, 2.5, "s\"q"], "x": {"b": null, "a": true}});
        let hash = deterministic_hash(Some("e-1"), &data).unwrap();
        assert_eq!(hash, streamed(Some("e-1"), &data));
        assert_eq!(
            deterministic_hash(None, &data).ok(),
            Some(streamed(None, &data))
        );
        assert_eq!(hash, "b696f10a5e6c9a4a0cdf3507b5375784");
        assert_eq!(
            deterministic_hash(None, &data).ok().as_deref(),
            Some("13da34f4cf5321057a7cb6f04bf6ff43")
        );
    }

    #[test]
    fn the_one_shot_hash_is_the_streamed_hash() {
        let long = "x".repeat(100_000);
        let values = [
            json!(null),
            json!({"order": 1, "lines": [1, 2, 3]}),
            json!({"b": [1.5, {"d": "\u{e9}\n", "c": 2}], "a": null}),
            json!({"text": "y".repeat(300)}),
            json!({"big": long}),
        ];
        for data in &values {
            for id in [None, Some("evt-1"), Some("with \"quotes\"")] {
                assert_eq!(deterministic_hash(id, data).ok(), Some(streamed(id, data)));
            }
        }
        // The buffer kept after a large event is dropped, and the next hash is unaffected.
        assert_eq!(
            deterministic_hash(None, &values[1]).ok(),
            Some(streamed(None, &values[1]))
        );
    }
}
