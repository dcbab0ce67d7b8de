//! `IdempotencyConfig`: defaults, tiers, per-type TTLs, validation, keys.

use std::time::Duration;

use eventonce::config::defaults::{
    DEFAULT_EVENT_TYPE_TTLS, TTL_AGGREGATION, TTL_ASSESSMENT, TTL_BATCH, TTL_QUICK,
};
use eventonce::{ConfigError, FailMode, IdempotencyConfig, KeyScheme};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn defaults_match_the_python_v2_decorator() {
    let c = IdempotencyConfig::builder("svc").build().expect("valid");
    assert_eq!(c.service_name(), "svc");
    assert_eq!(c.default_ttl(), secs(86_400));
    assert_eq!(c.key_prefix(), "huleedu:idempotency:v2");
    assert!(!c.debug_logging());
    assert_eq!(c.lease(), secs(300));
    assert_eq!(c.on_store_error(), FailMode::Open);
    assert_eq!(c.in_progress_wait(), Duration::ZERO);
    assert!(c.store_timeout() < secs(1));
}

#[test]
fn builder_starts_from_the_preconfigured_tiers() {
    let c = IdempotencyConfig::builder("svc").build().expect("valid");
    let expected = [
        ("huleedu.essay.spellcheck.requested.v1", 3600),
        ("huleedu.essay.spellcheck.completed.v1", 3600),
        ("huleedu.file.essay.content.provisioned.v1", 3600),
        ("huleedu.file.essay.validation.failed.v1", 3600),
        ("huleedu.batch.essays.registered.v1", 43_200),
        ("huleedu.els.batch.essays.ready.v1", 43_200),
        ("huleedu.els.batch.phase.outcome.v1", 43_200),
        ("huleedu.cj_assessment.completed.v1", 86_400),
        ("huleedu.batch.cj_assessment.initiate.command.v1", 86_400),
        ("huleedu.batch.spellcheck.initiate.command.v1", 86_400),
        ("huleedu.result_aggregator.batch.completed.v1", 259_200),
        (
            "huleedu.result_aggregator.class.summary.updated.v1",
            259_200,
        ),
    ];
    assert_eq!(DEFAULT_EVENT_TYPE_TTLS.len(), expected.len());
    for (t, s) in expected {
        assert_eq!(c.ttl_for_event_type(t), secs(s), "{t}");
    }
    assert_eq!(c.event_type_ttls().len(), expected.len());
}

#[test]
fn the_tiers_are_named_as_configuration_md_names_them() {
    assert_eq!(
        [TTL_QUICK, TTL_BATCH, TTL_ASSESSMENT, TTL_AGGREGATION],
        [secs(3600), secs(43_200), secs(86_400), secs(259_200)]
    );
    for (event_type, tier) in [
        ("huleedu.essay.spellcheck.requested.v1", TTL_QUICK),
        ("huleedu.batch.essays.registered.v1", TTL_BATCH),
        ("huleedu.cj_assessment.completed.v1", TTL_ASSESSMENT),
        (
            "huleedu.result_aggregator.batch.completed.v1",
            TTL_AGGREGATION,
        ),
    ] {
        assert!(
            DEFAULT_EVENT_TYPE_TTLS.contains(&(event_type, tier)),
            "{event_type}"
        );
    }
}

#[test]
fn unknown_types_get_the_default_ttl() {
    let c = IdempotencyConfig::builder("svc")
        .default_ttl(secs(43_200))
        .build()
        .expect("valid");
    assert_eq!(c.ttl_for_event_type("something.else.v1"), secs(43_200));
}

#[test]
fn event_type_ttl_adds_on_top_of_the_tiers_and_overrides_one() {
    let c = IdempotencyConfig::builder("svc")
        .event_type_ttl("orders.created.v1", secs(60))
        .event_type_ttl("huleedu.essay.spellcheck.requested.v1", secs(120))
        .build()
        .expect("valid");
    assert_eq!(c.ttl_for_event_type("orders.created.v1"), secs(60));
    assert_eq!(
        c.ttl_for_event_type("huleedu.essay.spellcheck.requested.v1"),
        secs(120)
    );
    assert_eq!(
        c.ttl_for_event_type("huleedu.els.batch.essays.ready.v1"),
        secs(43_200)
    );
}

#[test]
fn event_type_ttls_replaces_the_whole_map() {
    let c = IdempotencyConfig::builder("svc")
        .event_type_ttls([("only.v1", secs(5))])
        .build()
        .expect("valid");
    assert_eq!(c.ttl_for_event_type("only.v1"), secs(5));
    assert_eq!(
        c.ttl_for_event_type("huleedu.essay.spellcheck.requested.v1"),
        secs(86_400)
    );
    let empty = IdempotencyConfig::builder("svc")
        .event_type_ttls(Vec::<(String, Duration)>::new())
        .default_ttl(secs(9))
        .build()
        .expect("valid");
    assert!(empty.event_type_ttls().is_empty());
    assert_eq!(
        empty.ttl_for_event_type("huleedu.essay.spellcheck.requested.v1"),
        secs(9)
    );
}

#[test]
fn setters_are_reflected_by_getters() {
    let c = IdempotencyConfig::builder("svc")
        .key_prefix("acme:idem")
        .debug_logging(true)
        .lease(secs(30))
        .on_store_error(FailMode::Closed)
        .store_timeout(Duration::from_millis(50))
        .in_progress_wait(secs(2))
        .build()
        .expect("valid");
    assert_eq!(c.key_prefix(), "acme:idem");
    assert!(c.debug_logging());
    assert_eq!(c.lease(), secs(30));
    assert_eq!(c.on_store_error(), FailMode::Closed);
    assert_eq!(c.store_timeout(), Duration::from_millis(50));
    assert_eq!(c.in_progress_wait(), secs(2));
    assert_eq!(c.service_namespace(), "acme:idem:svc:");
}

#[test]
fn build_rejects_bad_service_names() {
    assert_eq!(
        IdempotencyConfig::builder("").build().unwrap_err(),
        ConfigError::EmptyServiceName
    );
    for bad in [
        "a:b", "a b", "a\tb", "a\nb", "a*", "a?", "a[1]", "{a}", "sérvice", "a\u{0}b",
    ] {
        let err = IdempotencyConfig::builder(bad).build().unwrap_err();
        assert!(
            matches!(err, ConfigError::InvalidServiceName { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn build_rejects_bad_prefixes() {
    let err = IdempotencyConfig::builder("svc")
        .key_prefix("")
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::EmptyKeyPrefix);
    for bad in ["a b", "a*", ":a", "a:", "a::b", "pré"] {
        let err = IdempotencyConfig::builder("svc")
            .key_prefix(bad)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::InvalidKeyPrefix { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn build_rejects_zero_durations() {
    let zero = Duration::ZERO;
    let tiny = Duration::from_micros(999);
    let cases = [
        IdempotencyConfig::builder("svc").default_ttl(zero).build(),
        IdempotencyConfig::builder("svc").lease(zero).build(),
        IdempotencyConfig::builder("svc").lease(tiny).build(),
        IdempotencyConfig::builder("svc")
            .store_timeout(zero)
            .build(),
        IdempotencyConfig::builder("svc")
            .event_type_ttl("t.v1", zero)
            .build(),
    ];
    for case in cases {
        assert!(
            matches!(case, Err(ConfigError::DurationTooShort { .. })),
            "{case:?}"
        );
    }
    let err = IdempotencyConfig::builder("svc")
        .event_type_ttl("", secs(1))
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::EmptyEventType);
}

/// What configuration.md says of durations: the TTLs, the lease, the store timeout, the
/// deferred-completion delay and an enabled breaker's cool-down are at least 1 ms; the
/// in-progress wait is a limit on waiting and takes any value.
#[test]
fn only_the_in_progress_wait_and_a_disabled_breakers_cooldown_may_be_under_a_millisecond() {
    let tiny = Duration::from_nanos(10);
    for case in [
        IdempotencyConfig::builder("svc")
            .defer_completion(tiny)
            .build(),
        IdempotencyConfig::builder("svc")
            .circuit_breaker(3, tiny)
            .build(),
    ] {
        assert!(
            matches!(case, Err(ConfigError::DurationTooShort { .. })),
            "{case:?}"
        );
    }
    let waits = IdempotencyConfig::builder("svc")
        .in_progress_wait(tiny)
        .build()
        .expect("any wait");
    assert_eq!(waits.in_progress_wait(), tiny);
    IdempotencyConfig::builder("svc")
        .circuit_breaker(0, Duration::ZERO)
        .build()
        .expect("a disabled breaker's cool-down is not used");
}

#[test]
fn errors_read_well() {
    let err = IdempotencyConfig::builder("a:b").build().unwrap_err();
    assert_eq!(
        err.to_string(),
        "service name \"a:b\" is invalid: it contains ':', the key separator"
    );
}

#[test]
fn generate_key_follows_the_v2_format() {
    let c = IdempotencyConfig::builder("essay-lifecycle-service")
        .build()
        .expect("valid");
    assert_eq!(
        c.generate_key("huleedu.els.batch.essays.ready.v1", "0123abcd"),
        "huleedu:idempotency:v2:essay-lifecycle-service:huleedu_els_batch_essays_ready_v1:0123abcd"
    );
}

#[test]
fn the_key_scheme_defaults_to_eventonces_and_python_v2_keeps_underscores() {
    let default = IdempotencyConfig::builder("svc").build().expect("valid");
    assert_eq!(default.key_scheme(), KeyScheme::Eventonce);
    let v2 = IdempotencyConfig::builder("svc")
        .key_scheme(KeyScheme::PythonV2)
        .build()
        .expect("valid");
    assert_eq!(v2.key_scheme(), KeyScheme::PythonV2);
    let t = "huleedu.cj_assessment.completed.v1";
    assert_eq!(
        default.generate_key(t, "h"),
        "huleedu:idempotency:v2:svc:huleedu_cj%5Fassessment_completed_v1:h"
    );
    assert_eq!(
        v2.try_generate_key(t, "h").as_deref(),
        Ok("huleedu:idempotency:v2:svc:huleedu_cj_assessment_completed_v1:h")
    );
    assert_eq!(
        v2.generate_key(t, "h"),
        v2.try_generate_key(t, "h").unwrap_or_default()
    );
    // A type the scheme refuses: an error from try_generate_key; generate_key stays in
    // the namespace with the default scheme's escaped segment.
    assert!(v2.try_generate_key("a:*", "h").is_err());
    assert_eq!(
        v2.generate_key("a:*", "h"),
        "huleedu:idempotency:v2:svc:a%3A%2A:h"
    );
}

#[test]
fn one_ttl_for_every_event_type() {
    let c = IdempotencyConfig::builder_with_ttl("svc", secs(60))
        .build()
        .expect("valid");
    assert!(c.event_type_ttls().is_empty());
    assert_eq!(c.default_ttl(), secs(60));
    for (event_type, _) in DEFAULT_EVENT_TYPE_TTLS {
        assert_eq!(c.ttl_for_event_type(event_type), secs(60), "{event_type}");
    }
    assert_eq!(c.ttl_for_event_type("anything.v1"), secs(60));
    // Exceptions can still be added, and the rest of the builder is the usual one.
    let c = IdempotencyConfig::builder_with_ttl("svc", secs(60))
        .event_type_ttl("slow.v1", secs(7200))
        .key_scheme(KeyScheme::PythonV2)
        .build()
        .expect("valid");
    assert_eq!(c.ttl_for_event_type("slow.v1"), secs(7200));
    assert_eq!(c.ttl_for_event_type("fast.v1"), secs(60));
    assert_eq!(c.lease(), secs(300));
    // The Python backward-compatible function's behaviour (its ttl_seconds reached only
    // types outside the tiers) is `default_ttl` on the ordinary builder.
    let tiers_kept = IdempotencyConfig::builder("svc")
        .default_ttl(secs(60))
        .build()
        .expect("valid");
    assert_eq!(
        tiers_kept.ttl_for_event_type("huleedu.essay.spellcheck.completed.v1"),
        secs(3600)
    );
    assert!(matches!(
        IdempotencyConfig::builder_with_ttl("svc", Duration::ZERO).build(),
        Err(ConfigError::DurationTooShort { .. })
    ));
}

#[test]
fn config_is_cheap_to_clone_and_shared() {
    let c = IdempotencyConfig::builder("svc").build().expect("valid");
    let d = c.clone();
    assert_eq!(c.service_name().as_ptr(), d.service_name().as_ptr());
}

#[test]
fn build_rejects_durations_no_store_can_represent_and_names_the_setting() {
    use eventonce::config::defaults::{MAX_TTL, MAX_WAIT};
    let too_long = |b: eventonce::ConfigBuilder| match b.build() {
        Err(ConfigError::DurationTooLong { what, value, max }) => {
            assert!(value > max, "{what}: {value:?} > {max:?}");
            what
        }
        other => panic!("expected DurationTooLong, got {other:?}"),
    };
    let b = || IdempotencyConfig::builder("svc");
    assert_eq!(too_long(b().default_ttl(Duration::MAX)), "default_ttl");
    assert_eq!(too_long(b().lease(Duration::MAX)), "processing_ttl");
    assert_eq!(too_long(b().store_timeout(Duration::MAX)), "store_timeout");
    assert_eq!(
        too_long(b().in_progress_wait(Duration::MAX)),
        "in_progress_wait"
    );
    assert_eq!(
        too_long(b().circuit_breaker(3, Duration::MAX)),
        "circuit breaker cooldown"
    );
    assert_eq!(
        too_long(b().event_type_ttl("a.v1", MAX_TTL + Duration::from_millis(1))),
        "ttl of event type \"a.v1\""
    );
    // The deferred completion must be written while the lease holds.
    let what = too_long(
        b().lease(secs(10))
            .defer_completion(Duration::from_millis(5001)),
    );
    assert!(what.contains("deferred completion delay"), "{what}");
    let err = b()
        .default_ttl(Duration::MAX)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("default_ttl must be at most"), "{err}");

    // The bounds themselves are accepted.
    let config = b()
        .default_ttl(MAX_TTL)
        .lease(MAX_TTL)
        .store_timeout(MAX_WAIT)
        .in_progress_wait(MAX_WAIT)
        .circuit_breaker(3, MAX_WAIT)
        .defer_completion(MAX_TTL / 2)
        .build()
        .expect("the bounds are valid");
    assert_eq!(config.default_ttl(), MAX_TTL);
    // A disabled breaker's cooldown is never used, so it is not checked.
    assert!(b().circuit_breaker(0, Duration::MAX).build().is_ok());
}

#[tokio::test]
async fn the_longest_settings_run_events_without_panicking() {
    use eventonce::config::defaults::{MAX_TTL, MAX_WAIT};
    use eventonce::{EventEnvelope, Guard, MemoryStore, Outcome};
    let config = IdempotencyConfig::builder("svc")
        .default_ttl(MAX_TTL)
        .lease(MAX_TTL)
        .in_progress_wait(MAX_WAIT)
        .circuit_breaker(1, MAX_WAIT)
        .build()
        .expect("valid");
    let guard = Guard::new(MemoryStore::new(), config);
    let event = EventEnvelope::new("a.v1", serde_json::json!({"n": 1}));
    let first = guard
        .run(&event, async { Ok::<_, std::io::Error>(1) })
        .await;
    assert!(matches!(first, Ok(Outcome::Processed(1))), "{first:?}");
    let second = guard
        .run(&event, async { Ok::<_, std::io::Error>(2) })
        .await;
    assert!(matches!(second, Ok(Outcome::Duplicate)), "{second:?}");
}

#[test]
fn service_names_and_prefixes_over_200_bytes_are_refused() {
    let at = "s".repeat(200);
    assert!(IdempotencyConfig::builder(at.clone())
        .key_prefix(at.clone())
        .build()
        .is_ok());
    let over = "s".repeat(201);
    let err = IdempotencyConfig::builder(over.clone())
        .build()
        .expect_err("too long");
    assert!(
        matches!(err, ConfigError::InvalidServiceName { reason, .. } if reason.contains("200 bytes")),
        "{err:?}"
    );
    let err = IdempotencyConfig::builder("billing")
        .key_prefix(over)
        .build()
        .expect_err("too long");
    assert!(
        matches!(err, ConfigError::InvalidKeyPrefix { reason, .. } if reason.contains("200 bytes")),
        "{err:?}"
    );
}
