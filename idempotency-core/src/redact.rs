//! Connection URLs in messages, without their passwords.

/// `url` with its password replaced by `***`, for error messages and logs.
///
/// Masked: the password of the user information (`postgres://app:***@db/app`); for Redis
/// URLs (`redis`, `rediss`, `valkey`, `valkeys`), a user information without `:` as a
/// whole (`redis://***@host`), since some clients read it as a bare password; and the
/// value of every query parameter whose name contains `password`
/// (`?sslpassword=***`). Text that is not a URL is shown as it is only when it cannot
/// hold a password (no `@`, `:` or `=` in it), else as `<unparsable url>`.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::backend::redact_url;
/// assert_eq!(redact_url("redis://:s3cret@h:6379/0"), "redis://:***@h:6379/0");
/// assert_eq!(redact_url("postgres://app:pw@db:5432/app"), "postgres://app:***@db:5432/app");
/// assert_eq!(redact_url("postgres://app@db/app?password=pw"), "postgres://app@db/app?password=***");
/// assert_eq!(redact_url("not a url"), "not a url");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        if url.contains(['@', ':', '=']) {
            return "<unparsable url>".to_owned();
        }
        return url.to_owned();
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let masked = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None if is_redis_scheme(scheme) => "***".to_owned(),
                None => userinfo.to_owned(),
            };
            format!("{masked}@{host}")
        }
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{}", redact_query(path))
}

fn is_redis_scheme(scheme: &str) -> bool {
    matches!(
        scheme.to_ascii_lowercase().as_str(),
        "redis" | "rediss" | "valkey" | "valkeys"
    )
}

/// The path with the values of password-like query parameters masked.
fn redact_query(path: &str) -> String {
    let Some((before, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _)) if name.to_ascii_lowercase().contains("password") => {
                format!("{name}=***")
            }
            _ => param.to_owned(),
        })
        .collect();
    let mut out = format!("{before}?{}", params.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_appear_in_redacted_urls() {
        assert_eq!(
            redact_url("redis://:s3cret@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(
            redact_url("rediss://user:s3cret@h:6380"),
            "rediss://user:***@h:6380"
        );
        assert_eq!(redact_url("redis://user@h"), "redis://***@h");
        assert_eq!(redact_url("redis://h:1/2"), "redis://h:1/2");
        assert!(!redact_url("redis://u:p@ss:w0rd@h").contains("w0rd"));
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        assert_eq!(
            redact_url("postgresql://app:pw@db?sslmode=require&PassWord=pw#x"),
            "postgresql://app:***@db?sslmode=require&PassWord=***#x"
        );
        assert_eq!(
            redact_url("postgres://db/app?sslpassword=pw&user=a"),
            "postgres://db/app?sslpassword=***&user=a"
        );
    }

    #[test]
    fn text_that_is_not_a_url_is_shown_only_when_it_cannot_hold_a_password() {
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("nonsense"), "nonsense");
        for hidden in ["user:pw@host", "host=db password=pw", "pw@host"] {
            assert_eq!(redact_url(hidden), "<unparsable url>");
        }
    }
}

/// `text` cut to at most `max` characters, with a marker of what was cut, for fields of
/// errors and logs that come from events.
pub(crate) fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}… ({} bytes in all)", &text[..end], text.len()),
    }
}
