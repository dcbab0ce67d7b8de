//! PostgreSQL over TLS (the `tls` feature) against real servers: the two that
//! `scripts/postgres-tls.sh` starts (one with `ssl=on` and a certificate authority of its
//! own, one with `ssl=off`), found through the settings `make test` exports or started
//! here (`eventonce_testkit::postgres_tls`).
#![cfg(feature = "tls")]

mod support;

use std::time::Duration;

use eventonce_core::{Claim, IdempotencyStore};
use eventonce_postgres::{PostgresOptions, PostgresStore};
use eventonce_testkit::postgres_tls as server;

fn options() -> PostgresOptions {
    PostgresOptions::default()
        .schema(format!("{}_tls", support::schema()))
        .acquire_timeout(Duration::from_secs(5))
}

/// Connects (migrating), claims and completes a key, reads it back, and checks that the
/// pool's connections are encrypted.
async fn round_trip(url: &str, options: PostgresOptions) {
    let store = PostgresStore::connect_with(url, options)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let key = eventonce_testkit::unique_name("eventonce:tls-test");
    let lease = Duration::from_secs(60);
    assert_eq!(
        store
            .try_claim(&key, "tls-owner", lease)
            .await
            .expect("claim"),
        Claim::Acquired
    );
    assert!(store
        .complete(&key, "tls-owner", lease)
        .await
        .expect("complete"));
    assert!(store.get(&key).await.expect("get").is_some());
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .expect("pg_stat_ssl");
    assert!(ssl, "the connection to {url} is not encrypted");
}

async fn refused(url: &str, options: PostgresOptions) -> String {
    let err = PostgresStore::connect_existing(url, options)
        .await
        .expect_err("the connection must fail");
    let text = err.to_string();
    println!("{url}:\n  {text}");
    text
}

fn assert_words(text: &str, words: &[&str]) {
    for word in words {
        assert!(text.contains(word), "{word:?} missing from: {text}");
    }
}

#[tokio::test]
async fn verify_full_with_the_servers_authority_in_the_url_round_trips_encrypted() {
    let s = server();
    let url = format!("{}?sslmode=verify-full&sslrootcert={}", s.url, s.ca);
    round_trip(&url, options()).await;
}

#[tokio::test]
async fn verify_ca_and_verify_full_with_the_authority_given_as_an_option_round_trip() {
    let s = server();
    let pem = std::fs::read(&s.ca).expect("the CA file");
    for mode in ["verify-ca", "verify-full"] {
        let url = format!("{}?sslmode={mode}", s.url);
        round_trip(&url, options().tls_root_cert(pem.clone())).await;
    }
}

#[tokio::test]
async fn sslmode_require_without_an_authority_encrypts_without_checking_the_certificate() {
    let s = server();
    round_trip(&format!("{}?sslmode=require", s.url), options()).await;
}

#[tokio::test]
async fn a_certificate_from_another_authority_is_refused_and_named() {
    let s = server();
    let wrong = format!("{}?sslmode=verify-full&sslrootcert={}", s.url, s.wrong_ca);
    let text = refused(&wrong, options()).await;
    assert_words(
        &text,
        &[
            "cannot connect to PostgreSQL at postgres://postgres@localhost:",
            "TLS handshake failed",
            "the server's certificate is not signed by a trusted authority",
            "UnknownIssuer",
            "sslrootcert",
        ],
    );
    // The system's roots do not know the test authority either.
    let text = refused(&format!("{}?sslmode=verify-ca", s.url), options()).await;
    assert_words(
        &text,
        &[
            "TLS handshake failed",
            "the server's certificate is not signed by a trusted authority",
        ],
    );
}

#[tokio::test]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let s = server();
    // The certificate names `localhost` only; the server listens on 127.0.0.1.
    let by_address = s.url.replace("@localhost:", "@127.0.0.1:");
    assert_ne!(by_address, s.url, "the script's URL names localhost");
    let ca = format!("sslrootcert={}", s.ca);
    let text = refused(&format!("{by_address}?sslmode=verify-full&{ca}"), options()).await;
    assert_words(
        &text,
        &[
            "TLS handshake failed",
            "the server's certificate is not valid for the host 127.0.0.1",
            "verify-ca",
        ],
    );
    round_trip(&format!("{by_address}?sslmode=verify-ca&{ca}"), options()).await;
}

#[tokio::test]
async fn sslmode_require_against_a_server_without_tls_says_the_server_does_not_offer_it() {
    let url = format!("{}?sslmode=require", server().plain_url);
    let text = refused(&url, options()).await;
    assert_words(
        &text,
        &[
            "the URL requires TLS",
            "does not offer it",
            "enable ssl on the server or change sslmode",
        ],
    );
}

#[tokio::test]
async fn a_missing_authority_file_is_named_before_connecting() {
    let s = server();
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert=/nonexistent/eventonce-ca.pem",
        s.url
    );
    let text = refused(&url, options()).await;
    assert_words(
        &text,
        &[
            "invalid PostgreSQL URL",
            "the certificate authority file sslrootcert=/nonexistent/eventonce-ca.pem cannot be read",
            "No such file",
        ],
    );
}
