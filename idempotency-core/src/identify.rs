//! What the guard identifies an event by: an [`EventEnvelope`] under the configured
//! [`IdentityRule`], or an [`Identity`] the caller builds for any message (Avro, Protobuf,
//! an id in a header, a business key). Both implement [`Identify`], which every entry
//! point of the guard takes.
//!
//! Every form of key material is hashed in a domain of its own (a tag no other form and no
//! JSON text starts with, then length-delimited parts), so no two forms can produce one
//! key: an id given to `Identity::new`, an envelope's `event_id` under
//! [`IdentityRule::EventId`], chosen fields under [`IdentityRule::Fields`] and an
//! envelope's content under [`IdentityRule::Content`] never share a hash.

use std::borrow::Cow;
use std::time::SystemTime;

use serde_json::Value;
use xxhash_rust::xxh3::Xxh3;

use crate::config::IdempotencyConfig;
use crate::envelope::EventEnvelope;
use crate::error::IdentityError;
use crate::identity::{canonical_json, hex128};

/// How the guard identifies an envelope (`ConfigBuilder::identity_rule`, or per event type
/// with `ConfigBuilder::event_type_identity_rule`).
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::{IdempotencyConfig, IdentityRule};
/// let config = IdempotencyConfig::builder("billing")
///     .identity_rule(IdentityRule::EventId)
///     // "order 42 charged" once, whatever event carries it:
///     .event_type_identity_rule(
///         "orders.charged.v1",
///         IdentityRule::Fields(vec!["/data/order_id".into()]),
///     )
///     .build()?;
/// # Ok::<(), eventonce::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IdentityRule {
    /// The default: the hash of `{event_id, data}` (or of `data` alone without an id),
    /// today's keys. The content is the key, so there is no fingerprint and no conflict:
    /// changed data is another event.
    #[default]
    Content,
    /// The key comes from `event_id` alone, and `data` is the fingerprint: the same id
    /// with other data is a [`GuardError::Conflict`](crate::GuardError::Conflict). An
    /// envelope without an `event_id` is `GuardError::InvalidEvent`.
    EventId,
    /// The key comes from the values at these JSON Pointers (RFC 6901) into the envelope,
    /// such as `"/data/order_id"` or `"/event_id"`, and the whole `data` is the
    /// fingerprint. A pointer that finds nothing is `GuardError::InvalidEvent`, never a
    /// silent pass.
    Fields(Vec<String>),
}

/// An identity the caller builds for any message: an event type (which picks the TTL and
/// the key's namespace segment), an id of any bytes, and optionally a fingerprint of the
/// payload (a changed payload under the same id is then a
/// [`GuardError::Conflict`](crate::GuardError::Conflict)) and the time the event happened
/// (for [stale events](crate::ConfigBuilder::max_event_age)).
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::Identity;
/// let avro_body: &[u8] = &[0x02, 0x08, 0x6f, 0x2d, 0x34, 0x32];
/// let identity = Identity::new("orders.placed.v1", "order-42")
///     .with_fingerprint(avro_body);
/// assert_eq!(identity.id(), b"order-42");
/// assert!(identity.fingerprint().is_some());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    event_type: String,
    id: Vec<u8>,
    fingerprint: Option<String>,
    timestamp: Option<SystemTime>,
    correlation_id: Option<String>,
}

impl Identity {
    /// An identity of type `event_type` whose key is made from `id` (a string or bytes).
    pub fn new(event_type: impl Into<String>, id: impl AsRef<[u8]>) -> Self {
        Identity {
            event_type: event_type.into(),
            id: id.as_ref().to_vec(),
            fingerprint: None,
            timestamp: None,
            correlation_id: None,
        }
    }

    /// The payload's fingerprint: `payload` is hashed here (xxh3-128), and only the hash is
    /// kept and stored with the record.
    #[must_use]
    pub fn with_fingerprint(mut self, payload: impl AsRef<[u8]>) -> Self {
        self.fingerprint = Some(fingerprint_of(payload.as_ref()));
        self
    }

    /// When the event happened, for the stale-event check
    /// ([`max_event_age`](crate::ConfigBuilder::max_event_age)).
    #[must_use]
    pub fn with_timestamp(mut self, at: SystemTime) -> Self {
        self.timestamp = Some(at);
        self
    }

    /// A correlation id for the guard's logs and spans.
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The id the key is made from.
    pub fn id(&self) -> &[u8] {
        &self.id
    }

    /// The payload's fingerprint (32 hex digits), when one was given.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// When the event happened, when it was given.
    pub fn timestamp(&self) -> Option<SystemTime> {
        self.timestamp
    }
}

/// Anything the guard can identify: an [`EventEnvelope`] (under the configured
/// [`IdentityRule`]) or an [`Identity`]. [`Guard::run`](crate::Guard::run),
/// [`run_batch`](crate::Guard::run_batch) and
/// [`run_in_transaction`](crate::Guard::run_in_transaction) take either.
///
/// The trait is sealed: build an [`Identity`] for a message of another shape.
pub trait Identify: sealed::Resolve {
    /// The event type, which picks the TTL and the key's namespace segment.
    fn event_type(&self) -> &str;
}

impl Identify for EventEnvelope {
    fn event_type(&self) -> &str {
        &self.event_type
    }
}

impl Identify for Identity {
    fn event_type(&self) -> &str {
        &self.event_type
    }
}

pub(crate) mod sealed {
    use super::{Cow, EventEnvelope, IdempotencyConfig, IdentityError};

    /// When an event happened, as far as its identity says.
    #[derive(Debug, Clone)]
    pub enum When {
        /// Not given.
        Unknown,
        /// Given and readable.
        At(std::time::SystemTime),
        /// Given, but not an RFC 3339 time (at most 64 characters of it).
        Unreadable(String),
    }

    /// An event identified under a configuration: what the guard's pipeline works on.
    #[derive(Debug)]
    pub struct Resolved {
        /// The hash in the key.
        pub hash: String,
        /// The store key.
        pub key: String,
        /// The payload's fingerprint, when the identity has one.
        pub fingerprint: Option<String>,
        /// When the event happened.
        pub when: When,
    }

    /// How an identifiable value is resolved (sealed: implemented here only).
    pub trait Resolve {
        /// The event's key, hash, fingerprint and time under `config`.
        ///
        /// # Errors
        ///
        /// Why the event cannot be identified.
        fn resolve(&self, config: &IdempotencyConfig) -> Result<Resolved, IdentityError>;

        /// The envelope the logs, spans and metrics read (one made up for an `Identity`:
        /// its type, its id as text, its correlation id).
        fn view(&self) -> Cow<'_, EventEnvelope>;
    }
}

pub(crate) use sealed::{Resolve, Resolved, When};

/// Domain tags: no canonical JSON text starts with a NUL byte, and each form has its own.
const TAG_ID: &[u8] = b"\0eventonce:identity-id\0";
const TAG_EVENT_ID: &[u8] = b"\0eventonce:event-id\0";
const TAG_FIELDS: &[u8] = b"\0eventonce:fields\0";
const TAG_FINGERPRINT: &[u8] = b"\0eventonce:fingerprint\0";

/// xxh3-128 of `tag` and the length-delimited `parts`, in hex.
fn tagged_hash<'p>(tag: &[u8], parts: impl IntoIterator<Item = &'p [u8]>) -> String {
    let mut hasher = Xxh3::new();
    hasher.update(tag);
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex128(hasher.digest128())
}

/// The fingerprint of a payload's bytes.
pub(crate) fn fingerprint_of(payload: &[u8]) -> String {
    tagged_hash(TAG_FINGERPRINT, [payload])
}

impl Resolve for EventEnvelope {
    fn view(&self) -> Cow<'_, EventEnvelope> {
        Cow::Borrowed(self)
    }

    fn resolve(&self, config: &IdempotencyConfig) -> Result<Resolved, IdentityError> {
        let (hash, fingerprint) = match config.identity_rule_for(&self.event_type) {
            IdentityRule::Content => (config.event_hash(self)?, None),
            IdentityRule::EventId => {
                let id = self
                    .event_id
                    .as_deref()
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| missing(&self.event_type, "/event_id"))?;
                let hash = tagged_hash(TAG_EVENT_ID, [id.as_bytes()]);
                (hash, Some(self.data_hash()?))
            }
            IdentityRule::Fields(pointers) => {
                let hash = fields_hash(self, pointers)?;
                (hash, Some(self.data_hash()?))
            }
        };
        let key = config.try_generate_key(&self.event_type, &hash)?;
        let when = match self.event_timestamp.as_deref() {
            None => When::Unknown,
            Some(text) => parse_time(text),
        };
        Ok(Resolved {
            hash,
            key,
            fingerprint,
            when,
        })
    }
}

impl Resolve for Identity {
    fn view(&self) -> Cow<'_, EventEnvelope> {
        let mut envelope = EventEnvelope::new(self.event_type.clone(), Value::Null);
        envelope.event_id = Some(printable_id(&self.id));
        envelope.correlation_id.clone_from(&self.correlation_id);
        Cow::Owned(envelope)
    }

    fn resolve(&self, config: &IdempotencyConfig) -> Result<Resolved, IdentityError> {
        if self.id.is_empty() {
            return Err(missing(&self.event_type, "id"));
        }
        let hash = tagged_hash(TAG_ID, [self.id.as_slice()]);
        let key = config.try_generate_key(&self.event_type, &hash)?;
        Ok(Resolved {
            hash,
            key,
            fingerprint: self.fingerprint.clone(),
            when: self.timestamp.map_or(When::Unknown, When::At),
        })
    }
}

/// The hash of the values at `pointers` into `envelope`.
fn fields_hash(envelope: &EventEnvelope, pointers: &[String]) -> Result<String, IdentityError> {
    let mut parts = Vec::with_capacity(pointers.len() * 2);
    for pointer in pointers {
        let value = lookup(envelope, pointer)
            .filter(|v| !v.is_null())
            .ok_or_else(|| missing(&envelope.event_type, pointer))?;
        parts.push(pointer.as_bytes().to_vec());
        parts.push(canonical_json(&value)?);
    }
    Ok(tagged_hash(TAG_FIELDS, parts.iter().map(Vec::as_slice)))
}

/// The value at JSON Pointer `pointer` into `envelope` as it serializes (absent fields
/// absent), without serializing it: `data` is read in place.
fn lookup<'a>(envelope: &'a EventEnvelope, pointer: &str) -> Option<Cow<'a, Value>> {
    let rest = pointer.strip_prefix('/')?;
    let (field, below) = match rest.split_once('/') {
        Some((field, below)) => (field, Some(below)),
        None => (rest, None),
    };
    let text = |v: &Option<String>| v.as_deref().map(|t| Cow::Owned(Value::from(t)));
    let top: Cow<'a, Value> = match field {
        "data" => Cow::Borrowed(&envelope.data),
        "event_type" => Cow::Owned(Value::from(envelope.event_type.as_str())),
        "event_id" => text(&envelope.event_id)?,
        "event_timestamp" => text(&envelope.event_timestamp)?,
        "source_service" => text(&envelope.source_service)?,
        "correlation_id" => text(&envelope.correlation_id)?,
        "schema_version" => Cow::Owned(Value::from(envelope.schema_version?)),
        "metadata" => Cow::Owned(Value::Object(envelope.metadata.clone()?)),
        _ => return None,
    };
    let Some(below) = below else {
        return Some(top);
    };
    let below = format!("/{below}");
    match top {
        Cow::Borrowed(value) => value.pointer(&below).map(Cow::Borrowed),
        Cow::Owned(value) => value.pointer(&below).cloned().map(Cow::Owned),
    }
}

fn missing(event_type: &str, field: &str) -> IdentityError {
    IdentityError::MissingField {
        event_type: crate::bound::bounded(event_type).into_owned(),
        field: crate::bound::bounded(field).into_owned(),
    }
}

/// An id as the logs show it: the text when it is UTF-8, else its hex (each at most 200
/// characters).
fn printable_id(id: &[u8]) -> String {
    match std::str::from_utf8(id) {
        Ok(text) => crate::bound::bounded(text).into_owned(),
        Err(_) => id.iter().take(100).map(|b| format!("{b:02x}")).collect(),
    }
}

/// An RFC 3339 time, or why not.
fn parse_time(text: &str) -> When {
    use time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(text.trim(), &Rfc3339) {
        Ok(at) => When::At(SystemTime::from(at)),
        Err(_) => When::Unreadable(text.chars().take(64).collect()),
    }
}

/// The owner token a claim is written with: `token`, and the payload's fingerprint after
/// `#fp` when there is one, so that the fingerprint is stored with the claim and with the
/// completed record by every store, and travels with every completion of the claim.
pub(crate) fn owner_with(token: String, fingerprint: Option<&str>) -> String {
    match fingerprint {
        None => token,
        Some(fp) => {
            let mut owner = token;
            owner.push_str(FINGERPRINT_MARK);
            owner.push_str(fp);
            owner
        }
    }
}

/// The fingerprint a record's owner token carries, if it carries one (older records and
/// `KeyScheme::PythonV2`'s values do not).
pub(crate) fn fingerprint_of_owner(owner: &str) -> Option<&str> {
    owner
        .rsplit_once(FINGERPRINT_MARK)
        .map(|(_, fp)| fp)
        .filter(|fp| fp.len() == 32 && fp.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What separates an owner token from the fingerprint it carries.
const FINGERPRINT_MARK: &str = "#fp";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_of_key_material_never_share_a_hash() {
        let id = b"{\"a\":1}";
        let forms = [
            tagged_hash(TAG_ID, [id.as_slice()]),
            tagged_hash(TAG_EVENT_ID, [id.as_slice()]),
            tagged_hash(TAG_FIELDS, [id.as_slice()]),
            fingerprint_of(id),
        ];
        let distinct: std::collections::HashSet<_> = forms.iter().collect();
        assert_eq!(distinct.len(), forms.len());
    }

    #[test]
    fn a_pointer_finds_what_it_finds_in_the_serialized_envelope() {
        let envelope = EventEnvelope::from_slice(
            br#"{"event_id":"e-1","event_type":"t.v1","event_timestamp":"2026-12-06T09:00:00Z",
                "source_service":"s","correlation_id":"c","schema_version":3,
                "data":{"order":{"id":42,"lines":[1,{"sku":"x"}]},"a/b":1,"m~n":null},
                "metadata":{"trace":{"id":"t-9"}}}"#,
        )
        .expect("envelope");
        let document = serde_json::to_value(&envelope).expect("value");
        for pointer in [
            "/data",
            "/data/order",
            "/data/order/id",
            "/data/order/lines/1/sku",
            "/data/order/lines/7",
            "/data/a~1b",
            "/data/m~0n",
            "/data/none",
            "/event_id",
            "/event_type",
            "/event_timestamp",
            "/source_service",
            "/correlation_id",
            "/schema_version",
            "/metadata",
            "/metadata/trace/id",
            "/event_id/x",
            "/nothing",
            "",
            "data",
        ] {
            let found = lookup(&envelope, pointer).map(Cow::into_owned);
            let expected = document
                .pointer(pointer)
                .filter(|_| !pointer.is_empty())
                .cloned();
            assert_eq!(found, expected, "{pointer}");
        }
        let bare = EventEnvelope::new("t.v1", Value::Null);
        for pointer in ["/event_id", "/schema_version", "/metadata", "/data"] {
            let expected = serde_json::to_value(&bare)
                .expect("value")
                .pointer(pointer)
                .cloned();
            assert_eq!(
                lookup(&bare, pointer).map(Cow::into_owned),
                expected,
                "{pointer}"
            );
        }
    }

    #[test]
    fn fields_are_length_delimited() {
        let a = tagged_hash(TAG_FIELDS, [b"ab".as_slice(), b"c".as_slice()]);
        let b = tagged_hash(TAG_FIELDS, [b"a".as_slice(), b"bc".as_slice()]);
        assert_ne!(a, b);
    }

    #[test]
    fn times_are_read_as_rfc_3339_and_anything_else_is_unreadable() {
        assert!(matches!(parse_time("2026-12-06T09:00:00Z"), When::At(_)));
        assert!(matches!(
            parse_time("2026-12-06T10:00:00+01:00"),
            When::At(_)
        ));
        assert!(matches!(parse_time("yesterday"), When::Unreadable(_)));
        assert!(matches!(parse_time(""), When::Unreadable(_)));
    }
}
