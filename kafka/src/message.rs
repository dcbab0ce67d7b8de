//! A consumed Kafka message turned into an [`EventEnvelope`]: the body, and the `event_id`
//! and `event_type` headers when present.

use eventonce_core::config::defaults::DEFAULT_MAX_PAYLOAD_BYTES;
use eventonce_core::{EnvelopeError, EventEnvelope, IdentityError, KeyScheme};
use rdkafka::message::{Headers, Message};

/// The header that may carry the event's id.
pub const EVENT_ID_HEADER: &str = "event_id";
/// The header that may carry the event's type.
pub const EVENT_TYPE_HEADER: &str = "event_type";

/// Where a message sits in the log: enough to find it again, or to dead-letter it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessagePosition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The message's offset.
    pub offset: i64,
}

impl MessagePosition {
    /// The position of `message`.
    pub fn of(message: &impl Message) -> Self {
        MessagePosition {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        }
    }

    /// The same partition, at `offset`.
    pub fn at(&self, offset: i64) -> Self {
        MessagePosition {
            topic: self.topic.clone(),
            partition: self.partition,
            offset,
        }
    }
}

impl std::fmt::Display for MessagePosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// Why a message could not be turned into an identifiable event.
///
/// Such a message is never skipped silently: [`envelope_from_message`] and
/// [`KafkaGuard::process`](crate::KafkaGuard::process) return this error, commit nothing,
/// and leave the decision to the caller (dead-letter it and commit past it with
/// [`commit_past`](crate::commit_past), or stop).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessageError {
    /// The message has no value (a tombstone, or a producer that sent only a key).
    #[error("message {position} has no payload")]
    NoPayload {
        /// The message.
        position: MessagePosition,
    },
    /// The value is not a valid event envelope (bad JSON, a wrong field type, ...).
    #[error("message {position} is not a valid event envelope: {source}")]
    Envelope {
        /// The message.
        position: MessagePosition,
        /// What is wrong with it.
        #[source]
        source: EnvelopeError,
    },
    /// An `event_id` or `event_type` header has no value, an empty one, or one that is
    /// not UTF-8.
    #[error("message {position}: header {header:?} is {problem}")]
    InvalidHeader {
        /// The message.
        position: MessagePosition,
        /// The header's name.
        header: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A header names another id or type than the body does (or than another header of
    /// the same name). The message is rejected rather than guessed at: picking either
    /// value could give a key that another delivery of the same event does not share.
    #[error(
        "message {position}: header {header:?} says {header_value:?} but the {other} says {other_value:?}"
    )]
    HeaderMismatch {
        /// The message.
        position: MessagePosition,
        /// The header's name.
        header: &'static str,
        /// The header's value.
        header_value: String,
        /// What it disagrees with: `"body"` or `"same header given again"`.
        other: &'static str,
        /// The other value (`None`: the body has none).
        other_value: Option<String>,
    },
    /// The envelope parsed but cannot be identified (no `event_id` and no `data`).
    #[error("message {position} cannot be identified: {source}")]
    Unidentifiable {
        /// The message.
        position: MessagePosition,
        /// Why.
        #[source]
        source: IdentityError,
    },
    /// The caller's identify function of
    /// [`KafkaGuard::process_identified`](crate::KafkaGuard::process_identified) could not
    /// build an identity for the message.
    #[error("message {position} cannot be identified: {reason}")]
    NotIdentified {
        /// The message.
        position: MessagePosition,
        /// What the identify function said (at most 200 characters of it).
        reason: String,
    },
    /// The guard refused the event for good, without running its handler: its payload
    /// conflicts with the one recorded under its identity (`GuardError::Conflict`), or it
    /// is older than its maximum age (`GuardError::Stale`). Redelivering it gives the same
    /// answer, so the helper never retries it and does not commit it: dead-letter it (a
    /// stale event skipped by `StalePolicy::Skip` needs no dead letter) and
    /// [`commit_past`](crate::commit_past) it.
    #[error("message {position} refused by the guard: {reason}")]
    Refused {
        /// The message.
        position: MessagePosition,
        /// The guard's answer.
        reason: String,
        /// A stale event skipped by `StalePolicy::Skip` (nothing to dead-letter).
        skipped: bool,
    },
}

impl MessageError {
    /// The message this error is about.
    pub fn position(&self) -> &MessagePosition {
        match self {
            MessageError::NoPayload { position }
            | MessageError::Envelope { position, .. }
            | MessageError::InvalidHeader { position, .. }
            | MessageError::HeaderMismatch { position, .. }
            | MessageError::Unidentifiable { position, .. }
            | MessageError::NotIdentified { position, .. }
            | MessageError::Refused { position, .. } => position,
        }
    }
}

/// The value of header `name`, if the message carries it; every occurrence must agree.
fn header_value(
    message: &impl Message,
    name: &'static str,
    position: &MessagePosition,
) -> Result<Option<String>, MessageError> {
    let Some(headers) = message.headers() else {
        return Ok(None);
    };
    let mut found: Option<String> = None;
    for header in headers.iter().filter(|h| h.key == name) {
        let invalid = |problem| MessageError::InvalidHeader {
            position: position.clone(),
            header: name,
            problem,
        };
        let bytes = header.value.ok_or_else(|| invalid("without a value"))?;
        let text = std::str::from_utf8(bytes).map_err(|_| invalid("not UTF-8"))?;
        if text.is_empty() {
            return Err(invalid("empty"));
        }
        match &found {
            Some(earlier) if earlier != text => {
                return Err(MessageError::HeaderMismatch {
                    position: position.clone(),
                    header: name,
                    header_value: text.to_owned(),
                    other: "same header given again",
                    other_value: Some(earlier.clone()),
                })
            }
            Some(_) => {}
            None => found = Some(text.to_owned()),
        }
    }
    Ok(found)
}

/// Merges a header into the body's field: the header fills a field the body lacks, and
/// must equal it where the body has it.
fn merge(
    body: &mut Option<String>,
    header: Option<String>,
    name: &'static str,
    position: &MessagePosition,
) -> Result<(), MessageError> {
    let Some(header) = header else {
        return Ok(());
    };
    match body.as_deref() {
        None => *body = Some(header),
        Some(own) if own == header => {}
        Some(own) => {
            return Err(MessageError::HeaderMismatch {
                position: position.clone(),
                header: name,
                header_value: header,
                other: "body",
                other_value: Some(own.to_owned()),
            })
        }
    }
    Ok(())
}

/// Turns a consumed message into an [`EventEnvelope`].
///
/// The value is parsed with [`EventEnvelope::from_slice`]. The `event_id` and
/// `event_type` headers, when present, are merged into it:
///
/// - a header fills a field the body lacks (a body without `event_type` is accepted if the
///   header gives it; a body without `event_id` takes the header's id);
/// - where the body has the field too, the two must be equal, else
///   [`MessageError::HeaderMismatch`];
/// - a header without a value, with an empty value or with bytes that are not UTF-8 is
///   [`MessageError::InvalidHeader`]; the same header given twice with different values is
///   a mismatch.
///
/// So an event gets the same key whether its producer put the id and type in the body,
/// in headers, or in both: the key depends on the merged fields only.
///
/// A message without a value, with a value that is not an envelope, or whose envelope
/// cannot be identified (neither `event_id` nor `data`) is an error, never skipped.
/// Never panics.
///
/// This is the reading of the default [`KeyScheme::Eventonce`];
/// [`KafkaGuard`](crate::KafkaGuard) reads with its guard's scheme through
/// [`envelope_from_message_with`].
///
/// # Errors
///
/// - [`MessageError::InvalidHeader`] if an `event_id` or `event_type` header has no
///   value, an empty one or one that is not UTF-8.
/// - [`MessageError::NoPayload`] if the message has no value or an empty one.
/// - [`MessageError::Envelope`] if the value is not a valid envelope.
/// - [`MessageError::HeaderMismatch`] if a header disagrees with the body or with another
///   header of the same name.
/// - [`MessageError::Unidentifiable`] if the merged envelope has no identity (an empty
///   event type, or neither an id nor data) or its data cannot be encoded.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; pub mod kafka { pub use eventonce_kafka::*; } pub mod memory { pub use eventonce_memory::*; } }
/// use eventonce::kafka::envelope_from_message;
/// use eventonce::kafka::rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
///
/// let body = br#"{"event_type":"orders.created.v1","data":{"order":42}}"#.to_vec();
/// let headers = OwnedHeaders::new().insert(Header { key: "event_id", value: Some("e-42") });
/// let message = OwnedMessage::new(
///     Some(body), None, "orders".into(), Timestamp::NotAvailable, 0, 7, Some(headers),
/// );
/// let envelope = envelope_from_message(&message)?;
/// assert_eq!(envelope.event_id.as_deref(), Some("e-42"));
/// # Ok::<(), eventonce::kafka::MessageError>(())
/// ```
pub fn envelope_from_message(message: &impl Message) -> Result<EventEnvelope, MessageError> {
    envelope_from_message_with(message, KeyScheme::Eventonce)
}

/// Turns a consumed message into an [`EventEnvelope`] for a guard keyed with `scheme`.
///
/// With [`KeyScheme::Eventonce`] this is [`envelope_from_message`]. With
/// [`KeyScheme::PythonV2`] the envelope is the message's value alone, as the Python
/// decorator reads it: the `event_id` and `event_type` headers are not read (a header id
/// would change the key from the one the decorator computes for the same message), and a
/// message whose event type the scheme refuses (`:`, a glob or hash-tag character,
/// whitespace, a control character) is [`MessageError::Unidentifiable`], like one
/// without identity.
///
/// # Errors
///
/// With [`KeyScheme::Eventonce`], those of [`envelope_from_message`]. With
/// [`KeyScheme::PythonV2`]: [`MessageError::NoPayload`] if the message has no value or an
/// empty one, [`MessageError::Envelope`] if the value is not a valid envelope, and
/// [`MessageError::Unidentifiable`] if the envelope has no identity, its data cannot be
/// encoded or the scheme refuses its event type.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; pub mod kafka { pub use eventonce_kafka::*; } pub mod memory { pub use eventonce_memory::*; } }
/// use eventonce::KeyScheme;
/// use eventonce::kafka::envelope_from_message_with;
/// use eventonce::kafka::rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
///
/// let body = br#"{"event_type":"orders.created.v1","data":{"order":42}}"#.to_vec();
/// let headers = OwnedHeaders::new().insert(Header { key: "event_id", value: Some("e-42") });
/// let message = OwnedMessage::new(
///     Some(body), None, "orders".into(), Timestamp::NotAvailable, 0, 7, Some(headers),
/// );
/// let envelope = envelope_from_message_with(&message, KeyScheme::PythonV2)?;
/// assert_eq!(envelope.event_id, None);
/// # Ok::<(), eventonce::kafka::MessageError>(())
/// ```
pub fn envelope_from_message_with(
    message: &impl Message,
    scheme: KeyScheme,
) -> Result<EventEnvelope, MessageError> {
    envelope_from_message_within(message, scheme, DEFAULT_MAX_PAYLOAD_BYTES)
}

/// [`envelope_from_message_with`] with a payload limit of `max_payload_bytes` (the
/// guard's [`max_payload_bytes`](eventonce_core::IdempotencyConfig::max_payload_bytes);
/// [`KafkaGuard`](crate::KafkaGuard) passes it): a longer value is
/// [`MessageError::Envelope`] with
/// [`EnvelopeError::TooLarge`], refused before parsing.
///
/// # Errors
///
/// Those of [`envelope_from_message_with`].
pub fn envelope_from_message_within(
    message: &impl Message,
    scheme: KeyScheme,
    max_payload_bytes: usize,
) -> Result<EventEnvelope, MessageError> {
    let position = MessagePosition::of(message);
    if scheme == KeyScheme::PythonV2 {
        return body_alone(message, position, scheme, max_payload_bytes);
    }
    let header_id = header_value(message, EVENT_ID_HEADER, &position)?;
    let header_type = header_value(message, EVENT_TYPE_HEADER, &position)?;
    let payload = match message.payload() {
        Some(p) if !p.is_empty() => p,
        _ => return Err(MessageError::NoPayload { position }),
    };
    let parsed = match EventEnvelope::from_slice_within(payload, max_payload_bytes) {
        Ok(envelope) => Ok(envelope),
        // The type may come from the header alone: parse again with it filled in.
        Err(EnvelopeError::MissingField {
            field: "event_type",
        }) if header_type.is_some() => with_header_type(payload, header_type.as_deref()),
        Err(e) => Err(e),
    };
    let mut envelope = parsed.map_err(|source| MessageError::Envelope {
        position: position.clone(),
        source,
    })?;

    let mut event_type = Some(std::mem::take(&mut envelope.event_type));
    merge(&mut event_type, header_type, EVENT_TYPE_HEADER, &position)?;
    envelope.event_type = event_type.unwrap_or_default();
    // An empty id in the body counts as none, as it does for the identity.
    if envelope.event_id.as_deref() == Some("") {
        envelope.event_id = None;
    }
    merge(
        &mut envelope.event_id,
        header_id,
        EVENT_ID_HEADER,
        &position,
    )?;

    if let Err(source) = identifiable(&envelope, scheme) {
        return Err(MessageError::Unidentifiable { position, source });
    }
    Ok(envelope)
}

/// Whether `scheme` can key `envelope`: it has an identity and an event type the scheme
/// keeps inside the namespace.
fn identifiable(envelope: &EventEnvelope, scheme: KeyScheme) -> Result<(), IdentityError> {
    envelope.hash_with(scheme)?;
    scheme.event_type_segment(&envelope.event_type)?;
    Ok(())
}

/// The envelope of the message's value alone, headers unread.
fn body_alone(
    message: &impl Message,
    position: MessagePosition,
    scheme: KeyScheme,
    max_payload_bytes: usize,
) -> Result<EventEnvelope, MessageError> {
    let payload = match message.payload() {
        Some(p) if !p.is_empty() => p,
        _ => return Err(MessageError::NoPayload { position }),
    };
    let envelope = match EventEnvelope::from_slice_within(payload, max_payload_bytes) {
        Ok(envelope) => envelope,
        Err(source) => return Err(MessageError::Envelope { position, source }),
    };
    if let Err(source) = identifiable(&envelope, scheme) {
        return Err(MessageError::Unidentifiable { position, source });
    }
    Ok(envelope)
}

/// Parses a body that lacks `event_type`, taking the type from the header.
fn with_header_type(
    payload: &[u8],
    event_type: Option<&str>,
) -> Result<EventEnvelope, EnvelopeError> {
    match event_type {
        Some(t) => EventEnvelope::from_slice_or_type(payload, t),
        None => EventEnvelope::from_slice(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
    use serde_json::json;

    fn message(body: Option<&[u8]>, headers: &[(&str, Option<&[u8]>)]) -> OwnedMessage {
        let headers = if headers.is_empty() {
            None
        } else {
            let mut h = OwnedHeaders::new();
            for (key, value) in headers {
                h = h.insert(Header { key, value: *value });
            }
            Some(h)
        };
        OwnedMessage::new(
            body.map(<[u8]>::to_vec),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            3,
            11,
            headers,
        )
    }

    fn key(envelope: &EventEnvelope) -> String {
        let config = eventonce_core::IdempotencyConfig::builder("svc")
            .build()
            .expect("config");
        config.generate_key(
            &envelope.event_type,
            &envelope.deterministic_hash().expect("hash"),
        )
    }

    const FULL: &[u8] = br#"{"event_id":"e-1","event_type":"orders.created.v1","data":{"n":1}}"#;

    #[test]
    fn body_alone_is_parsed() {
        let e = envelope_from_message(&message(Some(FULL), &[])).expect("envelope");
        assert_eq!(e.event_id.as_deref(), Some("e-1"));
        assert_eq!(e.event_type, "orders.created.v1");
        assert_eq!(e.data, json!({"n": 1}));
    }

    #[test]
    fn headers_in_place_of_body_fields_give_the_same_key() {
        let from_body = envelope_from_message(&message(Some(FULL), &[])).expect("body");
        let from_headers = envelope_from_message(&message(
            Some(br#"{"data":{"n":1}}"#),
            &[
                ("event_id", Some(b"e-1")),
                ("event_type", Some(b"orders.created.v1")),
            ],
        ))
        .expect("headers");
        let both = envelope_from_message(&message(
            Some(FULL),
            &[
                ("event_id", Some(b"e-1")),
                ("event_type", Some(b"orders.created.v1")),
            ],
        ))
        .expect("both");
        assert_eq!(key(&from_body), key(&from_headers));
        assert_eq!(key(&from_body), key(&both));
        assert_eq!(from_body, from_headers);
    }

    #[test]
    fn an_id_header_fills_an_empty_body_id() {
        let e = envelope_from_message(&message(
            Some(br#"{"event_id":"","event_type":"orders.created.v1","data":{"n":1}}"#),
            &[("event_id", Some(b"e-1"))],
        ))
        .expect("envelope");
        assert_eq!(e.event_id.as_deref(), Some("e-1"));
    }

    #[test]
    fn a_header_that_disagrees_with_the_body_is_an_error() {
        let err = envelope_from_message(&message(Some(FULL), &[("event_id", Some(b"e-2"))]))
            .expect_err("mismatch");
        assert!(
            matches!(&err, MessageError::HeaderMismatch { header: "event_id", header_value, other: "body", other_value, .. }
                if header_value == "e-2" && other_value.as_deref() == Some("e-1")),
            "{err:?}"
        );
        let err = envelope_from_message(&message(
            Some(FULL),
            &[("event_type", Some(b"orders.deleted.v1"))],
        ))
        .expect_err("mismatch");
        assert!(matches!(
            err,
            MessageError::HeaderMismatch {
                header: "event_type",
                ..
            }
        ));
        assert_eq!(err.position().offset, 11);
        assert!(err.to_string().contains("orders.deleted.v1"), "{err}");
    }

    #[test]
    fn a_header_given_twice_with_different_values_is_an_error() {
        let err = envelope_from_message(&message(
            Some(br#"{"event_type":"t","data":1}"#),
            &[("event_id", Some(b"a")), ("event_id", Some(b"b"))],
        ))
        .expect_err("mismatch");
        assert!(matches!(
            err,
            MessageError::HeaderMismatch {
                other: "same header given again",
                ..
            }
        ));
        // The same value twice is fine.
        envelope_from_message(&message(
            Some(br#"{"event_type":"t","data":1}"#),
            &[("event_id", Some(b"a")), ("event_id", Some(b"a"))],
        ))
        .expect("agreeing repeats");
    }

    #[test]
    fn invalid_headers_are_errors() {
        for (value, problem) in [
            (None, "without a value"),
            (Some(&b""[..]), "empty"),
            (Some(&b"\xff\xfe"[..]), "not UTF-8"),
        ] {
            let err = envelope_from_message(&message(Some(FULL), &[("event_id", value)]))
                .expect_err("invalid header");
            assert_eq!(
                err,
                MessageError::InvalidHeader {
                    position: MessagePosition {
                        topic: "t".into(),
                        partition: 3,
                        offset: 11
                    },
                    header: "event_id",
                    problem
                }
            );
        }
    }

    #[test]
    fn other_headers_are_ignored() {
        let e = envelope_from_message(&message(Some(FULL), &[("traceparent", Some(b"00-x"))]))
            .expect("envelope");
        assert_eq!(e.event_id.as_deref(), Some("e-1"));
    }

    #[test]
    fn a_value_over_the_payload_limit_is_refused_unparsed_under_both_schemes() {
        for scheme in [KeyScheme::Eventonce, KeyScheme::PythonV2] {
            let limit = FULL.len() - 1;
            let err = envelope_from_message_within(&message(Some(FULL), &[]), scheme, limit)
                .expect_err("over the limit");
            assert!(
                matches!(
                    err,
                    MessageError::Envelope {
                        source: EnvelopeError::TooLarge { size, limit: l },
                        ..
                    } if size == FULL.len() && l == limit
                ),
                "{err:?}"
            );
            let within =
                envelope_from_message_within(&message(Some(FULL), &[]), scheme, FULL.len());
            assert!(within.is_ok(), "{within:?}");
        }
    }

    #[test]
    fn a_message_without_payload_is_an_error() {
        for body in [None, Some(&b""[..])] {
            let err = envelope_from_message(&message(body, &[("event_id", Some(b"e-1"))]))
                .expect_err("no payload");
            assert!(matches!(err, MessageError::NoPayload { .. }), "{err:?}");
        }
    }

    #[test]
    fn bad_json_and_bad_envelopes_are_errors() {
        for body in [&b"{not json"[..], b"[1,2]", br#"{"event_type":7}"#, b"\xff"] {
            let err = envelope_from_message(&message(Some(body), &[])).expect_err("bad");
            assert!(matches!(err, MessageError::Envelope { .. }), "{err:?}");
        }
        // Bad JSON stays an error even when headers could identify the event.
        let err = envelope_from_message(&message(
            Some(b"{oops"),
            &[("event_id", Some(b"e")), ("event_type", Some(b"t"))],
        ))
        .expect_err("bad json");
        assert!(matches!(err, MessageError::Envelope { .. }), "{err:?}");
    }

    #[test]
    fn a_body_without_type_and_without_header_is_an_error() {
        let err =
            envelope_from_message(&message(Some(br#"{"data":1}"#), &[])).expect_err("no type");
        assert!(matches!(
            err,
            MessageError::Envelope {
                source: EnvelopeError::MissingField {
                    field: "event_type"
                },
                ..
            }
        ));
    }

    #[test]
    fn an_event_without_id_and_data_is_unidentifiable() {
        let err = envelope_from_message(&message(Some(br#"{"event_type":"t"}"#), &[]))
            .expect_err("unidentifiable");
        assert!(
            matches!(err, MessageError::Unidentifiable { .. }),
            "{err:?}"
        );
        // The id header identifies it.
        envelope_from_message(&message(
            Some(br#"{"event_type":"t"}"#),
            &[("event_id", Some(b"e"))],
        ))
        .expect("identified by the header");
    }

    #[test]
    fn python_v2_reads_the_body_alone_as_the_decorator_does() {
        let config = eventonce_core::IdempotencyConfig::builder("svc")
            .key_scheme(KeyScheme::PythonV2)
            .build()
            .expect("config");
        let body: &[u8] = br#"{"event_type":"orders.created.v1","data":{"n":1}}"#;
        let plain = envelope_from_message_with(&message(Some(body), &[]), KeyScheme::PythonV2)
            .expect("envelope");
        // Headers that the default scheme would merge (or refuse as a mismatch) are not
        // read: the decorator keys the body alone.
        for headers in [
            &[("event_id", Some(&b"e-9"[..]))][..],
            &[("event_type", Some(&b"other.v1"[..]))][..],
            &[("event_id", None)][..],
        ] {
            let with =
                envelope_from_message_with(&message(Some(body), headers), KeyScheme::PythonV2)
                    .expect("envelope");
            assert_eq!(with, plain);
            assert_eq!(config.event_key(&with), config.event_key(&plain));
        }
        assert!(envelope_from_message(&message(Some(body), &[("event_id", None)])).is_err());
    }

    #[test]
    fn python_v2_refuses_types_that_would_leave_the_namespace() {
        let err = envelope_from_message_with(
            &message(Some(br#"{"event_type":"orders:*","data":{"n":1}}"#), &[]),
            KeyScheme::PythonV2,
        )
        .expect_err("refused");
        assert!(
            matches!(
                err,
                MessageError::Unidentifiable {
                    source: IdentityError::EventTypeOutsideNamespace { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        // The default scheme escapes the same type and keys it.
        envelope_from_message_with(
            &message(Some(br#"{"event_type":"orders:*","data":{"n":1}}"#), &[]),
            KeyScheme::Eventonce,
        )
        .expect("escaped");
        let err = envelope_from_message_with(&message(None, &[]), KeyScheme::PythonV2)
            .expect_err("no payload");
        assert!(matches!(err, MessageError::NoPayload { .. }), "{err:?}");
    }
}
