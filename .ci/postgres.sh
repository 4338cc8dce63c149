#!/usr/bin/env bash
# Start a throw-away PostgreSQL server for the tune tests, bound to 127.0.0.1 only, and print its URL.
#
#   eval "$(bash .ci/postgres.sh start)"   # exports LONGSHORT_TEST_POSTGRES=postgresql://...
#   bash .ci/postgres.sh stop
#
# Installs Debian's postgresql package when no server binaries are found (root only). Any failure prints a
# warning and no URL: the tests then run on SQLite alone, as they do on a developer machine without a server.
set -uo pipefail
PGDATA_DIR="${LONGSHORT_PGDATA:-/tmp/longshort-pg}"
PGPORT="${LONGSHORT_PGPORT:-54329}"

warn() { echo "postgres.sh: $*; the tune tests will use SQLite only" >&2; }

bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

as_owner() {  # the server refuses to run as root: run it as the package's postgres user
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local bin
  bin=$(bindir)
  if [ -z "$bin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "postgres.sh: installing Debian's postgresql package" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1
    bin=$(bindir)
  fi
  if [ -z "$bin" ]; then warn "no PostgreSQL server binaries"; return 0; fi
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then warn "no postgres user"; return 0; fi
  stop  # a server left over from an earlier run of this script
  rm -rf "$PGDATA_DIR" && mkdir -p "$PGDATA_DIR"
  [ "$(id -u)" = 0 ] && chown postgres "$PGDATA_DIR"
  if ! as_owner "$bin/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 >"$PGDATA_DIR.initdb.log" 2>&1; then
    warn "initdb failed (see $PGDATA_DIR.initdb.log)"; return 0
  fi
  if ! as_owner "$bin/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGDATA_DIR -c max_connections=100" start >/dev/null; then
    warn "the server did not start (see $PGDATA_DIR/server.log)"; return 0
  fi
  echo "postgres.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT" >&2
  echo "export LONGSHORT_TEST_POSTGRES=postgresql://postgres@127.0.0.1:$PGPORT/postgres"
}

stop() {
  local bin
  bin=$(bindir) || return 0
  [ -f "$PGDATA_DIR/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null 2>&1
  return 0
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
