# Sourced by the scripts: makes sure DATABASE_URL points at a running PostgreSQL.
#  1. DATABASE_URL already set: used as it is.
#  2. A server answers on 127.0.0.1:5432: postgres://postgres@127.0.0.1:5432/test (the database is created
#     if missing).
#  3. Otherwise a throwaway server is started (scripts/throwaway-pg.sh; PostgreSQL's server binaries must be
#     installed: Debian package `postgresql`) and removed when the calling script exits.

pg_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

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
  LL_THROWAWAY_PG="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/throwaway-pg.sh"
  if ! LL_PG_DIR=$(bash "$LL_THROWAWAY_PG" start -c max_connections=300); then
    echo "leaderlease: no PostgreSQL reachable: DATABASE_URL is unset, nothing listens on 127.0.0.1:5432," >&2
    echo "and no throwaway server could be started (see above)." >&2
    exit 1
  fi
  ll_pg_cleanup() { bash "$LL_THROWAWAY_PG" destroy "$LL_PG_DIR"; }
  trap ll_pg_cleanup EXIT
  DATABASE_URL=$(cat "$LL_PG_DIR/url")
  export DATABASE_URL
  echo "leaderlease: started a throwaway PostgreSQL: $DATABASE_URL ($LL_PG_DIR)" >&2
fi
