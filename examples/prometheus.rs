//! Prometheus metrics: install `metrics-exporter-prometheus` as the `metrics` recorder,
//! and the guard's counters and histograms appear at `http://127.0.0.1:9184/metrics`.
//!
//! Run: `cargo run --example prometheus --features metrics -- 30` (serves for 30 s; with
//! no argument it prints the text once and exits).

use std::time::Duration;

use eventonce::{EventEnvelope, Guard, IdempotencyConfig, MemoryStore};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve_secs: u64 = std::env::args().nth(1).map_or(Ok(0), |s| s.parse())?;

    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(([127, 0, 0, 1], 9184))
        .set_buckets(&[0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0])?
        .build()?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    tokio::spawn(exporter);

    let guard = Guard::new(
        MemoryStore::new(),
        IdempotencyConfig::builder("checkout").build()?,
    );
    for i in 0..10 {
        let event = EventEnvelope::new("shop.order.paid.v1", json!({"order": i % 7}))
            .with_event_id(format!("evt-{}", i % 7));
        let _ = guard
            .run(&event, async { Ok::<_, std::io::Error>(()) })
            .await?;
    }

    print!("{}", handle.render());
    if serve_secs > 0 {
        println!("serving http://127.0.0.1:9184/metrics for {serve_secs} s");
        tokio::time::sleep(Duration::from_secs(serve_secs)).await;
    }
    Ok(())
}
