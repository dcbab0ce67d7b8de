#!/usr/bin/env bash
# Runs every test of the workspace with all features against the real services: Redis and
# PostgreSQL on loopback (scripts/services.sh), and a Redis Cluster, two PostgreSQL servers
# for the TLS tests (POSTGRES_TLS_URL, ...) and a Kafka-protocol broker (KAFKA_BOOTSTRAP)
# started here and stopped afterwards. Prints a total line at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"

cluster=$(bash scripts/redis-cluster.sh start) || { echo "$cluster"; exit 1; }
echo "$cluster"
export REDIS_CLUSTER_URL="${cluster#REDIS_CLUSTER_URL=}"
# The two PostgreSQL servers of the TLS tests (ssl=on with a CA of its own, and ssl=off).
pgtls=$(bash scripts/postgres-tls.sh start) || { echo "$pgtls"; bash scripts/redis-cluster.sh stop >/dev/null 2>&1; exit 1; }
echo "$pgtls"
while IFS= read -r setting; do
  export "${setting?}"
done <<<"$pgtls"
cleanup() {
  bash scripts/redis-cluster.sh stop >/dev/null 2>&1
  bash scripts/postgres-tls.sh stop >/dev/null 2>&1
}
trap cleanup EXIT

# The Kafka-protocol broker of the end-to-end tests (built once per machine, then
# cached). A broker that was already running (`make kafka`) is used and left running.
if bash scripts/kafka.sh url >/dev/null 2>&1; then
  kafka=$(bash scripts/kafka.sh url)
else
  kafka=$(bash scripts/kafka.sh start) || { echo "$kafka"; exit 1; }
  cleanup() {
    bash scripts/redis-cluster.sh stop >/dev/null 2>&1
    bash scripts/postgres-tls.sh stop >/dev/null 2>&1
    bash scripts/kafka.sh stop >/dev/null 2>&1
  }
fi
echo "$kafka"
export KAFKA_BOOTSTRAP="${kafka#KAFKA_BOOTSTRAP=}"

mkdir -p target
"$CARGO" test --workspace --all-features --no-fail-fast 2>&1 | tee target/test.log
status=${PIPESTATUS[0]}
awk '/^test result:/ {p += $4; f += $6}
     /^[a-z_]+: [0-9]+ passed, [0-9]+ failed$/ {p += $2; f += $4}
     END {printf "\ntotal: %d passed, %d failed\n", p, f}' target/test.log | tee target/test.log.total
exit "$status"
