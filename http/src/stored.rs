//! A response as the guard stores it, and the responses the layer answers itself.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};

/// Headers of one connection, never stored nor replayed (RFC 9110 section 7.6.1), and the
/// length, which the replayed body sets again.
const NOT_STORED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// A response kept in the completed record: status, end-to-end headers, body (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl StoredResponse {
    /// The stored form of a response's head and body. Header values that are not visible
    /// ASCII are not kept.
    pub(crate) fn new(parts: &http::response::Parts, body: &[u8]) -> Self {
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| !NOT_STORED.contains(&name.as_str()))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        StoredResponse {
            status: parts.status.as_u16(),
            headers,
            body: STANDARD.encode(body),
        }
    }

    /// The response again, marked `Idempotent-Replayed: true` when `replayed`. A stored
    /// part that no longer parses (a record of another writer) is skipped.
    pub(crate) fn into_response<B: From<Bytes>>(self, replayed: bool) -> Response<B> {
        let body = STANDARD.decode(self.body.as_bytes()).unwrap_or_default();
        let mut response = Response::new(B::from(Bytes::from(body)));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.append(name, value);
            }
        }
        if replayed {
            headers.insert(
                HeaderName::from_static(crate::IDEMPOTENT_REPLAYED),
                HeaderValue::from_static("true"),
            );
        }
        response
    }
}

/// A response of the layer's own: `status` with a problem-details body saying `detail`
/// (RFC 9457), as the draft suggests.
pub(crate) fn problem<B: From<Bytes>>(status: StatusCode, detail: &str) -> Response<B> {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = format!(
        r#"{{"type":"about:blank","title":{},"status":{},"detail":{}}}"#,
        json_string(title),
        status.as_u16(),
        json_string(detail)
    );
    let mut response = Response::new(B::from(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_not_stored_and_a_replay_is_marked() {
        let response = Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .header("connection", "keep-alive")
            .header("transfer-encoding", "chunked")
            .header("x-order", "17")
            .body(())
            .expect("response");
        let (parts, ()) = response.into_parts();
        let stored = StoredResponse::new(&parts, b"\x00{\"id\":17}");
        let replay: Response<Bytes> = stored.into_response(true);
        assert_eq!(replay.status(), StatusCode::CREATED);
        let h = replay.headers();
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-order"], "17");
        assert_eq!(h[crate::IDEMPOTENT_REPLAYED], "true");
        assert!(h.get("connection").is_none() && h.get("transfer-encoding").is_none());
        assert_eq!(replay.body().as_ref(), b"\x00{\"id\":17}");
    }

    #[test]
    fn problems_are_json() {
        let r: Response<Bytes> = problem(StatusCode::CONFLICT, "a \"quoted\"\nline");
        let text = std::str::from_utf8(r.body()).expect("utf-8");
        assert_eq!(
            text,
            r#"{"type":"about:blank","title":"Conflict","status":409,"detail":"a \"quoted\"\u000aline"}"#
        );
    }
}
