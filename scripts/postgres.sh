#!/usr/bin/env bash
# A private PostgreSQL for tests and the lab: no systemd, no port clash with
# a system server. Idempotent.
#
#   scripts/postgres.sh start    install Debian's postgresql if missing, make
#                                the cluster if missing, start it if stopped,
#                                create the database; print the DSN (stdout)
#   scripts/postgres.sh dsn      print the DSN
#   scripts/postgres.sh status   exit 0 when running
#   scripts/postgres.sh stop     stop it (the data stays)
#   scripts/postgres.sh destroy  stop it and remove its folder
#
# The server listens only on a unix socket in $LIFEBOAT_PG_DIR/sock (no TCP),
# runs as the postgres user when started by root, and trusts local
# connections. It is a lab database: fsync and synchronous commit are off
# unless LIFEBOAT_PG_DURABLE=1.
#
# Environment: LIFEBOAT_PG_DIR (default /tmp/lifeboat-pg), LIFEBOAT_PG_PORT
# (55432; names the socket), LIFEBOAT_PG_DB (lifeboat).
set -euo pipefail

dir=${LIFEBOAT_PG_DIR:-/tmp/lifeboat-pg}
port=${LIFEBOAT_PG_PORT:-55432}
db=${LIFEBOAT_PG_DB:-lifeboat}
data=$dir/data
sock=$dir/sock
log=$dir/server.log

say() { echo "postgres.sh: $*" >&2; }

bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"; return 0
  fi
  return 1
}

install() {
  if bindir >/dev/null; then return 0; fi
  if [ "$(id -u)" != 0 ]; then
    say "PostgreSQL is not installed; run as root to install it (apt-get install postgresql)"
    exit 1
  fi
  say "installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  bindir >/dev/null || { say "postgresql installed but initdb not found"; exit 1; }
}

# as runs a command as the cluster's owner: postgres when we are root (the
# server refuses to run as root), ourselves otherwise.
as() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

dsn() {
  echo "postgres:///$db?host=$sock&port=$port&user=postgres&sslmode=disable"
}

running() {
  local b
  b=$(bindir) || return 1
  [ -f "$data/PG_VERSION" ] || return 1
  as "$b/pg_ctl" -D "$data" status >/dev/null 2>&1
}

start() {
  install
  local b
  b=$(bindir)
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || { say "no postgres user (is the postgresql package installed?)"; exit 1; }
    chown postgres: "$dir"
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    rm -rf "$data"
    say "initdb $data"
    as "$b/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  as mkdir -p "$sock"
  if ! running; then
    local opts="-k $sock -p $port -c listen_addresses=''"
    if [ "${LIFEBOAT_PG_DURABLE:-}" != 1 ]; then
      opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    fi
    say "starting on $sock (port $port)"
    as "$b/pg_ctl" -D "$data" -l "$log" -w -t 60 -o "$opts" start >/dev/null ||
      { tail -n 30 "$log" >&2; exit 1; }
  fi
  local psql="$b/psql"
  [ -x "$psql" ] || psql=psql
  if ! "$psql" -h "$sock" -p "$port" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
    "$psql" -h "$sock" -p "$port" -U postgres -d postgres -qc "CREATE DATABASE \"$db\"" >/dev/null
  fi
  dsn
}

stop() {
  if running; then
    say "stopping"
    as "$(bindir)/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
  fi
}

case "${1:-start}" in
  start) start ;;
  dsn) dsn ;;
  status) running ;;
  stop) stop ;;
  destroy) stop; rm -rf "$dir" ;;
  *) say "usage: $0 start|dsn|status|stop|destroy"; exit 2 ;;
esac
