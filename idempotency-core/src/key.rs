//! Store keys: `{prefix}:{service}:{event type}:{hash}`, confined to their namespace.
//!
//! The event type is the only part of a key that comes from the event itself, so it is
//! escaped: `.` becomes `_` (the key format of the Python "idempotency v2" decorator), and
//! every byte that could move a key out of its namespace or make two event types share a
//! key is written as `%XX`: `%`, `_`, `~`, `:`, the glob characters `*?[]\`, the
//! Redis Cluster hash-tag braces `{}`, whitespace, control characters and every byte of a
//! non-ASCII character. The mapping is injective, so [`unescape_event_type`] reverses it.
//! A segment over [`MAX_EVENT_TYPE_SEGMENT`] bytes is cut and given a hash suffix
//! (`~` + 32 hex digits of the whole type's xxh3-128), so distinct types keep distinct keys.

use std::fmt::Write as _;

/// The longest event-type segment a key holds, in bytes.
pub const MAX_EVENT_TYPE_SEGMENT: usize = 200;

/// The longest event type [`KeyScheme::PythonV2`](crate::KeyScheme::PythonV2) keys, in
/// bytes. That scheme keeps the type's bytes in the key (only `.` becomes `_`), so it
/// cannot shorten a longer one and refuses it. With a prefix and a service name of at
/// most [`MAX_NAME_BYTES`] each and a 64-digit hash, a key is then at most 2,467 bytes,
/// which every store keeps (PostgreSQL indexes a digest of the key; Redis allows 512 MB).
pub const MAX_PYTHON_V2_EVENT_TYPE: usize = 2_000;

/// The longest service name and the longest key prefix, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

const SUFFIX_LEN: usize = 1 + 32;

fn needs_escape(b: u8) -> bool {
    ESCAPED[usize::from(b)]
}

/// [`needs_escape`] of every byte, computed once at compile time: a key is built for each
/// event, and its segments are checked byte by byte.
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = !c.is_ascii()
            || c.is_ascii_control()
            || c.is_ascii_whitespace()
            || matches!(
                c,
                b'%' | b'_' | b'~' | b':' | b'*' | b'?' | b'[' | b']' | b'{' | b'}' | b'\\' | b' '
            );
        b += 1;
    }
    table
};

/// Escapes an event type for use as a key segment.
///
/// `.` becomes `_` (the key format of the Python "idempotency v2" decorator); every byte
/// that could move a key out of its namespace or make two event types share a key is
/// written as `%XX`: `%`, `_`, `~`, `:`, the glob characters `*?[]\`, the Redis Cluster
/// hash-tag braces `{}`, whitespace, control characters and each byte of a non-ASCII
/// character. The mapping is injective, so [`unescape_event_type`] reverses it. A segment
/// over [`MAX_EVENT_TYPE_SEGMENT`] bytes is cut at an escape boundary and given the suffix
/// `~` + the 32 hex digits of the whole type's xxh3-128, so distinct types stay distinct.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::escape_event_type;
/// assert_eq!(escape_event_type("huleedu.essay.spellcheck.requested.v1"),
///            "huleedu_essay_spellcheck_requested_v1");
/// assert_eq!(escape_event_type("orders.created:*"), "orders_created%3A%2A");
/// assert_eq!(escape_event_type("cj_assessment.v1"), "cj%5Fassessment_v1");
/// ```
pub fn escape_event_type(event_type: &str) -> String {
    let mut out = String::with_capacity(event_type.len() + 8);
    push_escaped_event_type(&mut out, event_type);
    out
}

/// Appends the escaped segment of `event_type` to `out` (what [`escape_event_type`]
/// returns). An event type with nothing to escape but its dots, the common case, is copied
/// in one pass without allocating.
pub(crate) fn push_escaped_event_type(out: &mut String, event_type: &str) {
    if event_type.len() <= MAX_EVENT_TYPE_SEGMENT && !event_type.bytes().any(needs_escape) {
        // All ASCII: the segment as long as the type, its dots written as `_`.
        for (i, part) in event_type.split('.').enumerate() {
            if i > 0 {
                out.push('_');
            }
            out.push_str(part);
        }
        return;
    }
    out.push_str(&escape_slow(event_type));
}

/// [`escape_event_type`] for a type with bytes to escape or too long a segment.
fn escape_slow(event_type: &str) -> String {
    let mut out = String::with_capacity(event_type.len() + 8);
    let mut ends = Vec::with_capacity(event_type.len());
    for &b in event_type.as_bytes() {
        if b == b'.' {
            out.push('_');
        } else if needs_escape(b) {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        } else {
            out.push(char::from(b));
        }
        ends.push(out.len());
    }
    if out.len() <= MAX_EVENT_TYPE_SEGMENT {
        return out;
    }
    // Cut at the end of a whole escape, leaving room for the suffix.
    let budget = MAX_EVENT_TYPE_SEGMENT - SUFFIX_LEN;
    let cut = ends
        .iter()
        .copied()
        .take_while(|&e| e <= budget)
        .last()
        .unwrap_or(0);
    out.truncate(cut);
    let digest = xxhash_rust::xxh3::xxh3_128(event_type.as_bytes());
    let _ = write!(out, "~{digest:032x}");
    out
}

/// Reverses [`escape_event_type`]. Returns `None` for a segment that is not a valid
/// escape or that was shortened (its tail is only a hash).
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::{escape_event_type, unescape_event_type};
/// let t = "weird type: [ünïcode] {tag}.v1";
/// assert_eq!(unescape_event_type(&escape_event_type(t)).as_deref(), Some(t));
/// ```
pub fn unescape_event_type(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => out.push(b'.'),
            b'%' => {
                let hex = segment.get(i + 1..i + 3)?;
                let b = u8::from_str_radix(hex, 16).ok()?;
                if !needs_escape(b) {
                    return None;
                }
                out.push(b);
                i += 2;
            }
            b if needs_escape(b) || b == b'.' => return None,
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Escapes a hash segment. Hashes made by this crate are hex and pass unchanged; a
/// caller-supplied one cannot leave the namespace either.
fn escape_hash(hash: &str) -> std::borrow::Cow<'_, str> {
    if hash.bytes().all(|b| !needs_escape(b) && b != b'.') && !hash.is_empty() {
        return std::borrow::Cow::Borrowed(hash);
    }
    let mut out = String::with_capacity(hash.len() * 3 + 3);
    if hash.is_empty() {
        out.push_str("%00");
    }
    for b in hash.bytes() {
        if needs_escape(b) || b == b'.' {
            let _ = write!(out, "%{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `{prefix}:{service}:{escaped event type}:{hash}`, written into one string.
pub(crate) fn build_key(prefix: &str, service: &str, event_type: &str, hash: &str) -> String {
    let hash = escape_hash(hash);
    let mut key = String::with_capacity(
        prefix.len() + service.len() + event_type.len() + hash.len() + SUFFIX_LEN + 3,
    );
    key.push_str(prefix);
    key.push(':');
    key.push_str(service);
    key.push(':');
    push_escaped_event_type(&mut key, event_type);
    key.push(':');
    key.push_str(&hash);
    key
}

/// `{prefix}:{service}:{segment}:{hash}`, the hash escaped.
pub(crate) fn assemble(prefix: &str, service: &str, event_type: &str, hash: &str) -> String {
    let hash = escape_hash(hash);
    let mut key =
        String::with_capacity(prefix.len() + service.len() + event_type.len() + hash.len() + 3);
    key.push_str(prefix);
    key.push(':');
    key.push_str(service);
    key.push(':');
    key.push_str(event_type);
    key.push(':');
    key.push_str(&hash);
    key
}

/// The parts of a store key, as [`KeyParts::parse`] reads them back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyParts {
    /// The service the key belongs to.
    pub service: String,
    /// The event-type segment as stored (escaped, maybe shortened).
    pub event_type_segment: String,
    /// The event type, when the segment can be unescaped (a shortened one cannot).
    pub event_type: Option<String>,
    /// The deterministic hash segment.
    pub hash: String,
}

impl KeyParts {
    /// Reads `key` as `{prefix}:{service}:{event type}:{hash}`. Returns `None` for a key
    /// outside `{prefix}:` or of another shape.
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::{IdempotencyConfig, KeyParts};
    /// let config = IdempotencyConfig::builder("billing").build()?;
    /// let key = config.generate_key("orders.created.v1", "ab12");
    /// let parts = KeyParts::parse(config.key_prefix(), &key).expect("our key");
    /// assert_eq!(parts.service, "billing");
    /// assert_eq!(parts.event_type.as_deref(), Some("orders.created.v1"));
    /// assert_eq!(parts.hash, "ab12");
    /// assert_eq!(KeyParts::parse("other:prefix", &key), None);
    /// # Ok::<(), eventonce::ConfigError>(())
    /// ```
    pub fn parse(prefix: &str, key: &str) -> Option<KeyParts> {
        Self::parse_with(crate::KeyScheme::Eventonce, prefix, key)
    }

    /// Reads `key` as [`parse`](Self::parse) does, for keys made with `scheme`. Under
    /// [`KeyScheme::PythonV2`](crate::KeyScheme::PythonV2) the event-type segment cannot
    /// always be read back (the decorator writes `a.b` and `a_b` alike): `event_type` is the
    /// segment itself when it holds no `_`, else `None`.
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::{IdempotencyConfig, KeyParts, KeyScheme};
    /// let config = IdempotencyConfig::builder("billing").key_scheme(KeyScheme::PythonV2).build()?;
    /// let key = config.generate_key("orders.created.v1", "ab12");
    /// let parts = KeyParts::parse_with(KeyScheme::PythonV2, config.key_prefix(), &key).expect("our key");
    /// assert_eq!(parts.event_type_segment, "orders_created_v1");
    /// assert_eq!(parts.event_type, None);
    /// assert_eq!(parts.event_type_display(), "orders_created_v1");
    /// # Ok::<(), eventonce::ConfigError>(())
    /// ```
    pub fn parse_with(scheme: crate::KeyScheme, prefix: &str, key: &str) -> Option<KeyParts> {
        let rest = key.strip_prefix(prefix)?.strip_prefix(':')?;
        let mut parts = rest.split(':');
        let (service, segment, hash) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || service.is_empty() || segment.is_empty() || hash.is_empty() {
            return None;
        }
        Some(KeyParts {
            service: service.to_owned(),
            event_type_segment: segment.to_owned(),
            event_type: match scheme {
                crate::KeyScheme::PythonV2 => (!segment.contains('_')).then(|| segment.to_owned()),
                _ => unescape_event_type(segment),
            },
            hash: hash.to_owned(),
        })
    }

    /// The event type for display: unescaped when possible, else the stored segment.
    pub fn event_type_display(&self) -> &str {
        self.event_type
            .as_deref()
            .unwrap_or(&self.event_type_segment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_become_underscores_like_the_python_decorator() {
        assert_eq!(
            escape_event_type("huleedu.els.batch.essays.ready.v1"),
            "huleedu_els_batch_essays_ready_v1"
        );
    }

    #[test]
    fn dot_and_underscore_types_get_distinct_segments() {
        assert_ne!(escape_event_type("a.b"), escape_event_type("a_b"));
        assert_eq!(
            unescape_event_type(&escape_event_type("a_b")).as_deref(),
            Some("a_b")
        );
    }

    #[test]
    fn every_dangerous_character_is_escaped() {
        let escaped = escape_event_type("a:b*c?d[e]f{g}h\\i j\tk\nl\u{7f}m\u{e9}n%o~p");
        for c in [
            ':', '*', '?', '[', ']', '{', '}', '\\', ' ', '\t', '\n', '\u{7f}', '~',
        ] {
            assert!(!escaped.contains(c), "{c:?} survived in {escaped}");
        }
        assert!(escaped.is_ascii());
        assert_eq!(
            unescape_event_type(&escaped).as_deref(),
            Some("a:b*c?d[e]f{g}h\\i j\tk\nl\u{7f}m\u{e9}n%o~p")
        );
    }

    #[test]
    fn long_types_are_shortened_with_a_hash_suffix_and_stay_distinct() {
        let a = "x".repeat(300);
        let b = format!("{}y", "x".repeat(299));
        let (ea, eb) = (escape_event_type(&a), escape_event_type(&b));
        assert!(ea.len() <= MAX_EVENT_TYPE_SEGMENT && eb.len() <= MAX_EVENT_TYPE_SEGMENT);
        assert_ne!(ea, eb);
        assert!(ea.contains('~'));
        assert_eq!(unescape_event_type(&ea), None);
    }

    #[test]
    fn a_type_of_exactly_the_limit_is_kept_whole() {
        let t = "t".repeat(MAX_EVENT_TYPE_SEGMENT);
        assert_eq!(escape_event_type(&t), t);
        let longer = "t".repeat(MAX_EVENT_TYPE_SEGMENT + 1);
        assert_ne!(escape_event_type(&longer), longer);
    }

    #[test]
    fn shortening_never_cuts_inside_an_escape() {
        let t = ":".repeat(100);
        let e = escape_event_type(&t);
        let body = e.split('~').next().unwrap_or_default();
        assert_eq!(body.len() % 3, 0, "{body}");
    }

    #[test]
    fn malformed_segments_do_not_unescape() {
        for bad in ["%", "%4", "%ZZ", "a.b", "a:b", "%41", "a~b"] {
            assert_eq!(unescape_event_type(bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_parse_back_into_their_parts() {
        let key = build_key("a:b", "svc", "x.y:z", "h1");
        let parts = KeyParts::parse("a:b", &key).expect("parses");
        assert_eq!(parts.service, "svc");
        assert_eq!(parts.event_type.as_deref(), Some("x.y:z"));
        assert_eq!(parts.hash, "h1");
        for foreign in [
            "a:bc:svc:t:h",
            "a:b:svc:t",
            "a:b:svc:t:h:extra",
            "a:b::t:h",
            "x",
        ] {
            assert_eq!(KeyParts::parse("a:b", foreign), None, "{foreign}");
        }
        let long = build_key("p", "s", &"q".repeat(300), "h");
        let parts = KeyParts::parse("p", &long).expect("parses");
        assert_eq!(parts.event_type, None);
        assert_eq!(parts.event_type_display(), parts.event_type_segment);
    }

    #[test]
    fn hostile_hashes_stay_in_their_segment() {
        let key = build_key("p", "s", "t", "x:*{y}");
        assert_eq!(key.matches(':').count(), 3);
        assert!(!key.contains('*') && !key.contains('{'));
        assert_eq!(build_key("p", "s", "t", ""), "p:s:t:%00");
    }
}
