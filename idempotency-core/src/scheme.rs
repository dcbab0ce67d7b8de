//! Key schemes: how an event's hash and the event-type segment of its key are computed.
//!
//! [`KeyScheme::Eventonce`] (the default) is eventonce's own: xxh3-128 over a tagged input
//! that keeps "id and data" apart from "data alone", the data written as
//! [`canonical_json`](crate::canonical_json) writes it (see
//! [`deterministic_hash`](crate::deterministic_hash)), and an injective escape of the event
//! type ([`escape_event_type`](crate::escape_event_type)).
//!
//! [`KeyScheme::PythonV2`] gives the keys of the Python "idempotency v2" decorator, byte for
//! byte, so that Python and Rust consumers of one consumer group share their records on one
//! Redis: SHA-256 (hex) of `json.dumps(hash_input, sort_keys=True)` as CPython writes it
//! ([`python_json`]), and the event type with only `.` replaced by `_`.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::str::FromStr;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::IdentityError;
use crate::identity;
use crate::key;
use crate::walk::{self, Data, Style};

/// How keys are computed: eventonce's own scheme (the default) or the Python "idempotency
/// v2" decorator's.
///
/// Set it with [`ConfigBuilder::key_scheme`](crate::ConfigBuilder::key_scheme); every key
/// the guard, `run_batch`, the Kafka helper and the admin commands compute follows it.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::{EventEnvelope, IdempotencyConfig, KeyScheme};
/// let config = IdempotencyConfig::builder("essay-lifecycle-service")
///     .key_scheme(KeyScheme::PythonV2)
///     .build()?;
/// let event = EventEnvelope::from_slice(
///     br#"{"event_id":"e-1","event_type":"huleedu.cj_assessment.completed.v1","data":{"n":1}}"#,
/// )?;
/// // The decorator's key: its event-type mapping and
/// // sha256(json.dumps({"event_id": "e-1", "data": {"n": 1}}, sort_keys=True)).
/// assert_eq!(
///     config.event_key(&event)?,
///     "huleedu:idempotency:v2:essay-lifecycle-service:huleedu_cj_assessment_completed_v1:\
///      4bbda425b0dc8a99618d3db9c9689d3db15fc4787f125535fc47e86be96ef627"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum KeyScheme {
    /// eventonce's own keys (the default): xxh3-128 over a tagged input, the event id then
    /// the canonical JSON of `data` (or, for an event without an id, the canonical JSON of
    /// `data` alone under another tag: the two forms never share a key), numbers by their
    /// exact decimal value, and an injective, escaped event-type segment that never leaves
    /// the namespace (see [`deterministic_hash`](crate::deterministic_hash)).
    #[default]
    Eventonce,
    /// The Python "idempotency v2" decorator's keys, byte for byte: SHA-256 (hex) of
    /// `json.dumps(hash_input, sort_keys=True)` as CPython writes it after `json.loads`
    /// (see [`python_json`]), where `hash_input` is `{"event_id", "data"}` when the event
    /// has a non-empty `event_id` and `data` alone otherwise; the event type with only `.`
    /// replaced by `_`. An event type holding `:`, a glob or hash-tag character
    /// (`*?[]{}\`), whitespace or a control character is refused
    /// ([`IdentityError::EventTypeOutsideNamespace`]): the decorator's key for it would
    /// leave the namespace.
    ///
    /// It covers every event that both eventonce and the decorator read. It does not
    /// cover what only one of them reads: eventonce refuses a non-string `event_id`, a
    /// missing `event_type`, `NaN`/`Infinity` literals and lone surrogates, which Python's
    /// `json` accepts; the decorator keys nothing when `data` is missing or `null` and
    /// cannot read integers over 4,300 digits. It keeps the decorator's collisions: `a.b`
    /// and `a_b` share keys, and numbers with a fraction or exponent that read as the
    /// same double (`0.1`, `0.10000000000000000001`) share a key, so of two events
    /// differing only there the second is a duplicate. And it keeps the decorator's
    /// confusion of its two forms: an event without an id whose data is
    /// `{"data": D, "event_id": X}` has the key of event `X` with data `D`, so whoever can
    /// publish an event without an id can suppress event `X` (the decorator hashes both as
    /// the same text). Use it only where every producer is trusted. See the project's
    /// `docs/migration-from-python.md`.
    PythonV2,
}

impl KeyScheme {
    /// The scheme's name as the command line spells it: `eventonce` or `python-v2`.
    pub fn name(self) -> &'static str {
        match self {
            KeyScheme::Eventonce => "eventonce",
            KeyScheme::PythonV2 => "python-v2",
        }
    }

    /// The hash of an event with this `event_id` (`None` or empty: none) and `data`.
    ///
    /// # Errors
    ///
    /// [`IdentityError::TooDeep`] if `data` is nested 512 levels deep or more;
    /// [`IdentityError::BadNumber`] (or, for [`KeyScheme::Eventonce`],
    /// [`IdentityError::NumberOutOfRange`]) if a number in `data` cannot be written.
    pub fn hash(self, event_id: Option<&str>, data: &Value) -> Result<String, IdentityError> {
        self.hash_of(event_id, Data::Value(data))
    }

    /// [`hash`](Self::hash) of `data`, a value or a value with the text it was parsed from.
    pub(crate) fn hash_of(
        self,
        event_id: Option<&str>,
        data: Data<'_>,
    ) -> Result<String, IdentityError> {
        let event_id = event_id.filter(|id| !id.is_empty());
        match self {
            KeyScheme::Eventonce => identity::hash_of(event_id, data),
            KeyScheme::PythonV2 => python_v2_hash_of(event_id, data),
        }
    }

    /// The event-type segment of a key, or why the event type cannot have one.
    ///
    /// # Errors
    ///
    /// - [`IdentityError::EmptyEventType`] if `event_type` is empty.
    /// - [`IdentityError::EventTypeOutsideNamespace`] under [`KeyScheme::PythonV2`] if
    ///   `event_type` holds `:`, a glob or hash-tag character (`*?[]{}\`), whitespace or a
    ///   control character.
    /// - [`IdentityError::EventTypeTooLong`] under [`KeyScheme::PythonV2`] if `event_type`
    ///   is longer than
    ///   [`MAX_PYTHON_V2_EVENT_TYPE`](crate::config::defaults::MAX_PYTHON_V2_EVENT_TYPE)
    ///   bytes (that scheme cannot shorten it; [`KeyScheme::Eventonce`] shortens any type
    ///   over 200 bytes with a hash suffix).
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::KeyScheme;
    /// assert_eq!(KeyScheme::PythonV2.event_type_segment("a.cj_x.v1")?, "a_cj_x_v1");
    /// assert_eq!(KeyScheme::Eventonce.event_type_segment("a.cj_x.v1")?, "a_cj%5Fx_v1");
    /// assert!(KeyScheme::PythonV2.event_type_segment("a:b").is_err());
    /// # Ok::<(), eventonce::IdentityError>(())
    /// ```
    pub fn event_type_segment(self, event_type: &str) -> Result<Cow<'_, str>, IdentityError> {
        if event_type.is_empty() {
            return Err(IdentityError::EmptyEventType);
        }
        match self {
            KeyScheme::Eventonce => Ok(Cow::Owned(key::escape_event_type(event_type))),
            KeyScheme::PythonV2 => {
                if let Some(reason) = event_type.chars().find_map(outside_namespace) {
                    return Err(IdentityError::EventTypeOutsideNamespace {
                        event_type: event_type.chars().take(200).collect(),
                        reason,
                    });
                }
                if event_type.len() > key::MAX_PYTHON_V2_EVENT_TYPE {
                    return Err(IdentityError::EventTypeTooLong {
                        length: event_type.len(),
                        limit: key::MAX_PYTHON_V2_EVENT_TYPE,
                    });
                }
                if event_type.contains('.') {
                    Ok(Cow::Owned(event_type.replace('.', "_")))
                } else {
                    Ok(Cow::Borrowed(event_type))
                }
            }
        }
    }
}

impl fmt::Display for KeyScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyScheme {
    type Err = String;

    /// `eventonce` or `python-v2` (also `python_v2`, `pythonv2`, any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "eventonce" => Ok(KeyScheme::Eventonce),
            "python-v2" | "python_v2" | "pythonv2" => Ok(KeyScheme::PythonV2),
            _ => Err(format!(
                "unknown key scheme {s:?}: expected \"eventonce\" or \"python-v2\""
            )),
        }
    }
}

/// Why a character may not appear in an event type under [`KeyScheme::PythonV2`].
fn outside_namespace(c: char) -> Option<&'static str> {
    if c == ':' {
        Some("it contains ':', the key separator")
    } else if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
        Some("it contains a glob or hash-tag character (one of *?[]{}\\)")
    } else if c.is_whitespace() {
        Some("it contains whitespace")
    } else if c.is_control() {
        Some("it contains a control character")
    } else {
        None
    }
}

/// The decorator's hash: SHA-256, as 64 lowercase hex digits, of
/// `json.dumps({"event_id": event_id, "data": data}, sort_keys=True)` when `event_id` is
/// given and non-empty, else of `json.dumps(data, sort_keys=True)` (see [`python_json`]).
///
/// The two forms are not told apart, as the decorator does not tell them apart: data
/// `{"data": D, "event_id": X}` without an id hashes as event `X` with data `D` (see
/// [`KeyScheme::PythonV2`]).
///
/// # Errors
///
/// The errors of [`python_json`] for `data`.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::python_v2_hash;
/// use serde_json::json;
/// // hashlib.sha256(b'{"a": 1}').hexdigest()
/// assert_eq!(
///     python_v2_hash(None, &json!({"a": 1}))?,
///     "f9d86028c6e0d64e225186f96acb69338b2c59764df79162107f5c4bb34d1310"
/// );
/// # Ok::<(), eventonce::IdentityError>(())
/// ```
pub fn python_v2_hash(event_id: Option<&str>, data: &Value) -> Result<String, IdentityError> {
    python_v2_hash_of(event_id, Data::Value(data))
}

/// [`python_v2_hash`] of `data`, a value or a value with the text it was parsed from.
fn python_v2_hash_of(event_id: Option<&str>, data: Data<'_>) -> Result<String, IdentityError> {
    let text = python_v2_input(event_id, data)?;
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in &digest {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}

/// The text the decorator hashes: `json.dumps({"event_id": id, "data": data},
/// sort_keys=True)`, or `json.dumps(data, sort_keys=True)` without a (non-empty) id.
pub(crate) fn python_v2_input(
    event_id: Option<&str>,
    data: Data<'_>,
) -> Result<String, IdentityError> {
    let mut text = Vec::new();
    match event_id.filter(|id| !id.is_empty()) {
        // sort_keys puts "data" before "event_id".
        Some(id) => {
            text.extend_from_slice(b"{\"data\": ");
            walk::write_data::<PythonStyle>(&mut text, data, 1)?;
            text.extend_from_slice(b", \"event_id\": ");
            write_python_str(&mut text, id);
            text.push(b'}');
        }
        None => walk::write_data::<PythonStyle>(&mut text, data, 0)?,
    }
    // Every byte written is ASCII (ensure_ascii).
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// `json.dumps(value, sort_keys=True)` as CPython writes the value `json.loads` gives for
/// the same JSON: separators `", "` and `": "`, object keys sorted at every depth by code
/// point, `ensure_ascii` (every character outside printable ASCII written `\uXXXX` in
/// lowercase hex, characters outside the Basic Multilingual Plane as a UTF-16 surrogate
/// pair), and numbers as in [`python_number`].
///
/// A [`Value`] holds a number as a 64-bit integer or an `f64`: each is written from the
/// literal serde_json prints for it. For a payload's numbers exactly as it spells them
/// (integers beyond 64 bits, `1E400` as `Infinity`), see
/// [`EventEnvelope::python_v2_hash_input`](crate::EventEnvelope::python_v2_hash_input),
/// which the keys of [`KeyScheme::PythonV2`] follow.
///
/// # Errors
///
/// [`IdentityError::TooDeep`] if `value` is nested 512 levels deep or more;
/// [`IdentityError::BadNumber`] if a number in it is not a JSON number literal.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::python_json;
/// let v: serde_json::Value = serde_json::from_str(r#"{"b": [1e2, -3, 1e16], "a": "é😀"}"#)?;
/// assert_eq!(
///     python_json(&v).unwrap(),
///     r#"{"a": "\u00e9\ud83d\ude00", "b": [100.0, -3, 1e+16]}"#
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn python_json(value: &Value) -> Result<String, IdentityError> {
    let mut out = Vec::new();
    walk::write_value::<PythonStyle>(&mut out, value, 0)?;
    // Every byte written is ASCII (ensure_ascii).
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `json.dumps(..., sort_keys=True)`'s style: `", "` and `": "`, strings with
/// `ensure_ascii`, numbers as [`python_number`]. Keys sorted by code point: the byte order
/// of their UTF-8, as the walk sorts them.
pub(crate) struct PythonStyle;

impl Style for PythonStyle {
    const ITEM_SEPARATOR: &'static [u8] = b", ";
    const KEY_SEPARATOR: &'static [u8] = b": ";

    fn number(out: &mut Vec<u8>, literal: &str) -> Result<(), IdentityError> {
        out.extend_from_slice(python_number(literal)?.as_bytes());
        Ok(())
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        write_python_str(out, s);
    }
}

/// A string as `json.dumps` writes it with `ensure_ascii=True`.
fn write_python_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            ' '..='~' => out.push(c as u8),
            _ => {
                use std::io::Write as _;
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    // Writing to a Vec cannot fail.
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push(b'"');
}

/// A JSON number literal as CPython's `json.dumps` writes the value `json.loads` reads
/// from it.
///
/// - A literal without fraction or exponent is an exact integer of any size, written with
///   its digits (`-0` becomes `0`).
/// - Any other literal is read as the nearest `float` (correctly rounded, as Python reads
///   it) and written as `float.__repr__` writes it: the shortest digits that read back as
///   the same float, positional when the decimal exponent is from -4 to 15 (`100.0`,
///   `0.0001`, `1234567890123456.8`), else in exponent form with a sign and at least two
///   exponent digits (`1e+16`, `1e-05`, `1.5e+300`); `-0.0` stays `-0.0`; a literal beyond
///   the float range (`1E400`) is `Infinity` or `-Infinity`, as `json.dumps` writes an
///   infinite float; one below it is `0.0` or `-0.0`.
///
/// # Errors
///
/// [`IdentityError::BadNumber`] if `literal` does not follow the JSON number grammar.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::python_number;
/// assert_eq!(python_number("1e16").unwrap(), "1e+16");
/// assert_eq!(python_number("0.00001").unwrap(), "1e-05");
/// assert_eq!(python_number("0.0001").unwrap(), "0.0001");
/// assert_eq!(python_number("1e2").unwrap(), "100.0");
/// assert_eq!(python_number("123456789.123456789").unwrap(), "123456789.12345679");
/// assert_eq!(python_number("-1E400").unwrap(), "-Infinity");
/// assert_eq!(python_number("-0").unwrap(), "0");
/// assert_eq!(python_number("-0.0").unwrap(), "-0.0");
/// assert_eq!(python_number("12345678901234567890123").unwrap(), "12345678901234567890123");
/// assert!(python_number("0x10").is_err());
/// ```
pub fn python_number(literal: &str) -> Result<String, IdentityError> {
    let bad = || IdentityError::BadNumber {
        literal: literal.chars().take(64).collect(),
    };
    if !is_json_number(literal) {
        return Err(bad());
    }
    if !literal.contains(['.', 'e', 'E']) {
        // An int: its digits; there is no negative zero among ints.
        let digits = literal.strip_prefix('-').unwrap_or(literal);
        if digits == "0" {
            return Ok("0".to_owned());
        }
        return Ok(literal.to_owned());
    }
    let x: f64 = literal.parse().map_err(|_| bad())?;
    Ok(python_float_repr(x))
}

/// Whether `s` follows the JSON number grammar:
/// `-? (0 | [1-9][0-9]*) (\.[0-9]+)? ([eE][+-]?[0-9]+)?`.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let int_start = i;
    let n = digits(&mut i);
    if n == 0 || (n > 1 && b[int_start] == b'0') {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// `float.__repr__`, with infinities as `json.dumps` writes them.
fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // CPython's repr is the shortest digit string that reads back as `x`; of the strings
    // of that length that do, the nearest to `x`, and of two equally near ones, the one
    // ending in an even digit. Rust's `{:e}` finds the same length, but breaks such a tie
    // upwards (-34813424304821.8125: CPython `...812`, `{:e}` `...813`). Rust's
    // fixed-precision formatting is exact and breaks ties to even, so rounding `x` to that
    // many digits gives CPython's digits.
    let shortest = format!("{:e}", x.abs());
    let length = shortest
        .split('e')
        .next()
        .map_or(1, |m| m.bytes().filter(u8::is_ascii_digit).count());
    let rounded = format!("{:.*e}", length.saturating_sub(1), x.abs());
    let sci = if rounded.parse::<f64>().ok() == Some(x.abs()) {
        rounded
    } else {
        shortest
    };
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let n = digits.len() as i32;
    // The value is 0.{digits} x 10^decpt.
    let decpt = exponent + 1;
    let mut out = String::with_capacity(digits.len() + 8);
    if x < 0.0 {
        out.push('-');
    }
    if (-3..=16).contains(&decpt) {
        if decpt <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-decpt) as usize));
            out.push_str(&digits);
        } else if decpt < n {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        } else {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (decpt - n) as usize));
            out.push_str(".0");
        }
    } else {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        let _ = write!(out, "e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::MAX_DEPTH;
    use serde_json::json;

    #[test]
    fn float_repr_follows_python_format_rules() {
        // Each pair checked against CPython 3.11's repr(float(literal)).
        let cases = [
            ("1e16", "1e+16"),
            ("1e15", "1000000000000000.0"),
            ("0.00001", "1e-05"),
            ("0.0001", "0.0001"),
            ("1E400", "Infinity"),
            ("-1E400", "-Infinity"),
            ("1e-400", "0.0"),
            ("-1e-400", "-0.0"),
            ("-0.0", "-0.0"),
            ("1e2", "100.0"),
            ("1.0", "1.0"),
            ("123456789.123456789", "123456789.12345679"),
            ("1234567890123456.7", "1234567890123456.8"),
            ("1e22", "1e+22"),
            ("1e23", "1e+23"),
            ("1e-7", "1e-07"),
            ("1.5e300", "1.5e+300"),
            ("5e-324", "5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("1.7976931348623159e308", "Infinity"),
            ("9007199254740993.0", "9007199254740992.0"),
            ("-12.0e-0", "-12.0"),
            ("0.1", "0.1"),
            ("4.35", "4.35"),
            // Two shortest candidates equally near: the even one, as CPython picks.
            ("-34813424304821.8125", "-34813424304821.812"),
            ("-1511879659471058.25", "-1511879659471058.2"),
        ];
        for (literal, repr) in cases {
            assert_eq!(python_number(literal).as_deref(), Ok(repr), "{literal}");
        }
    }

    #[test]
    fn integers_keep_every_digit() {
        assert_eq!(python_number("-0").as_deref(), Ok("0"));
        assert_eq!(python_number("0").as_deref(), Ok("0"));
        assert_eq!(python_number("-17").as_deref(), Ok("-17"));
        let big = "123456789012345678901234567890123456789";
        assert_eq!(python_number(big).as_deref(), Ok(big));
    }

    #[test]
    fn malformed_numbers_are_errors() {
        for bad in [
            "", "-", "1.", ".5", "1e", "1e+", "+1", "0x10", "1 ", "NaN", "01", "-01", "1.2.3",
        ] {
            assert!(
                matches!(python_number(bad), Err(IdentityError::BadNumber { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn strings_are_escaped_as_ensure_ascii_does() {
        let v = json!("é😀\u{2028}\u{7f}\u{0}\"\\/\u{8}\u{c}\n\r\t\u{1f}\u{e000}\u{10ffff}");
        assert_eq!(
            python_json(&v).as_deref(),
            Ok(r#""\u00e9\ud83d\ude00\u2028\u007f\u0000\"\\/\b\f\n\r\t\u001f\ue000\udbff\udfff""#)
        );
    }

    #[test]
    fn keys_sort_by_code_point_with_python_separators() {
        let v = json!({"b": 1, "a": [1, {}], "\u{e000}": 1, "😀": 2, "": []});
        assert_eq!(
            python_json(&v).as_deref(),
            Ok(r#"{"": [], "a": [1, {}], "b": 1, "\ue000": 1, "\ud83d\ude00": 2}"#)
        );
    }

    /// The decorator's own collision, kept for byte compatibility: documented on
    /// `KeyScheme::PythonV2` (the default scheme keeps the two forms apart).
    #[test]
    fn the_id_form_wraps_data_and_id_sorted() {
        let data = json!({"n": 1});
        let wrapped = json!({"event_id": "e-1", "data": {"n": 1}});
        assert_eq!(
            python_v2_hash(Some("e-1"), &data),
            python_v2_hash(None, &wrapped)
        );
        // An empty id is no id, as an empty str is falsy for the decorator.
        assert_eq!(python_v2_hash(Some(""), &data), python_v2_hash(None, &data));
    }

    #[test]
    fn event_types_map_dots_only_and_refuse_what_leaves_the_namespace() {
        let s = KeyScheme::PythonV2;
        assert_eq!(
            s.event_type_segment("huleedu.cj_assessment.completed.v1")
                .as_deref(),
            Ok("huleedu_cj_assessment_completed_v1")
        );
        assert_eq!(
            s.event_type_segment("ünï%~-code").as_deref(),
            Ok("ünï%~-code")
        );
        for bad in [
            "a:b", "a*", "a?", "a[", "a]", "a{", "a}", "a\\b", "a b", "a\tb", "a\nb", "a\u{7f}",
            "a\u{a0}b", "a\u{85}",
        ] {
            assert!(
                matches!(
                    s.event_type_segment(bad),
                    Err(IdentityError::EventTypeOutsideNamespace { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(s.event_type_segment(""), Err(IdentityError::EmptyEventType));
    }

    #[test]
    fn python_v2_keeps_types_up_to_its_bound_and_refuses_longer_ones() {
        let longest = "a.".repeat(key::MAX_PYTHON_V2_EVENT_TYPE / 2);
        let segment = KeyScheme::PythonV2
            .event_type_segment(&longest)
            .expect("within the bound");
        assert_eq!(segment, longest.replace('.', "_"));
        let longer = format!("{longest}b");
        assert_eq!(
            KeyScheme::PythonV2.event_type_segment(&longer),
            Err(IdentityError::EventTypeTooLong {
                length: key::MAX_PYTHON_V2_EVENT_TYPE + 1,
                limit: key::MAX_PYTHON_V2_EVENT_TYPE
            })
        );
        // The default scheme shortens instead.
        let shortened = KeyScheme::Eventonce
            .event_type_segment(&longer)
            .expect("shortened");
        assert!(shortened.len() <= key::MAX_EVENT_TYPE_SEGMENT);
    }

    #[test]
    fn scheme_names_parse_back() {
        for s in [KeyScheme::Eventonce, KeyScheme::PythonV2] {
            assert_eq!(s.name().parse::<KeyScheme>(), Ok(s));
        }
        assert!("python".parse::<KeyScheme>().is_err());
    }

    #[test]
    fn too_deep_data_is_an_error() {
        let mut v = json!(1);
        for _ in 0..(MAX_DEPTH + 5) {
            v = Value::Array(vec![v]);
        }
        assert_eq!(
            python_json(&v),
            Err(IdentityError::TooDeep { limit: MAX_DEPTH })
        );
    }
}
