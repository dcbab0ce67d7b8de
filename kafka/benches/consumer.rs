//! `make bench-kafka`: what a Kafka user feels. Events per second of a consumer loop that
//! polls batches and runs them through `KafkaGuard::process_batches` (consecutive
//! `process_batch`es, the next batch claimed while the previous one's completion is in
//! flight) on the Redis store, against the same loop without the guard (each message
//! parsed into its envelope, the handler run, one commit per batch), on one topic of
//! pre-produced events. Each run consumes the whole topic with a fresh consumer group
//! (and, guarded, a fresh service, so every event is new); guarded and unguarded runs
//! alternate, their order swapped every round. Prints events/s per run, p50/p99 per batch
//! (from the batch in hand to its commit), the ratio of the medians and one summary line,
//! and writes them to `target/criterion-latency/kafka/consumer.json`, which
//! `benches/summary.py` adds to benches/RESULTS.md.
//!
//! Needs `KAFKA_BOOTSTRAP` (the Makefile target starts the project's broker) and Redis on
//! `EVENTONCE_REDIS_URL` (default `redis://127.0.0.1:6379`). Knobs: `BENCH_KAFKA_EVENTS`
//! (default 100,000), `BENCH_KAFKA_BATCH` (default 500), `BENCH_KAFKA_ROUNDS` (default 3),
//! `BENCH_KAFKA_SEQUENTIAL=1` (the guarded loop calls `process_batch` batch after batch,
//! without the overlap).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use eventonce_core::{EventEnvelope, Guard, IdempotencyConfig};
use eventonce_kafka::{consumer_config, create_topic, envelope_from_message, Delivery, KafkaGuard};
use eventonce_redis::RedisStore;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

use eventonce_testkit::unique_name as unique;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn produce(bootstrap: &str, topic: &str, events: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    for chunk in (0..events).collect::<Vec<_>>().chunks(2000) {
        let sends = chunk.iter().map(|&i| {
            let envelope = EventEnvelope::new(
                "bench.order.placed.v1",
                serde_json::json!({"order": i, "lines": [1, 2, 3]}),
            )
            .with_event_id(format!("order-{i}"));
            let body = serde_json::to_vec(&envelope).expect("json");
            let producer = &producer;
            async move {
                let key = format!("order-{i}");
                let record = FutureRecord::to(topic)
                    .key(&key)
                    .payload(&body)
                    .partition((i % PARTITIONS as usize) as i32);
                producer
                    .send(record, Duration::from_secs(60))
                    .await
                    .map_err(|(e, _)| e)
                    .expect("produce");
            }
        });
        futures_util::future::join_all(sends).await;
    }
}

/// Polls up to `size` messages: waits for the first, then takes what arrives within 5 ms.
async fn poll_batch(consumer: &StreamConsumer, size: usize) -> Vec<BorrowedMessage<'_>> {
    let mut batch = Vec::with_capacity(size);
    while batch.len() < size {
        let wait = if batch.is_empty() {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(5)
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(message)) => batch.push(message),
            Ok(Err(e)) => panic!("consume: {e}"),
            Err(_) => break,
        }
    }
    batch
}

struct Run {
    events_per_s: f64,
    batch_ms: Vec<f64>,
}

fn new_consumer(bootstrap: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = consumer_config(bootstrap, &unique("bench-kafka-group"))
        .set("session.timeout.ms", "10000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Consumes the whole topic once with a fresh group, without the guard.
async fn run_plain(bootstrap: &str, topic: &str, events: usize, batch: usize) -> Run {
    let consumer = new_consumer(bootstrap, topic);
    // The group's first join is not the loop's cost: start the clock at the first message.
    let mut seen = 0usize;
    let mut batch_ms = Vec::new();
    let mut started = None;
    while seen < events {
        let messages = poll_batch(&consumer, batch).await;
        assert!(
            !messages.is_empty(),
            "the topic ran dry after {seen} events"
        );
        let t = Instant::now();
        started.get_or_insert(t);
        let mut next: HashMap<i32, i64> = HashMap::new();
        for message in &messages {
            let envelope = envelope_from_message(message).expect("envelope");
            let handled: Result<(), String> = async { Ok(()) }.await;
            handled.expect("handler");
            drop(envelope);
            let at = next.entry(message.partition()).or_insert(0);
            *at = (*at).max(message.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in next {
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
                .expect("offset");
        }
        consumer.commit(&tpl, CommitMode::Async).expect("commit");
        batch_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        seen += messages.len();
    }
    finish(seen, started, batch_ms)
}

fn finish(seen: usize, started: Option<Instant>, mut batch_ms: Vec<f64>) -> Run {
    let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
    batch_ms.sort_by(f64::total_cmp);
    Run {
        events_per_s: seen as f64 / elapsed.as_secs_f64().max(1e-9),
        batch_ms,
    }
}

fn assert_committed(answers: &[Result<Delivery<(), String>, eventonce_kafka::MessageError>]) {
    for answer in answers {
        assert!(
            matches!(answer, Ok(Delivery::Committed(_))),
            "every event is new and committed: {answer:?}"
        );
    }
}

/// Consumes the whole topic once with a fresh group through the guard: `process_batches`,
/// or `process_batch` batch after batch when `sequential`.
async fn run_guarded(
    bootstrap: &str,
    topic: &str,
    (events, batch): (usize, usize),
    kafka: &KafkaGuard,
    sequential: bool,
) -> Run {
    let consumer = new_consumer(bootstrap, topic);
    let handler = |_event| async { Ok::<_, String>(()) };
    let mut seen = 0usize;
    let mut batch_ms = Vec::new();
    let mut started = None;
    if sequential {
        while seen < events {
            let messages = poll_batch(&consumer, batch).await;
            assert!(
                !messages.is_empty(),
                "the topic ran dry after {seen} events"
            );
            let t = Instant::now();
            started.get_or_insert(t);
            assert_committed(&kafka.process_batch(&consumer, &messages, handler).await);
            batch_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            seen += messages.len();
        }
        return finish(seen, started, batch_ms);
    }
    // Each batch's clock starts when it is in hand and stops when it is committed.
    let polled: RefCell<VecDeque<Instant>> = RefCell::new(VecDeque::new());
    let batches = futures_util::stream::unfold(0usize, |taken| {
        let (consumer, polled) = (&consumer, &polled);
        async move {
            if taken >= events {
                return None;
            }
            let messages = poll_batch(consumer, batch).await;
            assert!(
                !messages.is_empty(),
                "the topic ran dry after {taken} events"
            );
            polled.borrow_mut().push_back(Instant::now());
            let taken = taken + messages.len();
            Some((messages, taken))
        }
    });
    kafka
        .process_batches(&consumer, batches, handler, |messages, answers| {
            assert_committed(&answers);
            let t = polled.borrow_mut().pop_front().expect("a polled batch");
            started.get_or_insert(t);
            batch_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            seen += messages.len();
            async { ControlFlow::Continue(()) }
        })
        .await;
    finish(seen, started, batch_ms)
}

async fn delete_keys(redis_url: &str, pattern: &str) {
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut c)
                .await
                .expect("UNLINK");
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
}

struct Setup {
    bootstrap: String,
    redis_url: String,
    events: usize,
    batch: usize,
    rounds: usize,
    sequential: bool,
}

/// Alternating runs on one topic: (unguarded, guarded).
async fn measure(s: &Setup) -> (Vec<Run>, Vec<Run>) {
    let topic = unique("eventonce-bench-kafka");
    create_topic(&s.bootstrap, &topic, PARTITIONS)
        .await
        .expect("topic");
    let t = Instant::now();
    produce(&s.bootstrap, &topic, s.events).await;
    println!(
        "bench-kafka: {} events produced to {PARTITIONS} partitions in {:.1} s; batches of {}, {} rounds, guarded loop {}",
        s.events,
        t.elapsed().as_secs_f64(),
        s.batch,
        s.rounds,
        if s.sequential { "process_batch (sequential)" } else { "process_batches (overlapped)" }
    );
    let store = RedisStore::connect(&s.redis_url).await.expect("redis");
    let prefix = unique("eventonce-bench-kafka");
    let (mut plain, mut guarded) = (Vec::new(), Vec::new());
    for round in 0..s.rounds {
        for guarded_first in [round % 2 == 1, round % 2 == 0] {
            if guarded_first {
                let config = IdempotencyConfig::builder(format!("bench-{round}"))
                    .key_prefix(prefix.clone())
                    .default_ttl(Duration::from_secs(600))
                    .event_type_ttls(Vec::<(String, Duration)>::new())
                    .build()
                    .expect("config");
                let kafka = KafkaGuard::new(Guard::new(store.clone(), config));
                let sizes = (s.events, s.batch);
                guarded.push(run_guarded(&s.bootstrap, &topic, sizes, &kafka, s.sequential).await);
            } else {
                plain.push(run_plain(&s.bootstrap, &topic, s.events, s.batch).await);
            }
        }
    }
    delete_keys(&s.redis_url, &format!("{prefix}:*")).await;
    (plain, guarded)
}

/// Where a guarded batch's time goes, measured apart (medians of 20 batches): the store's
/// two batch calls alone, and `Guard::run_batch` on the same number of parsed envelopes.
async fn timing(s: &Setup) {
    use eventonce_core::{Completion, IdempotencyStore};
    let store = RedisStore::connect(&s.redis_url).await.expect("redis");
    let prefix = unique("eventonce-bench-kafka-timing");
    let (mut claim, mut complete, mut run) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..20 {
        let keys: Vec<String> = (0..s.batch)
            .map(|i| format!("{prefix}:{round}:{i}"))
            .collect();
        let t = Instant::now();
        store
            .try_claim_many(&keys, "owner", Duration::from_secs(60))
            .await
            .expect("claim");
        claim.push(t.elapsed().as_secs_f64() * 1000.0);
        let completions: Vec<Completion> = keys
            .iter()
            .map(|key| Completion {
                key: key.clone(),
                owner: "owner".into(),
                ttl: Duration::from_secs(60),
                result: None,
            })
            .collect();
        let t = Instant::now();
        store.complete_many(&completions).await.expect("complete");
        complete.push(t.elapsed().as_secs_f64() * 1000.0);
        let config = IdempotencyConfig::builder(format!("timing-{round}"))
            .key_prefix(prefix.clone())
            .build()
            .expect("config");
        let guard = Guard::new(store.clone(), config);
        let envelopes: Vec<EventEnvelope> = (0..s.batch)
            .map(|i| {
                EventEnvelope::new("bench.order.placed.v1", serde_json::json!({"order": i}))
                    .with_event_id(format!("order-{i}"))
            })
            .collect();
        let t = Instant::now();
        guard
            .run_batch(&envelopes, |_| async { Ok::<_, String>(()) })
            .await;
        run.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    delete_keys(&s.redis_url, &format!("{prefix}:*")).await;
    for v in [&mut claim, &mut complete, &mut run] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "bench-kafka timing: per batch of {}: try_claim_many {:.2} ms, complete_many {:.2} ms, Guard::run_batch {:.2} ms (medians of 20, Redis alone)",
        s.batch,
        percentile(&claim, 0.5),
        percentile(&complete, 0.5),
        percentile(&run, 0.5)
    );
}

fn median(runs: &[Run]) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(|r| r.events_per_s).collect();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn all_batches(runs: &[Run]) -> Vec<f64> {
    let mut v: Vec<f64> = runs.iter().flat_map(|r| r.batch_ms.clone()).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn report(s: &Setup, plain: &[Run], guarded: &[Run]) {
    let guarded_name = if s.sequential {
        "KafkaGuard::process_batch, Redis"
    } else {
        "KafkaGuard::process_batches, Redis"
    };
    for (name, runs) in [("without the guard", plain), (guarded_name, guarded)] {
        let per_run: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.0}", r.events_per_s))
            .collect();
        let b = all_batches(runs);
        println!(
            "bench-kafka: {name:<34} events/s per run [{}], median {:.0}; per batch p50 {:.2} ms, p99 {:.2} ms",
            per_run.join(", "),
            median(runs),
            percentile(&b, 0.5),
            percentile(&b, 0.99)
        );
    }
    let ratio = median(guarded) / median(plain).max(1e-9);
    let met = if ratio >= 0.8 { "met" } else { "not met" };
    println!("bench-kafka: guarded / unguarded = {ratio:.2} (target >= 0.80: {met})");
    let (pb, gb) = (all_batches(plain), all_batches(guarded));
    println!(
        "bench-kafka summary: {} events, batches of {}, {} rounds: guarded {:.0} events/s (batch p50 {:.2} ms, p99 {:.2} ms) vs unguarded {:.0} events/s (batch p50 {:.2} ms, p99 {:.2} ms) = {ratio:.2}x (target 0.80x {met})",
        s.events, s.batch, s.rounds,
        median(guarded), percentile(&gb, 0.5), percentile(&gb, 0.99),
        median(plain), percentile(&pb, 0.5), percentile(&pb, 0.99),
    );
    let json = serde_json::json!({
        "events": s.events,
        "batch": s.batch,
        "rounds": s.rounds,
        "guarded_loop": if s.sequential { "process_batch" } else { "process_batches" },
        "unguarded_events_per_s": median(plain),
        "guarded_events_per_s": median(guarded),
        "unguarded_runs": plain.iter().map(|r| r.events_per_s).collect::<Vec<_>>(),
        "guarded_runs": guarded.iter().map(|r| r.events_per_s).collect::<Vec<_>>(),
        "ratio": ratio,
        "unguarded_batch_ms": {"p50": percentile(&pb, 0.5), "p99": percentile(&pb, 0.99)},
        "guarded_batch_ms": {"p50": percentile(&gb, 0.5), "p99": percentile(&gb, 0.99)},
    });
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion-latency/kafka");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("consumer.json"), json.to_string());
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` and `--list`: nothing to run here
    }
    let Ok(bootstrap) = std::env::var("KAFKA_BOOTSTRAP") else {
        eprintln!("bench-kafka: KAFKA_BOOTSTRAP is not set (make bench-kafka starts the broker)");
        std::process::exit(2);
    };
    let setup = Setup {
        bootstrap,
        redis_url: std::env::var("EVENTONCE_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        events: knob("BENCH_KAFKA_EVENTS", 100_000),
        batch: knob("BENCH_KAFKA_BATCH", 500),
        rounds: knob("BENCH_KAFKA_ROUNDS", 3),
        sequential: knob("BENCH_KAFKA_SEQUENTIAL", 0) == 1,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (plain, guarded) = runtime.block_on(measure(&setup));
    report(&setup, &plain, &guarded);
    runtime.block_on(timing(&setup));
}
