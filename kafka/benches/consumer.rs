//! `make bench-kafka`: what a Kafka user feels. Events per second of a consumer loop that
//! polls batches and runs them through `KafkaGuard::process_batches` on the Redis store,
//! in its two forms: one store call per batch (`carry_wait: Some(10 ms)`: each batch's
//! completions carried by a later batch's claim) and two (the default, `carry_wait:
//! None`: each batch completes alone, the next claim overlapping it), against the same
//! loop without the guard (each message parsed into its envelope, the handler run, one
//! commit per batch), on one topic of pre-produced events. Each run consumes the whole topic with a fresh consumer group
//! (and, guarded, a fresh service, so every event is new); the three loops alternate, in
//! an order that rotates every round. Prints events/s per run with the CPU per batch of
//! the consumer, the broker and Redis, p50/p99 per batch (from the batch in hand to its
//! commit), the one-call loop against the two-call loop (paired by round) and against
//! its floor (the store's `complete_then_claim_many` of a batch, timed alone after each
//! round, alternating with the same work in two calls), and one summary line; writes them to `target/criterion-latency/kafka/consumer.json`, which
//! `benches/summary.py` adds to benches/RESULTS.md.
//!
//! Needs `KAFKA_BOOTSTRAP` (the Makefile target starts the project's broker) and Redis on
//! `EVENTONCE_REDIS_URL` (default `redis://127.0.0.1:6379`). Knobs: `BENCH_KAFKA_EVENTS`
//! (default 100,000), `BENCH_KAFKA_BATCH` (default 500), `BENCH_KAFKA_ROUNDS` (default 3),
//! `BENCH_KAFKA_SEQUENTIAL=1` (the two-call loop calls `process_batch` batch after batch,
//! without any overlap).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use eventonce_core::config::defaults::DEFAULT_CARRY_WAIT;
use eventonce_core::{EventEnvelope, Guard, IdempotencyConfig};
use eventonce_kafka::{
    consumer_config, create_topic, envelope_from_message, Delivery, KafkaGuard, KafkaGuardOptions,
};
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
    /// A guarded run's CPU per batch.
    cpu: Option<Cpu>,
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
        cpu: None,
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

/// The runs of each loop, every round running each once.
#[derive(Default)]
struct Runs {
    plain: Vec<Run>,
    /// `process_batches` with each batch completing alone (`carry_wait: None`), or
    /// `process_batch` batch after batch when `sequential`.
    two_calls: Vec<Run>,
    /// `process_batches` as it runs by default: one store call per batch.
    one_call: Vec<Run>,
    /// Each round's one-call floor: the median `complete_then_claim_many` of a batch, ms.
    floor_ms: Vec<f64>,
    /// Each round's median `complete_many` then `try_claim_many` of a batch (the same work
    /// in two calls, alternating with the one call), ms.
    floor_two_calls_ms: Vec<f64>,
}

/// Where the machine's CPU went, so far: this process (the consumer: the guard, the
/// client, librdkafka), the broker (when its pid is known: `target/kafka-broker/pid`, as
/// `scripts/kafka.sh` writes it), Redis' main thread (`INFO cpu`; any other client's work
/// included), and the `EVALSHA` calls with Redis' time in them (`INFO commandstats`).
#[derive(Clone, Copy, Default)]
struct Cpu {
    consumer_s: f64,
    broker_s: Option<f64>,
    redis_s: f64,
    evalsha_calls: u64,
    evalsha_s: f64,
}

/// User and system CPU seconds of a process, from `/proc/<pid>/stat` (Linux; ticks of
/// 1/100 s).
fn process_cpu(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

fn broker_pid() -> Option<String> {
    let run = std::env::var("EVENTONCE_KAFKA_RUN")
        .unwrap_or_else(|_| format!("{}/../target/kafka-broker", env!("CARGO_MANIFEST_DIR")));
    Some(
        std::fs::read_to_string(format!("{run}/pid"))
            .ok()?
            .trim()
            .to_owned(),
    )
}

async fn cpu_now(redis_url: &str) -> Cpu {
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let info: String = redis::cmd("INFO")
        .arg("everything")
        .query_async(&mut c)
        .await
        .expect("INFO");
    let value = |line: &str, name: &str| -> f64 {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let stat = |name: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let evalsha = info
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .unwrap_or_default();
    Cpu {
        consumer_s: process_cpu("self").unwrap_or(0.0),
        broker_s: broker_pid().and_then(|pid| process_cpu(&pid)),
        redis_s: stat("used_cpu_user_main_thread") + stat("used_cpu_sys_main_thread"),
        evalsha_calls: value(evalsha, "calls") as u64,
        evalsha_s: value(evalsha, "usec") / 1e6,
    }
}

impl Cpu {
    /// The CPU spent between `before` and `self`, in ms per batch of `batches`.
    fn per_batch(&self, before: &Cpu, batches: f64) -> Cpu {
        let ms = |a: f64, b: f64| (a - b) * 1000.0 / batches;
        Cpu {
            consumer_s: ms(self.consumer_s, before.consumer_s),
            broker_s: self.broker_s.zip(before.broker_s).map(|(a, b)| ms(a, b)),
            redis_s: ms(self.redis_s, before.redis_s),
            evalsha_calls: self.evalsha_calls - before.evalsha_calls,
            evalsha_s: ms(self.evalsha_s, before.evalsha_s),
        }
    }

    /// The CPU of a batch, all three parts (ms).
    fn total(&self) -> f64 {
        self.consumer_s + self.broker_s.unwrap_or(0.0) + self.redis_s
    }
}

/// Alternating runs on one topic: the loop without the guard, the guarded loop completing
/// each batch alone, and the guarded loop carrying each batch's completions with the next
/// claim, in an order that rotates every round. Prints Redis' own time per batch of each
/// guarded run (`INFO commandstats`).
async fn measure(s: &Setup) -> Runs {
    let topic = unique("eventonce-bench-kafka");
    create_topic(&s.bootstrap, &topic, PARTITIONS)
        .await
        .expect("topic");
    let t = Instant::now();
    produce(&s.bootstrap, &topic, s.events).await;
    println!(
        "bench-kafka: {} events produced to {PARTITIONS} partitions in {:.1} s; batches of {}, {} rounds; guarded loops: process_batches (one store call per batch) and {}",
        s.events,
        t.elapsed().as_secs_f64(),
        s.batch,
        s.rounds,
        if s.sequential { "process_batch (sequential)" } else { "process_batches with carry_wait: None (two calls per batch)" }
    );
    let store = RedisStore::connect(&s.redis_url).await.expect("redis");
    let prefix = unique("eventonce-bench-kafka");
    let mut runs = Runs::default();
    for round in 0..s.rounds {
        for side in (0..3).map(|k| (k + round) % 3) {
            let batches = s.events.div_ceil(s.batch).max(1) as f64;
            if side == 0 {
                let before = cpu_now(&s.redis_url).await;
                let mut run = run_plain(&s.bootstrap, &topic, s.events, s.batch).await;
                run.cpu = Some(cpu_now(&s.redis_url).await.per_batch(&before, batches));
                runs.plain.push(run);
                continue;
            }
            let config = IdempotencyConfig::builder(format!("bench-{round}-{side}"))
                .key_prefix(prefix.clone())
                .default_ttl(Duration::from_secs(600))
                .event_type_ttls(Vec::<(String, Duration)>::new())
                .build()
                .expect("config");
            let defaults = KafkaGuardOptions::default();
            let merged = side == 2;
            let options = KafkaGuardOptions {
                carry_wait: merged.then_some(DEFAULT_CARRY_WAIT),
                ..defaults
            };
            let kafka = KafkaGuard::with_options(Guard::new(store.clone(), config), options);
            let sizes = (s.events, s.batch);
            let sequential = s.sequential && !merged;
            let before = cpu_now(&s.redis_url).await;
            let mut run = run_guarded(&s.bootstrap, &topic, sizes, &kafka, sequential).await;
            let cpu = cpu_now(&s.redis_url).await.per_batch(&before, batches);
            println!(
                "bench-kafka: round {round} {:<9} {:>8.0} events/s; CPU per batch: consumer {:.2} ms, broker {}, Redis {:.2} ms ({} EVALSHA, {:.2} ms in them): {:.2} ms in all",
                if merged { "one call" } else { "two calls" },
                run.events_per_s,
                cpu.consumer_s,
                cpu.broker_s.map_or("unknown".to_owned(), |b| format!("{b:.2} ms")),
                cpu.redis_s,
                cpu.evalsha_calls,
                cpu.evalsha_s,
                cpu.total(),
            );
            run.cpu = Some(cpu);
            if merged {
                runs.one_call.push(run);
            } else {
                runs.two_calls.push(run);
            }
        }
        // The one-call floor of this round, timed alone right after its runs.
        let prefix = format!("{prefix}-floor-{round}");
        let (one, two) = one_call_floor(s, &store, &prefix, 20).await;
        runs.floor_ms.push(median_ms(one));
        runs.floor_two_calls_ms.push(median_ms(two));
    }
    delete_keys(&s.redis_url, &format!("{prefix}:*")).await;
    runs
}

/// Batch `round` of the timing: `batch` envelopes shaped as the topic's.
fn timing_envelopes(round: usize, batch: usize) -> Vec<EventEnvelope> {
    (round * batch..(round + 1) * batch)
        .map(|i| {
            EventEnvelope::new(
                "bench.order.placed.v1",
                serde_json::json!({"order": i, "lines": [1, 2, 3]}),
            )
            .with_event_id(format!("order-{i}"))
        })
        .collect()
}

/// The guard's keys of the timing's batch `round` (service `service`, prefix `prefix`).
fn timing_keys(
    store: &RedisStore,
    service: &str,
    prefix: &str,
    batch: usize,
) -> impl Fn(usize) -> Vec<String> {
    let keyed = Guard::new(
        store.clone(),
        IdempotencyConfig::builder(service)
            .key_prefix(prefix)
            .build()
            .expect("config"),
    );
    move |round| {
        timing_envelopes(round, batch)
            .iter()
            .map(|e| keyed.key_for(e).expect("key"))
            .collect()
    }
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// What the store's calls alone take per batch (medians of 20 batches, Redis alone, the
/// guard's own keys): `try_claim_many` and `complete_many` apart (the two-call loop's
/// calls), and `complete_then_claim_many` completing one batch while claiming the next
/// (the one-call loop's call: its floor). Then `Guard::run_batch` on the same number of
/// parsed envelopes.
async fn timing(s: &Setup) -> Timing {
    use eventonce_core::{Completion, IdempotencyStore};
    let store = RedisStore::connect(&s.redis_url).await.expect("redis");
    let prefix = unique("eventonce-bench-kafka-timing");
    let (mut claim, mut complete) = (Vec::new(), Vec::new());
    let lease = Duration::from_secs(60);
    let keys_of = timing_keys(&store, "timing-keys", &prefix, s.batch);
    let completions_of = |keys: &[String]| -> Vec<Completion> {
        keys.iter()
            .map(|key| Completion::new(key.clone(), "owner", Duration::from_secs(600)))
            .collect()
    };
    // Two calls per batch: claim, then complete.
    for round in 0..20 {
        let (keys, t) = (keys_of(round), Instant::now());
        let claims = store.try_claim_many(&keys, "owner", lease).await;
        claim.push(t.elapsed().as_secs_f64() * 1000.0);
        claims.expect("claim");
        let (completions, t) = (completions_of(&keys), Instant::now());
        store.complete_many(&completions).await.expect("complete");
        complete.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (both, _) = one_call_floor(s, &store, &format!("{prefix}-floor"), 40).await;
    let run_batch_ms = time_run_batch(s, &store, &prefix).await;
    delete_keys(&s.redis_url, &format!("{prefix}:*")).await;
    let timing = Timing {
        claim_ms: median_ms(claim),
        complete_ms: median_ms(complete),
        one_call_ms: median_ms(both),
        run_batch_ms,
    };
    println!(
        "bench-kafka timing: per batch of {}: try_claim_many {:.2} ms, complete_many {:.2} ms, complete_then_claim_many (one batch completed, the next claimed) {:.2} ms, Guard::run_batch {:.2} ms (medians of 20, Redis alone)",
        s.batch, timing.claim_ms, timing.complete_ms, timing.one_call_ms, timing.run_batch_ms
    );
    timing
}

/// The one-call loop's floor: `complete_then_claim_many` of one batch's completions with
/// the next batch's claims, on the guard's own keys under `prefix`, timed alone; and,
/// alternating with it batch by batch, the same work as the two calls it replaces
/// (`complete_many`, then `try_claim_many`). `batches` batches; each call's time in ms:
/// (one call, two calls).
async fn one_call_floor(
    s: &Setup,
    store: &RedisStore,
    prefix: &str,
    batches: usize,
) -> (Vec<f64>, Vec<f64>) {
    use eventonce_core::{Completion, IdempotencyStore};
    let lease = Duration::from_secs(60);
    let keys_of = timing_keys(store, "floor-keys", prefix, s.batch);
    let mut previous = keys_of(0);
    let claims = store.try_claim_many(&previous, "owner", lease).await;
    claims.expect("claim");
    let (mut one, mut two) = (Vec::with_capacity(batches), Vec::with_capacity(batches));
    for round in 1..=batches {
        let keys = keys_of(round);
        let completions: Vec<Completion> = previous
            .iter()
            .map(|key| Completion::new(key.clone(), "owner", Duration::from_secs(600)))
            .collect();
        let t = Instant::now();
        let (done, claims) = if round % 2 == 0 {
            let call = store.complete_then_claim_many(&completions, &keys, "owner", lease);
            let answered = call.await.expect("complete then claim");
            one.push(t.elapsed().as_secs_f64() * 1000.0);
            answered
        } else {
            let done = store.complete_many(&completions).await;
            let claims = store.try_claim_many(&keys, "owner", lease).await;
            two.push(t.elapsed().as_secs_f64() * 1000.0);
            (done, claims.expect("claim"))
        };
        assert!(done.expect("completions").iter().all(|d| *d));
        assert_eq!(claims.len(), keys.len());
        previous = keys;
    }
    delete_keys(&s.redis_url, &format!("{prefix}:*")).await;
    (one, two)
}

/// `Guard::run_batch` on a batch of parsed envelopes, alone: the median of 20, in ms.
async fn time_run_batch(s: &Setup, store: &RedisStore, prefix: &str) -> f64 {
    let mut run = Vec::new();
    for round in 0..20 {
        let config = IdempotencyConfig::builder(format!("timing-{round}"))
            .key_prefix(prefix)
            .build()
            .expect("config");
        let guard = Guard::new(store.clone(), config);
        let envelopes = timing_envelopes(round, s.batch);
        let t = Instant::now();
        guard
            .run_batch(&envelopes, |_| async { Ok::<_, String>(()) })
            .await;
        run.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    median_ms(run)
}

/// The store's calls alone, per batch (medians).
struct Timing {
    claim_ms: f64,
    complete_ms: f64,
    one_call_ms: f64,
    run_batch_ms: f64,
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

/// The median of each part of the guarded runs' CPU per batch.
fn median_cpu(runs: &[Run]) -> Cpu {
    let part = |f: &dyn Fn(&Cpu) -> Option<f64>| -> Option<f64> {
        let mut v: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.cpu.as_ref().and_then(f))
            .collect();
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| percentile(&v, 0.5))
    };
    Cpu {
        consumer_s: part(&|c| Some(c.consumer_s)).unwrap_or(0.0),
        broker_s: part(&|c| c.broker_s),
        redis_s: part(&|c| Some(c.redis_s)).unwrap_or(0.0),
        evalsha_calls: 0,
        evalsha_s: part(&|c| Some(c.evalsha_s)).unwrap_or(0.0),
    }
}

/// The median over rounds of `a`'s events/s over `b`'s in the same round.
fn paired(a: &[Run], b: &[Run]) -> f64 {
    let mut v: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| a.events_per_s / b.events_per_s.max(1e-9))
        .collect();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// Prints the median CPU per batch of a guarded loop's runs and the throughput it leaves
/// room for on this machine's cores; the same as JSON.
fn cpu_report(s: &Setup, name: &str, side: &[Run]) -> serde_json::Value {
    let cores = std::thread::available_parallelism().map_or(2, usize::from) as f64;
    let cpu = median_cpu(side);
    let floor = s.batch as f64 / (cpu.total() / cores / 1000.0).max(1e-9);
    println!(
        "bench-kafka: CPU per batch, {name} (medians): consumer {:.2} ms, broker {}, Redis {:.2} ms ({:.2} ms in EVALSHA): {:.2} ms in all, so at most {floor:.0} events/s on {cores} cores",
        cpu.consumer_s,
        cpu.broker_s.map_or("unknown".to_owned(), |b| format!("{b:.2} ms")),
        cpu.redis_s,
        cpu.evalsha_s,
        cpu.total(),
    );
    serde_json::json!({
        "consumer_ms": cpu.consumer_s,
        "broker_ms": cpu.broker_s,
        "redis_ms": cpu.redis_s,
        "evalsha_ms": cpu.evalsha_s,
        "total_ms": cpu.total(),
        "cores": cores,
        "cpu_floor_events_per_s": floor,
    })
}

/// Prints each loop's events/s per run and per-batch latency.
fn print_loops(s: &Setup, runs: &Runs) {
    let two_name = if s.sequential {
        "KafkaGuard::process_batch (sequential), Redis"
    } else {
        "process_batches, two calls per batch, Redis"
    };
    let one_name = "process_batches, one call per batch, Redis";
    let sides = [
        ("without the guard", &runs.plain),
        (two_name, &runs.two_calls),
        (one_name, &runs.one_call),
    ];
    for (name, side) in sides {
        let per_run: Vec<String> = side
            .iter()
            .map(|r| format!("{:.0}", r.events_per_s))
            .collect();
        let b = all_batches(side);
        println!(
            "bench-kafka: {name:<46} events/s per run [{}], median {:.0}; per batch p50 {:.2} ms, p99 {:.2} ms",
            per_run.join(", "),
            median(side),
            percentile(&b, 0.5),
            percentile(&b, 0.99)
        );
    }
}

fn report(s: &Setup, runs: &Runs, timing: &Timing) {
    print_loops(s, runs);
    let cpu = serde_json::json!({
        "unguarded": cpu_report(s, "without the guard", &runs.plain),
        "two_calls": cpu_report(s, "two calls", &runs.two_calls),
        "one_call": cpu_report(s, "one call", &runs.one_call),
    });
    let gain = paired(&runs.one_call, &runs.two_calls);
    let floor_ms = median_ms(runs.floor_ms.clone());
    let floor = s.batch as f64 / (floor_ms / 1000.0).max(1e-9);
    let mut of_floors: Vec<f64> = runs
        .one_call
        .iter()
        .zip(&runs.floor_ms)
        .map(|(run, ms)| run.events_per_s * ms / 1000.0 / s.batch as f64)
        .collect();
    of_floors.sort_by(f64::total_cmp);
    let of_floor = percentile(&of_floors, 0.5);
    let of_plain = median(&runs.one_call) / median(&runs.plain).max(1e-9);
    let met = |ok: bool| if ok { "met" } else { "not met" };
    println!(
        "bench-kafka: one call / two calls per batch = {gain:.2}x (paired by round; target >= 1.60: {})",
        met(gain >= 1.6)
    );
    println!(
        "bench-kafka: one call per batch = {of_floor:.2}x the store's one-call floor (paired by round; the floor's median {floor:.0} events/s: complete_then_claim_many {floor_ms:.2} ms per batch of {}, Redis alone, against {:.2} ms for complete_many then try_claim_many alternating with it; target >= 0.90: {}); {of_plain:.2}x the loop without the guard",
        s.batch, median_ms(runs.floor_two_calls_ms.clone()), met(of_floor >= 0.9)
    );
    let (pb, tb, ob) = (
        all_batches(&runs.plain),
        all_batches(&runs.two_calls),
        all_batches(&runs.one_call),
    );
    println!(
        "bench-kafka summary: {} events, batches of {}, {} rounds: one call per batch {:.0} events/s (batch p50 {:.2} ms) vs two calls {:.0} events/s = {gain:.2}x paired; {of_floor:.2}x the one-call floor ({floor:.0} events/s); unguarded {:.0} events/s",
        s.events, s.batch, s.rounds,
        median(&runs.one_call), percentile(&ob, 0.5),
        median(&runs.two_calls), median(&runs.plain),
    );
    let side_json = |side: &[Run], b: &[f64]| {
        serde_json::json!({
            "events_per_s": median(side),
            "runs": side.iter().map(|r| r.events_per_s).collect::<Vec<_>>(),
            "batch_ms": {"p50": percentile(b, 0.5), "p99": percentile(b, 0.99)},
        })
    };
    let json = serde_json::json!({
        "events": s.events,
        "batch": s.batch,
        "rounds": s.rounds,
        "two_calls_loop": if s.sequential { "process_batch" } else { "process_batches (carry_wait: None, the default)" },
        "unguarded": side_json(&runs.plain, &pb),
        "two_calls": side_json(&runs.two_calls, &tb),
        "one_call": side_json(&runs.one_call, &ob),
        "one_call_over_two_calls": gain,
        "one_call_over_unguarded": of_plain,
        "floor": {
            "one_call_ms": floor_ms,
            "rounds_ms": runs.floor_ms,
            "two_calls_ms": median_ms(runs.floor_two_calls_ms.clone()),
            "two_calls_rounds_ms": runs.floor_two_calls_ms,
            "alone_after_the_runs_ms": timing.one_call_ms,
            "events_per_s": floor,
            "claim_ms": timing.claim_ms,
            "complete_ms": timing.complete_ms,
            "run_batch_ms": timing.run_batch_ms,
        },
        "one_call_over_floor": of_floor,
        "cpu_per_batch": cpu,
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
    let runs = runtime.block_on(measure(&setup));
    let timing = runtime.block_on(timing(&setup));
    report(&setup, &runs, &timing);
}
