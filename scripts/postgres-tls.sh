#!/usr/bin/env bash
# Two more PostgreSQL servers on loopback for the TLS tests (the `postgres-tls` feature):
# one with TLS on (`ssl=on`, a certificate authority and a server certificate made here
# with openssl, plus a second, unrelated authority for the wrong-CA case), and one with
# TLS off (`ssl=off`: the usual local server may well have it on). Each has its own data
# directory under target/ (or a temporary one, see DIR) and a free loopback port.
#
#   scripts/postgres-tls.sh start   # starts them (or finds them running), prints the settings
#   scripts/postgres-tls.sh stop    # stops them and removes their files
#   scripts/postgres-tls.sh url     # prints the settings of the running servers
#
# The settings, one per line:
#   POSTGRES_TLS_URL=postgres://postgres@localhost:PORT/postgres   (trust auth, no sslmode)
#   POSTGRES_TLS_CA=.../ca.crt               the authority that signed the server's certificate
#   POSTGRES_TLS_WRONG_CA=.../wrong-ca.crt   an authority that signed nothing of it
#   POSTGRES_PLAIN_URL=postgres://postgres@127.0.0.1:PORT/postgres  (ssl=off)
# The servers listen on 127.0.0.1; the certificate names `localhost` only (so verify-full
# to 127.0.0.1 fails on the name and verify-ca does not). Run as root, the servers run as
# the `postgres` user (initdb refuses root). Safe to run again, and from several processes.
set -euo pipefail
cd "$(dirname "$0")/.."

# The servers' files: under this clone's target/, or, when run as root in a clone the
# `postgres` user cannot reach (under /root, say), in a temporary directory of this clone's.
DIR="${EVENTONCE_PG_TLS_DIR:-$PWD/target/postgres-tls}"
if [ -z "${EVENTONCE_PG_TLS_DIR:-}" ] && [ "$(id -u)" -eq 0 ] &&
  ! runuser -u postgres -- test -x "$PWD" 2>/dev/null; then
  DIR="${TMPDIR:-/tmp}/eventonce-postgres-tls-$(printf '%s' "$PWD" | cksum | cut -d' ' -f1)"
fi

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

# as_server CMD...: runs CMD as the user that owns the data directories.
as_server() {
  if [ "$(id -u)" -eq 0 ]; then
    # From /: the clone itself may be out of the `postgres` user's reach.
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

settings() {
  echo "POSTGRES_TLS_URL=postgres://postgres@localhost:$(cat "$DIR/tls/port")/postgres"
  echo "POSTGRES_TLS_CA=$DIR/ca.crt"
  echo "POSTGRES_TLS_WRONG_CA=$DIR/wrong-ca.crt"
  echo "POSTGRES_PLAIN_URL=postgres://postgres@127.0.0.1:$(cat "$DIR/plain/port")/postgres"
}

# up NAME: whether the server NAME (tls or plain) answers.
up() {
  [ -f "$DIR/$1/port" ] && [ -f "$DIR/$1/data/postmaster.pid" ] &&
    "$(bindir)/pg_isready" -q -h 127.0.0.1 -p "$(cat "$DIR/$1/port")" -t 2
}

running() { up tls && up plain; }

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
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$DIR/server.key" -out "$DIR/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$DIR/server.ext"
  openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" \
    -CAcreateserial -days "$days" -extfile "$DIR/server.ext" -out "$DIR/server.crt" 2>/dev/null
}

# server NAME SSL: makes and starts the server NAME with `ssl = SSL` (on or off).
server() {
  local name=$1 ssl=$2 bin dir="$DIR/$1"
  bin=$(bindir)
  mkdir -p "$dir/data"
  free_port >"$dir/port"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres: "$DIR"
  fi
  as_server "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync \
    >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    echo "postgres-tls: initdb of the $name server failed" >&2
    return 1
  }
  {
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $(cat "$dir/port")"
    echo "unix_socket_directories = ''"
    echo "ssl = $ssl"
    echo "fsync = off"
    echo "max_connections = 40"
  } >>"$dir/data/postgresql.conf"
  if [ "$ssl" = on ]; then
    as_server cp "$DIR/server.crt" "$DIR/server.key" "$dir/data/"
    chmod 600 "$dir/data/server.key"
    printf "ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n" >>"$dir/data/postgresql.conf"
  fi
  printf 'host all all 127.0.0.1/32 trust\n' >"$dir/data/pg_hba.conf"
  # The server must not inherit the lock's descriptor (fd 9): it would hold the lock.
  as_server "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start >/dev/null 9>&- || {
    cat "$dir/server.log" >&2
    echo "postgres-tls: the $name server did not start" >&2
    return 1
  }
}

start_locked() {
  if running; then
    settings
    return 0
  fi
  stop_quietly
  mkdir -p "$DIR"
  certificates
  server tls on
  server plain off
  for _ in $(seq 1 100); do
    if running; then
      settings
      return 0
    fi
    sleep 0.1
  done
  echo "postgres-tls: the servers did not become ready" >&2
  return 1
}

stop_quietly() {
  local name
  for name in tls plain; do
    if [ -f "$DIR/$name/data/postmaster.pid" ]; then
      as_server "$(bindir)/pg_ctl" -D "$DIR/$name/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
  done
  rm -rf "$DIR"
}

# One caller at a time (tests of several processes may start them together).
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
