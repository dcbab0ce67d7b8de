//! Locked-down Redis servers: a password, an ACL user limited to the key namespace and to
//! `+@read +@write +@scripting`, and TLS with a throwaway certificate authority.

#[cfg(feature = "tls")]
use std::process::Command;
use std::time::Duration;

use eventonce_core::conformance::unique_key;
use eventonce_core::{Claim, IdempotencyStore, StoreError};
#[cfg(feature = "tls")]
use eventonce_redis::RedisOptions;
use eventonce_redis::RedisStore;
use eventonce_testkit::RedisProcess;

const LEASE: Duration = Duration::from_secs(30);

/// Claims, completes and reads one key: every script the store has.
async fn exercise(store: &RedisStore) {
    let key = unique_key("auth");
    assert_eq!(
        store.try_claim(&key, "o", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    assert!(store.extend(&key, "o", LEASE).await.expect("extend"));
    assert!(store.complete(&key, "o", LEASE).await.expect("complete"));
    assert!(store.get(&key).await.expect("get").is_some());
    let other = unique_key("auth");
    assert_eq!(
        store.try_claim(&other, "o", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    assert!(store.release(&other, "o").await.expect("release"));
}

#[tokio::test]
async fn a_password_protected_server_works_with_the_password_in_the_url() {
    let server = RedisProcess::start_with(&["--requirepass", "s3cret-pw"], false);
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}", server.port);
    let store = RedisStore::connect(&url).await.expect("connect");
    exercise(&store).await;
    let shown = format!("{store:?} {}", store.target());
    assert!(
        !shown.contains("s3cret-pw") && shown.contains("***"),
        "{shown}"
    );

    let wrong = format!("redis://:wrong-pw@127.0.0.1:{}", server.port);
    let err = RedisStore::connect(&wrong)
        .await
        .expect_err("a wrong password is refused");
    let text = format!("{err} / {err:?}");
    assert!(!text.contains("wrong-pw"), "{text}");
}

#[tokio::test]
async fn an_acl_user_limited_to_the_namespace_and_three_categories_works() {
    let server = RedisProcess::start_with(
        &[
            "--user",
            "default",
            "off",
            "--user",
            "eventonce",
            "on",
            ">acl-pw",
            "~huleedu:idempotency:*",
            "resetchannels",
            "-@all",
            "+@read",
            "+@write",
            "+@scripting",
        ],
        false,
    );
    let url = format!("redis://eventonce:acl-pw@127.0.0.1:{}", server.port);
    let store = RedisStore::connect(&url).await.expect("connect");
    exercise(&store).await;
    // Outside the namespace the server refuses, and the store says so.
    let err = store
        .try_claim("other:namespace:key", "o", LEASE)
        .await
        .expect_err("no permission");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(!format!("{err:?}").contains("acl-pw"));
}

#[cfg(feature = "tls")]
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success(), "openssl {args:?}");
}

/// A throwaway CA (`ca.crt`) and a server certificate for 127.0.0.1 it signed
/// (`server.crt`, `server.key`), in `dir`.
#[cfg(feature = "tls")]
fn throwaway_certificates(dir: &std::path::Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=eventonce test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
    );
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_with_a_throwaway_ca_works_and_an_unknown_ca_is_refused() {
    let dir = RedisProcess::new_dir();
    throwaway_certificates(&dir);
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let (cert, key, ca) = (path("server.crt"), path("server.key"), path("ca.crt"));
    let server = RedisProcess::start_in(
        dir.clone(),
        &[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "tls-pw",
        ],
        true,
    );
    let url = format!("rediss://:tls-pw@127.0.0.1:{}", server.port);
    let pem = std::fs::read(dir.join("ca.crt")).expect("ca");
    let store = RedisStore::connect_with(&url, RedisOptions::default().tls_root_cert(pem))
        .await
        .expect("TLS connect");
    exercise(&store).await;
    // Without the CA the server's certificate is not trusted: the message says so.
    let untrusted = RedisStore::connect(&url)
        .await
        .expect_err("an unknown CA must be refused")
        .to_string();
    println!("unknown CA: {untrusted}");
    for words in [
        format!(
            "cannot connect to Redis at rediss://:***@127.0.0.1:{}",
            server.port
        ),
        "TLS handshake failed".to_owned(),
        "certificate".to_owned(),
    ] {
        assert!(untrusted.contains(&words), "{words:?} missing: {untrusted}");
    }
    assert!(!untrusted.contains("tls-pw"), "{untrusted}");
    // A plain connection to the TLS port does not get through either, and the message
    // points at rediss://.
    let plain = format!("redis://:tls-pw@127.0.0.1:{}", server.port);
    let refused = RedisStore::connect(&plain)
        .await
        .expect_err("plain text to a TLS port")
        .to_string();
    println!("plain to a TLS port: {refused}");
    assert!(refused.contains("rediss://"), "{refused}");
    assert!(!refused.contains("tls-pw"), "{refused}");
}

#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn rediss_without_the_tls_feature_is_a_clear_error() {
    let err = RedisStore::connect("rediss://127.0.0.1:6380")
        .await
        .expect_err("no TLS support");
    assert!(err.to_string().contains("tls"), "{err}");
}
