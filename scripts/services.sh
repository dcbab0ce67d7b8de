#!/usr/bin/env bash
# Makes sure the services the test suite talks to are running on loopback:
# Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (trust auth, database `test`).
# A service already answering is left alone; a missing one is installed from Debian's
# packages (when absent) and started.
set -euo pipefail

REDIS_PORT="${EVENTONCE_REDIS_PORT:-6379}"
PG_PORT="${EVENTONCE_PG_PORT:-5432}"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 100); do
    port_open "$port" && return 0
    sleep 0.1
  done
  echo "services: $what did not open port $port" >&2
  return 1
}

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "services: $* missing and not root; install it or start the service yourself" >&2
    return 1
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
  # The tests also start redis-server processes of their own (outages, the cluster).
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt_install redis-server redis-tools
  fi
  if port_open "$REDIS_PORT"; then
    echo "services: redis on 127.0.0.1:$REDIS_PORT is up"
    return 0
  fi
  mkdir -p /tmp/eventonce-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir /tmp/eventonce-redis --logfile /tmp/eventonce-redis/redis.log
  wait_port "$REDIS_PORT" redis
  echo "services: started redis on 127.0.0.1:$REDIS_PORT"
}

ensure_postgres() {
  if port_open "$PG_PORT"; then
    echo "services: postgresql on 127.0.0.1:$PG_PORT is up"
  else
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      apt_install postgresql
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -1)
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    if ! grep -q "eventonce-trust" "$hba"; then
      sed -i '1i host all all 127.0.0.1/32 trust # eventonce-trust' "$hba"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_port "$PG_PORT" postgresql
    echo "services: started postgresql $version on 127.0.0.1:$PG_PORT"
  fi
  if ! psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c 'create database test' >/dev/null \
      || su postgres -c "createdb -p $PG_PORT test"
  fi
}

case "${1:-ensure}" in
  ensure)
    ensure_redis
    ensure_postgres
    ;;
  *)
    echo "usage: $0 [ensure]" >&2
    exit 2
    ;;
esac
