//! Writing event data for a hash: from a parsed [`Value`], or from the payload's own text.
//!
//! serde_json's [`Value`] keeps a number as a 64-bit integer or an `f64` (eventonce enables
//! no serde_json feature that would change that for the programs using it), so it cannot
//! tell `12345678901234567890123` from `12345678901234567890124`, and holds no value at all
//! for `1e999`. [`EventEnvelope::from_slice`](crate::EventEnvelope::from_slice) therefore
//! keeps the text of `data` as it arrived, and the hash reads every number from that text
//! ([`write_text`]), walking the parsed value beside it: wherever the two disagree (the
//! program changed `data` after parsing), the value is written instead ([`write_data`]).
//!
//! One walk serves both key schemes: a [`Style`] says how numbers, strings and separators
//! are written; objects are written with their keys in byte order, a key given twice once
//! (with its last value, as serde_json keeps it).

use std::borrow::Cow;
use std::ops::Range;

use jiter::{Jiter, Peek};
use serde_json::{Map, Number, Value};

use crate::error::IdentityError;
use crate::identity::MAX_DEPTH;

/// How one scheme writes JSON for its hash.
pub(crate) trait Style {
    /// Between two items of an array or two entries of an object.
    const ITEM_SEPARATOR: &'static [u8];
    /// Between a key and its value.
    const KEY_SEPARATOR: &'static [u8];
    /// Writes a number given as a JSON number literal.
    fn number(out: &mut Vec<u8>, literal: &str) -> Result<(), IdentityError>;
    /// Writes a string (a value or a key).
    fn string(out: &mut Vec<u8>, s: &str);
}

/// The event data to hash: a value, or a value with the text it was parsed from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Data<'a> {
    /// A value built in code (or deserialized through serde): its numbers as it holds them.
    Value(&'a Value),
    /// A value and the JSON text it was parsed from: numbers as the text spells them.
    Text {
        /// The JSON text of the data, as the payload had it.
        text: &'a str,
        /// What that text parsed to (and what the program may have changed since).
        value: &'a Value,
    },
}

/// Writes `data` in style `S` at nesting `depth`: from its text where it has one and the
/// text still says what its value holds, else from its value.
///
/// # Errors
///
/// [`IdentityError::TooDeep`] beyond [`MAX_DEPTH`]; the errors of `S::number`.
pub(crate) fn write_data<S: Style>(
    out: &mut Vec<u8>,
    data: Data<'_>,
    depth: usize,
) -> Result<(), IdentityError> {
    match data {
        Data::Value(value) => write_value::<S>(out, value, depth),
        Data::Text { text, value } => {
            let start = out.len();
            if write_text::<S>(out, text, value, depth)? {
                return Ok(());
            }
            out.truncate(start);
            write_value::<S>(out, value, depth)
        }
    }
}

/// Writes `value` in style `S`, each number as serde_json prints it.
pub(crate) fn write_value<S: Style>(
    out: &mut Vec<u8>,
    value: &Value,
    depth: usize,
) -> Result<(), IdentityError> {
    if depth >= MAX_DEPTH {
        return Err(IdentityError::TooDeep { limit: MAX_DEPTH });
    }
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_value_number::<S>(out, n)?,
        Value::String(s) => S::string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(S::ITEM_SEPARATOR);
                }
                write_value::<S>(out, item, depth + 1)?;
            }
            out.push(b']');
        }
        Value::Object(map) => write_value_object::<S>(out, map, depth)?,
    }
    Ok(())
}

/// An object's entries in byte order of their keys (a map in another order, as with
/// serde_json's `preserve_order`, is sorted first).
fn write_value_object<S: Style>(
    out: &mut Vec<u8>,
    map: &Map<String, Value>,
    depth: usize,
) -> Result<(), IdentityError> {
    out.push(b'{');
    let write = |out: &mut Vec<u8>, i: usize, (k, v): (&String, &Value)| {
        if i > 0 {
            out.extend_from_slice(S::ITEM_SEPARATOR);
        }
        S::string(out, k);
        out.extend_from_slice(S::KEY_SEPARATOR);
        write_value::<S>(out, v, depth + 1)
    };
    if map.keys().is_sorted_by(|a, b| a.as_bytes() <= b.as_bytes()) {
        for (i, entry) in map.iter().enumerate() {
            write(out, i, entry)?;
        }
    } else {
        let mut entries: Vec<(&String, &Value)> = map.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (i, entry) in entries.into_iter().enumerate() {
            write(out, i, entry)?;
        }
    }
    out.push(b'}');
    Ok(())
}

/// A number of a [`Value`], through the literal serde_json prints for it (digits for an
/// integer, the shortest round-trip form for a float), without allocating.
fn write_value_number<S: Style>(out: &mut Vec<u8>, n: &Number) -> Result<(), IdentityError> {
    use std::io::Write as _;
    let mut buf = [0u8; 48];
    if let Some(digits) = integer_digits(n, &mut buf) {
        // ASCII digits and a sign: always UTF-8.
        return S::number(out, std::str::from_utf8(digits).unwrap_or("0"));
    }
    let mut cursor = &mut buf[..];
    // serde_json prints at most 24 characters for an f64.
    let written = write!(cursor, "{n}").map(|()| 48 - cursor.len());
    match written
        .ok()
        .and_then(|len| std::str::from_utf8(&buf[..len]).ok())
    {
        Some(literal) => S::number(out, literal),
        None => S::number(out, &n.to_string()),
    }
}

/// The decimal digits (with a `-`) of `n` if it is an integer, written at the end of `buf`.
fn integer_digits<'b>(n: &Number, buf: &'b mut [u8; 48]) -> Option<&'b [u8]> {
    let (negative, mut v) = match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => (false, u),
        (None, Some(i)) => (true, i.unsigned_abs()),
        (None, None) => return None,
    };
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        at -= 1;
        buf[at] = b'-';
    }
    Some(&buf[at..])
}

/// Whether the number literal `literal` reads as `expected`, as serde_json reads it: an
/// integer as its digits, anything else as the nearest `f64` (`null`: beyond its range).
/// serde_json's reading of a long decimal may differ from the correctly rounded one in its
/// last bit; such a literal is taken as different here (and the whole text is compared
/// then, see [`write_text`]).
fn reads_as(literal: &str, expected: &Value) -> bool {
    let Value::Number(n) = expected else {
        return expected.is_null() && literal.parse::<f64>().is_ok_and(f64::is_infinite);
    };
    let mut buf = [0u8; 48];
    match integer_digits(n, &mut buf) {
        Some(digits) => digits == literal.as_bytes(),
        None => {
            let plain_integer = !literal.contains(['.', 'e', 'E']);
            // serde_json reads an integer literal as an f64 only beyond 64 bits, and `-0`.
            (!plain_integer || literal == "-0" || literal.trim_start_matches('-').len() > 18)
                && literal.parse::<f64>().ok() == n.as_f64()
        }
    }
}

/// Writes `text` (JSON that serde_json accepted as `value`) in style `S`, numbers as the
/// text spells them. Returns `false`, with `out` partly written, where the text does not
/// hold what `value` holds: a value changed after parsing (or text that cannot be read).
///
/// The text is checked against the value as it is walked. An object with a key given twice
/// cannot be checked so (the value holds only the last), so where that check fails the
/// text is written unchecked and then parsed whole to compare with the value.
///
/// # Errors
///
/// [`IdentityError::TooDeep`] beyond [`MAX_DEPTH`]; the errors of `S::number`.
pub(crate) fn write_text<S: Style>(
    out: &mut Vec<u8>,
    text: &str,
    value: &Value,
    depth: usize,
) -> Result<bool, IdentityError> {
    let start = out.len();
    if walk_text::<S>(out, text, Some(value), depth)? {
        return Ok(true);
    }
    out.truncate(start);
    let parsed = match serde_json::from_str::<Value>(text) {
        Ok(parsed) => Some(parsed),
        Err(_) => value_beyond_f64(text),
    };
    if parsed.as_ref() != Some(value) {
        return Ok(false);
    }
    walk_text::<S>(out, text, None, depth)
}

/// One walk of `text` into `out`, checked against `expected` unless it is `None`.
fn walk_text<S: Style>(
    out: &mut Vec<u8>,
    text: &str,
    expected: Option<&Value>,
    depth: usize,
) -> Result<bool, IdentityError> {
    let mut jiter = Jiter::new(text.as_bytes());
    let Ok(peek) = jiter.peek() else {
        return Ok(false);
    };
    let mut walk = TextWalk {
        jiter,
        out,
        entries: Vec::new(),
        spare: Vec::new(),
    };
    Ok(walk.value::<S>(peek, expected, depth)? && walk.jiter.finish().is_ok())
}

/// The walk of [`walk_text`]: the text's reader, the output, and two buffers the objects
/// share: their entries (each object's above those of the objects it is inside) and a copy
/// of an object's output while its entries are put in order.
struct TextWalk<'j, 'o, 'v> {
    jiter: Jiter<'j>,
    out: &'o mut Vec<u8>,
    /// Each entry: its key and where `"key":value` was written.
    entries: Vec<(Cow<'v, str>, Range<usize>)>,
    spare: Vec<u8>,
}

/// Whether `expected` is `None` (nothing to check) or `check` holds for it.
fn agrees(expected: Option<&Value>, check: impl FnOnce(&Value) -> bool) -> bool {
    expected.is_none_or(check)
}

impl<'v> TextWalk<'_, '_, 'v> {
    /// The value at `peek`, checked against `expected`: `Ok(false)` on a difference.
    fn value<S: Style>(
        &mut self,
        peek: Peek,
        expected: Option<&'v Value>,
        depth: usize,
    ) -> Result<bool, IdentityError> {
        if depth >= MAX_DEPTH {
            return Err(IdentityError::TooDeep { limit: MAX_DEPTH });
        }
        let written: &[u8] = match peek {
            Peek::Null if self.jiter.known_null().is_ok() && agrees(expected, Value::is_null) => {
                b"null"
            }
            Peek::True | Peek::False => match self.jiter.known_bool(peek) {
                Ok(b) if agrees(expected, |e| e.as_bool() == Some(b)) => {
                    if b {
                        b"true"
                    } else {
                        b"false"
                    }
                }
                _ => return Ok(false),
            },
            Peek::String => {
                return Ok(match self.jiter.known_str() {
                    Ok(s) if agrees(expected, |e| e.as_str() == Some(s)) => {
                        S::string(self.out, s);
                        true
                    }
                    _ => false,
                })
            }
            Peek::Array => match expected {
                None => return self.array::<S>(None, depth),
                Some(Value::Array(items)) => return self.array::<S>(Some(items), depth),
                Some(_) => return Ok(false),
            },
            Peek::Object => match expected {
                None => return self.object::<S>(None, depth),
                Some(Value::Object(map)) => return self.object::<S>(Some(map), depth),
                Some(_) => return Ok(false),
            },
            Peek::Null => return Ok(false),
            _ => return self.number::<S>(peek, expected),
        };
        self.out.extend_from_slice(written);
        Ok(true)
    }

    /// A number literal: the same value as `expected` when serde_json reads it (`null`
    /// where serde_json holds no value for it, beyond the range of an `f64`).
    fn number<S: Style>(
        &mut self,
        peek: Peek,
        expected: Option<&Value>,
    ) -> Result<bool, IdentityError> {
        let literal = match self.jiter.known_number_bytes(peek) {
            Ok(bytes) => std::str::from_utf8(bytes).unwrap_or_default(),
            Err(_) => return Ok(false),
        };
        let same = !literal.is_empty() && agrees(expected, |e| reads_as(literal, e));
        if same {
            S::number(self.out, literal)?;
        }
        Ok(same)
    }

    fn array<S: Style>(
        &mut self,
        items: Option<&'v [Value]>,
        depth: usize,
    ) -> Result<bool, IdentityError> {
        self.out.push(b'[');
        let mut next = self.jiter.known_array();
        let mut count = 0;
        while let Ok(Some(peek)) = next {
            let item = match items {
                Some(items) => match items.get(count) {
                    Some(item) => Some(item),
                    None => return Ok(false),
                },
                None => None,
            };
            if count > 0 {
                self.out.extend_from_slice(S::ITEM_SEPARATOR);
            }
            if !self.value::<S>(peek, item, depth + 1)? {
                return Ok(false);
            }
            count += 1;
            next = self.jiter.array_step();
        }
        self.out.push(b']');
        Ok(next.is_ok() && items.is_none_or(|items| count == items.len()))
    }

    /// An object: its entries written as they come, then put in byte order of their keys
    /// (a key given twice kept once, with its last value) if they came in another.
    fn object<S: Style>(
        &mut self,
        map: Option<&'v Map<String, Value>>,
        depth: usize,
    ) -> Result<bool, IdentityError> {
        let start = self.out.len();
        self.out.push(b'{');
        let base = self.entries.len();
        let mut next = match self.jiter.known_object() {
            Ok(key) => key.map(|k| entry_key(map, k)),
            Err(_) => return Ok(false),
        };
        let mut in_order = true;
        while let Some(found) = next {
            let Some((key, expected)) = found else {
                return Ok(false);
            };
            if self.entries.len() > base {
                self.out.extend_from_slice(S::ITEM_SEPARATOR);
            }
            let at = self.out.len();
            S::string(self.out, &key);
            self.out.extend_from_slice(S::KEY_SEPARATOR);
            let Ok(peek) = self.jiter.peek() else {
                return Ok(false);
            };
            if !self.value::<S>(peek, expected, depth + 1)? {
                return Ok(false);
            }
            in_order &= self.entries[base..]
                .last()
                .is_none_or(|(k, _)| k.as_bytes() < key.as_bytes());
            self.entries.push((key, at..self.out.len()));
            next = match self.jiter.next_key() {
                Ok(k) => k.map(|k| entry_key(map, k)),
                Err(_) => return Ok(false),
            };
        }
        let count = if in_order {
            self.entries.len() - base
        } else {
            self.reorder::<S>(start, base)
        };
        self.entries.truncate(base);
        self.out.push(b'}');
        Ok(map.is_none_or(|map| count == map.len()))
    }

    /// Rewrites the object written from `start` (its `{`), whose entries are those from
    /// `base`, in byte order of their keys, each key once (with its last value). Returns
    /// how many entries it kept.
    fn reorder<S: Style>(&mut self, start: usize, base: usize) -> usize {
        self.spare.clear();
        self.spare.extend_from_slice(&self.out[start..]);
        self.out.truncate(start + 1);
        let entries = &mut self.entries[base..];
        // Stable: of a key given twice, the later entry stays later, and is the one kept.
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut kept = 0;
        for (i, (key, range)) in entries.iter().enumerate() {
            if entries.get(i + 1).is_some_and(|(next, _)| next == key) {
                continue;
            }
            if kept > 0 {
                self.out.extend_from_slice(S::ITEM_SEPARATOR);
            }
            let (from, to) = (range.start - start, range.end - start);
            self.out
                .extend_from_slice(self.spare.get(from..to).unwrap_or_default());
            kept += 1;
        }
        kept
    }
}

/// An object entry's key and the value `map` holds for it: the map's own copy of the key
/// when checking (`None` where the map lacks it), an owned copy when not.
fn entry_key<'m>(
    map: Option<&'m Map<String, Value>>,
    key: &str,
) -> Option<(Cow<'m, str>, Option<&'m Value>)> {
    match map {
        Some(map) => map
            .get_key_value(key)
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), Some(v))),
        None => Some((Cow::Owned(key.to_owned()), None)),
    }
}

/// The value of JSON `text` that serde_json accepted but could not hold as a [`Value`]
/// because a number in it lies beyond the range of an `f64` (`1e999`): such a number
/// becomes `null`, everything else what serde_json would give. `None` if the text cannot
/// be read, or nests deeper than serde_json's limit of 128.
pub(crate) fn value_beyond_f64(text: &str) -> Option<Value> {
    let mut jiter = Jiter::new(text.as_bytes());
    let peek = jiter.peek().ok()?;
    let value = read_value(&mut jiter, peek, 0)?;
    jiter.finish().ok()?;
    Some(value)
}

/// serde_json's nesting limit for a parsed value.
const SERDE_JSON_DEPTH: usize = 128;

fn read_value(jiter: &mut Jiter<'_>, peek: Peek, depth: usize) -> Option<Value> {
    if depth >= SERDE_JSON_DEPTH {
        return None;
    }
    Some(match peek {
        Peek::Null => jiter.known_null().ok().map(|()| Value::Null)?,
        Peek::True | Peek::False => Value::Bool(jiter.known_bool(peek).ok()?),
        Peek::String => Value::String(jiter.known_str().ok()?.to_owned()),
        Peek::Array => {
            let mut items = Vec::new();
            let mut next = jiter.known_array().ok()?;
            while let Some(peek) = next {
                items.push(read_value(jiter, peek, depth + 1)?);
                next = jiter.array_step().ok()?;
            }
            Value::Array(items)
        }
        Peek::Object => {
            let mut map = Map::new();
            let mut next = jiter.known_object().ok()?.map(str::to_owned);
            while let Some(key) = next {
                let peek = jiter.peek().ok()?;
                map.insert(key, read_value(jiter, peek, depth + 1)?);
                next = jiter.next_key().ok()?.map(str::to_owned);
            }
            Value::Object(map)
        }
        _ => {
            let literal = std::str::from_utf8(jiter.known_number_bytes(peek).ok()?).ok()?;
            literal.parse::<Number>().map_or(Value::Null, Value::Number)
        }
    })
}

/// Whether hashing the JSON `text` needs the text itself: whether some number literal in
/// it is one whose value serde_json's [`Value`] does not hold exactly, or prints in a way
/// a scheme writes otherwise. Where it is not, [`write_value`] on what serde_json parsed
/// writes what [`write_text`] would, and the text need not be kept.
///
/// A literal is safe when it is an integer of at most 18 digits other than `-0` (an `i64`
/// or `u64`), or a decimal of at most 15 significant digits whose exponent (after the
/// point is moved behind the digits) is at most 22 in size: serde_json then reads the
/// nearest `f64` (one correctly rounded operation on exact operands), and the shortest
/// form that prints is the literal's own value (15 digits survive an `f64`).
pub(crate) fn text_needed(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                // Skip the string: `text` is valid JSON, so an unescaped quote ends it.
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' {
                        break;
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while bytes
                    .get(i)
                    .is_some_and(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                {
                    i += 1;
                }
                if !safe_literal(&text[start..i]) {
                    return true;
                }
            }
            _ => i += 1,
        }
    }
    false
}

/// See [`text_needed`].
fn safe_literal(literal: &str) -> bool {
    let unsigned = literal.strip_prefix('-').unwrap_or(literal);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if exponent.is_none() && !mantissa.contains('.') {
        return unsigned.len() <= 18 && literal != "-0";
    }
    // Leading zeros add nothing to the significand serde_json builds; every other digit
    // does, trailing zeros included.
    let digits = whole.trim_start_matches('0').len()
        + if whole.trim_start_matches('0').is_empty() {
            fraction.trim_start_matches('0').len()
        } else {
            fraction.len()
        };
    let written: i64 = match exponent {
        None => 0,
        Some(e) if e.trim_start_matches(['+', '-']).len() <= 4 => e.parse().unwrap_or(i64::MAX),
        Some(_) => return false,
    };
    let exp = written.saturating_sub(fraction.len() as i64);
    digits <= 15 && exp.abs() <= 22
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Canonical;
    use proptest::prelude::*;

    fn both<S: Style>(text: &str) -> (Vec<u8>, Vec<u8>) {
        let value: Value = serde_json::from_str(text)
            .unwrap_or_else(|_| value_beyond_f64(text).unwrap_or(Value::Null));
        let mut from_value = Vec::new();
        let mut from_text = Vec::new();
        let _ = write_value::<S>(&mut from_value, &value, 0);
        let _ = write_text::<S>(&mut from_text, text, &value, 0);
        (from_value, from_text)
    }

    /// A number literal: sign, digits with a point somewhere, an exponent or not.
    fn literal() -> impl Strategy<Value = String> {
        (
            any::<bool>(),
            "[0-9]{1,22}",
            0usize..24,
            proptest::option::of(-340i32..340),
        )
            .prop_map(|(minus, digits, point, exp)| {
                let digits = digits.trim_start_matches('0');
                let digits = if digits.is_empty() { "0" } else { digits };
                let mut s = String::from(if minus { "-" } else { "" });
                if point > 0 && point < digits.len() {
                    s.push_str(&digits[..digits.len() - point]);
                    s.push('.');
                    s.push_str(&digits[digits.len() - point..]);
                } else {
                    s.push_str(digits);
                }
                if let Some(e) = exp {
                    s.push_str(&format!("e{e}"));
                }
                s
            })
    }

    proptest! {
        #[test]
        fn where_the_text_is_not_needed_the_value_writes_the_same(
            numbers in proptest::collection::vec(literal(), 1..5),
        ) {
            let text = format!(r#"{{"b":[{}],"a":{}}}"#, numbers.join(","), numbers[0]);
            if !text_needed(&text) {
                let (v, t) = both::<Canonical>(&text);
                prop_assert_eq!(&v, &t, "{}", text);
                let (v, t) = both::<crate::scheme::PythonStyle>(&text);
                prop_assert_eq!(&v, &t, "{}", text);
            }
        }
    }

    #[test]
    fn literals_a_value_cannot_hold_need_the_text() {
        for needed in [
            "12345678901234567890123",
            "-0",
            "0.10000000000000000001",
            "1e999",
            "1.5e300",
            "9007199254740993.0",
        ] {
            assert!(text_needed(&format!(r#"{{"n":[{needed}]}}"#)), "{needed}");
        }
        for safe in [
            "0",
            "100",
            "-7",
            "1.5",
            "1e2",
            "-0.0",
            "0.001",
            "28.99",
            "123456789012345678",
        ] {
            assert!(
                !text_needed(&format!(r#"{{"n":[{safe}], "s": "-0 1e999 \" 1e999"}}"#)),
                "{safe}"
            );
        }
    }
}
