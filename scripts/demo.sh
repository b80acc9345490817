#!/usr/bin/env bash
# The live demo: three candidate processes, a leader killed and replaced, graceful handovers, a summary.
#   bash scripts/demo.sh [--rounds N] [--lease MS] [--renewal MS] [--jitter MS]   the Node.js demo
#                                                                                   (examples/cluster.mjs)
#   bash scripts/demo.sh --nest [--seconds N]                                      the NestJS demo
#                                                          (examples/nest/: named scheduled jobs)
#   bash scripts/demo.sh --rust [--rounds N]                                        the Rust demo
#                                                          (crates/leaderlease/examples/cluster.rs)
# PostgreSQL: see scripts/pg-env.sh. The Node demo builds the addon and the TypeScript first if either is
# missing (a fresh clone after `npm install`).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --rust ]; then
  shift
  . scripts/pg-env.sh
  cargo run --quiet --release --example cluster -- "$@"
  exit
fi

if [ ! -d node_modules ]; then
  echo "leaderlease: node_modules is missing: run \`npm install\` first" >&2
  exit 1
fi
if [ ! -f dist/index.js ] || ! compgen -G 'native/leaderlease.*.node' >/dev/null; then
  echo "leaderlease: building the addon and the TypeScript (npm run build:fast && npm run build:ts)" >&2
  npm run build:fast
  npm run build:ts
fi
. scripts/pg-env.sh
if [ "${1:-}" = --nest ]; then
  shift
  # The NestJS example (examples/nest/): three workers with named scheduled jobs, live.
  npx tsc -p examples/nest/tsconfig.json
  node examples/nest/view.mjs "$@"
  exit
fi
# Not `exec`: pg-env.sh may have started a throwaway server that its EXIT trap stops.
node examples/cluster.mjs "$@"
