# Sourced by the scripts: makes sure NATS_URL points at a NATS server with JetStream.
#  1. NATS_URL already set: used as it is.
#  2. A server answers on 127.0.0.1:4222: nats://127.0.0.1:4222.
#  3. Otherwise a throwaway nats-server (Debian package `nats-server`) is started with JetStream in a
#     temporary directory and stopped when the calling script exits.

nats_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ -n "${NATS_URL:-}" ]; then
  echo "leaderlease: using NATS_URL" >&2
elif nats_port_open 4222; then
  export NATS_URL="nats://127.0.0.1:4222"
  echo "leaderlease: using the NATS server on 127.0.0.1:4222" >&2
else
  LL_NATS_BIN=$(command -v nats-server || ls /usr/sbin/nats-server 2>/dev/null || true)
  if [ -z "$LL_NATS_BIN" ]; then
    echo "leaderlease: no NATS reachable: NATS_URL is unset, nothing listens on 127.0.0.1:4222," >&2
    echo "and nats-server is not installed to start a throwaway one (apt-get install nats-server)." >&2
    exit 1
  fi
  LL_NATS_DIR=$(mktemp -d /tmp/leaderlease-nats.XXXXXX)
  LL_NATS_PORT=$(( 20000 + RANDOM % 20000 ))
  "$LL_NATS_BIN" -a 127.0.0.1 -p "$LL_NATS_PORT" -js -sd "$LL_NATS_DIR" >"$LL_NATS_DIR/log" 2>&1 &
  LL_NATS_PID=$!
  for _ in $(seq 100); do nats_port_open "$LL_NATS_PORT" && break; sleep 0.1; done
  ll_nats_cleanup() { kill "$LL_NATS_PID" 2>/dev/null || true; wait "$LL_NATS_PID" 2>/dev/null || true; rm -rf "$LL_NATS_DIR"; }
  # Chain with an EXIT trap set earlier (scripts/pg-env.sh may have set one).
  LL_PREV_TRAP=$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")
  trap "ll_nats_cleanup; ${LL_PREV_TRAP:-:}" EXIT
  export NATS_URL="nats://127.0.0.1:$LL_NATS_PORT"
  echo "leaderlease: started a throwaway NATS server on 127.0.0.1:$LL_NATS_PORT" >&2
fi
