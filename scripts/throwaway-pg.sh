#!/usr/bin/env bash
# The project's one throwaway PostgreSQL server: its own data directory under /tmp, its own port on
# 127.0.0.1, trust auth for user postgres, fsync off. Used by scripts/pg-env.sh and scripts/bench.sh, spawned
# by the chaos harness (tests/chaos/pg.mjs) and by the Rust tests (crates/leaderlease/tests/common). As
# root the server runs as `postgres` through runuser (initdb refuses root). Needs PostgreSQL's server
# binaries (Debian package `postgresql`).
#
#   throwaway-pg.sh start [--port N] [--tls] [-c name=value]...
#                                                         initdb and start; prints the directory (DIR/url:
#                                                         the URL, DIR/version, DIR/log); settings go to postgresql.conf.
#                                                         --tls: ssl = on with a CA and certificates made by openssl in
#                                                         DIR/tls (ca.pem, other-ca.pem: a CA that signed nothing here,
#                                                         server.pem for DNS:localhost only, client.pem/client.key for
#                                                         user ll_cert_user, whom pg_hba.conf admits by certificate only)
#   throwaway-pg.sh standby PRIMARY_DIR [--port N] [-c name=value]...
#                                                         a hot standby of that server (pg_basebackup -R, streaming
#                                                         replication; `-c cluster_name=NAME` names it for the
#                                                         primary's synchronous_standby_names); prints its directory
#   throwaway-pg.sh promote DIR                           promote a standby (pg_ctl promote, waits)
#   throwaway-pg.sh stop DIR [fast|immediate|smart]       stop (default fast); start-again brings it back
#   throwaway-pg.sh start-again DIR                       start the stopped server with the same settings
#   throwaway-pg.sh restart DIR                           pg_ctl restart -m fast (same port and settings)
#   throwaway-pg.sh destroy DIR                           stop (immediate) and delete DIR; idempotent
#   throwaway-pg.sh watch DIR PID                         destroy DIR once process PID has exited
set -euo pipefail

die() { echo "throwaway-pg: $*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
bin_dir() {
  local d found=""
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && found="$d"; done # the highest version
  if [ -z "$found" ] && command -v initdb >/dev/null 2>&1; then found=$(dirname "$(command -v initdb)"); fi
  [ -n "$found" ] || die "initdb not found: install PostgreSQL's server binaries (apt-get install postgresql)"
  echo "$found"
}
pg_ctl() { as_postgres "$(bin_dir)/pg_ctl" -D "$1/data" "${@:2}"; }
# Test certificates in $1 (EC P-256, valid 2 days), owned by the server's user: a CA, a second CA that
# signed nothing the server uses, the server's (subjectAltName DNS:localhost only, so that connecting
# to 127.0.0.1 with verify-full fails on the name) and a client certificate for ll_cert_user.
make_tls() {
  local t=$1 name
  as_postgres mkdir -m 755 "$t"
  ossl() { as_postgres openssl "$@" 2>/dev/null; }
  newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  ossl req -x509 "${newkey[@]}" -days 2 -subj "/CN=leaderlease test CA" -keyout "$t/ca.key" -out "$t/ca.pem"
  ossl req -x509 "${newkey[@]}" -days 2 -subj "/CN=leaderlease other CA" -keyout "$t/other-ca.key" \
    -out "$t/other-ca.pem"
  printf 'subjectAltName=DNS:localhost\n' | as_postgres tee "$t/server.ext" >/dev/null
  printf 'basicConstraints=CA:FALSE\n' | as_postgres tee "$t/client.ext" >/dev/null
  for name in server client; do
    local cn=localhost
    [ "$name" = client ] && cn=ll_cert_user
    ossl req "${newkey[@]}" -subj "/CN=$cn" -keyout "$t/$name.key" -out "$t/$name.csr"
    ossl x509 -req -in "$t/$name.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial -days 2 \
      -extfile "$t/$name.ext" -out "$t/$name.pem"
  done
  as_postgres chmod 600 "$t"/*.key
  [ -s "$t/server.pem" ] && [ -s "$t/client.pem" ]
}
need_dir() { [ -n "${1:-}" ] && [ -d "$1/data" ] || die "not a throwaway server's directory: '${1:-}'"; }

cmd=${1:-}
shift || true
case "$cmd" in
  start)
    port="" settings=() tls=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --port) port=${2:?--port needs a number}; shift 2 ;;
        --tls) tls=1; shift ;;
        -c) settings+=("${2:?-c needs name=value}"); shift 2 ;;
        *) die "start: unknown argument '$1'" ;;
      esac
    done
    if [ -z "$port" ]; then
      for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 20000))
        port_open "$port" || break
      done
    fi
    bin=$(bin_dir)
    dir=$(mktemp -d /tmp/leaderlease-pg.XXXXXX)
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    as_postgres "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync >/dev/null \
      || { rm -rf "$dir"; die "initdb failed"; }
    if [ -n "$tls" ]; then
      make_tls "$dir/tls" || { rm -rf "$dir"; die "openssl could not make the test certificates"; }
      settings+=("ssl=on" "ssl_cert_file=$dir/tls/server.pem" "ssl_key_file=$dir/tls/server.key"
        "ssl_ca_file=$dir/tls/ca.pem")
      # First match wins: ll_cert_user only over TLS with a client certificate of the test CA.
      { printf 'hostssl all ll_cert_user 127.0.0.1/32 cert\nhost all ll_cert_user 127.0.0.1/32 reject\n'
        cat "$dir/data/pg_hba.conf"; } >"$dir/pg_hba.new"
      as_postgres tee "$dir/data/pg_hba.conf" <"$dir/pg_hba.new" >/dev/null
      rm -f "$dir/pg_hba.new"
    fi
    {
      echo "port = $port"
      echo "listen_addresses = '127.0.0.1'"
      echo "unix_socket_directories = '$dir'"
      echo "fsync = off"
      for s in ${settings[@]+"${settings[@]}"}; do
        value=${s#*=}
        echo "${s%%=*} = '${value//\'/\'\'}'"
      done
    } | as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null
    if ! pg_ctl "$dir" -l "$dir/log" -w start >/dev/null; then
      cat "$dir/log" >&2 || true
      rm -rf "$dir"
      die "pg_ctl start failed (port $port)"
    fi
    echo "postgres://postgres@127.0.0.1:$port/postgres" >"$dir/url"
    "$bin/postgres" --version | awk '{print $3}' >"$dir/version"
    echo "$dir"
    ;;
  standby)
    need_dir "${1:-}"
    primary=$1
    shift
    port="" settings=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --port) port=${2:?--port needs a number}; shift 2 ;;
        -c) settings+=("${2:?-c needs name=value}"); shift 2 ;;
        *) die "standby: unknown argument '$1'" ;;
      esac
    done
    if [ -z "$port" ]; then
      for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 20000))
        port_open "$port" || break
      done
    fi
    bin=$(bin_dir)
    primary_port=$(sed -n 's/^port = //p' "$primary/data/postgresql.conf" | tail -1)
    dir=$(mktemp -d /tmp/leaderlease-pg.XXXXXX)
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    as_postgres "$bin/pg_basebackup" -D "$dir/data" -R -X stream --no-sync -h 127.0.0.1 -p "$primary_port" \
      -U postgres >/dev/null || { rm -rf "$dir"; die "pg_basebackup from port $primary_port failed"; }
    {
      echo "port = $port"
      echo "unix_socket_directories = '$dir'"
      echo "hot_standby = on"
      for s in ${settings[@]+"${settings[@]}"}; do
        value=${s#*=}
        echo "${s%%=*} = '${value//\'/\'\'}'"
      done
    } | as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null
    if ! pg_ctl "$dir" -l "$dir/log" -w start >/dev/null; then
      cat "$dir/log" >&2 || true
      rm -rf "$dir"
      die "pg_ctl start of the standby failed (port $port)"
    fi
    echo "postgres://postgres@127.0.0.1:$port/postgres" >"$dir/url"
    "$bin/postgres" --version | awk '{print $3}' >"$dir/version"
    echo "$dir"
    ;;
  promote)
    need_dir "${1:-}"
    pg_ctl "$1" -w promote >/dev/null
    ;;
  stop)
    need_dir "${1:-}"
    pg_ctl "$1" -w -m "${2:-fast}" stop >/dev/null
    ;;
  start-again)
    need_dir "${1:-}"
    pg_ctl "$1" -l "$1/log" -w start >/dev/null
    ;;
  restart)
    need_dir "${1:-}"
    pg_ctl "$1" -l "$1/log" -w -m fast restart >/dev/null
    ;;
  destroy)
    [ -n "${1:-}" ] || die "destroy: no directory"
    [ -d "$1" ] || exit 0
    [ -d "$1/data" ] && { pg_ctl "$1" -w -m immediate stop >/dev/null 2>&1 || true; }
    rm -rf "$1"
    ;;
  watch)
    [ -n "${1:-}" ] && [ -n "${2:-}" ] || die "watch: DIR PID"
    while kill -0 "$2" 2>/dev/null; do sleep 1; done
    exec "$0" destroy "$1"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    [ "$cmd" = --help ] || [ "$cmd" = -h ]
    ;;
esac
