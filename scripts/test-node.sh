#!/usr/bin/env bash
# The Node tests: builds the addon (`release-fast` profile: optimised, no fat LTO) and the TypeScript
# (tsc type-checks the package and the tests), then runs `node --test` on the compiled tests against a real
# PostgreSQL and a real NATS server (see scripts/pg-env.sh, scripts/nats-env.sh). `npm test` leaves out
# the slow files listed below; `--all` (`npm run test:all`) runs every one. A new tests/*.test.ts runs in
# both unless it is listed. Needs `npm install` (or `npm ci`) first.
#   bash scripts/test-node.sh [--all]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x node_modules/.bin/tsc ] || { echo "test-node: no node_modules: run \`npm install\` (or \`npm ci\`) first" >&2; exit 1; }
. scripts/pg-env.sh
. scripts/nats-env.sh
npm run build:fast
npm run build:ts

# Slow: they pack the package and install it, or peers from the registry, into fresh apps, or run the
# demo. Time on a 2-core machine shared with other builds (2026-12-07, npm's cache warm): demo 42 s (three
# rounds of the demo cluster, both demos), peers 36 s (NestJS 10, 11 and 12 and three TypeORMs installed
# from the registry), core-entry 21 s and pack 17 s (`npm pack`, installed into a fresh app), original-readme
# 26 s (the original package's README blocks on the packed package).
slow=(demo peers core-entry pack original-readme)

files=()
for f in dist-tests/*.test.js; do
  name=$(basename "$f" .test.js)
  if [ "${1:-}" = --all ] || [[ " ${slow[*]} " != *" $name "* ]]; then files+=("$f"); fi
done
[ "${1:-}" = --all ] || echo "test-node: leaving out the slow tests ${slow[*]} (npm run test:all runs them)" >&2
# A test that hangs fails after 3 minutes instead of holding the run.
node --test --test-timeout=180000 "${files[@]}"
