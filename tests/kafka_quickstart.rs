//! The Kafka quickstart (`examples/kafka_quickstart.rs`) run against the project's broker
//! with the documented `consumer_config`: every order is charged once, every copy is
//! skipped as a duplicate, and the first message arrives within seconds.

#[path = "../examples/kafka_quickstart.rs"]
mod quickstart;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_charges_each_order_once_and_starts_within_seconds() {
    let bootstrap = eventonce_testkit::kafka_bootstrap();
    let topic = eventonce_testkit::unique_name("quickstart");
    let summary = quickstart::run(&bootstrap, &topic, &format!("{topic}-billing"))
        .await
        .expect("the quickstart runs");
    println!("{summary:?}");
    assert_eq!(summary.consumed, 2 * quickstart::ORDERS as usize);
    assert_eq!(summary.charged.len(), quickstart::ORDERS as usize);
    assert!(
        summary.charged.values().all(|&runs| runs == 1),
        "{summary:?}"
    );
    assert_eq!(summary.duplicates, quickstart::ORDERS as usize);
    // The documented configuration joins a new group in seconds (23 s with librdkafka's
    // 45 s session timeout on this broker); generous for a busy machine.
    assert!(
        summary.first_message_after < Duration::from_secs(12),
        "first message after {:?}",
        summary.first_message_after
    );
}
