# Sourced by the scripts: makes sure DATABASE_URL points at a running PostgreSQL.
#  1. DATABASE_URL already set: used as it is.
#  2. A server answers on 127.0.0.1:5432: postgres://postgres@127.0.0.1:5432/test (the database is created
#     if missing).
#  3. Otherwise a throwaway server is started in a temporary directory (PostgreSQL's initdb and pg_ctl
#     must be installed: Debian package `postgresql`) and removed when the calling script exits.

pg_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pg_bin_dir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ -n "${DATABASE_URL:-}" ]; then
  echo "leaderlease: using DATABASE_URL" >&2
elif pg_port_open 5432; then
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/test"
  if command -v psql >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" 2>/dev/null | grep -q 1 \
      || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE test" >/dev/null 2>&1 || true
  fi
  echo "leaderlease: using the PostgreSQL server on 127.0.0.1:5432" >&2
else
  if ! LL_PG_BIN=$(pg_bin_dir); then
    echo "leaderlease: no PostgreSQL reachable: DATABASE_URL is unset, nothing listens on 127.0.0.1:5432," >&2
    echo "and initdb is not installed to start a throwaway server (apt-get install postgresql)." >&2
    exit 1
  fi
  LL_PG_DIR=$(mktemp -d /tmp/leaderlease-pg.XXXXXX)
  chmod 755 "$LL_PG_DIR"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$LL_PG_DIR"
  LL_PG_PORT=$(( 20000 + RANDOM % 20000 ))
  as_postgres "$LL_PG_BIN/initdb" -D "$LL_PG_DIR/data" -U postgres -A trust --no-sync >/dev/null
  as_postgres "$LL_PG_BIN/pg_ctl" -D "$LL_PG_DIR/data" -l "$LL_PG_DIR/log" -w \
    -o "-p $LL_PG_PORT -k $LL_PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
  ll_pg_cleanup() {
    as_postgres "$LL_PG_BIN/pg_ctl" -D "$LL_PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$LL_PG_DIR"
  }
  trap ll_pg_cleanup EXIT
  export DATABASE_URL="postgres://postgres@127.0.0.1:$LL_PG_PORT/postgres"
  echo "leaderlease: started a throwaway PostgreSQL on 127.0.0.1:$LL_PG_PORT" >&2
fi
