#!/usr/bin/env bash
# `make test`: formatting, lints, docs, the fuzz smoke run and every test of the workspace
# with all features against real servers (Redis, PostgreSQL, a Redis Cluster, a
# Kafka-protocol broker, all on loopback, started here when missing).
#
# Stages run one after the other (each already uses both cores); the broker is installed
# in the background from the start. At the end one `timing:` line per stage, then the
# test total again as the last line. The first failing stage stops the run.
#
# The order shares work: the test build comes first (the tests need it and it is the
# longest compile), clippy and rustdoc then share their check-mode builds of the
# dependencies, and the soak is an integration test of the test build rather than a
# separate build.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO="${CARGO:-cargo}"

names=()
millis=()
start_all=$(date +%s%N)
total_line=""

report() {
  echo
  local i
  for i in "${!names[@]}"; do
    printf 'timing: %-12s %8.1f s\n' "${names[$i]}" "$(awk "BEGIN {print ${millis[$i]} / 1000}")"
  done
  local all=$((($(date +%s%N) - start_all) / 1000000))
  printf 'timing: %-12s %8.1f s\n' total "$(awk "BEGIN {print $all / 1000}")"
  if [ -n "$total_line" ]; then
    echo "$total_line"
  fi
}

# stage NAME COMMAND...: runs COMMAND, records its wall time; stops everything on failure.
stage() {
  local name=$1
  shift
  echo "==> $name: $*"
  local t0
  t0=$(date +%s%N)
  "$@"
  local status=$?
  names+=("$name")
  millis+=($((($(date +%s%N) - t0) / 1000000)))
  if [ "$status" -ne 0 ]; then
    report
    echo "make test: stage '$name' failed (exit $status)"
    exit "$status"
  fi
}

tests() {
  bash scripts/unit-tests.sh
  local status=$?
  total_line=$(grep -E '^total: [0-9]+ passed, [0-9]+ failed$' target/test.log.total 2>/dev/null | tail -1)
  return "$status"
}

stage services bash scripts/services.sh ensure
stage broker bash scripts/kafka.sh prebuild
stage fmt "$CARGO" fmt --all -- --check
stage build "$CARGO" test --workspace --all-features --no-run --quiet
stage lint "$CARGO" clippy --workspace --all-targets --all-features --quiet -- -D warnings
stage doc env RUSTDOCFLAGS="-D warnings" "$CARGO" doc --workspace --all-features --no-deps --quiet
# The publishable crates as crates.io would take them: packaged, and each package built
# on its own from its packaged sources (verification), so that a file left out of a
# crate's package fails here and not at publishing time.
stage package "$CARGO" publish --workspace --dry-run --allow-dirty --quiet
# eventonce must not change serde_json's behaviour for the programs depending on it.
stage serde-probe bash scripts/serde-probe.sh
stage fuzz bash scripts/fuzz.sh 20
stage tests tests
report
