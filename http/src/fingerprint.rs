//! The key of a request and the fingerprint of what it asks.

use http::request::Parts;

use crate::layer::MAX_KEY_LENGTH;

/// The `Idempotency-Key` of a request: `Ok(None)` without one, `Err` with the reason for a
/// key that cannot be used. The draft's form is a structured-field string
/// (`"8e03978e-40d5-43e8-bc93-6894a57f9324"`); a bare token is accepted too.
pub(crate) fn key_of(parts: &Parts) -> Result<Option<String>, &'static str> {
    let mut values = parts.headers.get_all(crate::IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Idempotency-Key header");
    }
    let text = value
        .to_str()
        .map_err(|_| "the Idempotency-Key is not visible ASCII")?
        .trim();
    let key = match text.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or("the Idempotency-Key string is not closed")?,
        None => text,
    };
    if key.is_empty() {
        return Err("the Idempotency-Key is empty");
    }
    if key.len() > MAX_KEY_LENGTH {
        return Err("the Idempotency-Key is longer than 255 bytes");
    }
    if key.contains(['"', '\\']) {
        return Err("the Idempotency-Key contains a quote or a backslash");
    }
    Ok(Some(key.to_owned()))
}

/// The bytes fingerprinted for a request: its method, path, query and body, each
/// length-prefixed so that no two requests share them.
pub(crate) fn fingerprint_input(parts: &Parts, body: &[u8]) -> Vec<u8> {
    let method = parts.method.as_str().as_bytes();
    let path = parts.uri.path().as_bytes();
    let query = parts.uri.query().unwrap_or("").as_bytes();
    let mut input = Vec::with_capacity(body.len() + method.len() + path.len() + query.len() + 32);
    for part in [method, path, query, body] {
        input.extend_from_slice(&(part.len() as u64).to_be_bytes());
        input.extend_from_slice(part);
    }
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(key: Option<&str>) -> Parts {
        let mut builder = http::Request::post("/orders?x=1");
        if let Some(key) = key {
            builder = builder.header("Idempotency-Key", key);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn keys_are_read_in_the_drafts_form_and_bare() {
        assert_eq!(key_of(&parts(None)), Ok(None));
        assert_eq!(key_of(&parts(Some("\"abc-1\""))), Ok(Some("abc-1".into())));
        assert_eq!(key_of(&parts(Some("abc-1"))), Ok(Some("abc-1".into())));
        for bad in ["\"\"", "\"open", "", &"k".repeat(256), "\"a\"b\""] {
            assert!(key_of(&parts(Some(bad))).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_tell_method_path_query_and_body_apart() {
        let base = parts(None);
        let a = fingerprint_input(&base, b"{}");
        let other_body = fingerprint_input(&base, b"{ }");
        let get = http::Request::get("/orders?x=1").body(()).expect("request");
        let other_method = fingerprint_input(&get.into_parts().0, b"{}");
        let q = http::Request::post("/orders?x=2")
            .body(())
            .expect("request");
        let other_query = fingerprint_input(&q.into_parts().0, b"{}");
        let p = http::Request::post("/orders/x=1")
            .body(())
            .expect("request");
        let other_path = fingerprint_input(&p.into_parts().0, b"{}");
        for other in [other_body, other_method, other_query, other_path] {
            assert_ne!(a, other);
        }
    }
}
