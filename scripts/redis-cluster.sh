#!/usr/bin/env bash
# A real Redis Cluster on loopback for the tests: 3 masters and 3 replicas, each a
# `redis-server --cluster-enabled yes` process, joined with `redis-cli --cluster create`.
#
#   scripts/redis-cluster.sh start   # starts it (or finds it running), prints REDIS_CLUSTER_URL=...
#   scripts/redis-cluster.sh stop    # stops it and removes its files
#   scripts/redis-cluster.sh url     # prints REDIS_CLUSTER_URL=... of the running cluster
#
# Ports: EVENTONCE_CLUSTER_PORT (default 7101) and the five after it; Redis also uses
# each port + 10000 for the cluster bus.
set -euo pipefail

BASE="${EVENTONCE_CLUSTER_PORT:-7101}"
PORTS=$(seq "$BASE" $((BASE + 5)))
DIR="${TMPDIR:-/tmp}/eventonce-redis-cluster-$BASE"

url() {
  local urls=()
  for p in $PORTS; do urls+=("redis://127.0.0.1:$p"); done
  (IFS=,; echo "REDIS_CLUSTER_URL=${urls[*]}")
}

cluster_ok() {
  redis-cli -p "$BASE" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  local n
  n=$(redis-cli -p "$BASE" cluster nodes 2>/dev/null | grep -c connected || true)
  [ "$n" -eq 6 ]
}

start() {
  if cluster_ok; then
    url
    return 0
  fi
  command -v redis-server >/dev/null || bash "$(dirname "$0")/services.sh" ensure >/dev/null
  stop_quietly
  mkdir -p "$DIR"
  for p in $PORTS; do
    mkdir -p "$DIR/$p"
    redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$DIR/$p/nodes.conf" --cluster-node-timeout 3000 \
      --save "" --appendonly no --dir "$DIR/$p" --daemonize yes \
      --logfile "$DIR/$p/redis.log" --pidfile "$DIR/$p/redis.pid"
  done
  for p in $PORTS; do
    for _ in $(seq 1 100); do
      redis-cli -p "$p" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
  local nodes=()
  for p in $PORTS; do nodes+=("127.0.0.1:$p"); done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$DIR/create.log" 2>&1 || {
    cat "$DIR/create.log" >&2
    echo "redis-cluster: create failed" >&2
    exit 1
  }
  for _ in $(seq 1 200); do
    if cluster_ok && redis-cli --cluster check "127.0.0.1:$BASE" >/dev/null 2>&1; then
      url
      return 0
    fi
    sleep 0.1
  done
  echo "redis-cluster: the cluster did not become ready" >&2
  exit 1
}

stop_quietly() {
  for p in $PORTS; do
    redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true
  done
  rm -rf "$DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop_quietly; echo "redis-cluster: stopped" ;;
  url) cluster_ok && url ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
