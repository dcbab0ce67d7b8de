//! Connection URLs in messages, without their passwords.

/// `url` with its password replaced by `***`, for error messages and logs.
///
/// Masked: the password of the user information (`postgres://app:***@db/app`); for Redis
/// URLs (`redis`, `rediss`, `valkey`, `valkeys`), a user information without `:` as a
/// whole (`redis://***@host`), since some clients read it as a bare password; and the
/// value of the first query parameter whose name contains `password` (`?sslpassword=***`)
/// with every parameter after it (`&***`: an unescaped `&` may be part of the value), and a
/// fragment (`#***`), which a connection URL has no use for
/// but an unescaped password may hold. Text that is not a URL is shown as it is only when it cannot
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
        return not_a_url(url);
    };
    let (userinfo, host_and_path) = split_userinfo(rest);
    let Some(userinfo) = userinfo else {
        return format!("{scheme}://{}", redact_query(host_and_path));
    };
    let masked = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None if is_redis_scheme(scheme) => "***".to_owned(),
        None => userinfo.to_owned(),
    };
    format!("{scheme}://{masked}@{}", redact_query(host_and_path))
}

/// `url` with its whole user information masked (`redis://***@host:6379`), and the values
/// of password-like query parameters: for a URL that its parser refused, where the
/// user name ends and the password begins cannot be trusted. Text that is not a URL is
/// shown as [`redact_url`] shows it.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::backend::redact_unparsable_url;
/// assert_eq!(
///     redact_unparsable_url("redis://default:Ab/Cd@127.0.0.1:6379"),
///     "redis://***@127.0.0.1:6379"
/// );
/// ```
pub fn redact_unparsable_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return not_a_url(url);
    };
    match split_userinfo(rest) {
        (Some(_), host_and_path) => format!("{scheme}://***@{}", redact_query(host_and_path)),
        (None, host_and_path) => format!("{scheme}://{}", redact_query(host_and_path)),
    }
}

/// The password of `url`'s user information as written (not decoded), if it has a
/// non-empty one: what follows the first `:` of the user information, which ends at the
/// last `@`, so that a password holding `/`, `?`, `#` or `@` is found whole.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::backend::password_of;
/// assert_eq!(password_of("redis://default:Ab/Cd@h:6379"), Some("Ab/Cd"));
/// assert_eq!(password_of("redis://h:6379"), None);
/// ```
pub fn password_of(url: &str) -> Option<&str> {
    let (userinfo, _) = split_userinfo(url.split_once("://")?.1);
    userinfo?
        .split_once(':')
        .map(|(_, password)| password)
        .filter(|password| !password.is_empty())
}

/// Why `url`'s password cannot be read as written, if so: it holds `/`, `?` or `#`
/// unescaped, which end a URL's host part, so a URL parser would take part of the
/// password for the host or the path (and connect elsewhere, or print it).
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::backend::unescaped_password;
/// assert!(unescaped_password("redis://default:Ab/Cd@h:6379").is_some());
/// assert!(unescaped_password("redis://default:Ab%2FCd@h:6379").is_none());
/// ```
pub fn unescaped_password(url: &str) -> Option<&'static str> {
    password_of(url)
        .filter(|password| password.contains(['/', '?', '#']))
        .map(|_| {
            "the password holds `/`, `?` or `#` unescaped, which end the host part of a URL; percent-encode them in the URL (%2F, %3F, %23)"
        })
}

/// The user information (up to the last `@`) and what follows it, of the text after
/// `scheme://`. A password may hold `/`, `?` or `#` unescaped, so the user information
/// cannot end at the first of those; an `@` in the path or query makes the text before it
/// count as user information too: masked too much, never too little.
fn split_userinfo(rest: &str) -> (Option<&str>, &str) {
    match rest.rsplit_once('@') {
        Some((userinfo, host_and_path)) => (Some(userinfo), host_and_path),
        None => (None, rest),
    }
}

/// Text that is not a URL: shown only when it cannot hold a password.
fn not_a_url(text: &str) -> String {
    if text.contains(['@', ':', '=']) {
        "<unparsable url>".to_owned()
    } else {
        text.to_owned()
    }
}

fn is_redis_scheme(scheme: &str) -> bool {
    matches!(
        scheme.to_ascii_lowercase().as_str(),
        "redis" | "rediss" | "valkey" | "valkeys"
    )
}

/// The host and path with the values of password-like query parameters masked.
fn redact_query(path: &str) -> String {
    let Some((before, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    // A password value may hold an unescaped `&`: where it ends cannot be told, so the
    // parameters after a password-like one are masked with it (too much, never too
    // little).
    let mut params: Vec<String> = Vec::new();
    let mut at = 0;
    for param in query.split('&') {
        at += param.len() + 1;
        match param.split_once('=') {
            Some((name, _)) if name.to_ascii_lowercase().contains("password") => {
                params.push(format!("{name}=***"));
                if at <= query.len() {
                    params.push("***".to_owned());
                }
                break;
            }
            _ => params.push(param.to_owned()),
        }
    }
    let mut out = format!("{before}?{}", params.join("&"));
    // A connection URL has no use for a fragment: a `#` there is most likely part of an
    // unescaped password value.
    if fragment.is_some() {
        out.push_str("#***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{password_of, redact_unparsable_url, redact_url};

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
            "postgresql://app:***@db?sslmode=require&PassWord=***#***"
        );
        assert_eq!(
            redact_url("postgres://db/app?sslpassword=pw&user=a"),
            "postgres://db/app?sslpassword=***&***"
        );
        // A password that holds `&` (unescaped, or first): the rest is masked with it.
        assert_eq!(
            redact_url("postgres://app@h/test?password=&9qV:!3&{LS~>H\""),
            "postgres://app@h/test?password=***&***"
        );
    }

    #[test]
    fn passwords_holding_url_delimiters_are_masked_whole() {
        for password in ["Ab/Cd3xyz", "Ab?Cd3xyz", "Ab#Cd3xyz", "A@b/c?d#e:f", "/?#@"] {
            for scheme in ["redis", "postgres"] {
                let url = format!("{scheme}://default:{password}@127.0.0.1:6379/0?x=1");
                let redacted = redact_url(&url);
                assert_eq!(
                    redacted,
                    format!("{scheme}://default:***@127.0.0.1:6379/0?x=1"),
                    "{url}"
                );
            }
        }
        assert_eq!(redact_url("redis://Ab/Cd@h"), "redis://***@h");
        assert_eq!(
            password_of("redis://default:Ab/Cd?x#y@h:1/0"),
            Some("Ab/Cd?x#y")
        );
        assert_eq!(password_of("redis://default:p@ss@h"), Some("p@ss"));
        assert_eq!(password_of("redis://default@h/0?x=a@b"), None);
    }

    #[test]
    fn unparsable_urls_have_their_whole_user_information_masked() {
        assert_eq!(
            redact_unparsable_url("redis://default:Ab/Cd3xyz@127.0.0.1:6379"),
            "redis://***@127.0.0.1:6379"
        );
        assert_eq!(
            redact_unparsable_url("postgres://u:pw@h:x/db?password=pw"),
            "postgres://***@h:x/db?password=***"
        );
        assert_eq!(redact_unparsable_url("redis://h:x"), "redis://h:x");
        assert_eq!(redact_unparsable_url("u:pw@h"), "<unparsable url>");
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
