//! The compact layout (migration 0003): a table of the previous version upgraded in place
//! with every record answering as before, the layout it leaves (one index, on the key's
//! digest; the state in one byte), completions written as HOT updates, and keys that only a
//! careless digest would confuse kept apart.

mod support;

use std::borrow::Cow;
use std::time::Duration;

use eventonce_core::{
    AdminStore, Claim, Completion, IdempotencyStore, RecordState, TransactionalStore,
};
use eventonce_postgres::{PostgresOptions, PostgresStore};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, PgPool, SqlSafeStr};

const LEASE: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(3600);

/// Creates `schema.table` as the previous version left it: migrations 0001 and 0002,
/// tracked in the same migrations table the store uses.
async fn previous_version_table(pool: &PgPool, schema: &str, table: &str) {
    let fill = |sql: &str| {
        sql.replace("{schema}", &format!("\"{schema}\""))
            .replace("{table_unquoted}", table)
            .replace("{table}", &format!("\"{table}\""))
    };
    let migration = |version, description, sql: String| {
        Migration::new(
            version,
            Cow::Borrowed(description),
            MigrationType::Simple,
            AssertSqlSafe(sql).into_sql_str(),
            false,
        )
    };
    let mut migrator = Migrator::with_migrations(vec![
        migration(
            1,
            "create records table",
            fill(include_str!("../migrations/0001_create_records.sql")),
        ),
        migration(
            2,
            "add stored results",
            fill(include_str!("../migrations/0002_add_result.sql")),
        ),
    ]);
    migrator.create_schema(format!("\"{schema}\""));
    migrator.dangerous_set_table_name(format!("\"{schema}\".\"{table}_migrations\""));
    migrator.run(pool).await.expect("migrations 0001 and 0002");
}

/// One record as the previous version wrote it: `state` in words, expiry `secs` from now
/// (negative: expired), an optional result and its owner.
async fn old_record(
    pool: &PgPool,
    table: &str,
    key: &str,
    state: &str,
    owner: &str,
    secs: i64,
    result: Option<(&[u8], &str)>,
) {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (key, state, owner, updated_at, expires_at, result, result_owner)
         VALUES ($1, $2, $3, now() - interval '1 second', now() + make_interval(secs => $4), $5, $6)"
    )))
    .bind(key)
    .bind(state)
    .bind(owner)
    .bind(secs as f64)
    .bind(result.map(|(r, _)| r.to_vec()))
    .bind(result.map(|(_, o)| o.to_owned()))
    .execute(pool)
    .await
    .expect("an old record");
}

async fn strings(pool: &PgPool, sql: &str, schema: &str, table: &str) -> Vec<String> {
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
        .bind(schema)
        .bind(table)
        .fetch_all(pool)
        .await
        .expect(sql)
}

/// A record as the previous version wrote it: key (after the scope), state, owner, seconds
/// left (negative: expired), the result and the owner that wrote it.
type OldRecord = (
    &'static str,
    &'static str,
    &'static str,
    i64,
    Option<(&'static [u8], &'static str)>,
);

/// Every kind of record the previous version could hold.
const OLD_RECORDS: [OldRecord; 7] = [
    ("live", "processing", "worker-a", 60, None),
    (
        "done",
        "completed",
        "worker-b",
        600,
        Some((b"{\"id\":7}", "worker-b")),
    ),
    ("plain", "completed", "worker-c", 600, None),
    // A result left on a record claimed again by another owner: never answered.
    (
        "stale-result",
        "completed",
        "worker-d",
        600,
        Some((b"old", "worker-x")),
    ),
    ("lapsed-claim", "processing", "worker-e", -5, None),
    ("lapsed-done", "completed", "worker-f", -5, None),
    ("back\\slash\\101 é", "completed", "worker-g", 600, None),
];

async fn write_previous_records(pool: &PgPool, quoted: &str, scope: &str) {
    for (key, state, owner, secs, result) in OLD_RECORDS {
        let key = format!("{scope}{key}");
        old_record(pool, quoted, &key, state, owner, secs, result).await;
    }
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {quoted} (key, state, owner, expires_at)
         SELECT $1 || 'bulk-' || i, 'completed', 'worker-bulk', now() + interval '1 hour'
           FROM generate_series(1, 2000) AS i"
    )))
    .bind(scope)
    .execute(pool)
    .await
    .expect("bulk records");
}

async fn oid(pool: &PgPool, quoted: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT '{quoted}'::regclass::oid::int8"
    )))
    .fetch_one(pool)
    .await
    .expect("oid")
}

/// One unique index, on the key's digest (a column the table computes); the state in one
/// byte.
async fn assert_compact_layout(pool: &PgPool, schema: &str, table: &str) {
    let indexes = strings(
        pool,
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = $2",
        schema,
        table,
    )
    .await;
    assert_eq!(indexes.len(), 1, "{indexes:?}");
    assert!(
        indexes[0].starts_with("CREATE UNIQUE INDEX") && indexes[0].ends_with("(key_digest)"),
        "{indexes:?}"
    );
    let state_type = strings(
        pool,
        "SELECT data_type::text FROM information_schema.columns
          WHERE table_schema = $1 AND table_name = $2 AND column_name = 'state'",
        schema,
        table,
    )
    .await;
    assert_eq!(state_type, ["\"char\""]);
}

/// Each record of [`OLD_RECORDS`] answers as it did before the upgrade.
async fn assert_answers_as_before(store: &PostgresStore, scope: &str) {
    let key = |k: &str| format!("{scope}{k}");
    let live = store
        .get(&key("live"))
        .await
        .expect("get")
        .expect("the live claim");
    assert_eq!(live.state, RecordState::Processing);
    assert_eq!(live.owner.as_deref(), Some("worker-a"));
    assert!(
        live.ttl_left.is_some_and(|t| t > Duration::from_secs(30)),
        "{live:?}"
    );
    assert!(live.updated_at.is_some());
    let claim = |k: String, owner: &'static str| async move {
        store.try_claim(&k, owner, LEASE).await.expect("claim")
    };
    assert_eq!(claim(key("live"), "other").await, Claim::InProgress);
    assert!(store
        .complete(&key("live"), "worker-a", TTL)
        .await
        .expect("the claim's owner completes it"));
    for done in [
        "live",
        "done",
        "plain",
        "stale-result",
        "back\\slash\\101 é",
    ] {
        assert_eq!(claim(key(done), "other").await, Claim::Completed, "{done}");
    }
    let with_result = |k: String| async move {
        store
            .get_with_result(&k)
            .await
            .expect("get")
            .expect("record")
    };
    let (record, result) = with_result(key("done")).await;
    assert_eq!(record.state, RecordState::Completed);
    assert_eq!(result.as_deref(), Some(&b"{\"id\":7}"[..]));
    let (_, stale) = with_result(key("stale-result")).await;
    assert_eq!(stale, None, "a result of another owner is not answered");
    for lapsed in ["lapsed-claim", "lapsed-done"] {
        assert_eq!(
            store.get(&key(lapsed)).await.expect("get"),
            None,
            "{lapsed}"
        );
        assert_eq!(claim(key(lapsed), "new").await, Claim::Acquired, "{lapsed}");
    }
    let bulk: Vec<String> = (1..=2000).map(|i| key(&format!("bulk-{i}"))).collect();
    for chunk in bulk.chunks(1000) {
        let claims = store
            .try_claim_many(chunk, "other", LEASE)
            .await
            .expect("claim many");
        assert!(claims.iter().all(|c| *c == Claim::Completed), "{claims:?}");
    }
}

/// Every live key under `scope`, page by page, sorted.
async fn listed(store: &PostgresStore, scope: &str) -> Vec<String> {
    let mut listed = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_page(scope, cursor.as_deref(), 300)
            .await
            .expect("list");
        listed.extend(page.records.into_iter().map(|r| r.key));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    listed.sort();
    listed
}

#[tokio::test]
async fn a_table_of_the_previous_version_is_compacted_in_place_and_answers_as_before() {
    let schema = format!("{}_compact", support::schema());
    let table = "records_before_compact";
    let quoted = format!("\"{schema}\".\"{table}\"");
    let pool = PgPool::connect(&support::url()).await.expect("connect");
    previous_version_table(&pool, &schema, table).await;
    let scope = "huleedu:idempotency:v2:upgrade:orders_created_v1:";
    write_previous_records(&pool, &quoted, scope).await;
    let oid_before = oid(&pool, &quoted).await;

    let store = PostgresStore::connect_with(
        &support::url(),
        PostgresOptions::default().schema(&schema).table(table),
    )
    .await
    .expect("connect and migrate");

    assert_eq!(
        oid(&pool, &quoted).await,
        oid_before,
        "the table itself was kept"
    );
    assert_compact_layout(&pool, &schema, table).await;
    assert_answers_as_before(&store, scope).await;
    // The admin listing reads every key as written (the lapsed ones claimed again above).
    let mut expected: Vec<String> = OLD_RECORDS
        .iter()
        .map(|r| format!("{scope}{}", r.0))
        .chain((1..=2000).map(|i| format!("{scope}bulk-{i}")))
        .collect();
    expected.sort();
    assert_eq!(listed(&store, scope).await, expected);
    let _ = sqlx::query(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .execute(&pool)
        .await;
}

#[tokio::test]
async fn a_completion_is_a_hot_update() {
    let store = support::store(2).await;
    let key = eventonce_core::conformance::unique_key("hot");
    assert_eq!(
        store.try_claim(&key, "o", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    // In one transaction, whose own counters the server reports at once.
    let mut tx = store.begin().await.expect("begin");
    assert!(store
        .complete_in(&mut tx, &key, "o", TTL)
        .await
        .expect("complete"));
    let (updated, hot): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT pg_stat_get_xact_tuples_updated('{0}'::regclass),
                pg_stat_get_xact_tuples_hot_updated('{0}'::regclass)",
        store.table()
    )))
    .fetch_one(&mut *tx)
    .await
    .expect("counters");
    store.commit(tx).await.expect("commit");
    assert_eq!(
        (updated, hot),
        (1, 1),
        "the completion rewrote an indexed column"
    );
    assert_eq!(
        store.try_claim(&key, "p", LEASE).await.expect("claim"),
        Claim::Completed
    );
    // The batch form too.
    let keys: Vec<String> = (0..20).map(|i| format!("{key}:{i}")).collect();
    store
        .try_claim_many(&keys, "o", LEASE)
        .await
        .expect("claim many");
    let hot_before = hot_updates(&store).await;
    let done = store
        .complete_many(
            &keys
                .iter()
                .map(|k| Completion::new(k.clone(), "o", TTL))
                .collect::<Vec<_>>(),
        )
        .await
        .expect("complete many");
    assert!(done.iter().all(|d| *d));
    // The statistics arrive within a second or so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while hot_updates(&store).await < hot_before + 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch's completions were not HOT"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn hot_updates(store: &PostgresStore) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = '{}'::regclass",
        store.table()
    )))
    .fetch_one(store.pool())
    .await
    .expect("statistics")
}

#[tokio::test]
async fn keys_an_escape_decoding_would_confuse_are_distinct_records() {
    let store = support::store(2).await;
    let base = eventonce_core::conformance::unique_key("escapes");
    // Read as `bytea` escapes, `\101` is `A` and `\\` is `\`: the digest must see the
    // characters themselves.
    let pairs = [
        (format!("{base}:\\101"), format!("{base}:A")),
        (format!("{base}:\\\\"), format!("{base}:\\")),
        (format!("{base}:x\\"), format!("{base}:x\\\\")),
    ];
    for (a, b) in &pairs {
        assert_eq!(
            store.try_claim(a, "o", LEASE).await.expect("claim"),
            Claim::Acquired,
            "{a}"
        );
        assert_eq!(
            store.try_claim(b, "o", LEASE).await.expect("claim"),
            Claim::Acquired,
            "{b}"
        );
        assert!(store.complete(a, "o", TTL).await.expect("complete"));
        let other = store.get(b).await.expect("get").expect("record");
        assert_eq!(
            other.state,
            RecordState::Processing,
            "{b} is its own record"
        );
    }
}
