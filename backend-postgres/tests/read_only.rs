//! A read-only session is refused at connect: every claim on it would fail, and each event
//! would run unprotected. The session is made read-only by the URL's `options`
//! (`-c default_transaction_read_only=on`), which touches no setting of the shared server.

mod support;

use eventonce_core::StoreError;
use eventonce_postgres::{PostgresOptions, PostgresStore};

fn read_only_url() -> String {
    let url = support::url();
    let joint = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joint}options=-c%20default_transaction_read_only%3Don")
}

#[tokio::test]
async fn a_read_only_session_is_refused_at_connect_with_what_to_do() {
    let schema = support::schema();
    for migrate in [false, true] {
        let options = PostgresOptions::default().schema(schema);
        let result = if migrate {
            PostgresStore::connect_with(&read_only_url(), options).await
        } else {
            PostgresStore::connect_existing(&read_only_url(), options).await
        };
        let err = result.expect_err("a read-only session must be refused");
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        let text = err.to_string();
        for words in [
            "refusing PostgreSQL at postgres://",
            "the session is read-only (transaction_read_only is on",
            "connect as a role, or to a database, that can write",
        ] {
            assert!(text.contains(words), "{words:?} missing from: {text}");
        }
    }
    // The same server, written to by a session that may write.
    support::store(1).await;
}
