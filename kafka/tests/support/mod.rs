//! The real services of the end-to-end tests: the Kafka-protocol broker of
//! `scripts/kafka.sh`, Redis and PostgreSQL on loopback, and names no other test shares.
#![allow(dead_code)]

use std::time::Duration;

use eventonce_core::EventEnvelope;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::AssertSqlSafe;

/// The broker's address: `KAFKA_BOOTSTRAP` (`make test` starts the broker and sets it).
///
/// Unset in CI (`CI=true`) the test fails: the broker must have been started by the test
/// command. Unset elsewhere, the broker is started here with `scripts/kafka.sh start`
/// (which installs it once per machine, in seconds) and left running for later runs; `make
/// kafka-stop` stops it.
pub(crate) fn bootstrap() -> String {
    eventonce_testkit::kafka_bootstrap()
}

pub(crate) fn redis_url() -> String {
    std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub(crate) fn postgres_url() -> String {
    std::env::var("EVENTONCE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A name no other test or run shares: `{prefix}-{pid}-{nanos}`.
pub(crate) use eventonce_testkit::unique_name as unique;

/// A PostgreSQL schema name of this run (letters, digits, `_`).
pub(crate) fn schema(prefix: &str) -> String {
    unique(&format!("eventonce_kafka_{prefix}")).replace('-', "_")
}

pub(crate) async fn pool(connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(connections)
        .connect(&postgres_url())
        .await
        .unwrap_or_else(|e| panic!("the tests need PostgreSQL at {}: {e}", postgres_url()))
}

pub(crate) async fn exec(pool: &PgPool, sql: String) {
    sqlx::query(AssertSqlSafe(sql.clone()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A schema with the side-effect table: one row per handler run that reached its effect.
pub(crate) async fn effects_schema(pool: &PgPool, schema: &str) {
    exec(pool, format!("CREATE SCHEMA \"{schema}\"")).await;
    exec(
        pool,
        format!(
            "CREATE TABLE \"{schema}\".effects (id bigserial PRIMARY KEY, event int NOT NULL, \
             worker text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ),
    )
    .await;
    exec(
        pool,
        format!(
            "CREATE TABLE \"{schema}\".attempts (id bigserial PRIMARY KEY, event int NOT NULL, \
             worker text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ),
    )
    .await;
}

pub(crate) async fn drop_schema(pool: &PgPool, schema: &str) {
    exec(pool, format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await;
}

/// Per event (0..events): how many times its side effect was applied.
pub(crate) async fn effect_counts(pool: &PgPool, schema: &str, events: u32) -> Vec<i64> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT event, count(*) FROM \"{schema}\".effects GROUP BY event"
    )))
    .fetch_all(pool)
    .await
    .expect("effects");
    let mut counts = vec![0i64; events as usize];
    for (event, n) in rows {
        if let Some(c) = counts.get_mut(event as usize) {
            *c = n;
        }
    }
    counts
}

pub(crate) fn producer(bootstrap: &str, client_id: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", client_id)
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

/// The envelope of event `i`.
pub(crate) fn event(i: u32) -> EventEnvelope {
    EventEnvelope::new(
        "kafka.order.placed.v1",
        serde_json::json!({"order": i, "lines": [i % 7, i % 11]}),
    )
    .with_event_id(format!("order-{i}"))
    .with_source_service("kafka-e2e")
}

/// How a message carries its event.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Form {
    /// The envelope as the body, compact.
    Body,
    /// The envelope pretty-printed (other whitespace, same event), id and type also in
    /// headers.
    BodyAndHeaders,
    /// The body without `event_id` and `event_type`; both in headers only.
    HeadersOnly,
}

/// Sends event `i` to `partition` (or by key when `None`) in `form`.
pub(crate) async fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    i: u32,
    form: Form,
) {
    let envelope = event(i);
    let id = envelope.event_id.clone().unwrap_or_default();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "event_id",
            value: Some(id.as_str()),
        })
        .insert(Header {
            key: "event_type",
            value: Some(envelope.event_type.as_str()),
        });
    let (body, headers) = match form {
        Form::Body => (serde_json::to_vec(&envelope).expect("json"), None),
        Form::BodyAndHeaders => (
            serde_json::to_vec_pretty(&envelope).expect("json"),
            Some(headers),
        ),
        Form::HeadersOnly => {
            let mut body = serde_json::to_value(&envelope).expect("json");
            if let Some(fields) = body.as_object_mut() {
                fields.remove("event_id");
                fields.remove("event_type");
            }
            (serde_json::to_vec(&body).expect("json"), Some(headers))
        }
    };
    send_raw(
        producer,
        topic,
        partition,
        &format!("order-{i}"),
        Some(&body),
        headers,
    )
    .await;
}

pub(crate) async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: &str,
    body: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
) {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
    if let Some(body) = body {
        record = record.payload(body);
    }
    if let Some(p) = partition {
        record = record.partition(p);
    }
    if let Some(h) = headers {
        record = record.headers(h);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}
