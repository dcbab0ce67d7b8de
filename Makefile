# eventonce — developer commands. `make test` is what CI runs.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test demo services fmt lint doc unit

## The whole check: formatting, lints, docs, and every test of the workspace with all
## features against the real services (started here when missing).
test: services fmt lint doc unit

## Build and run the demo on the embedded in-memory store.
demo:
	$(CARGO) run --release --quiet -- demo

services:
	bash scripts/services.sh ensure

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --all-features --no-deps --quiet

unit:
	@mkdir -p target
	set -o pipefail; $(CARGO) test --workspace --all-features 2>&1 | tee target/test.log
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "\ntotal: %d passed, %d failed\n", p, f}' target/test.log
