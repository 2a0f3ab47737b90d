#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests and benchmarks of the feedback store: a normal process, no system service.
#
#   scripts/pg_test_server.sh start [DIR]   initdb into DIR (default: a new /tmp/ragqa-pg.XXXXXX), start the server
#                                           listening on a unix socket in DIR only (no TCP), print two lines:
#                                             DIR=<dir>
#                                             DSN=postgresql://ragqa@/postgres?host=<dir>
#   scripts/pg_test_server.sh stop DIR      stop the server (immediate: no shutdown checkpoint, the data is
#                                           thrown away) and delete DIR
#
# Needs the server binaries (Debian/Ubuntu: `apt-get install -y postgresql`; found with pg_config, in
# /usr/lib/postgresql/*/bin, or in $PG_BIN). PostgreSQL refuses to run as root: as root the server runs as the
# `postgres` system user (runuser -u postgres), which owns DIR; as any other user it runs as that user.
# Authentication is `trust` on the private socket directory (mode 700), user `ragqa` (superuser).
# PG_FSYNC=off starts it without fsync (faster tests; durability of the server itself is then not tested).
# The socket path must stay under ~100 characters, hence the short default DIR.
set -euo pipefail

find_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then echo "$PG_BIN"; return; fi
    if command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then pg_config --bindir; return; fi
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$d" && -x "$d/initdb" ]]; then echo "$d"; return; fi
    if command -v initdb >/dev/null; then dirname "$(command -v initdb)"; return; fi
    echo "no PostgreSQL server binaries (initdb, pg_ctl); install them (apt-get install -y postgresql) or set PG_BIN" >&2
    exit 2
}

as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        if ! id postgres >/dev/null 2>&1; then
            echo "running as root and there is no 'postgres' user to run the server as" >&2
            exit 2
        fi
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

cmd=${1:-}
case "$cmd" in
start)
    bin=$(find_bin)
    dir=${2:-$(mktemp -d /tmp/ragqa-pg.XXXXXX)}
    mkdir -p "$dir"
    chmod 700 "$dir"
    if [[ "$(id -u)" == 0 ]]; then chown postgres: "$dir" 2>/dev/null || chown postgres "$dir"; fi
    as_owner "$bin/initdb" -D "$dir/data" -U ragqa --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
        "-c listen_addresses='' -c unix_socket_directories=$dir -c max_connections=200 -c fsync=${PG_FSYNC:-on}" \
        >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    echo "DIR=$dir"
    echo "DSN=postgresql://ragqa@/postgres?host=$dir"
    ;;
stop)
    dir=${2:?usage: pg_test_server.sh stop DIR}
    bin=$(find_bin)
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start [DIR] | stop DIR" >&2
    exit 2
    ;;
esac
