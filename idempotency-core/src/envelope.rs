//! The event envelope consumers receive, and its checked parser.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{EnvelopeError, IdentityError};
use crate::scheme::KeyScheme;
use crate::walk::{self, Data};

/// An event as it travels on the wire: identity fields, routing fields and the payload.
///
/// Parse one with [`EventEnvelope::from_slice`], which checks every field's type and names
/// the field that is wrong; or build one with [`EventEnvelope::new`].
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::EventEnvelope;
/// let envelope = EventEnvelope::from_slice(
///     br#"{"event_id":"e-1","event_type":"orders.created.v1","data":{"order":42}}"#,
/// )?;
/// assert_eq!(envelope.event_type, "orders.created.v1");
/// assert_eq!(envelope.data["order"], 42);
/// # Ok::<(), eventonce::EnvelopeError>(())
/// ```
///
/// # Exact numbers
///
/// [`data`](Self::data) is a serde_json [`Value`], which holds a number as a 64-bit integer
/// or an `f64`. The identity is exact all the same for an envelope from
/// [`from_slice`](Self::from_slice): it keeps the payload's own text of `data` and hashes
/// every number as that text spells it, so `12345678901234567890123` and
/// `12345678901234567890124` are two events. Change `data` afterwards and the identity
/// follows the change (the kept text is used only while it still holds what `data` holds).
/// An envelope built with [`new`](Self::new), [`from_value`](Self::from_value) or through
/// serde has no such text: its numbers are hashed as its `Value` holds them. Equality
/// (`==`) compares the fields, not the kept text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// The producer's id of the event. With the data, it identifies the event; without it,
    /// the data alone does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The event's type, such as `huleedu.essay.spellcheck.requested.v1`; it picks the TTL.
    pub event_type: String,
    /// When the event happened, as the producer wrote it (RFC 3339 by convention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_timestamp: Option<String>,
    /// The service that produced the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_service: Option<String>,
    /// The id that ties the event to a request or workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The version of the event's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u64>,
    /// The payload: any JSON (`null` when absent). A number beyond the range of an `f64`
    /// (`1e999`), which a serde_json `Value` cannot hold, reads as `null` here; the
    /// identity still hashes it as written.
    #[serde(default)]
    pub data: Value,
    /// Free-form metadata (tracing headers, ...), not part of the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// The payload's own text of `data`, kept by `from_slice` for an exact identity.
    #[serde(skip)]
    data_text: Option<Box<RawValue>>,
}

impl PartialEq for EventEnvelope {
    /// The fields compared; the kept text of `data` is not.
    fn eq(&self, other: &Self) -> bool {
        self.event_id == other.event_id
            && self.event_type == other.event_type
            && self.event_timestamp == other.event_timestamp
            && self.source_service == other.source_service
            && self.correlation_id == other.correlation_id
            && self.schema_version == other.schema_version
            && self.data == other.data
            && self.metadata == other.metadata
    }
}

impl EventEnvelope {
    /// An envelope with a type and data, and every optional field empty.
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::EventEnvelope;
    /// let e = EventEnvelope::new("orders.created.v1", serde_json::json!({"order": 42}))
    ///     .with_event_id("e-1");
    /// assert_eq!(e.event_id.as_deref(), Some("e-1"));
    /// ```
    pub fn new(event_type: impl Into<String>, data: Value) -> Self {
        EventEnvelope {
            event_id: None,
            event_type: event_type.into(),
            event_timestamp: None,
            source_service: None,
            correlation_id: None,
            schema_version: None,
            data,
            metadata: None,
            data_text: None,
        }
    }

    /// Sets the event id.
    #[must_use]
    pub fn with_event_id(mut self, event_id: impl Into<String>) -> Self {
        self.event_id = Some(event_id.into());
        self
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// Sets the source service.
    #[must_use]
    pub fn with_source_service(mut self, source_service: impl Into<String>) -> Self {
        self.source_service = Some(source_service.into());
        self
    }

    /// Parses a payload (a Kafka message value, say), checking every field.
    ///
    /// A payload over
    /// [`DEFAULT_MAX_PAYLOAD_BYTES`](crate::config::defaults::DEFAULT_MAX_PAYLOAD_BYTES)
    /// (10 MiB) is refused before parsing; [`from_slice_within`](Self::from_slice_within)
    /// and [`IdempotencyConfig::parse_envelope`](crate::IdempotencyConfig::parse_envelope)
    /// take another limit. Empty input, bytes that are not UTF-8, invalid JSON, JSON that is not an object, a
    /// missing, empty or non-string `event_type` and a field of the wrong type each give
    /// their own [`EnvelopeError`]. Unknown fields are ignored. Never panics.
    ///
    /// # Errors
    ///
    /// - [`EnvelopeError::TooLarge`] if `bytes` is longer than 10 MiB.
    /// - [`EnvelopeError::Empty`] if `bytes` is empty or only whitespace.
    /// - [`EnvelopeError::NotUtf8`] if `bytes` is not UTF-8.
    /// - [`EnvelopeError::InvalidJson`] if it is not JSON, [`EnvelopeError::Malformed`] if a
    ///   top-level field is given twice, [`EnvelopeError::NotAnObject`] if it is JSON but
    ///   not an object.
    /// - [`EnvelopeError::MissingField`] or [`EnvelopeError::EmptyField`] if `event_type` is
    ///   missing (or `null`) or empty, [`EnvelopeError::WrongType`] if a known field has the
    ///   wrong JSON type.
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::{EnvelopeError, EventEnvelope};
    /// assert_eq!(EventEnvelope::from_slice(b""), Err(EnvelopeError::Empty));
    /// assert_eq!(
    ///     EventEnvelope::from_slice(b"[1]"),
    ///     Err(EnvelopeError::NotAnObject { found: "array" })
    /// );
    /// assert_eq!(
    ///     EventEnvelope::from_slice(br#"{"event_type": 7}"#),
    ///     Err(EnvelopeError::WrongType { field: "event_type", expected: "a string", found: "number" })
    /// );
    /// ```
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Self::from_slice_within(bytes, crate::config::defaults::DEFAULT_MAX_PAYLOAD_BYTES)
    }

    /// [`from_slice`](Self::from_slice) with a payload limit of `limit` bytes: a longer
    /// payload is refused before parsing. Use the configuration's limit through
    /// [`IdempotencyConfig::parse_envelope`](crate::IdempotencyConfig::parse_envelope).
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::TooLarge`] if `bytes` is longer than `limit`; otherwise those of
    /// [`from_slice`](Self::from_slice).
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::{EnvelopeError, EventEnvelope};
    /// let payload = br#"{"event_type":"a.v1","data":[1,2,3]}"#;
    /// assert!(EventEnvelope::from_slice_within(payload, 64).is_ok());
    /// assert_eq!(
    ///     EventEnvelope::from_slice_within(payload, 16),
    ///     Err(EnvelopeError::TooLarge { size: payload.len(), limit: 16 })
    /// );
    /// ```
    pub fn from_slice_within(bytes: &[u8], limit: usize) -> Result<Self, EnvelopeError> {
        if bytes.len() > limit {
            return Err(EnvelopeError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        Self::parse(bytes, None)
    }

    /// [`from_slice`](Self::from_slice), with `event_type` for a payload that has no
    /// `event_type` of its own (or a `null` one), as when a message carries its type in a
    /// header.
    ///
    /// # Errors
    ///
    /// The errors of [`from_slice`](Self::from_slice).
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::EventEnvelope;
    /// let e = EventEnvelope::from_slice_or_type(br#"{"data":{"n":1}}"#, "orders.created.v1")?;
    /// assert_eq!(e.event_type, "orders.created.v1");
    /// # Ok::<(), eventonce::EnvelopeError>(())
    /// ```
    pub fn from_slice_or_type(bytes: &[u8], event_type: &str) -> Result<Self, EnvelopeError> {
        Self::from_slice_or_type_within(
            bytes,
            event_type,
            crate::config::defaults::DEFAULT_MAX_PAYLOAD_BYTES,
        )
    }

    /// [`from_slice_or_type`](Self::from_slice_or_type) with a payload limit of `limit`
    /// bytes (see [`from_slice_within`](Self::from_slice_within)).
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::TooLarge`] if `bytes` is longer than `limit`; otherwise those of
    /// [`from_slice`](Self::from_slice).
    pub fn from_slice_or_type_within(
        bytes: &[u8],
        event_type: &str,
        limit: usize,
    ) -> Result<Self, EnvelopeError> {
        if bytes.len() > limit {
            return Err(EnvelopeError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        Self::parse(bytes, Some(event_type))
    }

    fn parse(bytes: &[u8], default_type: Option<&str>) -> Result<Self, EnvelopeError> {
        if bytes.is_empty() {
            return Err(EnvelopeError::Empty);
        }
        let text = std::str::from_utf8(bytes).map_err(|e| EnvelopeError::NotUtf8 {
            valid_up_to: e.valid_up_to(),
        })?;
        if text.trim().is_empty() {
            return Err(EnvelopeError::Empty);
        }
        let (mut fields, raw) =
            match serde_json::from_str::<TopLevel<'_>>(text).map_err(|e| json_error(&e))? {
                TopLevel::Object(fields, raw) => (fields, raw),
                TopLevel::Other(found) => return Err(EnvelopeError::NotAnObject { found }),
            };
        if let Some(t) = default_type {
            if fields.get("event_type").is_none_or(Value::is_null) {
                fields.insert("event_type".to_owned(), Value::from(t));
            }
        }
        let Some(raw) = raw else {
            return Self::from_map(fields);
        };
        fields.insert("data".to_owned(), parse_data(text, raw)?);
        let mut envelope = Self::from_map(fields)?;
        // Kept only where a number in it is one that `data` does not hold exactly.
        if walk::text_needed(raw.get()) {
            envelope.data_text = Some(raw.to_owned());
        }
        Ok(envelope)
    }

    /// Builds an envelope from an already parsed JSON value, with the checks of
    /// [`from_slice`](Self::from_slice).
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::NotAnObject`] if `value` is not an object; otherwise the field
    /// errors of [`from_slice`](Self::from_slice): [`EnvelopeError::MissingField`],
    /// [`EnvelopeError::EmptyField`] or [`EnvelopeError::WrongType`].
    pub fn from_value(value: Value) -> Result<Self, EnvelopeError> {
        match value {
            Value::Object(fields) => Self::from_map(fields),
            other => Err(EnvelopeError::NotAnObject {
                found: kind(&other),
            }),
        }
    }

    fn from_map(mut fields: Map<String, Value>) -> Result<Self, EnvelopeError> {
        let event_type = match fields.remove("event_type") {
            None | Some(Value::Null) => {
                return Err(EnvelopeError::MissingField {
                    field: "event_type",
                })
            }
            Some(Value::String(s)) if s.is_empty() => {
                return Err(EnvelopeError::EmptyField {
                    field: "event_type",
                })
            }
            Some(Value::String(s)) => s,
            Some(other) => return Err(wrong_type("event_type", "a string", &other)),
        };
        let event_id = optional_string(&mut fields, "event_id")?;
        let event_timestamp = optional_string(&mut fields, "event_timestamp")?;
        let source_service = optional_string(&mut fields, "source_service")?;
        let correlation_id = optional_string(&mut fields, "correlation_id")?;
        let schema_version = match fields.remove("schema_version") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
            Some(other) => {
                return Err(wrong_type(
                    "schema_version",
                    "a non-negative integer",
                    &other,
                ))
            }
        };
        let metadata = match fields.remove("metadata") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => return Err(wrong_type("metadata", "an object", &other)),
        };
        let data = fields.remove("data").unwrap_or(Value::Null);
        Ok(EventEnvelope {
            event_id,
            event_type,
            event_timestamp,
            source_service,
            correlation_id,
            schema_version,
            data,
            metadata,
            data_text: None,
        })
    }

    /// The event's deterministic hash: xxh3-128, hex, over a tagged input holding the event
    /// id and the canonical encoding of `data`, or, under another tag, the canonical
    /// encoding of `data` alone when the id is absent or empty (see
    /// [`deterministic_hash`](crate::deterministic_hash)).
    ///
    /// # Errors
    ///
    /// The errors of [`hash_with`](Self::hash_with).
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::EventEnvelope;
    /// let a = EventEnvelope::from_slice(br#"{"event_type":"t","data":{"a":1,"b":[1,2]}}"#)?;
    /// let b = EventEnvelope::from_slice(br#"{ "data": { "b": [1, 2], "a": 1 }, "event_type": "t" }"#)?;
    /// assert_eq!(a.deterministic_hash()?, b.deterministic_hash()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn deterministic_hash(&self) -> Result<String, IdentityError> {
        self.hash_with(KeyScheme::Eventonce)
    }

    /// The event's hash under `scheme`: [`deterministic_hash`](Self::deterministic_hash)
    /// for [`KeyScheme::Eventonce`], the Python decorator's SHA-256 for
    /// [`KeyScheme::PythonV2`] (see [`python_v2_hash`](crate::python_v2_hash)). Either way
    /// an empty id counts as none, and an event with neither an id nor data is
    /// [`IdentityError::Unidentifiable`].
    ///
    /// # Errors
    ///
    /// - [`IdentityError::EmptyEventType`] if the event type is empty.
    /// - [`IdentityError::Unidentifiable`] if the event has neither a non-empty id nor data.
    /// - [`IdentityError::TooDeep`], [`IdentityError::BadNumber`] or
    ///   [`IdentityError::NumberOutOfRange`] if `data` cannot be encoded for the hash (see
    ///   [`KeyScheme::hash`]).
    pub fn hash_with(&self, scheme: KeyScheme) -> Result<String, IdentityError> {
        if self.event_type.is_empty() {
            return Err(IdentityError::EmptyEventType);
        }
        let event_id = self.event_id.as_deref().filter(|id| !id.is_empty());
        // A number beyond an f64's range reads as null in `data`, but is data.
        let no_data = self.data.is_null()
            && self
                .data_text
                .as_ref()
                .is_none_or(|text| text.get().trim() == "null");
        if event_id.is_none() && no_data {
            return Err(IdentityError::Unidentifiable {
                event_type: self.event_type.clone(),
            });
        }
        scheme.hash_of(event_id, self.data_for_hash())
    }

    /// The hash of `data` alone, every number exact as the payload spells it: the payload
    /// fingerprint under [`IdentityRule::EventId`](crate::IdentityRule::EventId) and
    /// `Fields`.
    pub(crate) fn data_hash(&self) -> Result<String, IdentityError> {
        crate::identity::hash_of(None, self.data_for_hash())
    }

    /// The text [`KeyScheme::PythonV2`] hashes for this event, as the Python decorator
    /// writes it: `json.dumps({"event_id": ..., "data": ...}, sort_keys=True)`, or of
    /// `data` alone without a (non-empty) id; numbers as the payload spells them, read as
    /// CPython reads them. For comparing keys with the decorator's.
    ///
    /// # Errors
    ///
    /// [`IdentityError::TooDeep`] or [`IdentityError::BadNumber`] if `data` cannot be
    /// written (see [`python_json`](crate::python_json)).
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::EventEnvelope;
    /// let e = EventEnvelope::from_slice(
    ///     br#"{"event_type":"t","event_id":"e-1","data":{"n":1e2,"big":123456789012345678901}}"#,
    /// )?;
    /// assert_eq!(
    ///     e.python_v2_hash_input()?,
    ///     r#"{"data": {"big": 123456789012345678901, "n": 100.0}, "event_id": "e-1"}"#
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn python_v2_hash_input(&self) -> Result<String, IdentityError> {
        let event_id = self.event_id.as_deref().filter(|id| !id.is_empty());
        crate::scheme::python_v2_input(event_id, self.data_for_hash())
    }

    /// `data` for a hash: with the payload's text of it where `from_slice` kept one.
    fn data_for_hash(&self) -> Data<'_> {
        match &self.data_text {
            Some(text) => Data::Text {
                text: text.get(),
                value: &self.data,
            },
            None => Data::Value(&self.data),
        }
    }
}

/// The value of `data`, given as `raw` in the payload `text`. serde_json has checked its
/// syntax; a number beyond the range of an `f64` becomes `null`
/// ([`walk::value_beyond_f64`]); any other error (nesting too deep, a lone surrogate) is
/// reported where it lies in the whole payload.
fn parse_data(text: &str, raw: &RawValue) -> Result<Value, EnvelopeError> {
    let error = match serde_json::from_str::<Value>(raw.get()) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    if error.to_string().starts_with("number out of range") {
        if let Some(value) = walk::value_beyond_f64(raw.get()) {
            return Ok(value);
        }
    }
    // Read the whole payload again for the error's place in it.
    Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
        Err(e) if e.classify() != serde_json::error::Category::Data => json_error(&e),
        _ => json_error(&error),
    })
}

fn optional_string(
    fields: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, EnvelopeError> {
    match fields.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong_type(field, "a string", &other)),
    }
}

fn wrong_type(field: &'static str, expected: &'static str, found: &Value) -> EnvelopeError {
    EnvelopeError::WrongType {
        field,
        expected,
        found: kind(found),
    }
}

pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn json_error(e: &serde_json::Error) -> EnvelopeError {
    // serde_json appends " at line L column C" to its message; keep only the cause.
    let full = e.to_string();
    let message = match full.rfind(" at line ") {
        Some(at) => full[..at].to_owned(),
        None => full,
    };
    // A data error can only come from `TopLevel`'s own check: a field given twice.
    if e.classify() == serde_json::error::Category::Data {
        return EnvelopeError::Malformed { message };
    }
    EnvelopeError::InvalidJson {
        message,
        line: e.line(),
        column: e.column(),
    }
}

/// The top level of a payload, read in one pass: an object's fields (a field given twice
/// is an error, where a parsed `Map` would silently keep the last one), or the kind of
/// JSON found instead.
enum TopLevel<'a> {
    /// The fields but `data`, and the text of `data` if it was given.
    Object(Map<String, Value>, Option<&'a RawValue>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopLevel<'de>, A::Error> {
                let mut fields = Map::new();
                let mut data: Option<&'de RawValue> = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let repeated = if key == "data" {
                        data.replace(map.next_value::<&'de RawValue>()?).is_some()
                    } else {
                        let value = map.next_value::<Value>()?;
                        fields.contains_key(key.as_ref())
                            || fields.insert(key.to_string(), value).is_some()
                    };
                    if repeated {
                        return Err(serde::de::Error::custom(format_args!(
                            "field `{key}` appears more than once"
                        )));
                    }
                }
                Ok(TopLevel::Object(fields, data))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<TopLevel<'de>, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(TopLevel::Other("array"))
            }
            fn visit_str<E>(self, _: &str) -> Result<TopLevel<'de>, E> {
                Ok(TopLevel::Other("string"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<TopLevel<'de>, E> {
                Ok(TopLevel::Other("number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<TopLevel<'de>, E> {
                Ok(TopLevel::Other("number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<TopLevel<'de>, E> {
                Ok(TopLevel::Other("number"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<TopLevel<'de>, E> {
                Ok(TopLevel::Other("boolean"))
            }
            fn visit_unit<E>(self) -> Result<TopLevel<'de>, E> {
                Ok(TopLevel::Other("null"))
            }
        }
        d.deserialize_any(V)
    }
}
