#!/usr/bin/env bash
# Fuzzes EventEnvelope::from_slice, identity and keys with cargo-fuzz (libFuzzer) for
# SECONDS (default 20), seeded from tests/corpus. Prints the executions and the findings;
# exits non-zero on a finding (the input is left in fuzz/artifacts/envelope/).
#
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them,
# and `-s none` leaves out the sanitizer runtime, which stable does not ship.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_TO_RUN="${1:-20}"
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
mkdir -p corpus/envelope
for f in ../tests/corpus/*.json ../tests/corpus/*.bin; do
  cp "$f" corpus/envelope/ 2>/dev/null || true
done
log=$(mktemp)
status=0
RUSTC_BOOTSTRAP=1 cargo fuzz run -s none envelope corpus/envelope -- \
  -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -print_final_stats=1 >"$log" 2>&1 || status=$?
runs=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)
execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)
findings=$(ls artifacts/envelope 2>/dev/null | wc -l)
if [ "$status" -ne 0 ]; then
  grep -A12 'panicked at' "$log" | head -30 || tail -30 "$log"
fi
echo "fuzz: envelope target, ${execs:-0} executions (${runs:-no summary}), $findings finding(s)"
rm -f "$log"
exit "$status"
