//! The event envelope consumers receive, and its checked parser.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{EnvelopeError, IdentityError};
use crate::scheme::KeyScheme;

/// An event as it travels on the wire: identity fields, routing fields and the payload.
///
/// Parse one with [`EventEnvelope::from_slice`], which checks every field's type and names
/// the field that is wrong; or build one with [`EventEnvelope::new`].
///
/// ```
/// use eventonce_core::EventEnvelope;
/// let envelope = EventEnvelope::from_slice(
///     br#"{"event_id":"e-1","event_type":"orders.created.v1","data":{"order":42}}"#,
/// )?;
/// assert_eq!(envelope.event_type, "orders.created.v1");
/// assert_eq!(envelope.data["order"], 42);
/// # Ok::<(), eventonce_core::EnvelopeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The payload: any JSON (`null` when absent).
    #[serde(default)]
    pub data: Value,
    /// Free-form metadata (tracing headers, ...), not part of the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

impl EventEnvelope {
    /// An envelope with a type and data, and every optional field empty.
    ///
    /// ```
    /// use eventonce_core::EventEnvelope;
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
    /// Empty input, bytes that are not UTF-8, invalid JSON, JSON that is not an object, a
    /// missing, empty or non-string `event_type` and a field of the wrong type each give
    /// their own [`EnvelopeError`]. Unknown fields are ignored. Never panics.
    ///
    /// # Errors
    ///
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
    /// use eventonce_core::{EnvelopeError, EventEnvelope};
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
        if bytes.is_empty() {
            return Err(EnvelopeError::Empty);
        }
        let text = std::str::from_utf8(bytes).map_err(|e| EnvelopeError::NotUtf8 {
            valid_up_to: e.valid_up_to(),
        })?;
        if text.trim().is_empty() {
            return Err(EnvelopeError::Empty);
        }
        match serde_json::from_str::<TopLevel>(text).map_err(|e| json_error(&e))? {
            TopLevel::Object(fields) => Self::from_map(fields),
            TopLevel::Other(found) => Err(EnvelopeError::NotAnObject { found }),
        }
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
    /// use eventonce_core::EventEnvelope;
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
        if event_id.is_none() && self.data.is_null() {
            return Err(IdentityError::Unidentifiable {
                event_type: self.event_type.clone(),
            });
        }
        scheme.hash(event_id, &self.data)
    }
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
enum TopLevel {
    Object(Map<String, Value>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TopLevel;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopLevel, A::Error> {
                let mut fields = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<Value>()?;
                    if fields.contains_key(&key) {
                        return Err(serde::de::Error::custom(format_args!(
                            "field `{key}` appears more than once"
                        )));
                    }
                    fields.insert(key, value);
                }
                Ok(TopLevel::Object(fields))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<TopLevel, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(TopLevel::Other("array"))
            }
            fn visit_str<E>(self, _: &str) -> Result<TopLevel, E> {
                Ok(TopLevel::Other("string"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<TopLevel, E> {
                Ok(TopLevel::Other("number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<TopLevel, E> {
                Ok(TopLevel::Other("number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<TopLevel, E> {
                Ok(TopLevel::Other("number"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<TopLevel, E> {
                Ok(TopLevel::Other("boolean"))
            }
            fn visit_unit<E>(self) -> Result<TopLevel, E> {
                Ok(TopLevel::Other("null"))
            }
        }
        d.deserialize_any(V)
    }
}
