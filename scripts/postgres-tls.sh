#!/usr/bin/env bash
# A second PostgreSQL server on loopback with TLS on (`ssl=on`), for the `postgres-tls`
# tests: its own data directory under target/, a free port, and a certificate authority
# and server certificate made here with openssl (plus a second, unrelated authority for
# the wrong-CA case).
#
#   scripts/postgres-tls.sh start   # starts it (or finds it running), prints its settings
#   scripts/postgres-tls.sh stop    # stops it and removes its files
#   scripts/postgres-tls.sh url     # prints the settings of the running server
#
# The settings, one per line:
#   POSTGRES_TLS_URL=postgres://postgres@127.0.0.1:PORT/postgres   (trust auth, no sslmode)
#   POSTGRES_TLS_CA=.../ca.crt          the authority that signed the server's certificate
#   POSTGRES_TLS_WRONG_CA=.../wrong-ca.crt   an authority that signed nothing of it
# The certificate names 127.0.0.1 and localhost. Run as root, the server runs as the
# `postgres` user (initdb refuses root). Safe to run again and from several processes.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${EVENTONCE_PG_TLS_DIR:-$PWD/target/postgres-tls}"
DATA="$DIR/data"

bindir() {
  local dir
  if command -v pg_config >/dev/null && dir=$(pg_config --bindir 2>/dev/null) &&
    [ -x "$dir/initdb" ]; then
    echo "$dir"
    return 0
  fi
  # Debian keeps the server binaries out of PATH, one directory per version.
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
    echo "$dir"
    return 0
  fi
  echo "postgres-tls: no PostgreSQL server binaries (initdb) found; install postgresql" >&2
  return 1
}

# as_server CMD...: runs CMD as the user that owns the data directory.
as_server() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

settings() {
  echo "POSTGRES_TLS_URL=postgres://postgres@127.0.0.1:$(cat "$DIR/port")/postgres"
  echo "POSTGRES_TLS_CA=$DIR/ca.crt"
  echo "POSTGRES_TLS_WRONG_CA=$DIR/wrong-ca.crt"
}

running() {
  [ -f "$DIR/port" ] && [ -f "$DATA/postmaster.pid" ] &&
    "$(bindir)/pg_isready" -q -h 127.0.0.1 -p "$(cat "$DIR/port")" -t 2
}

free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "postgres-tls: no free port found" >&2
  return 1
}

certificates() {
  local days=3650
  openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=eventonce test CA" \
    -keyout "$DIR/ca.key" -out "$DIR/ca.crt" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=eventonce unrelated CA" \
    -keyout "$DIR/wrong-ca.key" -out "$DIR/wrong-ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$DIR/server.key" -out "$DIR/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$DIR/server.ext"
  openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" \
    -CAcreateserial -days "$days" -extfile "$DIR/server.ext" -out "$DIR/server.crt" 2>/dev/null
}

start_locked() {
  if running; then
    settings
    return 0
  fi
  local bin
  bin=$(bindir)
  stop_quietly
  mkdir -p "$DIR"
  certificates
  free_port >"$DIR/port"
  mkdir -p "$DATA"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres: "$DIR"
  fi
  as_server "$bin/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-sync >"$DIR/initdb.log" 2>&1 || {
    cat "$DIR/initdb.log" >&2
    echo "postgres-tls: initdb failed" >&2
    return 1
  }
  as_server cp "$DIR/server.crt" "$DIR/server.key" "$DATA/"
  chmod 600 "$DATA/server.key"
  cat >>"$DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $(cat "$DIR/port")
unix_socket_directories = ''
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
fsync = off
max_connections = 40
EOF
  printf 'host all all 127.0.0.1/32 trust\n' >"$DATA/pg_hba.conf"
  # The server must not inherit the lock's descriptor (fd 9): it would hold the lock.
  as_server "$bin/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 30 start >/dev/null 9>&- || {
    cat "$DIR/server.log" >&2
    echo "postgres-tls: the server did not start" >&2
    return 1
  }
  for _ in $(seq 1 100); do
    if running; then
      settings
      return 0
    fi
    sleep 0.1
  done
  echo "postgres-tls: the server did not become ready" >&2
  return 1
}

stop_quietly() {
  if [ -f "$DATA/postmaster.pid" ]; then
    as_server "$(bindir)/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$DIR"
}

# One caller at a time (tests of several processes may start it together).
locked() {
  mkdir -p "$(dirname "$DIR")"
  exec 9>"$DIR.lock"
  flock 9
  "$@"
}

case "${1:-}" in
  start) locked start_locked ;;
  stop) locked stop_quietly; echo "postgres-tls: stopped" ;;
  url) running && settings ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
