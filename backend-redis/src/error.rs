//! Client errors as store errors: in words, with what to check, and with any password
//! masked.

use std::time::Duration;

use eventonce_core::StoreError;
use redis::RedisError;

use crate::connection::Endpoint;
use crate::server::UNFIT;

/// A client error as a store error, without anything that could hold credentials. A
/// response timeout stays a timeout, so that the guard's circuit breaker opens at once.
pub(crate) fn unavailable(context: &str, err: RedisError, timeout: Duration) -> StoreError {
    if err.is_timeout() {
        return StoreError::Timeout {
            operation: "redis command",
            timeout,
        };
    }
    let hint = match err.code() {
        Some("NOAUTH") => {
            "; the server wants a password: give it in the URL (redis://[user]:PASSWORD@host:port)"
        }
        Some("WRONGPASS") => "; check the user and password in the URL",
        Some("NOPERM") => "; the ACL user of the URL lacks a permission this command needs",
        Some("READONLY") => "; this is a read-only replica: point the URL at the primary",
        _ => "",
    };
    StoreError::Unavailable {
        message: format!("{context}: {err}{hint}"),
        source: Some(Box::new(err)),
    }
}

/// `err` with every occurrence of `password` masked.
pub(crate) fn scrubbed(err: StoreError, password: Option<&str>) -> StoreError {
    let Some(password) = password else {
        return err;
    };
    match err {
        StoreError::Unavailable { message, source } => StoreError::Unavailable {
            message: message.replace(password, "***"),
            source: source.map(|s| -> eventonce_core::BoxError {
                let text = s.to_string();
                if text.contains(password) {
                    text.replace(password, "***").into()
                } else {
                    s
                }
            }),
        },
        other => other,
    }
}

/// Why connecting failed, in words, and what to check.
fn explain_connect(err: &RedisError, endpoint: &Endpoint) -> String {
    let address = if endpoint.address.is_empty() {
        "the server"
    } else {
        endpoint.address.as_str()
    };
    let tls_hint = if endpoint.tls {
        "and that it serves TLS on that port (else use redis://)"
    } else {
        "and whether it only serves TLS (then use rediss://)"
    };
    let text = first_line(&err.to_string()).to_owned();
    let lower = text.to_ascii_lowercase();
    if err.is_connection_refusal() {
        return format!(
            "connection refused: nothing listens on {address}; check that Redis is running there and that the host and port are right"
        );
    }
    if err.is_timeout() {
        return format!(
            "no answer within {:?} (the connection was not accepted, or nothing answered on it); check the host and port, that {address} is a Redis server, {tls_hint}",
            endpoint.connection_timeout
        );
    }
    if err.kind() == redis::ErrorKind::Parse {
        return format!(
            "not a Redis server: {address} answered in another protocol, an HTTP response for one ({text}); is this the right port? Check it, {tls_hint}"
        );
    }
    if err.kind() == redis::ErrorKind::AuthenticationFailed || err.code() == Some("WRONGPASS") {
        return format!("authentication failed ({text}); check the user and password in the URL");
    }
    if err.code() == Some("NOAUTH") || lower.contains("noauth") {
        return format!(
            "the server wants a password ({text}); give it in the URL: redis://[user]:PASSWORD@host:port"
        );
    }
    if ["handshake", "certificate", "tls", "ssl"]
        .iter()
        .any(|w| lower.contains(w))
    {
        return format!(
            "TLS handshake failed ({text}); check that {address} serves TLS, and that its certificate is issued for that host by an authority this client trusts (RedisOptions::tls_root_cert)"
        );
    }
    if err.is_connection_dropped() {
        return format!(
            "the server closed the connection during the handshake ({text}): {address} is probably not a Redis server; is this the right port? Check it, {tls_hint}"
        );
    }
    match err.category() {
        "" => text,
        category => format!("{category} ({text})"),
    }
}

/// A failed connection attempt as a store error: the target, the cause in words and what
/// to check, with the password masked.
pub(crate) fn connect_error(endpoint: &Endpoint, err: RedisError) -> StoreError {
    let unfit = err.kind() == redis::ErrorKind::Client && err.to_string().starts_with(UNFIT);
    let message = match err.detail() {
        Some(why) if unfit => format!("refusing the Redis server at {}: {why}", endpoint.target),
        _ => format!(
            "cannot connect to Redis at {}: {}",
            endpoint.target,
            explain_connect(&err, endpoint)
        ),
    };
    scrubbed(
        StoreError::Unavailable {
            message,
            source: Some(Box::new(err)),
        },
        endpoint.password.as_deref(),
    )
}

/// The first line of a client error (a parse error goes on to list every unexpected byte).
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default().trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventonce_core::backend::password_of;

    #[test]
    fn errors_are_scrubbed_of_the_password() {
        assert_eq!(password_of("redis://u:pw@h:1/0"), Some("pw"));
        assert_eq!(password_of("redis://u@h"), None);
        assert_eq!(password_of("redis://h"), None);
        let err = StoreError::Unavailable {
            message: "auth failed for pw-123".into(),
            source: Some("bad pw-123".into()),
        };
        let text = format!("{:?}", scrubbed(err, password_of("redis://:pw-123@h")));
        assert!(!text.contains("pw-123"), "{text}");
    }
}
