//! G14: a password never appears in an error, a `Debug` output or the CLI's output,
//! whatever characters it holds (`/`, `?`, `#`, `@`, `:`, `%`, spaces, non-ASCII). Each
//! generated password goes through every path that prints a URL: the Redis and
//! PostgreSQL connects (invalid URL, closed port, a real server refusing the login), the
//! cluster connect, the stores' `Debug`, and the `eventonce` binary's admin commands.
#![cfg(all(feature = "redis", feature = "postgres"))]

use std::process::{Command, Stdio};

use eventonce::{PostgresOptions, PostgresStore, RedisOptions, RedisStore};
use proptest::prelude::*;

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Fails when `password` appears in `text`, saying where.
fn assert_hidden(password: &str, path: &str, text: &str) {
    assert!(
        !text.contains(password),
        "the password {password:?} leaked through {path}: {text}"
    );
}

/// Every library path that prints one of these URLs.
async fn library_paths(password: &str) {
    let closed = closed_port();
    let options = RedisOptions::default().timeouts(
        std::time::Duration::from_millis(300),
        std::time::Duration::from_millis(300),
    );
    let redis_urls = [
        format!("redis://default:{password}@127.0.0.1:{closed}/0"),
        // The real server: no password is configured, so AUTH is refused.
        format!("redis://default:{password}@127.0.0.1:6379/0"),
        format!("redis://:{password}@127.0.0.1:{closed}"),
    ];
    for url in &redis_urls {
        match RedisStore::connect_lazy_with(url, options.clone()) {
            Ok(store) => {
                assert_hidden(password, "RedisStore Debug", &format!("{store:?}"));
                assert_hidden(password, "RedisStore::target", store.target());
            }
            Err(err) => {
                assert_hidden(password, "connect_lazy Display", &err.to_string());
                assert_hidden(password, "connect_lazy Debug", &format!("{err:?}"));
            }
        }
        match RedisStore::connect_with(url, options.clone()).await {
            Ok(store) => assert_hidden(password, "RedisStore Debug", &format!("{store:?}")),
            Err(err) => {
                assert_hidden(password, "connect Display", &err.to_string());
                assert_hidden(password, "connect Debug", &format!("{err:?}"));
            }
        }
    }
    if let Err(err) = RedisStore::connect_cluster_with([&redis_urls[0]], options.clone()).await {
        assert_hidden(password, "connect_cluster Display", &err.to_string());
        assert_hidden(password, "connect_cluster Debug", &format!("{err:?}"));
    }
    let postgres_urls = [
        format!("postgres://app:{password}@127.0.0.1:{closed}/test"),
        // The real server: the role does not exist, so the login is refused.
        format!("postgres://eventonce_no_such_role:{password}@127.0.0.1:5432/test"),
        format!("postgres://app@127.0.0.1:{closed}/test?password={password}"),
    ];
    for url in &postgres_urls {
        let options =
            PostgresOptions::default().acquire_timeout(std::time::Duration::from_millis(500));
        match PostgresStore::connect_existing(url, options).await {
            Ok(store) => assert_hidden(password, "PostgresStore Debug", &format!("{store:?}")),
            Err(err) => {
                assert_hidden(password, "postgres connect Display", &err.to_string());
                assert_hidden(password, "postgres connect Debug", &format!("{err:?}"));
            }
        }
    }
}

/// The binary's output for `eventonce keys` on each URL.
fn cli_paths(password: &str) {
    let closed = closed_port();
    let runs = [
        (
            "--redis",
            format!("redis://default:{password}@127.0.0.1:{closed}/0"),
        ),
        (
            "--redis",
            format!("redis://default:{password}@127.0.0.1:6379/0"),
        ),
        (
            "--postgres",
            format!("postgres://app:{password}@127.0.0.1:{closed}/test"),
        ),
    ];
    for (flag, url) in &runs {
        let out = Command::new(env!("CARGO_BIN_EXE_eventonce"))
            .args(["keys", flag, url, "--prefix", "eventonce:password-test"])
            .env_remove("EVENTONCE_REDIS_URL")
            .env_remove("EVENTONCE_POSTGRES_URL")
            .stdin(Stdio::null())
            .output()
            .expect("the binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_hidden(password, "the CLI's stdout", &stdout);
        assert_hidden(password, "the CLI's stderr", &stderr);
    }
}

/// A password of 8 to 24 characters: printable ASCII (every one of them, `/?#@:%` and the
/// space included) and some non-ASCII.
fn password() -> impl Strategy<Value = String> {
    let char = prop_oneof![
        8 => (0x20u8..0x7f).prop_map(char::from),
        1 => prop::sample::select(vec!['é', 'ß', 'ø', '€', '中', '😀']),
    ];
    prop::collection::vec(char, 8..24).prop_map(|chars| chars.into_iter().collect())
}

#[test]
fn passwords_with_url_delimiters_never_appear_in_errors_debug_or_the_cli() {
    // The four reported shapes, then every printable character in a password of its own.
    let mut fixed: Vec<String> = ["Ab/Cd3xyz", "Ab?Cd3xyz", "Ab#Cd3xyz", "Ab@Cd/3?x#z"]
        .map(str::to_owned)
        .to_vec();
    fixed.extend((0x20u8..0x7f).map(|c| format!("Pw{}Zq8{}Kx", char::from(c), char::from(c))));
    let rt = runtime();
    for password in &fixed {
        rt.block_on(library_paths(password));
    }
    for password in &fixed[..4] {
        cli_paths(password);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn generated_passwords_never_appear_in_errors_or_debug(password in password()) {
        runtime().block_on(library_paths(&password));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn generated_passwords_never_appear_in_the_clis_output(password in password()) {
        cli_paths(&password);
    }
}
