//! The switch that turns the guard off (`ConfigBuilder::disabled`): every handler runs,
//! every answer is `Unprotected`, the store is never called (nor, through
//! `Guard::connect`, created), and one WARN says so. `EVENTONCE_DISABLED` is checked in
//! tests/disable_switch_env.rs, a process of its own (the environment is process-wide).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventonce::{
    async_trait, Claim, EventEnvelope, Guard, GuardError, IdempotencyConfig, IdempotencyStore,
    Outcome, Record, StoreError,
};
use serde_json::json;

/// A store that counts every call made to it and answers like an empty store.
#[derive(Default)]
struct Counting(AtomicUsize);

impl Counting {
    fn calls(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
    fn hit(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl IdempotencyStore for Counting {
    async fn try_claim(&self, _: &str, _: &str, _: Duration) -> Result<Claim, StoreError> {
        self.hit();
        Ok(Claim::Acquired)
    }
    async fn complete(&self, _: &str, _: &str, _: Duration) -> Result<bool, StoreError> {
        self.hit();
        Ok(true)
    }
    async fn release(&self, _: &str, _: &str) -> Result<bool, StoreError> {
        self.hit();
        Ok(true)
    }
    async fn extend(&self, _: &str, _: &str, _: Duration) -> Result<bool, StoreError> {
        self.hit();
        Ok(true)
    }
    async fn get(&self, _: &str) -> Result<Option<Record>, StoreError> {
        self.hit();
        Ok(None)
    }
}

fn switched_off() -> IdempotencyConfig {
    IdempotencyConfig::builder("switch-test")
        .disabled(true)
        .build()
        .expect("config")
}

fn event(n: u32) -> EventEnvelope {
    EventEnvelope::from_slice(
        json!({"event_id": format!("e-{n}"), "event_type": "orders.placed.v1", "data": {"n": n}})
            .to_string()
            .as_bytes(),
    )
    .expect("envelope")
}

#[test]
fn a_configuration_is_enabled_unless_switched_off() {
    if std::env::var_os(eventonce::DISABLED_ENV).is_some() {
        return; // the environment decides; tests/disable_switch_env.rs covers it
    }
    let on = IdempotencyConfig::builder("switch-test")
        .build()
        .expect("config");
    assert!(!on.disabled());
    assert!(switched_off().disabled());
    let back_on = IdempotencyConfig::builder("switch-test")
        .disabled(true)
        .disabled(false)
        .build()
        .expect("config");
    assert!(!back_on.disabled());
}

#[tokio::test]
async fn a_switched_off_guard_runs_every_delivery_unprotected_and_never_calls_its_store() {
    let store = Arc::new(Counting::default());
    let guard = Guard::from_arc(store.clone(), switched_off());
    assert!(guard.disabled());
    let runs = AtomicUsize::new(0);
    for _delivery in 0..3 {
        let outcome = guard
            .run(&event(1), async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>("charged")
            })
            .await
            .expect("runs");
        assert_eq!(outcome, Outcome::Unprotected("charged"));
    }
    let failed = guard
        .run(&event(2), async {
            Err::<(), _>(std::io::Error::other("boom"))
        })
        .await;
    assert!(matches!(failed, Err(GuardError::Handler(_))), "{failed:?}");
    // Not even an unidentifiable event stops a switched-off guard.
    let idless = EventEnvelope::new("orders.placed.v1", serde_json::Value::Null);
    let ran = guard
        .run(&idless, async { Ok::<_, std::io::Error>(()) })
        .await;
    assert!(matches!(ran, Ok(Outcome::Unprotected(()))), "{ran:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(store.calls(), 0, "a switched-off guard called its store");
    assert_eq!(guard.flush().await.expect("flush"), 0);
    assert_eq!(store.calls(), 0);
}

#[tokio::test]
async fn a_switched_off_batch_runs_every_handler_in_order_and_never_calls_its_store() {
    let store = Arc::new(Counting::default());
    let guard = Guard::from_arc(store.clone(), switched_off());
    let batch = vec![event(1), event(1), event(2)];
    let seen = Mutex::new(Vec::new());
    let answers = guard
        .run_batch(&batch, |e| {
            let n = e.data["n"].as_u64();
            seen.lock().expect("lock").push(n);
            async move { Ok::<_, std::io::Error>(n) }
        })
        .await;
    let answers: Vec<_> = answers.into_iter().map(|a| a.expect("answer")).collect();
    assert_eq!(
        answers,
        vec![
            Outcome::Unprotected(Some(1)),
            Outcome::Unprotected(Some(1)),
            Outcome::Unprotected(Some(2))
        ]
    );
    assert_eq!(*seen.lock().expect("lock"), vec![Some(1), Some(1), Some(2)]);
    assert_eq!(store.calls(), 0);
}

#[tokio::test]
async fn connect_creates_no_store_for_a_switched_off_guard_and_one_otherwise() {
    let made = AtomicUsize::new(0);
    let guard = Guard::connect(switched_off(), || async {
        made.fetch_add(1, Ordering::SeqCst);
        Ok::<_, StoreError>(Counting::default())
    })
    .await
    .expect("guard");
    assert_eq!(made.load(Ordering::SeqCst), 0, "the store was created");
    let outcome = guard
        .run(&event(1), async { Ok::<_, std::io::Error>(1) })
        .await
        .expect("runs");
    assert_eq!(outcome, Outcome::Unprotected(1));

    if std::env::var_os(eventonce::DISABLED_ENV).is_some() {
        return;
    }
    let on = IdempotencyConfig::builder("switch-test")
        .build()
        .expect("config");
    let guard = Guard::connect(on, || async {
        made.fetch_add(1, Ordering::SeqCst);
        Ok::<_, StoreError>(eventonce::MemoryStore::new())
    })
    .await
    .expect("guard");
    assert_eq!(made.load(Ordering::SeqCst), 1);
    let first = guard
        .run(&event(1), async { Ok::<_, std::io::Error>(1) })
        .await;
    let second = guard
        .run(&event(1), async { Ok::<_, std::io::Error>(2) })
        .await;
    assert_eq!(first.expect("first"), Outcome::Processed(1));
    assert_eq!(second.expect("second"), Outcome::Duplicate);
}

#[tokio::test]
async fn a_switched_off_guard_logs_one_warning_when_it_is_made() {
    use tracing_subscriber::layer::SubscriberExt;
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Warnings(warnings.clone()));
    let _default = tracing::subscriber::set_default(subscriber);
    // Another test's thread may have registered the warning's callsite while no
    // subscriber wanted it: its cached interest is rebuilt for this one.
    tracing::callsite::rebuild_interest_cache();
    let guard = Guard::from_arc(Arc::new(Counting::default()), switched_off());
    for _ in 0..3 {
        let _ = guard
            .run(&event(1), async { Ok::<_, std::io::Error>(()) })
            .await;
    }
    let _clone = guard.clone();
    let warnings = warnings.lock().expect("lock");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("switched off"), "{warnings:?}");
}

struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut text = String::new();
            event.record(&mut Text(&mut text));
            self.0.lock().expect("lock").push(text);
        }
    }
}

struct Text<'a>(&'a mut String);

impl tracing::field::Visit for Text<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_switched_off_transactional_run_commits_the_handlers_writes_and_no_record() {
    use eventonce::{PostgresOptions, PostgresStore};
    let url = std::env::var("EVENTONCE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("eventonce_switch_{}", std::process::id());
    let store = PostgresStore::connect_with(&url, PostgresOptions::default().schema(&schema))
        .await
        .expect("store");
    let effects = format!("{schema}.effects");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {effects} (n int)"
    )))
    .execute(store.pool())
    .await
    .expect("table");
    let guard = Guard::new(store.clone(), switched_off());
    for _delivery in 0..2 {
        let outcome = guard
            .run_in_transaction(&store, &event(1), |mut tx| {
                let insert = format!("INSERT INTO {effects} VALUES (1)");
                async move {
                    let r = sqlx::query(sqlx::AssertSqlSafe(insert))
                        .execute(&mut *tx)
                        .await;
                    (tx, r)
                }
            })
            .await
            .expect("runs");
        assert!(matches!(outcome, Outcome::Unprotected(_)));
    }
    let written: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {effects}"
    )))
    .fetch_one(store.pool())
    .await
    .expect("count");
    let records: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.eventonce_records"
    )))
    .fetch_one(store.pool())
    .await
    .expect("records");
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(store.pool())
        .await;
    assert_eq!((written, records), (2, 0));
}
