//! Operator access (`AdminStore`) on the real PostgreSQL: pages in the order of the keys'
//! digests, literal scopes, removal of exactly the record seen, row sizes.

mod support;

use std::time::Duration;

use eventonce_core::conformance::unique_key;
use eventonce_core::{AdminStore, Claim, IdempotencyStore, RecordState};

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn pages_cover_every_record_of_the_scope_once() {
    let store = support::store(4).await;
    let scope = format!("{}:%_", unique_key("admin-pages"));
    let mut expected = Vec::new();
    for i in 0..1100 {
        let key = format!("{scope}{i:05}");
        assert_eq!(
            store.try_claim(&key, "o", LEASE).await.expect("claim"),
            Claim::Acquired
        );
        expected.push(key);
    }
    // Keys LIKE would match if the scope were a pattern.
    let lookalike = format!("{}:xx00001", scope.trim_end_matches("%_"));
    store
        .try_claim(&lookalike, "o", LEASE)
        .await
        .expect("claim");

    let mut listed = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_page(&scope, cursor.as_deref(), 500)
            .await
            .expect("list");
        pages += 1;
        assert!(page.records.len() <= 500);
        listed.extend(page.records.into_iter().map(|r| r.key));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert!(pages >= 3, "{pages}");
    // In digest order: every key once, and only the scope's.
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn removal_takes_only_the_record_that_was_seen_and_sizes_are_measured() {
    let store = support::store(2).await;
    let key = unique_key("admin-remove");
    assert_eq!(
        store.try_claim(&key, "first", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    let seen = store.get(&key).await.expect("get").expect("record");
    assert!(store
        .complete(&key, "first", LEASE)
        .await
        .expect("complete"));
    assert!(!store
        .remove_if_unchanged(&key, &seen)
        .await
        .expect("remove"));
    let now = store.get(&key).await.expect("get").expect("record");
    assert_eq!(now.state, RecordState::Completed);

    let sizes = store
        .memory_usage(&[key.clone(), unique_key("absent")])
        .await
        .expect("sizes");
    assert!(matches!(sizes[0], Some(n) if n > 20), "{sizes:?}");
    assert_eq!(sizes[1], None);

    assert!(store.remove_if_unchanged(&key, &now).await.expect("remove"));
    assert_eq!(store.get(&key).await.expect("get"), None);
}
