#!/usr/bin/env bash
# A throwaway PgBouncer (Debian package `pgbouncer`) in front of a PostgreSQL server, for the tests: its own
# directory under /tmp, its own port on 127.0.0.1, trust auth for user postgres and ll_cert_user, no
# startup parameters ignored (so a client that sends `options` is refused, as by a default PgBouncer).
# As root it runs as `postgres` (PgBouncer refuses root). Installs the package when missing and apt-get
# is there (as root).
#
#   throwaway-pgbouncer.sh start --to PORT [--mode transaction|session] [--port N] [--pool-size N]
#                                  start; prints the directory (DIR/url: postgres://postgres@127.0.0.1:N/postgres,
#                                  DIR/port, DIR/log)
#   throwaway-pgbouncer.sh stop DIR        stop (SIGINT: at once, clients are cut); start-again brings it back
#   throwaway-pgbouncer.sh start-again DIR start the stopped PgBouncer with the same settings
#   throwaway-pgbouncer.sh destroy DIR     stop and delete DIR; idempotent
set -euo pipefail

die() { echo "throwaway-pgbouncer: $*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
need_dir() { [ -n "${1:-}" ] && [ -f "$1/pgbouncer.ini" ] || die "not a throwaway PgBouncer's directory: '${1:-}'"; }
bouncer() {
  if ! command -v pgbouncer >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "throwaway-pgbouncer: installing pgbouncer (apt-get)" >&2
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        --no-install-recommends pgbouncer >/dev/null 2>&1 || apt-get update -qq >/dev/null 2>&1
      command -v pgbouncer >/dev/null 2>&1 \
        || DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
          --no-install-recommends pgbouncer >/dev/null
    fi
    command -v pgbouncer >/dev/null 2>&1 || die "pgbouncer not found: apt-get install pgbouncer"
  fi
  command -v pgbouncer
}
run() {
  local dir=$1 port
  port=$(cat "$dir/port")
  as_postgres "$(bouncer)" -d -q "$dir/pgbouncer.ini" || { cat "$dir/log" >&2 || true; die "pgbouncer did not start"; }
  for _ in $(seq 1 100); do
    port_open "$port" && return 0
    sleep 0.05
  done
  cat "$dir/log" >&2 || true
  die "pgbouncer does not listen on $port"
}
halt() {
  local dir=$1 pid
  [ -f "$dir/pid" ] || return 0
  pid=$(cat "$dir/pid" 2>/dev/null || true)
  [ -n "$pid" ] || return 0
  kill -INT "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null || true
}

cmd=${1:-}
shift || true
case "$cmd" in
  start)
    to="" mode=transaction port="" pool=2
    while [ $# -gt 0 ]; do
      case "$1" in
        --to) to=${2:?--to needs the PostgreSQL port}; shift 2 ;;
        --mode) mode=${2:?--mode needs transaction or session}; shift 2 ;;
        --port) port=${2:?--port needs a number}; shift 2 ;;
        --pool-size) pool=${2:?--pool-size needs a number}; shift 2 ;;
        *) die "start: unknown argument '$1'" ;;
      esac
    done
    [ -n "$to" ] || die "start: --to PORT (the PostgreSQL server's) is required"
    case "$mode" in transaction | session) ;; *) die "--mode must be transaction or session" ;; esac
    bouncer >/dev/null
    if [ -z "$port" ]; then
      for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 20000))
        port_open "$port" || break
      done
    fi
    dir=$(mktemp -d /tmp/leaderlease-pgbouncer.XXXXXX)
    chmod 755 "$dir"
    echo "$port" >"$dir/port"
    printf '"postgres" ""\n"ll_cert_user" ""\n' >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$to

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = $mode
default_pool_size = $pool
max_client_conn = 500
admin_users = postgres
logfile = $dir/log
pidfile = $dir/pid
EOF
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$dir"
    run "$dir"
    echo "postgres://postgres@127.0.0.1:$port/postgres" >"$dir/url"
    echo "$dir"
    ;;
  stop)
    need_dir "${1:-}"
    halt "$1"
    ;;
  start-again)
    need_dir "${1:-}"
    run "$1"
    ;;
  destroy)
    [ -n "${1:-}" ] || die "destroy: no directory"
    [ -d "$1" ] || exit 0
    halt "$1"
    rm -rf "$1"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    [ "$cmd" = --help ] || [ "$cmd" = -h ]
    ;;
esac
