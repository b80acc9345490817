#!/usr/bin/env bash
# The Node tests: installs the npm dependencies, builds the addon (`release-fast` profile: optimised, no
# fat LTO) and the TypeScript, then runs `node --test` on the compiled tests against a real PostgreSQL
# and a real NATS server (see scripts/pg-env.sh, scripts/nats-env.sh). tests/pack.test.ts packs this
# build and installs the tarball into a fresh app.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg-env.sh
. scripts/nats-env.sh
# `npm install`, not `npm ci`: npm 11 writes this lock file without the other platforms' optional
# packages of @napi-rs/cli's dependencies, which `npm ci` then rejects as out of sync. The lock file
# still pins every version that is installed. LEADERLEASE_SKIP_BUILD=1: the `prepare` step builds
# nothing, since the addon and the TypeScript are built right below.
LEADERLEASE_SKIP_BUILD=1 npm install --no-audit --no-fund
npm run build:fast
npm run build:ts
# A test that hangs fails after 3 minutes instead of holding the run.
node --test --test-timeout=180000 dist-tests/*.test.js
