#!/usr/bin/env bash
# A real Kafka-protocol broker on loopback for the end-to-end tests: `nisshi` (the
# successor of tansu, Apache-2.0) with in-memory storage, so every start is a clean
# cluster. No Docker, no JVM.
#
#   scripts/kafka.sh build   # builds the broker once (cached), prints its path
#   scripts/kafka.sh prebuild # starts that build in the background and returns at once
#   scripts/kafka.sh start   # builds if needed, starts it (or finds it running),
#                            # prints KAFKA_BOOTSTRAP=127.0.0.1:PORT
#   scripts/kafka.sh stop    # stops it
#   scripts/kafka.sh url     # prints KAFKA_BOOTSTRAP=... of the running broker
#
# The binary is built once per machine with `cargo install` into the user's cache
# directory (EVENTONCE_CACHE, default ${XDG_CACHE_HOME:-~/.cache}/eventonce), outside any
# clone, so later runs reuse it. The build directory is kept there too, so an interrupted
# build resumes where it stopped. A cold build takes about 25 minutes on 2 cores.
set -euo pipefail

VERSION=0.8.1
CACHE="${EVENTONCE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eventonce}"
ROOT="$CACHE/nisshi-$VERSION"
BIN="$ROOT/bin/nisshi"
RUN="${TMPDIR:-/tmp}/eventonce-kafka"
CARGO="${CARGO:-cargo}"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

build() {
  mkdir -p "$ROOT"
  # One build at a time, even when several make targets ask at once.
  exec 9>"$ROOT/.lock"
  flock 9
  if [ ! -x "$BIN" ]; then
    echo "kafka: building nisshi $VERSION once into $ROOT (about 25 minutes cold on 2 cores)" >&2
    # --ignore-rust-version: one dependency declares a newer Rust than it needs.
    # dynostore brings the in-memory storage engine.
    "$CARGO" install nisshi --version "$VERSION" --locked --ignore-rust-version \
      --no-default-features --features dynostore \
      --root "$ROOT" --target-dir "$ROOT/build" >"$ROOT/build.log" 2>&1 || {
      tail -40 "$ROOT/build.log" >&2
      echo "kafka: building nisshi failed (full log: $ROOT/build.log)" >&2
      exit 1
    }
    rm -rf "$ROOT/build"
  fi
  flock -u 9
  echo "$BIN"
}

prebuild() {
  if [ -x "$BIN" ]; then
    return 0
  fi
  mkdir -p "$ROOT"
  # `start` waits for it on the build lock.
  setsid bash "$0" build >/dev/null 2>&1 </dev/null &
  echo "kafka: building nisshi $VERSION in the background (log: $ROOT/build.log)"
}

running_port() {
  [ -f "$RUN/pid" ] && [ -f "$RUN/port" ] || return 1
  kill -0 "$(cat "$RUN/pid")" 2>/dev/null || return 1
  local port
  port=$(cat "$RUN/port")
  port_open "$port" || return 1
  echo "$port"
}

url() {
  local port
  port=$(running_port) || {
    echo "kafka: no broker running (scripts/kafka.sh start)" >&2
    exit 1
  }
  echo "KAFKA_BOOTSTRAP=127.0.0.1:$port"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
  local port
  if port=$(running_port); then
    echo "KAFKA_BOOTSTRAP=127.0.0.1:$port"
    return 0
  fi
  build >/dev/null
  stop_quietly
  mkdir -p "$RUN"
  for _ in 1 2 3; do
    port=$(free_port)
    setsid "$BIN" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine memory://nisshi/ \
      --group-initial-rebalance-delay 0s \
      >"$RUN/broker.log" 2>&1 </dev/null &
    echo $! >"$RUN/pid"
    echo "$port" >"$RUN/port"
    for _ in $(seq 1 100); do
      if port_open "$port"; then
        echo "KAFKA_BOOTSTRAP=127.0.0.1:$port"
        return 0
      fi
      kill -0 "$(cat "$RUN/pid")" 2>/dev/null || break
      sleep 0.1
    done
    stop_quietly # the port was taken meanwhile, or the broker died: try another
  done
  tail -20 "$RUN/broker.log" >&2 || true
  echo "kafka: the broker did not start" >&2
  exit 1
}

stop_quietly() {
  if [ -f "$RUN/pid" ]; then
    local pid
    pid=$(cat "$RUN/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN/pid" "$RUN/port"
}

case "${1:-}" in
  build) build ;;
  prebuild) prebuild ;;
  start) start ;;
  stop) stop_quietly; echo "kafka: stopped" ;;
  url) url ;;
  *)
    echo "usage: $0 build|prebuild|start|stop|url" >&2
    exit 2
    ;;
esac
