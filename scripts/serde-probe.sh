#!/usr/bin/env bash
# Asserts that eventonce changes nothing in serde_json's behaviour for the programs that
# depend on it: tests/serde-probe runs ordinary serde_json patterns (untagged and
# internally tagged enums, flatten, number equality and re-serialisation, float parsing),
# built once alone and once with eventonce and every feature of the facade in its tree,
# and the two outputs must be the same. Cargo unifies a crate's features across a build,
# so one behaviour-changing feature (`arbitrary_precision`, `float_roundtrip`,
# `preserve_order`, ...) enabled anywhere in eventonce's graph shows here.
#
# The probe is run without eventonce's `kafka` feature (librdkafka is a C build when cold);
# PROBE_KAFKA=1 runs it with it. The features serde_json gets are checked with `kafka`
# either way (dependency resolution only).
# Builds into the workspace's target/ (the probe's profile matches the workspace's), so a
# warm run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
manifest=tests/serde-probe/Cargo.toml
target="$PWD/target"
features=with-eventonce
if [ "${PROBE_KAFKA:-0}" = 1 ]; then
  features=with-kafka
fi

# The features serde_json gets in a build with eventonce, `kafka` included (resolution
# only, no build): none beyond those that change nothing.
for with in with-eventonce with-kafka; do
  if ! tree=$("$CARGO" tree --manifest-path "$manifest" --features "$with" \
    -e normal,build,features -i serde_json --prefix none 2>&1); then
    echo "$tree"
    echo "serde-probe: cargo tree failed for $with"
    exit 1
  fi
  enabled=$(echo "$tree" | grep -o 'serde_json feature "[a-z_]*"' | sed 's/.*"\(.*\)"/\1/' |
    sort -u | tr '\n' ' ' || true)
  echo "serde_json features with eventonce ($with): $enabled"
  for feature in $enabled; do
    case $feature in
      default | std | alloc | raw_value) ;;
      *)
        echo "serde-probe: eventonce ($with) enables serde_json's \"$feature\", which changes its behaviour for every program depending on eventonce"
        exit 1
        ;;
    esac
  done
done

"$CARGO" run --quiet --manifest-path "$manifest" --target-dir "$target" >target/serde-probe.alone
"$CARGO" run --quiet --manifest-path "$manifest" --target-dir "$target" --features "$features" \
  >target/serde-probe.with
if ! diff -u target/serde-probe.alone target/serde-probe.with; then
  echo "serde-probe: serde_json behaves differently once eventonce is a dependency (diff above: - alone, + with eventonce)"
  exit 1
fi
echo "serde-probe: $(wc -l <target/serde-probe.alone) patterns behave the same with and without eventonce ($features)"
